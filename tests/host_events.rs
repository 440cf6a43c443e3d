//! `Host::events`: what an application sees of its host at work, for
//! metrics and audit: publications and every client call answered.

mod common;

use common::memory_client;
use cosystem_worker::demo;
use cosystem_worker::host::{CallRecord, Host, HostConfig, HostCore, HostEvent, PeerOptions};
use cosystem_worker::wire::{Call, ClientMessage, ErrorCode, Header, client_message};
use serde_json::json;
use tokio::sync::broadcast::Receiver;

/// The next `CallAnswered`, skipping other events.
async fn next_call(events: &mut Receiver<HostEvent>) -> CallRecord {
    loop {
        if let HostEvent::CallAnswered(record) = events.recv().await.expect("the host is up") {
            return record;
        }
    }
}

#[tokio::test]
async fn a_subscriber_sees_each_call_answered_with_its_outcome_and_version() {
    let host = Host::builder(demo::app("s")).build();
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
        events.recv().await.unwrap(),
        HostEvent::Published { version: 2 }
    );
    let answered = next_call(&mut events).await;
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

#[test]
fn the_core_records_calls_only_while_asked_to() {
    let mut core = HostCore::new(HostConfig::default(), demo::app("s"), "e");
    let peer = core
        .connect(PeerOptions {
            peer_id: "c1".into(),
            publications: true,
        })
        .unwrap();
    core.handle_message(peer, call_envelope(1)).unwrap();
    assert_eq!(calls_answered(&mut core), []);

    core.record_calls(true);
    core.handle_message(peer, call_envelope(2)).unwrap();
    assert_eq!(
        calls_answered(&mut core),
        [CallRecord {
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
