//! The diff behind [`super::TypedModule`]: the operations taking one JSON
//! value to another.
//!
//! The same walk, and so the same operations in the same order, as
//! `json_patch::diff`, for less: the pointer is one string grown and
//! truncated in place, instead of a `PointerBuf` whose tokens are encoded on
//! every push and searched for on every pop. A typed module diffs its whole
//! state on every call, so this is on every call's path.

use std::fmt::Write as _;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};

use super::json_len::{change, commas, json_len, member_len, signed};

/// The operations taking `left` to `right`, exactly as `json_patch::diff`
/// gives them.
#[cfg(test)]
pub(crate) fn diff(left: &Value, right: &Value) -> Vec<PatchOperation> {
    diff_in(&mut String::new(), left, right).0
}

/// [`diff`], building pointers in `scratch`, a buffer the caller keeps
/// between diffs: a typed module diffs on every call, and reusing the buffer
/// saves an allocation each time. Its contents on entry do not matter.
///
/// Also returns how much longer `right`'s compact JSON text is than
/// `left`'s, added up from the differences the walk finds: O(change), not
/// O(state).
pub(crate) fn diff_in(
    scratch: &mut String,
    left: &Value,
    right: &Value,
) -> (Vec<PatchOperation>, i64) {
    scratch.clear();
    let mut walk = Walk {
        path: std::mem::take(scratch),
        ops: Vec::new(),
        valid: true,
        size_change: 0,
    };
    walk.value(left, right);
    // Hand the (possibly grown) buffer back for the next diff.
    *scratch = std::mem::take(&mut walk.path);
    if walk.valid {
        (walk.ops, walk.size_change)
    } else {
        // Unreachable (every path is built from encoded tokens); kept so
        // that a mistake here costs speed, not correctness.
        (
            json_patch::diff(left, right).0,
            change(json_len(left), json_len(right)),
        )
    }
}

struct Walk {
    /// The current location as an encoded RFC 6901 pointer.
    path: String,
    ops: Vec<PatchOperation>,
    valid: bool,
    /// How much longer the right side's text is, over what was walked.
    size_change: i64,
}

impl Walk {
    fn pointer(&mut self) -> PointerBuf {
        PointerBuf::parse(self.path.clone()).unwrap_or_else(|_| {
            self.valid = false;
            PointerBuf::new()
        })
    }

    fn push_token(&mut self, token: &str) {
        self.path.push('/');
        // Most keys need no escaping: copy them whole rather than a
        // character at a time.
        if !token.bytes().any(|b| b == b'~' || b == b'/') {
            self.path.push_str(token);
            return;
        }
        for c in token.chars() {
            match c {
                '~' => self.path.push_str("~0"),
                '/' => self.path.push_str("~1"),
                c => self.path.push(c),
            }
        }
    }

    fn value(&mut self, left: &Value, right: &Value) {
        match (left, right) {
            (Value::Object(l), Value::Object(r)) => self.object(l, r),
            (Value::Array(l), Value::Array(r)) => self.array(l, r),
            // Equal, but not always written alike: serde_json finds 0.0 and
            // -0.0 equal, one byte apart. No operation, as json-patch's diff
            // gives none, but the text's length still changes.
            (Value::Number(l), Value::Number(r)) if left == right => {
                if l.is_f64() && l.as_f64() == Some(0.0) {
                    self.size_change += change(json_len(left), json_len(right));
                }
            }
            _ if left == right => {}
            _ => {
                self.size_change += change(json_len(left), json_len(right));
                let path = self.pointer();
                self.ops.push(PatchOperation::Replace(ReplaceOperation {
                    path,
                    value: right.clone(),
                }));
            }
        }
    }

    fn array(&mut self, left: &[Value], right: &[Value]) {
        self.size_change += commas(left.len(), right.len());
        let mut shift = 0;
        for idx in 0..left.len().max(right.len()) {
            let mark = self.path.len();
            self.path.push('/');
            // Formatted in place: `to_string` would allocate per element.
            // Writing into a String cannot fail.
            let _ = write!(self.path, "{}", idx - shift);
            match (left.get(idx), right.get(idx)) {
                (Some(l), Some(r)) => self.value(l, r),
                (Some(l), None) => {
                    self.size_change -= signed(json_len(l));
                    shift += 1;
                    let path = self.pointer();
                    self.ops
                        .push(PatchOperation::Remove(RemoveOperation { path }));
                }
                (None, Some(r)) => {
                    self.size_change += signed(json_len(r));
                    let path = self.pointer();
                    self.ops.push(PatchOperation::Add(AddOperation {
                        path,
                        value: r.clone(),
                    }));
                }
                (None, None) => {}
            }
            self.path.truncate(mark);
        }
    }

    fn object(&mut self, left: &Map<String, Value>, right: &Map<String, Value>) {
        self.size_change += commas(left.len(), right.len());
        for (key, r) in right {
            let mark = self.path.len();
            self.push_token(key);
            match left.get(key) {
                Some(l) => self.value(l, r),
                None => {
                    self.size_change += signed(member_len(key, json_len(r)));
                    let path = self.pointer();
                    self.ops.push(PatchOperation::Add(AddOperation {
                        path,
                        value: r.clone(),
                    }));
                }
            }
            self.path.truncate(mark);
        }
        for (key, l) in left {
            if !right.contains_key(key) {
                self.size_change -= signed(member_len(key, json_len(l)));
                let mark = self.path.len();
                self.push_token(key);
                let path = self.pointer();
                self.ops
                    .push(PatchOperation::Remove(RemoveOperation { path }));
                self.path.truncate(mark);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..3).prop_map(Value::from),
            // Floats equal to integers, and the two zeros, which are equal
            // but written apart.
            prop_oneof![Just(0.0), Just(-0.0), Just(1.0), Just(2.5)].prop_map(Value::from),
            Just(json!("s")),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("a"),
                        Just("b"),
                        Just("~"),
                        Just("/"),
                        Just("a~1/b"),
                        Just(""),
                        Just("é")
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn diff_gives_exactly_json_patch_s_operations(left in value(), right in value()) {
            prop_assert_eq!(diff(&left, &right), json_patch::diff(&left, &right).0);
        }

        #[test]
        fn the_size_change_is_exactly_how_much_longer_the_right_text_is(
            left in value(),
            right in value(),
        ) {
            let (_, size_change) = diff_in(&mut String::new(), &left, &right);
            let longer = right.to_string().len() as i64 - left.to_string().len() as i64;
            prop_assert_eq!(size_change, longer);
        }
    }

    #[test]
    fn a_changed_counter_is_one_replace() {
        let ops = diff(&json!({"count": 0}), &json!({"count": 1}));
        assert_eq!(
            serde_json::to_value(&ops).unwrap(),
            json!([{"op": "replace", "path": "/count", "value": 1}])
        );
    }
}
