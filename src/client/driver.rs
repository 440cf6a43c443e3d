//! The async client: a [`ClientCore`] driven by a tokio task over a
//! transport, with reconnection.
//!
//! The driver task owns the link; API calls lock the core briefly, queue
//! their input and wake the driver. Events are dispatched by whoever drained
//! them: call outcomes to their futures, state changes to watchers,
//! conflicts and everything else to broadcast subscribers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::time::Instant;

use super::call::{CallFuture, CallOptions, ModuleHandle};
use super::connection::Connection;
use super::core::later;
use super::outbound::Outbound;
use super::read_ahead::ReadAhead;
use super::reconnect::Reconnect;
use super::watch::{Watch, WatchHandle, WatchOptions};
use super::{CallId, ClientConfig, ClientCore, ClientEvent, Conflict};
use crate::app::MethodError;
use crate::fast_hash::FastMap;
use crate::transport::{BoxStream, ClientLink, Connector, HostInput, TransportError};
use crate::wire::ErrorCode;
use crate::wire::view::HostView;

/// What a call settles with.
pub type CallOutcome = Result<Value, MethodError>;

/// A settled call: its outcome and, when the host answered, the state
/// version its result observed (the mirror had reached at least that version
/// when the call settled).
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// The value, or why there is none.
    pub outcome: CallOutcome,
    /// The state version the host's result named; `None` when the call
    /// settled without an answer (cancelled, timed out, connection lost…).
    pub state_version: Option<u64>,
}

/// Atomically read parts of the mirror: its epoch, version and view.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorSnapshot {
    /// The epoch of the host the mirror follows.
    pub epoch: String,
    /// The mirror's version.
    pub version: u64,
    /// The mirrored view at that version.
    pub state: Value,
}

pub(super) struct Shared {
    core: Mutex<ClientCore>,
    wake: Notify,
    calls: Mutex<FastMap<CallId, oneshot::Sender<Settlement>>>,
    outbound: Outbound,
    /// The deadline the driver's timer is set for, if any.
    armed: Mutex<Option<std::time::Instant>>,
    /// The batch being dispatched; kept to reuse its buffer, and held
    /// while dispatching so concurrent dispatchers deliver whole batches
    /// in the order they drained them.
    dispatching: Mutex<Vec<ClientEvent>>,
    changes: watch::Sender<u64>,
    ready: watch::Sender<bool>,
    connection: watch::Sender<Connection>,
    events: broadcast::Sender<ClientEvent>,
    conflicts: broadcast::Sender<Conflict>,
    stopped: AtomicBool,
    /// Why the driver stopped when it was not disposed: what every waiter
    /// and every later call gets.
    terminal: Mutex<Option<MethodError>>,
}

