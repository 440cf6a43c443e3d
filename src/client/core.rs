//! The client protocol state machine, with no I/O, no clock and no runtime.
//!
//! Inputs: [`ClientCore::handle_message`], [`ClientCore::call`],
//! [`ClientCore::cancel`], [`ClientCore::handle_timeout`],
//! [`ClientCore::connection_lost`], [`ClientCore::reconnected`],
//! [`ClientCore::dispose`]. After any input, drain
//! [`ClientCore::poll_transmit`] (send each message to the host) and
//! [`ClientCore::poll_event`], then arm a timer for
//! [`ClientCore::poll_timeout`]. Time is whatever `Instant` the driver
//! passes in; the core never reads a clock.
//!
//! The rules implemented here are the client table of spec/PROTOCOL.md.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::Value;

use super::apply::{ReadPatch, apply_read_shifting};
use super::read_ahead::{ReadAhead, Released};
use super::shift_credit::ShiftCredit;
use crate::app::MethodError;
use crate::wire::view::{
    HeaderView, HostKindView, HostView, OutcomeView, PatchView, ResultView, SnapshotView, ViewError,
};
use crate::wire::{
    Call, ClientMessage, ErrorCode, Header, HostMessage, PROTOCOL_VERSION, SnapshotReason,
    SyncReason, SyncRequest, client_message,
};

/// The longest host epoch a client takes, in bytes (spec E2, K2a): a
/// client copies the epoch into every call and sync request it sends, so an
/// envelope with a longer one is ignored as malformed.
pub const MAX_EPOCH: usize = 1024;

/// Client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// This client's peer id (`source` of what it sends). On a shared channel
    /// it must be unique among the channel's peers.
    pub peer_id: String,
    /// The host's peer id. When non-empty, envelopes from any other source
    /// are ignored and calls are addressed to it.
    pub host_id: String,
    /// Capability token; when non-empty, envelopes carrying another are
    /// ignored, and it is written on everything this client sends.
    pub capability: String,
    /// Calls that may be pending at once; more fail `resource-exhausted`
    /// locally without being sent.
    pub max_calls_in_flight: usize,
    /// How long a sync request may go unanswered before it is sent again.
    pub sync_retry: Duration,
    /// Largest encoded call envelope sent; a larger call fails
    /// `resource-exhausted` locally instead of breaking the transport.
    pub max_message_bytes: usize,
    /// How long a link may carry nothing from the host before the client
    /// takes it as lost (spec L10); `None`, the default, never. Set it only
    /// for a host that sends bookmarks (H10), to a few times its bookmark
    /// interval: a host without bookmarks may stay silent for as long as
    /// nothing changes. With the reference host's 5 s interval, 15 s
    /// suits. Point-to-point transports notice a vanished host themselves
    /// (gRPC keepalive, TCP keepalive, a closed channel); a shared channel
    /// cannot, so this is how a bus client does.
    pub host_silence: Option<Duration>,
    /// The timeout of a call made through a [`Client`](super::Client)
    /// without one of its own
    /// ([`CallOptions::timeout`](super::CallOptions::timeout)): it settles
    /// `deadline-exceeded` this long after it started if it has not
    /// settled. `None`, the default: such a call waits as long as it takes,
    /// across reconnects. The sans-IO core does not read it: its caller
    /// passes each call's deadline to [`ClientCore::call`].
    pub call_timeout: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            peer_id: "client".to_owned(),
            host_id: String::new(),
            capability: String::new(),
            max_calls_in_flight: 1024,
            sync_retry: Duration::from_secs(2),
            max_message_bytes: 4 * 1024 * 1024,
            host_silence: None,
            call_timeout: None,
        }
    }
}

/// Identifies one call made through a [`ClientCore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// The seed's four sync anomalies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConflictReason {
    /// A message older than the mirror arrived; it was ignored.
    StaleMessage,
    /// A patch arrived with no snapshot of its epoch to apply it to.
    MissingSnapshot,
    /// A patch did not start at the mirror's version: something was lost.
    VersionGap,
    /// A patch could not be applied; the mirror kept its last good state.
    PatchApplyFailed,
}

impl ConflictReason {
    /// The kebab-case name used by the spec and the test vectors.
    pub fn kebab_name(self) -> &'static str {
        match self {
            Self::StaleMessage => "stale-message",
            Self::MissingSnapshot => "missing-snapshot",
            Self::VersionGap => "version-gap",
            Self::PatchApplyFailed => "patch-apply-failed",
        }
    }
}

/// A sync anomaly the client detected (and, except for stale messages,
/// started healing with a sync request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// What happened.
    pub reason: ConflictReason,
    /// The mirror's version when it happened, if there was a mirror.
    pub current_version: Option<u64>,
    /// The version the incoming message carried.
    pub incoming_version: u64,
    /// Details, for logs.
    pub detail: String,
}

/// Something noteworthy that is not a sync conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// A result named a call this client is not waiting for (unknown,
    /// already settled, or a duplicate); it was ignored.
    UnexpectedResult {
        /// The result's call id.
        call_id: u64,
    },
    /// An envelope could not be understood and was ignored.
    Malformed {
        /// Why.
        reason: String,
    },
    /// The host coalesced publications this client was too slow to take
    /// into one snapshot.
    Overflow {
        /// The snapshot's version.
        version: u64,
    },
    /// The channel dropped envelopes that may have been meant for this
    /// client (a shared channel's receiver fell behind, spec SC12).
    EnvelopesLost {
        /// How many, as the channel counted them.
        count: u64,
    },
    /// The current link carried nothing from the host for the configured
    /// [`ClientConfig::host_silence`] (spec L10); the client took it as lost.
    HostSilent {
        /// The configured silence.
        silence: Duration,
    },
}

