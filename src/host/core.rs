//! The host protocol state machine, with no I/O, no clock and no runtime.
//!
//! Drive it like this:
//! 1. [`HostCore::connect`] when a client session opens; keep the [`PeerKey`].
//! 2. [`HostCore::handle_message`] (or [`HostCore::handle_bytes`]) for every
//!    envelope that session sends. A driver that shares the core between
//!    tasks makes a [`PreparedInput`] first and hands it to
//!    [`HostCore::handle_input`] once it holds the core: decoding and
//!    parsing a call's arguments then keep no other session waiting.
//! 3. After each input, call [`HostCore::poll_transmit`] for that session until
//!    it returns `None`, and drain [`HostCore::poll_event`]; on
//!    [`HostEvent::Published`] or [`HostEvent::Bookmarked`], every session
//!    may have output, so poll them all.
//! 4. [`HostCore::disconnect`] when the session ends.
//! 5. Optionally [`HostCore::bookmark`] on an idle interval.
//!
//! Output is pulled per session, at the session's own pace: publications sit
//! once in a shared history and each session has a cursor into it, so a slow
//! session costs nothing until it reads, and one that falls out of the window
//! is sent a coalescing snapshot instead of an unbounded backlog.

// The core in parts, each an `impl HostCore` block: a Call answered and
// committed (`call`), sync requests and bookmarks (`sync`), what each
// session is sent next (`transmit`), and the message-size rules every commit
// and reply obeys (`size_limits`).
mod call;
mod size_limits;
mod sync;
mod transmit;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::config::HostConfig;
use super::encode::section_prefix;
use super::error::InputError;
use super::event::HostEvent;
use super::history::History;
use super::in_method::new_core_id;
use super::input::{PreparedInput, Source, size_near_limit};
use super::stats::{Counters, HostStats};
use super::timing::{MethodRun, MethodTimes};
use super::view_depth::{MAX_VIEW_DEPTH, section_too_deep};
use crate::app::{App, MethodError, Module};
use crate::fast_hash::FastMap;
use crate::wire::view::{ClientKindView, ClientView};
use crate::wire::{ClientMessage, Header, HostFrame, PROTOCOL_VERSION, SharedHeader};
use size_limits::ViewBound;

/// The longest `source`, in bytes, a host processes a client envelope with:
/// its replies repeat it as their `target` (spec §2, §3.2), so a longer one
/// would let a peer make the host copy and send back whatever it sent.
/// Longer envelopes are refused with [`InputError::PeerIdTooLong`]; a
/// shared-channel adapter, which keys its reply-only sessions by `source`,
/// drops them before opening a session for one (see
/// [`crate::transport::bus`]).
pub const MAX_PEER_ID: usize = 1024;

/// Identifies one client session within a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(u64);

/// How a session receives publications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOptions {
    /// A label for the session in logs (an address, a transport name).
    /// Replies are addressed to each request's own `source`, not to this.
    pub peer_id: String,
    /// Whether publications are delivered through this session. False for
    /// sessions on a shared channel, where publications are broadcast once.
    pub publications: bool,
}

/// An envelope queued for one session alone.
#[derive(Debug)]
enum Direct {
    /// A result, sendable once the session has been sent the publication of
    /// version `gate`; `bytes` is its encoded size.
    Result {
        gate: u64,
        frame: HostFrame,
        bytes: usize,
    },
    /// A sync reply, built when it is sent, at the version current then: a
    /// reply superseded before it is sent costs nothing, however large the
    /// view (H1). `have_version` is 0 when only a Snapshot can answer.
    Sync {
        target: String,
        sync_id: u64,
        have_version: u64,
    },
    /// A sync reply built when the request arrived: for a session that
    /// receives no publications (a shared channel's reply-only session,
    /// SC9), whose reply must not name a version whose publication another
    /// session has not put on the channel yet (SC5).
    Built(HostFrame),
}

