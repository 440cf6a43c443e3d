//! Building JSON Pointers (RFC 6901) from member names and indices.

use json_patch::jsonptr::{PointerBuf, Token};

/// The pointer that names, token by token, the member or element each of
/// `tokens` names: `pointer(["items", "a/b"])` is `/items/a~1b`.
///
/// Every token is escaped (`~` as `~0`, `/` as `~1`), so a name that came
/// from a client reaches exactly the one member it names, never a deeper
/// or malformed path. Use it for every [`Draft`](super::Draft) path built
/// from data; only a literal path is safe to write by hand.
pub fn pointer<T: AsRef<str>>(tokens: impl IntoIterator<Item = T>) -> String {
    PointerBuf::from_tokens(
        tokens
            .into_iter()
            .map(|t| Token::new(t.as_ref().to_owned())),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::pointer;
    use proptest::prelude::*;

    #[test]
    fn tokens_are_escaped_so_each_names_one_member() {
        assert_eq!(pointer(["items", "a/b"]), "/items/a~1b");
        assert_eq!(pointer(["items", "a~1b"]), "/items/a~01b");
        assert_eq!(pointer(["items", "~"]), "/items/~0");
        assert_eq!(pointer(["", "3"]), "//3");
        assert_eq!(pointer(Vec::<String>::new()), "");
    }

    proptest! {
        /// Whatever the names, the pointer resolves to the one member
        /// they name in a tree built from them, and nowhere else.
        #[test]
        fn a_pointer_reaches_exactly_the_member_its_tokens_name(
            names in proptest::collection::vec(".{0,6}", 1..5)
        ) {
            let mut tree = serde_json::json!("leaf");
            for name in names.iter().rev() {
                tree = serde_json::json!({ name.clone(): tree });
            }
            prop_assert_eq!(tree.pointer(&pointer(&names)), Some(&serde_json::json!("leaf")));
        }
    }
}
