//! The length of a value's compact JSON text, and how one change to a
//! container alters it. The built-in modules add these up as a call runs, so
//! the host knows exactly how much a call grew the published view without
//! measuring the view (spec §15).
//!
//! A container of `n` members is `2 + Σ member + max(n − 1, 0)` bytes: its
//! brackets, its members, and the commas between them. An object member is
//! its key as a JSON string, a colon and its value.

use std::io;

use serde_json::Value;

/// The length of `value`'s compact JSON text, as `serde_json::to_writer`
/// writes it, without building the text.
pub(crate) fn json_len(value: &Value) -> usize {
    // The scalars a call most often changes, counted without running the
    // serializer (a typed module's diff measures both sides of every value
    // it replaces). An integer is written in decimal, a `-` before a
    // negative one; every other number goes through serde_json.
    match value {
        Value::Null | Value::Bool(true) => return 4,
        Value::Bool(false) => return 5,
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return digits(u);
            }
            if let Some(i) = n.as_i64().filter(|i| *i < 0) {
                return 1 + digits(i.unsigned_abs());
            }
        }
        _ => {}
    }
    let mut count = Count(0);
    // Writing into a counter cannot fail, and a `Value` is always JSON.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// How many decimal digits `n` is written with.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// The length of `key` written as a JSON string.
pub(crate) fn key_len(key: &str) -> usize {
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, key);
    count.0
}

/// The length of an object member: `"key":value`.
pub(crate) fn member_len(key: &str, value_len: usize) -> usize {
    key_len(key) + 1 + value_len
}

/// How a container's text grows when a member of `member` bytes joins the
/// `others` it already has: the member, and a comma unless it is the first.
pub(crate) fn joined(member: usize, others: usize) -> i64 {
    signed(member) + i64::from(others > 0)
}

/// How a container's text shrinks when a member of `member` bytes leaves
/// the `others` that stay: the member, and a comma unless none stay.
pub(crate) fn left(member: usize, others: usize) -> i64 {
    -joined(member, others)
}

/// How the commas of a container change when its member count goes from
/// `before` to `after`.
pub(crate) fn commas(before: usize, after: usize) -> i64 {
    signed(after.saturating_sub(1)) - signed(before.saturating_sub(1))
}

/// `after − before`, for two text lengths.
pub(crate) fn change(before: usize, after: usize) -> i64 {
    signed(after) - signed(before)
}

/// A text length as a signed count: no text reaches `i64::MAX` bytes.
pub(crate) fn signed(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// Counts the bytes written to it.
pub(crate) struct Count(pub(crate) usize);

impl io::Write for Count {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lengths_are_those_of_the_compact_text() {
        for value in [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(9),
            json!(10),
            json!(-1),
            json!(-10),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(-0.0),
            json!(1.0),
            json!(-12.5),
            json!("a\"b\u{e9}\n"),
            json!([1, [], {}]),
            json!({"k": {"é": [true]}}),
        ] {
            assert_eq!(json_len(&value), value.to_string().len(), "{value}");
        }
        assert_eq!(key_len("a/b\"c"), json!("a/b\"c").to_string().len());
        assert_eq!(member_len("k", 4), r#""k":true"#.len());
    }

    #[test]
    fn a_member_joining_or_leaving_moves_a_comma_unless_it_is_alone() {
        // [] -> [7] -> [7,8], and back.
        assert_eq!(joined(1, 0), 1);
        assert_eq!(joined(1, 1), 2);
        assert_eq!(left(1, 1), -2);
        assert_eq!(left(1, 0), -1);
        assert_eq!(commas(0, 3), 2);
        assert_eq!(commas(3, 1), -2);
        assert_eq!(commas(1, 0), 0);
    }

    /// Any JSON value: every kind of number serde_json keeps apart (u64,
    /// negative i64, f64), strings that need escapes, nested containers.
    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_value_s_length_is_that_of_its_compact_text(value in any_value()) {
            proptest::prop_assert_eq!(json_len(&value), value.to_string().len());
        }
    }
}
