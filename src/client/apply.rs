//! Atomic application of RFC 6902 patches to a client's mirror.

use json_patch::PatchOperation;
use json_patch::jsonptr::Pointer;
use serde_json::Value;

use super::ops::{apply_in_place, parse_ops};

/// Why a patch could not be applied. The mirror is unchanged in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// `patch_json` is not a JSON array of RFC 6902 operations (unknown op,
    /// missing member, or a path that is not an RFC 6901 pointer).
    #[error("malformed patch: {0}")]
    Malformed(String),
    /// An operation does not fit the mirror (missing target, index out of
    /// range or with leading zeros, a move into its own child, a failed test).
    #[error("operation {index} failed: {reason}")]
    Operation {
        /// Zero-based index of the failing operation.
        index: usize,
        /// What failed.
        reason: String,
    },
    /// The patch would leave a root that is not a JSON object.
    #[error("the patched view is not a JSON object")]
    NotAnObject,
    /// An operation would nest the mirror deeper than [`MAX_MIRROR_DEPTH`].
    #[error(
        "operation {index} would nest the view {depth} levels deep (the limit is {MAX_MIRROR_DEPTH})"
    )]
    TooDeep {
        /// Zero-based index of the operation.
        index: usize,
        /// The nesting the operation would reach.
        depth: usize,
    },
    /// The patch's `copy` operations would add more JSON values than
    /// [`copy_budget`] allows.
    #[error(
        "operation {index} would make the patch's copies add {copied} values (the limit is {budget})"
    )]
    CopiesTooLarge {
        /// Zero-based index of the operation that went over.
        index: usize,
        /// Values copied so far, including this operation's.
        copied: usize,
        /// The limit, from [`copy_budget`].
        budget: usize,
    },
}

/// The deepest nesting of arrays and objects a patch may give the mirror.
///
/// It is the deepest serde_json parses, so a mirror built by patches is never
/// deeper than a snapshot of it could be, and the recursive code that walks
/// it (drop, clone, comparison, serialisation) stays far from the end of any
/// thread's stack. Without it a host could nest the mirror by ~100 levels
/// per `add`, or double its depth per `copy`, until the client overflows its
/// stack and aborts.
pub const MAX_MIRROR_DEPTH: usize = 127;

/// How many JSON values the `copy` operations of a patch of `patch_len`
/// bytes may add in all: the patch's length, but at least 4096.
///
/// Spelling values out costs at least a byte each, so this keeps what a patch
/// adds proportional to its size, as with a snapshot; without it a few
/// hundred bytes of copies, each doubling a subtree, grow the mirror by
/// gigabytes. The floor leaves room for small legitimate copies.
pub fn copy_budget(patch_len: usize) -> usize {
    patch_len.max(4096)
}

/// The nesting depth of `value` (0 for a scalar) and how many JSON values it
/// holds, itself included. Iterative, so a deep value cannot exhaust the stack.
fn measure(value: &Value) -> (usize, usize) {
    if !value.is_array() && !value.is_object() {
        // The common case, without the walk's allocation.
        return (0, 1);
    }
    let mut deepest = 0;
    let mut values = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        values += 1;
        deepest = deepest.max(depth);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|c| (c, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|c| (c, depth + 1))),
            _ => {}
        }
        if v.is_array() || v.is_object() {
            deepest = deepest.max(depth + 1);
        }
    }
    (deepest, values)
}

/// How many tokens `path` has: one per `/`, since a `/` inside a token is
/// escaped as `~1`.
fn token_count(path: &Pointer) -> usize {
    path.as_str().bytes().filter(|&b| b == b'/').count()
}

fn check_depth(index: usize, path: &Pointer, value: &Value) -> Result<(), ApplyError> {
    let depth = token_count(path) + measure(value).0;
    if depth > MAX_MIRROR_DEPTH {
        return Err(ApplyError::TooDeep { index, depth });
    }
    Ok(())
}

/// Checks what an operation adds without looking at the document: the
/// nesting of an `add` or `replace` value at its path.
fn check_static(index: usize, op: &PatchOperation) -> Result<(), ApplyError> {
    match op {
        PatchOperation::Add(o) => check_depth(index, &o.path, &o.value),
        PatchOperation::Replace(o) => check_depth(index, &o.path, &o.value),
        _ => Ok(()),
    }
}

