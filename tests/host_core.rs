//! Behaviour of the sans-IO host core, one test per host duty
//! (spec/PROTOCOL.md §10), plus the demo app's methods. Every test drives a `HostCore` directly with
//! hand-built client envelopes; no runtime, no clock.

mod common;

use std::collections::BTreeMap;

use cosystem_worker::app::{App, Draft, Invocation, JsonModule, MethodError, Module, TypedModule};
use cosystem_worker::client::apply_patch;
use cosystem_worker::demo;
use cosystem_worker::host::{
    HostConfig, HostCore, HostEvent, HostLimits, InputError, PeerKey, PeerOptions, SyncMode,
};
use cosystem_worker::wire::{
    Call, CallResult, ClientMessage, ErrorCode, Header, HostFrame, Patch, Snapshot, SnapshotReason,
    call_result, client_message, host_message,
};
use proptest::prelude::*;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const EPOCH: &str = "host-epoch-1";
const HOST: &str = "h";
/// The demo secret's token: a string that must never be found in any frame.
const MARKER: &str = "MARKER-5ecr3t-q9z";
const MODES: [SyncMode; 2] = [SyncMode::Patch, SyncMode::Snapshot];

fn config(mode: SyncMode) -> HostConfig {
    HostConfig {
        sync: mode,
        sections: Some(demo::default_sections()),
        peer_id: HOST.to_owned(),
        ..Default::default()
    }
}

fn config_with(mode: SyncMode, limits: HostLimits) -> HostConfig {
    HostConfig {
        limits,
        ..config(mode)
    }
}

fn demo_host(mode: SyncMode) -> HostCore {
    HostCore::new(config(mode), demo::app(MARKER), EPOCH)
}

/// A host of `app` publishing every module, in `mode`.
fn publishing_all(app: App, mode: SyncMode) -> HostCore {
    HostCore::new(
        HostConfig {
            sync: mode,
            peer_id: HOST.to_owned(),
            ..Default::default()
        },
        app,
        EPOCH,
    )
}

fn history(entries: usize) -> HostLimits {
    HostLimits {
        history_entries: entries,
        ..Default::default()
    }
}

// ---- client envelopes ----------------------------------------------------

fn envelope(epoch: &str, kind: client_message::Kind) -> ClientMessage {
    ClientMessage {
        header: Some(Header::v1(epoch, "client", HOST)),
        kind: Some(kind),
    }
}

fn sync_msg(epoch: &str, have_version: u64, sync_id: u64) -> ClientMessage {
    envelope(
        epoch,
        client_message::Kind::SyncRequest(common::sync_request(sync_id, have_version)),
    )
}

fn call_msg(epoch: &str, call_id: u64, module: &str, method: &str, args: &str) -> ClientMessage {
    envelope(
        epoch,
        client_message::Kind::Call(Call {
            call_id,
            module: module.to_owned(),
            method: method.to_owned(),
            args_json: args.to_owned(),
        }),
    )
}

fn connect(h: &mut HostCore, peer_id: &str) -> PeerKey {
    h.connect(PeerOptions {
        peer_id: peer_id.to_owned(),
        publications: true,
    })
    .unwrap()
}

fn sync(h: &mut HostCore, peer: PeerKey, epoch: &str, have: u64, sync_id: u64) {
    h.handle_message(peer, sync_msg(epoch, have, sync_id))
        .unwrap();
}

/// Sends a call in the host's epoch; the call must be accepted as input.
fn call(h: &mut HostCore, peer: PeerKey, call_id: u64, module: &str, method: &str, args: &str) {
    h.handle_message(peer, call_msg(EPOCH, call_id, module, method, args))
        .unwrap();
}

fn frames(h: &mut HostCore, peer: PeerKey) -> Vec<HostFrame> {
    std::iter::from_fn(|| h.poll_transmit(peer)).collect()
}

/// Connects a session, answers its initial sync and drains the reply.
fn attach(h: &mut HostCore, peer_id: &str) -> PeerKey {
    let peer = connect(h, peer_id);
    sync(h, peer, "", 0, 1);
    let reply = frames(h, peer);
    assert_eq!(reply.len(), 1);
    assert!(snapshot_of(&reply[0]).is_some());
    peer
}

fn kind(frame: &HostFrame) -> &host_message::Kind {
    frame
        .message()
        .kind
        .as_ref()
        .expect("every host frame has a kind")
}

fn snapshot_of(frame: &HostFrame) -> Option<&Snapshot> {
    match kind(frame) {
        host_message::Kind::Snapshot(s) => Some(s),
        _ => None,
    }
}

fn patch_of(frame: &HostFrame) -> Option<&Patch> {
    match kind(frame) {
        host_message::Kind::Patch(p) => Some(p),
        _ => None,
    }
}

fn result_of(frame: &HostFrame) -> Option<&CallResult> {
    match kind(frame) {
        host_message::Kind::Result(r) => Some(r),
        _ => None,
    }
}

fn results(frames: &[HostFrame]) -> Vec<CallResult> {
    frames.iter().filter_map(result_of).cloned().collect()
}

fn target(frame: &HostFrame) -> &str {
    &frame.message().header.as_ref().unwrap().target
}

/// The single result in `frames`.
fn only_result(frames: &[HostFrame]) -> CallResult {
    let all = results(frames);
    assert_eq!(all.len(), 1, "expected one result: {frames:#?}");
    all[0].clone()
}

fn value(result: &CallResult) -> Value {
    match &result.outcome {
        Some(call_result::Outcome::ValueJson(json)) => serde_json::from_str(json).unwrap(),
        other => panic!("expected a value, got {other:?}"),
    }
}

