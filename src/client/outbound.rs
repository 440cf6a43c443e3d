//! The client's sending half, shared by its driver and by callers.
//!
//! A call is sent by the task that makes it, at once, when the link can
//! take it without waiting: that spares a wake-up of the driver and a pass
//! of its loop per call. Whenever the link would make the sender wait, the
//! driver takes over and waits with its own waker. Either way the core's
//! outbox is drained in order, under one lock, so what goes out and in
//! which order is the same as when the driver alone sends.
//!
//! On a new link no Call goes out before the host has spoken: a host may
//! still refuse the link after reading the client's SyncRequest (a wrong
//! token, its client limit, spec §17.1), and a Call sent before a refusal
//! would count as sent, and settle `outcome-unknown`, though the host ran
//! nothing. Held back, it stays queued in the core, for this link once the
//! host speaks or for the next. SyncRequests are not held: the first one
//! is what the host answers, and on a channel that can lose it (a shared
//! bus) its retries (L5) are what bring the answer.

use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::transport::{BoxSink, TransportError};
use crate::wire::{ClientMessage, client_message};

/// Takes the core's next message if it has one and the check it is handed
/// (whether the link may take that message now) passes:
/// [`ClientCore::poll_transmit_when`](super::ClientCore::poll_transmit_when).
pub(super) type Next<'a> =
    dyn FnMut(&mut dyn FnMut(&ClientMessage) -> bool) -> Option<ClientMessage> + 'a;

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
    /// The last attempt left the sink waiting for room: only the driver,
    /// whose waker the sink must hold, sends until it is ready again.
    waiting: bool,
    /// The host has spoken on the link, so Calls may go out on it (see
    /// the module's doc).
    accepted: bool,
}

/// Whether `message` waits for the host to accept the link.
fn waits_for_acceptance(message: &ClientMessage) -> bool {
    matches!(message.kind, Some(client_message::Kind::Call(_)))
}