impl Shared {
    pub(super) fn core(&self) -> MutexGuard<'_, ClientCore> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drains the core's events and hands each to whoever waits for it.
    pub(super) fn dispatch(&self) {
        let mut events = self.dispatching.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut core = self.core();
            events.extend(std::iter::from_fn(|| core.poll_event()));
        }
        if events.is_empty() {
            return;
        }
        // Without subscribers an event is dropped, so its parts can be moved
        // out instead of cloned; checked once, as a subscriber arriving in
        // the middle of a dispatch may as well start with the next one.
        let observed = self.events.receiver_count() > 0;
        for event in events.drain(..) {
            let event = match event {
                ClientEvent::Settled {
                    call,
                    outcome,
                    state_version,
                } => {
                    let sender = self
                        .calls
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&call);
                    let settlement = |outcome| Settlement {
                        outcome,
                        state_version,
                    };
                    let outcome = match sender {
                        Some(sender) if !observed => {
                            let _ = sender.send(settlement(outcome));
                            continue;
                        }
                        Some(sender) => {
                            let _ = sender.send(settlement(outcome.clone()));
                            outcome
                        }
                        None => outcome,
                    };
                    ClientEvent::Settled {
                        call,
                        outcome,
                        state_version,
                    }
                }
                other => {
                    match &other {
                        ClientEvent::Ready { .. } => {
                            self.ready.send_replace(true);
                        }
                        // Watches subscribe, then read the mirror: with no
                        // subscriber there is nobody to tell, and the next
                        // one reads a mirror that already has this change.
                        ClientEvent::StateChanged { .. } if self.changes.receiver_count() > 0 => {
                            self.changes.send_modify(|n| *n += 1);
                        }
                        ClientEvent::Conflict(conflict) => {
                            tracing::debug!(?conflict, "sync conflict");
                            let _ = self.conflicts.send(conflict.clone());
                        }
                        _ => {}
                    }
                    other
                }
            };
            if observed {
                let _ = self.events.send(event);
            }
        }
    }

    pub(super) fn register_call(&self, id: CallId, sender: oneshot::Sender<Settlement>) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, sender);
    }

    /// The error a stopped, undisposed client gives: why its transport
    /// ended for good.
    pub(super) fn terminal_error(&self) -> MethodError {
        self.terminal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| MethodError::new(ErrorCode::Unavailable, "the transport closed"))
    }

    /// Once the driver has stopped without being disposed, no call can be
    /// sent or answered any more: settles every registered call with the
    /// terminal error. Idempotent; a call registered concurrently is caught
    /// either here or by its own check of `stopped` (see `CallFuture`).
    pub(super) fn fail_stranded_calls(&self) {
        if !self.stopped.load(Ordering::Acquire) || self.core().is_disposed() {
            return;
        }
        let error = self.terminal_error();
        let stranded: Vec<(CallId, oneshot::Sender<Settlement>)> = self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (id, sender) in stranded {
            let _ = sender.send(Settlement {
                outcome: Err(error.clone()),
                state_version: None,
            });
            // Removes it from the core too; its own settlement event finds
            // no receiver any more and is only broadcast.
            self.core().cancel(id);
        }
        self.dispatch();
    }

    /// Publishes a transition of the link; nothing follows `Stopped`.
    fn set_connection(&self, next: Connection) {
        self.connection.send_if_modified(|state| {
            let moves = !state.is_stopped() && *state != next;
            if moves {
                *state = next;
            }
            moves
        });
    }

    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends what the core has queued if the link takes it without waiting;
    /// otherwise wakes the driver to send it. Also wakes the driver when the
    /// core now needs a timer earlier than the one the driver set: it is the
    /// driver that fires deadlines.
    pub(super) fn transmit(&self) {
        let sent = self
            .outbound
            .send_now(|room| self.core().poll_transmit_when(room));
        if !sent || self.timer_due_earlier() {
            self.wake();
        }
    }

    /// Sleeps until the core's next deadline (for ever if it has none),
    /// recording it as the one the driver waits for.
    fn next_deadline(&self) -> impl Future<Output = ()> + use<> {
        let deadline = self.core().poll_timeout();
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
        async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        }
    }

    /// Whether the core's next deadline comes before the one the driver
    /// is waiting for.
    fn timer_due_earlier(&self) -> bool {
        let due = self.core().poll_timeout();
        let armed = *self.armed.lock().unwrap_or_else(|e| e.into_inner());
        match (due, armed) {
            (Some(due), Some(armed)) => due < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The handles' shared part: when the last [`Client`] handle is dropped, the
/// client is disposed and its driver stops.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        dispose(&self.shared);
    }
}

fn dispose(shared: &Shared) {
    shared.core().dispose();
    shared.dispatch();
    stop(shared);
}

/// A client: a mirror of a host's published view and a proxy for calls.
///
/// Cloning gives another handle to the same client. The client is disposed
/// when [`Client::dispose`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

