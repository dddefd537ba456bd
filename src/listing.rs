//! How a message lists many things: the first few by name, then how many more there are.

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

#[cfg(test)]
mod tests {
    use super::{and_more, first_and_more};

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
