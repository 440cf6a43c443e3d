//! Serving one client session of a [`Host`] over a link: the [`Session`]
//! a transport drives envelope by envelope, and the task that reads its
//! input and writes its output.

use std::future::Future;
use std::sync::{Arc, MutexGuard};
use std::task::{Context, Poll};

use futures::StreamExt;
use tokio::sync::Notify;

use super::{Host, Shared, time_method};
use crate::host::core_lock::Nap;
use crate::host::input::PreparedInput;
use crate::host::session_end::{EndSlot, SessionEnd};
use crate::host::{HostCore, InputError, PeerKey, PeerOptions};
use crate::transport::throttle::throttled;
use crate::transport::{BoxSink, HostLink, TransportError};
use crate::wire::{ClientMessage, HostFrame};

impl Host {
    /// Serves one session over `link` until either side closes it, the
    /// session misbehaves beyond recovery, or the host shuts down. A host
    /// built with a capability token serves none: it fails at once with
    /// [`InputError::SharedChannelToken`].
    ///
    /// One task does both directions, in one pass per wake-up: it reads all
    /// the input there is, then writes all the output the link takes. Input
    /// is read even while the link cannot take output, so a client that
    /// keeps sending without reading is still heard (and closed once it
    /// floods the host), and the two peers never wait on each other.
    pub async fn serve(&self, link: HostLink) -> Result<(), InputError> {
        self.serve_as(link, None).await
    }

    /// Like [`Host::serve`], for a link whose peer the application
    /// authenticated as `principal` (a Unix socket's peer credentials, a
    /// client certificate): every call on it runs with that as
    /// [`Caller::principal`](crate::host::Caller::principal).
    pub async fn serve_as(
        &self,
        link: HostLink,
        principal: Option<Arc<str>>,
    ) -> Result<(), InputError> {
        if self.carries_capability() {
            return Err(InputError::SharedChannelToken);
        }
        let session = self
            .open_session_as_async(
                PeerOptions {
                    peer_id: link.peer_id.clone(),
                    publications: true,
                },
                principal,
            )
            .await?;
        self.serve_session(session, link).await
    }