fn error(result: &CallResult) -> (ErrorCode, String) {
    match &result.outcome {
        Some(call_result::Outcome::Error(e)) => {
            (ErrorCode::try_from(e.code).unwrap(), e.message.clone())
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

fn code(result: &CallResult) -> ErrorCode {
    error(result).0
}

fn state(snapshot: &Snapshot) -> Value {
    serde_json::from_str(&snapshot.state_json).unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn events(h: &mut HostCore) -> Vec<HostEvent> {
    std::iter::from_fn(|| h.poll_event()).collect()
}

/// Runs `counter.increase(1)` directly: one published commit.
fn commit(h: &mut HostCore) {
    h.invoke("counter", "increase", &[json!(1)]).unwrap();
}

// ---- H1/H2: sync replies -------------------------------------------------

#[test]
fn sync_with_have_zero_is_answered_with_a_snapshot_to_the_requester_only() {
    let mut h = demo_host(SyncMode::Patch);
    let a = connect(&mut h, "a");
    let b = connect(&mut h, "b");
    sync(&mut h, a, "", 0, 7);
    let reply = frames(&mut h, a);
    assert_eq!(reply.len(), 1);
    let header = reply[0].message().header.clone().unwrap();
    assert_eq!(header.protocol_version, 1);
    assert_eq!(header.epoch, EPOCH);
    assert_eq!(header.source, HOST);
    assert_eq!(header.target, "client");
    let snapshot = snapshot_of(&reply[0]).unwrap();
    assert_eq!(snapshot.version, 1);
    assert_eq!(snapshot.sync_id, 7);
    assert_eq!(snapshot.reason, SnapshotReason::Sync as i32);
    assert_eq!(
        state(snapshot),
        json!({"counter": {"count": 0}, "todos": {"items": []}})
    );
    assert!(
        frames(&mut h, b).is_empty(),
        "only the requester is answered"
    );
}

#[test]
fn sync_from_another_epoch_is_answered_with_a_snapshot() {
    let mut h = demo_host(SyncMode::Patch);
    commit(&mut h);
    commit(&mut h);
    let a = connect(&mut h, "a");
    sync(&mut h, a, "an-older-epoch", 2, 4);
    let reply = frames(&mut h, a);
    let snapshot = snapshot_of(&reply[0]).expect("a snapshot");
    assert_eq!(snapshot.version, 3);
    assert_eq!(snapshot.sync_id, 4);
    assert_eq!(snapshot.reason, SnapshotReason::Sync as i32);
    assert_eq!(state(snapshot), h.view());
}

#[test]
fn sync_with_have_ahead_of_the_host_is_answered_with_a_snapshot() {
    let mut h = demo_host(SyncMode::Patch);
    commit(&mut h);
    let a = connect(&mut h, "a");
    sync(&mut h, a, EPOCH, 9, 2);
    let reply = frames(&mut h, a);
    let snapshot = snapshot_of(&reply[0]).expect("a snapshot");
    assert_eq!((snapshot.version, snapshot.sync_id), (2, 2));
}

#[test]
fn sync_with_have_outside_the_history_window_is_answered_with_a_snapshot() {
    let mut h = HostCore::new(
        config_with(SyncMode::Patch, history(2)),
        demo::app(MARKER),
        EPOCH,
    );
    for _ in 0..5 {
        commit(&mut h);
    }
    assert_eq!(h.version(), 6);
    let a = connect(&mut h, "a");
    // The window holds versions 5 and 6: from 4 it can resume, from 3 not.
    sync(&mut h, a, EPOCH, 3, 1);
    let reply = frames(&mut h, a);
    let snapshot = snapshot_of(&reply[0]).expect("a snapshot");
    assert_eq!((snapshot.version, snapshot.sync_id), (6, 1));
    sync(&mut h, a, EPOCH, 4, 2);
    let reply = frames(&mut h, a);
    let patch = patch_of(&reply[0]).expect("a resume patch");
    assert_eq!(
        (patch.base_version, patch.version, patch.sync_id),
        (4, 6, 2)
    );
}

#[test]
fn sync_inside_the_window_resumes_with_one_patch_concatenating_every_version() {
    for mode in MODES {
        let mut h = demo_host(mode);
        let mut views = BTreeMap::from([(1, h.view())]);
        let mut ops_per_version = BTreeMap::new();
        let steps: [(&str, &str, Value); 5] = [
            ("counter", "increase", json!([3])),
            ("todos", "add", json!(["milk"])),
            ("todos", "add_many", json!([["eggs", "flour"]])),
            ("todos", "toggle", json!([1])),
            ("counter", "decrease", json!([1])),
        ];
        let watcher = attach(&mut h, "watcher");
        for (module, method, args) in steps {
            h.invoke(module, method, args.as_array().unwrap()).unwrap();
            views.insert(h.version(), h.view());
            if mode == SyncMode::Patch {
                let live = frames(&mut h, watcher);
                let patch = patch_of(&live[0]).unwrap();
                let ops: Vec<Value> = serde_json::from_str(&patch.patch_json).unwrap();
                ops_per_version.insert(h.version(), ops.len());
            }
        }
        let current = h.version();
        assert_eq!(current, 6);
        for have in 1..current {
            let a = connect(&mut h, "a");
            sync(&mut h, a, EPOCH, have, 100 + have);
            let reply = frames(&mut h, a);
            assert_eq!(reply.len(), 1, "{mode:?}");
            assert_eq!(target(&reply[0]), "client");
            let patch = patch_of(&reply[0]).expect("a resume patch");
            assert_eq!(patch.base_version, have);
            assert_eq!(patch.version, current);
            assert_eq!(patch.sync_id, 100 + have);
            let mut mirror = views[&have].clone();
            apply_patch(&mut mirror, &patch.patch_json).unwrap();
            assert_eq!(mirror, h.view(), "{mode:?} resume from {have}");
            if mode == SyncMode::Patch {
                let ops: Vec<Value> = serde_json::from_str(&patch.patch_json).unwrap();
                let expected: usize = ops_per_version.range(have + 1..).map(|(_, n)| n).sum();
                assert_eq!(
                    ops.len(),
                    expected,
                    "the concatenation of {have}+1..={current}"
                );
            }
            h.disconnect(a);
        }
    }
}

#[test]
fn sync_at_the_current_version_is_answered_with_a_bookmark() {
    for mode in MODES {
        let mut h = demo_host(mode);
        commit(&mut h);
        let a = connect(&mut h, "a");
        sync(&mut h, a, EPOCH, 2, 5);
        let reply = frames(&mut h, a);
        assert_eq!(reply.len(), 1);
        assert_eq!(target(&reply[0]), "client");
        assert_eq!(
            patch_of(&reply[0]),
            Some(&Patch {
                base_version: 2,
                version: 2,
                patch_json: "[]".to_owned(),
                sync_id: 5
            }),
            "{mode:?}"
        );
    }
}

#[test]
fn an_unsent_sync_reply_is_superseded_by_a_later_one() {
    let mut h = demo_host(SyncMode::Patch);
    let a = connect(&mut h, "a");
    sync(&mut h, a, "", 0, 1);
    commit(&mut h);
    sync(&mut h, a, "", 0, 2);
    let reply = frames(&mut h, a);
    assert_eq!(reply.len(), 1, "{reply:#?}");
    let snapshot = snapshot_of(&reply[0]).unwrap();
    assert_eq!((snapshot.version, snapshot.sync_id), (2, 2));
}

// ---- H3: attach ----------------------------------------------------------

#[test]
fn no_publications_reach_a_session_before_its_first_sync_is_answered() {
    for mode in MODES {
        let mut h = demo_host(mode);
        let a = connect(&mut h, "a");
        commit(&mut h);
        commit(&mut h);
        h.bookmark();
        assert!(frames(&mut h, a).is_empty(), "{mode:?}");
        sync(&mut h, a, "", 0, 1);
        let reply = frames(&mut h, a);
        assert_eq!(reply.len(), 1, "only the reply, no older publications");
        assert_eq!(snapshot_of(&reply[0]).unwrap().version, 3);
        commit(&mut h);
        let live = frames(&mut h, a);
        assert_eq!(live.len(), 1, "{mode:?}");
        let version = match kind(&live[0]) {
            host_message::Kind::Patch(p) => p.version,
            host_message::Kind::Snapshot(s) => s.version,
            other => panic!("{other:?}"),
        };
        assert_eq!(version, 4, "publications after the reply's version only");
    }
}

// ---- H5/H6: publications -------------------------------------------------

#[test]
fn patch_mode_publishes_a_patch_from_the_previous_version_to_every_attached_session() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    let b = attach(&mut h, "b");
    let before = h.view();
    h.invoke("todos", "add", &[json!("milk")]).unwrap();
    for peer in [a, b] {
        let live = frames(&mut h, peer);
        assert_eq!(live.len(), 1);
        assert_eq!(
            target(&live[0]),
            "",
            "publications are addressed to everyone"
        );
        let patch = patch_of(&live[0]).expect("a patch");
        assert_eq!(
            (patch.base_version, patch.version, patch.sync_id),
            (1, 2, 0)
        );
        let mut mirror = before.clone();
        apply_patch(&mut mirror, &patch.patch_json).unwrap();
        assert_eq!(mirror, h.view());
    }
    assert!(events(&mut h).contains(&HostEvent::Published { version: 2 }));
}

#[test]
fn snapshot_mode_publishes_a_commit_snapshot_to_every_attached_session() {
    let mut h = demo_host(SyncMode::Snapshot);
    let a = attach(&mut h, "a");
    let b = attach(&mut h, "b");
    commit(&mut h);
    for peer in [a, b] {
        let live = frames(&mut h, peer);
        assert_eq!(live.len(), 1);
        assert_eq!(target(&live[0]), "");
        let snapshot = snapshot_of(&live[0]).expect("a snapshot");
        assert_eq!(snapshot.version, 2);
        assert_eq!(snapshot.sync_id, 0);
        assert_eq!(snapshot.reason, SnapshotReason::Commit as i32);
        assert_eq!(state(snapshot), h.view());
    }
}

#[test]
fn snapshot_mode_sends_a_session_that_is_behind_only_the_newest_snapshot() {
    let mut h = demo_host(SyncMode::Snapshot);
    let a = attach(&mut h, "a");
    for _ in 0..3 {
        commit(&mut h);
    }
    let live = frames(&mut h, a);
    assert_eq!(live.len(), 1);
    let snapshot = snapshot_of(&live[0]).unwrap();
    assert_eq!(snapshot.version, 4);
    assert_eq!(snapshot.reason, SnapshotReason::Commit as i32);
}

#[test]
fn a_publication_is_one_shared_frame_with_shared_encoded_bytes() {
    for mode in MODES {
        let mut h = demo_host(mode);
        let peers: Vec<PeerKey> = ["a", "b", "c"].iter().map(|p| attach(&mut h, p)).collect();
        commit(&mut h);
        let got: Vec<HostFrame> = peers
            .iter()
            .map(|p| {
                let live = frames(&mut h, *p);
                assert_eq!(live.len(), 1);
                live[0].clone()
            })
            .collect();
        for frame in &got[1..] {
            assert!(HostFrame::ptr_eq(&got[0], frame), "{mode:?}");
            assert_eq!(
                got[0].encoded().as_ptr(),
                frame.encoded().as_ptr(),
                "encoded once, bytes shared"
            );
        }
        assert_eq!(
            got[0].encoded().as_ref(),
            got[0].message().encode_to_vec().as_slice()
        );
    }
}

// ---- H8: results ---------------------------------------------------------

#[test]
fn a_result_is_never_transmitted_before_the_publication_of_its_version() {
    for mode in MODES {
        let mut h = demo_host(mode);
        let a = attach(&mut h, "a");
        call(&mut h, a, 1, "counter", "increase", "[5]");
        commit(&mut h); // another commit before the session polls
        let out = frames(&mut h, a);
        assert_eq!(
            out.len(),
            if mode == SyncMode::Patch { 3 } else { 2 },
            "{out:#?}"
        );
        let result_at = out.iter().position(|f| result_of(f).is_some()).unwrap();
        let result = result_of(&out[result_at]).unwrap();
        assert_eq!((result.call_id, result.state_version), (1, 2));
        assert_eq!(value(result), json!(5));
        assert_eq!(target(&out[result_at]), "client");
        let published_before: Vec<u64> = out[..result_at]
            .iter()
            .filter_map(|f| match kind(f) {
                host_message::Kind::Patch(p) => Some(p.version),
                host_message::Kind::Snapshot(s) => Some(s.version),
                _ => None,
            })
            .collect();
        assert!(
            published_before.iter().any(|v| *v >= 2),
            "{mode:?}: {out:#?}"
        );
    }
}

#[test]
fn a_result_is_not_transmitted_before_the_sync_reply_that_covers_its_version() {
    // The session calls, then asks to sync before reading anything: the
    // reply brings it to the result's version, so it must come first.
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    call(&mut h, a, 1, "counter", "increase", "[5]");
    sync(&mut h, a, EPOCH, 1, 9);
    let out = frames(&mut h, a);
    assert_eq!(out.len(), 2, "{out:#?}");
    let reply = patch_of(&out[0]).expect("the sync reply first");
    assert_eq!(
        (reply.base_version, reply.version, reply.sync_id),
        (1, 2, 9)
    );
    let result = result_of(&out[1]).expect("then the result");
    assert_eq!(result.state_version, 2);
}

#[test]
fn results_go_only_to_the_caller() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    let b = attach(&mut h, "b");
    call(&mut h, a, 1, "counter", "increase", "[1]");
    assert_eq!(results(&frames(&mut h, a)).len(), 1);
    assert!(results(&frames(&mut h, b)).is_empty());
}

#[test]
fn state_version_is_the_version_after_the_call_and_the_current_version_otherwise() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    call(&mut h, a, 1, "counter", "increase", "[1]");
    call(&mut h, a, 2, "counter", "fail", "[\"no\"]");
    call(&mut h, a, 3, "nope", "nope", "[]");
    call(&mut h, a, 4, "secret", "rotate", "[]");
    call(&mut h, a, 5, "todos", "add", "[\"x\"]");
    call(&mut h, a, 6, "counter", "increase", "[0]");
    let got: Vec<(u64, u64)> = results(&frames(&mut h, a))
        .iter()
        .map(|r| (r.call_id, r.state_version))
        .collect();
    assert_eq!(got, vec![(1, 2), (2, 2), (3, 2), (4, 2), (5, 3), (6, 3)]);
}

// ---- versions ------------------------------------------------------------

#[test]
fn version_grows_by_one_per_published_commit_and_not_for_private_or_failed_calls() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    let expect = |h: &mut HostCore, module: &str, method: &str, args: Value, delta: u64| {
        let before = h.version();
        let outcome = h.invoke(module, method, args.as_array().unwrap());
        assert_eq!(
            h.version(),
            before + delta,
            "{module}.{method}({args}) -> {outcome:?}"
        );
        let published = frames(h, a);
        assert_eq!(
            published.len() as u64,
            delta,
            "{module}.{method}: {published:#?}"
        );
    };
    expect(&mut h, "counter", "increase", json!([1]), 1);
    expect(&mut h, "secret", "rotate", json!([]), 0);
    expect(&mut h, "counter", "fail", json!(["no"]), 0);
    expect(&mut h, "counter", "increase", json!([0]), 0);
    expect(&mut h, "todos", "clear", json!([]), 0);
    expect(&mut h, "todos", "add_many", json!([["a", "b", "c"]]), 1);
    expect(&mut h, "todos", "add_many", json!([[]]), 0);
    expect(&mut h, "todos", "toggle", json!([99]), 0);
    expect(&mut h, "todos", "clear", json!([]), 1);
    assert_ne!(
        h.module_state("secret"),
        Some(&json!({"token": MARKER})),
        "the private change did happen"
    );
}

