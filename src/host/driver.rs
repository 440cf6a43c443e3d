//! The async host: a [`HostCore`] shared by every session, driven by tokio.
//!
//! Each session pulls its output at its own pace ([`Session::next_frame`]);
//! a publication only wakes sessions, it never copies state into them. A
//! session that stops reading therefore costs the host nothing until it falls
//! out of the history window, after which it is sent one coalescing snapshot.

// The driver in parts: building a host (`builder`) and serving one of its
// sessions over a link (`session`).
mod builder;
mod session;

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, broadcast, watch};

use super::busy::Busy;
use super::core_lock::{CoreLock, Nap};
use super::in_method::{called_back, in_method_of};
use super::input::ArgsBudget;
use super::session_end::{EndSlot, SessionTally};
use super::stall_guard;
use super::{
    HostConfig, HostCore, HostEvent, HostLimits, HostStats, InputError, PeerKey, PeerOptions,
};
use crate::app::{App, MethodError};
use crate::fast_hash::FastMap;
use crate::transport::throttle::SessionLogs;
use crate::wire::ErrorCode;

pub use builder::HostBuilder;
pub use session::Session;

/// How many events a [`Host::events`] receiver may fall behind by.
pub const EVENT_BUFFER: usize = 4096;

/// How often an idle host tells its clients its version, by default.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

struct Shared {
    core: CoreLock,
    /// The core's [`HostCore::id`], read once: checking it must not lock.
    core_id: u64,
    /// The core's epoch and configuration, which never change: read
    /// without the core's lock, so a method may ask for them too, and
    /// sessions prepare their input against its message size limit before
    /// they lock the core.
    epoch: String,
    config: HostConfig,
    /// The room sessions share to parse long arguments before the lock.
    args_budget: ArgsBudget,
    /// How often the lines each session makes the host write are logged.
    session_logs: SessionLogs,
    wakers: Mutex<FastMap<PeerKey, Arc<Notify>>>,
    closed: std::sync::atomic::AtomicBool,
    /// `closed`, for [`Host::closed`] to wait on.
    shut: watch::Sender<bool>,
    /// The core's events, for [`Host::events`] subscribers; dropped at
    /// shutdown, which ends every receiver.
    events: Mutex<Option<broadcast::Sender<HostEvent>>>,
    /// Whether [`Host::events`] has a receiver that may still be alive;
    /// spares unobserved hosts the broadcast channel's lock per drain.
    observed: std::sync::atomic::AtomicBool,
    /// The stats [`Host::stats`] answers while the core is held.
    busy: Busy,
    /// Sessions opened and ended, by end.
    sessions: SessionTally,
    /// The runtimes whose [`stall_guard`] watches this host.
    guarded: Mutex<Vec<tokio::runtime::Id>>,
}

impl stall_guard::Watched for Shared {
    fn busy(&self) -> &Busy {
        &self.busy
    }

    fn closed(&self) -> bool {
        self.is_shut_down()
    }
}

impl Shared {
    /// Whether [`Host::shutdown`] has been called.
    fn is_shut_down(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Has the [`stall_guard`] of the current runtime watch this host, the
    /// first time the host is used on it (sessions opened, `invoke`): where
    /// its methods run.
    fn guard(self: &Arc<Self>) {
        let Some(runtime) = stall_guard::current_runtime() else {
            return;
        };
        let mut guarded = self.guarded.lock().unwrap_or_else(|e| e.into_inner());
        if !guarded.contains(&runtime.id()) {
            guarded.push(runtime.id());
            let host: Weak<dyn stall_guard::Watched> = Arc::downgrade(self) as _;
            stall_guard::watch(host, &runtime);
        }
    }

    /// The core, locked, waiting as long as it takes (see [`CoreLock::lock`]).
    ///
    /// # Panics
    /// When called from inside one of this host's methods, which already
    /// holds the core: that would deadlock the host. The method's panic is
    /// caught and its call answered `internal` (a programming error,
    /// reported loudly).
    fn core(&self) -> MutexGuard<'_, HostCore> {
        if in_method_of(self.core_id) {
            called_back();
        }
        self.core.lock()
    }