impl Client {
    /// Starts a client over `connector` and spawns its driver on the current
    /// tokio runtime. It asks for a snapshot as soon as it connects.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(connector: impl Connector, config: ClientConfig) -> Self {
        Self::with_reconnect(connector, config, Reconnect::default())
    }

    /// Like [`Client::new`], with a reconnection policy.
    pub fn with_reconnect(
        connector: impl Connector,
        config: ClientConfig,
        reconnect: Reconnect,
    ) -> Self {
        let core = ClientCore::new(config, Instant::now().into_std());
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            wake: Notify::new(),
            calls: Mutex::new(FastMap::default()),
            outbound: Outbound::default(),
            armed: Mutex::new(None),
            dispatching: Mutex::new(Vec::new()),
            changes: watch::channel(0).0,
            ready: watch::channel(false).0,
            connection: watch::channel(Connection::Connecting { attempt: 1 }).0,
            events: broadcast::channel(1024).0,
            conflicts: broadcast::channel(256).0,
            stopped: AtomicBool::new(false),
            terminal: Mutex::new(None),
        });
        let guard = StopIfAbandoned {
            shared: shared.clone(),
        };
        tokio::spawn(async move {
            drive(guard.shared.clone(), Box::new(connector), reconnect).await;
            drop(guard);
        });
        Self {
            handle: Arc::new(Handle { shared }),
        }
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Resolves once the first snapshot has arrived. Fails with `disposed`
    /// if the client is disposed first, `permission-denied` if the host
    /// refused its credentials, or `unavailable` if its transport closed for
    /// good first. A host that cannot be reached is retried forever: bound
    /// the wait with a timeout.
    pub async fn ready(&self) -> Result<(), MethodError> {
        let mut ready = self.shared().ready.subscribe();
        loop {
            if *ready.borrow_and_update() {
                return Ok(());
            }
            if self.shared().stopped.load(Ordering::Acquire) {
                return Err(if self.shared().core().is_disposed() {
                    MethodError::new(ErrorCode::Disposed, "the client was disposed")
                } else {
                    self.shared().terminal_error()
                });
            }
            if ready.changed().await.is_err() {
                return Err(MethodError::new(
                    ErrorCode::Unavailable,
                    "the client stopped",
                ));
            }
        }
    }

    /// Whether the first snapshot has arrived.
    pub fn is_ready(&self) -> bool {
        *self.shared().ready.borrow()
    }

    /// Whether the host has spoken on the current link
    /// ([`Connection::Connected`]).
    pub fn is_connected(&self) -> bool {
        self.shared().connection.borrow().is_connected()
    }

    /// Where the link to the host stands now, with why it last failed.
    pub fn connection(&self) -> Connection {
        self.shared().connection.borrow().clone()
    }

    /// Follows [`Client::connection`]: the receiver is marked changed on
    /// every transition and always reads the latest state (transitions
    /// closer together than the reader reads may be coalesced). The last
    /// state is [`Connection::Stopped`]; the receiver itself does not end
    /// while a `Client` handle lives, so a loop stops on
    /// [`Connection::is_stopped`].
    pub fn connection_changes(&self) -> watch::Receiver<Connection> {
        self.shared().connection.subscribe()
    }

    /// The mirror's version (`None` before the first snapshot).
    pub fn version(&self) -> Option<u64> {
        self.shared().core().version()
    }

    /// The epoch of the host the mirror follows.
    pub fn epoch(&self) -> Option<String> {
        self.shared().core().epoch().map(str::to_owned)
    }

    /// A copy of the mirrored view (`None` before the first snapshot).
    pub fn state(&self) -> Option<Value> {
        self.shared().core().state().cloned()
    }

    /// The mirror's epoch, version and view read together, so the three
    /// belong to the same moment (`None` before the first snapshot).
    pub fn mirror(&self) -> Option<MirrorSnapshot> {
        let core = self.shared().core();
        Some(MirrorSnapshot {
            epoch: core.epoch()?.to_owned(),
            version: core.version()?,
            state: core.state()?.clone(),
        })
    }

    /// Reads derived state synchronously, without copying the view.
    pub fn select<T>(&self, selector: impl FnOnce(&Value) -> T) -> Option<T> {
        self.shared().core().state().map(selector)
    }

    /// Watches `selector`: yields its value each time the mirror changes and
    /// the value differs from the last one yielded. Dropping the watch
    /// unsubscribes.
    pub fn watch<T, F>(&self, selector: F) -> Watch<T, F>
    where
        T: PartialEq + Clone,
        F: Fn(&Value) -> T,
    {
        Watch::new(self.clone(), selector, WatchOptions::default())
    }

    /// Like [`Client::watch`], with custom equality and an "immediate" option.
    pub fn watch_with<T, F>(&self, selector: F, options: WatchOptions<T>) -> Watch<T, F>
    where
        T: Clone,
        F: Fn(&Value) -> T,
    {
        Watch::new(self.clone(), selector, options)
    }

    /// Calls `listener` with each new value of `selector` on a task of its
    /// own, until the returned handle is dropped or unsubscribed.
    pub fn watch_fn<T, F, L>(
        &self,
        selector: F,
        options: WatchOptions<T>,
        listener: L,
    ) -> WatchHandle
    where
        T: Clone + Send + 'static,
        F: Fn(&Value) -> T + Send + 'static,
        L: FnMut(T) + Send + 'static,
    {
        WatchHandle::spawn(Watch::new(self.clone(), selector, options), listener)
    }

    pub(super) fn shared_stopped(&self) -> bool {
        self.shared().stopped.load(Ordering::Acquire)
    }

    /// Subscribes to change notifications (the counter increases on every
    /// change of the mirror).
    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.shared().changes.subscribe()
    }

    /// Calls `module.method` with positional `args` and settles after the
    /// mirror has caught up with the state the call produced.
    ///
    /// Dropping the future cancels the call.
    pub fn call(&self, module: &str, method: &str, args: Vec<Value>) -> CallFuture {
        self.call_with(module, method, args, CallOptions::default())
    }

    /// Like [`Client::call`], with options such as a timeout.
    pub fn call_with(
        &self,
        module: &str,
        method: &str,
        args: Vec<Value>,
        options: CallOptions,
    ) -> CallFuture {
        CallFuture::start(self.clone(), module, method, args, options)
    }

    /// A handle on one module, for calling its methods by name.
    pub fn module(&self, name: &str) -> ModuleHandle {
        ModuleHandle::new(self.clone(), name)
    }

    /// Sync conflicts as they are detected (each also starts healing).
    pub fn conflicts(&self) -> broadcast::Receiver<Conflict> {
        self.shared().conflicts.subscribe()
    }

    /// Every event of the protocol core (low-level subscription).
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared().events.subscribe()
    }

    /// Rejects every pending call with `disposed`, stops the driver and
    /// closes the transport. Idempotent.
    pub fn dispose(&self) {
        dispose(self.shared());
    }
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
        backoff = backoff.saturating_mul(2).min(policy.max);
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
fn stop(shared: &Shared) {
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
        let _ = sink.close().await;
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
    if !*heard {
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
        std::future::poll_fn(|cx| {
            shared
                .outbound
                .poll_send(cx, |room| shared.core().poll_transmit_when(room))
        })
        .await?;
        shared.dispatch();
        if shared.stopped.load(Ordering::Acquire) {
            return Ok(());
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