// ---- H7: calls and errors ------------------------------------------------

#[test]
fn unknown_module_or_method_is_not_found() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    call(&mut h, a, 1, "nope", "increase", "[1]");
    call(&mut h, a, 2, "counter", "nope", "[1]");
    call(&mut h, a, 3, "secret", "reveal", "[]");
    let got = results(&frames(&mut h, a));
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(code(r), ErrorCode::NotFound, "{r:?}");
        assert_eq!(r.state_version, 1);
    }
}

#[test]
fn calls_reach_private_modules() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    call(&mut h, a, 1, "secret", "rotate", "[]");
    assert_eq!(value(&only_result(&frames(&mut h, a))), Value::Null);
}

#[test]
fn malformed_or_mismatched_arguments_are_invalid_argument_and_change_nothing() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    let cases = [
        ("counter", "increase", "{\"by\": 1}"), // not an array
        ("counter", "increase", "7"),           // not an array
        ("counter", "increase", "[1,"),         // not JSON
        ("todos", "clear", " "),                // whitespace alone is not JSON (J4)
        ("counter", "increase", "[]"),          // too few
        ("counter", "increase", "[1, 2]"),      // too many
        ("counter", "increase", "[\"1\"]"),     // wrong type
        ("counter", "increase", "[1.5]"),       // not an integer
        ("counter", "increase", "[1.0]"),       // not an integer either
        ("todos", "add", "[null]"),
        ("todos", "toggle", "[-1]"),
        ("todos", "add_many", "[[\"a\", 1]]"),
        ("todos", "clear", "[1]"),
    ];
    for (i, (module, method, args)) in cases.iter().enumerate() {
        call(&mut h, a, i as u64 + 1, module, method, args);
    }
    let got = results(&frames(&mut h, a));
    assert_eq!(got.len(), cases.len());
    for (r, case) in got.iter().zip(cases) {
        assert_eq!(code(r), ErrorCode::InvalidArgument, "{case:?}: {r:?}");
        assert_eq!(r.state_version, 1);
    }
    assert_eq!(h.version(), 1);
    assert_eq!(
        h.view(),
        json!({"counter": {"count": 0}, "todos": {"items": []}})
    );
}

#[test]
fn empty_arguments_mean_no_arguments() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    call(&mut h, a, 1, "todos", "clear", "");
    assert_eq!(value(&only_result(&frames(&mut h, a))), json!(0));
}

#[test]
fn method_failure_is_failed_with_its_message_and_changes_nothing() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    call(&mut h, a, 1, "counter", "increase", "[2]");
    frames(&mut h, a);
    call(&mut h, a, 2, "counter", "fail", "[\"it broke\"]");
    let out = frames(&mut h, a);
    assert_eq!(out.len(), 1, "no publication: {out:#?}");
    let result = only_result(&out);
    assert_eq!(error(&result), (ErrorCode::Failed, "it broke".to_owned()));
    let Some(call_result::Outcome::Error(e)) = &result.outcome else {
        unreachable!()
    };
    assert_eq!(e.details_json, "");
    assert_eq!(result.state_version, 2);
    assert_eq!(h.version(), 2);
    assert_eq!(h.view()["counter"], json!({"count": 2}));
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    n: i64,
    log: Vec<String>,
}

/// A typed and a recording module whose `boom` methods change their state
/// and then panic, and whose `refuse` methods change it and then fail.
fn fragile_app() -> App {
    let typed = TypedModule::new("typed", Tally::default())
        .method("bump", |s: &mut Tally, (): ()| {
            s.n += 1;
            Ok(s.n)
        })
        .method("boom", |s: &mut Tally, (): ()| -> Result<(), MethodError> {
            s.n += 100;
            s.log.push("half-done".to_owned());
            panic!("typed boom")
        })
        .method(
            "refuse",
            |s: &mut Tally, (): ()| -> Result<(), MethodError> {
                s.n += 100;
                Err(MethodError::failed("refused"))
            },
        );
    let recording = JsonModule::new("json", json!({"items": [1], "meta": {"k": 1}}))
        .method("add", |d: &mut Draft<'_>, (x,): (i64,)| {
            d.push("/items", x)?;
            Ok(())
        })
        .method(
            "boom",
            |d: &mut Draft<'_>, (): ()| -> Result<(), MethodError> {
                d.push("/items", 2)?;
                d.replace("/meta/k", 2)?;
                d.add("/meta/new", true)?;
                d.remove("/items/0")?;
                panic!("json boom")
            },
        )
        .method(
            "refuse",
            |d: &mut Draft<'_>, (): ()| -> Result<(), MethodError> {
                d.push("/items", 2)?;
                d.remove("/meta")?;
                Err(MethodError::new(ErrorCode::NotFound, "refused"))
            },
        );
    App::new().with(typed).with(recording)
}

#[test]
fn panicking_method_is_internal_rolls_its_module_back_and_the_host_keeps_serving() {
    for mode in MODES {
        let mut h = publishing_all(fragile_app(), mode);
        let a = attach(&mut h, "a");
        let b = attach(&mut h, "b");
        let before = h.view();
        call(&mut h, a, 1, "typed", "boom", "[]");
        call(&mut h, a, 2, "json", "boom", "[]");
        let out = frames(&mut h, a);
        assert_eq!(out.len(), 2, "no publication: {out:#?}");
        for r in results(&out) {
            assert_eq!(code(&r), ErrorCode::Internal, "{r:?}");
            assert_eq!(r.state_version, 1);
            // What the panic said may quote what the method held: it goes
            // to the host's events and log, not to the caller.
            let (_, message) = error(&r);
            assert!(message.contains("panicked"), "{message}");
            assert!(!message.contains(" boom"), "{message}");
        }
        assert_eq!(h.version(), 1);
        assert_eq!(h.view(), before, "{mode:?}: rolled back");
        let evs = events(&mut h);
        assert!(evs.iter().any(|e| matches!(e,
            HostEvent::MethodPanicked { module, method, message }
                if module == "typed" && method == "boom" && message == "typed boom")));
        assert!(evs.iter().any(|e| matches!(e,
            HostEvent::MethodPanicked { module, message, .. }
                if module == "json" && message == "json boom")));

        // The host keeps serving, from the rolled-back state.
        call(&mut h, b, 1, "typed", "bump", "[]");
        call(&mut h, b, 2, "json", "add", "[5]");
        let got = results(&frames(&mut h, b));
        assert_eq!(value(&got[0]), json!(1));
        assert_eq!(got[1].state_version, 3);
        assert_eq!(
            h.view(),
            json!({"typed": {"n": 1, "log": []}, "json": {"items": [1, 5], "meta": {"k": 1}}})
        );
        // And the other session saw exactly the two good commits.
        let seen = frames(&mut h, a);
        assert_eq!(seen.len(), if mode == SyncMode::Patch { 2 } else { 1 });
    }
}

#[test]
fn a_method_error_with_a_code_hosts_must_not_send_is_answered_internal() {
    // H9: the local codes and UNSPECIFIED never travel from a host, whatever
    // code a method chose; a method may choose only 1-8 (§14).
    let local = [
        ErrorCode::Unspecified,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Cancelled,
        ErrorCode::Disposed,
        ErrorCode::OutcomeUnknown,
    ];
    let module = TypedModule::new("m", Tally::default()).method(
        "fail_with",
        |_: &mut Tally, (code,): (i32,)| -> Result<(), MethodError> {
            let code = ErrorCode::try_from(code).unwrap_or(ErrorCode::Unspecified);
            Err(MethodError::new(code, "chosen"))
        },
    );
    let mut h = HostCore::new(config(SyncMode::Patch), App::new().with(module), EPOCH);
    let a = attach(&mut h, "a");
    for (i, code) in local.iter().enumerate() {
        call(
            &mut h,
            a,
            i as u64 + 1,
            "m",
            "fail_with",
            &format!("[{}]", *code as i32),
        );
    }
    call(
        &mut h,
        a,
        99,
        "m",
        "fail_with",
        &format!("[{}]", ErrorCode::Unavailable as i32),
    );
    let got = results(&frames(&mut h, a));
    assert_eq!(got.len(), local.len() + 1);
    for r in &got[..local.len()] {
        assert_eq!(code(r), ErrorCode::Internal, "{r:?}");
    }
    assert_eq!(
        error(&got[local.len()]),
        (ErrorCode::Unavailable, "chosen".to_owned())
    );
}

