//! Checks of the JSON a host sends that reading it with `serde_json` does
//! not make: no duplicate member names (J3), and patch operations that name
//! only published sections and never the root (PA2, PA3).
//!
//! They run on every envelope the host runner reads (see [`super::peer`]),
//! so a host that breaks them fails whichever case is running.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Fails, naming the member, if any object in the JSON text `text` has two
/// members of the same name (J3). Text that is not JSON passes: whether it
/// parses is checked where it is read, with the rule that applies there.
pub fn no_duplicate_members(text: &str) -> Result<(), String> {
    let mut reader = serde_json::Deserializer::from_str(text);
    match Walk.deserialize(&mut reader) {
        Err(e) if e.is_data() => Err(format!("{e} (J3)")),
        _ => Ok(()),
    }
}

/// Walks any JSON value, failing at an object's second member of a name.
#[derive(Clone, Copy)]
struct Walk;

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Walk)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut names = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            if !names.insert(name.clone()) {
                return Err(de::Error::custom(format!(
                    "an object with two members named {name:?}"
                )));
            }
            map.next_value_seed(Walk)?;
        }
        Ok(())
    }
}

/// Fails unless every operation of `patch_json` names, in its `path` and in
/// the `from` of a `move` or `copy`, a member of `sections` as its first
/// token (PA2), and none names the root `""` (PA3). `sections` is `None`
/// when the view the patch applies to is unknown: only PA3 is checked.
/// Operations that are not objects with string pointers pass here; whether
/// the patch applies is checked on its own (PA4).
pub fn patch_names_sections(
    patch_json: &str,
    sections: Option<&BTreeSet<String>>,
) -> Result<(), String> {
    let Ok(Value::Array(ops)) = serde_json::from_str::<Value>(patch_json) else {
        return Ok(());
    };
    for (i, op) in ops.iter().enumerate() {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let mut pointers = vec![("path", op.get("path"))];
        if matches!(kind, "move" | "copy") {
            pointers.push(("from", op.get("from")));
        }
        for (member, pointer) in pointers {
            let Some(Value::String(pointer)) = pointer else {
                continue;
            };
            if pointer.is_empty() {
                return Err(format!(
                    "operation {i} ({kind}) has the root \"\" as its {member} (PA3)"
                ));
            }
            let Some(sections) = sections else { continue };
            let first = pointer
                .strip_prefix('/')
                .map(|rest| rest.split('/').next().unwrap_or(""))
                .map(|token| token.replace("~1", "/").replace("~0", "~"));
            if !first.is_some_and(|token| sections.contains(&token)) {
                return Err(format!(
                    "operation {i} ({kind}) has {member} {pointer:?}, outside the published sections {sections:?} (PA2)"
                ));
            }
        }
    }
    Ok(())
}

/// The member names of `view`, the published sections it holds.
pub fn sections_of(view: &Value) -> Option<BTreeSet<String>> {
    view.as_object().map(|o| o.keys().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_found_at_any_depth() {
        assert!(no_duplicate_members(r#"{"a":1,"b":[{"c":1}],"d":{"a":2}}"#).is_ok());
        for text in [
            r#"{"a":1,"a":1}"#,
            r#"{"x":[1,{"c":{},"c":{}}]}"#,
            r#"[{"op":"add","path":"/a","path":"/b","value":1}]"#,
        ] {
            let e = no_duplicate_members(text).unwrap_err();
            assert!(e.ends_with("(J3)"), "{text}: {e}");
        }
    }

    #[test]
    fn a_name_written_with_an_escape_is_the_same_name() {
        assert!(no_duplicate_members(r#"{"a":1,"\u0061":2}"#).is_err());
    }

    #[test]
    fn text_that_is_not_json_is_left_to_the_reader() {
        assert!(no_duplicate_members("{").is_ok());
        assert!(no_duplicate_members("").is_ok());
    }

    /// The runner's J1 check is that `serde_json` reads the text, which
    /// covers a byte-order mark too.
    #[test]
    fn text_after_a_byte_order_mark_is_not_read_as_json() {
        assert!(serde_json::from_str::<Value>("\u{feff}{}").is_err());
        assert!(serde_json::from_str::<Value>(" {} ").is_ok());
    }

    fn sections() -> BTreeSet<String> {
        ["counter".to_owned(), "a/b".to_owned()].into()
    }

    #[test]
    fn operations_on_published_sections_pass() {
        let patch = r#"[{"op":"replace","path":"/counter","value":{}},
            {"op":"add","path":"/counter/count","value":1},
            {"op":"move","from":"/a~1b/x","path":"/counter/y"},
            {"op":"remove","path":"/counter/y","from":""}]"#;
        assert_eq!(patch_names_sections(patch, Some(&sections())), Ok(()));
    }

    #[test]
    fn the_root_fails_as_a_path_or_a_from_even_without_the_view() {
        for patch in [
            r#"[{"op":"replace","path":"","value":{}}]"#,
            r#"[{"op":"move","from":"","path":"/counter"}]"#,
        ] {
            let e = patch_names_sections(patch, None).unwrap_err();
            assert!(e.ends_with("(PA3)"), "{patch}: {e}");
        }
    }

    #[test]
    fn a_member_outside_the_sections_fails() {
        for patch in [
            r#"[{"op":"add","path":"/other","value":1}]"#,
            r#"[{"op":"add","path":"/","value":1}]"#,
            r#"[{"op":"copy","from":"/secret/token","path":"/counter/x"}]"#,
            r#"[{"op":"add","path":"counter","value":1}]"#,
        ] {
            let e = patch_names_sections(patch, Some(&sections())).unwrap_err();
            assert!(e.ends_with("(PA2)"), "{patch}: {e}");
        }
        assert!(patch_names_sections(r#"[{"op":"add","path":"/other","value":1}]"#, None).is_ok());
    }
}
