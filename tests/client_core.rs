//! Behaviour of the sans-IO client core, row by row of the client state
//! machine (spec/PROTOCOL.md §8–§12). Every test drives a `ClientCore`
//! directly with hand-built host envelopes and a fixed time base; no
//! runtime, no clock.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cosystem_worker::app::MethodError;
use cosystem_worker::client::{
    CallId, ClientConfig, ClientCore, ClientError, ClientEvent, Conflict, ConflictReason, Notice,
};
use cosystem_worker::wire::{
    Call, CallResult, ClientMessage, Error, ErrorCode, Header, HostMessage, Patch, Snapshot,
    SnapshotReason, SyncReason, SyncRequest, call_result, client_message, host_message,
};
use proptest::prelude::*;
use prost::Message;
use serde_json::{Value, json};

const PEER: &str = "c1";
const E1: &str = "epoch-one";
const E2: &str = "epoch-two";
const RETRY: Duration = Duration::from_secs(2);

/// The fixed time base every test offsets from.
fn at(ms: u64) -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
}

fn config() -> ClientConfig {
    ClientConfig {
        peer_id: PEER.to_owned(),
        sync_retry: RETRY,
        ..Default::default()
    }
}

fn new_client() -> ClientCore {
    ClientCore::new(config(), at(0))
}

// ---- host envelopes ------------------------------------------------------

fn envelope(epoch: &str, target: &str, kind: host_message::Kind) -> HostMessage {
    HostMessage {
        header: Some(Header::v1(epoch, "host", target)),
        kind: Some(kind),
    }
}

fn snapshot_reason(
    epoch: &str,
    version: u64,
    state: Value,
    sync_id: u64,
    reason: SnapshotReason,
) -> HostMessage {
    let target = if sync_id == 0 { "" } else { PEER };
    envelope(
        epoch,
        target,
        host_message::Kind::Snapshot(Snapshot {
            version,
            state_json: state.to_string(),
            sync_id,
            reason: reason as i32,
        }),
    )
}

/// A sync reply when `sync_id` is non-zero, a commit publication otherwise.
fn snapshot(epoch: &str, version: u64, state: Value, sync_id: u64) -> HostMessage {
    let reason = if sync_id == 0 {
        SnapshotReason::Commit
    } else {
        SnapshotReason::Sync
    };
    snapshot_reason(epoch, version, state, sync_id, reason)
}

fn patch_text(epoch: &str, base: u64, version: u64, patch_json: &str, sync_id: u64) -> HostMessage {
    let target = if sync_id == 0 { "" } else { PEER };
    envelope(
        epoch,
        target,
        host_message::Kind::Patch(Patch {
            base_version: base,
            version,
            patch_json: patch_json.to_owned(),
            sync_id,
        }),
    )
}

fn patch(epoch: &str, base: u64, version: u64, ops: Value) -> HostMessage {
    patch_text(epoch, base, version, &ops.to_string(), 0)
}

fn bookmark(epoch: &str, version: u64) -> HostMessage {
    patch_text(epoch, version, version, "[]", 0)
}

fn result(
    epoch: &str,
    call: CallId,
    state_version: u64,
    outcome: call_result::Outcome,
) -> HostMessage {
    envelope(
        epoch,
        PEER,
        host_message::Kind::Result(CallResult {
            call_id: call.0,
            state_version,
            outcome: Some(outcome),
        }),
    )
}

fn ok_result(epoch: &str, call: CallId, state_version: u64, value: Value) -> HostMessage {
    result(
        epoch,
        call,
        state_version,
        call_result::Outcome::ValueJson(value.to_string()),
    )
}

fn err_result(
    epoch: &str,
    call: CallId,
    state_version: u64,
    code: ErrorCode,
    message: &str,
) -> HostMessage {
    result(
        epoch,
        call,
        state_version,
        call_result::Outcome::Error(Error {
            code: code as i32,
            message: message.to_owned(),
            details_json: String::new(),
        }),
    )
}

/// The published view used throughout: one counter section.
fn view(count: i64) -> Value {
    json!({"counter": {"count": count}})
}

/// The operations taking `view(_)` to `view(count)`.
fn set_count(count: i64) -> Value {
    json!([{"op": "replace", "path": "/counter/count", "value": count}])
}

// ---- client outputs ------------------------------------------------------

fn events(c: &mut ClientCore) -> Vec<ClientEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn sent(c: &mut ClientCore) -> Vec<ClientMessage> {
    std::iter::from_fn(|| c.poll_transmit()).collect()
}

fn sync_requests(messages: &[ClientMessage]) -> Vec<SyncRequest> {
    messages
        .iter()
        .filter_map(|m| match &m.kind {
            Some(client_message::Kind::SyncRequest(r)) => Some(*r),
            _ => None,
        })
        .collect()
}

fn sent_calls(messages: &[ClientMessage]) -> Vec<Call> {
    messages
        .iter()
        .filter_map(|m| match &m.kind {
            Some(client_message::Kind::Call(c)) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

/// The single message sent, which must be a SyncRequest.
fn only_sync(messages: &[ClientMessage]) -> SyncRequest {
    assert_eq!(messages.len(), 1, "expected one message: {messages:#?}");
    let requests = sync_requests(messages);
    assert_eq!(requests.len(), 1, "expected a SyncRequest: {messages:#?}");
    requests[0]
}

fn reason(request: &SyncRequest) -> SyncReason {
    SyncReason::try_from(request.reason).expect("a known sync reason")
}

fn conflicts(events: &[ClientEvent]) -> Vec<(ConflictReason, Option<u64>, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Conflict(Conflict {
                reason,
                current_version,
                incoming_version,
                ..
            }) => Some((*reason, *current_version, *incoming_version)),
            _ => None,
        })
        .collect()
}

fn notices(events: &[ClientEvent]) -> Vec<Notice> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Notice(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

type Settlement = (CallId, Result<Value, ErrorCode>, Option<u64>);

fn settlements(events: &[ClientEvent]) -> Vec<Settlement> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Settled {
                call,
                outcome,
                state_version,
                ..
            } => Some((
                *call,
                outcome.clone().map_err(|e: MethodError| e.code),
                *state_version,
            )),
            _ => None,
        })
        .collect()
}

fn settled_error(events: &[ClientEvent], call: CallId) -> MethodError {
    events
        .iter()
        .find_map(|e| match e {
            ClientEvent::Settled {
                call: c,
                outcome: Err(err),
                ..
            } if *c == call => Some(err.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{call:?} did not settle with an error: {events:#?}"))
}

/// A client whose initial sync was answered with `view(count)` at `version`
/// in epoch E1, with every output drained.
fn synced(version: u64, count: i64) -> ClientCore {
    let mut c = new_client();
    let initial = only_sync(&sent(&mut c));
    c.handle_message(at(0), snapshot(E1, version, view(count), initial.sync_id));
    events(&mut c);
    assert!(!c.is_syncing());
    c
}

/// Starts a call of `counter.increase(1)` and hands it to the transport.
fn sent_call(c: &mut ClientCore) -> CallId {
    let id = c.call("counter", "increase", &[json!(1)], None).unwrap();
    let calls = sent_calls(&sent(c));
    assert!(calls.iter().any(|call| call.call_id == id.0));
    id
}

/// Whether a call may have run is not in its code: a call cancelled before
/// it left never ran, one cancelled after may have.
#[test]
fn a_local_settlement_says_whether_the_call_had_been_sent() {
    let mut c = synced(3, 3);
    let kept = c.call("counter", "increase", &[json!(1)], None).unwrap();
    assert_eq!(c.was_sent(kept), Some(false));
    assert!(c.cancel(kept));
    let gone = sent_call(&mut c);
    assert_eq!(c.was_sent(gone), Some(true));
    assert!(c.cancel(gone));
    assert_eq!(c.was_sent(gone), None, "settled calls are not pending");
    let sent_flags: Vec<(CallId, bool)> = events(&mut c)
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Settled { call, sent, .. } => Some((call, sent)),
            _ => None,
        })
        .collect();
    assert_eq!(sent_flags, vec![(kept, false), (gone, true)]);
}

// ---- start and snapshots -------------------------------------------------

#[test]
fn new_client_sends_initial_sync_request_for_version_zero() {
    let mut c = ClientCore::new(
        ClientConfig {
            host_id: "host".to_owned(),
            capability: "cap".to_owned(),
            ..config()
        },
        at(0),
    );
    let messages = sent(&mut c);
    let request = only_sync(&messages);
    assert_ne!(request.sync_id, 0);
    assert_eq!(request.have_version, 0);
    assert_eq!(reason(&request), SyncReason::Initial);
    let header = messages[0].header.clone().unwrap();
    assert_eq!(header.protocol_version, 1);
    assert_eq!(header.epoch, "", "no mirror, so no epoch");
    assert_eq!(header.source, PEER);
    assert_eq!(header.target, "host");
    assert_eq!(header.capability, "cap");
    assert!(c.is_syncing());
    assert!(!c.is_ready());
    assert_eq!(c.state(), None);
    assert_eq!(c.version(), None);
    assert!(events(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(at(0) + RETRY));
}

#[test]
fn first_snapshot_makes_client_ready_with_its_state() {
    let mut c = new_client();
    let initial = only_sync(&sent(&mut c));
    c.handle_message(at(5), snapshot(E1, 4, view(7), initial.sync_id));
    let evs = events(&mut c);
    assert!(evs.contains(&ClientEvent::Ready {
        epoch: E1.to_owned(),
        version: 4
    }));
    assert!(evs.contains(&ClientEvent::StateChanged { version: 4 }));
    assert!(conflicts(&evs).is_empty());
    assert!(c.is_ready());
    assert_eq!(c.state(), Some(&view(7)));
    assert_eq!(c.version(), Some(4));
    assert_eq!(c.epoch(), Some(E1));
    assert!(!c.is_syncing(), "the reply clears the outstanding request");
    assert_eq!(c.poll_timeout(), None);
    assert!(sent(&mut c).is_empty());
}

#[test]
fn ready_is_reported_only_for_the_first_snapshot() {
    let mut c = synced(1, 0);
    c.handle_message(at(0), snapshot(E1, 2, view(1), 0));
    c.handle_message(at(0), snapshot(E2, 1, view(0), 0));
    let evs = events(&mut c);
    assert!(
        !evs.iter().any(|e| matches!(e, ClientEvent::Ready { .. })),
        "{evs:#?}"
    );
}

#[test]
fn any_accepted_snapshot_clears_the_outstanding_sync_request() {
    // A commit snapshot (sync_id 0) brings the mirror up to date just as well
    // as the reply would (spec §8.3 K6).
    let mut c = new_client();
    sent(&mut c);
    assert!(c.is_syncing());
    c.handle_message(at(0), snapshot(E1, 3, view(3), 0));
    assert!(!c.is_syncing());
    assert_eq!(c.poll_timeout(), None);
    events(&mut c);
    // So the next anomaly is reported and healed rather than dropped.
    c.handle_message(at(0), patch(E1, 5, 6, set_count(6)));
    let evs = events(&mut c);
    assert_eq!(
        conflicts(&evs),
        vec![(ConflictReason::VersionGap, Some(3), 6)]
    );
    let request = only_sync(&sent(&mut c));
    assert_eq!(request.have_version, 3);
    assert_eq!(reason(&request), SyncReason::VersionGap);
}

#[test]
fn same_epoch_newer_snapshot_replaces_mirror_without_conflict() {
    let mut c = synced(2, 2);
    c.handle_message(at(0), snapshot(E1, 5, view(5), 0));
    let evs = events(&mut c);
    assert_eq!(evs, vec![ClientEvent::StateChanged { version: 5 }]);
    assert_eq!(c.state(), Some(&view(5)));
    assert_eq!(c.version(), Some(5));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn same_epoch_snapshot_at_equal_version_replaces_mirror() {
    let mut c = synced(2, 2);
    c.handle_message(at(0), snapshot(E1, 2, json!({"other": true}), 0));
    let evs = events(&mut c);
    assert!(conflicts(&evs).is_empty());
    assert_eq!(c.state(), Some(&json!({"other": true})));
    assert_eq!(c.version(), Some(2));
}

#[test]
fn older_snapshot_is_ignored_as_stale_message() {
    let mut c = synced(5, 5);
    c.handle_message(at(0), snapshot(E1, 3, view(3), 0));
    let evs = events(&mut c);
    assert_eq!(
        conflicts(&evs),
        vec![(ConflictReason::StaleMessage, Some(5), 3)]
    );
    assert_eq!(evs.len(), 1, "{evs:#?}");
    assert_eq!(c.state(), Some(&view(5)));
    assert_eq!(c.version(), Some(5));
    assert!(sent(&mut c).is_empty(), "stale messages need no healing");
}

#[test]
fn older_snapshot_is_reported_stale_even_while_a_sync_is_outstanding() {
    let mut c = synced(5, 5);
    c.handle_message(at(0), patch(E1, 7, 8, set_count(8)));
    sent(&mut c);
    events(&mut c);
    assert!(c.is_syncing());
    c.handle_message(at(0), snapshot(E1, 3, view(3), 0));
    assert_eq!(
        conflicts(&events(&mut c)),
        vec![(ConflictReason::StaleMessage, Some(5), 3)]
    );
    assert!(
        c.is_syncing(),
        "a stale non-reply leaves the request outstanding"
    );
}

#[test]
fn new_epoch_snapshot_replaces_mirror_reports_epoch_change_and_settles_calls_outcome_unknown() {
    let mut c = synced(3, 3);
    let in_flight = sent_call(&mut c);
    let held = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E1, held, 9, json!(4)));
    let queued = c.call("counter", "increase", &[json!(1)], None).unwrap();
    events(&mut c);

    c.handle_message(at(1), snapshot(E2, 1, view(0), 0));
    let evs = events(&mut c);
    assert!(evs.contains(&ClientEvent::EpochChanged {
        old: E1.to_owned(),
        new: E2.to_owned()
    }));
    assert!(evs.contains(&ClientEvent::StateChanged { version: 1 }));
    assert!(conflicts(&evs).is_empty());
    let mut settled = settlements(&evs);
    settled.sort_by_key(|s| s.0);
    assert_eq!(
        settled,
        vec![
            (in_flight, Err(ErrorCode::OutcomeUnknown), None),
            (held, Err(ErrorCode::OutcomeUnknown), None),
            (queued, Err(ErrorCode::OutcomeUnknown), None),
        ]
    );
    // One code for every call of a vanished epoch (spec §11.2); the message
    // tells the application which of them never ran.
    let message = |call| settled_error(&evs, call).message;
    assert!(message(queued).ends_with("before it was sent; it did not run"));
    assert!(message(in_flight).ends_with("before its result arrived; it may have run"));
    assert!(
        message(held).ends_with("after the host answered it, while the mirror caught up; it ran")
    );
    assert_eq!(c.epoch(), Some(E2));
    assert_eq!(c.version(), Some(1));
    assert_eq!(c.state(), Some(&view(0)));
    assert_eq!(c.pending_calls(), 0);
    assert!(
        sent_calls(&sent(&mut c)).is_empty(),
        "a call of a vanished epoch is never sent"
    );

    // A call made now is bound to, and sent under, the new epoch.
    let fresh = c.call("counter", "increase", &[json!(1)], None).unwrap();
    let messages = sent(&mut c);
    assert_eq!(messages[0].header.as_ref().unwrap().epoch, E2);
    c.handle_message(at(2), ok_result(E2, fresh, 1, json!(1)));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(fresh, Ok(json!(1)), Some(1))]
    );
}