#[test]
fn failing_method_that_changed_its_state_is_rolled_back() {
    let mut h = HostCore::new(HostConfig::default(), fragile_app(), EPOCH);
    let before = h.view();
    let typed = h.invoke("typed", "refuse", &[]).unwrap_err();
    assert_eq!(typed.code, ErrorCode::Failed);
    let recording = h.invoke("json", "refuse", &[]).unwrap_err();
    assert_eq!(recording.code, ErrorCode::NotFound, "the method's own code");
    assert_eq!(h.version(), 1);
    assert_eq!(h.view(), before);
    assert_eq!(h.invoke("typed", "bump", &[]).unwrap(), json!(1));
}

#[test]
fn call_id_zero_is_invalid_argument_answered_with_call_id_zero_and_not_executed() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    call(&mut h, a, 0, "counter", "increase", "[1]");
    let result = only_result(&frames(&mut h, a));
    assert_eq!(result.call_id, 0);
    assert_eq!(code(&result), ErrorCode::InvalidArgument);
    assert_eq!(h.version(), 1);
}

#[test]
fn call_of_another_protocol_version_is_failed_precondition_and_not_executed() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    let mut m = call_msg(EPOCH, 1, "counter", "increase", "[1]");
    m.header.as_mut().unwrap().protocol_version = 2;
    assert_eq!(
        h.handle_message(a, m),
        Err(InputError::UnsupportedVersion(2))
    );
    let out = frames(&mut h, a);
    let result = only_result(&out);
    assert_eq!(code(&result), ErrorCode::FailedPrecondition);
    assert_eq!(result.state_version, 1);
    assert_eq!(
        out[0].message().header.as_ref().unwrap().protocol_version,
        1,
        "answered in a version-1 envelope"
    );
    assert_eq!(h.version(), 1);
}

#[test]
fn call_made_against_another_epoch_is_failed_precondition_and_not_executed() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    h.handle_message(
        a,
        call_msg("an-older-epoch", 1, "counter", "increase", "[1]"),
    )
    .unwrap();
    let result = only_result(&frames(&mut h, a));
    assert_eq!(code(&result), ErrorCode::FailedPrecondition);
    assert_eq!(result.state_version, 1);
    assert_eq!(h.version(), 1);
    assert_eq!(h.view()["counter"], json!({"count": 0}));
}

#[test]
fn call_with_empty_epoch_is_not_fenced() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    h.handle_message(a, call_msg("", 1, "counter", "increase", "[1]"))
        .unwrap();
    let result = only_result(&frames(&mut h, a));
    assert_eq!(value(&result), json!(1));
}

#[test]
fn call_checks_apply_in_the_specified_order() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    // Protocol version before call id 0.
    let mut m = call_msg("elsewhere", 0, "nope", "nope", "{");
    m.header.as_mut().unwrap().protocol_version = 7;
    let _ = h.handle_message(a, m);
    // Call id 0 before the epoch fence.
    h.handle_message(a, call_msg("elsewhere", 0, "nope", "nope", "{"))
        .unwrap();
    // The epoch fence before arguments and names.
    h.handle_message(a, call_msg("elsewhere", 3, "nope", "nope", "{"))
        .unwrap();
    // Arguments before names.
    call(&mut h, a, 4, "nope", "nope", "{");
    let codes: Vec<ErrorCode> = results(&frames(&mut h, a)).iter().map(code).collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::FailedPrecondition,
            ErrorCode::InvalidArgument,
            ErrorCode::FailedPrecondition,
            ErrorCode::InvalidArgument
        ]
    );
}

// ---- H13/H14 and limits --------------------------------------------------

#[test]
fn sync_request_of_another_protocol_version_is_ignored() {
    let mut h = demo_host(SyncMode::Patch);
    let a = connect(&mut h, "a");
    let mut m = sync_msg("", 0, 1);
    m.header.as_mut().unwrap().protocol_version = 2;
    assert_eq!(
        h.handle_message(a, m),
        Err(InputError::UnsupportedVersion(2))
    );
    assert!(frames(&mut h, a).is_empty());
    commit(&mut h);
    assert!(frames(&mut h, a).is_empty(), "the session did not attach");
}

#[test]
fn envelope_without_a_kind_is_ignored() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    let m = ClientMessage {
        header: Some(Header::v1(EPOCH, "a", HOST)),
        kind: None,
    };
    assert_eq!(h.handle_message(a, m), Err(InputError::UnknownKind));
    assert!(!InputError::UnknownKind.is_fatal());
    assert!(frames(&mut h, a).is_empty());
    assert_eq!(h.version(), 1);
}

#[test]
fn too_many_unanswered_calls_are_resource_exhausted_for_that_session_only_then_flooding() {
    let mut h = HostCore::new(
        config_with(
            SyncMode::Patch,
            HostLimits {
                max_calls_in_flight: 2,
                ..Default::default()
            },
        ),
        demo::app(MARKER),
        EPOCH,
    );
    let flooder = attach(&mut h, "flooder");
    let polite = attach(&mut h, "polite");
    for id in 1..=4 {
        call(&mut h, flooder, id, "counter", "increase", "[1]");
    }
    assert_eq!(h.version(), 3, "calls 3 and 4 were not executed");
    let refused = h.handle_message(flooder, call_msg(EPOCH, 5, "counter", "increase", "[1]"));
    assert_eq!(refused, Err(InputError::Flooding { queued: 4 }));
    assert!(refused.unwrap_err().is_fatal());
    assert_eq!(h.version(), 3);

    // Another session is unaffected.
    call(&mut h, polite, 1, "counter", "increase", "[1]");
    let polite_results = results(&frames(&mut h, polite));
    assert_eq!(polite_results.len(), 1);
    assert_eq!(value(&polite_results[0]), json!(3));

    let got = results(&frames(&mut h, flooder));
    let codes: Vec<(u64, Option<ErrorCode>)> = got
        .iter()
        .map(|r| {
            (
                r.call_id,
                matches!(r.outcome, Some(call_result::Outcome::Error(_))).then(|| code(r)),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (1, None),
            (2, None),
            (3, Some(ErrorCode::ResourceExhausted)),
            (4, Some(ErrorCode::ResourceExhausted))
        ]
    );
    // Once it has read its results it may call again.
    call(&mut h, flooder, 6, "counter", "increase", "[1]");
    assert_eq!(value(&only_result(&frames(&mut h, flooder))), json!(4));
}

#[test]
fn sessions_beyond_max_clients_are_refused_until_one_disconnects() {
    let mut h = HostCore::new(
        config_with(
            SyncMode::Patch,
            HostLimits {
                max_clients: 2,
                ..Default::default()
            },
        ),
        demo::app(MARKER),
        EPOCH,
    );
    let a = connect(&mut h, "a");
    connect(&mut h, "b");
    let refused = h.connect(PeerOptions {
        peer_id: "c".to_owned(),
        publications: true,
    });
    assert_eq!(refused, Err(InputError::TooManyClients { limit: 2 }));
    assert_eq!(h.peer_count(), 2);
    h.disconnect(a);
    assert_eq!(
        h.handle_message(a, sync_msg("", 0, 1)),
        Err(InputError::UnknownPeer)
    );
    assert!(h.poll_transmit(a).is_none());
    let c = connect(&mut h, "c");
    sync(&mut h, c, "", 0, 1);
    assert_eq!(frames(&mut h, c).len(), 1);
}

/// A demo host whose messages are limited to `limit` bytes.
fn demo_host_limited_to(limit: usize) -> HostCore {
    let limits = HostLimits {
        max_message_bytes: limit,
        ..Default::default()
    };
    HostCore::new(
        config_with(SyncMode::Patch, limits),
        demo::app(MARKER),
        EPOCH,
    )
}

#[test]
fn message_over_the_size_limit_is_refused_unprocessed() {
    let mut h = demo_host_limited_to(512);
    let a = attach(&mut h, "a");
    let big = call_msg(
        EPOCH,
        1,
        "todos",
        "add",
        &json!(["x".repeat(512)]).to_string(),
    );
    let bytes = big.encode_to_vec();
    assert_eq!(
        h.handle_bytes(a, &bytes),
        Err(InputError::MessageTooLarge {
            size: bytes.len(),
            limit: 512
        })
    );
    assert!(frames(&mut h, a).is_empty());
    assert_eq!(h.version(), 1);
    let small = call_msg(EPOCH, 2, "counter", "increase", "[1]").encode_to_vec();
    assert!(small.len() <= 512);
    h.handle_bytes(a, &small).unwrap();
    assert_eq!(value(&only_result(&frames(&mut h, a))), json!(1));
}

/// In-process and shared channels hand envelopes over undecoded; the limit
/// holds there too, measured as the envelope would be encoded (spec §15).
#[test]
fn envelope_over_the_size_limit_handed_over_undecoded_is_not_processed() {
    let mut h = demo_host_limited_to(512);
    let a = attach(&mut h, "a");
    // A Call is answered, unrun: its call_id can be read. (Run, this one
    // would fail with its own message.)
    let big = call_msg(
        EPOCH,
        1,
        "counter",
        "fail",
        &json!(["x".repeat(512)]).to_string(),
    );
    let size = big.encoded_len();
    h.handle_message(a, big).unwrap();
    let (code, message) = error(&only_result(&frames(&mut h, a)));
    assert_eq!(code, ErrorCode::ResourceExhausted);
    assert!(message.contains(&format!("{size} bytes")), "{message}");
    assert_eq!(h.version(), 1, "the call did not run");
    // Anything else is refused.
    let mut sync = sync_msg(EPOCH, 0, 5);
    if let Some(header) = sync.header.as_mut() {
        header.capability = "c".repeat(600);
    }
    let size = sync.encoded_len();
    assert_eq!(
        h.handle_message(a, sync),
        Err(InputError::MessageTooLarge { size, limit: 512 })
    );
    assert!(frames(&mut h, a).is_empty());
    // At the limit an envelope is processed (the method runs and fails as
    // asked), and the session carries on.
    let failing = |len| {
        call_msg(
            EPOCH,
            2,
            "counter",
            "fail",
            &json!(["x".repeat(len)]).to_string(),
        )
    };
    // Longer text can lengthen the varints too: the longest that fits.
    let len = (0..512)
        .rev()
        .find(|&len| failing(len).encoded_len() <= 512)
        .unwrap();
    let fits = failing(len);
    assert_eq!(fits.encoded_len(), 512);
    h.handle_message(a, fits).unwrap();
    assert_eq!(error(&only_result(&frames(&mut h, a))).0, ErrorCode::Failed);
    h.handle_message(a, call_msg(EPOCH, 3, "counter", "increase", "[1]"))
        .unwrap();
    assert_eq!(value(&only_result(&frames(&mut h, a))), json!(1));
}

#[test]
fn undecodable_bytes_are_malformed_and_other_sessions_are_unaffected() {
    let mut h = demo_host(SyncMode::Patch);
    let bad = attach(&mut h, "bad");
    let good = attach(&mut h, "good");
    for garbage in [
        &[0xff_u8, 0xff, 0xff, 0xff][..],
        &[0x0a, 0x05, 0x01],
        &[0x12],
    ] {
        assert!(matches!(
            h.handle_bytes(bad, garbage),
            Err(InputError::Malformed(_))
        ));
    }
    assert!(frames(&mut h, bad).is_empty());
    let call = call_msg(EPOCH, 1, "counter", "increase", "[1]").encode_to_vec();
    h.handle_bytes(good, &call).unwrap();
    let out = frames(&mut h, good);
    assert_eq!(out.len(), 2);
    assert_eq!(value(&only_result(&out)), json!(1));
    // The misbehaving session still receives publications like anyone.
    let seen = frames(&mut h, bad);
    assert_eq!(patch_of(&seen[0]).map(|p| p.version), Some(2));
}

#[test]
fn a_disconnect_forgets_the_session_and_keeps_what_its_calls_committed() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    let b = attach(&mut h, "b");
    call(&mut h, a, 1, "counter", "increase", "[1]");
    h.disconnect(a);
    assert_eq!(h.peer_count(), 1);
    assert_eq!(h.version(), 2);
    assert_eq!(patch_of(&frames(&mut h, b)[0]).map(|p| p.version), Some(2));
}

