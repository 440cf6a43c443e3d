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

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use serde_json::Value;

use super::caller::{Caller, CallerScope};
use super::config::{HostConfig, SyncMode};
use super::encode::{ops_json, section_prefix};
use super::history::{Entry, History};
use super::in_method::{CALLED_BACK, CalledBack, InMethod, new_core_id};
use super::input::{PreparedInput, Source, parse_args};
use super::stats::{Counters, HostStats};
use super::timing::{MethodRun, MethodTimes};
use super::view_depth::{MAX_VIEW_DEPTH, section_too_deep, too_deep};
use super::view_size::{growth_bound, snapshot_overhead, view_len};
use crate::app::{App, MethodError, Module};
use crate::fast_hash::FastMap;
use crate::wire::view::{CallView, ClientKindView, ClientView, HeaderView};
use crate::wire::{
    CallResult, ClientMessage, ErrorCode, Header, HostFrame, PROTOCOL_VERSION, Patch, SharedHeader,
    Snapshot, SnapshotReason, SyncRequest, call_result, client_message, host_message,
};

/// A session's unread results may add up to this many maximum-size
/// messages before the session is closed as not reading them.
const BACKLOG_MESSAGES: usize = 8;

/// The longest error message a host sends: a method's or a check's message
/// may quote what the peer sent, and must not let it amplify its input.
const MAX_ERROR_MESSAGE: usize = 1024;

/// The most bytes of JSON an error's details may take: with the message and
/// a peer id, a result stays far inside the smallest message limit (§15).
const MAX_ERROR_DETAILS: usize = 64 * 1024;

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

/// Why an input was refused. The host stays consistent and keeps serving
/// every other session whatever the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The session key is not (or no longer) connected.
    #[error("unknown session")]
    UnknownPeer,
    /// The host is shutting down and opens no new sessions.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// The host already serves its maximum number of sessions.
    #[error("too many clients: the limit is {limit}")]
    TooManyClients {
        /// The configured maximum.
        limit: usize,
    },
    /// The encoded message is larger than the limit.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    MessageTooLarge {
        /// The message's size.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// The envelope's `source` is longer than any peer id a host answers;
    /// ignored.
    #[error("source peer id of {len} bytes exceeds the limit of {limit}")]
    PeerIdTooLong {
        /// The `source`'s length in bytes.
        len: usize,
        /// The longest peer id processed.
        limit: usize,
    },
    /// The bytes are not a `ClientMessage`.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The envelope carries no message kind this host knows; ignored.
    #[error("no known message kind")]
    UnknownKind,
    /// The envelope's protocol version is not 1; a call was answered
    /// `failed-precondition`, anything else was ignored.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    /// The session keeps calling without reading its results; the driver
    /// SHOULD close it. Nothing was executed.
    #[error("session floods the host: {queued} unread answers")]
    Flooding {
        /// Answers queued for the session and not yet taken.
        queued: usize,
    },
    /// The session's unread results add up to more bytes than the host
    /// keeps for one session; the driver SHOULD close it. Nothing was
    /// executed.
    #[error("session does not read its results: {bytes} bytes unread, the limit is {limit}")]
    Backlog {
        /// Encoded bytes of the results queued for the session.
        bytes: usize,
        /// The most the host keeps queued for one session.
        limit: usize,
    },
}

impl InputError {
    /// Whether the driver should end the session.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Flooding { .. } | Self::Backlog { .. } | Self::UnknownPeer
        )
    }
}

/// Something a driver may want to log or react to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HostEvent {
    /// The published view reached `version` (one commit); every session
    /// may have output.
    Published {
        /// The new version.
        version: u64,
    },
    /// A method panicked; the call was answered `internal` and its module
    /// rolled back.
    MethodPanicked {
        /// The module.
        module: String,
        /// The method.
        method: String,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// [`HostCore::bookmark`] was called at `version`: every idle session
    /// now has a bookmark to send. Not a commit.
    Bookmarked {
        /// The current version.
        version: u64,
    },
    /// A client's call was answered. Emitted only while
    /// [`HostCore::record_calls`] is on: each costs a few small copies.
    CallAnswered(CallRecord),
}