    /// [`Host::serve`] for a session already opened for `link`'s peer, so
    /// that a transport can tell a refused session (the host is full or
    /// stopping) from one that ran, before it says a client connected.
    pub(crate) async fn serve_session(
        &self,
        session: Session,
        link: HostLink,
    ) -> Result<(), InputError> {
        let HostLink {
            peer_id,
            mut sink,
            mut stream,
        } = link;
        // Woken by publications, bookmarks and shutdown; this task's own
        // input is followed by its own output pass, not by a notification.
        let mut woken = std::pin::pin!(session.notify.notified());
        // Input read while another session's method held the core, and the
        // wait before trying the core again: the task never blocks on the
        // core, so a shutdown ends it even while a method runs.
        let mut held: Option<PreparedInput<'static>> = None;
        let mut nap = Nap::default();
        // The client closed its side: what it sent is still answered (H8),
        // then the session ends.
        let mut input_ended = false;
        std::future::poll_fn(|cx| {
            loop {
                if session.is_closed() {
                    session.end_as(SessionEnd::HostShutDown);
                    return Poll::Ready(Ok(()));
                }
                let mut busy = false;
                loop {
                    if held.is_none() {
                        if input_ended {
                            break;
                        }
                        match stream.poll_next_unpin(cx) {
                            Poll::Ready(Some(Ok(message))) => {
                                held = Some(session.prepare(message));
                            }
                            Poll::Ready(Some(Err(error))) => {
                                let ended = read_failed(self, &peer_id, error);
                                session.end_as(match ended {
                                    Ok(()) => SessionEnd::ConnectionLost,
                                    Err(_) => SessionEnd::RefusedInput,
                                });
                                return Poll::Ready(ended);
                            }
                            Poll::Ready(None) => {
                                input_ended = true;
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                    match session.try_handle_quietly(&mut held) {
                        None => {
                            busy = true;
                            break;
                        }
                        Some(Err(error)) if error.is_fatal() => {
                            throttled!(
                                self.session_logs().closing,
                                warn,
                                peer = %peer_id,
                                %error,
                                "closing session"
                            );
                            session.end_as(SessionEnd::RefusedInput);
                            return Poll::Ready(Err(error));
                        }
                        Some(Err(error)) => {
                            tracing::debug!(peer = %peer_id, %error, "ignored input");
                        }
                        Some(Ok(())) => {}
                    }
                }
                if !busy {
                    match write_ready(&session, &mut sink, cx) {
                        Ok(core_busy) => busy = core_busy,
                        Err(_) => {
                            session.end_as(SessionEnd::ConnectionLost);
                            return Poll::Ready(Ok(()));
                        }
                    }
                    if input_ended && !busy {
                        match session.shared.core.now() {
                            // Another session's method holds the core: look
                            // again after a nap, not at the next wake-up.
                            None => busy = true,
                            Some(core) if !core.has_answers(session.key) => {
                                drop(core);
                                // Everything owed is in the sink: end once
                                // it is out, and only then was the client
                                // answered.
                                return sink.as_mut().poll_flush(cx).map(|flushed| {
                                    session.end_as(match flushed {
                                        Ok(()) => SessionEnd::ClientClosed,
                                        Err(_) => SessionEnd::ConnectionLost,
                                    });
                                    Ok(())
                                });
                            }
                            Some(_) => {}
                        }
                    }
                } else if let Poll::Ready(Err(_)) = sink.as_mut().poll_flush(cx) {
                    // What the sink already holds needs no core to go out.
                    session.end_as(SessionEnd::ConnectionLost);
                    return Poll::Ready(Ok(()));
                }
                if busy {
                    if nap.poll(cx).is_ready() {
                        continue;
                    }
                } else {
                    nap.reset();
                }
                match woken.as_mut().poll(cx) {
                    // Something may be due: go round again with a fresh waiter.
                    Poll::Ready(()) => woken.set(session.notify.notified()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }
}

/// One client session of a [`Host`]. Dropping it disconnects the session.
pub struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) key: PeerKey,
    pub(super) notify: Arc<Notify>,
    /// How the session ended, as its transport reports it.
    pub(super) end: EndSlot,
    /// The host's sessions as this one opened, this one included.
    pub(super) opened_among: usize,
}

impl Session {
    /// How many sessions the host had as this one opened, this one
    /// included: for a transport's log line, which must not wait for the
    /// core (as [`Host::session_count`] may) to say it.
    pub fn sessions_at_open(&self) -> usize {
        self.opened_among
    }

    /// Records who this session's transport authenticated: every later call
    /// on it runs with this as [`Caller::principal`](crate::host::Caller::principal).
    pub fn set_principal(&self, principal: Option<Arc<str>>) -> Result<(), InputError> {
        self.shared.core().set_principal(self.key, principal)
    }

    /// Handles one envelope from the client, held to the max message size
    /// as it would be encoded ([`HostCore::handle_message`]). It is sized,
    /// and a call's arguments parsed, before the core is locked; arguments
    /// over [`MAX_PREPARSED_ARGS`](crate::host::MAX_PREPARSED_ARGS) only
    /// while the host's sessions hold less than
    /// [`ARGS_BUDGET_BYTES`](crate::host::ARGS_BUDGET_BYTES) of such
    /// arguments parsed, and otherwise under the lock.
    pub fn handle(&self, message: ClientMessage) -> Result<(), InputError> {
        // Dropped after the core is let go: freeing large arguments is work
        // too.
        let input = self.prepare(message);
        self.with_core(true, |core| core.handle_input(self.key, &input))
    }

    /// `message` made ready for the core without it ([`PreparedInput`]).
    pub(super) fn prepare(&self, message: ClientMessage) -> PreparedInput<'static> {
        let mut input =
            PreparedInput::message(message, self.shared.config.limits.max_message_bytes);
        input.parse_ahead(&self.shared.args_budget);
        input
    }

    /// Handles the envelope in `input` without waking this session's own
    /// [`Session::next_frame`] (for a caller that writes right after), if
    /// the core comes free within a short spin; `None`, leaving it there,
    /// if not.
    fn try_handle_quietly(
        &self,
        input: &mut Option<PreparedInput<'static>>,
    ) -> Option<Result<(), InputError>> {
        let core = self.shared.core.now()?;
        let input = input.take()?;
        Some(self.with_locked(core, false, |core| core.handle_input(self.key, &input)))
    }

    /// Records how the session ended, for the host's metrics; the first
    /// end reported is the one counted when the session is dropped.
    pub(crate) fn end_as(&self, end: SessionEnd) {
        self.end.report(end);
    }

    /// Whether the host has shut down: the session will produce nothing
    /// more.
    pub fn is_closed(&self) -> bool {
        self.shared.is_shut_down()
    }

    /// Decodes and handles one encoded envelope from the client
    /// ([`HostCore::handle_bytes`]). It is decoded, and a call's arguments
    /// parsed, before the core is locked, as [`Session::handle`] says: a
    /// session sending megabytes of arguments keeps only itself waiting
    /// while they are read, unless many sessions do so at once.
    ///
    /// # Errors
    /// As [`HostCore::handle_bytes`].
    pub fn handle_bytes(&self, bytes: &[u8]) -> Result<(), InputError> {
        let mut input = PreparedInput::decode(bytes, self.shared.config.limits.max_message_bytes)?;
        input.parse_ahead(&self.shared.args_budget);
        self.with_core(true, |core| core.handle_input(self.key, &input))
    }

    /// [`Session::handle_bytes`] for a task that must not block: while
    /// another session's method holds the core, the wait is spent asleep
    /// (naps of 1 ms doubling to 50 ms), not blocking a thread, so any
    /// number of sessions may wait on a slow method without taking a
    /// thread each, and the runtime's other tasks run on. Fails with
    /// [`InputError::ShuttingDown`] if the host shuts down meanwhile.
    ///
    /// # Errors
    /// As [`HostCore::handle_bytes`].
    pub async fn handle_bytes_async(&self, bytes: &[u8]) -> Result<(), InputError> {
        let mut input = PreparedInput::decode(bytes, self.shared.config.limits.max_message_bytes)?;
        input.parse_ahead(&self.shared.args_budget);
        let core = self
            .shared
            .core_napping()
            .await
            .ok_or(InputError::ShuttingDown)?;
        self.with_locked(core, true, |core| core.handle_input(self.key, &input))
    }

    fn with_core<T>(&self, wake_self: bool, f: impl FnOnce(&mut HostCore) -> T) -> T {
        self.with_locked(self.shared.core(), wake_self, f)
    }

    /// Runs `f` on the locked core, then wakes the sessions that may have
    /// output: every other one after a publication, and this one if asked.
    fn with_locked<T>(
        &self,
        mut core: MutexGuard<'_, HostCore>,
        wake_self: bool,
        f: impl FnOnce(&mut HostCore) -> T,
    ) -> T {
        let started = self.shared.busy.enter(core.method_timing());
        let result = f(&mut core);
        time_method(&mut core, started);
        self.shared.busy.leave(started);
        let published = self.shared.drain_events(&mut core);
        drop(core);
        if published {
            self.shared
                .wake_all(if wake_self { None } else { Some(self.key) });
        } else if wake_self {
            self.notify.notify_one();
        }
        result
    }

    /// The next envelope for this client, waiting until there is one.
    /// `None` once the host has shut down.
    pub async fn next_frame(&self) -> Option<HostFrame> {
        loop {
            if self.shared.is_shut_down() {
                return None;
            }
            let frame = {
                let mut core = self.core_for_output().await?;
                core.poll_transmit(self.key)
            };
            if frame.is_some() {
                return frame;
            }
            self.notify.notified().await;
        }
    }

    /// The core, locked, for taking output; `None` once the host has shut
    /// down. A wait that outlasts a short spin (another session's method is
    /// running) is spent asleep, not blocking a thread, and ends early on
    /// this session's wake-ups, so that a shutdown ends the session's output
    /// even while a method that never returns holds the core.
    async fn core_for_output(&self) -> Option<MutexGuard<'_, HostCore>> {
        let mut nap = Nap::default();
        loop {
            if self.is_closed() {
                return None;
            }
            if let Some(core) = self.shared.core_now() {
                return Some(core);
            }
            // A wake-up consumed here is not lost: the caller looks for
            // output once it has the core.
            tokio::select! {
                () = std::future::poll_fn(|cx| nap.poll(cx)) => {}
                () = self.notify.notified() => {}
            }
        }
    }

    /// The next envelope for this client while it is still owed an answer
    /// (a result or sync reply; publications due before it come first);
    /// `None` once it is owed none, or the host has shut down. For a client
    /// that has stopped sending: every call it sent is answered (H8).
    pub async fn next_answer(&self) -> Option<HostFrame> {
        loop {
            {
                let mut core = self.core_for_output().await?;
                if !core.has_answers(self.key) {
                    return None;
                }
                if let Some(frame) = core.poll_transmit(self.key) {
                    return Some(frame);
                }
            }
            self.notify.notified().await;
        }
    }

    /// The next envelope for this client if one is ready now.
    pub fn try_next_frame(&self) -> Option<HostFrame> {
        self.shared.core().poll_transmit(self.key)
    }
}

/// Writes every frame the session has ready while the sink takes them, then
/// flushes. Waits for nothing: a sink that is not ready wakes the task
/// later. Returns whether it stopped because another session's method held
/// the core.
fn write_ready(
    session: &Session,
    sink: &mut BoxSink<HostFrame>,
    cx: &mut Context<'_>,
) -> Result<bool, TransportError> {
    let mut core_busy = false;
    loop {
        match sink.as_mut().poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => return Err(error),
            Poll::Pending => break,
        }
        let Some(mut core) = session.shared.core.now() else {
            core_busy = true;
            break;
        };
        let Some(frame) = core.poll_transmit(session.key) else {
            break;
        };
        drop(core);
        sink.as_mut().start_send(frame)?;
    }
    match sink.as_mut().poll_flush(cx) {
        Poll::Ready(Err(error)) => Err(error),
        _ => Ok(core_busy),
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.core.disconnect(self.key);
        self.shared.sessions.ended(&self.end);
        self.shared
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// How a session ends when its link fails: what the peer sent wrong is the
/// session's error (and a warning); a link that just went away is a plain
/// end.
fn read_failed(host: &Host, peer_id: &str, error: TransportError) -> Result<(), InputError> {
    let refused = match error {
        TransportError::FrameTooLarge { size, limit } => {
            InputError::MessageTooLarge { size, limit }
        }
        TransportError::Malformed(reason) => InputError::Malformed(reason),
        TransportError::ReceiveBudget { limit } => InputError::ReceiveBudget { limit },
        // A framed peer speaking another protocol (spec FB9): its bytes are
        // no envelopes.
        TransportError::Unsupported(reason) => InputError::Malformed(reason),
        error => {
            tracing::debug!(peer = %peer_id, %error, "session read failed");
            return Ok(());
        }
    };
    throttled!(
        host.session_logs().closing,
        warn,
        peer = %peer_id,
        error = %refused,
        "closing session"
    );
    Err(refused)
}
