//! How a message lists many things: the first few by name, then how many more there are;
//! and how it counts them ("1 thread", "4 threads").

/// The first `shown` of `items`, and how many others there are.
pub(crate) fn first_and_more<T>(items: &[T], shown: usize) -> (&[T], usize) {
    let shown = items.len().min(shown);
    (&items[..shown], items.len() - shown)
}

/// " and N more" for the `more` items a list leaves out; nothing when it leaves none out.
pub(crate) fn and_more(more: usize) -> String {
    match more {
        0 => String::new(),
        more => format!(" and {more} more"),
    }
}

/// Nouns ending in ch said as k, which take a plain -s ("epochs", not "epoches").
const HARD_CH: [&str; 1] = ["epoch"];

/// `noun` (singular) as it reads after `count`: as it is after 1, plural after any other
/// count ("1 thread", "4 threads", "0 classes"); a noun ending in s, x, ch or sh takes -es,
/// except one of [`HARD_CH`].
pub(crate) fn noun_for<N: PartialEq + From<u8>>(count: N, noun: &str) -> String {
    if count == N::from(1) {
        noun.to_string()
    } else if ["s", "x", "ch", "sh"].iter().any(|end| noun.ends_with(end))
        && !HARD_CH.contains(&noun)
    {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::{and_more, first_and_more, noun_for};

    #[test]
    fn a_count_of_one_takes_the_singular_and_any_other_the_plural() {
        assert_eq!(noun_for(1usize, "thread"), "thread");
        assert_eq!(noun_for(4i64, "thread"), "threads");
        assert_eq!(noun_for(0u64, "image"), "images");
        assert_eq!(noun_for(1i32, "class"), "class");
        assert_eq!(noun_for(2usize, "class"), "classes");
        assert_eq!(noun_for(2usize, "patch"), "patches");
        assert_eq!(noun_for(2usize, "box"), "boxes");
        assert_eq!(noun_for(2usize, "mesh"), "meshes");
        assert_eq!(noun_for(1usize, "epoch"), "epoch");
        assert_eq!(noun_for(2usize, "epoch"), "epochs");
    }

    #[test]
    fn a_list_names_the_first_few_and_counts_the_others() {
        let items = [1, 2, 3, 4];
        assert_eq!(first_and_more(&items, 3), (&items[..3], 1));
        assert_eq!(first_and_more(&items, 4), (&items[..], 0));
        assert_eq!(first_and_more(&items, 10), (&items[..], 0));
        assert_eq!(and_more(0), "");
        assert_eq!(and_more(7), " and 7 more");
    }
}