    /// The core if it comes free within a short spin, for a caller that
    /// naps between attempts. A method calling back into its own host
    /// panics here as it does in [`Shared::core`]: its own lock would never
    /// come free.
    fn core_now(&self) -> Option<MutexGuard<'_, HostCore>> {
        if in_method_of(self.core_id) {
            called_back();
        }
        self.core.now()
    }

    /// The core, for a task that must not block: while another input
    /// holds it (a slow method), the wait is spent asleep, in naps of 1 ms
    /// doubling to 50 ms, so any number of tasks may wait without taking a
    /// thread each; `None` once the host has shut down.
    async fn core_napping(&self) -> Option<MutexGuard<'_, HostCore>> {
        let mut nap = Nap::default();
        loop {
            if self.is_shut_down() {
                return None;
            }
            if let Some(core) = self.core_now() {
                return Some(core);
            }
            std::future::poll_fn(|cx| nap.poll(cx)).await;
        }
    }

    /// Wakes every session, but `except`.
    fn wake_all(&self, except: Option<PeerKey>) {
        let wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        for (key, waker) in wakers.iter() {
            if Some(*key) != except {
                waker.notify_one();
            }
        }
    }

    /// Drains the core's events: logs them, hands them to subscribers and
    /// wakes sessions that may have output. Calls stop being recorded once
    /// the last subscriber is gone.
    fn drain_events(&self, core: &mut HostCore) -> bool {
        let mut sender = None;
        if self.observed.load(std::sync::atomic::Ordering::Acquire) {
            sender = self
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .filter(|s| s.receiver_count() > 0);
            if sender.is_none() {
                self.observed
                    .store(false, std::sync::atomic::Ordering::Release);
                core.record_calls(false);
            }
        }
        let mut published = false;
        while let Some(event) = core.poll_event() {
            match &event {
                HostEvent::Published { .. } | HostEvent::Bookmarked { .. } => published = true,
                HostEvent::MethodPanicked {
                    module,
                    method,
                    message,
                } => {
                    tracing::warn!(%module, %method, message = ?message, "method panicked; call answered internal")
                }
                _ => {}
            }
            if let Some(sender) = &sender {
                let _ = sender.send(event);
            }
        }
        published
    }
}

/// A running host. Cloning gives another handle to the same host.
///
/// # Blocking
/// Every session, and every method that reads the host's state
/// ([`Host::version`], [`Host::view`], [`Host::module_state`],
/// [`Host::events`], [`Host::session_count`], [`Host::invoke`]) or opens
/// and feeds a session by hand ([`Host::open_session`],
/// [`Host::open_session_as`], [`Session::handle`], [`Session::handle_bytes`],
/// [`Session::try_next_frame`]), takes the host's one core, which a method
/// holds while it runs. Those methods wait for it: on a multi-threaded
/// tokio runtime the waiting worker first hands its other tasks to another
/// (`block_in_place`); on a current-thread runtime, or a thread of its own,
/// the thread blocks. Where a method may run long, call them from
/// `spawn_blocking`. The gRPC and framed transports and [`Host::serve`]
/// never block a thread this way (the shared bus does); [`Host::stats`],
/// [`Host::epoch`] and [`Host::config`] never wait for a method.
#[derive(Clone)]
pub struct Host {
    shared: Arc<Shared>,
}

/// Reports the time since `started` for the method the core just ran, if it
/// ran one and timing is on (the core has no clock of its own).
fn time_method(core: &mut HostCore, started: Option<std::time::Instant>) {
    if let Some(started) = started
        && let Some(run) = core.take_method_run()
    {
        core.record_method_time(run, started.elapsed());
    }
}

async fn bookmarks(shared: Weak<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.is_shut_down() {
            return;
        }
        let mut core = shared.core();
        core.bookmark();
        shared.drain_events(&mut core);
        // What `stats` answers while a method holds the core: without it,
        // a host never scraped before would answer its stats at start.
        shared.busy.remember(&core.stats());
        drop(core);
        shared.wake_all(None);
    }
}

impl Host {
    /// A builder for a host running `app`.
    pub fn builder(app: App) -> HostBuilder {
        HostBuilder {
            app,
            config: HostConfig {
                peer_id: "host".to_owned(),
                ..HostConfig::default()
            },
            epoch: None,
            bookmark_interval: Some(DEFAULT_BOOKMARK_INTERVAL),
            method_timing: false,
        }
    }

    /// The host's epoch. It never changes, so it is read without waiting
    /// for the core: a method may ask for it.
    pub fn epoch(&self) -> String {
        self.shared.epoch.clone()
    }

    /// The host's configuration: its peer id, capability token and limits
    /// (what a transport adapter needs to route and bound its traffic).
    /// Like the epoch, it never changes and is read without the core.
    pub fn config(&self) -> HostConfig {
        self.shared.config.clone()
    }

    /// Whether the host was built with a shared channel's capability token
    /// ([`HostBuilder::capability`]): it then serves no point-to-point
    /// session, which would be handed the token (spec §3.2).
    pub fn carries_capability(&self) -> bool {
        !self.shared.config.capability.is_empty()
    }

