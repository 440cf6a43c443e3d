//! `Host::serve` over a hand-driven link: what a transport can rely on.

use std::time::Duration;

use cosystem_worker::demo;
use cosystem_worker::host::{Host, HostLimits, InputError, SyncMode};
use cosystem_worker::transport::{HostLink, TransportError};
use cosystem_worker::wire::{
    Call, ClientMessage, Header, HostFrame, SyncReason, SyncRequest, client_message, host_message,
};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::PollSender;

fn envelope(kind: client_message::Kind) -> ClientMessage {
    ClientMessage {
        header: Some(Header::v1("", "client", "")),
        kind: Some(kind),
    }
}

fn sync_request() -> ClientMessage {
    envelope(client_message::Kind::SyncRequest(SyncRequest {
        sync_id: 1,
        have_version: 0,
        reason: SyncReason::Initial as i32,
    }))
}

fn call(call_id: u64) -> ClientMessage {
    envelope(client_message::Kind::Call(Call {
        call_id,
        module: "counter".to_owned(),
        method: "increase".to_owned(),
        args_json: "[1]".to_owned(),
    }))
}

/// A link whose host-bound side the test writes and whose client-bound
/// side holds `capacity` frames.
fn link(
    capacity: usize,
) -> (
    HostLink,
    mpsc::Sender<ClientMessage>,
    mpsc::Receiver<HostFrame>,
) {
    let (to_host, from_client) = mpsc::channel(1024);
    let (to_client, from_host) = mpsc::channel(capacity);
    let link = HostLink {
        peer_id: "test".to_owned(),
        sink: Box::pin(PollSender::new(to_client).sink_map_err(|_| TransportError::Closed)),
        stream: Box::pin(ReceiverStream::new(from_client).map(Ok)),
    };
    (link, to_host, from_host)
}

fn host(max_calls_in_flight: usize) -> Host {
    Host::builder(demo::app("s"))
        .sync(SyncMode::Patch)
        .limits(HostLimits {
            max_calls_in_flight,
            ..HostLimits::default()
        })
        .build()
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_still_heard_and_closed_once_it_floods() {
    let host = host(4);
    // Room for one frame, and the test never reads it.
    let (link, to_host, _unread) = link(1);
    let serving = tokio::spawn({
        let host = host.clone();
        async move { host.serve(link).await }
    });
    to_host.send(sync_request()).await.unwrap();
    for id in 1..=20 {
        if to_host.send(call(id)).await.is_err() {
            break;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("serve ends")
        .unwrap();
    assert!(
        matches!(ended, Err(InputError::Flooding { .. })),
        "{ended:?}"
    );
    // Only the calls read before the flood ran; the host serves on.
    assert!(
        host.version() > 1 && host.version() <= 9,
        "{}",
        host.version()
    );
    assert_eq!(host.session_count(), 0);
}

#[tokio::test]
async fn output_the_link_had_no_room_for_goes_out_in_order_once_it_has() {
    let host = host(64);
    let (link, to_host, mut from_host) = link(1);
    tokio::spawn({
        let host = host.clone();
        async move { host.serve(link).await }
    });
    to_host.send(sync_request()).await.unwrap();
    for id in 1..=10 {
        to_host.send(call(id)).await.unwrap();
    }
    // The snapshot (at the version current when it is sent, which may
    // already cover some calls), then each later call's patch, and every
    // result after the version it names.
    let mut results = Vec::new();
    let mut versions = Vec::new();
    while results.len() < 10 {
        let frame = tokio::time::timeout(Duration::from_secs(10), from_host.recv())
            .await
            .expect("output arrives")
            .expect("the session is open");
        match &frame.message().kind {
            Some(host_message::Kind::Snapshot(s)) => versions.push(s.version),
            Some(host_message::Kind::Patch(p)) => versions.push(p.version),
            Some(host_message::Kind::Result(r)) => {
                assert!(
                    versions.last().is_some_and(|v| *v >= r.state_version),
                    "result after its version"
                );
                results.push(r.call_id);
            }
            None => panic!("a frame with no kind"),
        }
    }
    assert_eq!(results, (1..=10).collect::<Vec<_>>());
    let first = versions[0];
    assert_eq!(versions, (first..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_idle_session_ends_when_the_host_shuts_down() {
    let host = host(4);
    let (link, _to_host, _from_host) = link(16);
    let serving = tokio::spawn({
        let host = host.clone();
        async move { host.serve(link).await }
    });
    tokio::task::yield_now().await;
    host.shutdown();
    let ended = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("serve ends")
        .unwrap();
    assert_eq!(ended, Ok(()));
}

#[tokio::test]
async fn a_client_that_stops_sending_is_still_answered_then_the_session_ends() {
    let host = host(64);
    // Room for one frame: the answers go out only as the test reads them.
    let (link, to_host, mut from_host) = link(1);
    let serving = tokio::spawn({
        let host = host.clone();
        async move { host.serve(link).await }
    });
    to_host.send(sync_request()).await.unwrap();
    for id in 1..=10 {
        to_host.send(call(id)).await.unwrap();
    }
    drop(to_host);
    let mut results = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), from_host.recv())
        .await
        .expect("output arrives or the session ends")
    {
        if let Some(host_message::Kind::Result(r)) = &frame.message().kind {
            results.push(r.call_id);
        }
    }
    assert_eq!(results, (1..=10).collect::<Vec<_>>());
    assert_eq!(serving.await.unwrap(), Ok(()));
    assert_eq!(host.session_count(), 0);
}

#[test]
#[should_panic(expected = "bookmark interval must be longer than zero")]
fn a_zero_bookmark_interval_is_refused_when_the_host_is_built() {
    // tokio's interval would panic on it inside the bookmark task, and the
    // host would go on without bookmarks, unnoticed.
    let _ = Host::builder(demo::app("s"))
        .bookmark_interval(Some(Duration::ZERO))
        .build();
}
