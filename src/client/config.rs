//! How a client is configured.

use std::time::Duration;

/// The shortest interval between a sync request and its retry (spec §15,
/// L5): a client MUST NOT retry sooner.
pub const MIN_SYNC_RETRY: Duration = Duration::from_millis(100);

/// Client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// This client's peer id (`source` of what it sends). On a shared channel
    /// it must be unique among the channel's peers.
    pub peer_id: String,
    /// The host's peer id. When non-empty, envelopes from any other source
    /// are ignored and calls are addressed to it.
    pub host_id: String,
    /// Capability token; when non-empty, envelopes carrying another are
    /// ignored, and it is written on everything this client sends.
    pub capability: String,
    /// Calls that may be pending at once; more fail `resource-exhausted`
    /// locally without being sent.
    pub max_calls_in_flight: usize,
    /// How long a sync request may go unanswered before it is sent again.
    /// Never less than [`MIN_SYNC_RETRY`]: a shorter interval is taken as
    /// that (spec §15), so that a client cannot flood its host with
    /// requests.
    pub sync_retry: Duration,
    /// Largest encoded call envelope sent; a larger call fails
    /// `resource-exhausted` locally instead of breaking the transport. Set
    /// it no larger than the host's max message size (4 MiB by default).
    /// A call made before the client knows the host's epoch is measured as
    /// if the epoch were [`MAX_EPOCH`](super::MAX_EPOCH) bytes long, since it
    /// is sent with it, unless that keeps it within the 1 MiB every host
    /// accepts (spec L2).
    pub max_message_bytes: usize,
    /// How long a link may carry nothing from the host before the client
    /// takes it as lost (spec L10); `None`, the default, never. Set it only
    /// for a host that sends bookmarks (H10), to a few times its bookmark
    /// interval: a host without bookmarks may stay silent for as long as
    /// nothing changes. With the reference host's 5 s interval, 15 s
    /// suits. Point-to-point transports notice a vanished host themselves
    /// (gRPC keepalive, TCP keepalive, a closed channel); a shared channel
    /// cannot, so this is how a bus client does.
    pub host_silence: Option<Duration>,
    /// The timeout of a call made through a [`Client`](super::Client)
    /// without one of its own
    /// ([`CallOptions::timeout`](super::CallOptions::timeout)): it settles
    /// `deadline-exceeded` this long after it started if it has not
    /// settled. `None`, the default: such a call waits as long as it takes,
    /// across reconnects. The sans-IO core does not read it: its caller
    /// passes each call's deadline to [`ClientCore::call`](super::ClientCore::call).
    pub call_timeout: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            peer_id: "client".to_owned(),
            host_id: String::new(),
            capability: String::new(),
            max_calls_in_flight: 1024,
            sync_retry: Duration::from_secs(2),
            max_message_bytes: 4 * 1024 * 1024,
            host_silence: None,
            call_timeout: None,
        }
    }
}
