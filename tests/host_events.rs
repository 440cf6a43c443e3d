//! `Host::events`: what an application sees of its host at work, for
//! metrics and audit: publications and every client call answered.

mod common;

use common::memory_client;
use cosystem_worker::demo;
use cosystem_worker::host::{
    CallRecord, Host, HostConfig, HostCore, HostEvent, PeerKey, PeerOptions, RECORDED_NAME,
};
use cosystem_worker::wire::{Call, ClientMessage, ErrorCode, Header, client_message};
use serde_json::json;
use std::time::Duration;

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

/// A hang guard, not a speed check.
const GUARD: Duration = Duration::from_secs(30);

/// The next event, or a failure if none comes.
async fn next_event(events: &mut Receiver<HostEvent>) -> HostEvent {
    tokio::time::timeout(GUARD, events.recv())
        .await
        .expect("an event comes")
        .expect("the host is up")
}

/// The next `CallAnswered`, skipping other events.
async fn next_call(events: &mut Receiver<HostEvent>) -> CallRecord {
    loop {
        if let HostEvent::CallAnswered(record) = next_event(events).await {
            return record;
        }
    }
}

/// A host of the demo app without idle bookmarks, so that the only events
/// are the tests' own.
fn quiet_host() -> Host {
    Host::builder(demo::app("s"))
        .bookmark_interval(None)
        .build()
}

#[tokio::test]
async fn a_subscriber_sees_each_call_answered_with_its_outcome_and_version() {
    let host = quiet_host();
    let client = memory_client(&host);
    client.ready().await.unwrap();
    let mut events = host.events();

    client
        .module("counter")
        .call("increase", vec![json!(5)])
        .await
        .unwrap();
    // The commit's publication comes first, then its answer.
    assert_eq!(
        next_event(&mut events).await,
        HostEvent::Published { version: 2 }
    );
    let answered = next_call(&mut events).await;
    assert_eq!(answered.session, "memory");
    assert_eq!(answered.principal, None);
    assert_eq!(answered.module, "counter");
    assert_eq!(answered.method, "increase");
    assert_eq!(answered.error, None);
    assert_eq!(answered.version, 2);
    assert!(answered.call_id > 0);

    let refused = client.module("counter").call("nope", vec![]).await;
    assert_eq!(refused.unwrap_err().code, ErrorCode::NotFound);
    let answered = next_call(&mut events).await;
    assert_eq!(answered.method, "nope");
    assert_eq!(answered.error, Some(ErrorCode::NotFound));
    assert_eq!(answered.version, 2);
    client.dispose();
}

fn call_envelope(call_id: u64) -> ClientMessage {
    ClientMessage {
        header: Some(Header::v1("", "c1", "")),
        kind: Some(client_message::Kind::Call(Call {
            call_id,
            module: "counter".into(),
            method: "increase".into(),
            args_json: "[1]".into(),
        })),
    }
}

fn calls_answered(core: &mut HostCore) -> Vec<CallRecord> {
    std::iter::from_fn(|| core.poll_event())
        .filter_map(|event| match event {
            HostEvent::CallAnswered(record) => Some(record),
            _ => None,
        })
        .collect()
}

/// A demo host core with one session, labelled `label`.
fn core_with_a_session() -> (HostCore, PeerKey) {
    let mut core = HostCore::new(HostConfig::default(), demo::app("s"), "e");
    let peer = core
        .connect(PeerOptions {
            peer_id: "label".into(),
            publications: true,
        })
        .unwrap();
    (core, peer)
}

#[test]
fn the_core_records_calls_only_while_asked_to() {
    let (mut core, peer) = core_with_a_session();
    core.handle_message(peer, call_envelope(1)).unwrap();
    assert_eq!(calls_answered(&mut core), []);

    core.record_calls(true);
    core.handle_message(peer, call_envelope(2)).unwrap();
    assert_eq!(
        calls_answered(&mut core),
        [CallRecord {
            session: "label".into(),
            principal: None,
            peer: "c1".into(),
            call_id: 2,
            module: "counter".into(),
            method: "increase".into(),
            error: None,
            version: 3,
        }]
    );

    core.record_calls(false);
    core.handle_message(peer, call_envelope(3)).unwrap();
    assert_eq!(calls_answered(&mut core), []);
}