impl State {
    /// Sends what `next` yields while the sink takes it, then flushes.
    /// `next` is handed a check of the sink's room and takes a message from
    /// the core only if there is one and the check passes, so a message the
    /// link cannot take yet stays queued in the core, untouched: not counted
    /// as sent, and sent on the next link if this one ends.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        next: &mut Next<'_>,
    ) -> Poll<Result<(), TransportError>> {
        if let Some(error) = &self.failed {
            return Poll::Ready(Err(error.clone()));
        }
        let Some(sink) = self.sink.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let accepted = self.accepted;
        let result = (|| {
            loop {
                let mut readiness = None;
                let message = next(&mut |message| {
                    if !accepted && waits_for_acceptance(message) {
                        return false;
                    }
                    let ready = sink.as_mut().poll_ready(cx);
                    let room = matches!(ready, Poll::Ready(Ok(())));
                    readiness = Some(ready);
                    room
                });
                match (message, readiness) {
                    (Some(message), _) => sink.as_mut().start_send(message)?,
                    (None, Some(Poll::Ready(Err(error)))) => return Poll::Ready(Err(error)),
                    (None, Some(Poll::Pending)) => return Poll::Pending,
                    // Nothing queued, a Call held until the host speaks, or
                    // a core that took nothing though there was room: done.
                    (None, _) => break,
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

    /// The host has spoken on the link: the Calls held back may go out.
    pub(super) fn release(&self) {
        self.state().accepted = true;
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
        mut next: impl FnMut(&mut dyn FnMut(&ClientMessage) -> bool) -> Option<ClientMessage>,
    ) -> Poll<Result<(), TransportError>> {
        self.state().poll_send(cx, &mut next)
    }

    /// A caller's send: everything `next` yields if the sink takes it
    /// without waiting. Returns whether all of it went out or waits for the
    /// host to speak (the driver sends it then); if not (no link, the sink
    /// is waiting or failed) the driver must be woken to finish.
    pub(super) fn send_now(
        &self,
        mut next: impl FnMut(&mut dyn FnMut(&ClientMessage) -> bool) -> Option<ClientMessage>,
    ) -> bool {
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
    use crate::wire::{Call, SyncRequest};

    fn call(id: u64) -> ClientMessage {
        ClientMessage {
            header: None,
            kind: Some(client_message::Kind::Call(Call {
                call_id: id,
                ..Default::default()
            })),
        }
    }

    /// Sync requests' ids in [`id`], apart from calls'.
    const SYNC: u64 = 1000;

    fn sync(id: u64) -> ClientMessage {
        ClientMessage {
            header: None,
            kind: Some(client_message::Kind::SyncRequest(SyncRequest {
                sync_id: id,
                ..Default::default()
            })),
        }
    }

    fn id(message: &ClientMessage) -> u64 {
        match &message.kind {
            Some(client_message::Kind::Call(c)) => c.call_id,
            Some(client_message::Kind::SyncRequest(r)) => SYNC + r.sync_id,
            _ => 0,
        }
    }

    /// What the core's `poll_transmit_when` does, over a plain queue.
    fn take_if(
        queue: &mut VecDeque<ClientMessage>,
        room: &mut dyn FnMut(&ClientMessage) -> bool,
    ) -> Option<ClientMessage> {
        if !room(queue.front()?) {
            return None;
        }
        queue.pop_front()
    }

    /// A new link, on which the host has not spoken yet.
    fn new_link(capacity: usize) -> (Outbound, mpsc::Receiver<ClientMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        let outbound = Outbound::default();
        outbound.attach(Box::pin(
            PollSender::new(tx).sink_map_err(|_| TransportError::Closed),
        ));
        (outbound, rx)
    }

    /// A link on which the host has spoken.
    fn link(capacity: usize) -> (Outbound, mpsc::Receiver<ClientMessage>) {
        let (outbound, rx) = new_link(capacity);
        outbound.release();
        (outbound, rx)
    }

    #[tokio::test]
    async fn calls_wait_for_the_host_to_speak_and_sync_requests_do_not() {
        let (outbound, mut rx) = new_link(8);
        let mut queue = VecDeque::from([sync(1), call(1), call(2)]);
        assert!(outbound.send_now(|room| take_if(&mut queue, room)));
        assert_eq!(id(&rx.try_recv().unwrap()), SYNC + 1);
        assert!(rx.try_recv().is_err(), "the calls are held");
        assert_eq!(queue.len(), 2, "and stay queued in the core");
        let mut cx = Context::from_waker(Waker::noop());
        // A retried SyncRequest goes ahead of the calls, and out (L5).
        queue.push_front(sync(2));
        assert_eq!(
            outbound.poll_send(&mut cx, |room| take_if(&mut queue, room)),
            Poll::Ready(Ok(())),
            "held, not waiting: the driver goes on reading"
        );
        assert_eq!(id(&rx.try_recv().unwrap()), SYNC + 2);
        assert!(rx.try_recv().is_err());

        outbound.release();
        assert!(outbound.send_now(|room| take_if(&mut queue, room)));
        assert_eq!(id(&rx.try_recv().unwrap()), 1);
        assert_eq!(id(&rx.try_recv().unwrap()), 2);

        // A new link holds again.
        let (tx, mut rx) = mpsc::channel(8);
        outbound.attach(Box::pin(
            PollSender::new(tx).sink_map_err(|_| TransportError::Closed),
        ));
        let mut queue = VecDeque::from([sync(3), call(4)]);
        assert!(outbound.send_now(|room| take_if(&mut queue, room)));
        assert_eq!(id(&rx.try_recv().unwrap()), SYNC + 3);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_link_leaves_sending_to_the_driver_and_nothing_is_lost_or_reordered() {
        let (outbound, mut rx) = link(1);
        let outbound = Arc::new(outbound);
        let queue = Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let next = {
            let queue = queue.clone();
            move |room: &mut dyn FnMut(&ClientMessage) -> bool| {
                take_if(&mut queue.lock().unwrap(), room)
            }
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
        assert!(!outbound.send_now(|room| take_if(&mut queue, room)));
        let result = std::future::poll_fn(|cx| outbound.poll_send(cx, |_| None)).await;
        assert_eq!(result, Err(TransportError::Closed));
    }

    #[test]
    fn without_a_link_nothing_is_sent_and_the_driver_is_asked_to() {
        let outbound = Outbound::default();
        let mut queue = VecDeque::from([call(1)]);
        assert!(!outbound.send_now(|room| take_if(&mut queue, room)));
        assert_eq!(queue.len(), 1);
    }
}
