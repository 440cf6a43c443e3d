//! Routing on a shared broadcast bus: replies reach only their requester,
//! the capability token keeps strangers out, late joiners and several hosts
//! share one bus.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig, ClientEvent};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::bus::{
    self, Bus, BusConnector, BusError, BusHostOptions, BusMessage,
};
use cosystem_worker::transport::{ClientLink, Connector, TransportError};
use cosystem_worker::wire::{
    Call, ClientMessage, Header, HostMessage, Snapshot, SnapshotReason, SyncRequest,
    client_message, host_message,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};

fn host(peer_id: &str, capability: &str) -> Host {
    Host::builder(demo::app("bus-secret"))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .peer_id(peer_id)
        .capability(capability)
        .build()
}

fn serve(host: &Host, bus: &Bus) {
    tokio::spawn(bus::serve_host(
        host.clone(),
        bus.clone(),
        BusHostOptions::default(),
    ));
}

fn config(peer: &str, host_id: &str, capability: &str) -> ClientConfig {
    ClientConfig {
        peer_id: peer.to_owned(),
        host_id: host_id.to_owned(),
        capability: capability.to_owned(),
        ..ClientConfig::default()
    }
}

/// What one client's links delivered, by kind.
#[derive(Default)]
struct Seen {
    results: AtomicUsize,
    sync_replies: AtomicUsize,
    publications: AtomicUsize,
}

struct Counting {
    inner: BusConnector,
    seen: Arc<Seen>,
}

impl Connector for Counting {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        let connecting = self.inner.connect();
        let seen = self.seen.clone();
        async move {
            let link = connecting.await?;
            let stream = link.stream.inspect(move |item| {
                let Some(message) = item
                    .as_ref()
                    .ok()
                    .and_then(|input| input.clone().into_message().ok())
                else {
                    return;
                };
                let counter = match &message.kind {
                    Some(host_message::Kind::Result(_)) => &seen.results,
                    Some(host_message::Kind::Snapshot(s)) if s.sync_id != 0 => &seen.sync_replies,
                    Some(host_message::Kind::Patch(p)) if p.sync_id != 0 => &seen.sync_replies,
                    _ => &seen.publications,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            });
            Ok(ClientLink {
                sink: link.sink,
                stream: Box::pin(stream),
            })
        }
        .boxed()
    }
}

fn counted_client(bus: &Bus, config: ClientConfig) -> (Client, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let connector = Counting {
        inner: bus.connector(&config).unwrap(),
        seen: seen.clone(),
    };
    (Client::new(connector, config), seen)
}

/// Records every host envelope put on the bus.
fn record_hosts(bus: &Bus) -> Arc<Mutex<Vec<HostMessage>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut receiver = bus.subscribe();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(message) = receiver.recv().await {
            if let BusMessage::Host(frame) = message {
                sink.lock().unwrap().push(frame.message().clone());
            }
        }
    });
    log
}

fn count(state: &Value) -> i64 {
    state["counter"]["count"].as_i64().unwrap_or(-1)
}

/// Waits until `client`'s mirror reaches `version`.
async fn reaches(client: &Client, version: u64) {
    let mut events = client.events();
    while client.version() < Some(version) {
        match events.recv().await {
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(error) => panic!("client stopped before version {version}: {error}"),
        }
    }
}

async fn within_a_minute(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test hung");
}

