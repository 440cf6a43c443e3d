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
/// Costs O(size of the patch) for patches that do not touch the root; a root
/// operation (which hosts never emit) is applied to a copy so that a result
/// that is not an object can be refused.
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
    if patch.0.iter().any(touches_root) {
        let mut copy = view.clone();
        json_patch::patch(&mut copy, &patch.0).map_err(to_err)?;
        if !copy.is_object() {
            return Err(ApplyError::NotAnObject);
        }
        *view = copy;
        return Ok(());
    }
    json_patch::patch(view, &patch.0).map_err(to_err)
}