/// One client call as the host answered it: what a metrics or audit hook
/// needs, without the arguments or the value.
///
/// "Answered" means decided: the result is queued for the session, and is
/// lost if the session ends before it is sent. A call that makes the host
/// close its session (flooding, an unread backlog: [`InputError::is_fatal`])
/// is not recorded; the driver logs the closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The session's label ([`PeerOptions::peer_id`]: the remote address
    /// on gRPC and framed TCP), which tells two clients apart.
    pub session: String,
    /// The principal the session was authenticated as, if the transport
    /// said ([`HostCore::set_principal`]).
    pub principal: Option<Arc<str>>,
    /// The calling peer's id (the envelope's `source`). The client chooses
    /// it: do not authorise on it.
    pub peer: String,
    /// The call's id, unique per client.
    pub call_id: u64,
    /// The module called, cut to its first [`RECORDED_NAME`] bytes: a
    /// name the host does not know may be as long as a message, and a
    /// record can outlive the session.
    pub module: String,
    /// The method called, cut like `module`.
    pub method: String,
    /// `None` for a value, else the error code it was answered with
    /// (including refusals made before running it, such as
    /// `resource-exhausted` for too many calls in flight).
    pub error: Option<ErrorCode>,
    /// The result's `state_version`: the version the call's change (if any)
    /// is published at.
    pub version: u64,
}

/// The most bytes of a module or method name a [`CallRecord`] keeps.
pub const RECORDED_NAME: usize = 1024;

/// `text` cut to at most `keep` bytes, at a character boundary.
fn cut(text: &str, keep: usize) -> String {
    let mut end = text.len().min(keep);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
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
    /// Shared, as every call's [`Caller::peer_id`] is this.
    reply_to: Arc<str>,
    /// The header of the frames last addressed to this session
    /// ([`HostCore::addressed`]).
    header: Option<Arc<SharedHeader>>,
    /// Who the session's transport authenticated, if anyone said.
    principal: Option<Arc<str>>,
}

/// An upper bound on the published view's JSON length, and whether it is
/// the length itself.
#[derive(Debug, Clone, Copy, Default)]
struct ViewBound {
    size: usize,
    exact: bool,
}

/// A module's reported size change as an `isize`; no real change is
/// anywhere near either end.
fn clamp(change: i64) -> isize {
    isize::try_from(change).unwrap_or(if change < 0 { isize::MIN } else { isize::MAX })
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

/// Bytes an envelope's encoding can take beyond its strings' own lengths:
/// every tag, length prefix and integer at its longest (a Call's envelope
/// needs at most 71, a SyncRequest's at most 75, with 5-byte length prefixes).
const ENVELOPE_OVERHEAD: usize = 128;

/// The envelope's encoded size if it may be over `limit`; `None` when the
/// lengths of its strings alone show it is within. Exact measuring walks
/// every field, which the per-call path of in-process transports would pay
/// for nothing: almost every envelope is far below the limit.
pub(super) fn size_near_limit(message: &ClientMessage, limit: usize) -> Option<usize> {
    let header = message.header.as_ref().map_or(0, |h| {
        h.epoch.len() + h.source.len() + h.target.len() + h.capability.len()
    });
    let kind = match &message.kind {
        Some(client_message::Kind::Call(c)) => c.module.len() + c.method.len() + c.args_json.len(),
        Some(client_message::Kind::SyncRequest(_)) | None => 0,
    };
    let bound = header
        .saturating_add(kind)
        .saturating_add(ENVELOPE_OVERHEAD);
    (bound > limit).then(|| message.encoded_len())
}

/// A name a peer chose, for a log line or an error message: escaped, and
/// cut after [`Clipped::KEEP`] bytes (a peer can send names up to the
/// message limit, which neither may repeat: escaping 4 MiB of control
/// characters took ~80 ms under the core's lock).
struct Clipped<'a>(&'a str);

impl Clipped<'_> {
    const KEEP: usize = 128;
}

