//! Transports: how envelopes travel between a host and its clients.
//!
//! A transport is a pair of halves in the shape of a sink and a stream:
//!
//! - a client holds a [`ClientLink`]: it sends [`ClientMessage`]s and receives
//!   [`HostMessage`]s as their bytes or as the host's own frames, which the
//!   client reads in place, or decoded ([`HostInput`]); a [`Connector`] makes
//!   (and remakes) links, so the client can reconnect after a failure;
//! - a host serves one [`HostLink`] per client session: it receives
//!   [`ClientMessage`]s and sends shared [`HostFrame`]s, so byte transports
//!   write a publication's encoding once for all sessions.
//!
//! The transports here: [`memory`] (an in-process pair), [`grpc`] (one
//! bidirectional stream per session), [`framed`] (length-prefixed frames over
//! TCP, Unix sockets, pipes and stdio), [`bus`] (a shared broadcast channel
//! many peers listen to) and [`worker`] (a host on its own thread, reached
//! through memory pairs).
//!
//! # Writing a transport
//!
//! A new point-to-point transport is one short file that turns a channel into
//! the two links; [`memory`] is the shortest example. Each half must
//! guarantee:
//!
//! - **Order, no duplicates.** Envelopes of one direction arrive in the order
//!   they were sent, each at most once. The protocol tolerates loss (the
//!   client detects and heals it), but results settle promptly only where
//!   order holds.
//! - **One link is one session.** The host serves each [`HostLink`] as one
//!   session with [`crate::host::Host::serve`]; a client that reconnects gets
//!   a fresh link from its [`Connector`] and a fresh session, never an old one
//!   resumed underneath it.
//! - **Ending the stream means the connection is gone.** A stream returns
//!   `None` when the other side closed cleanly and `Some(Err(_))` when the
//!   connection broke; either way the link is finished: the host ends the
//!   session, and the client settles in-flight calls `outcome-unknown` and,
//!   unless the error says retrying is pointless, asks the connector again.
//!   A stream must not end for any other reason. The one error item that
//!   does not end the link is [`TransportError::Lost`]: a shared channel
//!   yields it where it dropped envelopes, and the client handles it as
//!   input (spec SC12) and keeps reading. A point-to-point transport that
//!   cannot lose messages never yields it.
//! - **The sink fails only when the link is dead.** A sink error ends the
//!   link like a stream error does.
//! - **Errors map to [`TransportError`] by what the client should do next.**
//!   Three variants are retried: [`TransportError::Connection`] (refused,
//!   reset, timed out, a peer that went away),
//!   [`TransportError::HostLimit`] (the host is full, or ended the session
//!   for another of its limits) and [`TransportError::HostSilent`], which
//!   only the client raises (spec L10). Every other error, from the link or from
//!   [`Connector::connect`], stops the client for good and fails its pending
//!   and later calls: [`TransportError::Closed`] when nothing will ever answer
//!   again; [`TransportError::FrameTooLarge`] and
//!   [`TransportError::Malformed`] for input that breaks the transport's own
//!   framing (the same input would come again);
//!   [`TransportError::Unauthenticated`] when the host refuses credentials;
//!   [`TransportError::Unsupported`] when it does not serve the protocol;
//!   and [`TransportError::Setup`] when the connector's own configuration
//!   cannot work.
//! - **Byte transports write [`HostFrame::encoded`].** It is the message's
//!   encoding computed once and shared by every session it goes to.
//!
//! Shared channels, where every peer sees every envelope, are different:
//! one host pseudo-session broadcasts publications once and each client gets
//! its own reply-only session; see [`bus`].

pub mod bus;
pub mod framed;
pub mod grpc;
pub mod memory;
pub(crate) mod throttle;
pub mod worker;

use std::pin::Pin;

use futures::future::BoxFuture;
use futures::{Sink, Stream};

use crate::wire::{ClientMessage, HostFrame, HostMessage};