    /// The current version of the published view.
    ///
    /// # Panics
    /// When called from inside one of this host's methods (which holds the
    /// state it reads: waiting would deadlock); the call is then answered
    /// `internal`. [`Host::epoch`] and [`Host::config`] may be read there.
    pub fn version(&self) -> u64 {
        self.shared.core().version()
    }

    /// The published view.
    ///
    /// # Panics
    /// When called from inside one of this host's methods (which holds the
    /// state it reads: waiting would deadlock); the call is then answered
    /// `internal`. [`Host::epoch`] and [`Host::config`] may be read there.
    pub fn view(&self) -> Value {
        self.shared.core().view()
    }

    /// A module's committed state, published or not.
    ///
    /// # Panics
    /// When called from inside one of this host's methods (which holds the
    /// state it reads: waiting would deadlock); the call is then answered
    /// `internal`. [`Host::epoch`] and [`Host::config`] may be read there.
    pub fn module_state(&self, module: &str) -> Option<Value> {
        self.shared.core().module_state(module).cloned()
    }

    /// The limits this host enforces (transports apply the message size
    /// limit before decoding). Part of the configuration, read without
    /// the core as [`Host::config`] is.
    pub fn limits(&self) -> HostLimits {
        self.shared.config.limits.clone()
    }

    /// The host's events from now on, in the order they happened: every
    /// publication, bookmark and method panic, and every client call
    /// answered ([`HostEvent::CallAnswered`], recorded only while someone
    /// subscribes). A receiver that falls more than [`EVENT_BUFFER`] events
    /// behind gets `RecvError::Lagged` and carries on from the oldest kept;
    /// the host never waits for it. Receivers end (`RecvError::Closed`)
    /// when the host shuts down; one asked for after that is already ended.
    ///
    /// # Panics
    /// When called from inside one of this host's methods (which holds the
    /// state it reads: waiting would deadlock); the call is then answered
    /// `internal`. [`Host::epoch`] and [`Host::config`] may be read there.
    pub fn events(&self) -> broadcast::Receiver<HostEvent> {
        let mut core = self.shared.core();
        let events = self.shared.events.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sender) = events.as_ref() else {
            return broadcast::channel(1).1;
        };
        core.record_calls(true);
        self.shared
            .observed
            .store(true, std::sync::atomic::Ordering::Release);
        // Subscribed under the core's lock: no event is drained in between.
        sender.subscribe()
    }

    /// The throttles of the lines each session makes this host write, for
    /// every transport serving it.
    pub(crate) fn session_logs(&self) -> &SessionLogs {
        &self.shared.session_logs
    }

    /// How many sessions are open.
    ///
    /// # Panics
    /// When called from inside one of this host's methods (which holds the
    /// state it reads: waiting would deadlock); the call is then answered
    /// `internal`. [`Host::epoch`] and [`Host::config`] may be read there.
    pub fn session_count(&self) -> usize {
        self.shared.core().peer_count()
    }

    /// Counters of the host's work since it started, with its version and
    /// session count now: for metrics ([`HostStats::to_prometheus`]).
    ///
    /// Never waits for a method: if one input holds the core throughout a
    /// short spin, these are the latest stats taken before it (by an earlier
    /// call, or at a bookmark tick: at most one bookmark interval, 5 s by
    /// default, before that input began; with bookmarks off, possibly those
    /// of the host's start), with
    /// [`HostStats::core_held_for`] saying so (and, with method timing on,
    /// for how long it has held the core). A core merely busy with many
    /// short inputs is tried again, a bounded number of times, before the
    /// latest stats are returned the same way.
    pub fn stats(&self) -> HostStats {
        // Each try is a short spin; a core that changes hands throughout
        // them all is busy, and the latest stats are recent enough.
        const TRIES: usize = 16;
        let busy = &self.shared.busy;
        let mut inputs = busy.inputs();
        let mut core = None;
        for _ in 0..TRIES {
            core = self.shared.core.now();
            let now = busy.inputs();
            // One input held the core throughout: a method running long,
            // which a blocking wait here would wait out.
            if core.is_some() || now == inputs {
                break;
            }
            inputs = now;
        }
        let Some(core) = core else {
            return self.with_session_counts(busy.last());
        };
        let stats = core.stats();
        // Under the core's lock, as the bookmark tick does: remembered
        // after it, these could overwrite a tick's newer stats.
        busy.remember(&stats);
        drop(core);
        self.with_session_counts(stats)
    }

    /// `stats` with the sessions opened and ended, which the driver counts
    /// outside the core.
    fn with_session_counts(&self, mut stats: HostStats) -> HostStats {
        (stats.sessions_opened, stats.sessions_ended) = self.shared.sessions.read();
        stats
    }

    /// Runs a method on the host itself, as one commit, and publishes it.
    ///
    /// Called from inside one of this host's own methods, it returns
    /// `failed-precondition` instead of deadlocking: one call is one
    /// commit, so a method cannot start another. That holds however deep
    /// the nesting: a method of this host that invokes another host whose
    /// method invokes this one is refused too. What no check on one thread
    /// can see is two threads each running a method of one host that
    /// invokes the other (A's method waiting for B's core while B's waits
    /// for A's): keep calls between hosts one-way.
    pub fn invoke(&self, module: &str, method: &str, args: &[Value]) -> Result<Value, MethodError> {
        if in_method_of(self.shared.core_id) {
            return Err(MethodError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "Host::invoke of {module}.{method} from inside a method: a call cannot start another commit"
                ),
            ));
        }
        self.shared.guard();
        let mut core = self.shared.core();
        let started = self.shared.busy.enter(core.method_timing());
        let result = core.invoke(module, method, args);
        time_method(&mut core, started);
        self.shared.busy.leave(started);
        let published = self.shared.drain_events(&mut core);
        drop(core);
        if published {
            self.shared.wake_all(None);
        }
        result
    }

    /// Opens a session; the caller moves envelopes between it and a channel.
    /// Most callers want [`Host::serve`] instead.
    pub fn open_session(&self, options: PeerOptions) -> Result<Session, InputError> {
        self.open_session_as(options, None)
    }

    /// Like [`Host::open_session`], for a session whose transport
    /// authenticated its peer as `principal`: every call on it runs with
    /// that as [`Caller::principal`](super::Caller::principal). Set in the
    /// same step as the session opens, so no call runs without it.
    pub fn open_session_as(
        &self,
        options: PeerOptions,
        principal: Option<Arc<str>>,
    ) -> Result<Session, InputError> {
        if self.shared.is_shut_down() {
            return Err(InputError::ShuttingDown);
        }
        self.shared.guard();
        self.open_locked(self.shared.core(), options, principal)
    }

    /// [`Host::open_session_as`] for a task that must not block: while
    /// another session's method holds the core, the wait is spent asleep,
    /// as [`Session::handle_bytes_async`] does, so that clients connecting
    /// during a slow method do not take a thread each.
    ///
    /// # Errors
    /// As [`Host::open_session_as`].
    pub async fn open_session_as_async(
        &self,
        options: PeerOptions,
        principal: Option<Arc<str>>,
    ) -> Result<Session, InputError> {
        self.shared.guard();
        let core = self
            .shared
            .core_napping()
            .await
            .ok_or(InputError::ShuttingDown)?;
        self.open_locked(core, options, principal)
    }

    fn open_locked(
        &self,
        mut core: MutexGuard<'_, HostCore>,
        options: PeerOptions,
        principal: Option<Arc<str>>,
    ) -> Result<Session, InputError> {
        let key = core.connect(options)?;
        core.set_principal(key, principal)?;
        let opened_among = core.peer_count();
        drop(core);
        self.shared.sessions.opened();
        let notify = Arc::new(Notify::new());
        self.shared
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, notify.clone());
        Ok(Session {
            shared: self.shared.clone(),
            key,
            notify,
            end: EndSlot::default(),
            opened_among,
        })
    }

    /// Stops serving: every session ends, new ones are refused, every
    /// [`Host::events`] receiver ends, and so does every server serving
    /// this host ([`GrpcServer::serve`], the framed listeners), as if its
    /// own shutdown had been asked for.
    ///
    /// [`GrpcServer::serve`]: crate::transport::grpc::GrpcServer::serve
    pub fn shutdown(&self) {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared.shut.send_replace(true);
        // Ends every events receiver. The core is not locked: a shutdown
        // must not wait for a method that is running.
        self.shared
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.shared.wake_all(None);
    }

    /// Whether [`Host::shutdown`] has been called: the host then opens no
    /// session again, and the servers refuse to start serving it.
    pub fn is_shut_down(&self) -> bool {
        self.shared.is_shut_down()
    }

    /// Resolves once the host has shut down ([`Host::shutdown`]), at once
    /// if it already has: what a server or task serving it selects on to
    /// stop with it.
    pub async fn closed(&self) {
        let mut shut = self.shared.shut.subscribe();
        // The sender lives as long as the host, which `self` keeps alive.
        let _ = shut.wait_for(|shut| *shut).await;
    }
}