#[tokio::test]
async fn results_and_sync_replies_reach_only_their_requester() {
    within_a_minute(async {
        let bus = Bus::default();
        let host = host("host", "");
        let log = record_hosts(&bus);
        serve(&host, &bus);
        let (alice, alice_seen) = counted_client(&bus, config("alice", "host", ""));
        let (bob, bob_seen) = counted_client(&bus, config("bob", "host", ""));
        alice.ready().await.unwrap();
        bob.ready().await.unwrap();
        for by in 1..=3 {
            alice
                .call("counter", "increase", vec![json!(by)])
                .await
                .unwrap();
        }
        bob.call("counter", "increase", vec![json!(10)])
            .await
            .unwrap();
        reaches(&alice, 5).await;

        assert_eq!(alice_seen.results.load(Ordering::Relaxed), 3);
        assert_eq!(bob_seen.results.load(Ordering::Relaxed), 1);
        assert_eq!(alice_seen.sync_replies.load(Ordering::Relaxed), 1);
        assert_eq!(bob_seen.sync_replies.load(Ordering::Relaxed), 1);

        // A late joiner's snapshot goes to it alone.
        let (carol, carol_seen) = counted_client(&bus, config("carol", "host", ""));
        carol.ready().await.unwrap();
        assert_eq!(carol.state(), Some(host.view()));
        assert_eq!(carol_seen.sync_replies.load(Ordering::Relaxed), 1);
        bob.call("counter", "increase", vec![json!(1)])
            .await
            .unwrap();
        reaches(&alice, 6).await;
        reaches(&carol, 6).await;
        assert_eq!(alice_seen.sync_replies.load(Ordering::Relaxed), 1);
        assert_eq!(bob_seen.sync_replies.load(Ordering::Relaxed), 1);

        // On the bus itself: every result and sync reply names its
        // requester, and everything else is addressed to all.
        let log = log.lock().unwrap();
        let mut results_to = std::collections::BTreeMap::<String, usize>::new();
        for message in log.iter() {
            let header = message.header.as_ref().unwrap();
            let addressed = match &message.kind {
                Some(host_message::Kind::Result(_)) => true,
                Some(host_message::Kind::Snapshot(s)) => s.sync_id != 0,
                Some(host_message::Kind::Patch(p)) => p.sync_id != 0,
                None => false,
            };
            if addressed {
                assert!(
                    ["alice", "bob", "carol"].contains(&header.target.as_str()),
                    "reply addressed to {:?}",
                    header.target
                );
            } else {
                assert_eq!(header.target, "", "publication addressed to one peer");
            }
            if let Some(host_message::Kind::Result(_)) = &message.kind {
                *results_to.entry(header.target.clone()).or_default() += 1;
            }
        }
        assert_eq!(results_to.get("alice"), Some(&3));
        assert_eq!(results_to.get("bob"), Some(&2));
        assert_eq!(results_to.get("carol"), None);
    })
    .await
}

fn envelope(source: &str, capability: &str, kind: client_message::Kind) -> BusMessage {
    BusMessage::Client(Arc::new(ClientMessage {
        header: Some(Header {
            capability: capability.to_owned(),
            ..Header::v1("", source, "")
        }),
        kind: Some(kind),
    }))
}

#[tokio::test]
async fn envelopes_without_the_capability_are_ignored_both_ways() {
    within_a_minute(async {
        let bus = Bus::default();
        let host = host("host", "open-sesame");
        let log = record_hosts(&bus);
        serve(&host, &bus);
        let honest = Client::new(
            bus.connector(&config("honest", "host", "open-sesame"))
                .unwrap(),
            config("honest", "host", "open-sesame"),
        );
        honest.ready().await.unwrap();

        // Strangers, without the token or with another one, ask for state and
        // call a method. Put on the bus before the honest call, they are
        // handled (and must be ignored) before it.
        for (peer, token) in [("stranger", ""), ("forger", "guess")] {
            bus.send(envelope(
                peer,
                token,
                client_message::Kind::SyncRequest(SyncRequest {
                    sync_id: 1,
                    have_version: 0,
                    reason: 1,
                }),
            ));
            bus.send(envelope(
                peer,
                token,
                client_message::Kind::Call(Call {
                    call_id: 1,
                    module: "counter".to_owned(),
                    method: "increase".to_owned(),
                    args_json: "[100]".to_owned(),
                }),
            ));
        }
        // A forged host snapshot without the token must not reach the mirror.
        bus.send(BusMessage::Host(
            HostMessage {
                header: Some(Header::v1(host.epoch(), "host", "")),
                kind: Some(host_message::Kind::Snapshot(Snapshot {
                    version: 99,
                    state_json: r#"{"counter":{"count":-1}}"#.to_owned(),
                    sync_id: 0,
                    reason: SnapshotReason::Commit as i32,
                })),
            }
            .into(),
        ));
        let value = honest
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap();

        assert_eq!(value, json!(1), "a stranger's call ran");
        assert_eq!(host.version(), 2);
        assert_eq!(honest.version(), Some(2));
        assert_eq!(honest.select(count), Some(1));
        let log = log.lock().unwrap();
        assert!(
            log.iter().all(|m| {
                let target = &m.header.as_ref().unwrap().target;
                target != "stranger" && target != "forger"
            }),
            "the host answered a peer without the token"
        );
    })
    .await
}

