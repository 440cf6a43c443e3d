//! Atomic application of RFC 6902 patches to a client's mirror.

use json_patch::PatchOperation;
use json_patch::jsonptr::Pointer;
use serde_json::Value;

use super::ops::{Failure, Shifts, Undo, apply_in_place, parse_ops};

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
    /// The patch's `copy` operations would add more than [`copy_budget`]
    /// allows.
    #[error(
        "operation {index} would make the patch's copies add a weight of {copied} (values plus string bytes; the limit is {budget})"
    )]
    CopiesTooLarge {
        /// Zero-based index of the operation that went over.
        index: usize,
        /// The weight copied so far, including this operation's: values
        /// plus the length of their strings (see [`copy_budget`]).
        copied: usize,
        /// The limit, from [`copy_budget`].
        budget: usize,
    },
    /// The patch's `move` operations to deeper paths would move more JSON
    /// values than [`copy_budget`] allows (a budget of their own, apart
    /// from that of copies).
    #[error(
        "operation {index} would make the patch's moves to deeper paths move {moved} values (the limit is {budget})"
    )]
    MovesTooLarge {
        /// Zero-based index of the operation that went over.
        index: usize,
        /// Values moved deeper so far, including this operation's (counted
        /// no further than needed to go over).
        moved: usize,
        /// The limit, from [`copy_budget`].
        budget: usize,
    },
    /// The patch's insertions into and removals from arrays would shift
    /// more elements than [`shift_budget`] allows.
    #[error(
        "operation {index} would make the patch shift {shifted} array elements (the limit is {budget})"
    )]
    ShiftsTooLarge {
        /// Zero-based index of the operation that went over.
        index: usize,
        /// Elements shifted so far, including this operation's.
        shifted: usize,
        /// The limit, from [`shift_budget`].
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

/// How much the `copy` operations of a patch of `patch_len` bytes may add
/// in all: the patch's length, but at least 4096. What a copy adds is
/// weighed as 1 per JSON value plus the UTF-8 length of every string in it,
/// member names included, so the weight is within a small factor of the
/// copy's JSON text.
///
/// Spelling values out costs at least a byte each, so this keeps what a patch
/// adds proportional to its size, as with a snapshot; without it a few
/// hundred bytes of copies, each doubling a subtree, grow the mirror by
/// gigabytes, and with values counted but strings not weighed, 4000 copies
/// of a 1 MiB string (a 190 KB patch) added 4 GiB. The floor leaves room
/// for small legitimate copies.
pub fn copy_budget(patch_len: usize) -> usize {
    patch_len.max(4096)
}

/// How many array elements the insertions and removals of a patch of
/// `patch_len` bytes may shift in all: four times the patch's length, but
/// at least 2^24 (16 777 216).
///
/// Inserting into or removing from an array moves every element after the
/// index, so a patch of adds or removes at the front of an array costs the
/// client its length per operation: a few megabytes of them, seconds. The
/// budget keeps that work within a constant factor of a snapshot's. An
/// operation at index `i` of an array of length `n` is charged `n - i`, and
/// a run of `add`s, or of `remove`s, with one path is charged once (it is
/// applied as one splice or drain), which is what a host's diff emits to
/// truncate an array. The floor, what a patch of the default 4 MiB message
/// limit may shift, is over eight times the longest array a view within
/// that limit can hold, so a host's own diffs, and modules that edit
/// arrays a few elements at a time, never reach it.
pub fn shift_budget(patch_len: usize) -> usize {
    patch_len.saturating_mul(4).max(1 << 24)
}

/// How [`measure`] weighs what it counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Weigh {
    /// 1 per value: the work of walking it (what a `move` is charged).
    Values,
    /// 1 per value plus the length of every string, member names included:
    /// about its size (what a `copy` is charged, since it adds that much).
    Size,
}

