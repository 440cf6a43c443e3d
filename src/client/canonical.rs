//! Reading a patch written the way hosts write one, without serde's
//! per-token machinery.
//!
//! The reference host writes every operation as
//! `{"op":…,["from":…,]"path":…[,"value":…]}`, with no whitespace, and
//! ordinary pointers hold no escape; so does serialising json-patch's
//! operations. The protocol does not require that form (member order and
//! whitespace carry no meaning, J3), which is why this is only a fast path.
//! Read through serde, the counter's one-operation patch cost the client
//! ~2,100 instructions, the largest single share of a call's work on both
//! cores; this reads it in ~800. Each value is still read by serde_json,
//! whitespace within it included. Anything else (whitespace around the
//! array, the operations or their members, escapes in a pointer, another
//! member order, an extra member) is declined and left to the general
//! parser in `ops.rs`, so what this accepts is a subset of what that accepts
//! and gives the same operations (the tests check both on arbitrary input).

use json_patch::jsonptr::PointerBuf;
use json_patch::{
    AddOperation, CopyOperation, MoveOperation, PatchOperation, RemoveOperation, ReplaceOperation,
    TestOperation,
};
use serde_json::Value;

use super::ops::Kind;

/// The containers a value may nest and still be read by the general parser,
/// which reads it inside the patch's array and its operation's object:
/// the 127 serde_json reads, less those two.
const VALUE_NESTING: usize = 125;

/// The operations in `text` if it is a canonical patch, or `None` for the
/// general parser to decide.
pub(crate) fn parse(text: &str) -> Option<Vec<PatchOperation>> {
    let mut at = Cursor { text, at: 0 };
    at.eat("[")?;
    let mut ops = Vec::new();
    if at.eat("]").is_none() {
        loop {
            ops.push(at.op()?);
            if at.eat(",").is_none() {
                at.eat("]")?;
                break;
            }
        }
    }
    (at.at == text.len()).then_some(ops)
}

struct Cursor<'t> {
    text: &'t str,
    at: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        self.text.get(self.at..).unwrap_or("")
    }

    fn eat(&mut self, expected: &str) -> Option<()> {
        self.rest().starts_with(expected).then(|| {
            self.at += expected.len();
        })
    }

    fn op(&mut self) -> Option<PatchOperation> {
        self.eat("{\"op\":\"")?;
        let kind = self.kind()?;
        let from = match kind {
            Kind::Move | Kind::Copy => {
                self.eat(",\"from\":")?;
                Some(self.pointer()?)
            }
            _ => None,
        };
        self.eat(",\"path\":")?;
        let path = self.pointer()?;
        let value = match kind {
            Kind::Add | Kind::Replace | Kind::Test => {
                self.eat(",\"value\":")?;
                Some(self.value()?)
            }
            _ => None,
        };
        self.eat("}")?;
        Some(match (kind, from, value) {
            (Kind::Add, _, Some(value)) => PatchOperation::Add(AddOperation { path, value }),
            (Kind::Remove, _, _) => PatchOperation::Remove(RemoveOperation { path }),
            (Kind::Replace, _, Some(value)) => {
                PatchOperation::Replace(ReplaceOperation { path, value })
            }
            (Kind::Test, _, Some(value)) => PatchOperation::Test(TestOperation { path, value }),
            (Kind::Move, Some(from), _) => PatchOperation::Move(MoveOperation { from, path }),
            (Kind::Copy, Some(from), _) => PatchOperation::Copy(CopyOperation { from, path }),
            _ => return None,
        })
    }

    /// The operation's name and its closing quote.
    fn kind(&mut self) -> Option<Kind> {
        const KINDS: [(&str, Kind); 6] = [
            ("replace\"", Kind::Replace),
            ("add\"", Kind::Add),
            ("remove\"", Kind::Remove),
            ("move\"", Kind::Move),
            ("copy\"", Kind::Copy),
            ("test\"", Kind::Test),
        ];
        let (name, kind) = KINDS
            .iter()
            .find(|(name, _)| self.rest().starts_with(name))?;
        self.at += name.len();
        Some(*kind)
    }

    /// A JSON string holding no escape and no control character, read as
    /// an RFC 6901 pointer.
    fn pointer(&mut self) -> Option<PointerBuf> {
        self.eat("\"")?;
        let rest = self.rest();
        let len = rest
            .bytes()
            .position(|b| b == b'"' || b == b'\\' || b < 0x20)?;
        let (body, after) = rest.split_at(len);
        if !after.starts_with('"') {
            return None;
        }
        let pointer = PointerBuf::try_from(body).ok()?;
        self.at += len + 1;
        Some(pointer)
    }

    /// One JSON value, read by serde_json as the general parser reads it.
    fn value(&mut self) -> Option<Value> {
        let rest = self.rest();
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = values.next()?.ok()?;
        if matches!(value, Value::Array(_) | Value::Object(_)) && nesting(&value) > VALUE_NESTING {
            return None;
        }
        self.at += values.byte_offset();
        Some(value)
    }
}

