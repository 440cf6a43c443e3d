//! Atomic application of RFC 6902 patches to a client's mirror.

use json_patch::{Patch, PatchOperation};
use serde_json::Value;

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
}

/// Whether `op` must be applied to a copy of the view rather than in place.
///
/// A root operation may leave a non-object, which must be refused. A `move`
/// is not atomic in json-patch 5: when its removal succeeds and its insertion
/// fails, the removed value is lost, and `json_patch::patch` then replays an
/// undo log against the damaged document, which can panic. Hosts emit
/// neither, so the copy costs nothing in practice.
fn needs_copy(op: &PatchOperation) -> bool {
    matches!(op, PatchOperation::Move(_)) || touches_root(op)
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

/// Parses `patch_json` and applies every operation to `view`, or none.
///
/// Costs O(size of the patch) for patches of `add`, `remove`, `replace`,
/// `copy` and `test` below the root; a patch with a root operation or a
/// `move` (which hosts never emit) is applied to a copy of the view, which
/// replaces the view only if every operation succeeded and the result is a
/// JSON object.
pub fn apply_patch(view: &mut Value, patch_json: &str) -> Result<(), ApplyError> {
    let patch: Patch =
        serde_json::from_str(patch_json).map_err(|e| ApplyError::Malformed(e.to_string()))?;
    if patch.0.is_empty() {
        return Ok(());
    }
    let to_err = |e: json_patch::PatchError| ApplyError::Operation {
        index: e.operation,
        reason: e.kind.to_string(),
    };
    if patch.0.iter().any(needs_copy) {
        let mut copy = view.clone();
        // The copy is dropped on failure, so nothing needs undoing.
        json_patch::patch_unsafe(&mut copy, &patch.0).map_err(to_err)?;
        if !copy.is_object() {
            return Err(ApplyError::NotAnObject);
        }
        *view = copy;
        return Ok(());
    }
    json_patch::patch(view, &patch.0).map_err(to_err)
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
}