impl std::fmt::Debug for Clipped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() <= Self::KEEP {
            return std::fmt::Debug::fmt(self.0, f);
        }
        let mut end = Self::KEEP;
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{:?}… ({} bytes)", &self.0[..end], self.0.len())
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if payload.is::<CalledBack>() {
        CALLED_BACK.to_owned()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
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

    /// Opens a session.
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
    /// on it runs with this as [`Caller::principal`].
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

    /// A Snapshot of the current version, sharing the view's text with
    /// every other Snapshot of that version.
    fn snapshot_frame(
        &mut self,
        header: Arc<SharedHeader>,
        sync_id: u64,
        reason: SnapshotReason,
    ) -> HostFrame {
        let snapshot = Snapshot {
            version: self.version,
            state_json: String::new(),
            sync_id,
            reason: reason as i32,
        };
        let view = self.shared_view();
        HostFrame::snapshot(header, snapshot, view)
    }

    /// Answers a Call; `oversize` is its envelope's size when that is over
    /// the max message size.
    fn handle_call(
        &mut self,
        peer: PeerKey,
        header: &HeaderView<'_>,
        call: CallView<'_>,
        oversize: Option<usize>,
        args: Option<&Result<Vec<Value>, MethodError>>,
    ) -> Result<(), InputError> {
        let limit = self.config.limits.max_calls_in_flight;
        // Only results count: a queued sync answer is not a call in flight.
        let queued = self.peers.get(&peer).map_or(0, |p| p.direct_results);
        if queued >= limit.saturating_mul(2).max(1) {
            return Err(InputError::Flooding { queued });
        }
        // Like the in-flight limit: past the budget a call is refused
        // unrun; only a session that keeps calling past twice it is closed.
        let backlog = self.peers.get(&peer).map_or(0, |p| p.direct_bytes);
        let backlog_limit = self.backlog_limit();
        if backlog > backlog_limit.saturating_mul(2) {
            return Err(InputError::Backlog {
                bytes: backlog,
                limit: backlog_limit.saturating_mul(2),
            });
        }
        let outcome = if let Some(size) = oversize {
            // Before the other checks (H7): the envelope is not processed,
            // only answered, as §15 allows where the bytes arrive anyway.
            Err(MethodError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "the call's envelope is {size} bytes, over the {}-byte message limit; it was not run",
                    self.config.limits.max_message_bytes
                ),
            ))
        } else if header.protocol_version != PROTOCOL_VERSION {
            Err(MethodError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "protocol version {} is not supported; this host speaks {PROTOCOL_VERSION}",
                    header.protocol_version
                ),
            ))
        } else if call.call_id == 0 {
            Err(MethodError::invalid_argument("call_id must not be 0"))
        } else if !header.epoch.is_empty() && header.epoch != self.epoch {
            Err(MethodError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "the call was made against epoch {:?}; this host's epoch is {:?}",
                    Clipped(header.epoch),
                    self.epoch
                ),
            ))
        } else if queued >= limit {
            Err(MethodError::new(
                ErrorCode::ResourceExhausted,
                format!("more than {limit} calls in flight"),
            ))
        } else if backlog > backlog_limit {
            Err(MethodError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "{backlog} bytes of results are waiting to be sent to this client, more than {backlog_limit}"
                ),
            ))
        } else {
            // A value too large for one result envelope is refused before
            // the call commits, as a view too large for a snapshot is.
            let room = self.message_room(header.source.len());
            let max = self.config.limits.max_message_bytes;
            let mut json = None;
            let _caller = CallerScope::enter(self.peers.get(&peer).map(|p| Caller {
                // The session's shared copy, unless this envelope has no
                // source (then `reply_to` still names an earlier one).
                peer_id: if *p.reply_to == *header.source {
                    p.reply_to.clone()
                } else {
                    Arc::from(header.source)
                },
                principal: p.principal.clone(),
            }));
            let parsed;
            let args = match args {
                Some(args) => args,
                None => {
                    parsed = parse_args(call.args_json);
                    &parsed
                }
            };
            args.as_ref()
                .map_err(Clone::clone)
                .and_then(|args| {
                    self.run(call.module, call.method, args, |value| {
                        let text = value_json(value);
                        if text.len() > room {
                            return Err(MethodError::new(
                                ErrorCode::ResourceExhausted,
                                format!(
                                    "the method's value is {} bytes of JSON, too large for one result within the {}-byte message limit",
                                    text.len(),
                                    max
                                ),
                            ));
                        }
                        json = Some(text);
                        Ok(())
                    })
                })
                .map(|value| json.unwrap_or_else(|| value_json(&value)))
        };
        let result = CallResult {
            call_id: call.call_id,
            state_version: self.version,
            outcome: Some(match outcome {
                Ok(json) => call_result::Outcome::ValueJson(json),
                Err(error) => call_result::Outcome::Error(sendable(error).to_wire()),
            }),
        };
        let gate = result.state_version;
        if !self.peers.contains_key(&peer) {
            return Err(InputError::UnknownPeer);
        }
        let error = match &result.outcome {
            Some(call_result::Outcome::Error(e)) => {
                Some(ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal))
            }
            _ => None,
        };
        // One line per call at debug level (off by default: a level check).
        // What the client wrote is logged escaped (`?`): a newline in it must
        // not forge a line of its own. `session` is the transport's name for
        // the session (a gRPC client's address; on the bus, the id the client
        // claims, so it is escaped too), `peer` the id it claims.
        tracing::debug!(
            session = ?self.peers.get(&peer).map_or("", |p| p.options.peer_id.as_str()),
            peer = ?header.source,
            call_id = call.call_id,
            module = ?Clipped(call.module),
            method = ?Clipped(call.method),
            outcome = error.map_or("ok", ErrorCode::kebab_name),
            version = gate,
            "call answered"
        );
        self.stats.call_answered(error);
        if self.record_calls {
            let (session, principal) = self.peers.get(&peer).map_or_else(
                || (String::new(), None),
                |p| (p.options.peer_id.clone(), p.principal.clone()),
            );
            self.events.push_back(HostEvent::CallAnswered(CallRecord {
                session,
                principal,
                peer: header.source.to_owned(),
                call_id: call.call_id,
                module: cut(call.module, RECORDED_NAME),
                method: cut(call.method, RECORDED_NAME),
                error,
                version: gate,
            }));
        }
        let frame = HostFrame::with_header(
            self.addressed(peer, header.source),
            host_message::Kind::Result(result),
        );
        let bytes = frame.encoded_len();
        if let Some(p) = self.peers.get_mut(&peer) {
            p.direct.push_back(Direct::Result { gate, frame, bytes });
            p.direct_bytes += bytes;
            p.direct_results += 1;
        }
        if header.protocol_version != PROTOCOL_VERSION {
            return Err(InputError::UnsupportedVersion(header.protocol_version));
        }
        Ok(())
    }

    /// Runs a declared method as one atomic commit and returns its value.
    ///
    /// This is the path remote calls take; the host application may also use
    /// it directly. A failed or panicking method commits nothing. A change
    /// to a published module advances the version by exactly one and is
    /// published; a change confined to private modules publishes nothing.
    pub fn invoke(
        &mut self,
        module: &str,
        method: &str,
        args: &[Value],
    ) -> Result<Value, MethodError> {
        self.last_run = None;
        // Run by the host itself, even from inside another host's method.
        let _caller = CallerScope::enter(None);
        self.run(module, method, args, |_| Ok(()))
    }

    /// [`HostCore::invoke`], with `accept` judging the method's value before
    /// anything commits: an error from it reverts the call (a module that
    /// cannot revert keeps its change, and the error says so).
    fn run(
        &mut self,
        module: &str,
        method: &str,
        args: &[Value],
        accept: impl FnOnce(&Value) -> Result<(), MethodError>,
    ) -> Result<Value, MethodError> {
        let Some(&i) = self.index.get(module) else {
            return Err(MethodError::not_found(format!(
                "no module {:?}",
                Clipped(module)
            )));
        };
        if !self.modules[i].declares(method) {
            return Err(MethodError::not_found(format!(
                "module {:?} declares no method {:?}",
                Clipped(module),
                Clipped(method)
            )));
        }
        if self.method_timing {
            self.last_run = self.method_times.find(self.id, i, method);
        }
        let room = self.growth_room(i);
        let target = &mut self.modules[i];
        target.limit_growth(room);
        let invocation = match catch_unwind(AssertUnwindSafe(|| {
            let _running = InMethod::enter(self.id);
            target.invoke(method, args)
        })) {
            Ok(result) => result?,
            Err(payload) => {
                target.rollback();
                let message = panic_message(payload.as_ref());
                self.stats.method_panics += 1;
                self.events.push_back(HostEvent::MethodPanicked {
                    module: module.to_owned(),
                    method: method.to_owned(),
                    message: message.clone(),
                });
                // The panic's own message may quote what the method held
                // (a token, a user's data): the caller learns only that it
                // panicked; the message goes to the events and the log. A
                // method calling back into its host is the library's own
                // message, and says what to fix.
                return Err(MethodError::internal(if payload.is::<CalledBack>() {
                    format!("method {module}.{method} panicked: {message}")
                } else {
                    format!(
                        "method {module}.{method} panicked (its message is in the host's events)"
                    )
                }));
            }
        };
        // A view nested deeper than clients mirror is one no client could
        // sync to, so such a call is refused like one `accept` refuses.
        let refused = accept(&invocation.value).err().or_else(|| {
            let deep = self.published[i]
                .then(|| too_deep(&invocation.ops, self.modules[i].state()))
                .flatten()?;
            Some(MethodError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "the call would nest the published view {deep} levels deep, deeper than the {MAX_VIEW_DEPTH} every client can mirror; nothing was committed"
                ),
            ))
        });
        let ops = (!invocation.ops.is_empty() && self.published[i])
            .then(|| ops_json(&self.prefixes[i], &invocation.ops));
        if let Some(mut error) = refused {
            if self.modules[i].settle(false) {
                return Err(error);
            }
            error
                .message
                .push_str("; the module could not revert the call, so its change was committed");
            if let Some(ops) = ops {
                self.view_bound = ViewBound {
                    size: self.published_view_len(),
                    exact: true,
                };
                let ops = self.publishable(i, ops);
                self.commit(ops);
            }
            return Err(error);
        }
        match &ops {
            Some(text) => self.admit(i, growth_bound(&invocation.ops, text.len()))?,
            None => {
                // No operation, yet the text may have changed: equal values
                // written apart (0.0 and -0.0) give a typed module's diff
                // nothing to publish. Counted, or the exact length drifts.
                if self.published[i]
                    && let Some(change) = self.modules[i].size_change()
                {
                    self.view_bound.size =
                        self.view_bound.size.saturating_add_signed(clamp(change));
                }
                self.modules[i].settle(true);
            }
        }
        let ops = ops.map(|ops| self.publishable(i, ops));
        if let Some(ops) = ops {
            self.commit(ops);
        }
        Ok(invocation.value)
    }

    /// Settles the call just run on module `i`, which may grow the view by
    /// `growth` bytes (`None`: unknown): kept if the view stays small enough
    /// to send as one snapshot or the call does not make it larger;
    /// otherwise reverted and refused (spec §15), unless the module cannot
    /// revert, when it is kept.
    ///
    /// While the view's length is known exactly and the module reports its
    /// call's exact size change (both built-in kinds do), the length stays
    /// exact at O(1) per call, so refusing a call never measures the view.
    /// Otherwise the host keeps an upper bound and measures the view
    /// (O(state)) only when that bound reaches the limit, after which the
    /// length is exact again.
    fn admit(&mut self, i: usize, growth: Option<usize>) -> Result<(), MethodError> {
        let max = self.config.limits.max_message_bytes;
        let limit = self.view_limit();
        let before = self.view_bound;
        let change = self.modules[i].size_change().map(clamp);
        if let (true, Some(change)) = (before.exact, change) {
            let after = before.size.saturating_add_signed(change);
            return self.settle_sized(i, before, after, limit, max);
        }
        if let Some(growth) = growth {
            let bound = before.size.saturating_add(growth);
            if bound <= limit {
                self.view_bound = ViewBound {
                    size: bound,
                    exact: false,
                };
                self.modules[i].settle(true);
                return Ok(());
            }
        }
        let after = self.published_view_len();
        // With the call's change known, the measurement also gives the
        // length before it exactly, which a refusal leaves the view at: the
        // next call then needs no measurement.
        let before = match change {
            Some(change) => ViewBound {
                size: after.saturating_add_signed(change.saturating_neg()),
                exact: true,
            },
            None => before,
        };
        self.settle_sized(i, before, after, limit, max)
    }

    /// Settles the call just run on module `i`, which takes the view's
    /// length from `before` to exactly `after`: refused (and reverted, if
    /// the module can) when that is over `limit` and larger than before.
    fn settle_sized(
        &mut self,
        i: usize,
        before: ViewBound,
        after: usize,
        limit: usize,
        max: usize,
    ) -> Result<(), MethodError> {
        // An inexact bound is only ever kept within the limit, so the view
        // before this call fitted; an exact one (the view is over the limit
        // already) says whether this call makes it larger. A call that does
        // not make the view larger is never refused.
        let grows_past = after > limit && (!before.exact || after > before.size);
        if grows_past && self.modules[i].settle(false) {
            self.view_bound = before;
            return Err(MethodError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "the call would make the published view {after} bytes of JSON, too large to send as one snapshot within the {max}-byte message limit; nothing was committed"
                ),
            ));
        }
        if !grows_past {
            self.modules[i].settle(true);
        }
        self.view_bound = ViewBound {
            size: after,
            exact: true,
        };
        Ok(())
    }

    /// The longest view JSON that still fits one snapshot (spec §15).
    fn view_limit(&self) -> usize {
        self.config
            .limits
            .max_message_bytes
            .saturating_sub(snapshot_overhead(
                &self.epoch,
                &self.config.peer_id,
                &self.config.capability,
            ))
    }

    /// How far a call on module `i` may grow the view's text before its
    /// work is cut short (`Module::limit_growth`): the room the view has
    /// left, plus some slack so that a call may pass through a larger view
    /// on its way to one that fits, or that is no larger than before (a
    /// call that does not grow the view is never refused). `None` for a
    /// private section, or while the view's length is only bounded.
    fn growth_room(&self, i: usize) -> Option<usize> {
        const SLACK: usize = 64 * 1024;
        (self.published[i] && self.view_bound.exact).then(|| {
            self.view_limit()
                .saturating_sub(self.view_bound.size)
                .saturating_add(SLACK)
        })
    }

    /// The patch text to publish for module `i`'s change `ops`: as recorded,
    /// unless it is large and one `replace` of the whole section is shorter.
    /// A diff can be far larger than the value it produces (removing an
    /// array's first element rewrites every later index), and a patch must
    /// fit one message like the snapshot it stands for.
    fn publishable(&self, i: usize, ops: String) -> String {
        const LARGE: usize = 64 * 1024;
        if ops.len() <= LARGE {
            return ops;
        }
        let Ok(section) = serde_json::to_string(self.modules[i].state()) else {
            return ops;
        };
        let whole = format!(
            "[{{\"op\":\"replace\",\"path\":{}\",\"value\":{section}}}]",
            self.prefixes[i]
        );
        if whole.len() < ops.len() { whole } else { ops }
    }

    /// The most bytes of JSON one envelope to a peer whose id is
    /// `target_len` bytes long can carry within the message limit.
    fn message_room(&self, target_len: usize) -> usize {
        self.view_limit().saturating_sub(target_len)
    }

    /// The most encoded bytes of unread results kept for one session.
    fn backlog_limit(&self) -> usize {
        self.config
            .limits
            .max_message_bytes
            .saturating_mul(BACKLOG_MESSAGES)
    }

    /// The published view's JSON length, measured: O(state).
    fn published_view_len(&self) -> usize {
        view_len(
            self.modules
                .iter()
                .zip(&self.published)
                .filter(|(_, published)| **published)
                .map(|(m, _)| (m.name(), m.state())),
        )
    }

    /// Publishes a new version made by `ops`, a JSON array of operations.
    fn commit(&mut self, ops: String) {
        self.version += 1;
        let version = self.version;
        let entry = match self.config.sync {
            // The frame's patch is the entry's operations: stored once.
            SyncMode::Patch => Entry::published(
                version,
                HostFrame::with_header(
                    self.broadcast_header.clone(),
                    host_message::Kind::Patch(Patch {
                        base_version: version - 1,
                        version,
                        patch_json: ops,
                        sync_id: 0,
                    }),
                ),
            ),
            SyncMode::Snapshot => {
                self.live_snapshot = None;
                Entry::ops_only(version, ops)
            }
        };
        self.history.push(entry);
        self.events.push_back(HostEvent::Published { version });
    }

    fn handle_sync(&mut self, peer: PeerKey, header: &HeaderView<'_>, request: &SyncRequest) {
        self.stats.sync_requests += 1;
        if !self.peers.contains_key(&peer) {
            return;
        }
        // Judged now, as H2 says: a version above the current one asks for a
        // Snapshot even if the host reaches it before the reply is sent.
        let resumable = header.epoch == self.epoch
            && request.have_version > 0
            && request.have_version <= self.version;
        let have_version = if resumable { request.have_version } else { 0 };
        let reply_only = self
            .peers
            .get(&peer)
            .is_some_and(|p| !p.options.publications);
        let reply = if reply_only {
            Direct::Built(self.sync_reply(peer, header.source, request.sync_id, have_version))
        } else {
            Direct::Sync {
                target: header.source.to_owned(),
                sync_id: request.sync_id,
                have_version,
            }
        };
        let version = self.version;
        if let Some(p) = self.peers.get_mut(&peer) {
            // The answer covers every version up to the one it is sent at, so
            // it must go ahead of any queued result naming a version the
            // session has not been sent (H8), and no later than an unsent
            // older answer, which it supersedes and whose place it takes.
            let sent = p.cursor;
            let at = p
                .direct
                .iter()
                .position(|d| match d {
                    Direct::Sync { .. } | Direct::Built(_) => true,
                    Direct::Result { gate, .. } => *gate > sent,
                })
                .unwrap_or(p.direct.len());
            p.direct.retain(|d| matches!(d, Direct::Result { .. }));
            p.direct.insert(at, reply);
            p.attached = true;
            p.cursor = version;
            p.bookmark_due = false;
        }
    }

    /// The answer to a SyncRequest, at the current version (H2): a resume
    /// Patch from `have_version` if it is not 0, every version since is in
    /// the history window and the Patch fits one message; else a Snapshot.
    fn sync_reply(
        &mut self,
        peer: PeerKey,
        target: &str,
        sync_id: u64,
        have_version: u64,
    ) -> HostFrame {
        // A resume Patch larger than one message would end the session it
        // is for, and the next resume would too: a Snapshot always fits (§15).
        let ops = (have_version > 0)
            .then(|| {
                let room = self.message_room(target.len());
                self.history.ops_between(have_version, self.version, room)
            })
            .flatten();
        match ops {
            Some(ops) => {
                let patch = Patch {
                    base_version: have_version,
                    version: self.version,
                    patch_json: format!("[{ops}]"),
                    sync_id,
                };
                HostFrame::with_header(
                    self.addressed(peer, target),
                    host_message::Kind::Patch(patch),
                )
            }
            None => {
                let header = self.addressed(peer, target);
                self.snapshot_frame(header, sync_id, SnapshotReason::Sync)
            }
        }
    }

    /// Asks every session that is idle at the current version to be sent a
    /// bookmark (an empty patch at the current version), so that a client
    /// that lost the last publication finds out. Call on an idle interval.
    pub fn bookmark(&mut self) {
        for peer in self.peers.values_mut() {
            if peer.attached && peer.options.publications {
                peer.bookmark_due = true;
            }
        }
        self.events.push_back(HostEvent::Bookmarked {
            version: self.version,
        });
    }

    fn bookmark_frame(&mut self) -> HostFrame {
        if let Some((v, frame)) = &self.bookmark
            && *v == self.version
        {
            return frame.clone();
        }
        let frame = HostFrame::with_header(
            self.broadcast_header.clone(),
            host_message::Kind::Patch(Patch {
                base_version: self.version,
                version: self.version,
                patch_json: "[]".to_owned(),
                sync_id: 0,
            }),
        );
        self.bookmark = Some((self.version, frame.clone()));
        frame
    }

    fn live_snapshot_frame(&mut self) -> HostFrame {
        if let Some(frame) = &self.live_snapshot {
            return frame.clone();
        }
        let frame = self.snapshot_frame(self.broadcast_header.clone(), 0, SnapshotReason::Commit);
        self.live_snapshot = Some(frame.clone());
        frame
    }

    /// Whether results or a sync reply are queued for the session: what it
    /// is still owed once its client has stopped sending (H8).
    pub fn has_answers(&self, peer: PeerKey) -> bool {
        self.peers.get(&peer).is_some_and(|p| !p.direct.is_empty())
    }

    /// The next envelope to send on a session, if any.
    pub fn poll_transmit(&mut self, peer: PeerKey) -> Option<HostFrame> {
        let frame = self.next_frame(peer)?;
        // Periodic bookmarks are the one cached frame; a sync reply at the
        // current version looks the same on the wire but is a reply.
        let bookmark = self
            .bookmark
            .as_ref()
            .is_some_and(|(_, b)| HostFrame::ptr_eq(b, &frame));
        self.stats.sent(frame.kind_without_state(), bookmark);
        Some(frame)
    }

    /// What [`HostCore::poll_transmit`] hands out next, uncounted.
    fn next_frame(&mut self, peer: PeerKey) -> Option<HostFrame> {
        let version = self.version;
        let mode = self.config.sync;
        let p = self.peers.get_mut(&peer)?;
        let live = p.attached && p.options.publications;
        let ready = match p.direct.front() {
            Some(Direct::Sync { .. } | Direct::Built(_)) => true,
            Some(Direct::Result { gate, .. }) => !live || *gate <= p.cursor,
            None => false,
        };
        if ready {
            match p.direct.pop_front()? {
                Direct::Result { frame, bytes, .. } => {
                    p.direct_bytes = p.direct_bytes.saturating_sub(bytes);
                    p.direct_results = p.direct_results.saturating_sub(1);
                    return Some(frame);
                }
                Direct::Built(frame) => return Some(frame),
                Direct::Sync {
                    target,
                    sync_id,
                    have_version,
                } => {
                    // Nothing was sent to the session since the request was
                    // handled (this reply was ahead of every publication), so
                    // it may cover the versions committed meanwhile too.
                    p.cursor = version;
                    return Some(self.sync_reply(peer, &target, sync_id, have_version));
                }
            }
        }
        if live && p.cursor < version {
            let next = p.cursor + 1;
            p.bookmark_due = false;
            if mode == SyncMode::Patch {
                if let Some(frame) = self.history.get(next).and_then(|e| e.frame.clone()) {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.cursor = next;
                    }
                    return Some(frame);
                }
                let target = p.reply_to.clone();
                p.cursor = version;
                let header = self.addressed(peer, &target);
                return Some(self.snapshot_frame(header, 0, SnapshotReason::Overflow));
            }
            p.cursor = version;
            return Some(self.live_snapshot_frame());
        }
        if live && p.bookmark_due {
            p.bookmark_due = false;
            return Some(self.bookmark_frame());
        }
        None
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

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }
}

