//! The driver task: connects, serves each link until it fails, reconnects
//! with backoff, and stops the client if it is abandoned.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{SinkExt, StreamExt};
use tokio::time::Instant;

use super::{CLOSE_GRACE, Shared};
use crate::app::MethodError;
use crate::client::connection::Connection;
use crate::client::core::later;
use crate::client::read_ahead::ReadAhead;
use crate::client::reconnect::Reconnect;
use crate::transport::{BoxStream, ClientLink, Connector, HostInput, TransportError};
use crate::wire::ErrorCode;
use crate::wire::view::HostView;

/// Spawns the driver task of the client `shared` belongs to: [`drive`],
/// with the client stopped should the task end without finishing it. The
/// guard is made before the task is spawned, so that it stops the client
/// even if the task is dropped before it is first polled (its runtime
/// shutting down at once).
pub(super) fn spawn(shared: Arc<Shared>, connector: Box<dyn Connector>, policy: Reconnect) {
    let guard = StopIfAbandoned {
        shared: shared.clone(),
    };
    tokio::spawn(async move {
        drive(shared, connector, policy).await;
        drop(guard);
    });
}

async fn drive(shared: Arc<Shared>, connector: Box<dyn Connector>, policy: Reconnect) {
    let mut backoff = policy.initial;
    let mut first = true;
    // This connect's number: 1 at first and after a link the host spoke on.
    let mut attempt = 1;
    while !shared.stopped.load(Ordering::Acquire) {
        shared.set_connection(Connection::Connecting { attempt });
        // Only a stop may interrupt a connect: a connector may already have
        // handed over a link that a dropped future would lose.
        let link = tokio::select! {
            link = connector.connect() => link,
            _ = keep_time_until_stopped(&shared) => break,
        };
        let mut heard = false;
        let retry_at = match link {
            Ok(link) => {
                if !first {
                    shared.core().reconnected(Instant::now().into_std());
                }
                first = false;
                let started = Instant::now();
                let result;
                (result, heard) = run_link(&shared, link).await;
                // Only a link the host spoke on, and that stayed up for the
                // longest wait, resets the backoff: one that ends at once (a
                // host refusing the session by closing it, or saying one
                // thing and then closing it) is retried as patiently as a
                // failed connect, not every 50 ms.
                if heard && started.elapsed() >= policy.max {
                    backoff = policy.initial;
                }
                if shared.stopped.load(Ordering::Acquire) {
                    break;
                }
                tracing::debug!(?result, "link ended");
                // The new state is published before the calls the link took
                // down settle, so that their callers already see it.
                let silent = matches!(result, Err(TransportError::HostSilent { .. }));
                let retry_at = match result {
                    Err(error) if !error.is_retryable() => {
                        give_up(&shared, &error);
                        None
                    }
                    result => Some(retrying(
                        &shared,
                        result.err(),
                        policy.wait(backoff),
                        attempt,
                    )),
                };
                {
                    let mut core = shared.core();
                    if silent {
                        // L10, with the deadlines and retries due with it.
                        core.handle_timeout(Instant::now().into_std());
                    }
                    core.connection_lost();
                }
                shared.dispatch();
                match retry_at {
                    Some(at) => at,
                    None => break,
                }
            }
            Err(error) if !error.is_retryable() => {
                give_up(&shared, &error);
                break;
            }
            Err(error) => {
                let wait = policy.wait(backoff);
                tracing::debug!(%error, ?wait, "connect failed; retrying");
                retrying(&shared, Some(error), wait, attempt)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(retry_at) => {}
            _ = keep_time_until_stopped(&shared) => {}
        }
        backoff = policy.next(backoff);
        attempt = if heard { 1 } else { attempt.saturating_add(1) };
    }
    // No link will come back: whatever is still pending cannot complete.
    shared.core().connection_lost();
    shared.dispatch();
    stop(&shared);
    shared.fail_stranded_calls();
}

/// Publishes `Retrying` with the instant the next connect is due, and
/// returns that instant for the driver to sleep until.
fn retrying(
    shared: &Shared,
    error: Option<TransportError>,
    wait: std::time::Duration,
    attempt: u32,
) -> Instant {
    let at = instant_after(wait);
    shared.set_connection(Connection::Retrying {
        error,
        retry_in: wait,
        retry_at: at.into_std(),
        attempt,
    });
    at
}

/// The instant `wait` from now; see `later`.
fn instant_after(wait: std::time::Duration) -> Instant {
    Instant::from_std(later(Instant::now().into_std(), wait))
}

/// Records why the transport ended for good, for `ready()`, pending calls
/// and later calls.
fn give_up(shared: &Shared, error: &TransportError) {
    tracing::debug!(%error, "transport failed for good; not reconnecting");
    *shared.terminal.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(MethodError::new(error.stop_code(), error.to_string()));
    shared.set_connection(Connection::Stopped {
        error: Some(error.clone()),
    });
}

/// Stops the client if its driver ends without finishing: a panic in a
/// connector or a link, or the runtime shutting down under it (tokio drops
/// a task's future either way). Without it, `ready()` and every call
/// without a timeout would wait for ever on a driver that is gone.
struct StopIfAbandoned {
    shared: Arc<Shared>,
}

impl Drop for StopIfAbandoned {
    fn drop(&mut self) {
        let shared = &self.shared;
        // However the task ended, its link is gone: `Client::closed`.
        shared.finished.send_replace(true);
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        // Tokio drops a task that panicked while the panic unwinds; one it
        // drops because its runtime is shutting down is an orderly end.
        let error = if std::thread::panicking() {
            tracing::error!("the client's driver panicked; stopping the client");
            MethodError::new(ErrorCode::Internal, "the client's driver panicked")
        } else {
            tracing::debug!("the client's runtime shut down; stopping the client");
            MethodError::new(ErrorCode::Unavailable, "the client's runtime shut down")
        };
        *shared.terminal.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        stop(shared);
        shared.fail_stranded_calls();
    }
}

/// Marks the client stopped and wakes everything that waits on it.
pub(super) fn stop(shared: &Shared) {
    shared.stopped.store(true, Ordering::Release);
    // A stop after `give_up` keeps the error it recorded: nothing follows
    // `Stopped`.
    shared.set_connection(Connection::Stopped { error: None });
    shared.ready.send_modify(|_| {});
    shared.changes.send_modify(|n| *n += 1);
    shared.wake();
}

/// Returns once the client stops. Until then, with no link, it fires the
/// core's deadlines: a call's timeout runs out while the host is
/// unreachable as much as while it is connected.
async fn keep_time_until_stopped(shared: &Shared) {
    while !shared.stopped.load(Ordering::Acquire) {
        let timer = shared.next_deadline();
        tokio::select! {
            _ = timer => {
                shared.core().handle_timeout(Instant::now().into_std());
                shared.dispatch();
            }
            _ = shared.wake.notified() => {}
        }
    }
}

/// Whether host silence (L10) has run out on the current link by `now`.
fn host_silent(shared: &Shared, now: std::time::Instant) -> bool {
    shared.core().host_silent_at().is_some_and(|at| at <= now)
}

/// Runs one link until it fails or the client stops; also says whether the
/// host sent anything on it.
async fn run_link(shared: &Shared, link: ClientLink) -> (Result<(), TransportError>, bool) {
    let ClientLink { sink, mut stream } = link;
    shared.outbound.attach(sink);
    let mut heard = false;
    let result = serve_link(shared, &mut stream, &mut heard).await;
    // Closed only when the client stops; a failed link's sink is dropped.
    if let Some(mut sink) = shared.outbound.detach()
        && result.is_ok()
        && shared.stopped.load(Ordering::Acquire)
    {
        let deadline = Instant::now() + CLOSE_GRACE;
        // A sink the host does not drain (it is held in a method) must not
        // hold the close past its grace either.
        let _ = tokio::time::timeout_at(deadline, sink.close()).await;
        // Dropped, not only closed: on in-process and pipe transports the
        // host sees the end of its input only once the sender is gone.
        drop(sink);
        // A half-close asks the host to end the session once it has sent
        // what it owes (H16). Reading on until it does lets both sides see
        // an orderly close, rather than the host logging a client that
        // vanished; nothing read now is used. A host that keeps the link
        // full never lets the stream end, and a stream always ready never
        // lets a timeout run: the deadline is checked per envelope, and
        // the drain yields when the task's budget runs out.
        let drain = async {
            while let Some(Ok(_)) = stream.next().await {
                if Instant::now() >= deadline {
                    break;
                }
                tokio::task::consume_budget().await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, drain).await;
    }
    (result, heard)
}

/// Hands one item of the link's input to the core. Lost envelopes are
/// input too (the link is still up); any other error ends the link.
fn take_input(
    shared: &Shared,
    item: Result<HostInput, TransportError>,
    heard: &mut bool,
) -> Result<(), TransportError> {
    let now = Instant::now().into_std();
    let message = match &item {
        Ok(HostInput::Message(message)) => HostView::from(message),
        Ok(HostInput::Frame(frame)) => frame.view(),
        // Bytes that are no envelope are not the host speaking either.
        Ok(HostInput::Encoded(bytes)) => {
            HostView::decode(bytes).map_err(|e| TransportError::Malformed(e.to_string()))?
        }
        Err(TransportError::Lost { count }) => {
            shared.core().envelopes_lost(now, *count);
            return Ok(());
        }
        Err(error) => return Err(error.clone()),
    };
    let first = !*heard;
    if first {
        // The host has accepted the session: only now is the link up.
        *heard = true;
        shared.set_connection(Connection::Connected);
    }
    // A snapshot's state or a patch's operations are parsed, and what they
    // replace freed, without the core: callers reading the mirror or making
    // calls wait only for the mirror to be swapped or patched, not for
    // megabytes of JSON (see `read_ahead`).
    let ahead = ReadAhead::read(&message, || shared.core().reads_snapshot(&message));
    let released = shared.core().handle_view_parsed(now, message, ahead);
    drop(released);
    if first {
        // Only once the host's first envelope is applied may the Calls held
        // behind the SyncRequest go: a caller sending one before would
        // stamp it with the epoch of a mirror the envelope may replace.
        shared.outbound.release();
    }
    Ok(())
}

/// The most envelopes taken from a link in one turn of [`serve_link`]
/// before it dispatches, sends and looks at its deadlines again.
const DRAIN_BATCH: usize = 64;

async fn serve_link(
    shared: &Shared,
    stream: &mut BoxStream<HostInput>,
    heard: &mut bool,
) -> Result<(), TransportError> {
    loop {
        // Send everything the core has queued (callers send their own calls
        // while the link has room; see `Outbound`).
        let send = std::future::poll_fn(|cx| {
            shared
                .outbound
                .poll_send(cx, |room| shared.core().poll_transmit_when(room))
        });
        // Usually there is room and this is done at once. While there is
        // none, deadlines (and host silence) still come due and the host
        // may still speak: a host that does not drain the link (it is held
        // in a method, or waits to write to us) must not stop either. A
        // stopped client sends nothing more, and must not wait for room.
        let mut send = std::pin::pin!(send);
        // Whether to go on to the wait below, which does not watch for room.
        let mut wait = true;
        if let Some(sent) = futures::FutureExt::now_or_never(send.as_mut()) {
            sent?;
        } else {
            // What the last turn settled goes out before the wait.
            shared.dispatch();
            let timer = shared.next_deadline();
            wait = tokio::select! {
                biased;
                sent = send.as_mut() => {
                    sent?;
                    true
                }
                // Come due: the timer branch below handles it at once.
                _ = timer => true,
                // Otherwise the send is tried again at once.
                item = stream.next() => match item {
                    Some(item) => {
                        take_input(shared, item, heard)?;
                        false
                    }
                    None => return Ok(()),
                },
                // A stop, or a call with an earlier deadline (a stopped
                // client returns below without waiting for room).
                _ = shared.wake.notified() => false,
            };
        }
        shared.dispatch();
        if shared.stopped.load(Ordering::Acquire) {
            return Ok(());
        }
        if !wait {
            continue;
        }
        let timer = shared.next_deadline();
        // Biased: no random branch order to draw on every wake-up. The timer
        // goes first so that a steady flow of input cannot starve deadlines.
        tokio::select! {
            biased;
            _ = timer => {
                let now = Instant::now().into_std();
                if host_silent(shared, now) {
                    // Input that arrived while this task was not running is
                    // the host speaking before the silence ran out.
                    loop {
                        match futures::FutureExt::now_or_never(stream.next()) {
                            Some(Some(item)) => take_input(shared, item, heard)?,
                            Some(None) => return Ok(()),
                            None => break,
                        }
                    }
                    // L10 fires in `drive`, after the link's end is
                    // published, so that the calls it takes down settle
                    // after `Retrying` is out, as for any other link loss.
                    if host_silent(shared, now) {
                        let silence = shared.core().config().host_silence.unwrap_or_default();
                        return Err(TransportError::HostSilent { silence });
                    }
                }
                shared.core().handle_timeout(now);
            }
            item = stream.next() => match item {
                Some(item) => {
                    take_input(shared, item, heard)?;
                    // Drain what else is already buffered before flushing,
                    // but only so much: a host that keeps the link full
                    // (HTTP/2 streams take no part in tokio's cooperative
                    // budget) must not keep this loop from dispatching
                    // events, which would pile up without bound, from
                    // sending, or from firing deadlines.
                    let mut drained = 1;
                    while drained < DRAIN_BATCH {
                        match futures::FutureExt::now_or_never(stream.next()) {
                            Some(Some(item)) => take_input(shared, item, heard)?,
                            Some(None) => return Ok(()),
                            None => break,
                        }
                        drained += 1;
                    }
                    if drained == DRAIN_BATCH {
                        // Let the tasks waiting on what was just dispatched
                        // run, even on a single-threaded runtime.
                        shared.dispatch();
                        tokio::task::yield_now().await;
                    }
                }
                None => return Ok(()),
            },
            _ = shared.wake.notified() => {}
        }
    }
}
