//! The host's limits and orderings at their exact bounds: a size at the
//! limit is taken and one byte over it is not, results and sync replies
//! keep their order, and every message is sized with the target it
//! carries. Each test here fails if its bound is off by one. (A call on a
//! view already over the limit is in `host_core.rs`.)

mod common;

use cosystem_worker::app::App;
use cosystem_worker::demo;
use cosystem_worker::host::{HostConfig, HostCore, HostLimits, PeerKey, PeerOptions, SyncMode};
use cosystem_worker::wire::{
    Call, ClientMessage, ErrorCode, Header, HostFrame, SnapshotReason, SyncReason, SyncRequest,
    call_result, client_message, host_message,
};
use prost::Message;
use serde_json::json;

const EPOCH: &str = "e-gaps";

fn frames(h: &mut HostCore, peer: PeerKey) -> Vec<HostFrame> {
    std::iter::from_fn(|| h.poll_transmit(peer)).collect()
}

fn env(source: &str, kind: client_message::Kind) -> ClientMessage {
    ClientMessage {
        header: Some(Header::v1(EPOCH, source, "")),
        kind: Some(kind),
    }
}

fn sync_env(source: &str, have: u64, id: u64) -> ClientMessage {
    env(
        source,
        client_message::Kind::SyncRequest(SyncRequest {
            sync_id: id,
            have_version: have,
            reason: SyncReason::VersionGap as i32,
        }),
    )
}

fn call_env(source: &str, id: u64, module: &str, method: &str, args: &str) -> ClientMessage {
    env(
        source,
        client_message::Kind::Call(Call {
            call_id: id,
            module: module.into(),
            method: method.into(),
            args_json: args.into(),
        }),
    )
}

fn attach(h: &mut HostCore, source: &str) -> PeerKey {
    let p = h
        .connect(PeerOptions {
            peer_id: "p".into(),
            publications: true,
        })
        .unwrap();
    h.handle_message(p, sync_env(source, 0, 1)).unwrap();
    assert_eq!(frames(h, p).len(), 1);
    p
}

fn kind(f: &HostFrame) -> &host_message::Kind {
    f.message().kind.as_ref().unwrap()
}

fn limited(app: App, limit: usize, history: usize) -> HostCore {
    HostCore::new(
        HostConfig {
            sync: SyncMode::Patch,
            limits: HostLimits {
                max_message_bytes: limit,
                history_entries: history,
                ..HostLimits::default()
            },
            ..HostConfig::default()
        },
        app,
        EPOCH,
    )
}

/// An envelope over the size limit is not processed, so it does not change
/// where a later OVERFLOW snapshot goes (§3.2, §15, H12).
#[test]
fn an_oversize_envelope_does_not_retarget_the_overflow_snapshot() {
    const LIMIT: usize = 64 * 1024;
    let mut h = limited(demo::app("s"), LIMIT, 1);
    let p = attach(&mut h, "good");
    let mut big = sync_env("intruder", 1, 2);
    big.header.as_mut().unwrap().capability = "c".repeat(LIMIT + 10);
    assert!(h.handle_message(p, big).is_err());
    for _ in 0..3 {
        h.invoke("counter", "increase", &[json!(1)]).unwrap();
    }
    let out = frames(&mut h, p);
    let host_message::Kind::Snapshot(s) = kind(&out[0]) else {
        panic!("{out:?}")
    };
    assert_eq!(s.reason, SnapshotReason::Overflow as i32);
    assert_eq!(out[0].message().header.as_ref().unwrap().target, "good");
}

/// A result is sized with the `target` it repeats: a value that fits only
/// with a short source is refused for a long one (§15, H7.8).
#[test]
fn a_result_to_a_long_source_still_fits_one_message() {
    const LIMIT: usize = 64 * 1024;
    let mut h = limited(common::texts(false), LIMIT, 1024);
    let source = "s".repeat(1000);
    let p = attach(&mut h, &source);
    let args = format!("[\"y\",{}]", LIMIT - 300);
    h.handle_message(p, call_env(&source, 1, "texts", "echo", &args))
        .unwrap();
    let out = frames(&mut h, p);
    assert_eq!(out.len(), 1);
    assert!(
        out[0].message().encoded_len() <= LIMIT,
        "result of {} bytes",
        out[0].message().encoded_len()
    );
    let host_message::Kind::Result(result) = kind(&out[0]) else {
        panic!("a result: {out:?}")
    };
    assert!(
        matches!(&result.outcome, Some(call_result::Outcome::Error(e)) if e.code() == ErrorCode::ResourceExhausted),
        "{:?}",
        result.outcome
    );
}

