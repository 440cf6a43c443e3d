//! The lifetime of a bus host's sessions, late and early joiners, and lag.

use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig, ClientEvent, Notice};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, MAX_PEER_ID, SyncMode};
use cosystem_worker::transport::bus::{self, Bus, BusHostOptions, BusMessage};
use cosystem_worker::wire::{
    CallResult, ClientMessage, ErrorCode, Header, HostFrame, HostMessage, Patch, Snapshot,
    SnapshotReason, SyncReason, SyncRequest, call_result, client_message, host_message,
};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

fn host() -> Host {
    Host::builder(demo::app("bus-secret"))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .peer_id("host")
        .build()
}

fn client(bus: &Bus, peer: &str) -> Client {
    client_with(bus, peer, ClientConfig::default())
}

fn client_with(bus: &Bus, peer: &str, base: ClientConfig) -> Client {
    let config = ClientConfig {
        peer_id: peer.to_owned(),
        host_id: "host".to_owned(),
        ..base
    };
    Client::new(bus.connector(&config).unwrap(), config)
}

async fn within_a_minute(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test hung");
}

#[tokio::test]
async fn client_sessions_are_capped_and_dropping_one_loses_nothing() {
    within_a_minute(async {
        let bus = Bus::default();
        let host = host();
        let options = BusHostOptions {
            max_sessions: 2,
            ..BusHostOptions::default()
        };
        tokio::spawn(bus::serve_host(host.clone(), bus.clone(), options));
        let clients: Vec<Client> = (0..5).map(|i| client(&bus, &format!("c{i}"))).collect();
        // Round after round, every client is answered although only two of
        // them have a session at any time.
        for round in 1..=2 {
            for client in &clients {
                client
                    .call("counter", "increase", vec![json!(1)])
                    .await
                    .unwrap();
                // The publication session plus at most two client sessions.
                assert!(host.session_count() <= 3, "round {round}");
            }
        }
        assert_eq!(host.module_state("counter"), Some(json!({"count": 10})));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_session_is_dropped_after_the_idle_timeout() {
    let bus = Bus::default();
    let host = host();
    let options = BusHostOptions {
        idle_timeout: Duration::from_secs(30),
        ..BusHostOptions::default()
    };
    tokio::spawn(bus::serve_host(host.clone(), bus.clone(), options));
    let alice = client(&bus, "alice");
    alice.ready().await.unwrap();
    assert_eq!(host.session_count(), 2);
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert_eq!(host.session_count(), 1, "the idle session was kept");
    // Speaking again opens a new session.
    alice
        .call("counter", "increase", vec![json!(2)])
        .await
        .unwrap();
    assert_eq!(host.session_count(), 2);
    assert_eq!(
        alice.select(|s| s["counter"]["count"].clone()),
        Some(json!(2))
    );
}

#[tokio::test]
async fn a_client_that_joins_before_the_host_is_made_ready_by_its_announcement() {
    within_a_minute(async {
        let bus = Bus::default();
        let mut tap = bus.subscribe();
        // No retry within the test: only the announcement can make it ready.
        let early = client_with(
            &bus,
            "early",
            ClientConfig {
                sync_retry: Duration::from_secs(3600),
                ..ClientConfig::default()
            },
        );
        // Its first sync request goes out to a bus nobody serves yet.
        loop {
            if let BusMessage::Client(message) = tap.recv().await.unwrap()
                && matches!(message.kind, Some(client_message::Kind::SyncRequest(_)))
            {
                break;
            }
        }
        let host = host();
        host.invoke("counter", "increase", &[json!(4)]).unwrap();
        tokio::spawn(bus::serve_host(
            host.clone(),
            bus.clone(),
            BusHostOptions::default(),
        ));
        early.ready().await.unwrap();
        assert_eq!(early.state(), Some(host.view()));
        let announced = loop {
            if let BusMessage::Host(frame) = tap.recv().await.unwrap()
                && let Some(host_message::Kind::Snapshot(s)) = &frame.message().kind
            {
                break s.clone();
            }
        };
        assert_eq!(announced.reason, SnapshotReason::Announce as i32);
        assert_eq!(announced.sync_id, 0);
        assert_eq!(announced.version, 2);
    })
    .await
}

#[tokio::test]
async fn a_lagging_client_reports_the_loss_and_resyncs_while_staying_connected() {
    within_a_minute(async {
        // A bus that holds only four envelopes per receiver.
        let bus = Bus::new(4);
        let host = host();
        tokio::spawn(bus::serve_host(
            host.clone(),
            bus.clone(),
            BusHostOptions::default(),
        ));
        let alice = client(&bus, "alice");
        alice.ready().await.unwrap();
        let mut events = alice.events();

        // Thirty commits at once: the host puts all thirty publications on
        // the bus before the client reads, so it loses all but the last four.
        for _ in 0..30 {
            host.invoke("counter", "increase", &[json!(1)]).unwrap();
        }
        let target = host.version();
        let mut lost = false;
        while alice.version() < Some(target) {
            if let ClientEvent::Notice(Notice::EnvelopesLost { count }) =
                events.recv().await.unwrap()
            {
                assert!(count > 0);
                lost = true;
            }
        }
        assert!(lost, "the loss was not reported");
        assert_eq!(alice.state(), Some(host.view()));
        assert!(alice.is_connected(), "lag was treated as a broken link");
        // And it keeps working.
        let value = alice
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap();
        assert_eq!(value, json!(31));
    })
    .await
}

/// The next envelope a client put on the bus, skipping host envelopes and
/// this receiver's own lag.
async fn next_from_a_client(
    receiver: &mut tokio::sync::broadcast::Receiver<BusMessage>,
) -> ClientMessage {
    loop {
        match receiver.recv().await {
            Ok(BusMessage::Client(message)) => return (*message).clone(),
            Ok(BusMessage::Host(_)) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => panic!("the bus closed"),
        }
    }
}

/// An envelope from the scripted host "host" of epoch "e1" to `target`.
fn scripted(target: &str, kind: host_message::Kind) -> BusMessage {
    BusMessage::Host(HostFrame::new(HostMessage {
        header: Some(Header::v1("e1", "host", target)),
        kind: Some(kind),
    }))
}

#[tokio::test]
async fn a_lagging_client_settles_its_unanswered_call_outcome_unknown_instead_of_waiting() {
    within_a_minute(async {
        let bus = Bus::new(4);
        let mut from_clients = bus.subscribe();
        let alice = client(&bus, "alice");
        // The test is the host: it answers alice's first sync request.
        let Some(client_message::Kind::SyncRequest(first)) =
            next_from_a_client(&mut from_clients).await.kind
        else {
            panic!("alice starts with a sync request");
        };
        bus.send(scripted(
            "alice",
            host_message::Kind::Snapshot(Snapshot {
                version: 1,
                state_json: json!({"counter": {"count": 0}}).to_string(),
                sync_id: first.sync_id,
                reason: SnapshotReason::Sync as i32,
            }),
        ));
        alice.ready().await.unwrap();

        // A call with no deadline, whose result alice's receiver loses: it
        // is followed by more publications than the bus holds for alice,
        // all put on the bus before alice's driver runs again.
        let call = tokio::spawn({
            let alice = alice.clone();
            async move { alice.call("counter", "increase", vec![json!(1)]).await }
        });
        let Some(client_message::Kind::Call(sent)) =
            next_from_a_client(&mut from_clients).await.kind
        else {
            panic!("alice sends the call");
        };
        bus.send(scripted(
            "alice",
            host_message::Kind::Result(CallResult {
                call_id: sent.call_id,
                state_version: 2,
                outcome: Some(call_result::Outcome::ValueJson("1".to_owned())),
            }),
        ));
        for version in 2..=10 {
            bus.send(scripted(
                "",
                host_message::Kind::Patch(Patch {
                    base_version: version - 1,
                    version,
                    patch_json: format!(
                        r#"[{{"op":"replace","path":"/counter/count","value":{}}}]"#,
                        version - 1
                    ),
                    sync_id: 0,
                }),
            ));
        }

        let outcome = call.await.unwrap();
        assert_eq!(outcome.unwrap_err().code, ErrorCode::OutcomeUnknown);
        assert!(alice.is_connected(), "lag was treated as a broken link");
        // Alice asks to resume from the version it had when the loss hit.
        let Some(client_message::Kind::SyncRequest(resume)) =
            next_from_a_client(&mut from_clients).await.kind
        else {
            panic!("alice asks to resume");
        };
        assert_eq!(resume.have_version, 1);
        assert_eq!(resume.reason, SyncReason::VersionGap as i32);
    })
    .await
}

/// A SyncRequest from `source`, as a client would put it on the bus.
fn sync_request_from(source: &str) -> BusMessage {
    BusMessage::Client(std::sync::Arc::new(ClientMessage {
        header: Some(Header::v1("", source, "host")),
        kind: Some(client_message::Kind::SyncRequest(SyncRequest {
            sync_id: 1,
            have_version: 0,
            reason: SyncReason::Initial as i32,
        })),
    }))
}

#[tokio::test]
async fn envelopes_whose_source_is_too_long_to_answer_open_no_session() {
    within_a_minute(async {
        let bus = Bus::default();
        let host = host();
        tokio::spawn(bus::serve_host(
            host.clone(),
            bus.clone(),
            BusHostOptions::default(),
        ));
        let alice = client(&bus, "alice");
        alice.ready().await.unwrap();
        // The publication session and alice's.
        assert_eq!(host.session_count(), 2);
        let mut replies = bus.subscribe();
        // Eight 1 MiB sources: each would have been a session holding its
        // copy until the idle timeout, and, with the sessions at their
        // limit, evicted an honest client's to make room.
        for i in 0..8 {
            bus.send(sync_request_from(&format!("{i}{}", "x".repeat(1 << 20))));
        }
        // A source exactly at the limit is still answered. The host handles
        // the bus in order, so its reply means the others were handled too.
        let longest = "y".repeat(MAX_PEER_ID);
        bus.send(sync_request_from(&longest));
        loop {
            match replies.recv().await {
                Ok(BusMessage::Host(frame))
                    if frame.message().header.as_ref().map(|h| h.target.as_str())
                        == Some(longest.as_str()) =>
                {
                    break;
                }
                Ok(BusMessage::Host(frame)) => {
                    let target = frame
                        .message()
                        .header
                        .as_ref()
                        .map_or(0, |h| h.target.len());
                    assert!(target <= MAX_PEER_ID, "a reply to an oversized source");
                }
                Ok(BusMessage::Client(_)) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("the bus closed"),
            }
        }
        // Publications, alice's and the longest's: nothing for the others.
        assert_eq!(host.session_count(), 3);
        let value = alice
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap();
        assert_eq!(value, json!(1));
    })
    .await
}

#[tokio::test]
async fn a_lost_first_sync_request_is_retried_though_the_host_has_not_spoken() {
    use cosystem_worker::transport::{ClientLink, Connector, TransportError};
    use futures::FutureExt;
    use futures::future::BoxFuture;
    /// A bus connector whose links lose the client's first envelope.
    struct LosesTheFirst(bus::BusConnector);
    impl Connector for LosesTheFirst {
        fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
            let connecting = self.0.connect();
            async move {
                let ClientLink { sink, stream } = connecting.await?;
                let mut lost = false;
                let sink = futures::sink::unfold(sink, move |mut sink, message| {
                    let lose = !std::mem::replace(&mut lost, true);
                    async move {
                        if !lose {
                            futures::SinkExt::send(&mut sink, message).await?;
                        }
                        Ok::<_, TransportError>(sink)
                    }
                });
                Ok(ClientLink {
                    sink: Box::pin(sink),
                    stream,
                })
            }
            .boxed()
        }
    }
    within_a_minute(async {
        let bus = Bus::default();
        // No bookmarks: nothing but the answer to a retry can reach it.
        let host = Host::builder(demo::app("bus-secret"))
            .peer_id("host")
            .bookmark_interval(None)
            .build();
        tokio::spawn(bus::serve_host(
            host.clone(),
            bus.clone(),
            BusHostOptions::default(),
        ));
        let config = ClientConfig {
            peer_id: "lossy".to_owned(),
            host_id: "host".to_owned(),
            sync_retry: Duration::from_millis(100),
            ..ClientConfig::default()
        };
        let client = Client::new(LosesTheFirst(bus.connector(&config).unwrap()), config);
        // A call made meanwhile waits for the host, then runs once.
        let call = client.call("counter", "increase", vec![json!(2)]);
        client.ready().await.unwrap();
        assert_eq!(call.await.unwrap(), json!(2));
        assert_eq!(host.view()["counter"]["count"], 2);
    })
    .await
}
