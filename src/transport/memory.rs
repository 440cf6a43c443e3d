//! An in-process transport pair over tokio channels (tests, demos, one
//! process hosting both sides).
//!
//! Host frames cross as shared pointers: nothing is encoded. A frame that
//! only one session holds (a call's result, a sync answer) reaches the
//! client without being copied.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{FutureExt, Sink, StreamExt};
use tokio::sync::mpsc::{self, OwnedPermit, error::SendError, error::TrySendError};
use tokio_stream::wrappers::ReceiverStream;

use super::{ClientLink, Connector, HostInput, HostLink, TransportError};
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
        sink: Box::pin(ChannelSink::new(to_client)),
        stream: Box::pin(ReceiverStream::new(from_client).map(Ok)),
    };
    let client = ClientLink {
        sink: Box::pin(ChannelSink::new(to_host)),
        stream: Box::pin(ReceiverStream::new(from_host).map(|frame| Ok(HostInput::from(frame)))),
    };
    (host, MemoryConnector(Mutex::new(Some(client))))
}

type Reserve<T> = Pin<Box<dyn Future<Output = Result<OwnedPermit<T>, SendError<()>>> + Send>>;

/// A sink into a bounded channel whose only sender it owns.
///
/// Being the only sender, it knows that a free slot seen in `poll_ready` is
/// still free in `start_send`, so while the channel has room it sends with
/// `try_send` and allocates nothing; only a full channel makes it wait for a
/// slot (a boxed `reserve_owned`), which keeps the channel's backpressure.
struct ChannelSink<T> {
    tx: mpsc::Sender<T>,
    /// A slot reserved after waiting on a full channel.
    permit: Option<OwnedPermit<T>>,
    /// The wait for a slot, while the channel is full.
    reserving: Option<Reserve<T>>,
}

impl<T: Send + 'static> ChannelSink<T> {
    fn new(tx: mpsc::Sender<T>) -> Self {
        Self {
            tx,
            permit: None,
            reserving: None,
        }
    }
}

impl<T: Send + 'static> Sink<T> for ChannelSink<T> {
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = &mut *self;
        if this.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        if this.reserving.is_none() {
            if this.tx.is_closed() {
                return Poll::Ready(Err(TransportError::Closed));
            }
            if this.tx.capacity() > 0 {
                return Poll::Ready(Ok(()));
            }
            this.reserving = Some(Box::pin(this.tx.clone().reserve_owned()));
        }
        let Some(reserving) = this.reserving.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match reserving.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                this.reserving = None;
                match result {
                    Ok(permit) => {
                        this.permit = Some(permit);
                        Poll::Ready(Ok(()))
                    }
                    Err(_) => Poll::Ready(Err(TransportError::Closed)),
                }
            }
        }
    }

    fn start_send(mut self: Pin<&mut Self>, item: T) -> Result<(), Self::Error> {
        if let Some(permit) = self.permit.take() {
            permit.send(item);
            return Ok(());
        }
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(TransportError::Closed),
            // Only reachable if `start_send` is called without a successful
            // `poll_ready` first, which the `Sink` contract forbids.
            Err(TrySendError::Full(_)) => Err(TransportError::Connection(
                "memory sink written without poll_ready".to_owned(),
            )),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A sent item is already in the receiver's queue.
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Dropping the sender closes the channel once the receiver has
        // drained it; a reserved slot goes back.
        self.permit = None;
        self.reserving = None;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use futures::SinkExt;

    use super::*;

    #[tokio::test]
    async fn a_full_channel_makes_the_sink_wait_and_keeps_every_item_in_order() {
        let (tx, mut rx) = mpsc::channel::<u32>(2);
        let mut sink = ChannelSink::new(tx);
        let writer = tokio::spawn(async move {
            for i in 0..10 {
                sink.send(i).await.unwrap();
            }
        });
        let mut got = Vec::new();
        while got.len() < 10 {
            got.push(rx.recv().await.unwrap());
        }
        writer.await.unwrap();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_sink_whose_receiver_is_gone_fails_closed() {
        let (tx, rx) = mpsc::channel::<u32>(1);
        let mut sink = ChannelSink::new(tx);
        drop(rx);
        assert_eq!(sink.send(1).await, Err(TransportError::Closed));
    }

    #[tokio::test]
    async fn the_client_gets_the_hosts_frame_itself_not_a_copy() {
        use futures::StreamExt;

        use crate::wire::{Header, HostMessage, Patch, host_message};

        let (mut host, connector) = pair();
        let mut client = connector.connect().await.unwrap();
        let frame = HostFrame::new(HostMessage {
            header: Some(Header::v1("e", "host", "")),
            kind: Some(host_message::Kind::Patch(Patch {
                base_version: 1,
                version: 2,
                patch_json: "[]".to_owned(),
                sync_id: 0,
            })),
        });
        host.sink.send(frame.clone()).await.unwrap();
        match client.stream.next().await {
            Some(Ok(HostInput::Frame(got))) => assert!(HostFrame::ptr_eq(&got, &frame)),
            other => panic!("expected the frame itself, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_sink_waiting_on_a_full_channel_fails_closed_when_the_receiver_goes() {
        let (tx, rx) = mpsc::channel::<u32>(1);
        let mut sink = ChannelSink::new(tx);
        sink.send(1).await.unwrap();
        let blocked = tokio::spawn(async move { sink.send(2).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(blocked.await.unwrap(), Err(TransportError::Closed));
    }
}
