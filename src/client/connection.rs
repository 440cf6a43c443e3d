//! Where a [`Client`](super::Client)'s link to its host stands, for
//! applications that show it ("reconnecting…") or act on why it failed.

use std::time::{Duration, Instant};

use crate::transport::TransportError;

/// The state of a client's link to its host, as its driver last set it.
///
/// It moves `Connecting` → `Connected` → `Retrying` → `Connecting` … until
/// `Stopped`, which is final. A watcher sees the latest state: states that
/// follow each other faster than it reads may be coalesced, as with gRPC's
/// connectivity-state watch. The state leaves `Connected` before the calls
/// a lost link took down settle, so a caller whose call failed that way
/// already sees why.
///
/// On the broadcast bus, which always connects and never ends, a client is
/// `Connecting` until a host speaks and then stays `Connected`, unless a
/// configured host silence takes the link down
/// ([`crate::client::ClientConfig::host_silence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Connection {
    /// A connect is under way, or the transport has connected and the host
    /// has not spoken yet (it may still refuse the session).
    Connecting {
        /// 1 for the first connect and for the first one after a link the
        /// host spoke on; one more for each later attempt.
        attempt: u32,
    },
    /// The host has spoken on the current link: it accepted the session,
    /// and the mirror follows it.
    Connected,
    /// The last connect failed or the link ended; the next connect is made
    /// after `retry_in`, at `retry_at`. Match it with `..`: fields may be
    /// added. The mirror and the calls not sent yet are kept;
    /// calls sent without a result settle `outcome-unknown` (spec §10).
    #[non_exhaustive]
    Retrying {
        /// Why: the connect's or the link's error, or `None` when the host
        /// ended the link without one (a closed stream).
        error: Option<TransportError>,
        /// The wait before the next connect; it doubles up to
        /// [`Reconnect::max`](super::Reconnect::max) with each attempt, and
        /// starts again from [`Reconnect::initial`](super::Reconnect::initial)
        /// only after a link the host spoke on stayed up for at least
        /// `Reconnect::max` (spec §17.1): a host that accepts and then
        /// drops each link at once is retried as patiently as one that
        /// refuses to connect.
        retry_in: Duration,
        /// When the next connect is made: `retry_in` after this state was
        /// set, so that a watcher reading the state later can still tell
        /// how long remains. It is read from tokio's clock: under a paused
        /// test clock, compare it with `tokio::time::Instant::now().into_std()`,
        /// not `std::time::Instant::now()`.
        retry_at: Instant,
        /// The number of the attempt that ended, as its `Connecting` gave.
        attempt: u32,
    },
    /// The client stopped for good: it was disposed (`error` is `None`), or
    /// its transport failed in a way reconnecting cannot help (refused
    /// credentials, a closed in-process pair, a bad configuration).
    Stopped {
        /// The transport error that stopped the client, if one did.
        error: Option<TransportError>,
    },
}

impl Connection {
    /// Whether a link is up.
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected)
    }

    /// Whether the client has stopped for good.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Self::Stopped { .. })
    }
}
