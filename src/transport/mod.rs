//! Transports: how envelopes travel between a host and its clients.
//!
//! A transport is a pair of halves in the shape of a sink and a stream:
//!
//! - a client holds a [`ClientLink`]: it sends [`ClientMessage`]s and receives
//!   [`HostMessage`]s; a [`Connector`] makes (and remakes) links, so the client
//!   can reconnect after a failure;
//! - a host serves one [`HostLink`] per client session: it receives
//!   [`ClientMessage`]s and sends shared [`HostFrame`]s, so byte transports
//!   write a publication's encoding once for all sessions.
//!
//! Writing a new transport means producing these two links from your channel;
//! [`memory`] is the shortest example.

pub mod grpc;
pub mod memory;

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
}

impl TransportError {
    /// Whether reconnecting may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Connection(_))
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
    pub stream: BoxStream<HostMessage>,
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
