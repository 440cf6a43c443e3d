//! How deep the published view may nest: no deeper than every conforming
//! client can mirror (spec §15, "Mirror depth": 64 levels).
//!
//! A method may store a value a client sent, and arguments may nest as
//! deep as the JSON parser allows, at a path of any length. A view nested
//! deeper than clients accept is one no client can ever sync to again, and
//! the host's own recursive serialisation of it eventually overflows the
//! stack. Only what a commit places can make the view deeper, so checking
//! each operation's target costs O(change), like publishing it.

use json_patch::PatchOperation;
use serde_json::Value;

/// The deepest a host lets its published view nest, the view's own object
/// being level 1: the normative minimum every client accepts.
pub const MAX_VIEW_DEPTH: usize = 64;

/// The first level over [`MAX_VIEW_DEPTH`] that `ops`, applied to a section
/// whose state is now `state`, place a value at; `None` when all fit.
///
/// An `add` or `replace` places its own value. A `move` or `copy` places a
/// subtree the operation does not spell out, and a later operation may
/// shift it elsewhere, so with either the whole section is measured
/// instead: O(state), but neither built-in module kind emits them.
pub(super) fn too_deep(ops: &[PatchOperation], state: &Value) -> Option<usize> {
    too_deep_within(ops, state, MAX_VIEW_DEPTH)
}

/// How deep a host lets the state of a module it does not publish nest,
/// the module's state being level 1. No client mirrors it, so it need not
/// fit [`MAX_VIEW_DEPTH`]; but the host walks it recursively (measuring,
/// serialising and freeing it), so it must not nest without bound: each
/// call can nest a value it stores ~127 levels further. 256 levels take a
/// few hundred KiB of stack at most, within any thread's.
pub const MAX_PRIVATE_DEPTH: usize = 256;

/// [`too_deep`] for a module the host does not publish: the first level
/// over [`MAX_PRIVATE_DEPTH`] that `ops` place a value at, counted in the
/// module's state (its root being level 1).
pub(super) fn private_too_deep(ops: &[PatchOperation], state: &Value) -> Option<usize> {
    // A private section is measured as if it sat in a view, one level down.
    too_deep_within(ops, state, MAX_PRIVATE_DEPTH + 1).map(|level| level - 1)
}

/// [`too_deep`] against `limit` levels of a view.
fn too_deep_within(ops: &[PatchOperation], state: &Value, limit: usize) -> Option<usize> {
    if ops
        .iter()
        .any(|op| matches!(op, PatchOperation::Move(_) | PatchOperation::Copy(_)))
    {
        return deeper_than(state, limit - 1).map(|depth| 1 + depth);
    }
    for op in ops {
        let (path, value) = match op {
            PatchOperation::Add(o) => (o.path.as_str(), &o.value),
            PatchOperation::Replace(o) => (o.path.as_str(), &o.value),
            _ => continue,
        };
        // The containers around the target: the view's object, then one
        // per token of `path`, the section's own state being the first.
        let containers = 1 + path.bytes().filter(|&b| b == b'/').count();
        let Some(room) = limit.checked_sub(containers) else {
            return Some(containers);
        };
        if let Some(depth) = deeper_than(value, room) {
            return Some(containers + depth);
        }
    }
    None
}

/// The first level over [`MAX_VIEW_DEPTH`] a section whose state is
/// `state` reaches in the view, whose object holds it at level 1.
pub(super) fn section_too_deep(state: &Value) -> Option<usize> {
    deeper_than(state, MAX_VIEW_DEPTH - 1).map(|depth| 1 + depth)
}

/// The first level over [`MAX_VIEW_DEPTH`] a method's return value
/// reaches, its own level being 1, if it nests deeper than every client
/// reads `value_json` (spec §15, "Mirror depth"); `None` if it fits. `text_len` is the
/// length of its JSON text: a text shorter than two brackets a level
/// cannot nest that deep, so most values are judged without a walk.
pub(super) fn value_too_deep(value: &Value, text_len: usize) -> Option<usize> {
    if text_len <= 2 * MAX_VIEW_DEPTH {
        return None;
    }
    deeper_than(value, MAX_VIEW_DEPTH)
}