#[test]
fn deadlines_and_cancels_say_whether_the_call_was_sent() {
    let mut c = synced(1, 1);
    let sent_then_cancelled = sent_call(&mut c);
    let sent_then_late = c
        .call("counter", "increase", &[json!(1)], Some(at(10)))
        .unwrap();
    sent(&mut c);
    let queued_then_cancelled = c.call("counter", "increase", &[json!(1)], None).unwrap();
    let queued_then_late = c
        .call("counter", "increase", &[json!(1)], Some(at(10)))
        .unwrap();
    assert!(c.cancel(sent_then_cancelled));
    assert!(c.cancel(queued_then_cancelled));
    c.handle_timeout(at(10));
    let evs = events(&mut c);
    let message = |call| settled_error(&evs, call).message;
    assert_eq!(
        message(sent_then_cancelled),
        "the call was cancelled after it was sent and before its result arrived; it may have run"
    );
    assert_eq!(
        message(queued_then_cancelled),
        "the call was cancelled before it was sent; it did not run"
    );
    assert_eq!(
        message(sent_then_late),
        "the call's deadline passed after it was sent and before its result arrived; it may have run"
    );
    assert_eq!(
        message(queued_then_late),
        "the call's deadline passed before it was sent; it did not run"
    );
    assert!(
        sent_calls(&sent(&mut c)).is_empty(),
        "settled calls are withdrawn"
    );
}

#[test]
fn a_held_error_settled_locally_says_the_call_changed_nothing_and_disposal_says_how_far_calls_got()
{
    let mut c = synced(3, 3);
    let refused = sent_call(&mut c);
    let answered = sent_call(&mut c);
    c.handle_message(
        at(0),
        err_result(E1, refused, 9, ErrorCode::NotFound, "no such method"),
    );
    c.handle_message(at(0), ok_result(E1, answered, 9, json!(4)));
    // INTERNAL may be a panic the host rolled back or a result this client
    // could not read: nothing is said of whether it changed anything.
    let internal = sent_call(&mut c);
    c.handle_message(
        at(0),
        err_result(E1, internal, 9, ErrorCode::Internal, "the method panicked"),
    );
    let queued = c.call("counter", "increase", &[json!(1)], None).unwrap();
    events(&mut c);
    assert!(c.cancel(refused));
    c.dispose();
    let evs = events(&mut c);
    let message = |call| settled_error(&evs, call).message;
    assert_eq!(
        message(internal),
        "the client was disposed after the host answered it, while the mirror caught up"
    );
    assert_eq!(
        message(refused),
        "the call was cancelled after the host refused it, while the mirror caught up; it changed nothing"
    );
    assert_eq!(
        message(answered),
        "the client was disposed after the host answered it, while the mirror caught up; it ran"
    );
    assert_eq!(
        message(queued),
        "the client was disposed before it was sent; it did not run"
    );
}

#[test]
fn overflow_snapshot_is_accepted_with_an_overflow_notice() {
    let mut c = synced(2, 2);
    c.handle_message(
        at(0),
        snapshot_reason(E1, 40, view(40), 0, SnapshotReason::Overflow),
    );
    let evs = events(&mut c);
    assert_eq!(notices(&evs), vec![Notice::Overflow { version: 40 }]);
    assert!(conflicts(&evs).is_empty());
    assert_eq!(c.version(), Some(40));
}

#[test]
fn malformed_snapshots_are_ignored_with_a_notice() {
    let mut c = synced(2, 2);
    let not_json = envelope(
        E1,
        "",
        host_message::Kind::Snapshot(Snapshot {
            version: 3,
            state_json: "{not json".to_owned(),
            sync_id: 0,
            reason: 1,
        }),
    );
    for bad in [
        not_json,
        snapshot(E1, 3, json!([1, 2]), 0),
        snapshot(E1, 0, view(0), 0),
    ] {
        c.handle_message(at(0), bad);
        let evs = events(&mut c);
        assert!(
            matches!(notices(&evs).as_slice(), [Notice::Malformed { .. }]),
            "{evs:#?}"
        );
        assert!(conflicts(&evs).is_empty());
        assert_eq!(c.version(), Some(2));
        assert_eq!(c.state(), Some(&view(2)));
    }
}

// ---- patches -------------------------------------------------------------

#[test]
fn patch_before_any_snapshot_is_dropped_silently_while_the_initial_sync_is_outstanding() {
    let mut c = new_client();
    sent(&mut c);
    c.handle_message(at(0), patch(E1, 1, 2, set_count(2)));
    assert!(events(&mut c).is_empty());
    assert!(sent(&mut c).is_empty());
    assert!(!c.is_ready());
}

#[test]
fn patch_before_any_snapshot_reports_missing_snapshot_and_asks_for_a_snapshot_on_reconnect() {
    // EMPTY with no request outstanding: the only way there is a connection
    // loss before the initial sync was answered (P1).
    let mut c = new_client();
    sent(&mut c);
    c.connection_lost();
    assert!(!c.is_syncing());
    c.handle_message(at(0), patch(E1, 1, 2, set_count(2)));
    let evs = events(&mut c);
    assert_eq!(
        conflicts(&evs),
        vec![(ConflictReason::MissingSnapshot, None, 2)]
    );
    assert!(
        sent(&mut c).is_empty(),
        "nothing is sent while disconnected"
    );
    assert!(c.is_syncing(), "the queued request covers later patches");
    c.reconnected(at(0));
    let request = only_sync(&sent(&mut c));
    assert_eq!(
        (reason(&request), request.have_version),
        (SyncReason::Reconnect, 0)
    );
    assert!(!c.is_ready());
}

#[test]
fn patch_from_another_epoch_reports_missing_snapshot_and_requests_snapshot() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E2, 3, 4, set_count(4)));
    let evs = events(&mut c);
    assert_eq!(
        conflicts(&evs),
        vec![(ConflictReason::MissingSnapshot, Some(3), 4)]
    );
    assert_eq!(c.state(), Some(&view(3)), "never applied across epochs");
    assert_eq!(c.epoch(), Some(E1));
    let messages = sent(&mut c);
    let request = only_sync(&messages);
    assert_eq!(request.have_version, 0);
    assert_eq!(reason(&request), SyncReason::MissingSnapshot);
    assert_eq!(messages[0].header.as_ref().unwrap().epoch, E1);
}