/// The nesting depth of `value` (0 for a scalar) and its weight (see
/// [`Weigh`]): how many JSON values it holds, itself included, plus with
/// [`Weigh::Size`] the length of its strings. Iterative, so a deep value
/// cannot exhaust the stack. Stops once the weight is over `cap`, so that
/// measuring against a budget costs no more than the budget: the weight is
/// then over `cap` and the depth that of the part counted.
fn measure(value: &Value, cap: usize, weigh: Weigh) -> (usize, usize) {
    let size = |s: &str| if weigh == Weigh::Size { s.len() } else { 0 };
    if !value.is_array() && !value.is_object() {
        // The common case, without the walk's allocation.
        return (0, 1 + value.as_str().map_or(0, size));
    }
    let mut deepest = 0;
    let mut values: usize = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        values = values.saturating_add(1 + v.as_str().map_or(0, size));
        if values > cap {
            break;
        }
        deepest = deepest.max(depth);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|c| (c, depth + 1))),
            Value::Object(map) => {
                for (key, c) in map {
                    values = values.saturating_add(size(key));
                    stack.push((c, depth + 1));
                }
            }
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
    let depth = token_count(path) + measure(value, usize::MAX, Weigh::Values).0;
    if depth > MAX_MIRROR_DEPTH {
        return Err(ApplyError::TooDeep { index, depth });
    }
    Ok(())
}

/// Checks what an operation adds without looking at the document: the
/// nesting of an `add` or `replace` value at its path. Costs what the
/// value's text did.
fn check_static(index: usize, op: &PatchOperation) -> Result<(), ApplyError> {
    match op {
        PatchOperation::Add(o) => check_depth(index, &o.path, &o.value),
        PatchOperation::Replace(o) => check_depth(index, &o.path, &o.value),
        _ => Ok(()),
    }
}

/// What a patch's `copy` and `move` operations have measured so far, each
/// against a budget of [`copy_budget`] values.
///
/// Moves have a budget of their own rather than a share of the copies':
/// what copies add is the mirror's growth, which the "Copy amplification"
/// limit promises hosts up to its size whatever else the patch does, while
/// what moves measure is only work; apart, neither takes from the other,
/// and the two together still cost at most twice the budget.
struct Measured {
    budget: usize,
    copied: usize,
    moved: usize,
}

/// Checks what a `move` or `copy` would add, by measuring its source in the
/// document it is about to change, within the patch's budgets. A source
/// that does not exist is left for the operation itself to report, as is a
/// move into its own child.
///
/// A `move` is measured only if its `path` has more tokens than its `from`:
/// the only way it can nest the mirror deeper (§15, mirror depth). Every
/// value in the mirror already sits within [`MAX_MIRROR_DEPTH`] (snapshots
/// are parsed to it, patches checked against it), so one moved to the same
/// depth or higher stays within it, and a `move` onto itself (a no-op,
/// §7.4) moves nothing. A host moving, say, list items around never
/// measures them.
fn check_source(
    index: usize,
    op: &PatchOperation,
    doc: &Value,
    measured: &mut Measured,
) -> Result<(), ApplyError> {
    let (from, path, tally, weigh) = match op {
        PatchOperation::Move(o) => {
            let into_itself = o.path.starts_with(&o.from) && o.path.len() != o.from.len();
            if o.from == o.path || into_itself || token_count(&o.path) <= token_count(&o.from) {
                return Ok(());
            }
            (&o.from, &o.path, &mut measured.moved, Weigh::Values)
        }
        PatchOperation::Copy(o) => (&o.from, &o.path, &mut measured.copied, Weigh::Size),
        _ => return Ok(()),
    };
    let Some(source) = doc.pointer(from.as_str()) else {
        return Ok(());
    };
    let budget = measured.budget;
    let (depth, values) = measure(source, budget.saturating_sub(*tally), weigh);
    *tally = tally.saturating_add(values);
    if *tally > budget {
        return Err(match op {
            PatchOperation::Move(_) => ApplyError::MovesTooLarge {
                index,
                moved: *tally,
                budget,
            },
            _ => ApplyError::CopiesTooLarge {
                index,
                copied: *tally,
                budget,
            },
        });
    }
    let depth = token_count(path) + depth;
    if depth > MAX_MIRROR_DEPTH {
        return Err(ApplyError::TooDeep { index, depth });
    }
    Ok(())
}

