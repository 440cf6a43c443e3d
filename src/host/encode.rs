//! Writing a module's operations as the published patch's JSON.
//!
//! A module reports operations relative to its own root; the published view
//! nests them under `/<module>`. Writing each operation with that prefix
//! straight into the output produces the same bytes as prefixing every
//! pointer (a new allocation per pointer) and then serialising, at a
//! fraction of the cost on the per-call path.

use json_patch::PatchOperation;
use json_patch::jsonptr::Token;
use serde::Serialize;

/// The pointer prefix of a module's section, as the start of a JSON
/// string: a quote, `/` and the module's name as an escaped RFC 6901 token
/// (itself escaped for JSON), with no closing quote.
pub(crate) fn section_prefix(module: &str) -> String {
    let pointer = format!("/{}", Token::new(module).encoded());
    let json = serde_json::to_string(&pointer).unwrap_or_else(|_| "\"".to_owned());
    json[..json.len() - 1].to_owned()
}

/// The operations, each path (and `from`) under `prefix` (from
/// [`section_prefix`]), as a JSON array. Byte for byte what serialising the
/// prefixed `PatchOperation`s gives.
pub(crate) fn ops_json(prefix: &str, ops: &[PatchOperation]) -> String {
    let mut out = Vec::with_capacity(2 + 64 * ops.len());
    out.push(b'[');
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let (name, from, to, value) = match op {
            PatchOperation::Add(o) => ("add", None, &o.path, Some(&o.value)),
            PatchOperation::Remove(o) => ("remove", None, &o.path, None),
            PatchOperation::Replace(o) => ("replace", None, &o.path, Some(&o.value)),
            PatchOperation::Move(o) => ("move", Some(&o.from), &o.path, None),
            PatchOperation::Copy(o) => ("copy", Some(&o.from), &o.path, None),
            PatchOperation::Test(o) => ("test", None, &o.path, Some(&o.value)),
        };
        out.extend_from_slice(b"{\"op\":\"");
        out.extend_from_slice(name.as_bytes());
        out.push(b'"');
        let pointer = |field: &str, pointer: &str, out: &mut Vec<u8>| {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(prefix.as_bytes());
            // The pointer's own JSON string, minus its opening quote, which
            // the prefix already wrote: escaping works per character.
            let at = out.len();
            write_json(&pointer, out);
            out.remove(at);
        };
        if let Some(from) = from {
            pointer("from", from.as_str(), &mut out);
        }
        pointer("path", to.as_str(), &mut out);
        if let Some(value) = value {
            out.extend_from_slice(b",\"value\":");
            write_json(value, &mut out);
        }
        out.push(b'}');
    }
    out.push(b']');
    // serde_json writes UTF-8 and so does the rest; an error is impossible.
    String::from_utf8(out).unwrap_or_else(|_| "[]".to_owned())
}

fn write_json(value: &impl Serialize, out: &mut Vec<u8>) {
    // Writing a str or a Value into a Vec cannot fail: map keys are strings.
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use json_patch::jsonptr::PointerBuf;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// What the host published before: prefix every pointer, serialise the
    /// list.
    fn reference(module: &str, ops: &[PatchOperation]) -> String {
        let pre = |p: &PointerBuf| p.with_leading_token(module);
        let prefixed: Vec<PatchOperation> = ops
            .iter()
            .cloned()
            .map(|op| match op {
                PatchOperation::Add(mut o) => {
                    o.path = pre(&o.path);
                    PatchOperation::Add(o)
                }
                PatchOperation::Remove(mut o) => {
                    o.path = pre(&o.path);
                    PatchOperation::Remove(o)
                }
                PatchOperation::Replace(mut o) => {
                    o.path = pre(&o.path);
                    PatchOperation::Replace(o)
                }
                PatchOperation::Move(mut o) => {
                    o.path = pre(&o.path);
                    o.from = pre(&o.from);
                    PatchOperation::Move(o)
                }
                PatchOperation::Copy(mut o) => {
                    o.path = pre(&o.path);
                    o.from = pre(&o.from);
                    PatchOperation::Copy(o)
                }
                PatchOperation::Test(mut o) => {
                    o.path = pre(&o.path);
                    PatchOperation::Test(o)
                }
            })
            .collect();
        serde_json::to_string(&prefixed).unwrap()
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{0,6}",
            "[-a-z0-9~/\"\\\\ é\u{1F600}\u{0}\u{1f}]{0,6}",
            Just("-".to_owned()),
            (0u32..20).prop_map(|i| i.to_string()),
        ]
    }

    fn pointer() -> impl Strategy<Value = PointerBuf> {
        prop::collection::vec(token(), 0..4).prop_map(PointerBuf::from_tokens)
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            token().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(token(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn op() -> impl Strategy<Value = PatchOperation> {
        use json_patch::{
            AddOperation, CopyOperation, MoveOperation, RemoveOperation, ReplaceOperation,
            TestOperation,
        };
        prop_oneof![
            (pointer(), value())
                .prop_map(|(path, value)| PatchOperation::Add(AddOperation { path, value })),
            pointer().prop_map(|path| PatchOperation::Remove(RemoveOperation { path })),
            (pointer(), value()).prop_map(|(path, value)| {
                PatchOperation::Replace(ReplaceOperation { path, value })
            }),
            (pointer(), pointer())
                .prop_map(|(from, path)| PatchOperation::Move(MoveOperation { from, path })),
            (pointer(), pointer())
                .prop_map(|(from, path)| PatchOperation::Copy(CopyOperation { from, path })),
            (pointer(), value())
                .prop_map(|(path, value)| PatchOperation::Test(TestOperation { path, value })),
        ]
    }

    proptest! {
        #[test]
        fn ops_json_is_byte_identical_to_prefixing_then_serialising(
            module in token(),
            ops in prop::collection::vec(op(), 0..5),
        ) {
            prop_assert_eq!(ops_json(&section_prefix(&module), &ops), reference(&module, &ops));
        }
    }

    #[test]
    fn one_replace_is_written_under_the_module() {
        let ops: Vec<PatchOperation> =
            serde_json::from_value(json!([{"op": "replace", "path": "/count", "value": 1}]))
                .unwrap();
        assert_eq!(
            ops_json(&section_prefix("counter"), &ops),
            r#"[{"op":"replace","path":"/counter/count","value":1}]"#
        );
        assert_eq!(section_prefix("a/b~c"), r#""/a~1b~0c"#);
        assert_eq!(section_prefix("q\"x"), r#""/q\"x"#);
    }
}