/// Checks what a `move` or `copy` would add, by measuring its source in the
/// document it is about to change. A source that does not exist is left for
/// the operation itself to report.
fn check_source(
    index: usize,
    op: &PatchOperation,
    doc: &Value,
    copied: &mut usize,
    budget: usize,
) -> Result<(), ApplyError> {
    let (from, path, is_copy) = match op {
        PatchOperation::Move(o) => (&o.from, &o.path, false),
        PatchOperation::Copy(o) => (&o.from, &o.path, true),
        _ => return Ok(()),
    };
    let Some(source) = doc.pointer(from.as_str()) else {
        return Ok(());
    };
    let (depth, values) = measure(source);
    let depth = token_count(path) + depth;
    if depth > MAX_MIRROR_DEPTH {
        return Err(ApplyError::TooDeep { index, depth });
    }
    if is_copy {
        *copied = copied.saturating_add(values);
        if *copied > budget {
            return Err(ApplyError::CopiesTooLarge {
                index,
                copied: *copied,
                budget,
            });
        }
    }
    Ok(())
}

/// JSON equality as the protocol defines it (spec §6.5), which RFC 6902's
/// `test` uses: numbers are equal when numerically equal, whatever their
/// written form (`1` = `1.0`, `0` = `-0`), compared exactly (no rounding of
/// large integers through binary64). serde_json's own `==` tells integers
/// from floats, so it cannot be used.
fn json_eq(a: &Value, b: &Value) -> bool {
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

/// RFC 6902 `test` with the protocol's equality.
fn test_op(doc: &Value, path: &Pointer, expected: &Value) -> Result<(), String> {
    match doc.pointer(path.as_str()) {
        None => Err("path does not exist".to_owned()),
        Some(target) if json_eq(target, expected) => Ok(()),
        Some(_) => Err("value is not equal to the tested value".to_owned()),
    }
}

fn touches_root(op: &PatchOperation) -> bool {
    match op {
        PatchOperation::Add(o) => o.path.is_root(),
        PatchOperation::Remove(o) => o.path.is_root(),
        PatchOperation::Replace(o) => o.path.is_root(),
        PatchOperation::Move(o) => o.path.is_root() || o.from.is_root(),
        PatchOperation::Copy(o) => o.path.is_root(),
        PatchOperation::Test(_) => false,
    }
}

/// Whether in-place, undo-on-failure application (json-patch's, which
/// [`apply_in_place`] reproduces for the operations it takes) cannot be
/// trusted with `op`: a root operation may leave a non-object; a `move` is
/// neither atomic there (when its add fails the source is already gone,
/// with no undo recorded) nor always undoable (the undo of a move to an
/// ancestor is a move into its own child, which json-patch answers with
/// `unreachable!`); and what a `move` or `copy` adds can only be measured
/// one operation at a time, against the document as it then is; and a
/// `test` compares with serde_json's `==`, not the protocol's equality.
fn needs_working_copy(op: &PatchOperation) -> bool {
    matches!(
        op,
        PatchOperation::Move(_) | PatchOperation::Copy(_) | PatchOperation::Test(_)
    ) || touches_root(op)
}

/// Parses `patch_json` and applies every operation to `view`, or none.
///
/// Costs O(size of the patch) for patches of `add`, `remove` and `replace`
/// below the root, which are applied in place and undone on failure (their
/// undo cannot fail). A patch with a root operation, a `move`, a `copy` or a
/// `test` (none of which hosts emit) is applied to a copy, one
/// operation at a time without json-patch's undo, and the copy replaces
/// `view` only if every operation succeeded and the result is an object.
///
/// Besides RFC 6902's own failures, a patch is refused if it would nest the
/// mirror deeper than [`MAX_MIRROR_DEPTH`], or if its copies would add more values
/// than [`copy_budget`] allows (so that, as with a snapshot, what a patch
/// adds is bounded by its size).
pub fn apply_patch(view: &mut Value, patch_json: &str) -> Result<(), ApplyError> {
    let ops = parse_ops(patch_json).map_err(|e| ApplyError::Malformed(e.to_string()))?;
    if ops.is_empty() {
        return Ok(());
    }
    for (index, op) in ops.iter().enumerate() {
        check_static(index, op)?;
    }
    if ops.iter().any(needs_working_copy) {
        let budget = copy_budget(patch_json.len());
        let mut copied = 0;
        let mut copy = view.clone();
        for (index, op) in ops.iter().enumerate() {
            check_source(index, op, &copy, &mut copied, budget)?;
            if let PatchOperation::Test(t) = op {
                test_op(&copy, &t.path, &t.value)
                    .map_err(|reason| ApplyError::Operation { index, reason })?;
                continue;
            }
            // §7.4: `from` = `path` is a no-op (once `from` is known to
            // exist). json-patch would remove and re-add, which fails at the
            // root, where nothing can be removed.
            if let PatchOperation::Move(m) = op
                && m.from == m.path
            {
                if copy.pointer(m.from.as_str()).is_none() {
                    return Err(ApplyError::Operation {
                        index,
                        reason: "\"from\" path is invalid".to_owned(),
                    });
                }
                continue;
            }
            json_patch::patch_unsafe(&mut copy, std::slice::from_ref(op)).map_err(|e| {
                ApplyError::Operation {
                    index,
                    reason: e.kind.to_string(),
                }
            })?;
        }
        if !copy.is_object() {
            return Err(ApplyError::NotAnObject);
        }
        *view = copy;
        return Ok(());
    }
    apply_in_place(view, &ops).map_err(|(index, kind)| ApplyError::Operation {
        index,
        reason: kind.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn view() -> Value {
        json!({"s": {"arr": [1, 2, 3], "o": {"k": 1}, "x~y": 5, "x/y": 6}})
    }

    /// Applies `patch` to [`view`] and asserts it fails leaving the view as it was.
    fn assert_refused(patch: Value) -> ApplyError {
        let mut v = view();
        let err = apply_patch(&mut v, &patch.to_string()).expect_err("patch must be refused");
        assert_eq!(v, view(), "a refused patch changed the view");
        err
    }

    #[test]
    fn failed_move_after_other_ops_is_refused_without_panicking_or_losing_data() {
        // json_patch::patch panics here: the move removes "/s/new", fails
        // to insert it, and the undo of the first op finds nothing to remove.
        assert_refused(json!([
            {"op": "add", "path": "/s/new", "value": 1},
            {"op": "move", "from": "/s/new", "path": "/missing/x"}
        ]));
    }

    #[test]
    fn failed_move_keeps_its_source_value() {
        assert_refused(json!([{"op": "move", "from": "/s/o", "path": "/missing/x"}]));
        assert_refused(json!([{"op": "move", "from": "/s/arr/0", "path": "/s/arr/3"}]));
    }

    #[test]
    fn successful_move_is_applied() {
        let mut v = view();
        apply_patch(
            &mut v,
            r#"[{"op": "move", "from": "/s/arr/0", "path": "/s/arr/-"}]"#,
        )
        .unwrap();
        assert_eq!(v["s"]["arr"], json!([2, 3, 1]));
    }

    #[test]
    fn pointers_rfc_6901_forbids_are_refused() {
        for path in [
            "/s/arr/01",
            "/s/arr/00",
            "/s/arr/+1",
            "/s/arr/1.0",
            "/s/arr/4",
        ] {
            assert_refused(json!([{"op": "add", "path": path, "value": 0}]));
            assert_refused(json!([{"op": "replace", "path": path, "value": 0}]));
            assert_refused(json!([{"op": "remove", "path": path}]));
        }
        for path in ["/s/x~2y", "/s/x~", "s/arr"] {
            let err = assert_refused(json!([{"op": "add", "path": path, "value": 0}]));
            assert!(matches!(err, ApplyError::Malformed(_)), "{path}: {err:?}");
        }
    }

    #[test]
    fn dash_is_refused_outside_add() {
        assert_refused(json!([{"op": "remove", "path": "/s/arr/-"}]));
        assert_refused(json!([{"op": "replace", "path": "/s/arr/-", "value": 0}]));
        assert_refused(json!([{"op": "test", "path": "/s/arr/-", "value": 3}]));
        assert_refused(json!([{"op": "move", "from": "/s/arr/-", "path": "/s/z"}]));
        assert_refused(json!([{"op": "copy", "from": "/s/arr/-", "path": "/s/z"}]));
    }

    #[test]
    fn escapes_address_the_decoded_member() {
        let mut v = view();
        apply_patch(
            &mut v,
            r#"[{"op": "replace", "path": "/s/x~0y", "value": 50},
                {"op": "replace", "path": "/s/x~1y", "value": 60}]"#,
        )
        .unwrap();
        assert_eq!((&v["s"]["x~y"], &v["s"]["x/y"]), (&json!(50), &json!(60)));
    }

    #[test]
    fn move_onto_itself_is_a_no_op_even_at_the_root() {
        for pointer in ["", "/s", "/s/arr/1"] {
            let mut v = view();
            let patch = json!([{"op": "move", "from": pointer, "path": pointer}]);
            apply_patch(&mut v, &patch.to_string()).unwrap();
            assert_eq!(v, view(), "{pointer:?}");
        }
        assert_refused(json!([{"op": "move", "from": "/missing", "path": "/missing"}]));
    }

    #[test]
    fn move_into_own_child_is_refused() {
        assert_refused(json!([{"op": "move", "from": "/s/o", "path": "/s/o/k2"}]));
        assert_refused(json!([{"op": "move", "from": "", "path": "/q"}]));
    }

    #[test]
    fn root_replacement_must_leave_an_object() {
        let mut v = view();
        apply_patch(
            &mut v,
            r#"[{"op": "replace", "path": "", "value": {"z": 1}}]"#,
        )
        .unwrap();
        assert_eq!(v, json!({"z": 1}));
        let err = assert_refused(json!([{"op": "replace", "path": "", "value": [1]}]));
        assert_eq!(err, ApplyError::NotAnObject);
        assert_refused(json!([{"op": "remove", "path": ""}]));
    }

    /// A `move` from a member to one of its ancestors followed by a failing
    /// operation used to reach the `unreachable!` in json-patch's undo (the
    /// undo moves the ancestor into its own child) and abort the client.
    #[test]
    fn failed_patch_after_move_to_ancestor_is_refused_unchanged() {
        let err = assert_refused(json!([
            {"op": "move", "from": "/s/o", "path": "/s"},
            {"op": "test", "path": "/nowhere", "value": 0}
        ]));
        assert!(
            matches!(err, ApplyError::Operation { index: 1, .. }),
            "{err:?}"
        );
    }

    /// The same through the root: a member moved onto the root, then a failure.
    #[test]
    fn failed_patch_after_move_to_root_is_refused_unchanged() {
        assert_refused(json!([
            {"op": "move", "from": "/s", "path": ""},
            {"op": "remove", "path": "/nowhere"}
        ]));
    }

    /// A valid move to an ancestor replaces it, as RFC 6902 says.
    #[test]
    fn move_to_an_ancestor_replaces_it() {
        let mut v = view();
        apply_patch(&mut v, r#"[{"op": "move", "from": "/s/o", "path": "/s"}]"#).unwrap();
        assert_eq!(v, json!({"s": {"k": 1}}));
    }

    /// `test` compares by the protocol's equality (spec §6.5, §7.4):
    /// numbers numerically, whatever their written form.
    #[test]
    fn test_compares_numbers_numerically() {
        let doc = json!({"s": {"i": 1, "f": 1.0, "z": 0, "big": u64::MAX, "a": [2, {"k": -0.0}]}});
        for (path, value) in [
            ("/s/i", "1.0"),
            ("/s/f", "1"),
            ("/s/z", "-0"),
            ("/s/z", "0.0"),
            ("/s/a", "[2.0,{\"k\":0}]"),
            ("/s/big", "18446744073709551615"),
        ] {
            let mut v = doc.clone();
            let patch = format!(r#"[{{"op":"test","path":"{path}","value":{value}}}]"#);
            apply_patch(&mut v, &patch).unwrap_or_else(|e| panic!("{patch}: {e}"));
            assert_eq!(v, doc);
        }
        for (path, value) in [
            ("/s/i", "1.5"),
            ("/s/i", "\"1\""),
            ("/s/big", "1.8446744073709552e19"),
            ("/s/a", "[2]"),
        ] {
            let patch = format!(r#"[{{"op":"test","path":"{path}","value":{value}}}]"#);
            refused_unchanged(doc.clone(), &patch);
        }
        // A failed test after a change undoes the change.
        refused_unchanged(
            doc.clone(),
            r#"[{"op":"replace","path":"/s/i","value":5},{"op":"test","path":"/s/i","value":1}]"#,
        );
    }

    fn refused_unchanged(doc: Value, patch: &str) -> ApplyError {
        let mut patched = doc.clone();
        let error = apply_patch(&mut patched, patch).expect_err("the patch must fail");
        assert_eq!(patched, doc, "a failed patch changed the mirror");
        error
    }

    fn nested(levels: usize) -> Value {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!([v]);
        }
        v
    }

    /// MAX_MIRROR_DEPTH is exactly the nesting serde_json parses, so every mirror a
    /// patch may build can be sent and read back as a snapshot.
    #[test]
    fn max_depth_is_the_deepest_snapshot_serde_json_parses() {
        let deepest = json!({ "a": nested(MAX_MIRROR_DEPTH - 1) }).to_string();
        assert!(serde_json::from_str::<Value>(&deepest).is_ok());
        let deeper = json!({ "a": nested(MAX_MIRROR_DEPTH) }).to_string();
        assert!(serde_json::from_str::<Value>(&deeper).is_err());
    }

    /// Repeated adds, each nesting a parseable value below the last, used to
    /// build a mirror deep enough to overflow the stack of whatever walked it.
    #[test]
    fn adds_may_nest_up_to_max_depth_and_no_further() {
        // A value in patch text sits two levels down, so depth comes from
        // paths: `/a` holds 100 nested arrays, and the next add goes inside.
        let inner = format!("/a{}", "/0".repeat(100));
        let at_limit = json!([
            {"op": "add", "path": "/a", "value": nested(100)},
            {"op": "add", "path": inner, "value": nested(MAX_MIRROR_DEPTH - 101)},
        ]);
        let mut doc = json!({});
        apply_patch(&mut doc, &at_limit.to_string()).expect("the limit itself is allowed");
        let text = doc.to_string();
        assert_eq!(serde_json::from_str::<Value>(&text).ok(), Some(doc.clone()));
        let deeper = json!([
            {"op": "add", "path": "/b", "value": nested(100)},
            {"op": "add", "path": format!("/b{}", "/0".repeat(100)), "value": nested(MAX_MIRROR_DEPTH - 100)},
        ]);
        let error = refused_unchanged(doc, &deeper.to_string());
        assert_eq!(
            error,
            ApplyError::TooDeep {
                index: 1,
                depth: MAX_MIRROR_DEPTH + 1
            }
        );
    }

    /// A copy of a subtree into its own leaf doubles its depth per
    /// operation; it is stopped at the limit too.
    #[test]
    fn copies_into_their_own_leaves_stop_at_max_depth() {
        let mut doc = json!({"a": nested(64)});
        let leaf = format!("/a{}", "/0".repeat(64));
        let patch = json!([{"op": "copy", "from": "/a", "path": leaf}]);
        let error = refused_unchanged(doc.clone(), &patch.to_string());
        assert!(
            matches!(error, ApplyError::TooDeep { index: 0, .. }),
            "{error:?}"
        );
        let shallow = json!([{"op": "copy", "from": "/a", "path": "/b"}]);
        apply_patch(&mut doc, &shallow.to_string()).expect("a shallow copy applies");
        assert_eq!(doc["a"], doc["b"]);
    }

    /// Copies that double a subtree used to let a patch of a few hundred
    /// bytes grow the mirror by gigabytes.
    #[test]
    fn copies_may_add_no_more_values_than_the_budget() {
        let doc = json!({"a": [1, 2, 3, 4, 5, 6, 7, 8]});
        let ops: Vec<Value> = (0..30)
            .map(|_| json!({"op": "copy", "from": "/a", "path": "/a/0"}))
            .collect();
        let text = Value::Array(ops).to_string();
        let error = refused_unchanged(doc.clone(), &text);
        assert!(
            matches!(error, ApplyError::CopiesTooLarge { budget: 4096, copied, .. } if copied > 4096),
            "{error:?}"
        );
        let mut small = doc;
        apply_patch(&mut small, r#"[{"op":"copy","from":"/a","path":"/b"}]"#)
            .expect("a copy within the budget applies");
        assert_eq!(small["b"], small["a"]);
    }
}