// ---- H12: slow consumers -------------------------------------------------

#[test]
fn slow_session_gets_one_overflow_snapshot_then_live_patches_while_others_get_every_patch() {
    let mut h = HostCore::new(
        config_with(SyncMode::Patch, history(3)),
        demo::app(MARKER),
        EPOCH,
    );
    let keeper = attach(&mut h, "keeper");
    let slow = attach(&mut h, "slow");
    // The slow session's own call, whose result must not be dropped.
    call(&mut h, slow, 1, "counter", "increase", "[1]");
    let mut kept = Vec::new();
    for i in 0..10 {
        call(&mut h, keeper, i + 1, "todos", "add", "[\"t\"]");
        kept.extend(frames(&mut h, keeper));
    }
    assert_eq!(h.version(), 12);

    let out = frames(&mut h, slow);
    assert_eq!(out.len(), 2, "{out:#?}");
    let overflow = snapshot_of(&out[0]).expect("an overflow snapshot first");
    assert_eq!(overflow.version, 12);
    assert_eq!(overflow.reason, SnapshotReason::Overflow as i32);
    assert_eq!(overflow.sync_id, 0);
    assert_eq!(target(&out[0]), "client");
    assert_eq!(state(overflow), h.view());
    let result = result_of(&out[1]).expect("then its result");
    assert_eq!((result.call_id, result.state_version), (1, 2));

    // Live again.
    commit(&mut h);
    let live = frames(&mut h, slow);
    assert_eq!(
        live.iter()
            .map(patch_of)
            .map(|p| p.map(|p| (p.base_version, p.version)))
            .collect::<Vec<_>>(),
        vec![Some((12, 13))]
    );

    // The session that kept up got every patch, in order, and its results.
    let versions: Vec<u64> = kept
        .iter()
        .filter_map(patch_of)
        .map(|p| p.version)
        .collect();
    assert_eq!(versions, (2..=12).collect::<Vec<_>>());
    assert!(kept.iter().filter_map(snapshot_of).next().is_none());
    assert_eq!(results(&kept).len(), 10);
}

// ---- H10: bookmarks ------------------------------------------------------

#[test]
fn bookmarks_go_only_to_idle_attached_sessions() {
    for mode in MODES {
        let mut h = demo_host(mode);
        let idle = attach(&mut h, "idle");
        let idle_too = attach(&mut h, "idle-too");
        let behind = attach(&mut h, "behind");
        let unattached = connect(&mut h, "unattached");
        let shared = h
            .connect(PeerOptions {
                peer_id: "shared".to_owned(),
                publications: false,
            })
            .unwrap();
        sync(&mut h, shared, "", 0, 1);
        frames(&mut h, shared);
        commit(&mut h);
        frames(&mut h, idle);
        frames(&mut h, idle_too);

        h.bookmark();
        let one = frames(&mut h, idle);
        let two = frames(&mut h, idle_too);
        assert_eq!(one.len(), 1, "{mode:?}");
        assert_eq!(
            patch_of(&one[0]),
            Some(&Patch {
                base_version: 2,
                version: 2,
                patch_json: "[]".to_owned(),
                sync_id: 0
            })
        );
        assert_eq!(target(&one[0]), "");
        assert!(HostFrame::ptr_eq(&one[0], &two[0]), "one shared bookmark");

        let caught_up = frames(&mut h, behind);
        assert_eq!(caught_up.len(), 1, "the publication, not a bookmark");
        assert!(patch_of(&caught_up[0]).is_none_or(|p| p.version != p.base_version));
        assert!(frames(&mut h, unattached).is_empty());
        assert!(frames(&mut h, shared).is_empty());
        assert!(frames(&mut h, idle).is_empty(), "one bookmark per request");
    }
}

// ---- H15: section isolation ----------------------------------------------

/// Drives every kind of frame a host sends through several sessions and
/// returns all of them.
fn every_kind_of_frame(h: &mut HostCore) -> Vec<HostFrame> {
    let mut all = Vec::new();
    let keeper = attach(h, "keeper");
    let slow = attach(h, "slow");
    let shared = h
        .connect(PeerOptions {
            peer_id: "shared".to_owned(),
            publications: false,
        })
        .unwrap();
    sync(h, shared, "", 0, 1);
    for i in 0..6 {
        call(h, keeper, 2 * i + 1, "secret", "rotate", "[]");
        call(h, keeper, 2 * i + 2, "counter", "increase", "[1]");
        call(h, shared, i + 1, "secret", "rotate", "[]");
        all.extend(frames(h, keeper));
        all.extend(frames(h, shared));
    }
    all.extend(frames(h, slow));
    let late = connect(h, "late");
    sync(h, late, "", 0, 1);
    let resumer = connect(h, "resumer");
    let version = h.version();
    sync(h, resumer, EPOCH, version - 2, 1);
    h.bookmark();
    for peer in [keeper, slow, shared, late, resumer] {
        all.extend(frames(h, peer));
    }
    all
}

#[test]
fn a_private_section_never_appears_in_any_frame() {
    for mode in MODES {
        let mut h = HostCore::new(config_with(mode, history(2)), demo::app(MARKER), EPOCH);
        let all = every_kind_of_frame(&mut h);
        let token = h.module_state("secret").unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(token.contains(MARKER), "the secret is live: {token}");
        assert_ne!(token, MARKER, "and was rotated");

        let snapshot_reasons: Vec<i32> = all
            .iter()
            .filter_map(snapshot_of)
            .map(|s| s.reason)
            .collect();
        assert!(snapshot_reasons.contains(&(SnapshotReason::Sync as i32)));
        if mode == SyncMode::Patch {
            assert!(snapshot_reasons.contains(&(SnapshotReason::Overflow as i32)));
            assert!(
                all.iter()
                    .filter_map(patch_of)
                    .any(|p| p.version > p.base_version && p.sync_id == 0)
            );
        } else {
            assert!(snapshot_reasons.contains(&(SnapshotReason::Commit as i32)));
        }
        assert!(
            all.iter()
                .filter_map(patch_of)
                .any(|p| p.sync_id != 0 && p.version > p.base_version)
        );
        assert!(
            all.iter()
                .filter_map(patch_of)
                .any(|p| p.sync_id == 0 && p.version == p.base_version)
        );
        assert!(!results(&all).is_empty());

        for frame in &all {
            assert!(
                !contains(&frame.encoded(), MARKER),
                "{mode:?}: the secret leaked in {:#?}",
                frame.message()
            );
        }
    }
}

#[test]
fn a_published_secret_is_found_by_the_same_search() {
    // Control for the test above: the search does find the marker when the
    // section is published.
    let mut h = HostCore::new(
        HostConfig {
            sections: None,
            ..config_with(SyncMode::Patch, history(2))
        },
        demo::app(MARKER),
        EPOCH,
    );
    let all = every_kind_of_frame(&mut h);
    assert!(all.iter().any(|f| contains(&f.encoded(), MARKER)));
}

// ---- demo app ------------------------------------------------------------

fn ok(h: &mut HostCore, module: &str, method: &str, args: Value) -> Value {
    h.invoke(module, method, args.as_array().unwrap())
        .unwrap_or_else(|e| panic!("{module}.{method}({args}): {e}"))
}

fn err(h: &mut HostCore, module: &str, method: &str, args: Value) -> MethodError {
    let version = h.version();
    let view = h.view();
    let e = h
        .invoke(module, method, args.as_array().unwrap())
        .expect_err("an error");
    assert_eq!(h.version(), version, "an error commits nothing");
    assert_eq!(h.view(), view);
    e
}

