//! The async host: a [`HostCore`] shared by every session, driven by tokio.
//!
//! Each session pulls its output at its own pace ([`Session::next_frame`]);
//! a publication only wakes sessions, it never copies state into them. A
//! session that stops reading therefore costs the host nothing until it falls
//! out of the history window, after which it is sent one coalescing snapshot.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use std::future::Future;
use std::task::{Context, Poll};

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{Notify, broadcast, watch};

use super::busy::Busy;
use super::core_lock::{CoreLock, Nap};
use super::in_method::{called_back, in_method_of};
use super::input::PreparedInput;
use super::{
    HostConfig, HostCore, HostEvent, HostLimits, HostStats, InputError, PeerKey, PeerOptions,
    SyncMode, new_epoch,
};
use crate::app::{App, MethodError};
use crate::fast_hash::FastMap;
use crate::transport::{BoxSink, HostLink, TransportError};
use crate::wire::ErrorCode;
use crate::wire::{ClientMessage, HostFrame};

/// How many events a [`Host::events`] receiver may fall behind by.
pub const EVENT_BUFFER: usize = 4096;

/// How often an idle host tells its clients its version, by default.
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

struct Shared {
    core: CoreLock,
    /// The core's [`HostCore::id`], read once: checking it must not lock.
    core_id: u64,
    /// The core's message size limit, read once: sessions prepare their
    /// input against it before they lock the core.
    max_message_bytes: usize,
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
}

impl Shared {
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
#[derive(Clone)]
pub struct Host {
    shared: Arc<Shared>,
}

/// Builds a [`Host`].
pub struct HostBuilder {
    app: App,
    config: HostConfig,
    epoch: Option<String>,
    bookmark_interval: Option<Duration>,
    method_timing: bool,
}

impl HostBuilder {
    /// Publish with this sync mode (default: [`SyncMode::Patch`], as the
    /// `cosystem-worker host` command: each commit sends its change, so
    /// publishing costs what the change does; [`SyncMode::Snapshot`] sends
    /// the whole published view on every commit).
    pub fn sync(mut self, sync: SyncMode) -> Self {
        self.config.sync = sync;
        self
    }

    /// Publish only these modules' state; the others are private: their
    /// state is never sent to any client (spec SI2).
    ///
    /// Private is about state, not calls: calls still reach every module
    /// (SI3), and a method's return value goes to its caller as returned
    /// (SI5). So a private module's methods must not return what clients
    /// may not see, and must authorise their callers
    /// ([`Caller`](super::Caller)) if not every client may call them.
    ///
    /// A name that is not a module of the app publishes nothing; `build`
    /// logs a warning for it (a typo would otherwise make a module private
    /// without a word).
    pub fn sections<I, S>(mut self, sections: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.sections = Some(sections.into_iter().map(Into::into).collect());
        self
    }

    /// The host's peer id (default `host`).
    pub fn peer_id(mut self, peer_id: impl Into<String>) -> Self {
        self.config.peer_id = peer_id.into();
        self
    }

    /// The capability token written on everything the host sends.
    pub fn capability(mut self, token: impl Into<String>) -> Self {
        self.config.capability = token.into();
        self
    }

    /// Limits (see [`HostLimits`] for defaults).
    pub fn limits(mut self, limits: HostLimits) -> Self {
        self.config.limits = limits;
        self
    }

    /// A fixed epoch instead of a fresh random one (tests, replays).
    pub fn epoch(mut self, epoch: impl Into<String>) -> Self {
        self.epoch = Some(epoch.into());
        self
    }

    /// Send bookmarks on this interval (default 5 s); `None` disables them.
    pub fn bookmark_interval(mut self, interval: Option<Duration>) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Time every method call into [`HostStats::method_seconds`]
    /// (default: off). It reads the clock twice per input the core takes,
    /// ~3% of an in-process call, so it is for hosts whose metrics are
    /// read; `cosystem-worker host --metrics-listen` turns it on.
    ///
    /// [`HostStats::method_seconds`]: crate::host::HostStats::method_seconds
    pub fn method_timing(mut self, on: bool) -> Self {
        self.method_timing = on;
        self
    }