/// Parses `patch_json` and applies every operation to `view`, or none.
///
/// Costs O(size of the patch) plus the array elements its operations shift
/// and what its copies and deeper moves measure (each within a budget
/// below). Every operation, at the root too, is applied in place and
/// undone on failure (the undo cannot fail), and a result that is not an
/// object is undone like a failed operation. Nothing copies the mirror,
/// whatever the operations, so no patch of a few bytes costs a copy of a
/// mirror of megabytes.
///
/// Besides RFC 6902's own failures, a patch is refused if it would nest the
/// mirror deeper than [`MAX_MIRROR_DEPTH`]; if its copies would add more
/// values than [`copy_budget`] allows (so that, as with a snapshot, what a
/// patch adds is bounded by its size), or its moves to deeper paths would
/// move more than that (so is the work of checking their depth); or if it
/// would shift more array elements than [`shift_budget`] allows.
pub fn apply_patch(view: &mut Value, patch_json: &str) -> Result<(), ApplyError> {
    let len = patch_json.len();
    apply_within(view, patch_json, copy_budget(len), shift_budget(len)).0
}

/// A patch's operations, read from its text and checked for everything
/// that needs no document: what [`apply_read_shifting`] applies, once.
/// Reading needs neither the mirror nor the client core, so a driver reads
/// a patch before it locks the core, and frees it after, with the values
/// applying it took out of the mirror.
#[derive(Debug)]
pub(crate) struct ReadPatch {
    /// The length of the text read: the budgets are proportional to it.
    len: usize,
    /// The operations, or why the text is no patch this client applies.
    /// Applying moves their values into the document.
    ops: Result<Vec<PatchOperation>, ApplyError>,
    /// Whether it was applied: its values are then gone.
    spent: bool,
    /// Once applied: the undo of each step, which holds what it replaced
    /// or removed, to be freed with it.
    released: Vec<(usize, Undo)>,
}

impl ReadPatch {
    /// Reads `patch_json`, refusing it as applying it would.
    pub(crate) fn read(patch_json: &str) -> Self {
        let ops = parse_ops(patch_json)
            .map_err(|e| ApplyError::Malformed(e.to_string()))
            .and_then(|ops| {
                match ops
                    .iter()
                    .enumerate()
                    .find_map(|(index, op)| check_static(index, op).err())
                {
                    Some(error) => Err(error),
                    None => Ok(ops),
                }
            });
        Self {
            len: patch_json.len(),
            ops,
            spent: false,
            released: Vec::new(),
        }
    }
}

/// [`apply_patch`] of a patch already read, allowed to shift at most
/// `shifts` array elements (and never more than [`shift_budget`] allows).
/// Also returns the elements it shifted, whether it applied or not: a
/// patch that fails has done that work, and undone it. The client core
/// passes what its shift credit allows (`client/shift_credit.rs`), so that
/// many small patches cannot each spend the whole per-patch floor.
pub(crate) fn apply_read_shifting(
    view: &mut Value,
    patch: &mut ReadPatch,
    shifts: usize,
) -> (Result<(), ApplyError>, usize) {
    apply_read(
        view,
        patch,
        copy_budget(patch.len),
        shifts.min(shift_budget(patch.len)),
    )
}

/// [`apply_patch`] with the budgets given: `copies` for the values copied
/// and, apart, for those moved deeper; `shifts` for array elements shifted.
/// Also returns the elements the patch shifted, applied or not.
fn apply_within(
    view: &mut Value,
    patch_json: &str,
    copies: usize,
    shifts: usize,
) -> (Result<(), ApplyError>, usize) {
    apply_read(view, &mut ReadPatch::read(patch_json), copies, shifts)
}