#[test]
fn patch_from_another_epoch_while_resuming_replaces_the_request_with_a_snapshot_request() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E1, 5, 6, set_count(6)));
    let gap = only_sync(&sent(&mut c));
    assert_eq!(gap.have_version, 3);
    events(&mut c);
    c.handle_message(at(0), patch(E2, 1, 2, set_count(2)));
    assert!(
        conflicts(&events(&mut c)).is_empty(),
        "covered: not reported"
    );
    let replacement = only_sync(&sent(&mut c));
    assert_eq!(replacement.have_version, 0);
    assert_eq!(reason(&replacement), SyncReason::MissingSnapshot);
    assert_ne!(replacement.sync_id, gap.sync_id);
    // A further foreign patch is covered by the snapshot request.
    c.handle_message(at(0), patch(E2, 2, 3, set_count(3)));
    assert!(events(&mut c).is_empty());
    assert!(sent(&mut c).is_empty());
}

#[test]
fn replaced_sync_request_not_yet_sent_is_withdrawn() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E1, 5, 6, set_count(6)));
    // The gap request is still queued when a foreign patch replaces it.
    c.handle_message(at(0), patch(E2, 1, 2, set_count(2)));
    let request = only_sync(&sent(&mut c));
    assert_eq!(request.have_version, 0);
    assert_eq!(reason(&request), SyncReason::MissingSnapshot);
}

#[test]
fn sync_request_still_queued_when_a_snapshot_is_accepted_is_withdrawn() {
    // The accepted snapshot clears SYNC-OUTSTANDING (K6): the queued request
    // answers nothing any more and must not be sent (RS6).
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E1, 5, 6, set_count(6)));
    c.handle_message(at(0), snapshot(E1, 6, view(6), 0));
    assert!(!c.is_syncing());
    assert!(sync_requests(&sent(&mut c)).is_empty());
}

#[test]
fn call_made_without_a_mirror_is_sent_under_the_epoch_it_was_bound_to() {
    // E6: a Call carries the mirror's epoch when it is sent, not when it was
    // made, so a call bound to E1 by the first snapshot is fenced by any
    // other host rather than sent unfenced with an empty epoch.
    let mut c = new_client();
    let id = c.call("counter", "increase", &[json!(1)], None).unwrap();
    c.handle_message(at(0), snapshot(E1, 1, view(0), 0));
    let messages = sent(&mut c);
    let call = messages
        .iter()
        .find(|m| matches!(&m.kind, Some(client_message::Kind::Call(call)) if call.call_id == id.0))
        .expect("the call is sent");
    assert_eq!(call.header.as_ref().map(|h| h.epoch.as_str()), Some(E1));
}

#[test]
fn patch_at_mirror_version_applies_and_advances_the_version() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E1, 3, 4, set_count(4)));
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::StateChanged { version: 4 }]
    );
    assert_eq!(c.state(), Some(&view(4)));
    assert_eq!(c.version(), Some(4));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn patch_spanning_several_versions_applies_when_its_base_matches() {
    let mut c = synced(3, 3);
    let ops = json!([
        {"op": "replace", "path": "/counter/count", "value": 4},
        {"op": "add", "path": "/todos", "value": {"items": []}},
        {"op": "add", "path": "/todos/items/-", "value": {"id": 1}}
    ]);
    c.handle_message(at(0), patch(E1, 3, 6, ops));
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::StateChanged { version: 6 }]
    );
    assert_eq!(
        c.state(),
        Some(&json!({"counter": {"count": 4}, "todos": {"items": [{"id": 1}]}}))
    );
}

#[test]
fn bookmark_at_current_version_changes_nothing() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), bookmark(E1, 3));
    assert!(events(&mut c).is_empty());
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.version(), Some(3));
    assert_eq!(c.state(), Some(&view(3)));
}

#[test]
fn bookmark_ahead_of_mirror_is_a_version_gap() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), bookmark(E1, 5));
    assert_eq!(
        conflicts(&events(&mut c)),
        vec![(ConflictReason::VersionGap, Some(3), 5)]
    );
    let request = only_sync(&sent(&mut c));
    assert_eq!(request.have_version, 3);
    assert_eq!(reason(&request), SyncReason::VersionGap);
}

#[test]
fn bookmark_behind_mirror_is_stale() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), bookmark(E1, 2));
    assert_eq!(
        conflicts(&events(&mut c)),
        vec![(ConflictReason::StaleMessage, Some(3), 2)]
    );
    assert!(sent(&mut c).is_empty());
}

fn assert_patch_apply_failed(patch_json: &str) {
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch_text(E1, 3, 4, patch_json, 0));
    let evs = events(&mut c);
    assert_eq!(
        conflicts(&evs),
        vec![(ConflictReason::PatchApplyFailed, Some(3), 4)],
        "{patch_json}"
    );
    assert!(
        !evs.iter()
            .any(|e| matches!(e, ClientEvent::StateChanged { .. })),
        "{patch_json}"
    );
    assert_eq!(
        c.state(),
        Some(&view(3)),
        "last good state kept: {patch_json}"
    );
    assert_eq!(c.version(), Some(3));
    let request = only_sync(&sent(&mut c));
    assert_eq!(
        request.have_version, 0,
        "the mirror is not trusted as a base"
    );
    assert_eq!(reason(&request), SyncReason::PatchApplyFailed);
}

#[test]
fn failing_patch_reports_patch_apply_failed_keeps_state_and_requests_snapshot() {
    // Missing target.
    assert_patch_apply_failed(r#"[{"op":"remove","path":"/nothing"}]"#);
    // A failed test.
    assert_patch_apply_failed(r#"[{"op":"test","path":"/counter/count","value":99}]"#);
    // Atomicity: the first operation is valid, the second fails; neither sticks.
    assert_patch_apply_failed(
        r#"[{"op":"replace","path":"/counter/count","value":4},{"op":"remove","path":"/missing"}]"#,
    );
}

#[test]
fn malformed_patch_json_is_patch_apply_failed() {
    assert_patch_apply_failed("{not json");
    assert_patch_apply_failed(r#"{"op":"add"}"#);
    assert_patch_apply_failed(r#"[{"op":"frobnicate","path":"/counter"}]"#);
}

#[test]
fn patch_whose_result_is_not_an_object_is_patch_apply_failed() {
    assert_patch_apply_failed(r#"[{"op":"replace","path":"","value":[1,2]}]"#);
    assert_patch_apply_failed(r#"[{"op":"remove","path":""}]"#);
}

#[test]
fn root_operation_leaving_an_object_is_applied() {
    let mut c = synced(3, 3);
    c.handle_message(
        at(0),
        patch(
            E1,
            3,
            4,
            json!([{"op": "replace", "path": "", "value": {"fresh": 1}}]),
        ),
    );
    assert!(conflicts(&events(&mut c)).is_empty());
    assert_eq!(c.state(), Some(&json!({"fresh": 1})));
    assert_eq!(c.version(), Some(4));
}

#[test]
fn patch_apply_failure_is_reported_even_while_a_sync_is_outstanding() {
    // Outstanding resume (have 3): a failure replaces it with a snapshot request.
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E1, 5, 6, set_count(6)));
    let gap = only_sync(&sent(&mut c));
    events(&mut c);
    c.handle_message(
        at(0),
        patch_text(E1, 3, 4, "[{\"op\":\"remove\",\"path\":\"/x\"}]", 0),
    );
    assert_eq!(
        conflicts(&events(&mut c)),
        vec![(ConflictReason::PatchApplyFailed, Some(3), 4)]
    );
    let replacement = only_sync(&sent(&mut c));
    assert_eq!(replacement.have_version, 0);
    assert_eq!(reason(&replacement), SyncReason::PatchApplyFailed);
    assert_ne!(replacement.sync_id, gap.sync_id);

    // Outstanding snapshot request (have 0): reported, but no second request.
    c.handle_message(
        at(0),
        patch_text(E1, 3, 4, "[{\"op\":\"remove\",\"path\":\"/y\"}]", 0),
    );
    assert_eq!(
        conflicts(&events(&mut c)),
        vec![(ConflictReason::PatchApplyFailed, Some(3), 4)]
    );
    assert!(sent(&mut c).is_empty());
}

#[test]
fn patch_starting_after_mirror_reports_version_gap_and_requests_resume() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E1, 4, 5, set_count(5)));
    let evs = events(&mut c);
    assert_eq!(
        conflicts(&evs),
        vec![(ConflictReason::VersionGap, Some(3), 5)]
    );
    assert_eq!(c.state(), Some(&view(3)));
    assert_eq!(c.version(), Some(3));
    let messages = sent(&mut c);
    let request = only_sync(&messages);
    assert_eq!(request.have_version, 3);
    assert_eq!(reason(&request), SyncReason::VersionGap);
    assert_ne!(request.sync_id, 0);
    assert_eq!(messages[0].header.as_ref().unwrap().epoch, E1);
    assert!(c.is_syncing());
}

#[test]
fn patch_older_than_mirror_is_stale_message() {
    let mut c = synced(5, 5);
    c.handle_message(at(0), patch(E1, 3, 4, set_count(4)));
    c.handle_message(at(0), patch(E1, 4, 5, set_count(5)));
    assert_eq!(
        conflicts(&events(&mut c)),
        vec![
            (ConflictReason::StaleMessage, Some(5), 4),
            (ConflictReason::StaleMessage, Some(5), 5)
        ]
    );
    assert_eq!(c.version(), Some(5));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn overlapping_patch_is_stale_message() {
    let mut c = synced(5, 5);
    c.handle_message(at(0), patch(E1, 4, 7, set_count(7)));
    assert_eq!(
        conflicts(&events(&mut c)),
        vec![(ConflictReason::StaleMessage, Some(5), 7)]
    );
    assert_eq!(c.state(), Some(&view(5)));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn patch_with_version_below_its_base_is_ignored_with_a_notice() {
    let mut c = synced(5, 5);
    c.handle_message(at(0), patch(E1, 5, 4, set_count(4)));
    let evs = events(&mut c);
    assert!(matches!(
        notices(&evs).as_slice(),
        [Notice::Malformed { .. }]
    ));
    assert!(conflicts(&evs).is_empty());
    assert_eq!(c.version(), Some(5));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn while_a_sync_is_outstanding_unapplicable_patches_are_dropped_without_report_or_request() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E1, 4, 5, set_count(5)));
    assert_eq!(conflicts(&events(&mut c)).len(), 1);
    assert_eq!(sync_requests(&sent(&mut c)).len(), 1);

    c.handle_message(at(0), patch(E1, 5, 6, set_count(6))); // another gap
    c.handle_message(at(0), bookmark(E1, 9)); // gap by bookmark
    c.handle_message(at(0), patch(E1, 1, 2, set_count(2))); // stale
    c.handle_message(at(0), patch(E1, 2, 6, set_count(6))); // overlap
    assert!(events(&mut c).is_empty());
    assert!(sent(&mut c).is_empty());
    assert!(c.is_syncing());

    // An applicable patch is still applied, without clearing the request.
    c.handle_message(at(0), patch(E1, 3, 4, set_count(4)));
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::StateChanged { version: 4 }]
    );
    assert!(c.is_syncing());
}

