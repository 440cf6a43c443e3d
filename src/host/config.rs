//! Host configuration and limits.

use std::time::Duration;

/// How the host publishes commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Every commit publishes a snapshot of the whole published view.
    Snapshot,
    /// Every commit publishes an RFC 6902 patch from the previous version.
    #[default]
    Patch,
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "snapshot" => Ok(Self::Snapshot),
            "patch" => Ok(Self::Patch),
            other => Err(format!(
                "unknown sync mode {other:?} (expected patch or snapshot)"
            )),
        }
    }
}

/// Limits a host enforces. Every limit is per host unless it says otherwise;
/// a limit reached by one client never affects another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// Largest encoded client message accepted, in bytes. The host also
    /// keeps its published view small enough to be sent in one message of
    /// this size, so clients need a limit at least as large
    /// (`GrpcConnector::max_message_bytes`, `FramedConfig::max_frame_bytes`):
    /// one with the default 4 MiB stops at the first larger snapshot.
    pub max_message_bytes: usize,
    /// Results one client may have queued and unread before further calls
    /// from it are answered `resource-exhausted` without running. A client
    /// with twice this many queued is flooding, and its session is closed.
    pub max_calls_in_flight: usize,
    /// Sessions a host accepts at once; more are refused.
    pub max_clients: usize,
    /// Versions kept for resume and for clients that fall behind.
    pub history_entries: usize,
    /// Bytes of operations kept for resume and for clients that fall behind.
    pub history_bytes: usize,
    /// How long a new session may go without sending its first envelope:
    /// a connection accepted by a framed listener (`framed::serve_tcp`,
    /// `framed::serve_unix`) is then closed without ever having had a
    /// session (spec FB6), and a gRPC session stream is ended
    /// `DEADLINE_EXCEEDED` (G2). A client sends its SyncRequest as soon as
    /// its link opens (L7, G4), so an honest client never meets it;
    /// without it, a peer that opens a stream and says nothing holds a
    /// client slot for as long as it stays connected. The spec bounds it
    /// at 30 s at most for framed listeners and 10 s at least for gRPC, so
    /// a conforming host keeps it within 10–30 s; shorter is for tests.
    /// A `GrpcServer`'s health and reflection streams get the same time for
    /// their first message. Sessions opened by the application ([`Host::serve`], the shared
    /// bus, a framed stream it hands over itself) have no such deadline.
    ///
    /// [`Host::serve`]: crate::host::Host::serve
    pub first_envelope_timeout: Duration,
}

impl Default for HostLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_calls_in_flight: 1024,
            max_clients: 10_000,
            history_entries: 1024,
            history_bytes: 8 * 1024 * 1024,
            first_envelope_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything that shapes a host's behaviour apart from its modules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostConfig {
    /// How commits are published.
    pub sync: SyncMode,
    /// The modules whose state is published, or `None` for all of them.
    /// Calls reach every module either way.
    pub sections: Option<Vec<String>>,
    /// The host's peer id, written as `source` on everything it sends.
    pub peer_id: String,
    /// Capability token written on everything the host sends (shared
    /// channels); empty for none.
    pub capability: String,
    /// Limits.
    pub limits: HostLimits,
}
