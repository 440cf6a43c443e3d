//! JSON equality as the protocol defines it (spec §6.5), which a patch's
//! `test` uses.

use serde_json::Value;

/// JSON equality as the protocol defines it (spec §6.5), which RFC 6902's
/// `test` uses: numbers are equal when numerically equal, whatever their
/// written form (`1` = `1.0`, `0` = `-0`), compared exactly (no rounding of
/// large integers through binary64). serde_json's own `==` tells integers
/// from floats, so it cannot be used.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_eq(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn number_eq(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    let int = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    // An integral binary64 as an exact integer, when it is one.
    let integral = |f: f64| {
        // 2^127: every integral f64 below it converts to i128 exactly.
        const LIMIT: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
        (f.is_finite() && f.fract() == 0.0 && f.abs() < LIMIT).then_some(f as i128)
    };
    match (int(x), int(y)) {
        (Some(i), Some(j)) => i == j,
        (Some(i), None) => y.as_f64().and_then(integral) == Some(i),
        (None, Some(j)) => x.as_f64().and_then(integral) == Some(j),
        (None, None) => x.as_f64() == y.as_f64(),
    }
}