#[test]
fn demo_counter_returns_the_new_count_and_refuses_overflow() {
    let mut h = demo_host(SyncMode::Patch);
    assert_eq!(ok(&mut h, "counter", "increase", json!([2])), json!(2));
    assert_eq!(ok(&mut h, "counter", "decrease", json!([5])), json!(-3));
    assert_eq!(h.view()["counter"], json!({"count": -3}));
    // -3 - MAX is below the signed 64-bit range.
    let e = err(&mut h, "counter", "decrease", json!([i64::MAX]));
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert_eq!(
        ok(&mut h, "counter", "increase", json!([i64::MAX])),
        json!(i64::MAX - 3)
    );
    let e = err(&mut h, "counter", "increase", json!([4]));
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    let e = err(&mut h, "counter", "fail", json!(["exactly this"]));
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::Failed, "exactly this")
    );
    assert_eq!(e.details, None);
}

#[test]
fn demo_todos_ids_start_at_one_increase_and_are_never_reused() {
    let mut h = demo_host(SyncMode::Patch);
    assert_eq!(ok(&mut h, "todos", "add", json!(["a"])), json!(1));
    assert_eq!(ok(&mut h, "todos", "add", json!(["b"])), json!(2));
    assert_eq!(ok(&mut h, "todos", "remove", json!([2])), json!(true));
    assert_eq!(ok(&mut h, "todos", "add", json!(["c"])), json!(3));
    assert_eq!(ok(&mut h, "todos", "clear", json!([])), json!(2));
    assert_eq!(ok(&mut h, "todos", "add", json!(["d"])), json!(4));
    assert_eq!(
        h.view()["todos"],
        json!({"items": [{"id": 4, "text": "d", "done": false}]})
    );
}

#[test]
fn demo_todos_toggle_returns_the_new_done() {
    let mut h = demo_host(SyncMode::Patch);
    ok(&mut h, "todos", "add", json!(["a"]));
    assert_eq!(ok(&mut h, "todos", "toggle", json!([1])), json!(true));
    assert_eq!(h.view()["todos"]["items"][0]["done"], json!(true));
    assert_eq!(ok(&mut h, "todos", "toggle", json!([1])), json!(false));
    assert_eq!(h.view()["todos"]["items"][0]["done"], json!(false));
}

#[test]
fn demo_todos_toggle_or_remove_of_an_unknown_id_is_not_found() {
    let mut h = demo_host(SyncMode::Patch);
    ok(&mut h, "todos", "add", json!(["a"]));
    assert_eq!(
        err(&mut h, "todos", "toggle", json!([2])).code,
        ErrorCode::NotFound
    );
    assert_eq!(
        err(&mut h, "todos", "remove", json!([2])).code,
        ErrorCode::NotFound
    );
    ok(&mut h, "todos", "remove", json!([1]));
    assert_eq!(
        err(&mut h, "todos", "remove", json!([1])).code,
        ErrorCode::NotFound
    );
}

#[test]
fn demo_todos_clear_returns_the_count_and_commits_nothing_when_empty() {
    let mut h = demo_host(SyncMode::Patch);
    assert_eq!(ok(&mut h, "todos", "clear", json!([])), json!(0));
    assert_eq!(h.version(), 1);
    ok(&mut h, "todos", "add_many", json!([["a", "b", "c"]]));
    assert_eq!(ok(&mut h, "todos", "clear", json!([])), json!(3));
    assert_eq!(h.view()["todos"], json!({"items": []}));
}

#[test]
fn demo_todos_add_many_is_one_version_and_returns_the_ids_in_order() {
    let mut h = demo_host(SyncMode::Patch);
    let a = attach(&mut h, "a");
    ok(&mut h, "todos", "add", json!(["first"]));
    frames(&mut h, a);
    assert_eq!(
        ok(&mut h, "todos", "add_many", json!([["x", "y", "z"]])),
        json!([2, 3, 4])
    );
    assert_eq!(h.version(), 3);
    let live = frames(&mut h, a);
    assert_eq!(live.len(), 1, "one publication for the whole call");
    let patch = patch_of(&live[0]).unwrap();
    assert_eq!((patch.base_version, patch.version), (2, 3));
    let view = h.view();
    let texts: Vec<&str> = view["todos"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["first", "x", "y", "z"]);
    assert_eq!(ok(&mut h, "todos", "add_many", json!([[]])), json!([]));
    assert_eq!(h.version(), 3);
}

#[test]
fn demo_secret_rotate_returns_null_and_always_changes_the_token() {
    // Whatever the initial token looks like, including one that resembles a
    // rotated token.
    for initial in [MARKER, "tok-r1", "a-r-b"] {
        let mut h = HostCore::new(
            HostConfig {
                sections: None,
                ..config(SyncMode::Patch)
            },
            demo::app(initial),
            EPOCH,
        );
        let mut previous = initial.to_owned();
        for round in 0..3 {
            let version = h.version();
            assert_eq!(ok(&mut h, "secret", "rotate", json!([])), Value::Null);
            let token = h.view()["secret"]["token"].as_str().unwrap().to_owned();
            assert_ne!(token, previous, "{initial:?}, round {round}");
            assert_eq!(
                h.version(),
                version + 1,
                "published: one version per rotation"
            );
            previous = token;
        }
    }
}

// ---- every session converges, whatever the interleaving ------------------

#[derive(Debug, Clone)]
enum Op {
    Call {
        session: usize,
        method: usize,
        arg: u8,
    },
    Poll {
        session: usize,
        max: usize,
    },
    Sync {
        session: usize,
        from_scratch: bool,
    },
    Bookmark,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3usize, 0..8usize, 0..4u8).prop_map(|(session, method, arg)| Op::Call { session, method, arg }),
        4 => (0..3usize, 0..4usize).prop_map(|(session, max)| Op::Poll { session, max }),
        1 => (0..3usize, any::<bool>()).prop_map(|(session, from_scratch)| Op::Sync { session, from_scratch }),
        1 => Just(Op::Bookmark),
    ]
}

fn demo_call(method: usize, arg: u8) -> (&'static str, &'static str, String) {
    let n = u64::from(arg);
    match method {
        0 => ("counter", "increase", format!("[{}]", i64::from(arg) - 1)),
        1 => ("todos", "add", "[\"t\"]".to_owned()),
        2 => ("todos", "toggle", format!("[{n}]")),
        3 => ("todos", "remove", format!("[{n}]")),
        4 => ("todos", "clear", "[]".to_owned()),
        5 => (
            "todos",
            "add_many",
            json!([vec!["m"; arg as usize]]).to_string(),
        ),
        6 => ("secret", "rotate", "[]".to_owned()),
        _ => ("counter", "fail", "[\"no\"]".to_owned()),
    }
}

/// One session's view of what it has been sent.
#[derive(Debug, Default)]
struct Session {
    version: u64,
    view: Value,
    calls: Vec<u64>,
    results: Vec<u64>,
    next_sync: u64,
}

/// Applies one frame, checking the ordering duties on the way.
fn receive(session: &mut Session, frame: &HostFrame) -> Result<(), TestCaseError> {
    match kind(frame) {
        host_message::Kind::Snapshot(s) => {
            prop_assert!(s.version >= session.version, "a snapshot went back in time");
            session.version = s.version;
            session.view = state(s);
        }
        host_message::Kind::Patch(p) => {
            prop_assert_eq!(
                p.base_version,
                session.version,
                "an ordered session never sees a gap"
            );
            apply_patch(&mut session.view, &p.patch_json)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            session.version = p.version;
        }
        host_message::Kind::Result(r) => {
            prop_assert!(
                r.state_version <= session.version,
                "result for {} names {} before the session reached it ({})",
                r.call_id,
                r.state_version,
                session.version
            );
            session.results.push(r.call_id);
        }
    }
    Ok(())
}

