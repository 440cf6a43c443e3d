//! What a host sends stays within one message, and what it keeps for one
//! session stays bounded, whatever a peer asks for: publications whose diff
//! dwarfs the value, resumes spanning large changes, oversized values,
//! error messages quoting huge input, and sessions that never read.

mod common;

use cosystem_worker::app::{App, Draft, JsonModule, TypedModule};
use cosystem_worker::client::apply_patch;
use cosystem_worker::host::{HostCore, InputError, PeerKey, PeerOptions};
use cosystem_worker::wire::{
    Call, CallResult, ClientMessage, ErrorCode, Header, HostFrame, SyncReason, SyncRequest,
    call_result, client_message, host_message,
};
use prost::Message;
use serde_json::{Value, json};

const EPOCH: &str = "e-bounds";
const LIMIT: usize = 64 * 1024;

fn host(app: App, max_message_bytes: usize) -> HostCore {
    HostCore::new(common::patch_config(max_message_bytes), app, EPOCH)
}

fn envelope(source: &str, kind: client_message::Kind) -> ClientMessage {
    ClientMessage {
        header: Some(Header::v1(EPOCH, source, "")),
        kind: Some(kind),
    }
}

fn call(h: &mut HostCore, peer: PeerKey, id: u64, module: &str, method: &str, args: Value) {
    h.handle_message(peer, call_envelope("client", id, module, method, args))
        .expect("a call is accepted as input");
}

fn call_envelope(source: &str, id: u64, module: &str, method: &str, args: Value) -> ClientMessage {
    envelope(
        source,
        client_message::Kind::Call(Call {
            call_id: id,
            module: module.to_owned(),
            method: method.to_owned(),
            args_json: args.to_string(),
        }),
    )
}

fn sync(h: &mut HostCore, peer: PeerKey, have_version: u64, sync_id: u64) {
    let request = SyncRequest {
        sync_id,
        have_version,
        reason: SyncReason::VersionGap as i32,
    };
    h.handle_message(
        peer,
        envelope("client", client_message::Kind::SyncRequest(request)),
    )
    .expect("a sync request is accepted");
}

fn frames(h: &mut HostCore, peer: PeerKey) -> Vec<HostFrame> {
    std::iter::from_fn(|| h.poll_transmit(peer)).collect()
}

fn attach(h: &mut HostCore) -> (PeerKey, Value) {
    let peer = h
        .connect(PeerOptions {
            peer_id: "client".into(),
            publications: true,
        })
        .expect("a session");
    sync(h, peer, 0, 1);
    let reply = frames(h, peer);
    let Some(host_message::Kind::Snapshot(s)) = reply[0].message().kind.as_ref() else {
        panic!("the first reply is a snapshot");
    };
    (peer, serde_json::from_str(&s.state_json).expect("JSON"))
}

fn result(frames: &[HostFrame]) -> &CallResult {
    frames
        .iter()
        .find_map(|f| match f.message().kind.as_ref() {
            Some(host_message::Kind::Result(r)) => Some(r),
            _ => None,
        })
        .expect("a result")
}

