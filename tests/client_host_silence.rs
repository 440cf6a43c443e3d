//! Host silence (spec L10): a client configured with a silence period takes
//! a link the host has stopped speaking on as lost, settles what the link
//! took down and reconnects; on a bus, where nothing else tells a client that
//! its host vanished, that is how it finds out.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cosystem_worker::client::{Client, ClientConfig, ClientCore, ClientEvent, Connection, Notice};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::TransportError;
use cosystem_worker::transport::bus::{self, Bus, BusError, BusHostOptions};
use cosystem_worker::wire::{
    ErrorCode, Header, HostMessage, Patch, Snapshot, SnapshotReason, SyncReason, client_message,
    host_message,
};
use proptest::prelude::*;
use serde_json::json;
use tokio::task::JoinHandle;

const SILENCE: Duration = Duration::from_secs(15);
const EPOCH: &str = "e1";

fn at(ms: u64) -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
}

fn config(host_silence: Option<Duration>) -> ClientConfig {
    ClientConfig {
        peer_id: "c1".to_owned(),
        host_silence,
        ..ClientConfig::default()
    }
}

fn host_envelope(target: &str, kind: host_message::Kind) -> HostMessage {
    HostMessage {
        header: Some(Header::v1(EPOCH, "host", target)),
        kind: Some(kind),
    }
}

/// The reply to the client's first sync request (sync id 1).
fn first_snapshot() -> HostMessage {
    host_envelope(
        "c1",
        host_message::Kind::Snapshot(Snapshot {
            version: 1,
            state_json: json!({"counter": {"count": 0}}).to_string(),
            sync_id: 1,
            reason: SnapshotReason::Sync as i32,
        }),
    )
}

fn bookmark() -> HostMessage {
    host_envelope(
        "",
        host_message::Kind::Patch(Patch {
            base_version: 1,
            version: 1,
            patch_json: "[]".to_owned(),
            sync_id: 0,
        }),
    )
}

/// A core synced at `at(0)`, with its sync request and snapshot handled.
fn synced(host_silence: Option<Duration>) -> ClientCore {
    let mut core = ClientCore::new(config(host_silence), at(0));
    while core.poll_transmit().is_some() {}
    core.handle_message(at(0), first_snapshot());
    while core.poll_event().is_some() {}
    core
}

fn events(core: &mut ClientCore) -> Vec<ClientEvent> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

#[test]
fn host_silence_takes_the_link_down_and_settles_the_calls_it_carried() {
    let mut core = synced(Some(SILENCE));
    let call = core.call("counter", "increase", &[json!(1)], None).unwrap();
    assert!(core.poll_transmit().is_some());
    // Silence is counted from the last envelope the host sent.
    assert_eq!(core.poll_timeout(), Some(at(15_000)));
    core.handle_message(at(5_000), bookmark());
    assert_eq!(core.poll_timeout(), Some(at(20_000)));
    core.handle_timeout(at(19_999));
    assert!(!core.is_host_silent());

    core.handle_timeout(at(20_000));
    assert!(core.is_host_silent());
    let events = events(&mut core);
    assert_eq!(
        events[0],
        ClientEvent::Notice(Notice::HostSilent { silence: SILENCE })
    );
    match &events[1..] {
        [
            ClientEvent::Settled {
                call: settled,
                outcome: Err(error),
                state_version: None,
                sent: true,
            },
        ] => {
            assert_eq!(*settled, call);
            assert_eq!(error.code, ErrorCode::OutcomeUnknown);
        }
        other => panic!("expected the call to settle outcome-unknown, got {other:?}"),
    }
    // As after a connection loss (L6): nothing is sent on the dead link.
    let queued = core.call("counter", "increase", &[json!(2)], None).unwrap();
    assert!(core.poll_transmit().is_none());
    assert_eq!(core.poll_timeout(), None);

    // L7: a new link asks to resume, then sends what was queued.
    core.reconnected(at(21_000));
    assert!(!core.is_host_silent());
    let resume = core.poll_transmit().unwrap();
    match resume.kind {
        Some(client_message::Kind::SyncRequest(request)) => {
            assert_eq!(request.have_version, 1);
            assert_eq!(request.reason, SyncReason::Reconnect as i32);
        }
        other => panic!("expected a sync request first, got {other:?}"),
    }
    match core.poll_transmit().and_then(|m| m.kind) {
        Some(client_message::Kind::Call(sent)) => assert_eq!(sent.call_id, queued.0),
        other => panic!("expected the queued call, got {other:?}"),
    }
}

