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

// The core in parts, each an `impl ClientCore` block: calls made and
// settled locally (`calls`), envelopes taken in (`receive`), the mirror
// kept in step (`mirror`), results settled (`results`), the link lost and
// healed (`link`), and deadlines (`timers`).
mod calls;
mod link;
mod mirror;
mod receive;
mod results;
mod timers;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::config::ClientConfig;
use super::event::{ClientEvent, Conflict, ConflictReason, Notice};
use super::shift_credit::ShiftCredit;
use crate::app::MethodError;
use crate::wire::{ClientMessage, ErrorCode, Header, PROTOCOL_VERSION, SyncReason, client_message};

/// The longest host epoch a client takes, in bytes (spec E2, K2a): a
/// client copies the epoch into every call and sync request it sends, so an
/// envelope with a longer one is ignored as malformed.
pub const MAX_EPOCH: usize = 1024;

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

impl Pending {
    /// How far the call got, in the words a local settlement's message
    /// adds: the code alone (the spec's) does not tell the application
    /// whether a call that was never sent, and so never ran, is safe to
    /// make again.
    fn progress(&self) -> &'static str {
        match (self.transmitted, &self.held) {
            (false, _) => "before it was sent; it did not run",
            (true, None) => "after it was sent and before its result arrived; it may have run",
            (true, Some(Held { outcome: Ok(_), .. })) => {
                "after the host answered it, while the mirror caught up; it ran"
            }
            // A host's error commits nothing, whether the method ran or not
            // (§14); INTERNAL may instead be this client's reading of a result
            // it could not read, codes 9–12 no host may send, and
            // RESOURCE_EXHAUSTED may answer a change a module could not
            // revert (§3.8).
            (
                true,
                Some(Held {
                    outcome: Err(e), ..
                }),
            ) if matches!(
                e.code,
                ErrorCode::NotFound
                    | ErrorCode::InvalidArgument
                    | ErrorCode::Failed
                    | ErrorCode::Unavailable
                    | ErrorCode::PermissionDenied
                    | ErrorCode::FailedPrecondition
            ) =>
            {
                "after the host refused it, while the mirror caught up; it changed nothing"
            }
            (true, Some(_)) => "after the host answered it, while the mirror caught up",
        }
    }
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

    /// Whether a pending call has left through
    /// [`poll_transmit`](ClientCore::poll_transmit): once it has, the host
    /// may run it whatever happens to the client. `None` for a call that is
    /// not pending.
    pub fn was_sent(&self, call: crate::client::CallId) -> Option<bool> {
        self.pending.get(&call.0).map(|p| p.transmitted)
    }

    fn header(&self) -> Header {
        Header {
            protocol_version: PROTOCOL_VERSION,
            epoch: self
                .mirror
                .as_ref()
                // Copied as a str: `Arc<str>::to_string` goes through the
                // formatter, which grows the string in steps.
                .map(|m| String::from(&*m.epoch))
                .unwrap_or_default(),
            source: self.config.peer_id.clone(),
            target: self.config.host_id.clone(),
            capability: self.config.capability.clone(),
        }
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
            self.settle_saying_how_far(id, ErrorCode::Disposed, "the client was disposed");
        }
        self.outbox.clear();
        self.sync = None;
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

    /// [`ClientCore::poll_transmit`], taking the message only if there is
    /// one and `room` (asked only then, shown the message as queued) says
    /// the link can take it now. A driver whose link may make it wait sends
    /// this way, so that a call the link has no room for, or that must wait
    /// for the host to accept the link (spec §17.1), stays queued rather
    /// than counting as sent: if the link then ends, the call goes out on
    /// the next one instead of settling `outcome-unknown` (L6).
    pub fn poll_transmit_when(
        &mut self,
        room: impl FnOnce(&ClientMessage) -> bool,
    ) -> Option<ClientMessage> {
        let next = self.outbox.front()?;
        if !self.connected || !room(next) {
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

    /// The next event, if any. Events queue without bound until taken, so
    /// a driver drains them after each input.
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
