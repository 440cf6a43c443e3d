//! What a gRPC server's session streams hold in their read buffers shares one
//! bound, as frames do on a framed listener: a peer that announces large
//! messages and stalls cannot make the host hold one max-size message per
//! stream (spec §15, FB6's budget).

mod common;

use common::serve_grpc;

use cosystem_worker::demo;
use cosystem_worker::host::{Host, HostLimits};
use cosystem_worker::transport::framed::PARTIAL_FRAMES_PER_LISTENER;
use cosystem_worker::transport::grpc::GrpcServer;
use cosystem_worker::wire::{ClientMessage, Header, SyncRequest, client_message};
use prost::Message;

const MAX_MESSAGE: usize = 64 * 1024;

/// A gRPC message prefix announcing `len` bytes.
fn prefix(len: usize) -> bytes::Bytes {
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    prefix.into()
}

/// A SyncRequest padded with an unknown field to exactly `len` bytes,
/// which a host reads as the SyncRequest alone.
fn padded_sync_request(len: usize) -> Vec<u8> {
    let mut bytes = ClientMessage {
        header: Some(Header::v1("", "padded", "")),
        kind: Some(client_message::Kind::SyncRequest(SyncRequest {
            sync_id: 1,
            have_version: 0,
            reason: 1,
        })),
    }
    .encode_to_vec();
    // Field 15, length-delimited, with a 3-byte varint length.
    let pad = len - bytes.len() - 4;
    bytes.push(15 << 3 | 2);
    bytes.extend_from_slice(&[
        (pad as u8) | 0x80,
        ((pad >> 7) as u8) | 0x80,
        (pad >> 14) as u8,
    ]);
    bytes.resize(len, 0);
    bytes
}