/// `value`'s nesting depth (0 for a scalar, 1 for an array or object of
/// scalars) if it is more than `room`; `None` if it fits. Iterative, and
/// stops at the first level past `room`, so no value is too deep to judge.
fn deeper_than(value: &Value, room: usize) -> Option<usize> {
    if !(value.is_array() || value.is_object()) {
        return None;
    }
    let mut stack = vec![(value, 0usize)];
    while let Some((value, level)) = stack.pop() {
        let inner = level + 1;
        match value {
            Value::Array(_) if inner > room => return Some(inner),
            Value::Object(_) if inner > room => return Some(inner),
            Value::Array(items) => stack.extend(items.iter().map(|child| (child, inner))),
            Value::Object(members) => stack.extend(members.values().map(|child| (child, inner))),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_patch::jsonptr::PointerBuf;
    use json_patch::{AddOperation, CopyOperation, RemoveOperation};
    use proptest::prelude::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(1), |inner, _| json!([inner]))
    }

    fn add(path: &str, value: Value) -> PatchOperation {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::parse(path).expect("pointer"),
            value,
        })
    }

    #[test]
    fn a_private_module_is_measured_in_its_own_levels_against_its_own_limit() {
        // `/x` then a value of depth d: the module's levels are 1 + d.
        let fits = MAX_PRIVATE_DEPTH - 1;
        assert_eq!(
            private_too_deep(&[add("/x", nested(fits))], &json!({})),
            None
        );
        assert_eq!(
            private_too_deep(&[add("/x", nested(fits + 1))], &json!({})),
            Some(MAX_PRIVATE_DEPTH + 1)
        );
        // Deeper than a view may be, yet within a private module's limit.
        assert!(too_deep(&[add("/x", nested(100))], &json!({})).is_some());
        assert_eq!(
            private_too_deep(&[add("/x", nested(100))], &json!({})),
            None
        );
    }

    proptest! {
        /// A value of depth `d` added `k` tokens below a section sits at
        /// level 1 + k + d of the view: refused exactly when that passes
        /// the limit.
        #[test]
        fn an_add_is_refused_exactly_when_it_nests_the_view_past_the_limit(
            tokens in 0usize..80,
            depth in 0usize..80,
        ) {
            let path: String = (0..tokens).map(|_| "/a").collect();
            let level = 1 + tokens + depth;
            let verdict = too_deep(&[add(&path, nested(depth))], &json!({}));
            if level > MAX_VIEW_DEPTH {
                prop_assert!(verdict.is_some());
                prop_assert!(verdict.unwrap_or(0) > MAX_VIEW_DEPTH);
            } else {
                prop_assert_eq!(verdict, None);
            }
        }
    }

    #[test]
    fn a_copy_is_judged_by_the_whole_section_it_left() {
        // The copy's target was shifted on by a later insert: only the
        // whole section still shows the too-deep subtree.
        let state = json!({"deep": nested(70), "l": [1, nested(70)]});
        let op = PatchOperation::Copy(CopyOperation {
            from: PointerBuf::parse("/deep").expect("pointer"),
            path: PointerBuf::parse("/l/0").expect("pointer"),
        });
        let shift = add("/l/0", json!(1));
        assert!(too_deep(&[op, shift], &state).is_some());
    }

    #[test]
    fn a_section_is_measured_from_the_level_below_the_view() {
        assert_eq!(section_too_deep(&nested(MAX_VIEW_DEPTH - 1)), None);
        assert_eq!(
            section_too_deep(&nested(MAX_VIEW_DEPTH)),
            Some(MAX_VIEW_DEPTH + 1)
        );
    }

    #[test]
    fn removals_never_make_the_view_deeper() {
        let op = PatchOperation::Remove(RemoveOperation {
            path: PointerBuf::parse("/a".repeat(200)).expect("pointer"),
        });
        assert_eq!(too_deep(&[op], &json!({})), None);
    }

    #[test]
    fn a_value_far_deeper_than_the_limit_is_judged_at_the_first_level_past_it() {
        assert_eq!(too_deep(&[add("/x", nested(500))], &json!({})), Some(65));
    }
}