#[test]
fn sync_reply_with_matching_sync_id_clears_the_request_so_the_next_gap_is_reported() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E1, 4, 5, set_count(5)));
    let gap = only_sync(&sent(&mut c));
    events(&mut c);
    // The resume reply.
    c.handle_message(
        at(1),
        patch_text(E1, 3, 5, &set_count(5).to_string(), gap.sync_id),
    );
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::StateChanged { version: 5 }]
    );
    assert!(!c.is_syncing());
    assert_eq!(c.poll_timeout(), None);
    // A new gap is reported and requested again.
    c.handle_message(at(2), patch(E1, 7, 8, set_count(8)));
    assert_eq!(
        conflicts(&events(&mut c)),
        vec![(ConflictReason::VersionGap, Some(5), 8)]
    );
    let again = only_sync(&sent(&mut c));
    assert_eq!(again.have_version, 5);
    assert_ne!(again.sync_id, gap.sync_id);
}

#[test]
fn applied_patch_that_is_not_the_reply_leaves_the_request_outstanding() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E1, 5, 6, set_count(6)));
    let gap = only_sync(&sent(&mut c));
    c.handle_message(at(0), patch_text(E1, 3, 4, "[]", gap.sync_id + 100));
    assert!(c.is_syncing());
}

#[test]
fn stale_reply_clears_the_request() {
    // The mirror moved past the reply's base meanwhile: the reply is dropped
    // silently and the request is answered.
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E1, 5, 6, set_count(6)));
    let gap = only_sync(&sent(&mut c));
    events(&mut c);
    c.handle_message(at(0), patch(E1, 3, 4, set_count(4)));
    events(&mut c);
    c.handle_message(
        at(0),
        patch_text(E1, 3, 6, &set_count(6).to_string(), gap.sync_id),
    );
    assert!(conflicts(&events(&mut c)).is_empty());
    assert!(!c.is_syncing());
    assert_eq!(c.version(), Some(4));
}

// ---- retry ---------------------------------------------------------------

#[test]
fn unanswered_sync_request_is_retried_with_a_new_sync_id_after_the_retry_interval() {
    let mut c = new_client();
    let initial = only_sync(&sent(&mut c));
    assert_eq!(c.poll_timeout(), Some(at(0) + RETRY));
    c.handle_timeout(at(1_999));
    assert!(sent(&mut c).is_empty(), "not before the interval");
    c.handle_timeout(at(2_000));
    let retry = only_sync(&sent(&mut c));
    assert_ne!(retry.sync_id, initial.sync_id);
    assert_ne!(retry.sync_id, 0);
    assert_eq!(retry.have_version, 0);
    assert_eq!(reason(&retry), SyncReason::Retry);
    assert_eq!(c.poll_timeout(), Some(at(2_000) + RETRY));
    assert!(events(&mut c).is_empty());
    c.handle_timeout(at(4_000));
    let second = only_sync(&sent(&mut c));
    assert_ne!(second.sync_id, retry.sync_id);
}

#[test]
fn reply_to_a_replaced_request_does_not_clear_the_new_one() {
    let mut c = synced(1, 1);
    c.handle_message(at(0), patch(E1, 3, 4, set_count(4)));
    let first = only_sync(&sent(&mut c));
    c.handle_timeout(at(2_000));
    let retry = only_sync(&sent(&mut c));
    c.handle_message(
        at(2_001),
        patch_text(E1, 1, 4, &set_count(4).to_string(), first.sync_id),
    );
    assert_eq!(c.version(), Some(4), "an applicable patch is applied");
    assert!(
        c.is_syncing(),
        "but it answers a request no longer outstanding"
    );
    c.handle_message(at(2_002), patch_text(E1, 4, 4, "[]", retry.sync_id));
    assert!(!c.is_syncing());
}

#[test]
fn retry_of_a_resume_asks_from_the_mirror_current_version() {
    let mut c = synced(1, 1);
    c.handle_message(at(0), patch(E1, 3, 4, set_count(4)));
    assert_eq!(only_sync(&sent(&mut c)).have_version, 1);
    // Applicable patches move the mirror on while the request is unanswered.
    c.handle_message(at(10), patch(E1, 1, 2, set_count(2)));
    c.handle_timeout(at(2_000));
    let retry = only_sync(&sent(&mut c));
    assert_eq!(reason(&retry), SyncReason::Retry);
    assert_eq!(retry.have_version, 2);
}

#[test]
fn retry_of_a_snapshot_request_keeps_asking_for_version_zero() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E2, 1, 2, set_count(2)));
    assert_eq!(only_sync(&sent(&mut c)).have_version, 0);
    c.handle_timeout(at(2_000));
    let retry = only_sync(&sent(&mut c));
    assert_eq!(retry.have_version, 0);
    assert_eq!(reason(&retry), SyncReason::Retry);
}

/// L5: a request a driver still holds (no link yet) has gone unsent, not
/// unanswered: it goes out as it stands once it can, INITIAL included.
#[test]
fn a_request_still_unsent_is_not_retried_and_goes_out_as_it_stands() {
    let mut c = new_client();
    c.handle_timeout(at(2_000));
    let waits = c.poll_timeout().expect("its interval starts again");
    assert!(waits > at(2_000), "no deadline already passed: {waits:?}");
    let request = only_sync(&sent(&mut c));
    assert_eq!(reason(&request), SyncReason::Initial);
    assert_eq!(request.sync_id, 1);
    // Sent and unanswered for the interval, it is retried.
    c.handle_timeout(waits);
    let retry = only_sync(&sent(&mut c));
    assert_eq!(reason(&retry), SyncReason::Retry);
    assert_ne!(retry.sync_id, request.sync_id);
}

// ---- results and read-your-writes ----------------------------------------

#[test]
fn result_at_or_below_the_mirror_version_settles_at_once() {
    let mut c = synced(3, 3);
    let a = sent_call(&mut c);
    let b = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E1, a, 3, json!("done")));
    c.handle_message(at(0), ok_result(E1, b, 2, json!(null)));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![
            (a, Ok(json!("done")), Some(3)),
            (b, Ok(json!(null)), Some(2))
        ]
    );
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.pending_calls(), 0);
}

#[test]
fn result_ahead_of_the_mirror_is_held_requests_sync_and_settles_when_mirror_reaches_it() {
    let mut c = synced(3, 3);
    let id = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E1, id, 5, json!(5)));
    assert!(settlements(&events(&mut c)).is_empty());
    let request = only_sync(&sent(&mut c));
    assert_eq!(request.have_version, 3);
    assert_eq!(reason(&request), SyncReason::ResultAhead);

    c.handle_message(at(1), patch(E1, 3, 4, set_count(4)));
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::StateChanged { version: 4 }],
        "not yet at 5"
    );
    c.handle_message(at(2), patch(E1, 4, 5, set_count(5)));
    assert_eq!(
        events(&mut c),
        vec![
            ClientEvent::StateChanged { version: 5 },
            ClientEvent::Settled {
                call: id,
                outcome: Ok(json!(5)),
                state_version: Some(5),
                sent: true,
            }
        ],
        "the state change is visible before the call settles"
    );
    assert_eq!(c.state(), Some(&view(5)));
}

#[test]
fn error_result_ahead_of_the_mirror_is_held_like_a_value() {
    let mut c = synced(3, 3);
    let id = sent_call(&mut c);
    c.handle_message(at(0), err_result(E1, id, 4, ErrorCode::Failed, "no luck"));
    assert!(settlements(&events(&mut c)).is_empty());
    assert_eq!(reason(&only_sync(&sent(&mut c))), SyncReason::ResultAhead);
    c.handle_message(at(1), snapshot(E1, 4, view(4), 0));
    let evs = events(&mut c);
    let error = settled_error(&evs, id);
    assert_eq!(error.code, ErrorCode::Failed);
    assert_eq!(error.message, "no luck");
    assert_eq!(
        settlements(&evs),
        vec![(id, Err(ErrorCode::Failed), Some(4))]
    );
}

#[test]
fn result_ahead_while_a_sync_is_outstanding_sends_no_second_request() {
    let mut c = synced(3, 3);
    let id = sent_call(&mut c);
    c.handle_message(at(0), patch(E1, 5, 6, set_count(6)));
    sent(&mut c);
    c.handle_message(at(0), ok_result(E1, id, 6, json!(6)));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn result_never_settles_while_the_mirror_is_empty_and_settles_after_the_snapshot() {
    let mut c = new_client();
    let initial = only_sync(&sent(&mut c));
    let a = sent_call(&mut c);
    let b = sent_call(&mut c);
    // Whatever state_version it names, even 0.
    c.handle_message(at(0), ok_result(E1, a, 0, json!("a")));
    c.handle_message(at(0), ok_result(E1, b, 1, json!("b")));
    assert!(settlements(&events(&mut c)).is_empty());
    assert_eq!(c.pending_calls(), 2);
    c.handle_message(at(1), snapshot(E1, 1, view(0), initial.sync_id));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(a, Ok(json!("a")), Some(0)), (b, Ok(json!("b")), Some(1))]
    );
}

#[test]
fn call_made_without_a_mirror_binds_to_the_epoch_of_its_result() {
    // The result binds the call to E1; a first snapshot of another epoch then
    // means the call's epoch vanished: outcome-unknown, not a hang.
    let mut c = new_client();
    let initial = only_sync(&sent(&mut c));
    let id = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E1, id, 2, json!(1)));
    c.handle_message(at(1), snapshot(E2, 7, view(0), initial.sync_id));
    let evs = events(&mut c);
    assert_eq!(
        settlements(&evs),
        vec![(id, Err(ErrorCode::OutcomeUnknown), None)]
    );
    assert_eq!(c.pending_calls(), 0);
}

#[test]
fn call_made_without_a_mirror_binds_to_the_first_snapshot_epoch() {
    let mut c = new_client();
    let initial = only_sync(&sent(&mut c));
    let id = sent_call(&mut c);
    c.handle_message(at(0), snapshot(E1, 1, view(0), initial.sync_id));
    events(&mut c);
    c.handle_message(at(1), ok_result(E2, id, 1, json!(1)));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(id, Err(ErrorCode::OutcomeUnknown), None)]
    );
}

#[test]
fn results_made_eligible_by_one_update_settle_in_arrival_order() {
    let mut c = synced(1, 1);
    let first = sent_call(&mut c);
    let second = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E1, second, 3, json!("second")));
    c.handle_message(at(0), ok_result(E1, first, 2, json!("first")));
    sent(&mut c);
    c.handle_message(at(1), snapshot(E1, 3, view(3), 0));
    let evs = events(&mut c);
    assert_eq!(evs[0], ClientEvent::StateChanged { version: 3 });
    assert_eq!(
        settlements(&evs),
        vec![
            (second, Ok(json!("second")), Some(3)),
            (first, Ok(json!("first")), Some(2))
        ]
    );
}

#[test]
fn result_for_an_unknown_call_is_an_unexpected_result_notice_and_changes_nothing() {
    let mut c = synced(3, 3);
    let id = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E1, CallId(999), 9, json!(1)));
    let evs = events(&mut c);
    assert_eq!(
        evs,
        vec![ClientEvent::Notice(Notice::UnexpectedResult {
            call_id: 999
        })]
    );
    assert!(
        sent(&mut c).is_empty(),
        "no result-ahead sync for a stranger"
    );
    assert_eq!(c.pending_calls(), 1);
    assert_eq!(c.version(), Some(3));
    c.handle_message(at(0), ok_result(E1, id, 3, json!(4)));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(id, Ok(json!(4)), Some(3))]
    );
}