/// Everything a [`ClientCore`] reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The first snapshot arrived: the mirror exists.
    Ready {
        /// Its epoch.
        epoch: String,
        /// Its version.
        version: u64,
    },
    /// The mirror changed (a snapshot or a non-empty patch was applied).
    StateChanged {
        /// The mirror's new version.
        version: u64,
    },
    /// A snapshot of a new host epoch replaced the mirror.
    EpochChanged {
        /// The epoch before.
        old: String,
        /// The new epoch.
        new: String,
    },
    /// A sync anomaly.
    Conflict(Conflict),
    /// Something ignored or noteworthy.
    Notice(Notice),
    /// A call reached its one outcome.
    Settled {
        /// The call.
        call: CallId,
        /// The value, or why there is none.
        outcome: Result<Value, MethodError>,
        /// The state version the result observed, when the host answered.
        state_version: Option<u64>,
    },
}

/// Why a client input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client was disposed.
    #[error("the client is disposed")]
    Disposed,
    /// Too many calls pending.
    #[error("more than {limit} calls in flight")]
    TooManyCalls {
        /// The configured maximum.
        limit: usize,
    },
    /// The arguments could not be serialised as a JSON array.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The call's envelope would exceed the largest message a peer must
    /// accept; it was not sent (a transport would have had to drop it).
    #[error("the call's envelope is {size} bytes; the limit is {limit}")]
    CallTooLarge {
        /// The encoded size.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
}

impl From<ClientError> for MethodError {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Disposed => ErrorCode::Disposed,
            ClientError::TooManyCalls { .. } => ErrorCode::ResourceExhausted,
            ClientError::InvalidArguments(_) => ErrorCode::InvalidArgument,
            ClientError::CallTooLarge { .. } => ErrorCode::ResourceExhausted,
        };
        MethodError::new(code, e.to_string())
    }
}

#[derive(Debug)]
struct Mirror {
    /// Shared with the calls made against it, which keep their epoch.
    epoch: Arc<str>,
    version: u64,
    state: Value,
}

#[derive(Debug)]
struct Held {
    /// Arrival order among results: held results settle in this order.
    arrival: u64,
    /// The first sync id requested after the result arrived: a reply to it
    /// or a later request must reach `state_version` (Q2).
    sync_after: u64,
    state_version: u64,
    /// The value as the host wrote it, parsed only when the call settles:
    /// a parsed value takes up to ~100× its text, and a host can keep a
    /// result held for as long as it keeps the mirror behind it.
    outcome: Result<String, MethodError>,
}

/// The calls whose result is held (an entry for each pending call with a
/// held result, and no other), ordered two ways so that no message
/// walks them all (a host can keep `max_calls_in_flight` of them held):
/// by the version they name, so that what a mirror update reaches is a range
/// and whether any is still ahead is the last entry; and by arrival, so that
/// what a sync reply refutes is a prefix (see `refute_unreachable`).
///
/// With a mirror, every held result is of its epoch: a result of another
/// epoch settles at once (`on_result`), and a snapshot of a new epoch settles
/// the calls of the old one before anything looks here (`on_snapshot`).
/// Results of several epochs are held together only while there is no
/// mirror, when nothing here runs. The epoch checks on these entries
/// therefore never skip one, and no walk goes past what it settles.
#[derive(Debug, Default)]
struct HeldIndex {
    /// (named state version, arrival, call id).
    by_version: BTreeSet<(u64, u64, u64)>,
    /// Arrival to call id.
    by_arrival: BTreeMap<u64, u64>,
}

impl HeldIndex {
    fn insert(&mut self, call_id: u64, held: &Held) {
        self.by_version
            .insert((held.state_version, held.arrival, call_id));
        self.by_arrival.insert(held.arrival, call_id);
    }

    fn remove(&mut self, call_id: u64, held: &Held) {
        self.by_version
            .remove(&(held.state_version, held.arrival, call_id));
        self.by_arrival.remove(&held.arrival);
    }
}

#[derive(Debug)]
struct Pending {
    /// The epoch the call was made against; `None` until the client knows one.
    epoch: Option<Arc<str>>,
    deadline: Option<Instant>,
    /// The call has left through `poll_transmit`.
    transmitted: bool,
    /// The host's answer, waiting for the mirror to catch up.
    held: Option<Held>,
}

#[derive(Debug)]
struct OutstandingSync {
    sync_id: u64,
    have_version: u64,
    deadline: Instant,
}

/// The client protocol state machine. See the module docs for the call order.
#[derive(Debug)]
pub struct ClientCore {
    config: ClientConfig,
    mirror: Option<Mirror>,
    pending: BTreeMap<u64, Pending>,
    /// The calls whose result is held: what a mirror update may settle,
    /// without walking every pending call.
    held: HeldIndex,
    next_call: u64,
    next_sync: u64,
    results_held: u64,
    sync: Option<OutstandingSync>,
    outbox: VecDeque<ClientMessage>,
    events: VecDeque<ClientEvent>,
    disposed: bool,
    /// Between `connection_lost` and `reconnected` nothing may be sent.
    connected: bool,
    /// When the current link last delivered an envelope from the host;
    /// `None` until its first one. L10 counts silence from here, so a link
    /// the host never spoke on (no host yet on a bus) is never called silent:
    /// L5 keeps asking on it instead.
    heard_at: Option<Instant>,
    /// L10 fired on the current link; cleared by `reconnected`.
    host_silent: bool,
    /// How many array elements patches may still shift (spec §15).
    shift_credit: ShiftCredit,
}

