//! Pattern matching of canonical-JSON messages and event records.
//!
//! A pattern is JSON shaped like the value it matches, with three escapes:
//! - `"any"` matches any present value (for fields a peer chooses freely,
//!   such as an error's human-readable message);
//! - `"$name"` binds `name` to the actual value the first time it is seen
//!   and must equal it afterwards (for ids a client chooses, such as
//!   `syncId` and `callId`; a delivered message may then say `"$name"`);
//! - a string under a key ending in `Json` (`stateJson`, `patchJson`,
//!   `valueJson`, …) is compared as the JSON text it contains, by the
//!   equality of the protocol (numbers numerically, member order ignored).
//!
//! Objects must have exactly the pattern's members, except that a member
//! whose pattern is a default value (`0`, `"0"`, `""`, `false`, an enum
//! `*_UNSPECIFIED`) also matches its absence, since canonical JSON omits
//! defaults; and that an `error` object's `detailsJson`, which a host may
//! add to any error (spec §3.9), matches anything when its pattern does not
//! name it (a pattern that says `"detailsJson": ""` requires none).

use std::collections::BTreeMap;

use serde_json::Value;

/// Values bound by `"$name"` patterns and call labels, as decimal strings,
/// with the field each was first bound at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings(BTreeMap<String, String>, BTreeMap<String, String>);

impl Bindings {
    /// Binds `name` to `value`, replacing any earlier binding.
    pub fn bind(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(name.to_owned(), value.into());
    }

    /// Binds `name` to `value` found at member `field`, refusing a value
    /// another name already holds at that member: ids the protocol says are
    /// new for every request (`syncId`, `callId`) must differ.
    pub fn bind_new(&mut self, name: &str, field: &str, value: &str) -> Result<(), String> {
        if let Some((other, _)) = self.1.iter().find(|(other, f)| {
            f.as_str() == field && self.0.get(*other).is_some_and(|v| v == value)
        }) {
            return Err(format!(
                "${name} is {value}, the same as ${other}: each {field} must be new"
            ));
        }
        self.0.insert(name.to_owned(), value.to_owned());
        self.1.insert(name.to_owned(), field.to_owned());
        Ok(())
    }

    /// The value bound to `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The name bound to `value`, if any (for naming calls in reports).
    pub fn name_of(&self, value: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, v)| v.as_str() == value)
            .map(|(k, _)| k.as_str())
    }
}

/// Replaces every `"$name"` string in `value` by its binding.
pub fn substitute(value: &Value, vars: &Bindings) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => match s.strip_prefix('$') {
            Some(name) => Value::String(
                vars.get(name)
                    .ok_or_else(|| format!("${name} is used before it is bound"))?
                    .to_owned(),
            ),
            None => value.clone(),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute(v, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, vars)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// JSON equality as the protocol defines it (spec §6.5): numbers compare
/// numerically, objects ignore member order.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let int = |n: &serde_json::Number| {
                n.as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
            };
            match (int(x), int(y)) {
                (Some(i), Some(j)) => i == j,
                _ => x.as_f64() == y.as_f64(),
            }
        }
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

/// Where `a` and `b` first differ under [`json_eq`]: the JSON Pointer of
/// the first differing value, with each side's value there (`None` where a
/// member is missing), or `None` if they are equal. Members are visited in
/// `a`'s order, then those only `b` has.
pub fn first_difference(a: &Value, b: &Value) -> Option<(String, Option<Value>, Option<Value>)> {
    fn at(
        path: &mut String,
        a: &Value,
        b: &Value,
    ) -> Option<(String, Option<Value>, Option<Value>)> {
        let here = |path: &String| Some((path.clone(), Some(a.clone()), Some(b.clone())));
        let child = |path: &mut String, token: &str, a: Option<&Value>, b: Option<&Value>| {
            let len = path.len();
            path.push('/');
            path.push_str(&token.replace('~', "~0").replace('/', "~1"));
            let found = match (a, b) {
                (Some(a), Some(b)) => at(path, a, b),
                (a, b) => Some((path.clone(), a.cloned(), b.cloned())),
            };
            path.truncate(len);
            found
        };
        match (a, b) {
            (Value::Array(x), Value::Array(y)) => (0..x.len().max(y.len()))
                .find_map(|i| child(path, &i.to_string(), x.get(i), y.get(i))),
            (Value::Object(x), Value::Object(y)) => x
                .iter()
                .find_map(|(k, v)| child(path, k, Some(v), y.get(k)))
                .or_else(|| {
                    y.iter()
                        .filter(|(k, _)| !x.contains_key(*k))
                        .find_map(|(k, w)| child(path, k, None, Some(w)))
                }),
            _ if json_eq(a, b) => None,
            _ => here(path),
        }
    }
    at(&mut String::new(), a, b)
}

