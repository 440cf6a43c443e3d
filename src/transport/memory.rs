//! An in-process transport pair over tokio channels (tests, demos, one
//! process hosting both sides).
//!
//! Host frames cross as shared pointers: nothing is encoded.

use std::sync::Mutex;

use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::PollSender;

use super::{ClientLink, Connector, HostLink, TransportError};
use crate::wire::{ClientMessage, HostFrame};

/// Envelopes buffered per direction before the sender waits.
pub const CAPACITY: usize = 1024;

/// The client's end of a memory pair. It connects once: after the host end
/// is dropped there is nothing to reconnect to.
pub struct MemoryConnector(Mutex<Option<ClientLink>>);

impl Connector for MemoryConnector {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let link = self.0.lock().ok().and_then(|mut slot| slot.take());
        async move { link.ok_or(TransportError::Closed) }.boxed()
    }
}

/// A connected pair: the host's end of the session and the client's
/// connector. Either may be used first; the client asks for a snapshot when
/// it starts, so creation order does not matter.
pub fn pair() -> (HostLink, MemoryConnector) {
    let (to_host, from_client) = mpsc::channel::<ClientMessage>(CAPACITY);
    let (to_client, from_host) = mpsc::channel::<HostFrame>(CAPACITY);
    let host = HostLink {
        peer_id: "memory".to_owned(),
        sink: Box::pin(PollSender::new(to_client).sink_map_err(|_| TransportError::Closed)),
        stream: Box::pin(ReceiverStream::new(from_client).map(Ok)),
    };
    let client = ClientLink {
        sink: Box::pin(PollSender::new(to_host).sink_map_err(|_| TransportError::Closed)),
        stream: Box::pin(ReceiverStream::new(from_host).map(|frame| Ok(frame.message().clone()))),
    };
    (host, MemoryConnector(Mutex::new(Some(client))))
}
