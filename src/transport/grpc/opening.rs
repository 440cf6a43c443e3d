//! Opening a session stream without waiting on the host's response headers,
//! and without sending a Call the host may refuse to see (spec §17.2,
//! opening).
//!
//! Many gRPC stacks send response headers only with their first message,
//! and a host sends its first message only after the client's SyncRequest:
//! a client that waited for the headers before sending would wait for ever.
//! So the link is handed over at once and its first envelope (the
//! SyncRequest the client core always queues first) goes out straight
//! away. Everything after it waits until the host has accepted the stream:
//! a host may still refuse it (a wrong token, its client limit), and a Call
//! sent before a refusal would count as sent, and settle `outcome-unknown`,
//! though the host ran nothing. Held back, it stays queued in the client
//! core instead, for the next link.
//!
//! The RPC runs in a task of its own, so that hyper sends the request and
//! reads the answer whether or not the link's stream is being polled.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::Sink;
use futures::task::AtomicWaker;
use tokio::task::JoinHandle;

use crate::transport::{BoxSink, TransportError};
use crate::wire::ClientMessage;

/// Whether the host has accepted the stream: set once by the task that
/// opens it, read by the link's sink.
#[derive(Default)]
pub(super) struct Opening {
    outcome: OnceLock<Result<(), TransportError>>,
    waker: AtomicWaker,
}

impl Opening {
    /// Records the host's answer, unless one is recorded already, and wakes
    /// a sink waiting for it.
    pub(super) fn settle(&self, outcome: Result<(), TransportError>) {
        let _ = self.outcome.set(outcome);
        self.waker.wake();
    }
}

/// Settles an [`Opening`] as failed when dropped unsettled: a task that
/// ends without the host's answer (aborted, or panicking) must not leave
/// the sink waiting for it, and its driver with it.
pub(super) struct SettleOnDrop(pub(super) Arc<Opening>);

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        self.0.settle(Err(TransportError::Connection(
            "opening the stream ended without the host's answer".into(),
        )));
    }
}

/// A sink that sends its first envelope at once and holds the rest until
/// the host has accepted the stream; after a refusal it fails with the
/// refusal.
pub(super) struct HeldSink {
    inner: BoxSink<ClientMessage>,
    opening: Arc<Opening>,
    sent_first: bool,
}

impl HeldSink {
    pub(super) fn new(inner: BoxSink<ClientMessage>, opening: Arc<Opening>) -> Self {
        Self {
            inner,
            opening,
            sent_first: false,
        }
    }
}

impl Sink<ClientMessage> for HeldSink {
    type Error = TransportError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.sent_first {
            let outcome = match this.opening.outcome.get() {
                Some(outcome) => outcome,
                None => {
                    this.opening.waker.register(cx.waker());
                    match this.opening.outcome.get() {
                        Some(outcome) => outcome,
                        None => return Poll::Pending,
                    }
                }
            };
            if let Err(refusal) = outcome {
                return Poll::Ready(Err(refusal.clone()));
            }
        }
        this.inner.as_mut().poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: ClientMessage) -> Result<(), Self::Error> {
        let this = self.get_mut();
        this.sent_first = true;
        this.inner.as_mut().start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.as_mut().poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.as_mut().poll_close(cx)
    }
}

/// A task's output, the task aborted if this is dropped first: a link
/// dropped while its stream is still opening takes the RPC down with it.
pub(super) struct AbortOnDrop<T>(pub(super) JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, TransportError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().0)
            .poll(cx)
            .map_err(|e| TransportError::Connection(format!("opening the stream failed: {e}")))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use futures::SinkExt;
    use tokio::sync::mpsc;
    use tokio_util::sync::PollSender;

    use super::*;

    fn held() -> (HeldSink, Arc<Opening>, mpsc::Receiver<ClientMessage>) {
        let (tx, rx) = mpsc::channel(8);
        let inner: BoxSink<ClientMessage> =
            Box::pin(PollSender::new(tx).sink_map_err(|_| TransportError::Closed));
        let opening = Arc::new(Opening::default());
        (HeldSink::new(inner, opening.clone()), opening, rx)
    }

    fn send_first(sink: &mut HeldSink) {
        assert!(matches!(ready(sink), Poll::Ready(Ok(()))));
        Pin::new(sink).start_send(ClientMessage::default()).unwrap();
    }

    fn ready(sink: &mut HeldSink) -> Poll<Result<(), TransportError>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(sink).poll_ready(&mut cx)
    }

    #[tokio::test]
    async fn the_first_envelope_goes_at_once_and_the_rest_wait_for_acceptance() {
        let (mut sink, opening, mut rx) = held();
        send_first(&mut sink);
        assert!(rx.try_recv().is_ok(), "the first envelope went out");
        assert!(ready(&mut sink).is_pending(), "held until the host answers");
        opening.settle(Ok(()));
        assert!(matches!(ready(&mut sink), Poll::Ready(Ok(()))));
    }

    #[tokio::test]
    async fn after_a_refusal_the_sink_fails_with_it() {
        let (mut sink, opening, _rx) = held();
        send_first(&mut sink);
        opening.settle(Err(TransportError::Unauthenticated("no".into())));
        assert_eq!(
            ready(&mut sink),
            Poll::Ready(Err(TransportError::Unauthenticated("no".into())))
        );
    }

    #[tokio::test]
    async fn an_opening_dropped_unanswered_fails_the_sink_rather_than_hold_it() {
        let (mut sink, opening, _rx) = held();
        send_first(&mut sink);
        drop(SettleOnDrop(opening.clone()));
        assert!(matches!(
            ready(&mut sink),
            Poll::Ready(Err(TransportError::Connection(_)))
        ));
        // An answer already recorded is kept.
        let (mut sink, opening, _rx) = held();
        send_first(&mut sink);
        opening.settle(Ok(()));
        drop(SettleOnDrop(opening));
        assert!(matches!(ready(&mut sink), Poll::Ready(Ok(()))));
    }
}