/// One session's protocol state.
#[derive(Debug)]
struct Peer {
    options: PeerOptions,
    /// Whether a sync request has been answered, so publications make sense.
    attached: bool,
    /// The last version whose publication this session has been handed.
    cursor: u64,
    /// Results and sync answers, each gated on the cursor reaching a version
    /// so that a result never overtakes the publication it names.
    direct: VecDeque<Direct>,
    /// Encoded bytes of the results in `direct`.
    direct_bytes: usize,
    /// How many of `direct` are results: the calls in flight, counted as
    /// they queue and leave rather than by walking `direct` on every call.
    direct_results: usize,
    /// A bookmark was requested and this session is idle at the head.
    bookmark_due: bool,
    /// Where overflow snapshots are addressed: the `source` of the session's
    /// latest envelope (results and sync answers use their request's own).
    /// Shared, as every call's [`Caller::peer_id`](super::Caller::peer_id) is this.
    reply_to: Arc<str>,
    /// The header of the frames last addressed to this session
    /// ([`HostCore::addressed`]).
    header: Option<Arc<SharedHeader>>,
    /// Who the session's transport authenticated, if anyone said.
    principal: Option<Arc<str>>,
}

/// The host protocol state machine. See the module docs for the call order.
pub struct HostCore {
    config: HostConfig,
    epoch: String,
    version: u64,
    modules: Vec<Box<dyn Module>>,
    index: FastMap<String, usize>,
    /// Each module's section as a pointer prefix, escaped once.
    prefixes: Vec<String>,
    published: Vec<bool>,
    peers: FastMap<PeerKey, Peer>,
    next_peer: u64,
    history: History,
    /// The shared live snapshot of the current version (snapshot mode).
    live_snapshot: Option<HostFrame>,
    /// The published view's JSON at a version, computed once per version.
    /// Shared by every Snapshot of that version (`HostFrame::snapshot`).
    view_cache: Option<(u64, Arc<str>)>,
    bookmark: Option<(u64, HostFrame)>,
    /// The header of publications (no target), made once and shared by
    /// every frame that has it: every call makes two frames, so copying the
    /// epoch and peer ids into each was a measurable share of its cost.
    broadcast_header: Arc<SharedHeader>,
    events: VecDeque<HostEvent>,
    /// Whether answered calls are reported as events.
    record_calls: bool,
    /// An upper bound on the published view's JSON length.
    view_bound: ViewBound,
    /// Unique among the cores of this process (see `in_method`).
    id: u64,
    stats: Counters,
    method_times: MethodTimes,
    /// Whether runs are recorded for timing (off when created).
    method_timing: bool,
    /// The declared method the latest input ran, until the driver takes it.
    last_run: Option<MethodRun>,
}