/// The `grpc-status` the response ended with, from its headers (a
/// trailers-only response) or its trailers.
async fn status_of(response: h2::client::ResponseFuture) -> String {
    let response = response.await.unwrap();
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().unwrap().to_owned();
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    trailers
        .get("grpc-status")
        .map(|s| s.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A served host for `limits`, listening on loopback.
async fn serve_with(limits: HostLimits) -> common::ServedGrpc {
    let host = Host::builder(demo::app("s")).limits(limits).build();
    let server = GrpcServer::builder(host)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    serve_grpc(server)
}

/// Waits for the stream of `streams` the server refuses, whichever it
/// reads last, checks it was refused `RESOURCE_EXHAUSTED`, and drops it.
async fn drop_the_refused<F: std::future::Future<Output = String>>(
    streams: &mut Vec<(std::pin::Pin<Box<F>>, h2::SendStream<bytes::Bytes>)>,
) {
    let watchdog = std::time::Duration::from_secs(60);
    let (refused, index, _) = tokio::time::timeout(
        watchdog,
        futures::future::select_all(streams.iter_mut().map(|(status, _)| status.as_mut())),
    )
    .await
    .expect("the stream past the bound was answered");
    assert_eq!(refused, "8");
    drop(streams.remove(index));
}

const SESSION: &str = "/cosystem.worker.v1.HostService/Session";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_announced_and_held_are_bounded_together_and_released_with_their_streams() {
    let served = serve_with(HostLimits {
        max_message_bytes: MAX_MESSAGE,
        ..HostLimits::default()
    })
    .await;
    let mut client = common::h2_client(served.addr).await;
    let open = |client: &mut h2::client::SendRequest<bytes::Bytes>| {
        common::open_grpc(client, served.addr, SESSION)
    };
    // One stream more than the budget holds each announce a whole message
    // (prefix included, the max message size) and send none of it: one of
    // them, whichever the server reads last, is refused.
    let announced = MAX_MESSAGE;
    let mut streams = Vec::new();
    for _ in 0..=PARTIAL_FRAMES_PER_LISTENER {
        let (response, mut body) = open(&mut client);
        body.send_data(prefix(announced), false).unwrap();
        streams.push((Box::pin(status_of(response)), body));
    }
    drop_the_refused(&mut streams).await;
    let watchdog = std::time::Duration::from_secs(60);

    // A stream that goes away gives its room back: a whole message of the
    // same size is then read and answered. Its room comes back once the
    // server has seen the reset, so a refusal before that is tried again.
    let (_, mut gone) = streams.pop().unwrap();
    gone.send_reset(h2::Reason::CANCEL);
    let answered = tokio::time::timeout(watchdog, async {
        loop {
            let (response, mut body) = open(&mut client);
            body.send_data(prefix(announced), false).unwrap();
            body.send_data(padded_sync_request(announced).into(), false)
                .unwrap();
            let response = response.await.unwrap();
            if response.headers().get("grpc-status").is_none() {
                break (response, body);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a stream fitting the budget again was answered");
    let (response, mut body) = answered;
    assert_eq!(response.status(), 200);
    let mut answer = response.into_body();
    let snapshot = answer.data().await.expect("a Snapshot").unwrap();
    assert!(snapshot.len() > 5, "{snapshot:?}");
    body.send_reset(h2::Reason::CANCEL);
    drop(streams);
    served.stop().await;
}

/// Health and reflection need no token, so what their streams hold is
/// bounded too: of one message more than `SIDE_SERVICE_READ_BYTES` holds
/// (each stream announcing a whole message and stalling, on several
/// connections), one is refused `RESOURCE_EXHAUSTED`; and meanwhile a
/// health check, far smaller than what counts, is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_service_messages_held_are_bounded_and_small_ones_still_answered() {
    use cosystem_worker::transport::grpc::{
        MAX_SIDE_SERVICE_MESSAGE_BYTES, MAX_STREAMS_PER_CONNECTION, SIDE_SERVICE_READ_BYTES,
    };
    let served = serve_with(HostLimits::default()).await;
    let check = |client: &mut h2::client::SendRequest<bytes::Bytes>| {
        common::open_grpc(client, served.addr, HEALTH_CHECK)
    };
    let stalled = SIDE_SERVICE_READ_BYTES / MAX_SIDE_SERVICE_MESSAGE_BYTES + 1;
    let per_connection = MAX_STREAMS_PER_CONNECTION as usize / 2;
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for i in 0..stalled {
        if i % per_connection == 0 {
            clients.push(common::h2_client(served.addr).await);
        }
        let (response, mut body) = check(clients.last_mut().unwrap());
        body.send_data(prefix(MAX_SIDE_SERVICE_MESSAGE_BYTES), false)
            .unwrap();
        streams.push((Box::pin(status_of(response)), body));
    }
    drop_the_refused(&mut streams).await;
    let watchdog = std::time::Duration::from_secs(60);

    // The bound is full; a health check of a few bytes does not count.
    let mut client = common::h2_client(served.addr).await;
    let (response, mut body) = check(&mut client);
    body.send_data(prefix(0), true).unwrap();
    let status = tokio::time::timeout(watchdog, status_of(response))
        .await
        .expect("a health check was answered while the bound was full");
    assert_eq!(status, "0");
    drop(streams);
    served.stop().await;
}

/// A health stream that opens and sends nothing, or sends its one message
/// and never ends, would hold tonic's read buffer for as long as its
/// connection lasts: each is ended `DEADLINE_EXCEEDED` after the host's
/// first-envelope deadline, as a session stream is, while one that sends
/// its message and ends is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_stream_that_does_not_end_its_request_is_ended() {
    let served = serve_with(HostLimits {
        first_envelope_timeout: std::time::Duration::from_secs(1),
        ..HostLimits::default()
    })
    .await;
    let mut client = common::h2_client(served.addr).await;
    let mut check = || common::open_grpc(&mut client, served.addr, HEALTH_CHECK);
    let (silent, _held) = check();
    let (unended, mut unended_body) = check();
    unended_body.send_data(prefix(0), false).unwrap();
    let (answered, mut body) = check();
    body.send_data(prefix(0), true).unwrap();
    assert_eq!(status_of(answered).await, "0");
    let watchdog = std::time::Duration::from_secs(30);
    for (stream, what) in [
        (silent, "the silent stream"),
        (unended, "the unended request"),
    ] {
        let status = tokio::time::timeout(watchdog, status_of(stream))
            .await
            .unwrap_or_else(|_| panic!("{what} was not ended"));
        assert_eq!(status, "4", "{what}");
    }
    served.stop().await;
}
