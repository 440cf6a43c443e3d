//! What a client driver reads from a host envelope before it locks the
//! client core, and what the core hands back to be freed after.
//!
//! Parsing a snapshot's state or a patch's operations, and freeing a
//! replaced mirror, depend on no state of the core. Done under the core's
//! lock, megabytes of JSON would hold every caller of `select`, `state` or
//! `call` for as long; done ahead, callers wait only for the mirror to be
//! swapped or patched. The core's answer is the same either way: what is
//! read ahead is what the core would have read itself.

use serde_json::Value;

use super::apply::ReadPatch;
use super::core::parse_snapshot_state;
use crate::wire::view::{HostKindView, HostView};

/// An envelope's payload, read ahead for [`ClientCore::handle_view_parsed`].
///
/// [`ClientCore::handle_view_parsed`]: super::core::ClientCore::handle_view_parsed
#[derive(Debug)]
pub(crate) enum ReadAhead {
    /// Nothing read: the core reads what it needs itself.
    Nothing,
    /// A snapshot's state, as [`parse_snapshot_state`] reads it.
    Snapshot(Result<Value, String>),
    /// A patch's operations, as [`ReadPatch::read`] reads them.
    Patch(ReadPatch),
}

impl ReadAhead {
    /// Reads `message`'s payload. A snapshot's state is read only if
    /// `reads_snapshot` says the core would read it (a snapshot addressed
    /// to another client on a shared bus is never parsed); a patch's
    /// operations always, since nearly every patch a client receives is
    /// one it applies.
    pub(crate) fn read(message: &HostView<'_>, reads_snapshot: impl FnOnce() -> bool) -> Self {
        match message.kind {
            Some(HostKindView::Snapshot(snapshot)) if reads_snapshot() => {
                Self::Snapshot(parse_snapshot_state(snapshot.state_json))
            }
            Some(HostKindView::Patch(patch)) => Self::Patch(ReadPatch::read(patch.patch_json)),
            _ => Self::Nothing,
        }
    }
}

/// What the core let go of while handling one envelope, for the driver to
/// free after it lets the core go.
#[derive(Debug, Default)]
pub(crate) struct Released {
    /// The mirror's state a snapshot replaced, or a snapshot's state
    /// offered and not adopted.
    pub(crate) state: Option<Value>,
    /// A patch read ahead, applied or not.
    pub(crate) patch: Option<ReadPatch>,
}