/// Why a transport failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The other end is gone for good; reconnecting cannot help.
    #[error("the transport is closed")]
    Closed,
    /// The connection broke or could not be made; a reconnect may succeed.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The host refused or ended the session for one of its limits (gRPC
    /// status `RESOURCE_EXHAUSTED`, spec §17.2): it serves as many clients
    /// as it may, or this client sent an envelope over its size limit,
    /// called while ignoring its results, or left too many results unread.
    /// The message says which. A reconnect may succeed once the host has
    /// room, so the client keeps trying.
    #[error("the host refused the session for its limits: {0}")]
    HostLimit(String),
    /// A host's framed connection was closed because the frame it was
    /// sending would have taken the connections of its listener past the
    /// bytes they may hold in frames still arriving (spec FB6).
    #[error("frames still arriving would hold more than {limit} bytes on this listener")]
    ReceiveBudget {
        /// The listener's budget in bytes.
        limit: usize,
    },
    /// A frame exceeded the transport's size limit.
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Bytes arrived that are not a protocol envelope.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The peer refused this client's credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The host does not serve the protocol as this client speaks it: over
    /// gRPC, status `UNIMPLEMENTED` (no such service or method, such as a
    /// host serving only another protocol version, or an encoding it
    /// refuses); on a framed stream, a peer that answers in another
    /// protocol, such as a gRPC host (spec FB9). Every reconnect would be
    /// refused the same way.
    #[error("the host does not serve this protocol: {0}")]
    Unsupported(String),
    /// The connector cannot connect as configured (a bad URL, token or TLS
    /// setting, or a system trust store without certificates); retrying
    /// cannot help.
    #[error("cannot connect as configured: {0}")]
    Setup(String),
    /// The channel dropped envelopes for this receiver but is still up:
    /// a shared channel's receiver that fell behind (spec SC12). A link
    /// stream yields it in place of the lost envelopes and carries on; it
    /// never ends a link, so it is not "retryable" either.
    #[error("{count} envelopes lost on the channel")]
    Lost {
        /// How many.
        count: u64,
    },
    /// The link carried nothing from the host for the client's configured
    /// host silence (spec L10), so the client took it as lost; a reconnect
    /// may find the host again, or another one.
    #[error("the host sent nothing for {silence:?}; the link is taken as lost")]
    HostSilent {
        /// The configured silence.
        silence: std::time::Duration,
    },
}

impl TransportError {
    /// Whether reconnecting may help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Connection(_) | Self::HostLimit(_) | Self::HostSilent { .. }
        )
    }

    /// The code a client's calls settle with when this error stops it for
    /// good: `permission-denied` for refused credentials, `unavailable`
    /// otherwise.
    pub fn stop_code(&self) -> crate::wire::ErrorCode {
        match self {
            Self::Unauthenticated(_) => crate::wire::ErrorCode::PermissionDenied,
            _ => crate::wire::ErrorCode::Unavailable,
        }
    }
}

/// A boxed sink of `T`.
pub type BoxSink<T> = Pin<Box<dyn Sink<T, Error = TransportError> + Send>>;
/// A boxed stream of `T`; it ends when the other side closes.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, TransportError>> + Send>>;

/// A client's connection to a host.
pub struct ClientLink {
    /// Where the client's envelopes go.
    pub sink: BoxSink<ClientMessage>,
    /// Where the host's envelopes come from.
    pub stream: BoxStream<HostInput>,
}

/// One envelope from the host, as a client link hands it over.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HostInput {
    /// A decoded message, as a custom link may pass them (the built-in
    /// in-process links pass [`HostInput::Frame`]).
    Message(HostMessage),
    /// The encoding of one `HostMessage`, which the client reads in place
    /// ([`ClientCore::handle_bytes`](crate::client::ClientCore::handle_bytes)):
    /// a byte transport that hands these over saves a copy of every string
    /// in the envelope. Bytes that do not decode end the link with
    /// [`TransportError::Malformed`], after which the client stops (the
    /// host would send them again).
    Encoded(bytes::Bytes),
    /// A frame of a host in this process, which the client reads in place
    /// ([`HostFrame::view`]): shared with the frame's other receivers and
    /// the host's history, never copied.
    Frame(HostFrame),
}

impl From<HostMessage> for HostInput {
    fn from(message: HostMessage) -> Self {
        Self::Message(message)
    }
}

impl From<HostFrame> for HostInput {
    fn from(frame: HostFrame) -> Self {
        Self::Frame(frame)
    }
}

impl HostInput {
    /// The message, decoded if it came encoded.
    pub fn into_message(self) -> Result<HostMessage, prost::DecodeError> {
        match self {
            Self::Message(message) => Ok(message),
            Self::Encoded(bytes) => prost::Message::decode(bytes),
            Self::Frame(frame) => Ok(frame.into_message()),
        }
    }
}

/// A host's end of one client session.
pub struct HostLink {
    /// A label for logs (the peer's address or id).
    pub peer_id: String,
    /// Where the host's envelopes go.
    pub sink: BoxSink<HostFrame>,
    /// Where the client's envelopes come from.
    pub stream: BoxStream<ClientMessage>,
}

/// Makes client links: once at start, and again after each failure.
pub trait Connector: Send + Sync + 'static {
    /// Opens a new link to the host.
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>>;
}