fn converge(mode: SyncMode, window: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut h = HostCore::new(config_with(mode, history(window)), demo::app(MARKER), EPOCH);
    let mut keys = Vec::new();
    let mut sessions: Vec<Session> = Vec::new();
    for name in ["s0", "s1", "s2"] {
        let key = connect(&mut h, name);
        sync(&mut h, key, "", 0, 1);
        keys.push(key);
        sessions.push(Session {
            next_sync: 2,
            ..Default::default()
        });
    }
    for op in ops {
        match op {
            Op::Call {
                session,
                method,
                arg,
            } => {
                let (module, name, args) = demo_call(method, arg);
                let id = sessions[session].calls.len() as u64 + 1;
                call(&mut h, keys[session], id, module, name, &args);
                sessions[session].calls.push(id);
            }
            Op::Poll { session, max } => {
                for _ in 0..max {
                    let Some(frame) = h.poll_transmit(keys[session]) else {
                        break;
                    };
                    receive(&mut sessions[session], &frame)?;
                }
            }
            Op::Sync {
                session,
                from_scratch,
            } => {
                let s = &mut sessions[session];
                let have = if from_scratch { 0 } else { s.version };
                let sync_id = s.next_sync;
                s.next_sync += 1;
                sync(&mut h, keys[session], EPOCH, have, sync_id);
            }
            Op::Bookmark => h.bookmark(),
        }
    }
    for (key, session) in keys.iter().zip(&mut sessions) {
        while let Some(frame) = h.poll_transmit(*key) {
            receive(session, &frame)?;
        }
        prop_assert_eq!(session.version, h.version());
        prop_assert_eq!(&session.view, &h.view());
        prop_assert_eq!(
            &session.results,
            &session.calls,
            "one result per call, in order"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_session_converges_on_the_view_and_gets_one_result_per_call(
        patch_mode in any::<bool>(),
        window in 1..4usize,
        ops in proptest::collection::vec(op(), 0..60),
    ) {
        let mode = if patch_mode { SyncMode::Patch } else { SyncMode::Snapshot };
        converge(mode, window, ops)?;
    }
}

#[test]
fn results_and_sync_answers_are_addressed_to_the_requesters_source() {
    let mut h = demo_host(SyncMode::Patch);
    let peer = connect(&mut h, "transport-label");
    let mut sync = sync_msg("", 0, 1);
    sync.header.as_mut().unwrap().source = "tab-7".to_owned();
    h.handle_message(peer, sync).unwrap();
    let mut call = call_msg(EPOCH, 1, "counter", "increase", "[1]");
    call.header.as_mut().unwrap().source = "tab-8".to_owned();
    h.handle_message(peer, call).unwrap();
    let out = frames(&mut h, peer);
    let targets: Vec<&str> = out.iter().map(target).collect();
    // The sync reply is built when it is sent, after the call committed, so
    // it covers version 2 and no publication of it follows.
    assert_eq!(targets, vec!["tab-7", "tab-8"]);
    assert_eq!(snapshot_of(&out[0]).map(|s| s.version), Some(2));
}

#[test]
fn only_the_last_of_many_unsent_sync_requests_is_answered_at_the_version_it_is_sent() {
    // H1's exception: each request replaces the unsent reply to the last.
    let mut h = demo_host(SyncMode::Patch);
    let peer = attach(&mut h, "client");
    call(&mut h, peer, 1, "counter", "increase", "[1]");
    frames(&mut h, peer);
    for sync_id in 2..1000 {
        sync(&mut h, peer, "", 0, sync_id);
    }
    // Sync requests arriving with another's reply still unsent replace it.
    sync(&mut h, peer, EPOCH, 1, 1000);
    let out = frames(&mut h, peer);
    assert_eq!(out.len(), 1);
    let patch = patch_of(&out[0]).expect("a resume patch");
    assert_eq!(
        (patch.base_version, patch.version, patch.sync_id),
        (1, 2, 1000)
    );
}

#[test]
fn a_draft_writing_an_equal_value_publishes_no_version() {
    let app = App::new().with(
        JsonModule::new("flags", json!({"on": true}))
            .method("set", |d: &mut Draft<'_>, (on,): (bool,)| {
                Ok(d.replace("/on", on)?)
            }),
    );
    let mut h = HostCore::new(
        HostConfig {
            sync: SyncMode::Patch,
            ..Default::default()
        },
        app,
        EPOCH,
    );
    h.invoke("flags", "set", &[json!(true)]).unwrap();
    assert_eq!(h.version(), 1);
    h.invoke("flags", "set", &[json!(false)]).unwrap();
    assert_eq!(h.version(), 2);
}

#[test]
fn a_queued_sync_answer_does_not_count_as_a_call_in_flight() {
    let config = HostConfig {
        sync: SyncMode::Patch,
        limits: HostLimits {
            max_calls_in_flight: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut h = HostCore::new(config, demo::app("m"), EPOCH);
    let peer = connect(&mut h, "a");
    sync(&mut h, peer, "", 0, 1);
    call(&mut h, peer, 1, "counter", "increase", "[1]");
    let out = frames(&mut h, peer);
    let result = out.iter().find_map(result_of).expect("a result");
    assert!(
        matches!(result.outcome, Some(call_result::Outcome::ValueJson(_))),
        "{result:?}"
    );
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Gauge {
    level: f64,
}

/// Modules whose methods produce a non-finite number: in the state, in the
/// result, and through a draft.
fn non_finite_app() -> App {
    let typed = TypedModule::new("gauge", Gauge::default())
        .method("set", |s: &mut Gauge, (v,): (f64,)| {
            s.level = v;
            Ok(s.level)
        })
        .method("divide", |s: &mut Gauge, (by,): (f64,)| Ok(s.level / by))
        .method("overflow", |s: &mut Gauge, (): ()| {
            s.level = f64::MAX * 2.0;
            Ok(())
        });
    let recording = JsonModule::new("meter", json!({"level": 0}))
        .method("set", |d: &mut Draft<'_>, (v,): (f64,)| {
            d.replace("/level", v)?;
            Ok(())
        })
        .method("nan", |d: &mut Draft<'_>, (): ()| {
            d.replace("/level", 1)?;
            d.replace("/level", f64::NAN)?;
            Ok(())
        })
        .method("ratio", |_d: &mut Draft<'_>, (): ()| Ok(f64::NAN));
    App::new().with(typed).with(recording)
}

#[test]
fn a_state_or_result_that_is_not_json_is_internal_commits_nothing_and_the_host_keeps_serving() {
    for mode in MODES {
        let mut h = publishing_all(non_finite_app(), mode);
        let a = attach(&mut h, "a");
        call(&mut h, a, 1, "gauge", "set", "[2.5]");
        call(&mut h, a, 2, "meter", "set", "[2.5]");
        let _ = frames(&mut h, a);
        let before = h.view();
        let version = h.version();
        // 0 / 0 is NaN (a result); the state overflowing to infinity; a
        // draft writing NaN after a good write; a result of NaN from a draft.
        call(&mut h, a, 3, "gauge", "divide", "[0]");
        call(&mut h, a, 4, "gauge", "overflow", "[]");
        call(&mut h, a, 5, "meter", "nan", "[]");
        call(&mut h, a, 6, "meter", "ratio", "[]");
        let out = frames(&mut h, a);
        assert_eq!(out.len(), 4, "results only, no publication: {out:#?}");
        for r in results(&out) {
            assert_eq!(code(&r), ErrorCode::Internal, "{mode:?}: {r:?}");
            assert_eq!(r.state_version, version);
        }
        assert_eq!(h.version(), version);
        assert_eq!(h.view(), before, "{mode:?}: nothing committed");

        // The modules were rolled back and keep serving.
        call(&mut h, a, 7, "gauge", "divide", "[2]");
        call(&mut h, a, 8, "meter", "set", "[4]");
        let got = results(&frames(&mut h, a));
        assert_eq!(value(&got[0]), json!(1.25));
        assert_eq!(h.view()["meter"], json!({"level": 4.0}));
        assert_eq!(h.view()["gauge"], json!({"level": 2.5}));
    }
}

// ---- views too large for one snapshot (spec §15) -------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Log {
    items: Vec<String>,
}

/// A recording module `log` and a typed module `tlog`, each a list of
/// strings with `append(text)`, `pop()` and `set_first(text)`.
fn logs_app() -> App {
    let recording = JsonModule::new("log", json!({"items": []}))
        .method("append", |d: &mut Draft<'_>, (text,): (String,)| {
            Ok(d.push("/items", text)?)
        })
        .method("pop", |d: &mut Draft<'_>, (): ()| {
            let n = d
                .get("/items")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if n > 0 {
                d.remove(&format!("/items/{}", n - 1))?;
            }
            Ok(n)
        })
        .method("set_first", |d: &mut Draft<'_>, (text,): (String,)| {
            let n = d
                .get("/items")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if n > 0 {
                d.replace("/items/0", text)?;
            }
            Ok(n)
        });
    let typed = TypedModule::new("tlog", Log::default())
        .method("append", |s: &mut Log, (text,): (String,)| {
            s.items.push(text);
            Ok(s.items.len())
        })
        .method("pop", |s: &mut Log, (): ()| Ok(s.items.pop().is_some()))
        .method("set_first", |s: &mut Log, (text,): (String,)| {
            if let Some(first) = s.items.first_mut() {
                *first = text;
            }
            Ok(s.items.len())
        });
    App::new().with(recording).with(typed)
}

const SMALL_LIMIT: usize = 2048;