/// [`apply_within`] of a patch already read.
fn apply_read(
    view: &mut Value,
    patch: &mut ReadPatch,
    copies: usize,
    shifts: usize,
) -> (Result<(), ApplyError>, usize) {
    if std::mem::replace(&mut patch.spent, true) {
        // Its values were moved into a document already.
        let spent = ApplyError::Malformed("a patch read is applied once".to_owned());
        return (Err(spent), 0);
    }
    let ops = match &mut patch.ops {
        Ok(ops) => ops,
        Err(error) => return (Err(error.clone()), 0),
    };
    let mut shifts = Shifts::new(shifts);
    let mut measured = Measured {
        budget: copies,
        copied: 0,
        moved: 0,
    };
    let applied = apply_in_place(
        view,
        ops,
        &mut shifts,
        |index, op, doc| check_source(index, op, doc, &mut measured),
        |doc| {
            if doc.is_object() {
                Ok(())
            } else {
                Err(ApplyError::NotAnObject)
            }
        },
        &mut patch.released,
    );
    let result = applied.map_err(|(index, failure)| match failure {
        Failure::Patch(kind) => ApplyError::Operation {
            index,
            reason: kind.to_string(),
        },
        Failure::Shifts => ApplyError::ShiftsTooLarge {
            index,
            shifted: shifts.shifted,
            budget: shifts.budget,
        },
        Failure::Refused(error) => error,
    });
    (result, shifts.shifted)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{Just, Strategy, TestCaseError, prop_oneof};
    use proptest::{prop_assert, prop_assert_eq};
    use serde_json::json;

    use super::*;

    /// [`apply_within`], as the elements it shifted when it applied.
    fn within(
        view: &mut Value,
        patch_json: &str,
        copies: usize,
        shifts: usize,
    ) -> Result<usize, ApplyError> {
        let (applied, shifted) = apply_within(view, patch_json, copies, shifts);
        applied.map(|()| shifted)
    }

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

    /// Applying moves values into the mirror and hands back, with the
    /// patch, exactly what it replaced or removed, to be freed later.
    #[test]
    fn an_applied_patch_holds_what_it_replaced_or_removed() {
        let mut v = view();
        let mut patch = ReadPatch::read(
            r#"[{"op":"replace","path":"/s/o","value":{"k":2}},
                {"op":"remove","path":"/s/arr/0"},
                {"op":"remove","path":"/s/arr/0"},
                {"op":"add","path":"/s/x~1y","value":7},
                {"op":"add","path":"/s/new","value":[1]},
                {"op":"move","from":"/s/new","path":"/s/x~0y"}]"#,
        );
        let (applied, _) = apply_read_shifting(&mut v, &mut patch, usize::MAX);
        assert_eq!(applied, Ok(()));
        assert_eq!(
            v,
            json!({"s": {"arr": [3], "o": {"k": 2}, "x~y": [1], "x/y": 7}})
        );
        let released: Vec<Value> = patch
            .released
            .iter()
            .flat_map(|(_, undo)| undo.values())
            .cloned()
            .collect();
        assert_eq!(
            released,
            vec![json!({"k": 1}), json!(1), json!(2), json!(6), json!(5)]
        );
    }

    /// A refused patch changes nothing and holds nothing of the mirror's.
    #[test]
    fn a_refused_patch_holds_nothing_of_the_mirror() {
        let mut v = view();
        let mut patch = ReadPatch::read(
            r#"[{"op":"replace","path":"/s/o","value":1},{"op":"remove","path":"/nope"}]"#,
        );
        let (applied, _) = apply_read_shifting(&mut v, &mut patch, usize::MAX);
        assert!(matches!(
            applied,
            Err(ApplyError::Operation { index: 1, .. })
        ));
        assert_eq!(v, view());
        assert!(patch.released.is_empty());
    }

    /// Its values are in the mirror once applied, so a patch read is
    /// refused a second time rather than applying nulls.
    #[test]
    fn a_patch_read_applies_once() {
        let mut v = view();
        let mut patch = ReadPatch::read(r#"[{"op":"replace","path":"/s/o","value":3}]"#);
        assert_eq!(
            apply_read_shifting(&mut v, &mut patch, usize::MAX).0,
            Ok(())
        );
        let again = apply_read_shifting(&mut v, &mut patch, usize::MAX).0;
        assert!(matches!(again, Err(ApplyError::Malformed(_))));
        assert_eq!(v["s"]["o"], json!(3));
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

    /// Counting values alone let copies of one long string add far more
    /// than the patch: 4000 copies of a 1 MiB string, a 190 KB patch, grew
    /// the mirror by 4 GiB. Strings, member names included, now weigh their
    /// length.
    #[test]
    fn copies_weigh_the_strings_they_add() {
        let big = "x".repeat(64 * 1024);
        let doc = json!({"a": {"s": big.clone(), big.clone(): 1}});
        let copy_of = |from: &str| json!([{"op": "copy", "from": from, "path": "/b"}]).to_string();
        for from in ["/a/s", "/a"] {
            let error = refused_unchanged(doc.clone(), &copy_of(from));
            assert!(
                matches!(error, ApplyError::CopiesTooLarge { index: 0, copied, .. } if copied > big.len()),
                "{from}: {error:?}"
            );
        }
        let mut small = json!({"a": {"s": "x".repeat(4000)}});
        apply_patch(&mut small, &copy_of("/a")).expect("a copy within the budget applies");
        assert_eq!(small["b"], small["a"]);
    }

    /// `n` values in all: an array of `n - 1` scalars.
    fn values(n: usize) -> Value {
        Value::Array(vec![json!(0); n - 1])
    }

    /// A move onto itself is a no-op (§7.4), and used to be measured
    /// anyway, once per operation: thousands of them against a large array
    /// cost the client O(array) each. Now they are not measured at all, so
    /// even with no budget they apply.
    #[test]
    fn moves_onto_themselves_measure_nothing() {
        let doc = json!({"s": {"a": values(10_000)}});
        let ops: Vec<Value> = (0..100)
            .map(|_| json!({"op": "move", "from": "/s/a", "path": "/s/a"}))
            .collect();
        let mut v = doc.clone();
        within(&mut v, &Value::Array(ops).to_string(), 0, 0).expect("no-ops apply");
        assert_eq!(v, doc);
    }

    /// A move to the same depth or higher cannot nest the mirror deeper,
    /// so it is not measured either: a host moving large values around
    /// (renaming a member, reordering a list) never meets the move budget.
    #[test]
    fn moves_to_no_deeper_paths_measure_nothing() {
        let mut v = json!({"s": {"a": values(10_000), "l": [[1], [2]]}});
        let patch = json!([
            {"op": "move", "from": "/s/a", "path": "/s/b"},
            {"op": "move", "from": "/s/b", "path": "/t"},
            {"op": "move", "from": "/s/l/1", "path": "/s/l/0"},
        ]);
        within(&mut v, &patch.to_string(), 0, usize::MAX).expect("unmeasured moves apply");
        assert_eq!(v, json!({"s": {"l": [[2], [1]]}, "t": values(10_000)}));
    }

    /// Moves to deeper paths are measured (for mirror depth), and what they
    /// measure is bounded like what copies add: at most [`copy_budget`]
    /// values per patch, 4096 for a small one, counted over all its moves.
    #[test]
    fn moves_to_deeper_paths_may_move_no_more_values_than_the_budget() {
        let doc = |b: usize| json!({"s": {"a": values(4000), "b": values(b), "c": {}}});
        let patch = json!([
            {"op": "move", "from": "/s/a", "path": "/s/c/a"},
            {"op": "move", "from": "/s/b", "path": "/s/c/b"},
        ])
        .to_string();
        let mut v = doc(96);
        apply_patch(&mut v, &patch).expect("4096 values moved deeper apply");
        assert_eq!(v["s"]["c"]["b"], values(96));
        let error = refused_unchanged(doc(97), &patch);
        assert_eq!(
            error,
            ApplyError::MovesTooLarge {
                index: 1,
                moved: 4097,
                budget: 4096
            }
        );
    }

    /// Moves have a budget of their own: a patch may copy the full copy
    /// budget and move as much deeper.
    #[test]
    fn moves_and_copies_have_budgets_of_their_own() {
        let mut v = json!({"s": {"a": values(4096), "b": values(4096), "c": {}}});
        let patch = json!([
            {"op": "copy", "from": "/s/a", "path": "/s/d"},
            {"op": "move", "from": "/s/b", "path": "/s/c/b"},
        ]);
        apply_patch(&mut v, &patch.to_string()).expect("each within its own budget");
        assert_eq!(v["s"]["d"], v["s"]["a"]);
        assert_eq!(v["s"]["c"]["b"], values(4096));
    }

    #[test]
    fn shift_budget_is_four_elements_per_patch_byte_over_its_floor() {
        assert_eq!(shift_budget(0), 1 << 24);
        assert_eq!(shift_budget(1 << 22), 1 << 24);
        assert_eq!(shift_budget((1 << 22) + 1), (1 << 24) + 4);
        assert_eq!(shift_budget(usize::MAX), usize::MAX);
    }

    /// Inserting at or removing from the front of an array shifts the rest
    /// of it: thousands of such operations used to cost the client seconds.
    /// A patch may shift [`shift_budget`] elements (2^24 for a small one)
    /// and not one more.
    #[test]
    fn array_shifts_up_to_the_budget_apply_and_one_more_is_refused() {
        const LEN: usize = 1 << 20;
        let doc = json!({"s": {"a": vec![Value::Null; LEN]}});
        // Each pair shifts LEN (the remove) + LEN - 1 (the add, one shorter):
        // eight pairs, 2^24 - 8. Runs are charged once, so the pairs
        // alternate rather than repeat.
        let mut ops = Vec::new();
        for _ in 0..8 {
            ops.push(json!({"op": "remove", "path": "/s/a/0"}));
            ops.push(json!({"op": "add", "path": "/s/a/0", "value": 1}));
        }
        let with_last = |index: usize| {
            let mut ops = ops.clone();
            ops.push(json!({"op": "remove", "path": format!("/s/a/{index}")}));
            Value::Array(ops).to_string()
        };
        let mut v = doc.clone();
        apply_patch(&mut v, &with_last(LEN - 8)).expect("2^24 shifted elements apply");
        assert_eq!(v["s"]["a"].as_array().map(Vec::len), Some(LEN - 1));
        let error = refused_unchanged(doc, &with_last(LEN - 9));
        assert_eq!(
            error,
            ApplyError::ShiftsTooLarge {
                index: 16,
                shifted: (1 << 24) + 1,
                budget: 1 << 24
            }
        );
    }

    /// `move` and `copy` are charged as the insertions and removals they
    /// are, with a `test` among them.
    #[test]
    fn moves_and_copies_shift_arrays_against_the_same_budget() {
        let doc = json!({"s": {"a": [0, 1, 2, 3], "n": 9}});
        // A move onto itself shifts nothing; then remove at 1 of 4 (3) and
        // insert at 0 of 3 (3); then insert at 0 of 4 (4).
        let patch = r#"[{"op":"test","path":"/s/n","value":9},
            {"op":"move","from":"/s/a/0","path":"/s/a/0"},
            {"op":"move","from":"/s/a/1","path":"/s/a/0"},
            {"op":"copy","from":"/s/n","path":"/s/a/0"}]"#;
        let mut v = doc.clone();
        within(&mut v, patch, usize::MAX, 10).expect("10 shifts within 10");
        assert_eq!(v["s"]["a"], json!([9, 1, 0, 2, 3]));
        let error = refused_unchanged_within(doc, patch, 9);
        assert!(
            matches!(
                error,
                ApplyError::ShiftsTooLarge {
                    index: 3,
                    shifted: 10,
                    budget: 9
                }
            ),
            "{error:?}"
        );
    }

    /// What a host's diff emits to truncate an array, removes at the new
    /// end one by one, is one run, charged once: the elements it removes.
    /// Applied one at a time, it used to be quadratic in them.
    #[test]
    fn a_run_of_removes_at_one_index_is_charged_once() {
        let doc = json!({"s": {"a": (0..100).collect::<Vec<_>>()}});
        let ops: Vec<Value> = (0..60)
            .map(|_| json!({"op": "remove", "path": "/s/a/40"}))
            .collect();
        let patch = Value::Array(ops).to_string();
        let mut v = doc.clone();
        within(&mut v, &patch, 0, 60).expect("a run of 60 at 40 of 100 shifts 60");
        assert_eq!(v["s"]["a"], json!((0..40).collect::<Vec<_>>()));
        let error = refused_unchanged_within(doc, &patch, 59);
        assert!(
            matches!(error, ApplyError::ShiftsTooLarge { index: 0, .. }),
            "{error:?}"
        );
    }

    fn refused_unchanged_within(doc: Value, patch: &str, shifts: usize) -> ApplyError {
        let mut patched = doc.clone();
        let error =
            within(&mut patched, patch, usize::MAX, shifts).expect_err("the patch must fail");
        assert_eq!(patched, doc, "a failed patch changed the mirror");
        error
    }

    /// (length - index) of inserting at (`insert`) or removing the element
    /// at `path` in `doc`, or 0 where that is not a place in an array.
    fn model_shift(doc: &Value, path: &str, insert: bool) -> usize {
        let Some((parent, last)) = path.rsplit_once('/') else {
            return 0;
        };
        let Some(Value::Array(arr)) = doc.pointer(parent) else {
            return 0;
        };
        let index = if last == "-" {
            Some(arr.len())
        } else if last == "0"
            || (!last.starts_with('0') && last.bytes().all(|b| b.is_ascii_digit()))
        {
            last.parse::<usize>().ok()
        } else {
            None
        };
        match index {
            Some(i) if i < arr.len() || (insert && i == arr.len()) => arr.len() - i,
            _ => 0,
        }
    }

    /// Where a patch must stop, by the spec's rules applied one operation
    /// at a time with json-patch: the result and the elements shifted, or
    /// the index of the first operation that fails or takes the charge over
    /// `budget`, and whether it failed.
    fn model(doc: &Value, ops: &[Value], budget: usize) -> Result<(Value, usize), (usize, bool)> {
        let mut d = doc.clone();
        let mut charged = 0usize;
        for (j, op) in ops.iter().enumerate() {
            let kind = op["op"].as_str().unwrap();
            let path = op["path"].as_str().unwrap();
            let continues = j > 0
                && matches!(kind, "add" | "remove")
                && ops[j - 1]["op"] == op["op"]
                && ops[j - 1]["path"] == op["path"];
            let mut next = d.clone();
            let patch: json_patch::Patch = serde_json::from_value(json!([op])).unwrap();
            let failed = match kind {
                "test" => d.pointer(path) != Some(&op["value"]),
                "move" if op["from"] == op["path"] => d.pointer(path).is_none(),
                _ => json_patch::patch(&mut next, &patch).is_err(),
            };
            let charge = match kind {
                _ if continues || failed => 0,
                "add" => model_shift(&d, path, true),
                "remove" => model_shift(&d, path, false),
                "copy" => model_shift(&d, path, true),
                "move" if op["from"] == op["path"] => 0,
                "move" => {
                    let from = op["from"].as_str().unwrap();
                    let mut removed = d.clone();
                    let remove: json_patch::Patch =
                        serde_json::from_value(json!([{"op": "remove", "path": from}])).unwrap();
                    json_patch::patch(&mut removed, &remove).unwrap();
                    model_shift(&d, from, false) + model_shift(&removed, path, true)
                }
                _ => 0,
            };
            charged += charge;
            if failed {
                return Err((j, true));
            }
            if charged > budget {
                return Err((j, false));
            }
            if kind != "test" && !(kind == "move" && op["from"] == op["path"]) {
                d = next;
            }
        }
        Ok((d, charged))
    }

    fn shifting_op() -> impl Strategy<Value = Value> {
        let index = prop_oneof![
            Just("0"),
            Just("1"),
            Just("2"),
            Just("5"),
            Just("-"),
            Just("01")
        ];
        let path = (prop_oneof![Just("/a"), Just("/b"), Just("/a/0")], index)
            .prop_map(|(array, index)| format!("{array}/{index}"));
        prop_oneof![
            4 => path.clone().prop_map(|path| json!({"op": "add", "path": path, "value": 7})),
            4 => path.clone().prop_map(|path| json!({"op": "remove", "path": path})),
            1 => path.clone().prop_map(|path| json!({"op": "replace", "path": path, "value": 8})),
            2 => (path.clone(), path.clone())
                .prop_map(|(from, path)| json!({"op": "move", "from": from, "path": path})),
            1 => (path.clone(), path)
                .prop_map(|(from, path)| json!({"op": "copy", "from": from, "path": path})),
            1 => Just(json!({"op": "test", "path": "/b", "value": [4, 5]})),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// For every patch of insertions, removals, moves and copies (runs
        /// of one path likely among them), and every budget: the patch applies exactly when every
        /// operation does and the elements it shifts, counted as §15 counts
        /// them, are within the budget, with json-patch's result; otherwise
        /// it is refused, unchanged, at the operation where either first
        /// failed, and for the budget when only the budget did.
        #[test]
        fn shift_budget_refuses_exactly_the_patches_over_it(
            len in 0usize..5,
            ops in proptest::collection::vec(
                proptest::prop_oneof![
                    3 => shifting_op().prop_map(|op| vec![op]),
                    1 => (shifting_op(), 2usize..5).prop_map(|(op, n)| vec![op; n]),
                ],
                1..6,
            ),
            budget in 0usize..16,
        ) {
            let ops: Vec<Value> = ops.into_iter().flatten().collect();
            let doc = json!({"a": (0..len).map(|i| json!([i])).collect::<Vec<_>>(), "b": [4, 5]});
            let patch = Value::Array(ops.clone()).to_string();
            let mut ours = doc.clone();
            let result = within(&mut ours, &patch, usize::MAX, budget);
            match (model(&doc, &ops, budget), result) {
                (Ok((expected, charged)), Ok(shifted)) => {
                    prop_assert_eq!(ours, expected);
                    prop_assert_eq!(shifted, charged, "{}", patch);
                }
                (Err((j, failed)), Err(error)) => {
                    prop_assert_eq!(&ours, &doc);
                    match error {
                        ApplyError::ShiftsTooLarge { index, .. } => prop_assert_eq!(index, j),
                        ApplyError::Operation { index, .. } => {
                            prop_assert!(failed, "{:?}", (j, index));
                            prop_assert_eq!(index, j);
                        }
                        other => prop_assert!(false, "{other:?}"),
                    }
                }
                (expected, result) => prop_assert!(false, "{patch}: {expected:?} vs {result:?}"),
            }
        }

        /// A host's own patches, its diffs (json-patch's, which the host's
        /// `app::diff` reproduces exactly), concatenated as a resume patch
        /// concatenates them (PA5), shift at most one element per operation:
        /// every one shifts nothing but the runs that truncate arrays, each
        /// charged the elements it removes. So the floor of the budget is
        /// never approached by what a host publishes.
        #[test]
        fn host_diffs_shift_at_most_one_element_per_operation(
            states in proptest::collection::vec(diff_state(), 2..5),
        ) {
            let mut ops = Vec::new();
            for pair in states.windows(2) {
                ops.extend(json_patch::diff(&pair[0], &pair[1]).0);
            }
            let patch = serde_json::to_string(&ops).unwrap();
            let mut v = states[0].clone();
            within(&mut v, &patch, 0, ops.len()).map_err(|e| TestCaseError::fail(format!("{patch}: {e}")))?;
            prop_assert_eq!(&v, states.last().unwrap());
        }
    }

    fn diff_state() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![Just(Value::Null), (0i64..3).prop_map(Value::from)];
        let value = leaf.prop_recursive(3, 40, 12, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..12).prop_map(Value::Array),
                proptest::collection::btree_map(prop_oneof![Just("a"), Just("b")], inner, 0..3)
                    .prop_map(|m| Value::Object(
                        m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                    )),
            ]
        });
        (value.clone(), value).prop_map(|(a, b)| json!({"s": {"a": a, "b": b}}))
    }

    /// §6.5: integers are equal only when numerically equal; -1 is not 1.
    #[test]
    fn test_tells_integers_of_opposite_sign_apart() {
        let doc = json!({"s": {"n": -1, "p": 1}});
        refused_unchanged(doc.clone(), r#"[{"op":"test","path":"/s/n","value":1}]"#);
        refused_unchanged(doc.clone(), r#"[{"op":"test","path":"/s/p","value":-1}]"#);
        let mut v = doc.clone();
        apply_patch(&mut v, r#"[{"op":"test","path":"/s/n","value":-1}]"#).unwrap();
    }

    /// §6.5/J9: non-integers compare as binary64 values; -2.5 is not 2.5.
    #[test]
    fn test_tells_non_integers_of_opposite_sign_apart() {
        let doc = json!({"s": {"f": -2.5}});
        refused_unchanged(doc.clone(), r#"[{"op":"test","path":"/s/f","value":2.5}]"#);
        let mut v = doc.clone();
        apply_patch(&mut v, r#"[{"op":"test","path":"/s/f","value":-2.5}]"#).unwrap();
    }
}
