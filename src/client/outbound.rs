//! The client's sending half, shared by its driver and by callers.
//!
//! A call is sent by the task that makes it, at once, when the link can
//! take it without waiting: that spares a wake-up of the driver and a pass
//! of its loop per call. Whenever the link would make the sender wait, the
//! driver takes over and waits with its own waker. Either way the core's
//! outbox is drained in order, under one lock, so what goes out and in
//! which order is the same as when the driver alone sends.

use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::transport::{BoxSink, TransportError};
use crate::wire::ClientMessage;

/// The link's sink while a link is up.
#[derive(Default)]
pub(super) struct Outbound {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sink: Option<BoxSink<ClientMessage>>,
    /// The sink failed; the link is finished and the driver will see why.
    failed: Option<TransportError>,
    /// A message taken from the core that the sink had no room for yet.
    held: Option<ClientMessage>,
    /// The last attempt left the sink waiting for room: only the driver,
    /// whose waker the sink must hold, sends until it is ready again.
    waiting: bool,
}

impl State {
    /// Sends what `next` yields while the sink takes it, then flushes. A
    /// message taken from the core while the sink is not ready waits here
    /// and goes first next time (as it would in a pending `feed`).
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        next: &mut dyn FnMut() -> Option<ClientMessage>,
    ) -> Poll<Result<(), TransportError>> {
        if let Some(error) = &self.failed {
            return Poll::Ready(Err(error.clone()));
        }
        let Some(sink) = self.sink.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let held = &mut self.held;
        let result = (|| {
            while let Some(message) = held.take().or_else(&mut *next) {
                match sink.as_mut().poll_ready(cx) {
                    Poll::Ready(Ok(())) => sink.as_mut().start_send(message)?,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        *held = Some(message);
                        return Poll::Pending;
                    }
                }
            }
            sink.as_mut().poll_flush(cx)
        })();
        self.waiting = result.is_pending();
        if let Poll::Ready(Err(error)) = &result {
            self.failed = Some(error.clone());
        }
        result
    }
}

impl Outbound {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new link's sink.
    pub(super) fn attach(&self, sink: BoxSink<ClientMessage>) {
        *self.state() = State {
            sink: Some(sink),
            ..State::default()
        };
    }

    /// The link is over: its sink, to close or drop.
    pub(super) fn detach(&self) -> Option<BoxSink<ClientMessage>> {
        std::mem::take(&mut *self.state()).sink
    }

    /// The driver's send: everything `next` yields, waiting (with `cx`'s
    /// waker) while the sink is not ready.
    pub(super) fn poll_send(
        &self,
        cx: &mut Context<'_>,
        mut next: impl FnMut() -> Option<ClientMessage>,
    ) -> Poll<Result<(), TransportError>> {
        self.state().poll_send(cx, &mut next)
    }

    /// A caller's send: everything `next` yields if the sink takes it
    /// without waiting. Returns whether all of it went out; if not (no link,
    /// the sink is waiting or failed) the driver must be woken to finish.
    pub(super) fn send_now(&self, mut next: impl FnMut() -> Option<ClientMessage>) -> bool {
        let mut state = self.state();
        if state.waiting || state.sink.is_none() {
            return false;
        }
        // A sink that is not ready keeps this no-op waker only until the
        // driver, woken by our caller, polls it again with its own.
        let mut cx = Context::from_waker(Waker::noop());
        matches!(state.poll_send(&mut cx, &mut next), Poll::Ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use futures::SinkExt;
    use tokio::sync::mpsc;
    use tokio_util::sync::PollSender;

    use super::*;
    use crate::wire::{Call, client_message};

    fn call(id: u64) -> ClientMessage {
        ClientMessage {
            header: None,
            kind: Some(client_message::Kind::Call(Call {
                call_id: id,
                ..Default::default()
            })),
        }
    }

    fn id(message: &ClientMessage) -> u64 {
        match &message.kind {
            Some(client_message::Kind::Call(c)) => c.call_id,
            _ => 0,
        }
    }

    fn link(capacity: usize) -> (Outbound, mpsc::Receiver<ClientMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        let outbound = Outbound::default();
        outbound.attach(Box::pin(
            PollSender::new(tx).sink_map_err(|_| TransportError::Closed),
        ));
        (outbound, rx)
    }

    #[tokio::test]
    async fn a_full_link_leaves_sending_to_the_driver_and_nothing_is_lost_or_reordered() {
        let (outbound, mut rx) = link(1);
        let outbound = Arc::new(outbound);
        let queue = Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let next = {
            let queue = queue.clone();
            move || queue.lock().unwrap().pop_front()
        };
        queue.lock().unwrap().push_back(call(1));
        assert!(
            outbound.send_now(next.clone()),
            "room for one: sent at once"
        );
        queue.lock().unwrap().extend([call(2), call(3)]);
        assert!(
            !outbound.send_now(next.clone()),
            "full: the driver must finish"
        );
        assert!(!outbound.send_now(next.clone()), "still the driver's job");
        let driver = tokio::spawn({
            let outbound = outbound.clone();
            async move { std::future::poll_fn(|cx| outbound.poll_send(cx, next.clone())).await }
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(id(&rx.recv().await.unwrap()));
        }
        driver.await.unwrap().unwrap();
        assert_eq!(got, [1, 2, 3]);
        assert!(queue.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_sink_keeps_reporting_its_error() {
        let (outbound, rx) = link(4);
        drop(rx);
        let mut queue = VecDeque::from([call(1)]);
        assert!(!outbound.send_now(|| queue.pop_front()));
        let result = std::future::poll_fn(|cx| outbound.poll_send(cx, || None)).await;
        assert_eq!(result, Err(TransportError::Closed));
    }

    #[test]
    fn without_a_link_nothing_is_sent_and_the_driver_is_asked_to() {
        let outbound = Outbound::default();
        let mut queue = VecDeque::from([call(1)]);
        assert!(!outbound.send_now(|| queue.pop_front()));
        assert_eq!(queue.len(), 1);
    }
}
