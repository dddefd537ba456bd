//! How a message shows things: many of them (the first few by name, then how many more
//! there are), a count ("1 thread", "4 threads"), a number, and the flag of a setting.

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

/// A fractional flag's value as a message shows it: as given for everyday sizes, and in
/// scientific notation beyond them, where Rust's `{}` writes every digit (1e308 has 309).
pub(crate) fn shown_number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude == 0.0 || (1e-4..1e16).contains(&magnitude) || !value.is_finite() {
        value.to_string()
    } else {
        format!("{value:e}")
    }
}

/// The flag that sets the setting called `field`: `--embed-dim` for `embed_dim`.
pub(crate) fn flag_name(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::{and_more, first_and_more, noun_for, shown_number};

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

    /// Everyday values read as given; far from them, scientific notation, not 309 digits.
    #[test]
    fn values_far_from_everyday_sizes_are_shown_in_scientific_notation() {
        for (value, expected) in [
            (0.0, "0"),
            (0.1, "0.1"),
            (-0.001, "-0.001"),
            (1e-4, "0.0001"),
            (2.5e15, "2500000000000000"),
            (1e-5, "1e-5"),
            (1e16, "1e16"),
            (-1.5e300, "-1.5e300"),
            (f64::MAX, "1.7976931348623157e308"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(shown_number(value), expected, "{value:?}");
        }
    }
}