    /// Starts the host. Bookmarks need a tokio runtime; outside one they are
    /// not sent.
    pub fn build(self) -> Host {
        let epoch = self.epoch.unwrap_or_else(new_epoch);
        if let Some(sections) = &self.config.sections {
            let names = self.app.names();
            for unknown in sections.iter().filter(|s| !names.contains(s)) {
                tracing::warn!(
                    section = %unknown,
                    modules = ?names,
                    "a published section names no module of the app; it publishes nothing"
                );
            }
        }
        let mut core = HostCore::new(self.config, self.app, epoch);
        core.set_method_timing(self.method_timing);
        let busy = Busy::new(core.stats());
        let host = Host {
            shared: Arc::new(Shared {
                busy,
                core_id: core.id(),
                max_message_bytes: core.config().limits.max_message_bytes,
                core: CoreLock::new(core),
                wakers: Mutex::new(FastMap::default()),
                closed: std::sync::atomic::AtomicBool::new(false),
                shut: watch::Sender::new(false),
                events: Mutex::new(Some(broadcast::channel(EVENT_BUFFER).0)),
                observed: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        if let (Some(interval), Ok(runtime)) = (
            self.bookmark_interval,
            tokio::runtime::Handle::try_current(),
        ) {
            runtime.spawn(bookmarks(Arc::downgrade(&host.shared), interval));
        }
        host
    }
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
        if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut core = shared.core();
        core.bookmark();
        shared.drain_events(&mut core);
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

    /// The host's epoch.
    pub fn epoch(&self) -> String {
        self.shared.core().epoch().to_owned()
    }

    /// The host's configuration: its peer id, capability token and limits
    /// (what a transport adapter needs to route and bound its traffic).
    pub fn config(&self) -> HostConfig {
        self.shared.core().config().clone()
    }

    /// The current version of the published view.
    pub fn version(&self) -> u64 {
        self.shared.core().version()
    }

    /// The published view.
    pub fn view(&self) -> Value {
        self.shared.core().view()
    }

    /// A module's committed state, published or not.
    pub fn module_state(&self, module: &str) -> Option<Value> {
        self.shared.core().module_state(module).cloned()
    }

    /// The limits this host enforces (transports apply the message size
    /// limit before decoding).
    pub fn limits(&self) -> HostLimits {
        self.shared.core().config().limits.clone()
    }

    /// The host's events from now on, in the order they happened: every
    /// publication, bookmark and method panic, and every client call
    /// answered ([`HostEvent::CallAnswered`], recorded only while someone
    /// subscribes). A receiver that falls more than [`EVENT_BUFFER`] events
    /// behind gets `RecvError::Lagged` and carries on from the oldest kept;
    /// the host never waits for it. Receivers end (`RecvError::Closed`)
    /// when the host shuts down; one asked for after that is already ended.
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

    /// How many sessions are open.
    pub fn session_count(&self) -> usize {
        self.shared.core().peer_count()
    }

    /// Counters of the host's work since it started, with its version and
    /// session count now: for metrics ([`HostStats::to_prometheus`]).
    ///
    /// Never waits for a method: if one input holds the core throughout a
    /// short spin, these are the latest stats taken before it, with
    /// [`HostStats::core_held_for`] saying so (and, with method timing on,
    /// for how long it has held the core). A core merely busy with many
    /// short inputs is waited for.
    pub fn stats(&self) -> HostStats {
        let busy = &self.shared.busy;
        let inputs = busy.inputs();
        let core = match self.shared.core.now() {
            Some(core) => core,
            // Other inputs took the core meanwhile: it is busy, not stuck,
            // and waiting for it is short.
            None if busy.inputs() != inputs => self.shared.core(),
            None => return busy.last(),
        };
        let stats = core.stats();
        drop(core);
        busy.remember(&stats);
        stats
    }

    /// Runs a method on the host itself, as one commit, and publishes it.
    ///
    /// Called from inside one of this host's own methods, it returns
    /// `failed-precondition` instead of deadlocking: one call is one
    /// commit, so a method cannot start another.
    pub fn invoke(&self, module: &str, method: &str, args: &[Value]) -> Result<Value, MethodError> {
        if in_method_of(self.shared.core_id) {
            return Err(MethodError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "Host::invoke of {module}.{method} from inside a method: a call cannot start another commit"
                ),
            ));
        }
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
        if self
            .shared
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(InputError::ShuttingDown);
        }
        let key = {
            let mut core = self.shared.core();
            let key = core.connect(options)?;
            core.set_principal(key, principal)?;
            key
        };
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
        })
    }

    /// Serves one session over `link` until either side closes it, the
    /// session misbehaves beyond recovery, or the host shuts down.
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
    /// [`Caller::principal`](super::Caller::principal).
    pub async fn serve_as(
        &self,
        link: HostLink,
        principal: Option<Arc<str>>,
    ) -> Result<(), InputError> {
        let HostLink {
            peer_id,
            mut sink,
            mut stream,
        } = link;
        let session = self.open_session_as(
            PeerOptions {
                peer_id: peer_id.clone(),
                publications: true,
            },
            principal,
        )?;
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
                                return Poll::Ready(read_failed(&peer_id, error));
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
                            tracing::warn!(peer = %peer_id, %error, "closing session");
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
                        Err(_) => return Poll::Ready(Ok(())),
                    }
                    if input_ended && !busy {
                        match session.shared.core.now() {
                            // Another session's method holds the core: look
                            // again after a nap, not at the next wake-up.
                            None => busy = true,
                            Some(core) if !core.has_answers(session.key) => {
                                drop(core);
                                // Everything owed is in the sink: end once
                                // it is out.
                                return sink.as_mut().poll_flush(cx).map(|_| Ok(()));
                            }
                            Some(_) => {}
                        }
                    }
                } else if let Poll::Ready(Err(_)) = sink.as_mut().poll_flush(cx) {
                    // What the sink already holds needs no core to go out.
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

    /// Resolves once the host has shut down ([`Host::shutdown`]), at once
    /// if it already has: what a server or task serving it selects on to
    /// stop with it.
    pub async fn closed(&self) {
        let mut shut = self.shared.shut.subscribe();
        // The sender lives as long as the host, which `self` keeps alive.
        let _ = shut.wait_for(|shut| *shut).await;
    }
}