impl std::fmt::Debug for HostCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCore")
            .field("epoch", &self.epoch)
            .field("version", &self.version)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl HostCore {
    /// A host serving `app` under `epoch`, at version 1.
    ///
    /// `epoch` MUST be new for every host start; the caller supplies it so the
    /// core stays deterministic (see [`crate::host::new_epoch`]).
    ///
    /// # Panics
    /// If a published module's initial state nests the view deeper than
    /// [`MAX_VIEW_DEPTH`] (a programming error found at start-up): no client
    /// could mirror it. Likewise if `epoch` is empty or longer than
    /// [`MAX_EPOCH`](crate::client::MAX_EPOCH) bytes (spec E2): every
    /// client would ignore the host.
    pub fn new(config: HostConfig, app: App, epoch: impl Into<String>) -> Self {
        let epoch = epoch.into();
        assert!(
            !epoch.is_empty() && epoch.len() <= crate::client::MAX_EPOCH,
            "a host's epoch must be 1 to {} bytes (spec E2), not {}",
            crate::client::MAX_EPOCH,
            epoch.len()
        );
        let modules = app.into_modules();
        let index = modules
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name().to_owned(), i))
            .collect();
        let prefixes = modules.iter().map(|m| section_prefix(m.name())).collect();
        let published = modules
            .iter()
            .map(|m| match &config.sections {
                None => true,
                Some(sections) => sections.iter().any(|s| s == m.name()),
            })
            .collect();
        let history = History::new(
            config.limits.history_entries.max(1),
            config.limits.history_bytes,
        );
        let method_times = MethodTimes::new(&modules);
        let broadcast_header = SharedHeader::new(Header {
            protocol_version: PROTOCOL_VERSION,
            epoch: epoch.clone(),
            source: config.peer_id.clone(),
            target: String::new(),
            capability: config.capability.clone(),
        });
        let mut host = Self {
            config,
            epoch,
            version: 1,
            modules,
            index,
            prefixes,
            published,
            peers: FastMap::default(),
            next_peer: 0,
            history,
            live_snapshot: None,
            view_cache: None,
            bookmark: None,
            broadcast_header,
            events: VecDeque::new(),
            record_calls: false,
            stats: Counters::default(),
            method_times,
            method_timing: false,
            last_run: None,
            view_bound: ViewBound::default(),
            id: new_core_id(),
        };
        for (i, module) in host.modules.iter().enumerate() {
            if host.published[i]
                && let Some(depth) = section_too_deep(module.state())
            {
                panic!(
                    "module {}: its initial state nests the published view {depth} levels deep, deeper than the {MAX_VIEW_DEPTH} every client can mirror",
                    module.name()
                );
            }
        }
        host.view_bound = ViewBound {
            size: host.published_view_len(),
            exact: true,
        };
        host
    }

    /// The published view's JSON length, when it is known to be too large
    /// to send as one snapshot within the message limit (spec §15): no
    /// client can sync until calls shrink it. Only a view that started so,
    /// or a module that could not revert a refused call, gets there.
    pub(crate) fn view_over_limit(&self) -> Option<usize> {
        (self.view_bound.exact && self.view_bound.size > self.view_limit())
            .then_some(self.view_bound.size)
    }

    /// The host's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// This core's id, unique in the process; a driver compares it with
    /// the core whose method the current thread runs.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The current version of the published view.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// How many sessions are connected.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The published view as JSON text: an object with one member per
    /// published module. Computed once per version.
    pub fn view_json(&mut self) -> &str {
        self.shared_view();
        self.view_cache.as_ref().map(|(_, s)| &**s).unwrap_or("{}")
    }

    /// [`HostCore::view_json`], shared rather than borrowed.
    fn shared_view(&mut self) -> Arc<str> {
        if self.view_cache.as_ref().map(|(v, _)| *v) != Some(self.version) {
            let mut out = String::from("{");
            let mut first = true;
            for (module, published) in self.modules.iter().zip(&self.published) {
                if !published {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(&Value::String(module.name().to_owned()).to_string());
                out.push(':');
                out.push_str(&module.state().to_string());
            }
            out.push('}');
            self.view_cache = Some((self.version, Arc::from(out)));
        }
        self.view_cache
            .as_ref()
            .map_or_else(|| Arc::from("{}"), |(_, s)| s.clone())
    }

    /// The published view as a JSON value.
    pub fn view(&self) -> Value {
        let map = self
            .modules
            .iter()
            .zip(&self.published)
            .filter(|(_, p)| **p)
            .map(|(m, _)| (m.name().to_owned(), m.state().clone()))
            .collect();
        Value::Object(map)
    }

    /// A module's committed state, published or not (host-side access).
    pub fn module_state(&self, module: &str) -> Option<&Value> {
        self.index.get(module).map(|&i| self.modules[i].state())
    }

    /// Opens a session, or refuses it with [`InputError::TooManyClients`]
    /// (counted in `sessions_refused`) once `max_clients` are open. The
    /// session is sent no publication until a SyncRequest attaches it
    /// (results of calls it makes before that are still sent).
    pub fn connect(&mut self, options: PeerOptions) -> Result<PeerKey, InputError> {
        if self.peers.len() >= self.config.limits.max_clients {
            self.stats.sessions_refused += 1;
            return Err(InputError::TooManyClients {
                limit: self.config.limits.max_clients,
            });
        }
        let key = PeerKey(self.next_peer);
        self.next_peer += 1;
        self.peers.insert(
            key,
            Peer {
                reply_to: Arc::from(""),
                header: None,
                principal: None,
                options,
                attached: false,
                cursor: 0,
                direct: VecDeque::new(),
                direct_bytes: 0,
                direct_results: 0,
                bookmark_due: false,
            },
        );
        Ok(key)
    }

    /// Records who the session's transport authenticated: every later call
    /// on it runs with this as [`Caller::principal`](super::Caller::principal).
    pub fn set_principal(
        &mut self,
        peer: PeerKey,
        principal: Option<Arc<str>>,
    ) -> Result<(), InputError> {
        let p = self.peers.get_mut(&peer).ok_or(InputError::UnknownPeer)?;
        p.principal = principal;
        Ok(())
    }

    /// Ends a session and forgets everything queued for it.
    pub fn disconnect(&mut self, peer: PeerKey) {
        self.peers.remove(&peer);
    }

    /// Decodes and handles one encoded `ClientMessage`:
    /// [`PreparedInput::decode`] then [`HostCore::handle_input`].
    pub fn handle_bytes(&mut self, peer: PeerKey, bytes: &[u8]) -> Result<(), InputError> {
        let input = PreparedInput::decode(bytes, self.config.limits.max_message_bytes)?;
        self.handle_input(peer, &input)
    }

    /// Handles one envelope from a session.
    ///
    /// The envelope is held to the max message size as it would be encoded
    /// (spec §15), as bytes are in [`HostCore::handle_bytes`]: in-process and
    /// shared channels hand over envelopes that were never encoded, and a
    /// peer on them must not get past the limit either. Over it, a Call is
    /// answered `resource-exhausted` and not run (H7); anything else is
    /// refused with [`InputError::MessageTooLarge`], changing nothing.
    pub fn handle_message(
        &mut self,
        peer: PeerKey,
        message: ClientMessage,
    ) -> Result<(), InputError> {
        let input = PreparedInput::message(message, self.config.limits.max_message_bytes);
        self.handle_input(peer, &input)
    }

    /// Handles an envelope a driver prepared before locking the core, with
    /// the effect [`HostCore::handle_bytes`] or [`HostCore::handle_message`]
    /// has on the same envelope. The envelope is held to this core's
    /// message size limit whatever limit it was prepared against. It is
    /// borrowed so that the caller frees it, arguments and all, after it
    /// lets the core go.
    pub fn handle_input(
        &mut self,
        peer: PeerKey,
        input: &PreparedInput<'_>,
    ) -> Result<(), InputError> {
        let limit = self.config.limits.max_message_bytes;
        let PreparedInput {
            source,
            limit: prepared_for,
            size,
            args,
            ..
        } = input;
        match source {
            Source::View(view) => match *size {
                // Bytes over the limit are not processed at all, not even
                // answered (they were never decoded where the limits agree).
                Some(size) if size > limit => Err(InputError::MessageTooLarge { size, limit }),
                size => self.handle_sized(peer, *view, size, args.as_ref()),
            },
            Source::Message(message) => {
                let size = if *prepared_for == limit {
                    *size
                } else {
                    size_near_limit(message, limit)
                };
                self.handle_sized(peer, ClientView::from(message), size, args.as_ref())
            }
        }
    }

    /// Handles an envelope of `size` encoded bytes; `None` when it is known
    /// to be within the limit ([`size_near_limit`] found it far enough
    /// below). `args` are a call's arguments if they were parsed before the
    /// core was locked (they depend on `args_json` alone); otherwise they
    /// are parsed here.
    fn handle_sized(
        &mut self,
        peer: PeerKey,
        message: ClientView<'_>,
        size: Option<usize>,
        args: Option<&Result<Vec<Value>, MethodError>>,
    ) -> Result<(), InputError> {
        // A run not taken after an earlier input is not this input's.
        self.last_run = None;
        if !self.peers.contains_key(&peer) {
            return Err(InputError::UnknownPeer);
        }
        let header = message.header.unwrap_or_default();
        if header.source.len() > MAX_PEER_ID {
            return Err(InputError::PeerIdTooLong {
                len: header.source.len(),
                limit: MAX_PEER_ID,
            });
        }
        let limit = self.config.limits.max_message_bytes;
        // Not processed (§15): the over-long envelope changes nothing, not
        // even the target of a later OVERFLOW snapshot (H12).
        let oversize = size.filter(|&size| size > limit);
        if oversize.is_none()
            && !header.source.is_empty()
            && let Some(p) = self.peers.get_mut(&peer)
            && *p.reply_to != *header.source
        {
            p.reply_to = Arc::from(header.source);
        }
        match (message.kind, oversize) {
            (Some(ClientKindView::Call(call)), _) => {
                self.handle_call(peer, &header, call, oversize, args)
            }
            (_, Some(size)) => Err(InputError::MessageTooLarge { size, limit }),
            (None, None) => Err(InputError::UnknownKind),
            (Some(ClientKindView::SyncRequest(request)), None) => {
                if header.protocol_version != PROTOCOL_VERSION {
                    return Err(InputError::UnsupportedVersion(header.protocol_version));
                }
                self.handle_sync(peer, &header, &request);
                Ok(())
            }
        }
    }

    /// The header of a frame for `peer`'s session addressed to `target`
    /// (none: the publications' header), kept with the session while its
    /// peer keeps that source, as it does call after call.
    fn addressed(&mut self, peer: PeerKey, target: &str) -> Arc<SharedHeader> {
        if target.is_empty() {
            return self.broadcast_header.clone();
        }
        let cached = self.peers.get(&peer).and_then(|p| p.header.as_ref());
        if let Some(header) = cached.filter(|h| h.header().target == target) {
            return header.clone();
        }
        let header = SharedHeader::new(Header {
            target: target.to_owned(),
            ..self.broadcast_header.header().clone()
        });
        if let Some(p) = self.peers.get_mut(&peer) {
            p.header = Some(header.clone());
        }
        header
    }

    /// What the core has done since it was created (calls answered by
    /// outcome, envelopes handed out by kind…) and its version and session
    /// count now.
    pub fn stats(&self) -> HostStats {
        let mut stats = self
            .stats
            .snapshot(&self.epoch, self.version, self.peers.len());
        if self.method_timing {
            stats.method_seconds = self.method_times.snapshot();
        }
        stats
    }

    /// Turns method timing on or off (off when created). While it is on,
    /// [`HostCore::take_method_run`] reports the method each input ran and
    /// [`HostStats::method_seconds`] lists every declared method; while it
    /// is off neither costs anything, and the list is empty.
    pub fn set_method_timing(&mut self, on: bool) {
        self.method_timing = on;
        if !on {
            self.last_run = None;
        }
    }

    /// Whether method timing is on: whether a driver should read the clock
    /// around the inputs it hands the core.
    pub fn method_timing(&self) -> bool {
        self.method_timing
    }

    /// The declared method the latest input ran, if it ran one (a Call, or
    /// [`HostCore::invoke`]), taken so that it is reported once. The core
    /// has no clock: a driver reads one around each input it hands the
    /// core and reports the time with [`HostCore::record_method_time`].
    /// Methods declared after the core was made are not timed.
    pub fn take_method_run(&mut self) -> Option<MethodRun> {
        self.last_run.take()
    }

    /// Adds `elapsed`, the time the driver measured for the input that ran
    /// `run`, to that method's histogram in [`HostStats::method_seconds`].
    /// A run taken from another core is ignored.
    pub fn record_method_time(&mut self, run: MethodRun, elapsed: Duration) {
        self.method_times.record(self.id, run, elapsed);
    }

    /// Turns [`HostEvent::CallAnswered`] on or off (off when created).
    pub fn record_calls(&mut self, on: bool) {
        self.record_calls = on;
    }

    /// The next event, if any. Events queue without bound until taken, so
    /// a driver drains them after each input.
    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }
}
