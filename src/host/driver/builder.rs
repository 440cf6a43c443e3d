//! Building a [`Host`]: its configuration, sections, token and timing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::{EVENT_BUFFER, Host, Shared, bookmarks};
use crate::app::App;
use crate::fast_hash::FastMap;
use crate::host::ArgsBudget;
use crate::host::busy::Busy;
use crate::host::core_lock::CoreLock;
use crate::host::{HostConfig, HostCore, HostLimits, SyncMode, new_epoch};

/// Builds a [`Host`].
pub struct HostBuilder {
    pub(super) app: App,
    pub(super) config: HostConfig,
    pub(super) epoch: Option<String>,
    pub(super) bookmark_interval: Option<Duration>,
    pub(super) method_timing: bool,
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
    /// ([`Caller`](crate::host::Caller)) if not every client may call them.
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

    /// The capability token of the shared channel the host serves (spec
    /// SC7), written on everything the host sends. Only a shared channel
    /// may carry one: the gRPC and framed servers and [`Host::serve`]
    /// refuse such a host (§3.2, G9, FB8), so that the token never reaches
    /// a point-to-point client.
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
    ///
    /// Never give a host that clients may have followed an epoch it used
    /// before, such as one fixed per application: spec E1 requires a new
    /// epoch at every start. A client that kept the old epoch's mirror
    /// takes the restarted host's versions, which count up from 1 again,
    /// as ones it has already seen: it ignores their publications and
    /// settles calls at once against its stale view, silently, for as long
    /// as it stays connected. Derive a fixed epoch from something that
    /// changes at every start (a deployment id and a start counter), or
    /// leave it random. It must be 1 to
    /// [`MAX_EPOCH`](crate::client::MAX_EPOCH) bytes (spec E2), or
    /// [`build`](HostBuilder::build) panics.
    pub fn epoch(mut self, epoch: impl Into<String>) -> Self {
        self.epoch = Some(epoch.into());
        self
    }

    /// Send bookmarks on this interval (default 5 s); `None` disables them.
    /// Bookmarks are sent by a task on the tokio runtime that
    /// [`build`](HostBuilder::build) runs on; a host built outside one sends
    /// none, and says so in a warning. Clients that watch for a silent host
    /// (`ClientConfig::host_silence`) then drop their link whenever nothing
    /// else has arrived for that long.
    ///
    /// # Panics
    /// [`build`](HostBuilder::build) panics for `Some(Duration::ZERO)`:
    /// there is no interval that short.
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
    ///
    /// # Panics
    /// As [`HostCore::new`] does, for a configuration no client could
    /// follow: an epoch of 0 or more than
    /// [`MAX_EPOCH`](crate::client::MAX_EPOCH) bytes, or a published module
    /// whose initial state nests the view deeper than every client mirrors
    /// ([`MAX_VIEW_DEPTH`](crate::host::MAX_VIEW_DEPTH)); and for a
    /// bookmark interval of zero. An initial view too large to send as one
    /// snapshot is warned about: no client can sync until calls (such as
    /// [`Host::invoke`]) shrink it.
    pub fn build(self) -> Host {
        assert!(
            self.bookmark_interval != Some(Duration::ZERO),
            "a bookmark interval must be longer than zero (None sends no bookmarks)"
        );
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
        if let Some(size) = core.view_over_limit() {
            tracing::warn!(
                view_bytes = size,
                max_message_bytes = core.config().limits.max_message_bytes,
                "the initial published view is too large to send as one snapshot: no client can sync until calls shrink it"
            );
        }
        core.set_method_timing(self.method_timing);
        let busy = Busy::new(core.stats());
        let host = Host {
            shared: Arc::new(Shared {
                busy,
                core_id: core.id(),
                epoch: core.epoch().to_owned(),
                config: core.config().clone(),
                args_budget: ArgsBudget::default(),
                session_logs: Default::default(),
                sessions: Default::default(),
                core: CoreLock::new(core),
                wakers: Mutex::new(FastMap::default()),
                closed: std::sync::atomic::AtomicBool::new(false),
                guarded: Mutex::default(),
                shut: watch::Sender::new(false),
                events: Mutex::new(Some(broadcast::channel(EVENT_BUFFER).0)),
                observed: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        if let Some(interval) = self.bookmark_interval {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(bookmarks(Arc::downgrade(&host.shared), interval));
                }
                Err(_) => tracing::warn!(
                    ?interval,
                    "host built outside a tokio runtime: it sends no bookmarks (build it inside one, or set bookmark_interval(None) to say none are wanted)"
                ),
            }
        }
        host
    }
}
