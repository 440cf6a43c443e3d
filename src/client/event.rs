//! What the client core reports to its driver and callers: events,
//! conflicts, notices and the errors of its own refusals.

use std::time::Duration;

use serde_json::Value;

use crate::app::MethodError;
use crate::wire::ErrorCode;

/// Identifies one call made through a [`ClientCore`](super::ClientCore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// Why the mirror could not take an envelope as it came: the four sync
/// conflicts of spec §8. Each is reported, then healed by a resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConflictReason {
    /// A message older than the mirror arrived; it was ignored.
    StaleMessage,
    /// A patch arrived with no snapshot of its epoch to apply it to.
    MissingSnapshot,
    /// A patch did not start at the mirror's version: something was lost.
    VersionGap,
    /// A patch could not be applied; the mirror kept its last good state.
    PatchApplyFailed,
}

impl ConflictReason {
    /// The kebab-case name used by the spec and the test vectors.
    pub fn kebab_name(self) -> &'static str {
        match self {
            Self::StaleMessage => "stale-message",
            Self::MissingSnapshot => "missing-snapshot",
            Self::VersionGap => "version-gap",
            Self::PatchApplyFailed => "patch-apply-failed",
        }
    }
}

/// A sync anomaly the client detected (and, except for stale messages,
/// started healing with a sync request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// What happened.
    pub reason: ConflictReason,
    /// The mirror's version when it happened, if there was a mirror.
    pub current_version: Option<u64>,
    /// The version the incoming message carried.
    pub incoming_version: u64,
    /// Details, for logs.
    pub detail: String,
}

/// Something noteworthy that is not a sync conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// A result named a call this client is not waiting for (unknown,
    /// already settled, or a duplicate); it was ignored.
    UnexpectedResult {
        /// The result's call id.
        call_id: u64,
    },
    /// An envelope could not be understood and was ignored.
    Malformed {
        /// Why.
        reason: String,
    },
    /// The host coalesced publications this client was too slow to take
    /// into one snapshot.
    Overflow {
        /// The snapshot's version.
        version: u64,
    },
    /// The channel dropped envelopes that may have been meant for this
    /// client (a shared channel's receiver fell behind, spec SC12).
    EnvelopesLost {
        /// How many, as the channel counted them.
        count: u64,
    },
    /// The current link carried nothing from the host for the configured
    /// [`ClientConfig::host_silence`](super::ClientConfig::host_silence) (spec L10); the client took it as lost.
    HostSilent {
        /// The configured silence.
        silence: Duration,
    },
}

/// Everything a [`ClientCore`](super::ClientCore) reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The first snapshot arrived: the mirror exists.
    Ready {
        /// Its epoch.
        epoch: String,
        /// Its version.
        version: u64,
    },
    /// The mirror changed (a snapshot or a non-empty patch was applied).
    StateChanged {
        /// The mirror's new version.
        version: u64,
    },
    /// A snapshot of a new host epoch replaced the mirror.
    EpochChanged {
        /// The epoch before.
        old: String,
        /// The new epoch.
        new: String,
    },
    /// A sync anomaly.
    Conflict(Conflict),
    /// Something ignored or noteworthy.
    Notice(Notice),
    /// A call reached its one outcome.
    Settled {
        /// The call.
        call: CallId,
        /// The value, or why there is none.
        outcome: Result<Value, MethodError>,
        /// The state version the result observed, when the host answered.
        state_version: Option<u64>,
        /// Whether the call had left through the link when it settled. One
        /// never sent never ran, so making it again is safe whatever its
        /// code; one sent and settled without an answer may have run.
        sent: bool,
    },
}

/// Why a client input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client was disposed.
    #[error("the client is disposed")]
    Disposed,
    /// Too many calls pending.
    #[error("more than {limit} calls in flight")]
    TooManyCalls {
        /// The configured maximum.
        limit: usize,
    },
    /// The arguments could not be serialised as a JSON array.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The call's envelope would exceed the largest message a peer must
    /// accept; it was not sent (a transport would have had to drop it).
    #[error("the call's envelope is {size} bytes; the limit is {limit}")]
    CallTooLarge {
        /// The encoded size. For a call refused only for L2's margin (made
        /// before the client knew the host's epoch, and over the limit once
        /// the longest epoch a host may have is counted, which the Call is
        /// sent with), the size counting that epoch.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
}

impl From<ClientError> for MethodError {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Disposed => ErrorCode::Disposed,
            ClientError::TooManyCalls { .. } => ErrorCode::ResourceExhausted,
            ClientError::InvalidArguments(_) => ErrorCode::InvalidArgument,
            ClientError::CallTooLarge { .. } => ErrorCode::ResourceExhausted,
        };
        MethodError::new(code, e.to_string())
    }
}