impl ClientCore {
    /// A client with no mirror that has queued its initial sync request.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let mut core = Self {
            config,
            mirror: None,
            pending: BTreeMap::new(),
            held: HeldIndex::default(),
            next_call: 1,
            next_sync: 1,
            results_held: 0,
            sync: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            disposed: false,
            connected: true,
            heard_at: None,
            host_silent: false,
            shift_credit: ShiftCredit::new(),
        };
        core.request_sync(now, 0, SyncReason::Initial);
        core
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The mirrored published view, once the first snapshot has arrived.
    pub fn state(&self) -> Option<&Value> {
        self.mirror.as_ref().map(|m| &m.state)
    }

    /// The mirror's version (`None` before the first snapshot).
    pub fn version(&self) -> Option<u64> {
        self.mirror.as_ref().map(|m| m.version)
    }

    /// The epoch of the host the mirror follows.
    pub fn epoch(&self) -> Option<&str> {
        self.mirror.as_ref().map(|m| &*m.epoch)
    }

    /// Whether the first snapshot has arrived.
    pub fn is_ready(&self) -> bool {
        self.mirror.is_some()
    }

    /// Whether a sync request is waiting for its answer.
    pub fn is_syncing(&self) -> bool {
        self.sync.is_some()
    }

    /// Whether [`ClientCore::dispose`] was called.
    pub fn is_disposed(&self) -> bool {
        self.disposed
    }

    /// How many calls have not settled.
    pub fn pending_calls(&self) -> usize {
        self.pending.len()
    }

    fn header(&self) -> Header {
        Header {
            protocol_version: PROTOCOL_VERSION,
            epoch: self
                .mirror
                .as_ref()
                .map(|m| m.epoch.to_string())
                .unwrap_or_default(),
            source: self.config.peer_id.clone(),
            target: self.config.host_id.clone(),
            capability: self.config.capability.clone(),
        }
    }

    /// Starts a call of `module.method` with positional `args`.
    ///
    /// Every call whose id is returned settles exactly once, through a
    /// [`ClientEvent::Settled`]. `deadline`, if any, is enforced by
    /// [`ClientCore::handle_timeout`].
    pub fn call(
        &mut self,
        module: &str,
        method: &str,
        args: &[Value],
        deadline: Option<Instant>,
    ) -> Result<CallId, ClientError> {
        let args_json = serde_json::to_string(args)
            .map_err(|e| ClientError::InvalidArguments(e.to_string()))?;
        self.call_json(module, method, args_json, deadline)
    }

    /// Like [`ClientCore::call`], with the arguments already encoded as a
    /// JSON array.
    pub fn call_json(
        &mut self,
        module: &str,
        method: &str,
        args_json: String,
        deadline: Option<Instant>,
    ) -> Result<CallId, ClientError> {
        if self.disposed {
            return Err(ClientError::Disposed);
        }
        if self.pending.len() >= self.config.max_calls_in_flight {
            return Err(ClientError::TooManyCalls {
                limit: self.config.max_calls_in_flight,
            });
        }
        let call_id = self.next_call;
        let message = ClientMessage {
            header: Some(self.header()),
            kind: Some(client_message::Kind::Call(Call {
                call_id,
                module: module.to_owned(),
                method: method.to_owned(),
                args_json,
            })),
        };
        let size = message.encoded_len();
        if size > self.config.max_message_bytes {
            return Err(ClientError::CallTooLarge {
                size,
                limit: self.config.max_message_bytes,
            });
        }
        self.next_call += 1;
        self.pending.insert(
            call_id,
            Pending {
                epoch: self.mirror.as_ref().map(|m| m.epoch.clone()),
                deadline,
                transmitted: false,
                held: None,
            },
        );
        self.outbox.push_back(message);
        Ok(CallId(call_id))
    }

    /// Cancels a pending call: it settles `cancelled` now. The host may still
    /// run it; its result will then be ignored. Returns whether it was pending.
    pub fn cancel(&mut self, call: CallId) -> bool {
        self.settle_local(call.0, ErrorCode::Cancelled, "the call was cancelled")
    }

    fn settle_local(&mut self, call_id: u64, code: ErrorCode, message: &str) -> bool {
        let Some(pending) = self.pending.remove(&call_id) else {
            return false;
        };
        if let Some(held) = &pending.held {
            self.held.remove(call_id, held);
        }
        if !pending.transmitted {
            // Never sent, so never run: drop it rather than send it.
            self.withdraw(call_id);
        }
        self.events.push_back(ClientEvent::Settled {
            call: CallId(call_id),
            outcome: Err(MethodError::new(code, message)),
            state_version: None,
        });
        true
    }

    /// Removes a settled call that was never sent from the outbox: a settled
    /// call must not be sent afterwards.
    fn withdraw(&mut self, call_id: u64) {
        withdraw(&mut self.outbox, call_id);
    }

    /// Settles every pending call `disposed`, drops the outbox and ignores
    /// every later input.
    pub fn dispose(&mut self) {
        if self.disposed {
            return;
        }
        self.disposed = true;
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            self.settle_local(id, ErrorCode::Disposed, "the client was disposed");
        }
        self.outbox.clear();
        self.sync = None;
    }

    /// The transport broke. Calls already transmitted and unanswered settle
    /// `outcome-unknown` (they may or may not have run, and are never
    /// retried); calls not yet transmitted stay queued; results already in
    /// hand keep waiting for the mirror.
    ///
    /// A loss reported while already disconnected (again, or after host
    /// silence took the link down) changes nothing.
    pub fn connection_lost(&mut self) {
        if self.connected {
            self.lose_link("the connection broke while the call was in flight");
        }
    }

    /// L6, settling the calls the link took down with `why`.
    fn lose_link(&mut self, why: &str) {
        self.connected = false;
        self.heard_at = None;
        self.settle_unanswered(why);
        self.outbox
            .retain(|m| matches!(m.kind, Some(client_message::Kind::Call(_))));
        self.sync = None;
    }

    /// The channel reports that it dropped `count` envelopes that may have
    /// been meant for this client, the link itself still being up (shared
    /// channels, spec SC12 and row L9).
    ///
    /// Calls transmitted and still without a result settle `outcome-unknown`
    /// at once, since their results may have been among the lost (they are
    /// never retried); results already in hand keep waiting for the mirror.
    /// The mirror asks to resume from its version now rather than at the
    /// next publication or bookmark, unless a sync request is outstanding
    /// (if its answer was lost, L5 repeats it).
    pub fn envelopes_lost(&mut self, now: Instant, count: u64) {
        if self.disposed {
            return;
        }
        self.notice(Notice::EnvelopesLost { count });
        self.settle_unanswered(
            "the channel lost envelopes while the call was in flight; its result may have been among them",
        );
        if self.connected
            && let Some(have) = self.version()
        {
            self.heal(now, have, SyncReason::VersionGap);
        }
    }

    /// Settles `outcome-unknown` every call transmitted and still without a
    /// result: it may or may not have run, and is never retried (CL2).
    fn settle_unanswered(&mut self, why: &str) {
        let unanswered: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.transmitted && p.held.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in unanswered {
            self.settle_local(id, ErrorCode::OutcomeUnknown, why);
        }
    }

    /// The transport is back: ask to resume from the mirror's version.
    pub fn reconnected(&mut self, now: Instant) {
        self.connected = true;
        self.heard_at = None;
        self.host_silent = false;
        if self.disposed {
            return;
        }
        let have = self.version().unwrap_or(0);
        self.sync = None;
        self.request_sync(now, have, SyncReason::Reconnect);
    }

    fn request_sync(&mut self, now: Instant, have_version: u64, reason: SyncReason) {
        let sync_id = self.next_sync;
        self.next_sync += 1;
        // At most one request is outstanding: one still queued is superseded
        // by this one and must not be sent as well.
        self.withdraw_sync_requests();
        self.sync = Some(OutstandingSync {
            sync_id,
            have_version,
            deadline: later(now, self.config.sync_retry),
        });
        // The request goes ahead of queued calls: it is what unblocks them.
        self.outbox.push_front(ClientMessage {
            header: Some(self.header()),
            kind: Some(client_message::Kind::SyncRequest(SyncRequest {
                sync_id,
                have_version,
                reason: reason as i32,
            })),
        });
    }

    /// Removes every sync request still queued for sending.
    fn withdraw_sync_requests(&mut self) {
        self.outbox
            .retain(|m| !matches!(m.kind, Some(client_message::Kind::SyncRequest(_))));
    }

    /// Starts healing unless a sync request is already outstanding.
    fn heal(&mut self, now: Instant, have_version: u64, reason: SyncReason) {
        match &self.sync {
            // A resume from a state that cannot take patches must be redone
            // as a snapshot request.
            Some(s) if have_version == 0 && s.have_version != 0 => {
                self.request_sync(now, 0, reason)
            }
            Some(_) => {}
            None => self.request_sync(now, have_version, reason),
        }
    }

    fn conflict(&mut self, reason: ConflictReason, incoming_version: u64, detail: String) {
        self.events.push_back(ClientEvent::Conflict(Conflict {
            reason,
            current_version: self.version(),
            incoming_version,
            detail,
        }));
    }

    fn notice(&mut self, notice: Notice) {
        self.events.push_back(ClientEvent::Notice(notice));
    }

    /// The sync request `sync_id` has been answered.
    fn answered(&mut self, sync_id: u64) {
        if sync_id != 0 && self.sync.as_ref().is_some_and(|s| s.sync_id == sync_id) {
            self.sync = None;
        }
    }

    /// Handles one envelope from the host.
    pub fn handle_message(&mut self, now: Instant, message: HostMessage) {
        self.handle_view(now, HostView::from(&message));
    }

    /// Decodes and handles one encoded `HostMessage`, reading its strings
    /// in place; bytes that are not one change nothing and are refused.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ViewError> {
        let view = HostView::decode(bytes)?;
        self.handle_view(now, view);
        Ok(())
    }

    /// [`ClientCore::handle_message`] of a message read in place.
    pub(crate) fn handle_view(&mut self, now: Instant, message: HostView<'_>) {
        self.handle_view_parsed(now, message, ReadAhead::Nothing);
    }

    /// Whether `message` is a snapshot this core would read the state of:
    /// addressed to this client, from its host, of this protocol version,
    /// with an epoch. A driver parses such a state
    /// ([`parse_snapshot_state`]) before it locks the core, and hands it
    /// to [`ClientCore::handle_view_parsed`].
    pub(crate) fn reads_snapshot(&self, message: &HostView<'_>) -> bool {
        let header = message.header.unwrap_or_default();
        matches!(message.kind, Some(HostKindView::Snapshot(_)))
            && !self.disposed
            && self.addressed_here(&header)
            && header.protocol_version == PROTOCOL_VERSION
            && !header.epoch.is_empty()
            && header.epoch.len() <= MAX_EPOCH
    }

    /// Whether an envelope with `header` is for this client from its host.
    fn addressed_here(&self, header: &HeaderView<'_>) -> bool {
        (header.target.is_empty() || header.target == self.config.peer_id)
            && (self.config.host_id.is_empty() || header.source == self.config.host_id)
            && (self.config.capability.is_empty() || header.capability == self.config.capability)
    }

    /// [`ClientCore::handle_view`] with the envelope's payload already read
    /// by [`ReadAhead::read`] from this same `message` (`Nothing`: read
    /// here, if the core reads it). Returns what the core let go of, for
    /// the caller to free after it lets the core go: the mirror's state a
    /// snapshot replaced, the state offered when it was not adopted, and
    /// the patch read ahead.
    pub(crate) fn handle_view_parsed(
        &mut self,
        now: Instant,
        message: HostView<'_>,
        ahead: ReadAhead,
    ) -> Released {
        let (state, patch) = match ahead {
            ReadAhead::Nothing => (None, None),
            ReadAhead::Snapshot(state) => (Some(state), None),
            ReadAhead::Patch(patch) => (None, Some(patch)),
        };
        // What was read ahead for an envelope this core does not read is
        // handed back as it is, to be freed without the core too.
        let unread = |state: Option<Result<Value, String>>, patch| Released {
            state: state.and_then(Result::ok),
            patch,
        };
        if self.disposed {
            return unread(state, patch);
        }
        let header = message.header.unwrap_or_default();
        if !self.addressed_here(&header) {
            return unread(state, patch);
        }
        // Whatever it says, it came from the host this client follows.
        if self.connected {
            self.heard_at = Some(now);
        }
        if header.protocol_version != PROTOCOL_VERSION {
            self.notice(Notice::Malformed {
                reason: format!("unsupported protocol version {}", header.protocol_version),
            });
            return unread(state, patch);
        }
        // K2a: an empty epoch would make the mirror's epoch "", which every
        // later call and sync request reads as "unfenced" (E7, RS2); a
        // long one would be copied into every call and sync request.
        if header.epoch.is_empty() || header.epoch.len() > MAX_EPOCH {
            self.notice(Notice::Malformed {
                reason: format!(
                    "host envelope with an epoch of {} bytes (1 to {MAX_EPOCH} are allowed)",
                    header.epoch.len()
                ),
            });
            return unread(state, patch);
        }
        let mut released = Released::default();
        match message.kind {
            None => self.notice(Notice::Malformed {
                reason: "no known message kind".to_owned(),
            }),
            Some(HostKindView::Snapshot(s)) => {
                let state = state.unwrap_or_else(|| parse_snapshot_state(s.state_json));
                released.state = self.on_snapshot(header.epoch, s, state);
            }
            Some(HostKindView::Patch(p)) => {
                let mut patch = patch;
                self.on_patch(now, header.epoch, p, &mut patch);
                released.patch = patch;
            }
            Some(HostKindView::Result(r)) => self.on_result(now, header.epoch, r),
        }
        self.rearm_result_ahead(now);
        released
    }

    /// Q1: a held result still names a version the mirror has not reached and
    /// nothing is asking for it (a sync reply was sent before the result, so
    /// it stopped short). Ask again rather than wait for a bookmark.
    /// Q2: after the reply to sync request `sync_id` was accepted or
    /// applied, settles `internal` every held result of the mirror's epoch
    /// that arrived before that request was made and names a version the
    /// mirror still has not reached. A host sends a result only after the
    /// publication of its version (H8), so its answer to a later request
    /// covers that version; a result that names a version beyond it is
    /// forged or corrupt, and asking again would never end.
    fn refute_unreachable(&mut self, sync_id: u64) {
        if sync_id == 0 || sync_id >= self.next_sync {
            return;
        }
        let Some(m) = &self.mirror else {
            return;
        };
        // A result's `sync_after` is the next sync id when it arrived, and
        // both only grow, so the results that arrived before request
        // `sync_id` was made are a prefix in arrival order. This runs
        // right after `settle_caught_up`, so each of them is still ahead and
        // settles here: the walk costs what it settles.
        let unreachable: Vec<(u64, u64)> = self
            .held
            .by_arrival
            .values()
            .map_while(|id| {
                let p = self.pending.get(id)?;
                let h = p.held.as_ref()?;
                (h.sync_after <= sync_id).then_some((id, p, h))
            })
            .filter(|(_, p, h)| {
                p.epoch.as_deref() == Some(&*m.epoch) && h.state_version > m.version
            })
            .map(|(id, _, h)| (*id, h.state_version))
            .collect();
        let reached = m.version;
        for (id, named) in unreachable {
            self.settle_local(
                id,
                ErrorCode::Internal,
                &format!(
                    "the result names version {named}, but the host's answer to a later sync request is at version {reached}: the result cannot be trusted"
                ),
            );
        }
    }

    fn rearm_result_ahead(&mut self, now: Instant) {
        if self.sync.is_some() || !self.connected {
            return;
        }
        let Some(m) = &self.mirror else {
            return;
        };
        // Only held results can be ahead, and the ones that are come last
        // in version order: this looks at one entry.
        let behind = self
            .held
            .by_version
            .iter()
            .rev()
            .take_while(|(named, _, _)| *named > m.version)
            .any(|(_, _, id)| of_epoch(&self.pending, *id, &m.epoch));
        if behind {
            let have = m.version;
            self.request_sync(now, have, SyncReason::ResultAhead);
        }
    }

    /// Takes a snapshot whose state parsed as `state`; the state it let go
    /// of, if any: the mirror's it replaced, or `state` itself if refused.
    fn on_snapshot(
        &mut self,
        epoch: &str,
        snapshot: SnapshotView<'_>,
        state: Result<Value, String>,
    ) -> Option<Value> {
        let state = match state {
            Ok(state) => state,
            Err(reason) => {
                self.notice(Notice::Malformed { reason });
                return None;
            }
        };
        if snapshot.version == 0 {
            self.notice(Notice::Malformed {
                reason: "snapshot version 0".to_owned(),
            });
            return Some(state);
        }
        let replaced;
        match &mut self.mirror {
            Some(m) if *m.epoch == *epoch => {
                if snapshot.version < m.version {
                    let current = m.version;
                    self.answered(snapshot.sync_id);
                    self.conflict(
                        ConflictReason::StaleMessage,
                        snapshot.version,
                        format!(
                            "snapshot {} is older than the mirror ({current})",
                            snapshot.version
                        ),
                    );
                    return Some(state);
                }
                replaced = Some(std::mem::replace(&mut m.state, state));
                m.version = snapshot.version;
            }
            Some(m) => {
                let old = std::mem::replace(&mut m.epoch, Arc::from(epoch)).to_string();
                replaced = Some(std::mem::replace(&mut m.state, state));
                m.version = snapshot.version;
                self.events.push_back(ClientEvent::EpochChanged {
                    old,
                    new: epoch.to_owned(),
                });
            }
            None => {
                replaced = None;
                self.mirror = Some(Mirror {
                    epoch: Arc::from(epoch),
                    version: snapshot.version,
                    state,
                });
                self.events.push_back(ClientEvent::Ready {
                    epoch: epoch.to_owned(),
                    version: snapshot.version,
                });
            }
        }
        // Also on the first snapshot: a call made with no mirror may already
        // be bound, by its result, to an epoch this mirror is not of.
        let orphaned: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.epoch.as_deref().is_some_and(|e| e != epoch))
            .map(|(id, _)| *id)
            .collect();
        for id in orphaned {
            self.settle_local(
                id,
                ErrorCode::OutcomeUnknown,
                "the host restarted (new epoch) after the call was made; whether it ran is unknown",
            );
        }
        if let Some(m) = &self.mirror {
            for pending in self.pending.values_mut() {
                pending.epoch.get_or_insert_with(|| m.epoch.clone());
            }
        }
        if snapshot.reason == SnapshotReason::Overflow as i32 {
            self.notice(Notice::Overflow {
                version: snapshot.version,
            });
        }
        // Whatever was asked, a snapshot answers it: the mirror is whole. A
        // request still queued answers nothing any more, so it is not sent.
        self.sync = None;
        self.withdraw_sync_requests();
        self.events.push_back(ClientEvent::StateChanged {
            version: snapshot.version,
        });
        self.settle_caught_up();
        self.refute_unreachable(snapshot.sync_id);
        replaced
    }

    /// Applies `patch` if it follows the mirror. `read` is its operations
    /// if read ahead; the core reads them there if it applies the patch and
    /// they were not, so that the caller frees them either way.
    fn on_patch(
        &mut self,
        now: Instant,
        epoch: &str,
        patch: PatchView<'_>,
        read: &mut Option<ReadPatch>,
    ) {
        if patch.version < patch.base_version {
            return self.notice(Notice::Malformed {
                reason: format!(
                    "patch version {} is below its base {}",
                    patch.version, patch.base_version
                ),
            });
        }
        let outstanding = self.sync.is_some();
        let Some(m) = self.mirror.as_mut().filter(|m| *m.epoch == *epoch) else {
            if !outstanding {
                let detail = if self.mirror.is_some() {
                    format!("patch from epoch {epoch:?}, which the mirror has no snapshot of")
                } else {
                    "patch before any snapshot".to_owned()
                };
                self.conflict(ConflictReason::MissingSnapshot, patch.version, detail);
            }
            return self.heal(now, 0, SyncReason::MissingSnapshot);
        };
        let current = m.version;
        if patch.base_version == current {
            let applied =
                if patch.version == patch.base_version && !is_empty_array(patch.patch_json) {
                    // PC4: a patch that claims to change nothing must not change anything.
                    Err("a patch whose version equals its base must have no operations".to_owned())
                } else {
                    let len = patch.patch_json.len();
                    let allowance = self.shift_credit.allowance(now, len);
                    let read = read.get_or_insert_with(|| ReadPatch::read(patch.patch_json));
                    let (applied, shifted) = apply_read_shifting(&mut m.state, read, allowance);
                    // A patch that failed shifted as much, and undid it.
                    self.shift_credit.spend(len, shifted);
                    applied.map_err(|error| error.to_string())
                };
            if let Err(detail) = applied {
                self.conflict(ConflictReason::PatchApplyFailed, patch.version, detail);
                return self.heal(now, 0, SyncReason::PatchApplyFailed);
            }
            m.version = patch.version;
            self.answered(patch.sync_id);
            if patch.version != current {
                self.events.push_back(ClientEvent::StateChanged {
                    version: patch.version,
                });
            }
            self.settle_caught_up();
            self.refute_unreachable(patch.sync_id);
        } else if patch.base_version > current {
            if !outstanding {
                self.conflict(
                    ConflictReason::VersionGap,
                    patch.version,
                    format!(
                        "patch starts at {}, mirror is at {current}",
                        patch.base_version
                    ),
                );
            }
            self.heal(now, current, SyncReason::VersionGap);
        } else if self
            .sync
            .as_ref()
            .is_some_and(|s| s.sync_id == patch.sync_id)
        {
            // Our own answer, overtaken by publications that already brought
            // the mirror this far.
            self.answered(patch.sync_id);
        } else if !outstanding {
            self.conflict(
                ConflictReason::StaleMessage,
                patch.version,
                format!(
                    "patch {}..{} is behind the mirror ({current})",
                    patch.base_version, patch.version
                ),
            );
        }
    }

    fn on_result(&mut self, now: Instant, epoch: &str, result: ResultView<'_>) {
        let call_id = result.call_id;
        // R1: a call not sent yet cannot have been answered by a conforming
        // host; on a shared channel such a result is forged, and taking it
        // would settle the call and withdraw it unsent.
        let Some(pending) = self
            .pending
            .get_mut(&call_id)
            .filter(|p| p.transmitted && p.held.is_none())
        else {
            return self.notice(Notice::UnexpectedResult { call_id });
        };
        if pending.epoch.as_deref().is_some_and(|e| e != epoch) {
            self.settle_local(
                call_id,
                ErrorCode::OutcomeUnknown,
                "the result came from another host epoch than the call was made against",
            );
            return;
        }
        if pending.epoch.is_none() {
            pending.epoch = Some(Arc::from(epoch));
        }
        let outcome = match result.outcome {
            Some(OutcomeView::ValueJson(json)) => Ok(json),
            Some(OutcomeView::Error(error)) => Err(MethodError::from_view(error)),
            None => Err(MethodError::internal(
                "the host sent a result with no outcome",
            )),
        };
        // The usual case: the mirror already has the result's version, so
        // the call settles at once, its value parsed straight from the
        // envelope and the index left untouched. RW5's arrival order holds:
        // with a mirror, every result still held names a version beyond it,
        // so none of them could settle now.
        if self
            .mirror
            .as_ref()
            .is_some_and(|m| *m.epoch == *epoch && result.state_version <= m.version)
        {
            self.pending.remove(&call_id);
            self.events.push_back(ClientEvent::Settled {
                call: CallId(call_id),
                outcome: outcome.and_then(Self::parse_value),
                state_version: Some(result.state_version),
            });
            return;
        }
        self.results_held += 1;
        let held = Held {
            sync_after: self.next_sync,
            arrival: self.results_held,
            state_version: result.state_version,
            outcome: outcome.map(str::to_owned),
        };
        self.held.insert(call_id, &held);
        pending.held = Some(held);
        if !self.settle_caught_up()
            && let Some(current) = self.version()
            && current < result.state_version
            && self.pending.contains_key(&call_id)
        {
            self.heal(now, current, SyncReason::ResultAhead);
        }
    }

    /// A result's `value_json`, parsed; a malformed one settles `internal`.
    fn parse_value(json: &str) -> Result<Value, MethodError> {
        serde_json::from_str(json)
            .map_err(|e| MethodError::internal(format!("the host sent a malformed value: {e}")))
    }

    /// Settles every held result the mirror has caught up with. Returns
    /// whether any settled.
    fn settle_caught_up(&mut self) -> bool {
        let Some(m) = &self.mirror else {
            return false;
        };
        // What the mirror has reached is a range of the version order; RW5
        // settles it in arrival order, so the batch is sorted by arrival.
        let mut caught_up: Vec<(u64, u64)> = self
            .held
            .by_version
            .range(..=(m.version, u64::MAX, u64::MAX))
            .filter(|(_, _, id)| of_epoch(&self.pending, *id, &m.epoch))
            .map(|&(_, arrival, id)| (arrival, id))
            .collect();
        caught_up.sort_unstable();
        for &(_, id) in &caught_up {
            let Some(Pending {
                held: Some(h),
                transmitted,
                ..
            }) = self.pending.remove(&id)
            else {
                continue;
            };
            self.held.remove(id, &h);
            if !transmitted {
                self.withdraw(id);
            }
            self.events.push_back(ClientEvent::Settled {
                call: CallId(id),
                outcome: h.outcome.and_then(|json| Self::parse_value(&json)),
                state_version: Some(h.state_version),
            });
        }
        !caught_up.is_empty()
    }

    /// Fires whatever is due at `now`: call deadlines (settled
    /// `deadline-exceeded`, earliest deadline first); while connected, an
    /// unanswered sync request (sent again); and host silence (L10): the
    /// link is then taken as lost, as by [`ClientCore::connection_lost`],
    /// and [`ClientCore::is_host_silent`] tells the driver to close it.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.disposed {
            return;
        }
        // L4: in deadline order, as timers of their own would fire; equal
        // deadlines in call order (the map's order, kept by a stable sort).
        let mut expired: Vec<(Instant, u64)> = self
            .pending
            .iter()
            .filter_map(|(id, p)| p.deadline.filter(|d| *d <= now).map(|d| (d, *id)))
            .collect();
        expired.sort_by_key(|(deadline, _)| *deadline);
        for (_, id) in expired {
            self.settle_local(
                id,
                ErrorCode::DeadlineExceeded,
                "the call's deadline passed before it settled",
            );
        }
        // L5 retries only while connected: a request made while the link is
        // down is never sent, and L7 asks afresh on reconnecting.
        if self.connected
            && let Some(s) = &self.sync
            && s.deadline <= now
        {
            // Resume from where the mirror is now: applicable patches may
            // have moved it on since the request was made.
            let have = if s.have_version == 0 {
                0
            } else {
                self.version().unwrap_or(0)
            };
            self.request_sync(now, have, SyncReason::Retry);
        }
        if let Some(due) = self.silence_due()
            && due <= now
            && let Some(silence) = self.config.host_silence
        {
            self.notice(Notice::HostSilent { silence });
            self.lose_link(
                "the host went silent while the call was in flight, so the link was taken as lost",
            );
            self.host_silent = true;
        }
    }

    /// When host silence (L10) takes the current link down unless the host
    /// speaks first: `None` while it is not armed (no silence configured,
    /// disconnected, or the host has not spoken on this link). A driver
    /// that finds it passed can end the link before reporting the time, so
    /// that the link's end is published before the calls it takes down
    /// settle; [`ClientCore::handle_timeout`] then fires it.
    pub fn host_silent_at(&self) -> Option<Instant> {
        self.silence_due()
    }

    fn silence_due(&self) -> Option<Instant> {
        let silence = self.config.host_silence?;
        let heard = self.heard_at.filter(|_| self.connected && !self.disposed)?;
        heard.checked_add(silence)
    }

    /// Whether host silence (L10) has taken the current link down: the
    /// driver should close the link and reconnect. True from the
    /// [`ClientCore::handle_timeout`] that found the host silent until
    /// [`ClientCore::reconnected`]; the core has already acted as for
    /// [`ClientCore::connection_lost`].
    pub fn is_host_silent(&self) -> bool {
        self.host_silent
    }

    /// When [`ClientCore::handle_timeout`] next needs calling, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.pending.values().filter_map(|p| p.deadline);
        let sync = self
            .sync
            .as_ref()
            .filter(|_| self.connected)
            .map(|s| s.deadline);
        calls.chain(sync).chain(self.silence_due()).min()
    }

    /// [`ClientCore::poll_transmit`], taking the message only if there is
    /// one and `room` (asked only then) says the link can take it now. A
    /// driver whose link may make it wait sends this way, so that a call the
    /// link has no room for stays queued rather than counting as sent: if
    /// the link then ends, the call goes out on the next one instead of
    /// settling `outcome-unknown` (L6).
    pub fn poll_transmit_when(&mut self, room: impl FnOnce() -> bool) -> Option<ClientMessage> {
        if !self.connected || self.outbox.is_empty() || !room() {
            return None;
        }
        self.poll_transmit()
    }

    /// The next message to send to the host, if any: none between
    /// [`ClientCore::connection_lost`] and [`ClientCore::reconnected`]
    /// (L6), whatever is queued meanwhile.
    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        if !self.connected {
            return None;
        }
        let mut message = self.outbox.pop_front()?;
        if let Some(client_message::Kind::Call(call)) = &message.kind
            && let Some(p) = self.pending.get_mut(&call.call_id)
        {
            p.transmitted = true;
            // E6: a call carries the mirror's epoch when it is sent. A call
            // queued before the first snapshot is bound to that snapshot's
            // epoch by now, and must be fenced by any other host.
            // Usually the epoch it was made with: then nothing is copied.
            if let (Some(header), Some(m)) = (message.header.as_mut(), &self.mirror)
                && *header.epoch != *m.epoch
            {
                header.epoch.clear();
                header.epoch.push_str(&m.epoch);
            }
        }
        Some(message)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
}