/// [`first_difference`] as a failure says it: `at /todos/3: {…} against
/// {…}`, each side cut to its first 200 bytes; empty if they are equal.
pub fn describe_difference(a: &Value, b: &Value) -> String {
    let side = |v: &Option<Value>| {
        let text = v.as_ref().map_or("nothing".to_owned(), Value::to_string);
        match text.char_indices().nth(200) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text,
        }
    };
    first_difference(a, b).map_or_else(String::new, |(path, x, y)| {
        let path = if path.is_empty() { "the root" } else { &path };
        format!("at {path}: {} against {}", side(&x), side(&y))
    })
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn is_default(pattern: &Value) -> bool {
    match pattern {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "0" || s.ends_with("_UNSPECIFIED"),
        _ => false,
    }
}

/// Matches `actual` against `pattern`, binding `"$name"` variables.
/// The error names the path of the first mismatch.
pub fn match_value(pattern: &Value, actual: &Value, vars: &mut Bindings) -> Result<(), String> {
    match_at("", None, pattern, Some(actual), vars)
}

fn match_at(
    path: &str,
    key: Option<&str>,
    pattern: &Value,
    actual: Option<&Value>,
    vars: &mut Bindings,
) -> Result<(), String> {
    let at = if path.is_empty() { "/" } else { path };
    if let Value::String(p) = pattern {
        if p == "any" {
            return actual
                .map(|_| ())
                .ok_or_else(|| format!("{at}: missing, expected a value"));
        }
        if let Some(name) = p.strip_prefix('$') {
            let Some(text) = actual.and_then(scalar_text) else {
                // An id left at 0 is not written at all in canonical JSON,
                // so a missing id is most often a zero one.
                let hint = match (actual, key) {
                    (None, Some(k)) if k.ends_with("Id") => {
                        format!(" (an absent {k} is 0, which never names a call or request)")
                    }
                    _ => String::new(),
                };
                return Err(format!(
                    "{at}: expected a value for ${name}, got {actual:?}{hint}"
                ));
            };
            return match vars.get(name) {
                Some(bound) if bound == text => Ok(()),
                Some(bound) => Err(format!("{at}: ${name} is {bound}, got {text}")),
                None => match key {
                    Some(field) => vars
                        .bind_new(name, field, &text)
                        .map_err(|e| format!("{at}: {e}")),
                    None => {
                        vars.bind(name, text);
                        Ok(())
                    }
                },
            };
        }
    }
    let Some(actual) = actual else {
        return if is_default(pattern) {
            Ok(())
        } else {
            Err(format!("{at}: missing, expected {pattern}"))
        };
    };
    if let (Some(k), Value::String(p), Value::String(a)) = (key, pattern, actual)
        && k.ends_with("Json")
    {
        return match (
            serde_json::from_str::<Value>(p),
            serde_json::from_str::<Value>(a),
        ) {
            (Ok(pv), Ok(av)) if json_eq(&pv, &av) => Ok(()),
            (Err(_), _) if p == a => Ok(()),
            _ => Err(format!("{at}: expected JSON {p}, got {a}")),
        };
    }
    match (pattern, actual) {
        (Value::Object(p), Value::Object(a)) => {
            for (k, pv) in p {
                match_at(&format!("{path}/{k}"), Some(k), pv, a.get(k), vars)?;
            }
            let optional = |k: &str| key == Some("error") && k == "detailsJson";
            if let Some(details) = a
                .get("detailsJson")
                .filter(|_| optional("detailsJson") && !p.contains_key("detailsJson"))
            {
                // Any details, but JSON text: J1 holds for them as for
                // every member named `…Json`.
                let text = details.as_str().unwrap_or_default();
                if serde_json::from_str::<Value>(text).is_err() {
                    return Err(format!("{path}/detailsJson: not JSON text: {details}"));
                }
            }
            match a.keys().find(|k| !p.contains_key(*k) && !optional(k)) {
                Some(extra) => Err(format!(
                    "{path}/{extra}: unexpected member, value {}",
                    a[extra]
                )),
                None => Ok(()),
            }
        }
        (Value::Array(p), Value::Array(a)) => {
            if p.len() != a.len() {
                return Err(format!(
                    "{at}: expected {} elements, got {}: {actual}",
                    p.len(),
                    a.len()
                ));
            }
            for (i, (pv, av)) in p.iter().zip(a).enumerate() {
                match_at(&format!("{path}/{i}"), None, pv, Some(av), vars)?;
            }
            Ok(())
        }
        (Value::Object(_) | Value::Array(_), _) | (_, Value::Object(_) | Value::Array(_)) => {
            Err(format!("{at}: expected {pattern}, got {actual}"))
        }
        _ if scalar_text(pattern) == scalar_text(actual) || json_eq(pattern, actual) => Ok(()),
        _ => Err(format!("{at}: expected {pattern}, got {actual}")),
    }
}