#[tokio::test]
async fn two_clients_and_a_late_joiner_converge() {
    within_a_minute(async {
        let bus = Bus::default();
        let host = host("host", "");
        serve(&host, &bus);
        let alice = Client::new(
            bus.connector(&config("alice", "host", "")).unwrap(),
            config("alice", "host", ""),
        );
        let bob = Client::new(
            bus.connector(&config("bob", "host", "")).unwrap(),
            config("bob", "host", ""),
        );
        // Interleaved, concurrent calls from both.
        let calls: Vec<_> = (0..10)
            .map(|i| {
                let (client, text) = if i % 2 == 0 {
                    (&alice, format!("a{i}"))
                } else {
                    (&bob, format!("b{i}"))
                };
                client.call("todos", "add", vec![json!(text)])
            })
            .collect();
        for call in futures::future::join_all(calls).await {
            call.unwrap();
        }
        let late = Client::new(
            bus.connector(&config("late", "host", "")).unwrap(),
            config("late", "host", ""),
        );
        late.ready().await.unwrap();
        let version = host.version();
        assert_eq!(version, 11);
        for client in [&alice, &bob, &late] {
            reaches(client, version).await;
            assert_eq!(client.state(), Some(host.view()));
        }
    })
    .await
}

#[tokio::test]
async fn clients_follow_their_own_host_when_two_share_the_bus() {
    within_a_minute(async {
        let bus = Bus::default();
        let primary = host("primary", "");
        let standby = host("standby", "");
        serve(&primary, &bus);
        serve(&standby, &bus);
        let on_primary = Client::new(
            bus.connector(&config("p1", "primary", "")).unwrap(),
            config("p1", "primary", ""),
        );
        let on_standby = Client::new(
            bus.connector(&config("s1", "standby", "")).unwrap(),
            config("s1", "standby", ""),
        );
        let mut events = on_primary.events();
        on_primary
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap();
        on_standby
            .call("counter", "increase", vec![json!(10)])
            .await
            .unwrap();

        // Each host ran only the call addressed to it.
        assert_eq!(primary.module_state("counter"), Some(json!({"count": 1})));
        assert_eq!(standby.module_state("counter"), Some(json!({"count": 10})));
        assert_eq!(on_primary.epoch(), Some(primary.epoch()));
        assert_eq!(on_standby.epoch(), Some(standby.epoch()));
        assert_eq!(on_primary.select(count), Some(1));
        assert_eq!(on_standby.select(count), Some(10));

        // The standby's traffic never moved the primary's client to it.
        primary.shutdown();
        on_standby
            .call("counter", "increase", vec![json!(5)])
            .await
            .unwrap();
        assert_eq!(on_standby.select(count), Some(15));
        assert_eq!(on_primary.epoch(), Some(primary.epoch()));
        while let Ok(event) = events.try_recv() {
            assert!(
                !matches!(event, ClientEvent::EpochChanged { .. }),
                "the primary's client switched hosts"
            );
        }
    })
    .await
}

#[tokio::test]
async fn peers_without_an_id_cannot_join_a_bus() {
    let bus = Bus::default();
    assert_eq!(
        bus.connector(&config("", "", "")).err(),
        Some(BusError::MissingPeerId)
    );
    let nameless = host("", "");
    assert_eq!(
        bus::serve_host(nameless, bus, BusHostOptions::default())
            .await
            .err(),
        Some(BusError::MissingPeerId)
    );
}

/// A bus has no half-close: a link's input ends once its sink is dropped,
/// so a client that closes is not left draining a bus that never ends
/// (and holding its peer id while it does).
#[tokio::test]
async fn a_bus_links_input_ends_when_its_sink_is_dropped() {
    within_a_minute(async {
        let bus = Bus::default();
        let connector = bus.connector(&ClientConfig::default()).unwrap();
        let ClientLink { sink, mut stream } = connector.connect().await.unwrap();
        drop(sink);
        assert!(stream.next().await.is_none());
        // Another link of the same connector is unaffected.
        let ClientLink { sink, mut stream } = connector.connect().await.unwrap();
        bus.send(BusMessage::Host(
            HostMessage {
                header: Some(Header::v1("e1", "host", "")),
                kind: None,
            }
            .into(),
        ));
        assert!(stream.next().await.is_some());
        drop(sink);
    })
    .await
}

/// A host claims its id when `serve_host` is called, so a peer asking for
/// it before the host's task first runs is the one refused.
#[tokio::test]
async fn a_bus_host_holds_its_id_from_the_call_not_the_first_poll() {
    let bus = Bus::default();
    let serving = tokio::spawn(bus::serve_host(
        host("host", ""),
        bus.clone(),
        BusHostOptions::default(),
    ));
    assert_eq!(
        bus.connector(&config("host", "", "")).err(),
        Some(BusError::PeerIdInUse("host".into()))
    );
    serving.abort();
}