#[test]
fn duplicate_result_is_an_unexpected_result_notice() {
    let mut c = synced(3, 3);
    let held = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E1, held, 5, json!("first")));
    sent(&mut c);
    events(&mut c);
    // A second result while the first is held.
    c.handle_message(at(0), ok_result(E1, held, 4, json!("second")));
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::Notice(Notice::UnexpectedResult {
            call_id: held.0
        })]
    );
    c.handle_message(at(0), snapshot(E1, 5, view(5), 0));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(held, Ok(json!("first")), Some(5))],
        "the first result stands"
    );
    // And after settling.
    c.handle_message(at(0), ok_result(E1, held, 5, json!("third")));
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::Notice(Notice::UnexpectedResult {
            call_id: held.0
        })]
    );
    assert!(sent(&mut c).is_empty());
}

#[test]
fn a_result_for_a_call_not_yet_sent_is_unexpected_and_the_call_is_still_sent() {
    // No host can answer a call it never received (R1): such a result is
    // forged, and must neither settle the call nor keep it from being sent.
    let mut c = synced(3, 3);
    let id = c.call("counter", "increase", &[json!(1)], None).unwrap();
    c.handle_message(at(0), ok_result(E1, id, 3, json!("forged")));
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::Notice(Notice::UnexpectedResult {
            call_id: id.0
        })]
    );
    assert_eq!(sent_calls(&sent(&mut c)).len(), 1, "the call is still sent");
    c.handle_message(at(0), ok_result(E1, id, 3, json!(4)));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(id, Ok(json!(4)), Some(3))]
    );
}

#[test]
fn result_from_another_epoch_than_the_call_is_bound_to_settles_outcome_unknown() {
    let mut c = synced(3, 3);
    let id = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E2, id, 1, json!(1)));
    let evs = events(&mut c);
    assert_eq!(
        settlements(&evs),
        vec![(id, Err(ErrorCode::OutcomeUnknown), None)]
    );
    assert_eq!(c.epoch(), Some(E1), "a result never moves the mirror");
    assert!(sent(&mut c).is_empty());
}

#[test]
fn result_with_malformed_value_settles_internal() {
    let mut c = synced(3, 3);
    let id = sent_call(&mut c);
    c.handle_message(
        at(0),
        result(
            E1,
            id,
            3,
            call_result::Outcome::ValueJson("{oops".to_owned()),
        ),
    );
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(id, Err(ErrorCode::Internal), Some(3))]
    );
}

// ---- deadlines, cancel, dispose ------------------------------------------

#[test]
fn deadline_settles_deadline_exceeded_exactly_once_and_a_later_result_is_ignored() {
    let mut c = synced(3, 3);
    let id = c
        .call("counter", "increase", &[json!(1)], Some(at(500)))
        .unwrap();
    sent(&mut c);
    assert_eq!(c.poll_timeout(), Some(at(500)));
    c.handle_timeout(at(499));
    assert!(events(&mut c).is_empty());
    c.handle_timeout(at(500));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(id, Err(ErrorCode::DeadlineExceeded), None)]
    );
    assert_eq!(c.poll_timeout(), None);
    c.handle_timeout(at(10_000));
    assert!(events(&mut c).is_empty());
    c.handle_message(at(600), ok_result(E1, id, 3, json!(4)));
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::Notice(Notice::UnexpectedResult {
            call_id: id.0
        })]
    );
}

#[test]
fn deadline_of_an_unsent_call_withdraws_it() {
    let mut c = synced(3, 3);
    let id = c
        .call("counter", "increase", &[json!(1)], Some(at(100)))
        .unwrap();
    c.handle_timeout(at(100));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(id, Err(ErrorCode::DeadlineExceeded), None)]
    );
    assert!(sent(&mut c).is_empty());
}

#[test]
fn deadline_applies_to_a_held_result() {
    let mut c = synced(3, 3);
    let id = c
        .call("counter", "increase", &[json!(1)], Some(at(100)))
        .unwrap();
    sent(&mut c);
    c.handle_message(at(0), ok_result(E1, id, 9, json!(9)));
    events(&mut c);
    c.handle_timeout(at(100));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(id, Err(ErrorCode::DeadlineExceeded), None)]
    );
    c.handle_message(at(200), snapshot(E1, 9, view(9), 0));
    assert!(settlements(&events(&mut c)).is_empty());
}

#[test]
fn poll_timeout_is_the_earliest_of_deadlines_and_sync_retry() {
    let mut c = new_client();
    sent(&mut c);
    c.call("counter", "increase", &[json!(1)], Some(at(3_000)))
        .unwrap();
    assert_eq!(c.poll_timeout(), Some(at(2_000)));
    c.call("counter", "increase", &[json!(1)], Some(at(700)))
        .unwrap();
    assert_eq!(c.poll_timeout(), Some(at(700)));
}

#[test]
fn a_sync_retry_interval_under_100_ms_is_taken_as_100_ms() {
    for retry in [Duration::ZERO, Duration::from_millis(99)] {
        let mut c = ClientCore::new(
            ClientConfig {
                sync_retry: retry,
                ..config()
            },
            at(0),
        );
        sent(&mut c);
        assert_eq!(c.poll_timeout(), Some(at(100)), "{retry:?}");
        // Nothing is sent again before then.
        c.handle_timeout(at(99));
        assert!(sent(&mut c).is_empty(), "{retry:?}");
        c.handle_timeout(at(100));
        assert_eq!(sync_requests(&sent(&mut c)).len(), 1, "{retry:?}");
    }
}

#[test]
fn cancel_settles_cancelled_and_an_unsent_call_is_never_sent() {
    let mut c = synced(3, 3);
    let id = c.call("counter", "increase", &[json!(1)], None).unwrap();
    assert!(c.cancel(id));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(id, Err(ErrorCode::Cancelled), None)]
    );
    assert!(sent(&mut c).is_empty());
    assert!(!c.cancel(id), "already settled");
    assert!(events(&mut c).is_empty());
}

#[test]
fn cancelled_sent_call_ignores_its_later_result() {
    let mut c = synced(3, 3);
    let id = sent_call(&mut c);
    assert!(c.cancel(id));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(id, Err(ErrorCode::Cancelled), None)]
    );
    c.handle_message(at(0), ok_result(E1, id, 3, json!(4)));
    assert_eq!(
        events(&mut c),
        vec![ClientEvent::Notice(Notice::UnexpectedResult {
            call_id: id.0
        })]
    );
}

#[test]
fn dispose_settles_every_pending_call_disposed_and_refuses_later_calls() {
    let mut c = synced(3, 3);
    let queued = c.call("counter", "increase", &[json!(1)], None).unwrap();
    let mut calls = vec![queued];
    let in_flight = sent_call(&mut c);
    calls.push(in_flight);
    let held = sent_call(&mut c);
    calls.push(held);
    c.handle_message(at(0), ok_result(E1, held, 7, json!(7)));
    events(&mut c);
    c.dispose();
    assert!(c.is_disposed());
    let mut settled = settlements(&events(&mut c));
    settled.sort_by_key(|s| s.0);
    assert_eq!(
        settled,
        calls
            .iter()
            .map(|id| (*id, Err(ErrorCode::Disposed), None))
            .collect::<Vec<_>>()
    );
    assert!(sent(&mut c).is_empty(), "nothing is sent after disposal");
    assert_eq!(c.poll_timeout(), None);
    let refused = c.call("counter", "increase", &[json!(1)], None);
    assert_eq!(refused, Err(ClientError::Disposed));
    assert_eq!(
        MethodError::from(refused.unwrap_err()).code,
        ErrorCode::Disposed
    );
    c.handle_message(at(0), snapshot(E1, 7, view(7), 0));
    c.handle_timeout(at(60_000));
    c.reconnected(at(60_000));
    c.dispose();
    assert!(events(&mut c).is_empty());
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.version(), Some(3));
}

// ---- connection loss and reconnect ---------------------------------------

#[test]
fn connection_lost_settles_sent_calls_outcome_unknown_and_keeps_queued_calls_and_held_results() {
    let mut c = synced(3, 3);
    let in_flight = sent_call(&mut c);
    let held = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E1, held, 5, json!("held")));
    sent(&mut c);
    let queued = c.call("counter", "increase", &[json!(2)], None).unwrap();
    events(&mut c);

    c.connection_lost();
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(in_flight, Err(ErrorCode::OutcomeUnknown), None)]
    );
    assert!(!c.is_syncing());
    assert_eq!(c.pending_calls(), 2);

    c.reconnected(at(100));
    let messages = sent(&mut c);
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let Some(client_message::Kind::SyncRequest(request)) = &messages[0].kind else {
        panic!("the sync request goes first: {messages:#?}");
    };
    assert_eq!(request.have_version, 3);
    assert_eq!(reason(request), SyncReason::Reconnect);
    assert_eq!(sent_calls(&messages[1..])[0].call_id, queued.0);

    c.handle_message(at(200), snapshot(E1, 5, view(5), request.sync_id));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(held, Ok(json!("held")), Some(5))]
    );
    assert_eq!(c.pending_calls(), 1);
}

#[test]
fn envelopes_lost_settles_unanswered_calls_outcome_unknown_and_asks_to_resume_at_once() {
    let mut c = synced(3, 3);
    let in_flight = sent_call(&mut c);
    let queued = c.call("counter", "increase", &[json!(2)], None).unwrap();
    events(&mut c);

    c.envelopes_lost(at(10), 4);
    let evs = events(&mut c);
    assert_eq!(notices(&evs), vec![Notice::EnvelopesLost { count: 4 }]);
    assert_eq!(
        settlements(&evs),
        vec![(in_flight, Err(ErrorCode::OutcomeUnknown), None)]
    );
    assert_eq!(c.pending_calls(), 1, "the queued call was never sent");

    // The link is still up: the resume request goes first, then the call.
    let messages = sent(&mut c);
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let Some(client_message::Kind::SyncRequest(request)) = &messages[0].kind else {
        panic!("the sync request goes first: {messages:#?}");
    };
    assert_eq!(request.have_version, 3);
    assert_eq!(reason(request), SyncReason::VersionGap);
    assert_eq!(sent_calls(&messages[1..])[0].call_id, queued.0);

    c.handle_message(
        at(20),
        patch_text(E1, 3, 5, &set_count(5).to_string(), request.sync_id),
    );
    assert_eq!(c.version(), Some(5));
    assert!(!c.is_syncing());
}

#[test]
fn envelopes_lost_keeps_held_results_and_an_outstanding_sync_request() {
    let mut c = synced(3, 3);
    let held = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E1, held, 5, json!("held")));
    let request = only_sync(&sent(&mut c));
    assert_eq!(reason(&request), SyncReason::ResultAhead);
    events(&mut c);

    c.envelopes_lost(at(10), 1);
    assert!(settlements(&events(&mut c)).is_empty());
    assert!(sent(&mut c).is_empty(), "the outstanding request stands");
    assert_eq!(
        c.poll_timeout(),
        Some(at(0) + RETRY),
        "and is retried as before"
    );

    c.handle_message(at(20), snapshot(E1, 5, view(5), request.sync_id));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(held, Ok(json!("held")), Some(5))]
    );
}

