//! A session that stops reading must not slow the host or anyone else, must
//! not make the host buffer without bound, and gets one coalescing snapshot
//! when it reads again.

use std::time::{Duration, Instant};

use cosystem_worker::client::{ClientConfig, ClientCore, ClientEvent, Notice};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, HostLimits, SyncMode};
use cosystem_worker::transport::{HostLink, TransportError};
use cosystem_worker::wire::{ClientMessage, HostFrame, SnapshotReason, host_message};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::PollSender;

const WINDOW: usize = 16;
const COMMITS: usize = 500;

/// A host link whose outbound side holds at most one frame until the test
/// reads it.
fn stalled_link() -> (
    HostLink,
    mpsc::Sender<ClientMessage>,
    mpsc::Receiver<HostFrame>,
) {
    let (to_host, from_client) = mpsc::channel::<ClientMessage>(16);
    let (to_client, from_host) = mpsc::channel::<HostFrame>(1);
    let link = HostLink {
        peer_id: "slow".into(),
        sink: Box::pin(PollSender::new(to_client).sink_map_err(|_| TransportError::Closed)),
        stream: Box::pin(ReceiverStream::new(from_client).map(Ok)),
    };
    (link, to_host, from_host)
}

// A paused clock: the reads below wait out their timeouts only once
// nothing else can run, so no frame still on its way is taken for none.
#[tokio::test(start_paused = true)]
async fn slow_session_is_coalesced_into_one_overflow_snapshot_while_others_keep_up() {
    let host = Host::builder(demo::app("m"))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .limits(HostLimits {
            history_entries: WINDOW,
            ..Default::default()
        })
        .bookmark_interval(None)
        .build();

    let now = Instant::now();
    let mut slow = ClientCore::new(ClientConfig::default(), now);
    let (link, to_host, mut from_host) = stalled_link();
    let serving = tokio::spawn({
        let host = host.clone();
        async move { host.serve(link).await }
    });
    while let Some(m) = slow.poll_transmit() {
        to_host.send(m).await.unwrap();
    }
    let first = from_host.recv().await.unwrap();
    slow.handle_message(now, first.message().clone());
    assert_eq!(slow.version(), Some(1));

    // A second session keeps reading everything.
    let (fast_link, fast_to_host, mut fast_from_host) = stalled_link();
    let fast = tokio::spawn({
        let host = host.clone();
        async move { host.serve(fast_link).await }
    });
    let mut follower = ClientCore::new(ClientConfig::default(), now);
    while let Some(m) = follower.poll_transmit() {
        fast_to_host.send(m).await.unwrap();
    }
    let reader = tokio::spawn(async move {
        let mut versions = Vec::new();
        while let Some(frame) = fast_from_host.recv().await {
            follower.handle_message(Instant::now(), frame.message().clone());
            versions.push(follower.version());
            if follower.version() == Some(1 + COMMITS as u64) {
                break;
            }
        }
        (follower, versions)
    });

    // The host commits far past the slow session's window; nothing waits
    // for the slow reader.
    for _ in 0..COMMITS {
        host.invoke("counter", "increase", &[json!(1)]).unwrap();
        tokio::task::yield_now().await;
    }
    let (follower, versions) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the fast session kept up")
        .unwrap();
    assert_eq!(follower.state(), Some(&host.view()));
    // From its first snapshot on, the fast session applied every version in
    // order, each exactly once: no gap, no coalescing.
    let applied: Vec<u64> = versions.iter().flatten().copied().collect();
    assert!(
        applied.windows(2).all(|w| w[1] == w[0] + 1),
        "versions applied by the fast session: {applied:?}"
    );
    assert_eq!(applied.last(), Some(&(1 + COMMITS as u64)));

    // The slow session now reads: a few frames were already in its one-slot
    // channel or being written, then one overflow snapshot, then nothing.
    let mut frames = Vec::new();
    while let Ok(Some(frame)) =
        tokio::time::timeout(Duration::from_millis(200), from_host.recv()).await
    {
        frames.push(frame);
    }
    assert!(
        frames.len() <= 3,
        "{} frames were queued for the slow session",
        frames.len()
    );
    let last = frames.last().expect("an overflow snapshot");
    match last.message().kind.as_ref() {
        Some(host_message::Kind::Snapshot(s)) => {
            assert_eq!(s.reason, SnapshotReason::Overflow as i32);
            assert_eq!(s.version, 1 + COMMITS as u64);
        }
        other => panic!("expected an overflow snapshot, got {other:?}"),
    }
    for frame in &frames {
        slow.handle_message(now, frame.message().clone());
    }
    assert_eq!(slow.state(), Some(&host.view()));
    let events: Vec<ClientEvent> = std::iter::from_fn(|| slow.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::Notice(Notice::Overflow { .. }))),
        "{events:?}"
    );
    serving.abort();
    fast.abort();
}