/// How many containers `value` nests, itself included.
fn nesting(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::client::ops::{parse_general, tests as ops};

    /// A patch as a host writes it, for any operations.
    fn written() -> impl Strategy<Value = String> {
        prop::collection::vec(ops::in_place_op(), 0..4)
            .prop_map(|ops| serde_json::to_string(&ops).unwrap_or_default())
    }

    /// A written patch with one character inserted, replaced or removed.
    fn mangled() -> impl Strategy<Value = String> {
        let junk = prop_oneof![
            Just(' '),
            Just('\\'),
            Just('"'),
            Just(','),
            Just('}'),
            Just(']'),
            Just('\n'),
            Just('1'),
            Just('e'),
        ];
        (written(), any::<prop::sample::Index>(), junk, 0..3u8).prop_map(|(text, at, junk, how)| {
            let mut chars: Vec<char> = text.chars().collect();
            let i = at.index(chars.len() + 1);
            match how {
                0 => chars.insert(i, junk),
                1 if i < chars.len() => chars[i] = junk,
                _ if i < chars.len() => {
                    chars.remove(i);
                }
                _ => {}
            }
            chars.into_iter().collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whatever this reads, the general parser reads as the same
        /// operations: written patches, mangled ones and arbitrary ones.
        #[test]
        fn what_it_reads_the_general_parser_reads_alike(
            text in prop_oneof![written(), mangled(), ops::patch_text()]
        ) {
            if let Some(fast) = parse(&text) {
                prop_assert_eq!(Some(fast), parse_general(&text).ok(), "{}", text);
            }
        }

        /// It reads every patch written as hosts write them: the fast path
        /// is the one taken.
        #[test]
        fn it_reads_every_patch_written_as_hosts_write_them(text in written()) {
            prop_assert!(parse(&text).is_some(), "{}", text);
        }
    }

    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(0), |inner, _| json!([inner]))
    }

    /// Values are read to the depth the general parser reads them to, and
    /// no deeper.
    #[test]
    fn values_nest_as_deep_as_the_general_parser_allows() {
        for levels in [VALUE_NESTING - 1, VALUE_NESTING, VALUE_NESTING + 1] {
            let text = format!(
                r#"[{{"op":"add","path":"/a","value":{}}}]"#,
                serde_json::to_string(&nested(levels)).unwrap_or_default()
            );
            let general = parse_general(&text).ok();
            assert_eq!(general.is_some(), levels <= VALUE_NESTING, "{levels}");
            assert_eq!(parse(&text), general, "{levels}");
        }
    }

    #[test]
    fn escapes_whitespace_and_trailing_text_are_left_to_the_general_parser() {
        for text in [
            r#"[{"op":"remove","path":"/a~1b\u0041"}]"#,
            r#"[ {"op":"remove","path":"/a"}]"#,
            r#"[{"op":"remove","path":"/a"}] "#,
            r#"[{"op":"remove","path":"/a","value":1}]"#,
            r#"[{"path":"/a","op":"remove"}]"#,
        ] {
            assert_eq!(parse(text), None, "{text}");
            assert!(parse_general(text).is_ok(), "{text}");
        }
    }
}
