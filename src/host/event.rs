//! What the host core reports to its driver besides envelopes.

use std::sync::Arc;

use crate::wire::ErrorCode;

/// Something a driver may want to log or react to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HostEvent {
    /// The published view reached `version` (one commit); every session
    /// may have output.
    Published {
        /// The new version.
        version: u64,
    },
    /// A method panicked; the call was answered `internal` and its module
    /// rolled back.
    MethodPanicked {
        /// The module.
        module: String,
        /// The method.
        method: String,
        /// The panic payload when it was a string, else `"panic"`.
        message: String,
    },
    /// [`HostCore::bookmark`](super::HostCore::bookmark) was called at `version`: every idle session
    /// now has a bookmark to send. Not a commit.
    Bookmarked {
        /// The current version.
        version: u64,
    },
    /// A client's call was answered. Emitted only while
    /// [`HostCore::record_calls`](super::HostCore::record_calls) is on: each costs a few small copies.
    CallAnswered(CallRecord),
}

/// One client call as the host answered it: what a metrics or audit hook
/// needs, without the arguments or the value.
///
/// "Answered" means decided: the result is queued for the session, and is
/// lost if the session ends before it is sent. A call that makes the host
/// close its session (flooding, an unread backlog: [`InputError::is_fatal`](super::InputError::is_fatal))
/// is not recorded; the driver logs the closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The session's label ([`PeerOptions::peer_id`](super::PeerOptions::peer_id): the remote address
    /// on gRPC and framed TCP), which tells two clients apart.
    pub session: String,
    /// The principal the session was authenticated as, if the transport
    /// said ([`HostCore::set_principal`](super::HostCore::set_principal)).
    pub principal: Option<Arc<str>>,
    /// The calling peer's id (the envelope's `source`). The client chooses
    /// it: do not authorise on it.
    pub peer: String,
    /// The call's id, unique per client.
    pub call_id: u64,
    /// The module called, cut to its first [`RECORDED_NAME`] bytes: a
    /// name the host does not know may be as long as a message, and a
    /// record can outlive the session.
    pub module: String,
    /// The method called, cut like `module`.
    pub method: String,
    /// `None` for a value, else the error code it was answered with
    /// (including refusals made before running it, such as
    /// `resource-exhausted` for too many calls in flight).
    pub error: Option<ErrorCode>,
    /// The result's `state_version`: the version the call's change (if any)
    /// is published at.
    pub version: u64,
}

/// The most bytes of a module or method name a [`CallRecord`] keeps.
pub const RECORDED_NAME: usize = 1024;

/// `text` cut to at most `keep` bytes, at a character boundary.
pub(super) fn cut(text: &str, keep: usize) -> String {
    let mut end = text.len().min(keep);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
