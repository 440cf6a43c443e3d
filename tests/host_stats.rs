//! The host's counters (`HostCore::stats`, `Host::stats`): each kind of
//! work is counted once, as it happens, on the sans-IO core.

mod common;

use cosystem_worker::app::{App, MethodError, TypedModule};
use cosystem_worker::demo;
use cosystem_worker::host::{HostConfig, HostCore, HostLimits, PeerKey, PeerOptions, SyncMode};
use cosystem_worker::wire::{Call, ClientMessage, Header, client_message};

const EPOCH: &str = "stats-epoch";

fn host(mode: SyncMode, max_clients: usize) -> HostCore {
    host_with(
        mode,
        HostLimits {
            max_clients,
            ..HostLimits::default()
        },
    )
}

fn host_with(mode: SyncMode, limits: HostLimits) -> HostCore {
    let app: App = demo::app("s").with(
        TypedModule::new("boom", 0u8)
            .method("go", |_: &mut u8, (): ()| -> Result<(), MethodError> {
                panic!("boom")
            }),
    );
    let config = HostConfig {
        sync: mode,
        sections: Some(demo::default_sections()),
        limits,
        ..HostConfig::default()
    };
    HostCore::new(config, app, EPOCH)
}

fn send(h: &mut HostCore, peer: PeerKey, kind: client_message::Kind) {
    let message = ClientMessage {
        header: Some(Header::v1(EPOCH, "c", "")),
        kind: Some(kind),
    };
    h.handle_message(peer, message).expect("handled");
}

fn call(h: &mut HostCore, peer: PeerKey, call_id: u64, module: &str, method: &str, args: &str) {
    let call = Call {
        call_id,
        module: module.into(),
        method: method.into(),
        args_json: args.into(),
    };
    send(h, peer, client_message::Kind::Call(call));
}

fn sync(h: &mut HostCore, peer: PeerKey, sync_id: u64, have_version: u64) {
    let request = common::sync_request(sync_id, have_version);
    send(h, peer, client_message::Kind::SyncRequest(request));
}

fn drain(h: &mut HostCore, peer: PeerKey) {
    while h.poll_transmit(peer).is_some() {}
}

fn connect(h: &mut HostCore) -> PeerKey {
    h.connect(PeerOptions {
        peer_id: "c".into(),
        publications: true,
    })
    .expect("a client slot")
}

#[test]
fn calls_are_counted_by_outcome_and_what_is_sent_by_kind() {
    let mut h = host(SyncMode::Patch, 10);
    let peer = connect(&mut h);
    sync(&mut h, peer, 1, 0);
    drain(&mut h, peer);
    call(&mut h, peer, 1, "counter", "increase", "[1]");
    call(&mut h, peer, 2, "counter", "increase", "[2]");
    call(&mut h, peer, 3, "counter", "nope", "[]");
    call(&mut h, peer, 4, "counter", "fail", "[\"no\"]");
    call(&mut h, peer, 5, "boom", "go", "[]");
    drain(&mut h, peer);

    let stats = h.stats();
    assert_eq!(stats.epoch, EPOCH);
    assert_eq!(stats.version, h.version());
    assert_eq!(stats.sessions, 1);
    let answered: Vec<(&str, u64)> = stats.calls_answered.into_iter().collect();
    assert_eq!(
        answered,
        [("failed", 1), ("internal", 1), ("not-found", 1), ("ok", 2)]
    );
    assert_eq!(stats.method_panics, 1);
    assert_eq!(stats.sync_requests, 1);
    assert_eq!(stats.snapshots_sent.get("sync"), Some(&1));
    assert_eq!(stats.snapshots_sent.len(), 1);
    assert_eq!(stats.patches_sent, 2);
    assert_eq!(stats.bookmarks_sent, 0);
    assert_eq!(stats.results_sent, 5);
}

#[test]
fn a_publication_is_counted_once_per_session_it_reaches() {
    let mut h = host(SyncMode::Snapshot, 10);
    let peers = [connect(&mut h), connect(&mut h), connect(&mut h)];
    for (i, peer) in peers.iter().enumerate() {
        sync(&mut h, *peer, i as u64 + 1, 0);
        drain(&mut h, *peer);
    }
    call(&mut h, peers[0], 1, "counter", "increase", "[1]");
    for peer in peers {
        drain(&mut h, peer);
    }
    let stats = h.stats();
    assert_eq!(stats.snapshots_sent.get("sync"), Some(&3));
    assert_eq!(stats.snapshots_sent.get("commit"), Some(&3));
    assert_eq!(stats.results_sent, 1);
}

#[test]
fn refused_sessions_are_counted_and_the_session_gauge_follows_disconnects() {
    let mut h = host(SyncMode::Patch, 1);
    let first = connect(&mut h);
    for _ in 0..2 {
        assert!(
            h.connect(PeerOptions {
                peer_id: "late".into(),
                publications: true,
            })
            .is_err()
        );
    }
    assert_eq!(h.stats().sessions_refused, 2);
    assert_eq!(h.stats().sessions, 1);
    h.disconnect(first);
    assert_eq!(h.stats().sessions, 0);
    assert_eq!(h.stats().sessions_refused, 2);
}