fn error_of(result: &CallResult) -> (ErrorCode, &str) {
    match result.outcome.as_ref() {
        Some(call_result::Outcome::Error(e)) => (
            ErrorCode::try_from(e.code).expect("a known code"),
            e.message.as_str(),
        ),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn numbers() -> App {
    App::new().with(
        TypedModule::new("nums", (0..20_000i64).collect::<Vec<_>>())
            .method("shift", |s: &mut Vec<i64>, (): ()| Ok(s.remove(0))),
    )
}

#[test]
fn a_change_whose_diff_dwarfs_its_section_is_published_as_one_replace_of_the_section() {
    let mut h = host(numbers(), 4 * 1024 * 1024);
    let (peer, mut view) = attach(&mut h);
    call(&mut h, peer, 1, "nums", "shift", json!([]));
    let out = frames(&mut h, peer);
    let Some(host_message::Kind::Patch(patch)) = out[0].message().kind.as_ref() else {
        panic!("a publication first");
    };
    // The index-by-index diff of removing the first of 20 000 numbers is
    // about 20 000 replaces; the section itself is about 110 KB.
    let section = serde_json::to_string(&view["nums"]).expect("JSON").len();
    assert!(
        patch.patch_json.len() < section + 64,
        "published {} bytes for a section of {section}",
        patch.patch_json.len()
    );
    let ops: Value = serde_json::from_str(&patch.patch_json).expect("JSON");
    assert_eq!(ops[0]["op"], "replace");
    assert_eq!(ops[0]["path"], "/nums");
    apply_patch(&mut view, &patch.patch_json).expect("the patch applies");
    assert_eq!(view["nums"][0], 1);
    assert_eq!(view["nums"].as_array().map(Vec::len), Some(19_999));
}

#[test]
fn a_resume_longer_than_one_message_is_answered_with_a_snapshot() {
    let mut h = host(common::texts(true), LIMIT);
    let (peer, _) = attach(&mut h);
    // Five 20 KB additions, each cleared again: the view stays tiny, the
    // operations from version 1 add up to over 100 KB.
    for i in 0..5 {
        call(
            &mut h,
            peer,
            2 * i + 1,
            "texts",
            "add",
            json!(["x".repeat(20_000)]),
        );
        call(&mut h, peer, 2 * i + 2, "texts", "clear", json!([]));
    }
    frames(&mut h, peer);
    sync(&mut h, peer, 1, 2);
    let reply = frames(&mut h, peer);
    let Some(host_message::Kind::Snapshot(s)) = reply[0].message().kind.as_ref() else {
        panic!("expected a snapshot, got {:?}", reply[0].message().kind);
    };
    assert_eq!((s.version, s.sync_id), (11, 2));
    assert!(reply[0].message().encoded_len() <= LIMIT);
    // A short resume is still a Patch.
    sync(&mut h, peer, 10, 3);
    let reply = frames(&mut h, peer);
    assert!(matches!(
        reply[0].message().kind,
        Some(host_message::Kind::Patch(_))
    ));
}

#[test]
fn a_value_too_large_for_one_result_is_refused_and_commits_nothing() {
    let mut h = host(common::texts(true), LIMIT);
    let (peer, _) = attach(&mut h);
    call(
        &mut h,
        peer,
        1,
        "texts",
        "echo",
        json!(["y".repeat(LIMIT / 2), 2]),
    );
    let out = frames(&mut h, peer);
    assert_eq!(out.len(), 1, "no publication: {out:?}");
    let r = result(&out);
    assert_eq!(r.state_version, 1);
    let (code, message) = error_of(r);
    assert_eq!(code, ErrorCode::ResourceExhausted);
    assert!(message.contains("too large for one result"), "{message}");
    assert!(out[0].message().encoded_len() <= LIMIT);
    // A value that fits is answered and committed.
    call(&mut h, peer, 2, "texts", "echo", json!(["short", 1]));
    let out = frames(&mut h, peer);
    assert_eq!(result(&out).state_version, 2);
}

#[test]
fn an_error_quoting_a_huge_name_is_cut_short() {
    let mut h = host(common::texts(true), 4 * 1024 * 1024);
    let (peer, _) = attach(&mut h);
    let name = "\u{1}".repeat(1_000_000);
    call(&mut h, peer, 1, &name, "m", json!([]));
    let out = frames(&mut h, peer);
    let (code, message) = error_of(result(&out));
    assert_eq!(code, ErrorCode::NotFound);
    // Cut before it is escaped (escaping all of it cost ~80 ms at 4 MiB),
    // saying how long it was.
    assert!(message.len() < 1100, "{} bytes", message.len());
    assert!(message.ends_with("(1000000 bytes)"), "{message}");
}

#[test]
fn a_session_that_does_not_read_its_results_is_refused_calls_then_closed() {
    let mut h = host(common::texts(true), LIMIT);
    let (peer, _) = attach(&mut h);
    // Every result is addressed to its call's 1 KB source, so each unread
    // result holds about 1 KB.
    let source = "s".repeat(1000);
    let mut closed = None;
    for id in 1..=5000 {
        let message = call_envelope(&source, id, "texts", "add", json!(["x"]));
        if let Err(e) = h.handle_message(peer, message) {
            closed = Some((id, e));
            break;
        }
    }
    let (id, error) = closed.expect("the backlog is bounded");
    assert!(matches!(error, InputError::Backlog { .. }), "{error:?}");
    assert!(error.is_fatal());
    // 8 messages of 64 KiB is the budget: past it calls are refused unrun,
    // past twice it the session is closed.
    assert!((900..=1050).contains(&id), "closed at call {id}");
    let out = frames(&mut h, peer);
    let results: Vec<&CallResult> = out
        .iter()
        .filter_map(|f| match f.message().kind.as_ref() {
            Some(host_message::Kind::Result(r)) => Some(r),
            _ => None,
        })
        .collect();
    let ran = results
        .iter()
        .filter(|r| {
            r.outcome
                .as_ref()
                .is_some_and(|o| matches!(o, call_result::Outcome::ValueJson(_)))
        })
        .count();
    assert!((450..=525).contains(&ran), "{ran} calls ran");
    let refused = &results[ran..];
    assert!(!refused.is_empty());
    for r in refused {
        let (code, message) = error_of(r);
        assert_eq!(code, ErrorCode::ResourceExhausted);
        assert!(message.contains("waiting to be sent"), "{message}");
    }
    assert_eq!(h.version(), 1 + ran as u64);
}

#[test]
fn error_details_too_large_are_dropped_and_the_message_says_so() {
    let app = App::new().with(JsonModule::new("d", json!({})).method(
        "fail",
        |_: &mut Draft<'_>, (text,): (String,)| -> Result<(), _> {
            Err(cosystem_worker::app::MethodError::failed("no").with_details(json!({"got": text})))
        },
    ));
    let mut h = host(app, 4 * 1024 * 1024);
    let (peer, _) = attach(&mut h);
    call(&mut h, peer, 1, "d", "fail", json!(["z".repeat(100_000)]));
    let out = frames(&mut h, peer);
    let r = result(&out);
    let (code, message) = error_of(r);
    assert_eq!(code, ErrorCode::Failed);
    assert!(message.contains("details of 100"), "{message}");
    match r.outcome.as_ref() {
        Some(call_result::Outcome::Error(e)) => assert!(e.details_json.is_empty()),
        other => panic!("{other:?}"),
    }
    // Small details are kept.
    call(&mut h, peer, 2, "d", "fail", json!(["small"]));
    match result(&frames(&mut h, peer)).outcome.as_ref() {
        Some(call_result::Outcome::Error(e)) => assert!(e.details_json.contains("small")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_envelope_whose_source_is_too_long_to_answer_is_not_processed() {
    let mut h = host(common::texts(true), LIMIT);
    let (peer, _) = attach(&mut h);
    let message = call_envelope(&"s".repeat(2000), 1, "texts", "add", json!(["x"]));
    let refused = h.handle_message(peer, message);
    assert!(
        matches!(
            refused,
            Err(InputError::PeerIdTooLong {
                len: 2000,
                limit: 1024
            })
        ),
        "{refused:?}"
    );
    assert!(!refused.unwrap_err().is_fatal());
    assert!(frames(&mut h, peer).is_empty());
    assert_eq!(h.version(), 1);
}