/// Matches a list of actual values against a list of patterns, in order.
pub fn match_list(
    what: &str,
    patterns: &[Value],
    actual: &[Value],
    vars: &mut Bindings,
) -> Result<(), String> {
    if patterns.len() != actual.len() {
        return Err(format!(
            "expected {} {what}, got {}: {}",
            patterns.len(),
            actual.len(),
            Value::Array(actual.to_vec())
        ));
    }
    for (i, (p, a)) in patterns.iter().zip(actual).enumerate() {
        match_value(p, a, vars).map_err(|e| format!("{what} #{}: {e} (in {a})", i + 1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_first_difference_is_named_by_its_pointer() {
        let a = json!({"todos": [{"id": 1}, {"id": 2, "a/b": 1.0}], "n": 1});
        assert_eq!(first_difference(&a, &a.clone()), None);
        // Numbers compare as the protocol's equality does.
        assert_eq!(
            first_difference(
                &a,
                &json!({"n": 1.0, "todos": [{"id": 1}, {"id": 2, "a/b": 1}]})
            ),
            None
        );
        let b = json!({"todos": [{"id": 1}, {"id": 2, "a/b": 2}], "n": 1});
        assert_eq!(
            describe_difference(&a, &b),
            "at /todos/1/a~1b: 1.0 against 2"
        );
        let shorter = json!({"todos": [{"id": 1}], "n": 1});
        assert_eq!(
            first_difference(&a, &shorter).map(|(p, _, y)| (p, y)),
            Some(("/todos/1".to_owned(), None))
        );
        let more = json!({"todos": a["todos"].clone(), "n": 1, "m": true});
        assert_eq!(
            describe_difference(&a, &more),
            "at /m: nothing against true"
        );
        assert_eq!(
            describe_difference(&json!(1), &json!([1])),
            "at the root: 1 against [1]"
        );
    }

    #[test]
    fn two_names_cannot_bind_the_same_id_at_the_same_member() {
        let mut vars = Bindings::default();
        match_value(
            &json!({"syncId": "$s1"}),
            &json!({"syncId": "7"}),
            &mut vars,
        )
        .unwrap();
        let reused = match_value(
            &json!({"syncId": "$s2"}),
            &json!({"syncId": "7"}),
            &mut vars,
        );
        assert!(reused.unwrap_err().contains("must be new"));
        // The same value at another member is another id.
        match_value(&json!({"callId": "$a"}), &json!({"callId": "7"}), &mut vars).unwrap();
    }

    #[test]
    fn variables_bind_once_and_then_must_agree() {
        let mut vars = Bindings::default();
        match_value(&json!({"syncId": "$s"}), &json!({"syncId": "7"}), &mut vars).unwrap();
        assert_eq!(vars.get("s"), Some("7"));
        assert!(match_value(&json!({"syncId": "$s"}), &json!({"syncId": "8"}), &mut vars).is_err());
        assert_eq!(
            substitute(&json!({"syncId": "$s"}), &vars).unwrap(),
            json!({"syncId": "7"})
        );
    }

    #[test]
    fn json_text_fields_compare_as_json() {
        let mut vars = Bindings::default();
        let actual = json!({"stateJson": "{\"b\":1.0,\"a\":[]}"});
        match_value(
            &json!({"stateJson": "{\"a\": [], \"b\": 1}"}),
            &actual,
            &mut vars,
        )
        .unwrap();
        assert!(match_value(&json!({"stateJson": "{\"a\": []}"}), &actual, &mut vars).is_err());
    }

    #[test]
    fn extra_members_fail_but_defaults_match_absence() {
        let mut vars = Bindings::default();
        let actual = json!({"syncId": "1", "reason": "SYNC_REASON_INITIAL"});
        match_value(
            &json!({"syncId": "any", "haveVersion": "0", "reason": "SYNC_REASON_INITIAL"}),
            &actual,
            &mut vars,
        )
        .unwrap();
        assert!(match_value(&json!({"syncId": "any"}), &actual, &mut vars).is_err());
    }

    #[test]
    fn an_errors_details_are_optional_unless_the_pattern_requires_none() {
        let mut vars = Bindings::default();
        let with_details = json!({"result": {"error": {
            "code": "ERROR_CODE_NOT_FOUND", "message": "no", "detailsJson": "{\"id\":7}"
        }}});
        let loose =
            json!({"result": {"error": {"code": "ERROR_CODE_NOT_FOUND", "message": "any"}}});
        let strict = json!({"result": {"error": {
            "code": "ERROR_CODE_NOT_FOUND", "message": "any", "detailsJson": ""
        }}});
        match_value(&loose, &with_details, &mut vars).unwrap();
        assert!(match_value(&strict, &with_details, &mut vars).is_err());
        let without =
            json!({"result": {"error": {"code": "ERROR_CODE_NOT_FOUND", "message": "no"}}});
        match_value(&strict, &without, &mut vars).unwrap();
        let not_json = json!({"result": {"error": {
            "code": "ERROR_CODE_NOT_FOUND", "message": "no", "detailsJson": "NaN"
        }}});
        assert!(match_value(&loose, &not_json, &mut vars).is_err());
        // Only an error's details: another object's extra member still fails.
        let extra = json!({"result": {"detailsJson": "{}", "callId": "1"}});
        assert!(match_value(&json!({"result": {"callId": "1"}}), &extra, &mut vars).is_err());
    }
}