/// A resume Patch that would not fit one message with the requester's long
/// source as its target is a Snapshot instead (H2).
#[test]
fn a_resume_to_a_long_source_still_fits_one_message() {
    const LIMIT: usize = 64 * 1024;
    let mut h = limited(common::texts(false), LIMIT, 1024);
    let source = "s".repeat(1000);
    let p = attach(&mut h, &source);
    h.invoke("texts", "add", &[json!("x".repeat(LIMIT - 900))])
        .unwrap();
    h.invoke("texts", "clear", &[]).unwrap();
    assert_eq!(h.version(), 3);
    frames(&mut h, p);
    h.handle_message(p, sync_env(&source, 1, 3)).unwrap();
    let out = frames(&mut h, p);
    assert!(
        out[0].message().encoded_len() <= LIMIT,
        "reply of {} bytes: {:?}",
        out[0].message().encoded_len(),
        std::mem::discriminant(kind(&out[0]))
    );
}

/// A sync reply handled after a bookmark tick takes the bookmark's place
/// (H10).
#[test]
fn a_sync_reply_after_a_bookmark_tick_takes_the_bookmarks_place() {
    let mut h = limited(demo::app("s"), 1 << 20, 1024);
    let p = attach(&mut h, "a");
    h.invoke("counter", "increase", &[json!(1)]).unwrap();
    frames(&mut h, p);
    h.bookmark();
    h.handle_message(p, sync_env("a", 2, 5)).unwrap();
    let out = frames(&mut h, p);
    assert_eq!(out.len(), 1, "{out:?}");
    let host_message::Kind::Patch(reply) = kind(&out[0]) else {
        panic!("a bookmark-shaped reply: {out:?}")
    };
    assert_eq!(
        (reply.sync_id, reply.version),
        (5, 2),
        "the reply, not the tick's bookmark"
    );
}

/// A sync reply does not overtake a result that is already sendable (H4).
#[test]
fn a_sync_reply_does_not_overtake_a_result_already_sendable() {
    let mut h = limited(demo::app("s"), 1 << 20, 1024);
    let p = attach(&mut h, "a");
    h.handle_message(p, call_env("a", 1, "counter", "nope", "[]"))
        .unwrap();
    h.handle_message(p, sync_env("a", 1, 5)).unwrap();
    let out = frames(&mut h, p);
    assert_eq!(out.len(), 2);
    assert!(
        matches!(kind(&out[0]), host_message::Kind::Result(_)),
        "{out:?}"
    );
    assert!(
        matches!(kind(&out[1]), host_message::Kind::Patch(_)),
        "{out:?}"
    );
}

/// Encoded input of exactly the message limit is processed (§15, FB3).
#[test]
fn bytes_of_exactly_the_message_limit_are_processed() {
    const LIMIT: usize = 4096;
    let mut h = limited(demo::app("s"), LIMIT, 1024);
    let p = attach(&mut h, "a");
    let mut pad = 0;
    let bytes = loop {
        let args = format!("[1{}]", " ".repeat(pad));
        let m = call_env("a", 1, "counter", "increase", &args);
        let len = m.encoded_len();
        if len == LIMIT {
            break m.encode_to_vec();
        }
        if len < LIMIT {
            pad += 1.max((LIMIT - len) / 2)
        } else {
            pad -= 1
        }
    };
    assert_eq!(bytes.len(), LIMIT);
    h.handle_bytes(p, &bytes).expect("processed");
    assert_eq!(h.version(), 2);
}

/// Unread results exactly at the backlog bound do not refuse the next
/// call: H7.4 refuses only strictly more.
#[test]
fn unread_results_exactly_at_the_backlog_bound_still_let_a_call_run() {
    const LIMIT: usize = 64 * 1024;
    let bound = 8 * LIMIT;
    let echo = |id: u64, t: usize| call_env("a", id, "texts", "echo", &format!("[\"y\",{t}]"));
    // The encoded size of an echo result, measured on a twin host.
    let mut twin = limited(common::texts(false), LIMIT, 1024);
    let tp = attach(&mut twin, "a");
    twin.handle_message(tp, echo(1, 58_000)).unwrap();
    let s0 = frames(&mut twin, tp)[0].message().encoded_len();
    let c = s0 - 58_000;
    let mut h = limited(common::texts(false), LIMIT, 1024);
    let p = attach(&mut h, "a");
    for id in 1..=8 {
        h.handle_message(p, echo(id, 58_000)).unwrap();
    }
    let rest = bound - 8 * s0;
    h.handle_message(p, echo(9, rest - c)).unwrap();
    h.handle_message(p, echo(10, 1)).unwrap();
    let out = frames(&mut h, p);
    let sizes: usize = out[..9].iter().map(|f| f.message().encoded_len()).sum();
    assert_eq!(
        sizes, bound,
        "the first nine results fill the bound exactly"
    );
    let host_message::Kind::Result(r) = kind(&out[9]) else {
        panic!()
    };
    assert!(
        matches!(
            r.outcome,
            Some(cosystem_worker::wire::call_result::Outcome::ValueJson(_))
        ),
        "{:?}",
        r.outcome
    );
}