#[test]
fn envelopes_lost_after_disposal_or_before_the_first_snapshot_sends_nothing_new() {
    let mut c = new_client();
    let initial = only_sync(&sent(&mut c));
    c.envelopes_lost(at(10), 2);
    assert_eq!(
        notices(&events(&mut c)),
        vec![Notice::EnvelopesLost { count: 2 }]
    );
    assert!(sent(&mut c).is_empty(), "the initial request stands");
    c.handle_message(at(20), snapshot(E1, 1, view(1), initial.sync_id));
    assert_eq!(c.version(), Some(1));

    c.dispose();
    events(&mut c);
    c.envelopes_lost(at(30), 2);
    assert!(events(&mut c).is_empty());
    assert!(sent(&mut c).is_empty());
}

#[test]
fn reconnect_without_a_mirror_asks_for_a_snapshot() {
    let mut c = new_client();
    sent(&mut c);
    c.connection_lost();
    c.reconnected(at(10));
    let request = only_sync(&sent(&mut c));
    assert_eq!(request.have_version, 0);
    assert_eq!(reason(&request), SyncReason::Reconnect);
    assert!(c.is_syncing());
    assert_eq!(c.poll_timeout(), Some(at(10) + RETRY));
}

#[test]
fn connection_lost_drops_an_unsent_sync_request_and_stops_retrying() {
    let mut c = synced(3, 3);
    c.handle_message(at(0), patch(E1, 5, 6, set_count(6)));
    c.connection_lost();
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), None);
    c.handle_timeout(at(10_000));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn a_gap_seen_while_disconnected_runs_no_retry_timer_and_reconnecting_asks_once() {
    // A buffered envelope can arrive after the link broke (L5: the retry
    // runs only while connected; L7 asks afresh).
    let mut c = synced(3, 3);
    c.connection_lost();
    c.handle_message(at(0), patch(E1, 5, 6, set_count(6)));
    assert_eq!(
        conflicts(&events(&mut c)),
        vec![(ConflictReason::VersionGap, Some(3), 6)]
    );
    assert_eq!(c.poll_timeout(), None, "no retry is due while disconnected");
    c.handle_timeout(at(10_000));
    assert!(sent(&mut c).is_empty());
    c.reconnected(at(10_000));
    let request = only_sync(&sent(&mut c));
    assert_eq!(
        (reason(&request), request.have_version),
        (SyncReason::Reconnect, 3)
    );
    assert_eq!(
        c.poll_timeout(),
        Some(at(12_000)),
        "retried from the reconnect on"
    );
}

// ---- envelope pre-checks -------------------------------------------------

#[test]
fn messages_for_another_peer_from_another_host_or_with_a_wrong_capability_are_ignored() {
    let mut c = ClientCore::new(
        ClientConfig {
            host_id: "host".to_owned(),
            capability: "cap".to_owned(),
            ..config()
        },
        at(0),
    );
    let initial = only_sync(&sent(&mut c));
    let with = |mut m: HostMessage, f: &dyn Fn(&mut Header)| {
        let header = m.header.as_mut().unwrap();
        header.capability = "cap".to_owned();
        f(header);
        m
    };
    let reply = snapshot(E1, 3, view(3), initial.sync_id);
    let foreign = [
        with(reply.clone(), &|h| h.target = "someone-else".to_owned()),
        with(reply.clone(), &|h| h.source = "impostor".to_owned()),
        with(reply.clone(), &|h| h.capability = "wrong".to_owned()),
        with(reply.clone(), &|h| h.capability = String::new()),
    ];
    for m in foreign {
        c.handle_message(at(0), m);
        assert!(events(&mut c).is_empty(), "silently ignored");
        assert!(!c.is_ready());
        assert!(c.is_syncing());
    }
    // The same envelope, properly addressed, is accepted.
    c.handle_message(at(0), with(reply, &|_| {}));
    assert!(c.is_ready());
    assert_eq!(c.version(), Some(3));
}

#[test]
fn publication_with_empty_target_reaches_every_client() {
    let mut c = synced(3, 3);
    let mut m = patch(E1, 3, 4, set_count(4));
    m.header.as_mut().unwrap().target = String::new();
    c.handle_message(at(0), m);
    assert_eq!(c.version(), Some(4));
}

#[test]
fn message_of_another_protocol_version_is_ignored_with_a_notice() {
    let mut c = synced(3, 3);
    let id = sent_call(&mut c);
    for kind in [
        patch(E1, 3, 4, set_count(4)),
        snapshot(E1, 9, view(9), 0),
        ok_result(E1, id, 3, json!(1)),
    ] {
        let mut m = kind;
        m.header.as_mut().unwrap().protocol_version = 2;
        c.handle_message(at(0), m);
        let evs = events(&mut c);
        assert!(
            matches!(notices(&evs).as_slice(), [Notice::Malformed { .. }]),
            "{evs:#?}"
        );
        assert_eq!(evs.len(), 1);
    }
    assert_eq!(c.version(), Some(3));
    assert_eq!(c.pending_calls(), 1);
    assert!(sent(&mut c).is_empty());
}

#[test]
fn message_without_header_or_kind_is_ignored_with_a_notice() {
    let mut c = synced(3, 3);
    c.handle_message(
        at(0),
        HostMessage {
            header: Some(Header::v1(E1, "host", "")),
            kind: None,
        },
    );
    c.handle_message(
        at(0),
        HostMessage {
            header: None,
            kind: patch(E1, 3, 4, set_count(4)).kind,
        },
    );
    let evs = events(&mut c);
    assert_eq!(notices(&evs).len(), 2, "{evs:#?}");
    assert!(
        notices(&evs)
            .iter()
            .all(|n| matches!(n, Notice::Malformed { .. }))
    );
    assert_eq!(c.version(), Some(3));
}

// ---- local limits --------------------------------------------------------

#[test]
fn max_calls_in_flight_is_enforced_locally() {
    let mut c = ClientCore::new(
        ClientConfig {
            max_calls_in_flight: 2,
            ..config()
        },
        at(0),
    );
    sent(&mut c);
    let a = c.call("counter", "increase", &[json!(1)], None).unwrap();
    c.call("counter", "increase", &[json!(1)], None).unwrap();
    let refused = c.call("counter", "increase", &[json!(1)], None);
    assert_eq!(refused, Err(ClientError::TooManyCalls { limit: 2 }));
    assert_eq!(
        MethodError::from(refused.unwrap_err()).code,
        ErrorCode::ResourceExhausted
    );
    assert_eq!(
        sent_calls(&sent(&mut c)).len(),
        2,
        "the refused call is not sent"
    );
    assert!(c.cancel(a));
    assert!(c.call("counter", "increase", &[json!(1)], None).is_ok());
}

#[test]
fn calls_carry_their_module_method_and_arguments() {
    let mut c = synced(3, 3);
    let id = c.call("todos", "add", &[json!("milk")], None).unwrap();
    let calls = sent_calls(&sent(&mut c));
    assert_eq!(
        calls,
        vec![Call {
            call_id: id.0,
            module: "todos".to_owned(),
            method: "add".to_owned(),
            args_json: "[\"milk\"]".to_owned(),
        }]
    );
    assert_ne!(id.0, 0);
    let next = c.call("todos", "clear", &[], None).unwrap();
    assert!(next.0 > id.0, "call ids are new for every call");
}

// ---- every call settles exactly once -------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Call {
        deadline_ms: Option<u64>,
    },
    Transmit,
    Result {
        pick: usize,
        other_epoch: bool,
        ahead: u64,
        error: bool,
    },
    Snapshot {
        other_epoch: bool,
        ahead: u64,
    },
    Patch {
        ahead: u64,
    },
    Advance {
        ms: u64,
    },
    Cancel {
        pick: usize,
    },
    ConnectionLost,
    Reconnected,
    Dispose,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => proptest::option::of(0u64..3_000).prop_map(|deadline_ms| Op::Call { deadline_ms }),
        15 => Just(Op::Transmit),
        20 => (any::<usize>(), proptest::bool::weighted(0.15), 0u64..3, any::<bool>())
            .prop_map(|(pick, other_epoch, ahead, error)| Op::Result { pick, other_epoch, ahead, error }),
        10 => (proptest::bool::weighted(0.2), 0u64..3)
            .prop_map(|(other_epoch, ahead)| Op::Snapshot { other_epoch, ahead }),
        10 => (0u64..2).prop_map(|ahead| Op::Patch { ahead }),
        10 => (0u64..1_500).prop_map(|ms| Op::Advance { ms }),
        5 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        4 => Just(Op::ConnectionLost),
        4 => Just(Op::Reconnected),
        1 => Just(Op::Dispose),
    ]
}

/// Counts every settlement reported since the last drain.
fn record(c: &mut ClientCore, settled: &mut BTreeMap<CallId, usize>) {
    for e in events(c) {
        if let ClientEvent::Settled { call, .. } = e {
            *settled.entry(call).or_default() += 1;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_call_settles_exactly_once(ops in proptest::collection::vec(op(), 0..60)) {
        let mut c = new_client();
        let mut now = 0u64;
        let mut epoch = E1;
        let mut calls: Vec<CallId> = Vec::new();
        let mut settled: BTreeMap<CallId, usize> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Call { deadline_ms } => {
                    if let Ok(id) = c.call("m", "f", &[], deadline_ms.map(|d| at(now + d))) {
                        prop_assert!(!calls.contains(&id));
                        calls.push(id);
                    } else {
                        prop_assert!(c.is_disposed());
                    }
                }
                Op::Transmit => {
                    for m in sent(&mut c) {
                        if let Some(client_message::Kind::Call(call)) = m.kind {
                            prop_assert!(
                                !settled.contains_key(&CallId(call.call_id)),
                                "a settled call was sent"
                            );
                        }
                    }
                }
                Op::Result { pick, other_epoch, ahead, error } => {
                    if !calls.is_empty() {
                        let id = calls[pick % calls.len()];
                        let e = if other_epoch { if epoch == E1 { E2 } else { E1 } } else { epoch };
                        let sv = c.version().unwrap_or(1) + ahead;
                        let m = if error {
                            err_result(e, id, sv, ErrorCode::Failed, "no")
                        } else {
                            ok_result(e, id, sv, json!(sv))
                        };
                        c.handle_message(at(now), m);
                    }
                }
                Op::Snapshot { other_epoch, ahead } => {
                    if other_epoch {
                        epoch = if epoch == E1 { E2 } else { E1 };
                    }
                    let v = c.version().filter(|_| !other_epoch).unwrap_or(1) + ahead;
                    c.handle_message(at(now), snapshot(epoch, v, view(v as i64), 0));
                }
                Op::Patch { ahead } => {
                    if let Some(v) = c.version() {
                        let base = v + ahead;
                        c.handle_message(at(now), patch(epoch, base, base + 1, set_count(0)));
                    }
                }
                Op::Advance { ms } => {
                    now += ms;
                    c.handle_timeout(at(now));
                }
                Op::Cancel { pick } => {
                    if !calls.is_empty() {
                        c.cancel(calls[pick % calls.len()]);
                    }
                }
                Op::ConnectionLost => c.connection_lost(),
                Op::Reconnected => c.reconnected(at(now)),
                Op::Dispose => c.dispose(),
            }
            record(&mut c, &mut settled);
            prop_assert!(settled.values().all(|n| *n == 1), "settled twice: {settled:?}");
            prop_assert!(settled.keys().all(|id| calls.contains(id)));
            prop_assert_eq!(c.pending_calls(), calls.len() - settled.len());
        }
        c.dispose();
        record(&mut c, &mut settled);
        for id in &calls {
            prop_assert_eq!(settled.get(id), Some(&1), "{:?} settled {:?} times", id, settled.get(id));
        }
        prop_assert_eq!(settled.len(), calls.len());
    }
}