/// Whether the pending call `call_id` was made against `epoch`.
fn of_epoch(pending: &BTreeMap<u64, Pending>, call_id: u64, epoch: &str) -> bool {
    pending
        .get(&call_id)
        .is_some_and(|p| p.epoch.as_deref() == Some(epoch))
}

/// Removes the call `call_id` from `outbox`.
fn withdraw(outbox: &mut VecDeque<ClientMessage>, call_id: u64) {
    outbox.retain(|m| match &m.kind {
        Some(client_message::Kind::Call(c)) => c.call_id != call_id,
        _ => true,
    });
}

/// A snapshot's `state_json` as the mirror's new state: a JSON object, or
/// why it is not one (reported as a malformed envelope). It depends on the
/// text alone, so a driver parses it before locking the core.
pub(crate) fn parse_snapshot_state(state_json: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(state_json) {
        Ok(state @ Value::Object(_)) => Ok(state),
        Ok(_) => Err("snapshot state is not a JSON object".to_owned()),
        Err(e) => Err(format!("snapshot state is not JSON: {e}")),
    }
}

/// The instant `wait` after `now`, or about thirty years after it where
/// that overflows the clock: a wait configured as "for ever" is not a crash.
pub(crate) fn later(now: Instant, wait: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(wait)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// Whether `json` is a JSON array with no elements.
fn is_empty_array(json: &str) -> bool {
    serde_json::from_str::<Vec<serde::de::IgnoredAny>>(json).is_ok_and(|ops| ops.is_empty())
}