#[test]
fn bookmarks_are_told_from_sync_replies_though_both_can_be_empty_patches() {
    let mut h = host(SyncMode::Patch, 10);
    let peer = connect(&mut h);
    sync(&mut h, peer, 1, 0);
    drain(&mut h, peer);
    call(&mut h, peer, 1, "counter", "increase", "[1]");
    call(&mut h, peer, 2, "counter", "increase", "[1]");
    drain(&mut h, peer);
    assert_eq!(h.stats().patches_sent, 2);
    // A sync at the current version is answered with an empty patch.
    let version = h.version();
    sync(&mut h, peer, 2, version);
    drain(&mut h, peer);
    // A resume from an older version, with both versions' operations.
    sync(&mut h, peer, 3, version - 2);
    drain(&mut h, peer);
    assert_eq!(h.stats().patches_sent, 4);
    assert_eq!(h.stats().bookmarks_sent, 0);
    h.bookmark();
    drain(&mut h, peer);
    let stats = h.stats();
    assert_eq!(stats.bookmarks_sent, 1);
    assert_eq!(stats.patches_sent, 4);
    assert_eq!(stats.sync_requests, 3);
}

#[test]
fn a_session_that_falls_out_of_the_window_is_counted_as_sent_an_overflow_snapshot() {
    let mut h = host_with(
        SyncMode::Patch,
        HostLimits {
            history_entries: 1,
            ..HostLimits::default()
        },
    );
    let (slow, busy) = (connect(&mut h), connect(&mut h));
    sync(&mut h, slow, 1, 0);
    sync(&mut h, busy, 1, 0);
    drain(&mut h, busy);
    // Only the sync reply leaves for the slow session: it reads nothing more.
    assert!(h.poll_transmit(slow).is_some());
    for id in 1..=3 {
        call(&mut h, busy, id, "counter", "increase", "[1]");
        drain(&mut h, busy);
    }
    drain(&mut h, slow);
    let stats = h.stats();
    assert_eq!(stats.snapshots_sent.get("overflow"), Some(&1));
    assert_eq!(stats.snapshots_sent.get("sync"), Some(&2));
    assert_eq!(stats.patches_sent, 3);
}

/// A host, built by `build` from its builder, whose `slow.wait()` tells
/// `started` it runs, then holds the core until `release` says go.
fn host_with_a_method_that_waits(
    build: impl FnOnce(cosystem_worker::host::HostBuilder) -> cosystem_worker::host::HostBuilder,
) -> (
    cosystem_worker::host::Host,
    std::sync::mpsc::Receiver<()>,
    std::sync::mpsc::SyncSender<()>,
) {
    let (started_tx, started) = std::sync::mpsc::sync_channel(1);
    let (release, release_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let app = demo::app("s").with(TypedModule::new("slow", 0u8).method(
        "wait",
        move |_: &mut u8, (): ()| -> Result<(), MethodError> {
            let _ = started_tx.send(());
            let _ = release_rx.recv();
            Ok(())
        },
    ));
    let host = build(cosystem_worker::host::Host::builder(app)).build();
    (host, started, release)
}

#[test]
fn stats_asked_for_while_a_method_holds_the_core_are_the_last_taken_and_say_so() {
    for timing in [false, true] {
        let (host, started, release) = host_with_a_method_that_waits(|b| b.method_timing(timing));
        host.invoke("counter", "increase", &[serde_json::json!(1)])
            .expect("increase");
        let before = host.stats();
        assert_eq!(before.core_held_for, None);
        let caller = {
            let host = host.clone();
            std::thread::spawn(move || host.invoke("slow", "wait", &[]))
        };
        started.recv().expect("the method started");
        // On another thread, so that a stats() that waited for the method
        // shows as no answer (the method is only released afterwards).
        let (answer_tx, answer) = std::sync::mpsc::channel();
        let asker = {
            let host = host.clone();
            std::thread::spawn(move || answer_tx.send(host.stats()).is_ok())
        };
        let during = answer
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("stats() waited for the method");
        assert!(during.core_held_for.is_some(), "timing {timing}");
        assert_eq!(during.version, before.version);
        assert_eq!(during.calls_answered, before.calls_answered);
        assert!(
            during
                .to_prometheus()
                .contains("\ncosystem_worker_core_held_seconds "),
        );
        release.send(()).expect("release");
        caller.join().expect("caller").expect("wait");
        assert!(asker.join().expect("asker"), "sent");
        let after = host.stats();
        assert_eq!(after.core_held_for, None);
        assert!(
            after
                .to_prometheus()
                .contains("\ncosystem_worker_core_held_seconds 0\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_never_asked_for_before_a_method_holds_the_core_are_those_of_the_last_bookmark_tick()
{
    let (host, started, release) = host_with_a_method_that_waits(|b| {
        b.bookmark_interval(Some(std::time::Duration::from_millis(10)))
    });
    let mut events = host.events();
    for _ in 0..3 {
        host.invoke("counter", "increase", &[serde_json::json!(1)])
            .expect("increase");
    }
    // A tick after the calls: what it remembers is what stats() answers.
    loop {
        match events.recv().await {
            Ok(cosystem_worker::host::HostEvent::Bookmarked { version: 4, .. }) => {
                break;
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(error) => panic!("events ended: {error}"),
        }
    }
    let caller = {
        let host = host.clone();
        std::thread::spawn(move || host.invoke("slow", "wait", &[]))
    };
    tokio::task::spawn_blocking(move || started.recv().expect("the method started"))
        .await
        .expect("waited");
    let during = host.stats();
    assert!(during.core_held_for.is_some(), "the method holds the core");
    assert_eq!(during.version, 4, "not the stats of the host's start");
    release.send(()).expect("release");
    caller.join().expect("caller").expect("wait");
}