#[test]
fn held_result_still_ahead_after_an_earlier_sync_reply_re_requests_result_ahead() {
    // Q1: the sync request was made before the result arrived, so its reply
    // may stop short of the result's version; the client asks again at once.
    let mut c = synced(1, 0);
    let id = sent_call(&mut c);
    c.handle_message(at(0), patch_text(E1, 5, 6, "[]", 0));
    let gap = only_sync(&sent(&mut c));
    assert_eq!(reason(&gap), SyncReason::VersionGap);
    c.handle_message(at(0), ok_result(E1, id, 3, json!(1)));
    assert!(
        sync_requests(&sent(&mut c)).is_empty(),
        "RS4: one outstanding"
    );
    c.handle_message(at(0), patch_text(E1, 1, 2, "[]", gap.sync_id));
    let again = only_sync(&sent(&mut c));
    assert_eq!(reason(&again), SyncReason::ResultAhead);
    assert_eq!(again.have_version, 2);
    assert!(settlements(&events(&mut c)).is_empty());
}

#[test]
fn a_result_beyond_the_reply_to_a_later_sync_request_settles_internal_without_asking_again() {
    // Q2: the request went out after the result arrived, so a conforming
    // host's reply reaches the result's version; this one does not.
    let mut c = synced(1, 0);
    let id = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E1, id, 100, json!(1)));
    let first = only_sync(&sent(&mut c));
    assert_eq!(reason(&first), SyncReason::ResultAhead);
    c.handle_message(at(0), patch_text(E1, 1, 2, "[]", first.sync_id));
    assert!(sync_requests(&sent(&mut c)).is_empty());
    let message = events(&mut c).into_iter().find_map(|e| match e {
        ClientEvent::Settled {
            outcome: Err(error),
            ..
        } => Some(error),
        _ => None,
    });
    let error = message.expect("the call settled with an error");
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(error.message.contains("version 100"), "{error}");
    assert_eq!(c.pending_calls(), 0);
}

#[test]
fn no_result_ahead_request_is_made_while_disconnected() {
    let mut c = synced(1, 0);
    let id = sent_call(&mut c);
    c.handle_message(at(0), ok_result(E1, id, 3, json!(1)));
    let first = only_sync(&sent(&mut c));
    c.connection_lost();
    c.handle_message(at(0), patch_text(E1, 1, 2, "[]", first.sync_id));
    assert!(sync_requests(&sent(&mut c)).is_empty());
}

#[test]
fn a_call_too_large_to_send_is_refused_locally_and_nothing_is_sent() {
    let mut c = ClientCore::new(
        ClientConfig {
            max_message_bytes: 1024,
            ..config()
        },
        at(0),
    );
    sent(&mut c);
    let big = "x".repeat(2000);
    let err = c.call("todos", "add", &[json!(big)], None).unwrap_err();
    assert!(
        matches!(err, ClientError::CallTooLarge { limit: 1024, .. }),
        "{err:?}"
    );
    assert_eq!(MethodError::from(err).code, ErrorCode::ResourceExhausted);
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.pending_calls(), 0);
    // A call that fits still goes out.
    c.call("todos", "add", &[json!("small")], None).unwrap();
    assert_eq!(sent_calls(&sent(&mut c)).len(), 1);
}

/// A Call made before the first snapshot leaves with the host's epoch, up
/// to 1024 bytes the client did not measure: at the default limit, which
/// equals the host's, it is measured as if it had the longest (L2).
#[test]
fn a_call_made_before_the_hosts_epoch_is_known_leaves_room_for_it() {
    let limit = ClientConfig::default().max_message_bytes;
    let mut c = new_client();
    let first = only_sync(&sent(&mut c));
    // Arguments that bring the Call to about 100 bytes under the limit as
    // it would be sent now, with no epoch (a few more bytes of length
    // prefixes come with the longer text).
    let probe =
        |c: &mut ClientCore, len: usize| c.call("todos", "add", &[json!("x".repeat(len))], None);
    let id = probe(&mut c, 1000).unwrap();
    let one_thousand = sent(&mut c)[0].encoded_len();
    let len = 1000 + (limit - 100 - one_thousand);
    let err = probe(&mut c, len).unwrap_err();
    assert!(
        matches!(err, ClientError::CallTooLarge { size, limit: l } if l == limit && size > limit),
        "{err:?}"
    );
    assert!(sent(&mut c).is_empty());
    // Under the 1 MiB every host accepts, the margin plays no part, and a
    // call over the limit is told its real size.
    // (Envelopes under 128 bytes, so that no length prefix grows.)
    let mut small = ClientCore::new(
        ClientConfig {
            max_message_bytes: 80,
            ..config()
        },
        at(0),
    );
    sent(&mut small);
    let first_small = probe(&mut small, 20).unwrap();
    let real = sent(&mut small)[0].encoded_len() + 40;
    assert!(small.cancel(first_small));
    let err = probe(&mut small, 60).unwrap_err();
    assert!(
        matches!(err, ClientError::CallTooLarge { size, limit: 80 } if size == real),
        "{err:?}, expected a size of {real}"
    );
    // Once the epoch is known, the same call is measured as it is sent.
    c.handle_message(at(1), snapshot(E1, 1, json!({}), first.sync_id));
    while c.poll_event().is_some() {}
    assert!(c.cancel(id));
    probe(&mut c, len).unwrap();
    assert_eq!(sent_calls(&sent(&mut c)).len(), 1);
}

/// Every patch may shift 2^24 array elements on its own (§15), about 20 ms
/// of work whatever its size; a client keeps a credit across patches so
/// that a stream of small ones cannot each spend all of it. What the
/// credit refuses at one instant, it allows a second later.
#[test]
fn small_patches_cannot_each_shift_the_whole_per_patch_floor() {
    let mut c = new_client();
    c.handle_message(at(1), snapshot(E1, 1, json!({"a": vec![0; 1 << 18]}), 0));
    while c.poll_event().is_some() {}
    // 60 removals and insertions at the front: 60 × 2^18 ≈ 15.7 M shifts,
    // within one patch's 2^24.
    let churn: Vec<Value> = (0..30)
        .flat_map(|_| {
            [
                json!({"op": "remove", "path": "/a/0"}),
                json!({"op": "add", "path": "/a/0", "value": 0}),
            ]
        })
        .collect();
    let conflicts = |c: &mut ClientCore| {
        std::iter::from_fn(|| c.poll_event())
            .filter(|e| matches!(e, ClientEvent::Conflict(_)))
            .count()
    };
    c.handle_message(at(1_000), patch(E1, 1, 2, Value::Array(churn.clone())));
    assert_eq!(conflicts(&mut c), 0, "the first patch is within the credit");
    c.handle_message(at(1_000), patch(E1, 2, 3, Value::Array(churn.clone())));
    assert_eq!(conflicts(&mut c), 1, "the second, at once, is not");
    assert_eq!(c.version(), Some(2));
    c.handle_message(at(3_000), patch(E1, 2, 3, Value::Array(churn)));
    assert_eq!(conflicts(&mut c), 0, "two seconds later it is again");
    assert_eq!(c.version(), Some(3));
}

/// However much credit has built up, one patch may shift no more than the
/// per-patch limit of §15: max(2^24, 4 × its length) elements.
#[test]
fn one_patch_shifts_no_more_than_the_per_patch_limit_whatever_the_credit() {
    let mut c = new_client();
    c.handle_message(at(1), snapshot(E1, 1, json!({"a": vec![0; 1 << 20]}), 0));
    while c.poll_event().is_some() {}
    // 16 insertions at the front of 2^20 elements: just over 2^24 shifts,
    // in a patch far too short to raise its own limit. A minute after the
    // snapshot the credit is full, and it and the patch's own allowance
    // together would cover them: only the per-patch limit refuses.
    let ops: Vec<Value> = (0..16)
        .map(|i| json!({"op": "add", "path": format!("/a/{}", i % 2), "value": 1}))
        .collect();
    c.handle_message(at(60_000), patch(E1, 1, 2, Value::Array(ops)));
    let conflicts: Vec<ConflictReason> = std::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            ClientEvent::Conflict(conflict) => Some(conflict.reason),
            _ => None,
        })
        .collect();
    assert_eq!(conflicts, [ConflictReason::PatchApplyFailed]);
    assert_eq!(c.version(), Some(1), "the mirror is unchanged");
}

/// A patch that fails after shifting has done that work, and undone it: it
/// spends the credit as much as one that applies, or a host could stream
/// failing patches that each shift the whole floor.
#[test]
fn a_patch_that_fails_after_shifting_spends_the_credit_too() {
    let mut c = new_client();
    c.handle_message(at(1), snapshot(E1, 1, json!({"a": vec![0; 1 << 18]}), 0));
    while c.poll_event().is_some() {}
    let churn = |fail: bool| {
        let mut ops: Vec<Value> = (0..30)
            .flat_map(|_| {
                [
                    json!({"op": "remove", "path": "/a/0"}),
                    json!({"op": "add", "path": "/a/0", "value": 0}),
                ]
            })
            .collect();
        if fail {
            ops.push(json!({"op": "test", "path": "/a/0", "value": 1}));
        }
        Value::Array(ops)
    };
    c.handle_message(at(1_000), patch(E1, 1, 2, churn(true)));
    c.handle_message(at(1_000), patch(E1, 1, 2, churn(false)));
    let conflicts: Vec<ConflictReason> = std::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            ClientEvent::Conflict(conflict) => Some(conflict.reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        conflicts,
        [
            ConflictReason::PatchApplyFailed,
            ConflictReason::PatchApplyFailed
        ],
        "the failed patch spent the credit the second needed"
    );
    assert_eq!(c.version(), Some(1));
}

// ---- many held results ---------------------------------------------------

/// Which sync id a mirror update carries.
#[derive(Debug, Clone)]
enum Tag {
    /// None: a publication.
    Publication,
    /// The outstanding request's, if any: its reply.
    Outstanding,
    /// One of the requests made so far, picked by index.
    Earlier(usize),
}

#[derive(Debug, Clone)]
enum HeldOp {
    /// A call whose result names the mirror's version plus `ahead`.
    Result { ahead: u64 },
    /// A patch moving the mirror on by `by` (0: a bookmark).
    Patch { by: u64, tag: Tag },
    /// A snapshot of the mirror's epoch, `by` versions on.
    Snapshot { by: u64, tag: Tag },
    /// Cancels a held result's call.
    Cancel { pick: usize },
}