/// One client session of a [`Host`]. Dropping it disconnects the session.
pub struct Session {
    shared: Arc<Shared>,
    key: PeerKey,
    notify: Arc<Notify>,
}

impl Session {
    /// Records who this session's transport authenticated: every later call
    /// on it runs with this as [`Caller::principal`](super::Caller::principal).
    pub fn set_principal(&self, principal: Option<Arc<str>>) -> Result<(), InputError> {
        self.shared.core().set_principal(self.key, principal)
    }

    /// Handles one envelope from the client, held to the max message size
    /// as it would be encoded ([`HostCore::handle_message`]). It is sized,
    /// and a call's arguments parsed, before the core is locked.
    pub fn handle(&self, message: ClientMessage) -> Result<(), InputError> {
        // Dropped after the core is let go: freeing large arguments is work
        // too.
        let input = self.prepare(message);
        self.with_core(true, |core| core.handle_input(self.key, &input))
    }

    /// `message` made ready for the core without it ([`PreparedInput`]).
    fn prepare(&self, message: ClientMessage) -> PreparedInput<'static> {
        PreparedInput::message(message, self.shared.max_message_bytes)
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

    /// Whether the host has shut down: the session will produce nothing
    /// more.
    pub fn is_closed(&self) -> bool {
        self.shared
            .closed
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Decodes and handles one encoded envelope from the client
    /// ([`HostCore::handle_bytes`]). It is decoded, and a call's arguments
    /// parsed, before the core is locked: a session sending megabytes of
    /// arguments keeps only itself waiting while they are read.
    ///
    /// # Errors
    /// As [`HostCore::handle_bytes`].
    pub fn handle_bytes(&self, bytes: &[u8]) -> Result<(), InputError> {
        let input = PreparedInput::decode(bytes, self.shared.max_message_bytes)?;
        self.with_core(true, |core| core.handle_input(self.key, &input))
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
            if self
                .shared
                .closed
                .load(std::sync::atomic::Ordering::Acquire)
            {
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
            if let Some(core) = self.shared.core.now() {
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
fn read_failed(peer_id: &str, error: TransportError) -> Result<(), InputError> {
    let refused = match error {
        TransportError::FrameTooLarge { size, limit } => {
            InputError::MessageTooLarge { size, limit }
        }
        TransportError::Malformed(reason) => InputError::Malformed(reason),
        error => {
            tracing::debug!(peer = %peer_id, %error, "session read failed");
            return Ok(());
        }
    };
    tracing::warn!(peer = %peer_id, error = %refused, "closing session");
    Err(refused)
}