#[test]
fn a_record_keeps_only_the_start_of_a_name_the_host_does_not_know() {
    let (mut core, peer) = core_with_a_session();
    core.record_calls(true);
    let mut call = call_envelope(1);
    let long = "é".repeat(RECORDED_NAME);
    if let Some(client_message::Kind::Call(c)) = &mut call.kind {
        c.module = long.clone();
        c.method = long.clone();
    }
    core.handle_message(peer, call).unwrap();
    let record = calls_answered(&mut core).pop().expect("recorded");
    assert_eq!(record.error, Some(ErrorCode::NotFound));
    // 512 two-byte characters: cut at a character boundary.
    assert_eq!(record.module, "é".repeat(RECORDED_NAME / 2));
    assert_eq!(record.method, record.module);
}

#[tokio::test]
async fn a_call_made_while_nobody_subscribes_is_not_delivered_to_a_later_subscriber() {
    let host = quiet_host();
    let client = memory_client(&host);
    client.ready().await.unwrap();
    drop(host.events());
    let counter = client.module("counter");
    counter.call("increase", vec![json!(1)]).await.unwrap();

    let mut events = host.events();
    counter.call("increase", vec![json!(1)]).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        HostEvent::Published { version: 3 }
    );
    // The call made while nobody listened left no record behind.
    assert_eq!(next_call(&mut events).await.version, 3);
    client.dispose();
}

#[tokio::test]
async fn a_bookmark_is_its_own_event_not_a_publication() {
    let host = Host::builder(demo::app("s"))
        .bookmark_interval(Some(Duration::from_millis(10)))
        .build();
    let mut events = host.events();
    assert_eq!(
        next_event(&mut events).await,
        HostEvent::Bookmarked { version: 1 }
    );
}

#[tokio::test]
async fn receivers_end_when_the_host_shuts_down() {
    let host = quiet_host();
    let mut before = host.events();
    host.shutdown();
    let ended = tokio::time::timeout(GUARD, before.recv()).await;
    assert_eq!(ended.expect("the receiver ends"), Err(RecvError::Closed));
    let mut after = host.events();
    assert_eq!(after.recv().await, Err(RecvError::Closed));
}

/// `CallRecord::module`/`method` keep at most RECORDED_NAME bytes.
#[test]
fn a_record_keeps_at_most_recorded_name_bytes_of_an_ascii_name() {
    let (mut core, peer) = core_with_a_session();
    core.record_calls(true);
    let mut call = call_envelope(1);
    let long = "m".repeat(2 * RECORDED_NAME);
    if let Some(client_message::Kind::Call(c)) = &mut call.kind {
        c.module = long.clone();
        c.method = long;
    }
    core.handle_message(peer, call).unwrap();
    let record = calls_answered(&mut core).pop().expect("recorded");
    assert_eq!(record.module, "m".repeat(RECORDED_NAME));
    assert_eq!(record.method.len(), RECORDED_NAME);
}

/// A name whose RECORDED_NAME-th byte falls inside a character is cut
/// before that character, never after it.
#[test]
fn a_record_cut_inside_a_character_backs_off_to_its_start() {
    let (mut core, peer) = core_with_a_session();
    core.record_calls(true);
    let mut call = call_envelope(1);
    // "a" then two-byte characters: byte RECORDED_NAME is inside one.
    let long = format!("a{}", "é".repeat(RECORDED_NAME));
    if let Some(client_message::Kind::Call(c)) = &mut call.kind {
        c.module = long.clone();
        c.method = long;
    }
    core.handle_message(peer, call).unwrap();
    let record = calls_answered(&mut core).pop().expect("recorded");
    assert_eq!(
        record.module,
        format!("a{}", "é".repeat(RECORDED_NAME / 2 - 1))
    );
    assert!(record.method.len() <= RECORDED_NAME);
}