/// A host configuration with messages of at most [`SMALL_LIMIT`] bytes.
fn small_limit(mode: SyncMode) -> HostConfig {
    HostConfig {
        sync: mode,
        peer_id: HOST.to_owned(),
        limits: HostLimits {
            max_message_bytes: SMALL_LIMIT,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn small_host(mode: SyncMode) -> HostCore {
    HostCore::new(small_limit(mode), logs_app(), EPOCH)
}

/// The encoded size of the snapshot a new client with a 64-byte peer id is
/// sent.
fn snapshot_size(h: &mut HostCore) -> usize {
    let peer = connect(h, &"p".repeat(64));
    sync(h, peer, "", 0, 1);
    let reply = frames(h, peer);
    h.disconnect(peer);
    assert!(snapshot_of(&reply[0]).is_some(), "a snapshot");
    reply[0].encoded().len()
}

#[test]
fn a_call_that_would_make_the_view_too_large_for_one_snapshot_is_refused_and_commits_nothing() {
    for mode in MODES {
        for module in ["log", "tlog"] {
            let mut h = small_host(mode);
            let mut accepted = 0;
            let refusal = loop {
                match h.invoke(module, "append", &[json!("x".repeat(300))]) {
                    Ok(_) => accepted += 1,
                    Err(error) => break error,
                }
                assert!(accepted < 10, "{module}: never refused");
            };
            assert_eq!(refusal.code, ErrorCode::ResourceExhausted, "{refusal}");
            assert!(
                accepted >= 4,
                "{module} in {mode:?}: refused too early ({accepted})"
            );
            while h.poll_event().is_some() {}
            let (version, state) = (h.version(), h.module_state(module).cloned());

            // The refused call left no trace, and what was accepted fits.
            assert_eq!(h.version(), version);
            assert_eq!(h.module_state(module).cloned(), state);
            assert!(h.poll_event().is_none(), "nothing was published");
            assert!(snapshot_size(&mut h) <= SMALL_LIMIT);

            // A call that fits still commits, and one that shrinks the view
            // always does.
            h.invoke(module, "append", &[json!("y")]).unwrap();
            assert_eq!(h.version(), version + 1);
            h.invoke(module, "pop", &[]).unwrap();
            assert_eq!(h.version(), version + 2);
            assert_eq!(h.module_state(module).cloned(), state);
            assert!(snapshot_size(&mut h) <= SMALL_LIMIT);
        }
    }
}

#[test]
fn a_refused_call_answers_its_client_resource_exhausted() {
    let mut h = small_host(SyncMode::Patch);
    let peer = attach(&mut h, "c");
    // Each call fits one message; the second would take the view past it.
    let half = serde_json::to_string(&[json!("z".repeat(SMALL_LIMIT * 3 / 5))]).unwrap();
    call(&mut h, peer, 1, "log", "append", &half);
    assert_eq!(only_result(&frames(&mut h, peer)).state_version, 2);
    call(&mut h, peer, 2, "log", "append", &half);
    let result = only_result(&frames(&mut h, peer));
    let (code, message) = error(&result);
    assert_eq!(code, ErrorCode::ResourceExhausted);
    assert!(message.contains("as one snapshot"), "{message}");
    assert_eq!(result.state_version, 2);
    assert_eq!(
        h.module_state("log"),
        Some(&json!({"items": ["z".repeat(SMALL_LIMIT * 3 / 5)]}))
    );
}

#[derive(Debug, Clone)]
enum LogOp {
    Append(usize),
    Pop,
    SetFirst(usize),
}

fn log_op() -> impl Strategy<Value = LogOp> {
    prop_oneof![
        3 => (0usize..700).prop_map(LogOp::Append),
        1 => Just(LogOp::Pop),
        1 => (0usize..700).prop_map(LogOp::SetFirst),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the calls, every snapshot fits the message limit, a refused
    /// call changes nothing, and only a call that would have grown the view
    /// past the limit is refused.
    #[test]
    fn every_snapshot_fits_the_message_limit_and_refused_calls_change_nothing(
        ops in proptest::collection::vec(log_op(), 1..40),
        typed in any::<bool>(),
        snapshot_mode in any::<bool>(),
    ) {
        let module = if typed { "tlog" } else { "log" };
        let mode = if snapshot_mode { SyncMode::Snapshot } else { SyncMode::Patch };
        let mut h = small_host(mode);
        let mut model: Vec<String> = Vec::new();
        for op in ops {
            let mut next = model.clone();
            let (method, args) = match &op {
                LogOp::Append(n) => {
                    next.push("a".repeat(*n));
                    ("append", vec![json!("a".repeat(*n))])
                }
                LogOp::Pop => {
                    next.pop();
                    ("pop", vec![])
                }
                LogOp::SetFirst(n) => {
                    if let Some(first) = next.first_mut() {
                        *first = "s".repeat(*n);
                    }
                    ("set_first", vec![json!("s".repeat(*n))])
                }
            };
            let version = h.version();
            match h.invoke(module, method, &args) {
                Ok(_) => model = next,
                Err(error) => {
                    prop_assert_eq!(error.code, ErrorCode::ResourceExhausted);
                    prop_assert_eq!(h.version(), version);
                    // Refused only when the view would not have fitted: its
                    // JSON alone would have left under 300 bytes for the
                    // envelope.
                    let other = if typed { "log" } else { "tlog" };
                    let view = json!({module: {"items": next}, other: {"items": []}});
                    prop_assert!(view.to_string().len() > SMALL_LIMIT - 300, "{op:?}");
                }
            }
            prop_assert_eq!(h.module_state(module), Some(&json!({"items": model})));
            prop_assert!(snapshot_size(&mut h) <= SMALL_LIMIT);
        }
    }
}

#[test]
fn a_view_already_too_large_still_takes_calls_that_do_not_make_it_larger() {
    // Over the limit from the start (a big initial state).
    let app = App::new()
        .with(
            JsonModule::new("blob", json!({"s": "x".repeat(3000)})).method(
                "set",
                |d: &mut Draft<'_>, (s,): (String,)| {
                    d.replace("/s", s)?;
                    Ok(())
                },
            ),
        )
        .with(JsonModule::new("count", json!({"n": 10})).method(
            "set",
            |d: &mut Draft<'_>, (n,): (u64,)| {
                d.replace("/n", n)?;
                Ok(())
            },
        ));
    let mut h = HostCore::new(small_limit(SyncMode::Snapshot), app, EPOCH);
    // The same size (10 → 20) is committed, and so is smaller.
    h.invoke("count", "set", &[json!(20)]).unwrap();
    h.invoke("count", "set", &[json!(9)]).unwrap();
    h.invoke("blob", "set", &[json!("y".repeat(2900))]).unwrap();
    assert_eq!(h.version(), 4);
    // Growing it further is refused, and changes nothing.
    let error = h.invoke("count", "set", &[json!(123_456_789)]).unwrap_err();
    assert_eq!(error.code, ErrorCode::ResourceExhausted);
    assert_eq!(h.module_state("count"), Some(&json!({"n": 9})));
    assert_eq!(h.version(), 4);
    // Shrinking it under the limit makes room again.
    h.invoke("blob", "set", &[json!("z")]).unwrap();
    h.invoke("count", "set", &[json!(123_456_789)]).unwrap();
    assert_eq!(h.version(), 6);
}

#[test]
fn a_draft_add_at_an_invalid_path_changes_nothing_even_if_the_method_ignores_the_error() {
    let app = App::new().with(JsonModule::new("m", json!({"a": 1})).method(
        "sneak",
        |d: &mut Draft<'_>, (): ()| {
            let refused = d.add("/b~2", "y".repeat(100));
            Ok(refused.is_err())
        },
    ));
    let mut h = HostCore::new(HostConfig::default(), app, EPOCH);
    assert_eq!(h.invoke("m", "sneak", &[]), Ok(json!(true)));
    assert_eq!(h.module_state("m"), Some(&json!({"a": 1})));
    assert_eq!(h.version(), 1);
}

/// A module that counts the host's verdicts and may be unable to revert.
struct Verdicts {
    inner: JsonModule,
    can_revert: bool,
    log: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
}

impl Module for Verdicts {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn declares(&self, method: &str) -> bool {
        self.inner.declares(method)
    }
    fn methods(&self) -> Vec<String> {
        self.inner.methods()
    }
    fn state(&self) -> &Value {
        self.inner.state()
    }
    fn invoke(&mut self, method: &str, args: &[Value]) -> Result<Invocation, MethodError> {
        self.inner.invoke(method, args)
    }
    fn rollback(&mut self) {
        self.inner.rollback();
    }
    fn settle(&mut self, keep: bool) -> bool {
        self.log.lock().unwrap().push(keep);
        if keep || self.can_revert {
            self.inner.settle(keep)
        } else {
            false
        }
    }
}

#[test]
fn every_successful_call_is_settled_once_and_a_module_that_cannot_revert_keeps_its_commit() {
    for can_revert in [true, false] {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let module = Verdicts {
            inner: JsonModule::new("v", json!({"s": ""})).method(
                "set",
                |d: &mut Draft<'_>, (s,): (String,)| {
                    d.replace("/s", s)?;
                    Ok(())
                },
            ),
            can_revert,
            log: log.clone(),
        };
        let mut h = HostCore::new(
            small_limit(SyncMode::Snapshot),
            App::new().with(module),
            EPOCH,
        );
        h.invoke("v", "set", &[json!("a")]).unwrap();
        h.invoke("v", "set", &[json!("a")]).unwrap(); // no change, still settled
        let big = h.invoke("v", "set", &[json!("b".repeat(SMALL_LIMIT))]);
        assert_eq!(*log.lock().unwrap(), vec![true, true, false]);
        if can_revert {
            assert_eq!(big.unwrap_err().code, ErrorCode::ResourceExhausted);
            assert_eq!(h.version(), 2);
        } else {
            let error = big.unwrap_err();
            assert_eq!(error.code, ErrorCode::ResourceExhausted);
            assert!(error.message.contains("could not revert"), "{error}");
            assert_eq!(h.version(), 3, "the commit it could not revert stands");
        }
    }
}

#[test]
fn a_reply_only_session_is_answered_at_the_version_of_its_request() {
    // On a shared channel the publications travel in another session; a
    // reply built later could name a version whose publication is not on the
    // channel yet (SC5), so a session without publications is answered as
    // of its request.
    let mut h = demo_host(SyncMode::Patch);
    let peer = h
        .connect(PeerOptions {
            peer_id: "reply-only".to_owned(),
            publications: false,
        })
        .unwrap();
    sync(&mut h, peer, "", 0, 1);
    h.invoke("counter", "increase", &[json!(1)]).unwrap();
    let out = frames(&mut h, peer);
    assert_eq!(out.len(), 1);
    assert_eq!(snapshot_of(&out[0]).map(|s| s.version), Some(1));
}

fn from_source(source: &str, kind: client_message::Kind) -> ClientMessage {
    ClientMessage {
        header: Some(Header::v1(EPOCH, source, HOST)),
        kind: Some(kind),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The host shares the headers of its frames between frames, per target
    /// and per session. Whatever sources two sessions use, in whatever
    /// order, each answer is addressed to the source of its request and
    /// each publication to nobody, always from the host in its epoch.
    #[test]
    fn every_frame_is_addressed_to_its_requests_source_however_sessions_interleave(
        mode in prop_oneof![Just(SyncMode::Patch), Just(SyncMode::Snapshot)],
        steps in prop::collection::vec((0..2usize, 0..3usize, any::<bool>(), 0..4u64), 1..40),
    ) {
        let sources = ["alice", "bob", ""];
        let mut h = demo_host(mode);
        let peers = [attach(&mut h, "one"), attach(&mut h, "two")];
        let mut call_id = 0;
        for (session, source, is_call, have) in steps {
            let (peer, source) = (peers[session], sources[source]);
            let kind = if is_call {
                call_id += 1;
                client_message::Kind::Call(Call {
                    call_id,
                    module: "counter".to_owned(),
                    method: "increase".to_owned(),
                    args_json: "[1]".to_owned(),
                })
            } else {
                client_message::Kind::SyncRequest(common::sync_request(call_id + 100, have))
            };
            h.handle_message(peer, from_source(source, kind)).unwrap();
            for (i, &other) in peers.iter().enumerate() {
                for frame in frames(&mut h, other) {
                    let header = frame.message().header.clone().unwrap();
                    prop_assert_eq!(&header.epoch, EPOCH);
                    prop_assert_eq!(&header.source, HOST);
                    let answer = result_of(&frame).is_some()
                        || snapshot_of(&frame).is_some_and(|s| s.sync_id != 0)
                        || patch_of(&frame).is_some_and(|p| p.sync_id != 0);
                    let want = if answer && i == session { source } else { "" };
                    prop_assert_eq!(&header.target, want, "{:?}", frame.message());
                    prop_assert_eq!(frame.header(), Some(&header));
                }
            }
        }
    }
}
