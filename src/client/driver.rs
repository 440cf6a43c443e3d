//! The async client: a [`ClientCore`] driven by a tokio task over a
//! transport, with reconnection.
//!
//! The driver task owns the link; API calls lock the core briefly, queue
//! their input and wake the driver. Events are dispatched by whoever drained
//! them: call outcomes to their futures, state changes to watchers,
//! conflicts and everything else to broadcast subscribers.

// The driver task itself (connect, serve a link, reconnect) is `task`.
mod task;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::time::Instant;

use super::call::{CallFuture, CallOptions, ModuleHandle};
use super::connection::Connection;
use super::outbound::Outbound;
use super::reconnect::Reconnect;
use super::watch::{Watch, WatchHandle, WatchOptions};
use super::{CallId, ClientConfig, ClientCore, ClientEvent, Conflict};
use crate::app::MethodError;
use crate::fast_hash::FastMap;
use crate::transport::Connector;
use crate::wire::ErrorCode;

use task::stop;

/// How long a disposed client waits, having half-closed its link, for the
/// host to end it (spec H16: the host first sends what it owes).
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Core events [`Client::events`] holds for its slowest receiver.
pub const EVENT_BUFFER: usize = 1024;

/// Conflicts [`Client::conflicts`] holds for its slowest receiver.
pub const CONFLICT_BUFFER: usize = 256;

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
    /// Whether the call had left through the link when it settled. A call
    /// never sent never ran: making it again is safe whatever the error's
    /// code. One sent and settled without an answer (`state_version` is
    /// `None`) may have run. Where the client cannot tell, it says `true`,
    /// so that no call is made twice on its word.
    pub sent: bool,
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
    /// Set once the driver task has ended, its link closed.
    finished: watch::Sender<bool>,
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
                    sent,
                } => {
                    let sender = self
                        .calls
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&call);
                    let settlement = |outcome| Settlement {
                        outcome,
                        state_version,
                        sent,
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
                        sent,
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
        {
            let mut core = self.core();
            // A driver that stopped with a link up (it panicked, or its
            // runtime went away) lost that link too: the calls sent on it
            // and unanswered may have run (L6), whatever the stop's code.
            core.connection_lost();
            // Taken under the core's lock, which every call registers
            // under: a call made after this sees the stop and settles
            // itself.
            let stranded: Vec<CallId> = self
                .calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .copied()
                .collect();
            // What is left never left, or holds an answer. Settled by the
            // core, so that the events say what the calls' futures are told.
            let what = format!("{}; settled", error.message);
            for id in stranded {
                core.settle_stopped(id, error.code, &what);
            }
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
/// when [`Client::dispose`] is called or the last handle is dropped. A
/// [`ModuleHandle`](super::ModuleHandle), a [`Watch`](super::Watch), a
/// [`WatchHandle`](super::WatchHandle) and a pending
/// [`CallFuture`](super::CallFuture) each hold a handle too: while one is
/// kept, the client stays connected (and reconnecting) even after every
/// `Client` is dropped.
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
            events: broadcast::channel(EVENT_BUFFER).0,
            conflicts: broadcast::channel(CONFLICT_BUFFER).0,
            stopped: AtomicBool::new(false),
            terminal: Mutex::new(None),
            finished: watch::channel(false).0,
        });
        task::spawn(shared.clone(), Box::new(connector), reconnect);
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

    /// Resolves once the client's driver has ended: after
    /// [`Client::dispose`] (or the last handle dropped, or the transport
    /// failing for good), when its link is closed. A disposed client
    /// half-closes its link and gives the host up to [`CLOSE_GRACE`] to
    /// end it, so that both sides see an orderly close: a process that
    /// exits right after `dispose` awaits this first, bounded by a timeout
    /// of its own.
    pub async fn closed(&self) {
        let mut finished = self.shared().finished.subscribe();
        // The sender lives in `Shared`, which this handle keeps alive.
        let _ = finished.wait_for(|done| *done).await;
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

    /// Whether a pending call (see [`CallFuture::id`]) has been handed to
    /// the link: once it has, the host may run it whatever happens to this
    /// client. `None` once it has settled.
    pub fn call_sent(&self, call: CallId) -> Option<bool> {
        self.shared().core().was_sent(call)
    }

    /// The mirror's version (`None` before the first snapshot).
    pub fn version(&self) -> Option<u64> {
        self.shared().core().version()
    }

    /// The epoch of the host the mirror follows.
    pub fn epoch(&self) -> Option<String> {
        self.shared().core().epoch().map(str::to_owned)
    }

    /// A copy of the mirrored view (`None` before the first snapshot). It is
    /// the last view the client mirrored, which may be stale: while the
    /// link is down ([`Connection::Retrying`]) it is the view when it went
    /// down, and after a host restart the old epoch's until the resync
    /// lands ([`Client::version`] and [`Client::epoch`] say which). The
    /// same holds for [`Client::select`], [`Client::mirror`] and watches.
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
    ///
    /// `selector` runs under the client's lock, which every call, every
    /// arriving envelope and every other read waits for: keep it cheap,
    /// and never use the client from inside it (a read or a call there
    /// deadlocks the thread). Copy out what it needs and work on that.
    pub fn select<T>(&self, selector: impl FnOnce(&Value) -> T) -> Option<T> {
        self.shared().core().state().map(selector)
    }

    /// Watches `selector`: yields its value when the mirror has changed and
    /// the value differs from the last one yielded. It yields the latest
    /// value, not every one: changes that land before the watch is read
    /// again are coalesced (several versions applied in one go, or a reader
    /// that is busy), as a `tokio::sync::watch` does. To see every change,
    /// keep it in the state (an append-only log a method pushes to) rather
    /// than in the values a watch samples. Dropping the watch unsubscribes.
    /// `selector` runs under the client's lock, as [`Client::select`]'s
    /// does: keep it cheap, and never use the client from inside it.
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
    /// own, until the returned handle is dropped or unsubscribed. Values are
    /// coalesced as [`Client::watch`]'s are: the listener sees the latest
    /// one, not necessarily every one in between. The listener runs on that
    /// task, outside the client's lock; `selector` runs under it, as
    /// [`Client::select`]'s does. Spawns the task with `tokio::spawn`, so
    /// it must be called within a tokio runtime, or it panics.
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
    /// Unlike most futures, the call starts when this is called, not when
    /// the future is first polled: it is queued at once, and sent as soon
    /// as a link is up and the host has spoken on it. Dropping the future
    /// cancels the call (it settles `cancelled`); one already sent may
    /// still run on the host (spec CL4), and its effects then reach the
    /// mirror like any other change.
    ///
    /// While the host cannot be reached, the call waits, for ever unless a
    /// timeout is set ([`Client::call_with`], or
    /// [`ClientConfig::call_timeout`](super::ClientConfig::call_timeout)
    /// for every call). When a deadline, a cancel, disposal, a host
    /// restart or the client stopping settles it, [`Settlement::sent`]
    /// ([`CallFuture::with_version`]) says whether it had been sent, and the
    /// error's message how far it got: a call never sent did not run, even
    /// when a host restart settles it `outcome-unknown` (spec §11.2 gives
    /// every call of a vanished epoch that code).
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

    /// Sync conflicts as they are detected (each also starts healing). A
    /// receiver more than [`CONFLICT_BUFFER`] behind loses the oldest and
    /// reads `RecvError::Lagged` once; the client itself does not wait.
    pub fn conflicts(&self) -> broadcast::Receiver<Conflict> {
        self.shared().conflicts.subscribe()
    }

    /// Every event of the protocol core (low-level subscription). A
    /// receiver more than [`EVENT_BUFFER`] behind loses the oldest and
    /// reads `RecvError::Lagged` once; the client itself does not wait.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared().events.subscribe()
    }

    /// Rejects every pending call with `disposed`, stops the driver and
    /// closes the transport. Idempotent.
    pub fn dispose(&self) {
        dispose(self.shared());
    }
}