#[test]
fn a_link_the_host_never_spoke_on_is_not_called_silent() {
    // No host yet (a bus client that starts first): the sync request is
    // retried instead, for as long as it takes.
    let mut core = ClientCore::new(config(Some(SILENCE)), at(0));
    while core.poll_transmit().is_some() {}
    core.handle_timeout(at(600_000));
    assert!(!core.is_host_silent());
    assert!(events(&mut core).is_empty());
    match core.poll_transmit().and_then(|m| m.kind) {
        Some(client_message::Kind::SyncRequest(request)) => {
            assert_eq!(request.reason, SyncReason::Retry as i32)
        }
        other => panic!("expected a retried sync request, got {other:?}"),
    }

    // Nor is a new link before the host speaks on it.
    let mut core = synced(Some(SILENCE));
    core.connection_lost();
    core.reconnected(at(1_000));
    while core.poll_transmit().is_some() {}
    core.handle_timeout(at(600_000));
    assert!(!core.is_host_silent());
}

#[test]
fn envelopes_for_another_client_do_not_count_as_the_host_speaking() {
    let mut core = synced(Some(SILENCE));
    // A reply addressed to someone else is ignored (K1), as on a bus.
    core.handle_message(
        at(10_000),
        host_envelope(
            "someone-else",
            host_message::Kind::Patch(Patch {
                base_version: 1,
                version: 1,
                patch_json: "[]".to_owned(),
                sync_id: 7,
            }),
        ),
    );
    assert_eq!(core.poll_timeout(), Some(at(15_000)));
}

#[test]
fn without_a_configured_silence_a_quiet_host_keeps_the_link() {
    let mut core = synced(None);
    core.call("counter", "increase", &[json!(1)], None).unwrap();
    assert!(core.poll_transmit().is_some());
    assert_eq!(core.poll_timeout(), None);
    core.handle_timeout(at(24 * 3_600_000));
    assert!(!core.is_host_silent());
    assert!(events(&mut core).is_empty());
}

proptest! {
    /// Driven the way a driver does (sleeping until `poll_timeout` or the
    /// next envelope, whichever is first), a link is taken as lost exactly
    /// when some gap between the host's envelopes reaches the silence, and
    /// at the instant the silence ran out.
    #[test]
    fn the_link_is_lost_exactly_when_a_gap_reaches_the_silence(
        silence_ms in 1u64..5_000,
        gaps in prop::collection::vec(0u64..8_000, 0..20),
    ) {
        let silence = Duration::from_millis(silence_ms);
        let mut core = synced(Some(silence));
        let mut heard = 0u64;
        let mut fired_at = None;
        for gap in &gaps {
            let arrival = heard + gap;
            if let Some(due) = core.poll_timeout().filter(|due| *due <= at(arrival)) {
                core.handle_timeout(due);
                if core.is_host_silent() {
                    fired_at = Some(due);
                    break;
                }
            }
            core.handle_message(at(arrival), bookmark());
            heard = arrival;
        }
        let expected = gaps
            .iter()
            .scan(0u64, |heard, gap| {
                let before = *heard;
                *heard += gap;
                Some((before, *gap))
            })
            .find(|(_, gap)| *gap >= silence_ms)
            .map(|(before, _)| at(before + silence_ms));
        prop_assert_eq!(fired_at, expected);
    }
}

/// Serves a host named `name` on `bus` until the handle is aborted: then it
/// vanishes without a word, as a closed browser tab's host would.
fn spawn_bus_host(bus: &Bus, name: &str) -> JoinHandle<Result<(), BusError>> {
    let host = Host::builder(demo::app(name))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .peer_id("host")
        .build();
    tokio::spawn(bus::serve_host(
        host,
        bus.clone(),
        BusHostOptions::default(),
    ))
}

/// A client on `bus` that allows its host [`SILENCE`].
fn watchful_client(bus: &Bus) -> Client {
    let config = ClientConfig {
        peer_id: "alice".to_owned(),
        host_id: "host".to_owned(),
        host_silence: Some(SILENCE),
        ..ClientConfig::default()
    };
    Client::new(bus.connector(&config).unwrap(), config)
}