fn tag() -> impl Strategy<Value = Tag> {
    prop_oneof![
        3 => Just(Tag::Publication),
        2 => Just(Tag::Outstanding),
        1 => any::<usize>().prop_map(Tag::Earlier),
    ]
}

fn held_op() -> impl Strategy<Value = HeldOp> {
    prop_oneof![
        8 => (0u64..12).prop_map(|ahead| HeldOp::Result { ahead }),
        4 => (0u64..4, tag()).prop_map(|(by, tag)| HeldOp::Patch { by, tag }),
        1 => (0u64..6, tag()).prop_map(|(by, tag)| HeldOp::Snapshot { by, tag }),
        1 => any::<usize>().prop_map(|pick| HeldOp::Cancel { pick }),
    ]
}

/// What the client table says held results do (RW5, Q1, Q2), written as
/// plainly as possible: every held result in arrival order, walked whole.
struct HeldModel {
    version: u64,
    /// (call, the version its result names, the first sync request made
    /// after it arrived), in arrival order.
    held: Vec<(CallId, u64, Option<u64>)>,
    outstanding: Option<u64>,
    /// Every sync id requested so far.
    requests: Vec<u64>,
}

impl HeldModel {
    /// RW5: the held results the mirror has reached settle, in arrival order.
    fn settle_caught_up(&mut self, out: &mut Vec<Settlement>) {
        let version = self.version;
        self.held.retain(|(id, named, _)| {
            let reached = *named <= version;
            if reached {
                out.push((*id, Ok(json!(id.0)), Some(*named)));
            }
            !reached
        });
    }

    /// Q2: after the reply to request `sync_id`, a result that arrived
    /// before it and is still ahead settles `internal`.
    fn refute(&mut self, sync_id: u64, out: &mut Vec<Settlement>) {
        if sync_id == 0 {
            return;
        }
        let version = self.version;
        self.held.retain(|(id, named, after)| {
            let refuted = *named > version && after.is_some_and(|r| r <= sync_id);
            if refuted {
                out.push((*id, Err(ErrorCode::Internal), None));
            }
            !refuted
        });
    }

    /// Q1: with nothing asked, a held result ahead of the mirror asks.
    fn result_ahead(&self) -> Vec<(SyncReason, u64)> {
        let ahead = self.held.iter().any(|(_, named, _)| *named > self.version);
        if self.outstanding.is_none() && ahead {
            vec![(SyncReason::ResultAhead, self.version)]
        } else {
            Vec::new()
        }
    }

    fn sync_id(&self, tag: &Tag) -> u64 {
        match tag {
            Tag::Publication => 0,
            Tag::Outstanding => self.outstanding.unwrap_or(0),
            Tag::Earlier(pick) => self.requests[pick % self.requests.len()],
        }
    }

    /// A mirror update to `self.version` tagged with `sync_id`.
    fn updated(&mut self, sync_id: u64, out: &mut Vec<Settlement>) {
        self.settle_caught_up(out);
        self.refute(sync_id, out);
    }

    fn requested(&mut self, sync_id: u64) {
        self.outstanding = Some(sync_id);
        self.requests.push(sync_id);
        for (_, _, after) in &mut self.held {
            after.get_or_insert(sync_id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// However many results are held, each settles when and as the model
    /// says: caught up in arrival order, refuted by a later reply, and a
    /// result-ahead request made exactly when nothing else is asking.
    #[test]
    fn held_results_settle_and_ask_as_the_reference_model_does(
        ops in proptest::collection::vec(held_op(), 0..200),
    ) {
        let mut c = new_client();
        let initial = only_sync(&sent(&mut c));
        c.handle_message(at(0), snapshot(E1, 1, view(0), initial.sync_id));
        events(&mut c);
        let mut model = HeldModel {
            version: 1,
            held: Vec::new(),
            outstanding: None,
            requests: vec![initial.sync_id],
        };
        for op in ops {
            let mut expected = Vec::new();
            let mut asks = Vec::new();
            match op {
                HeldOp::Result { ahead } => {
                    let id = sent_call(&mut c);
                    let named = model.version + ahead;
                    c.handle_message(at(0), ok_result(E1, id, named, json!(id.0)));
                    model.held.push((id, named, None));
                    model.settle_caught_up(&mut expected);
                    asks = model.result_ahead();
                }
                HeldOp::Patch { by, ref tag } | HeldOp::Snapshot { by, ref tag } => {
                    let sync_id = model.sync_id(tag);
                    let (base, version) = (model.version, model.version + by);
                    let message = if matches!(op, HeldOp::Patch { .. }) {
                        if model.outstanding == Some(sync_id) {
                            model.outstanding = None;
                        }
                        patch_text(E1, base, version, "[]", sync_id)
                    } else {
                        model.outstanding = None;
                        snapshot(E1, version, view(0), sync_id)
                    };
                    c.handle_message(at(0), message);
                    model.version = version;
                    model.updated(sync_id, &mut expected);
                    asks = model.result_ahead();
                }
                HeldOp::Cancel { pick } => {
                    if !model.held.is_empty() {
                        let (id, _, _) = model.held.remove(pick % model.held.len());
                        prop_assert!(c.cancel(id));
                        expected.push((id, Err(ErrorCode::Cancelled), None));
                    }
                }
            }
            prop_assert_eq!(settlements(&events(&mut c)), expected);
            let requests = sync_requests(&sent(&mut c));
            let made: Vec<(SyncReason, u64)> =
                requests.iter().map(|r| (reason(r), r.have_version)).collect();
            prop_assert_eq!(made, asks);
            for r in requests {
                model.requested(r.sync_id);
            }
            prop_assert_eq!(c.version(), Some(model.version));
            prop_assert_eq!(c.pending_calls(), model.held.len());
            prop_assert_eq!(c.is_syncing(), model.outstanding.is_some());
        }
    }
}

#[test]
fn results_held_before_the_first_snapshot_settle_by_its_epoch_and_version() {
    // Before there is a mirror, results of any epoch are held; the first
    // snapshot ends those of other epochs (in call order), settles those it
    // reaches (in arrival order) and asks for the rest.
    let mut c = new_client();
    let initial = only_sync(&sent(&mut c));
    let calls: Vec<CallId> = (0..6).map(|_| sent_call(&mut c)).collect();
    // Arrival order: 5, 2(E2), 3, 0, 4(E2), 1.
    for (i, epoch, named) in [
        (5, E1, 4),
        (2, E2, 1),
        (3, E1, 9),
        (0, E1, 2),
        (4, E2, 3),
        (1, E1, 5),
    ] {
        c.handle_message(at(0), ok_result(epoch, calls[i], named, json!(i)));
    }
    assert!(settlements(&events(&mut c)).is_empty());
    assert!(
        sent(&mut c).is_empty(),
        "the initial request is outstanding"
    );
    c.handle_message(at(1), snapshot(E1, 5, view(0), initial.sync_id));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![
            (calls[2], Err(ErrorCode::OutcomeUnknown), None),
            (calls[4], Err(ErrorCode::OutcomeUnknown), None),
            (calls[5], Ok(json!(5)), Some(4)),
            (calls[0], Ok(json!(0)), Some(2)),
            (calls[1], Ok(json!(1)), Some(5)),
        ]
    );
    let ahead = only_sync(&sent(&mut c));
    assert_eq!(reason(&ahead), SyncReason::ResultAhead);
    assert_eq!(ahead.have_version, 5);
    c.handle_message(at(2), patch_text(E1, 5, 9, "[]", ahead.sync_id));
    assert_eq!(
        settlements(&events(&mut c)),
        vec![(calls[3], Ok(json!(3)), Some(9))]
    );
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.pending_calls(), 0);
}

// ---- envelopes read in place ----------------------------------------------

#[test]
fn encoded_envelopes_change_the_client_as_decoded_ones_do() {
    let mut decoded = synced(1, 0);
    let mut encoded = synced(1, 0);
    let first = [sent_call(&mut decoded), sent_call(&mut encoded)];
    let second = [sent_call(&mut decoded), sent_call(&mut encoded)];
    assert_eq!((first[0], second[0]), (first[1], second[1]));
    let answers = [
        patch(E1, 1, 2, set_count(1)),
        // At the mirror's version: settles at once.
        ok_result(E1, first[0], 2, json!(1)),
        // Ahead of it: held, then settled by the snapshot.
        ok_result(E1, second[0], 3, json!(2)),
        patch(E1, 2, 2, json!([])),
        snapshot(E1, 3, view(5), 0),
    ];
    for answer in answers {
        decoded.handle_message(at(1), answer.clone());
        encoded
            .handle_bytes(at(1), &answer.encode_to_vec())
            .expect("a valid envelope");
        assert_eq!(events(&mut decoded), events(&mut encoded));
        assert_eq!(decoded.state(), encoded.state());
        assert_eq!(decoded.version(), encoded.version());
        assert_eq!(sent(&mut decoded), sent(&mut encoded));
    }
}

#[test]
fn bytes_that_are_no_host_message_are_refused_and_change_nothing() {
    let mut c = synced(1, 0);
    let call = sent_call(&mut c);
    let mut bytes = ok_result(E1, call, 1, json!(1)).encode_to_vec();
    // A length past the end of the envelope.
    bytes.truncate(bytes.len() - 1);
    assert!(c.handle_bytes(at(1), &bytes).is_err());
    assert!(c.handle_bytes(at(1), &[0xff; 3]).is_err());
    assert!(events(&mut c).is_empty());
    assert_eq!(c.version(), Some(1));
    // The call is still waiting for its answer.
    c.handle_message(at(1), ok_result(E1, call, 1, json!(1)));
    assert_eq!(
        settlements(&events(&mut c)),
        [(call, Ok(json!(1)), Some(1))]
    );
}

proptest! {
    /// J9, J10: the mirror holds exactly the binary64 value a host wrote,
    /// in a snapshot and in a patch, for every finite value in the shortest
    /// form that reads back to it (what JavaScript, Python and Rust write).
    #[test]
    fn the_mirror_keeps_every_binary64_value_exactly(
        first in any::<f64>().prop_filter("finite", |f| f.is_finite()),
        second in any::<f64>().prop_filter("finite", |f| f.is_finite()),
    ) {
        let mut c = new_client();
        let initial = only_sync(&sent(&mut c));
        c.handle_message(at(0), snapshot(E1, 1, json!({"m": {"x": first}}), initial.sync_id));
        let read = |c: &ClientCore| c.state().and_then(|s| s.pointer("/m/x")).and_then(Value::as_f64);
        prop_assert_eq!(read(&c).map(f64::to_bits), Some(first.to_bits()));
        let ops = format!(r#"[{{"op":"replace","path":"/m/x","value":{second:?}}}]"#);
        c.handle_message(at(0), patch_text(E1, 1, 2, &ops, 0));
        prop_assert_eq!(c.version(), Some(2));
        prop_assert_eq!(read(&c).map(f64::to_bits), Some(second.to_bits()));
    }
}