/// The error as a host may send it: a method may choose only the host codes
/// 1-8 (spec §14); `unspecified` and the codes clients produce about their
/// own calls never travel from a host (H9), so they become `internal`.
fn sendable(mut error: MethodError) -> MethodError {
    use ErrorCode::*;
    if error.message.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !error.message.is_char_boundary(end) {
            end -= 1;
        }
        error.message.truncate(end);
        error.message.push_str("… (truncated)");
    }
    if let Some(details) = &error.details {
        let len = serde_json::to_string(details).map_or(usize::MAX, |t| t.len());
        if len > MAX_ERROR_DETAILS {
            error.details = None;
            error
                .message
                .push_str(&format!(" (details of {len} bytes dropped)"));
        }
    }
    match error.code {
        NotFound | InvalidArgument | Failed | Unavailable | PermissionDenied
        | ResourceExhausted | Internal | FailedPrecondition => error,
        Unspecified | DeadlineExceeded | Cancelled | Disposed | OutcomeUnknown => {
            let details = error.details.clone();
            let mut internal = MethodError::internal(format!(
                "the method failed with {}, a code hosts do not send: {}",
                error.code.kebab_name(),
                error.message
            ));
            internal.details = details;
            internal
        }
    }
}

/// A value as JSON text: serialised straight into a buffer rather than
/// through `Display`'s formatter.
fn value_json(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::{Clipped, ENVELOPE_OVERHEAD, size_near_limit};
    use crate::wire::{Call, ClientMessage, Header, SyncRequest, client_message};
    use proptest::prelude::*;
    use prost::Message;

    proptest! {
        /// The cheap bound never lets an envelope over the limit through,
        /// and is exact whenever it measures.
        #[test]
        fn size_near_limit_never_misses_an_envelope_over_the_limit(
            message in crate::wire::view::tests::client_message(),
            limit in 0usize..400,
        ) {
            let exact = message.encoded_len();
            match size_near_limit(&message, limit) {
                Some(size) => prop_assert_eq!(size, exact),
                None => prop_assert!(exact <= limit, "{} > {}", exact, limit),
            }
        }
    }

    #[test]
    fn the_overhead_covers_the_largest_fixed_fields() {
        let max = ClientMessage {
            header: Some(Header {
                protocol_version: u32::MAX,
                ..Header::default()
            }),
            kind: Some(client_message::Kind::SyncRequest(SyncRequest {
                sync_id: u64::MAX,
                have_version: u64::MAX,
                reason: -1,
            })),
        };
        assert!(
            max.encoded_len() <= ENVELOPE_OVERHEAD,
            "{}",
            max.encoded_len()
        );
        let call = ClientMessage {
            header: Some(Header {
                protocol_version: u32::MAX,
                ..Header::default()
            }),
            kind: Some(client_message::Kind::Call(Call {
                call_id: u64::MAX,
                ..Call::default()
            })),
        };
        assert!(
            call.encoded_len() <= ENVELOPE_OVERHEAD,
            "{}",
            call.encoded_len()
        );
    }

    #[test]
    fn clipped_names_are_escaped_and_cut_at_a_character_boundary() {
        assert_eq!(format!("{:?}", Clipped("a\nb")), "\"a\\nb\"");
        // 127 bytes, then a two-byte character across the cut.
        let long = format!("{}é", "x".repeat(127));
        let shown = format!("{:?}", Clipped(&long));
        assert_eq!(shown, format!("\"{}\"… (129 bytes)", "x".repeat(127)));
    }
}