/// A bus client whose host vanishes finds out from the silence, settles the
/// call it was waiting on and follows the host that takes its place. (The
/// host's default bookmark interval is 5 s; the client allows 15 s.)
#[tokio::test(start_paused = true)]
async fn a_bus_client_notices_its_host_vanish_and_follows_the_next_one() {
    let bus = Bus::default();
    let first = spawn_bus_host(&bus, "first");
    let client = watchful_client(&bus);
    client.ready().await.unwrap();
    let first_epoch = client.epoch();
    client
        .call("counter", "increase", vec![json!(1)])
        .await
        .unwrap();

    // A host that keeps sending bookmarks is never taken for gone.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(client.connection(), Connection::Connected);

    let mut changes = client.connection_changes();
    first.abort();
    let _ = first.await;
    let error = client
        .call("counter", "increase", vec![json!(1)])
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::OutcomeUnknown);
    // Published before the call settled, as for any link that ends.
    assert_retrying_for_silence(&client.connection());

    spawn_bus_host(&bus, "second");
    // Connected again once the new host speaks (its announcement), which
    // also replaced the mirror, so the next call is bound to its epoch.
    changes
        .wait_for(|c| *c == Connection::Connected)
        .await
        .unwrap();
    let value = client
        .call("counter", "increase", vec![json!(5)])
        .await
        .unwrap();
    assert_eq!(value, json!(5));
    assert_ne!(client.epoch(), first_epoch);
}

fn assert_retrying_for_silence(connection: &Connection) {
    match connection {
        Connection::Retrying {
            error: Some(TransportError::HostSilent { silence }),
            ..
        } => assert_eq!(*silence, SILENCE),
        other => panic!("expected a retry for host silence, got {other:?}"),
    }
}

/// Each new link is watched afresh: hosts that come and go one after the
/// other are each noticed gone.
#[tokio::test(start_paused = true)]
async fn silence_is_noticed_again_on_every_new_link() {
    let bus = Bus::default();
    let client = watchful_client(&bus);
    let mut changes = client.connection_changes();
    for round in 1..=3 {
        let host = spawn_bus_host(&bus, &format!("round-{round}"));
        changes
            .wait_for(|c| *c == Connection::Connected)
            .await
            .unwrap();
        let value = client
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap();
        assert_eq!(value, json!(1), "round {round}: a new host starts at 0");
        host.abort();
        let _ = host.await;
        let retrying = changes
            .wait_for(|c| matches!(c, Connection::Retrying { .. }))
            .await
            .unwrap()
            .clone();
        assert_retrying_for_silence(&retrying);
    }
}

#[test]
fn envelopes_handled_while_disconnected_do_not_start_the_count() {
    let mut core = synced(Some(SILENCE));
    core.connection_lost();
    // A transport may hand over what it had buffered after the loss.
    core.handle_message(at(1_000), bookmark());
    core.reconnected(at(2_000));
    while core.poll_transmit().is_some() {}
    // Only the sync retry is due: the link the host has not spoken on is
    // not watched.
    assert_eq!(core.poll_timeout(), Some(at(4_000)));
    core.handle_timeout(at(60_000));
    assert!(!core.is_host_silent());
}

#[test]
fn a_loss_reported_again_changes_nothing() {
    let mut core = synced(Some(SILENCE));
    core.connection_lost();
    // While disconnected, a gap queues a sync request (L6)...
    core.handle_message(
        at(1_000),
        host_envelope(
            "",
            host_message::Kind::Patch(Patch {
                base_version: 3,
                version: 4,
                patch_json: "[]".to_owned(),
                sync_id: 0,
            }),
        ),
    );
    assert!(core.is_syncing());
    // ...which a second report of the loss leaves alone.
    core.connection_lost();
    assert!(core.is_syncing());
    assert!(core.poll_transmit().is_none());
    // L7 replaces it with the reconnect request.
    core.reconnected(at(2_000));
    let sent: Vec<_> = std::iter::from_fn(|| core.poll_transmit()).collect();
    assert_eq!(sent.len(), 1);
    match &sent[0].kind {
        Some(client_message::Kind::SyncRequest(request)) => {
            assert_eq!(request.reason, SyncReason::Reconnect as i32)
        }
        other => panic!("expected the reconnect request, got {other:?}"),
    }
}