/// SC2: peer ids are unique on a shared channel. Two clients left at the
/// default id would otherwise each settle calls with the other's results.
#[tokio::test]
async fn a_peer_id_held_on_a_bus_is_refused_to_another_peer_until_released() {
    within_a_minute(async {
        let bus = Bus::default();
        let first = bus.connector(&ClientConfig::default()).unwrap();
        assert_eq!(
            bus.connector(&ClientConfig::default()).err(),
            Some(BusError::PeerIdInUse("client".into()))
        );
        // A host may not take a client's id, nor a client a serving host's.
        assert_eq!(
            bus::serve_host(host("client", ""), bus.clone(), BusHostOptions::default())
                .await
                .err(),
            Some(BusError::PeerIdInUse("client".into()))
        );
        let serving = host("host", "");
        let served = tokio::spawn(bus::serve_host(
            serving.clone(),
            bus.clone(),
            BusHostOptions::default(),
        ));
        let client = Client::new(first, config("client", "host", ""));
        client.ready().await.unwrap();
        assert_eq!(
            bus.connector(&config("host", "", "")).err(),
            Some(BusError::PeerIdInUse("host".into()))
        );
        assert_eq!(
            bus::serve_host(host("host", ""), bus.clone(), BusHostOptions::default())
                .await
                .err(),
            Some(BusError::PeerIdInUse("host".into()))
        );
        // Another bus is another channel.
        assert!(Bus::default().connector(&ClientConfig::default()).is_ok());

        // A client gives its id back once it has closed.
        client.dispose();
        client.closed().await;
        let again = Client::new(
            bus.connector(&config("client", "host", "")).unwrap(),
            config("client", "host", ""),
        );
        again
            .module("counter")
            .call("increase", vec![json!(1)])
            .await
            .unwrap();
        // And a host once it has shut down.
        serving.shutdown();
        assert_eq!(served.await.unwrap(), Ok(()));
        assert!(bus.connector(&config("host", "", "")).is_ok());
    })
    .await
}
/// SC2: a host MUST ignore client envelopes with an empty `source`.
#[tokio::test]
async fn a_call_without_a_source_is_ignored() {
    within_a_minute(async {
        let bus = Bus::default();
        let host = host("host", "");
        let log = record_hosts(&bus);
        serve(&host, &bus);
        let honest = Client::new(
            bus.connector(&config("honest", "host", "")).unwrap(),
            config("honest", "host", ""),
        );
        honest.ready().await.unwrap();
        bus.send(BusMessage::Client(Arc::new(ClientMessage {
            header: Some(Header::v1(host.epoch(), "", "")),
            kind: Some(client_message::Kind::Call(Call {
                call_id: 1,
                module: "counter".to_owned(),
                method: "increase".to_owned(),
                args_json: "[100]".to_owned(),
            })),
        })));
        let value = honest
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap();
        assert_eq!(value, json!(1), "a call without a source ran");
        assert_eq!(host.version(), 2);
        let log = log.lock().unwrap();
        assert!(
            log.iter().all(|m| !matches!(m.kind, Some(host_message::Kind::Result(ref r)) if r.call_id == 1 && m.header.as_ref().unwrap().target.is_empty())),
            "the host answered a sourceless call to everyone"
        );
    })
    .await
}

/// The bus link of a client following a host with a token drops host
/// envelopes from another host (SC6) or without the token (SC7) before the
/// client sees them (the client core drops them too, so only the link shows it).
#[tokio::test]
async fn a_link_drops_host_envelopes_of_another_host_or_token() {
    within_a_minute(async {
        let bus = Bus::default();
        let link = bus
            .connector(&config("p1", "primary", "tok"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut stream = link.stream;
        let from = |source: &str, capability: &str| {
            BusMessage::Host(
                HostMessage {
                    header: Some(Header {
                        capability: capability.to_owned(),
                        ..Header::v1("e", source, "")
                    }),
                    kind: Some(host_message::Kind::Snapshot(Snapshot {
                        version: 1,
                        state_json: "{}".to_owned(),
                        sync_id: 0,
                        reason: SnapshotReason::Announce as i32,
                    })),
                }
                .into(),
            )
        };
        bus.send(from("standby", "tok"));
        bus.send(from("primary", ""));
        bus.send(from("primary", "tok"));
        let first = stream
            .next()
            .await
            .unwrap()
            .unwrap()
            .into_message()
            .unwrap();
        let header = first.header.unwrap();
        assert_eq!(
            (header.source.as_str(), header.capability.as_str()),
            ("primary", "tok")
        );
    })
    .await
}
