//! Sessions opened and ended, by how they ended (`HostStats::sessions_opened`,
//! `HostStats::sessions_ended`): each way a session can end over gRPC and
//! over framed TCP is counted once, under its own reason.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::serve_grpc_on_loopback;
use cosystem_worker::demo;
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::framed;
use cosystem_worker::transport::grpc::GrpcServer;
use cosystem_worker::wire::host_service_client::HostServiceClient;
use cosystem_worker::wire::{ClientMessage, HostMessage, client_message};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Streaming};

fn host() -> Host {
    Host::builder(demo::app("ends-secret"))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .bookmark_interval(None)
        .build()
}

fn sync_request() -> ClientMessage {
    ClientMessage {
        header: Some(cosystem_worker::wire::Header::v1("", "raw", "")),
        kind: Some(client_message::Kind::SyncRequest(common::sync_request(
            1, 0,
        ))),
    }
}

/// Opens a `Session` stream, asks for the state and reads the reply.
async fn attached(
    url: &str,
) -> (
    mpsc::Sender<ClientMessage>,
    Streaming<HostMessage>,
    HostServiceClient<tonic::transport::Channel>,
) {
    let mut client = HostServiceClient::connect(url.to_owned()).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(sync_request()).await.unwrap();
    let mut stream = client
        .session(Request::new(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("the sync reply");
    (tx, stream, client)
}

/// Attaches a client on a runtime of its own, with a request stream that
/// never ends, then drops the runtime: the socket closes mid-stream, as
/// when a client process exits.
async fn go_away_mid_stream(url: String) {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (tx, stream, client) = attached(&url).await;
            // Nothing closes the stream: the runtime's end cuts it.
            std::mem::forget((tx, stream, client));
        });
    })
    .await
    .unwrap();
}

/// Waits until `host`'s sessions have ended as `expected` says, and
/// returns its stats then; panics with what it saw after a generous bound.
async fn ended(host: &Host, expected: &[(&str, u64)]) -> cosystem_worker::host::HostStats {
    let expected: BTreeMap<&str, u64> = expected.iter().copied().collect();
    let mut stats = host.stats();
    for _ in 0..1000 {
        stats = host.stats();
        if stats.sessions_ended == expected {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected ends {expected:?}, saw {:?}", stats.sessions_ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sessions_are_counted_by_how_they_ended() {
    let host = host();
    let served = serve_grpc_on_loopback(GrpcServer::builder(host.clone())).await;
    let url = served.url();

    // A client that half-closes is answered, then its stream ends.
    let (tx, mut stream, _client) = attached(&url).await;
    drop(tx);
    while stream.message().await.unwrap().is_some() {}
    ended(&host, &[("client_closed", 1)]).await;

    // One whose process goes away mid-stream loses its connection.
    go_away_mid_stream(url.clone()).await;
    ended(&host, &[("client_closed", 1), ("connection_lost", 1)]).await;

    // One that sends a message too large is refused.
    let (tx, mut stream, _client) = attached(&url).await;
    let big = "x".repeat(host.limits().max_message_bytes + 1);
    let call = ClientMessage {
        header: sync_request().header,
        kind: Some(client_message::Kind::Call(cosystem_worker::wire::Call {
            call_id: 1,
            module: "todos".into(),
            method: "add".into(),
            args_json: format!("[{big:?}]"),
        })),
    };
    tx.send(call).await.unwrap();
    assert!(stream.message().await.is_err(), "the stream ends refused");
    ended(
        &host,
        &[
            ("client_closed", 1),
            ("connection_lost", 1),
            ("refused_input", 1),
        ],
    )
    .await;

    // One still open when the host shuts down ends with it.
    let (_tx, mut stream, _client) = attached(&url).await;
    host.shutdown();
    while let Ok(Some(_)) = stream.message().await {}
    let stats = ended(
        &host,
        &[
            ("client_closed", 1),
            ("connection_lost", 1),
            ("refused_input", 1),
            ("host_shutdown", 1),
        ],
    )
    .await;
    assert_eq!(stats.sessions_opened, 4);
    assert_eq!(stats.sessions, 0);

    let text = stats.to_prometheus();
    assert!(
        text.contains("cosystem_worker_sessions_opened_total 4\n"),
        "{text}"
    );
    for reason in [
        "client_closed",
        "connection_lost",
        "refused_input",
        "host_shutdown",
    ] {
        let line = format!("cosystem_worker_sessions_ended_total{{reason=\"{reason}\"}} 1\n");
        assert!(text.contains(&line), "{line}: {text}");
    }
    assert!(
        text.contains("cosystem_worker_sessions_ended_total{reason=\"other\"} 0\n"),
        "{text}"
    );
    served.stop().await;
}

/// A `Session` stream opened with a bare HTTP/2 client, and its response.
async fn bare_session(
    addr: std::net::SocketAddr,
) -> (h2::SendStream<bytes::Bytes>, h2::client::ResponseFuture) {
    let mut client = common::h2_client(addr).await;
    let (response, stream) =
        common::open_grpc(&mut client, addr, "/cosystem.worker.v1.HostService/Session");
    (stream, response)
}

/// `message` as one gRPC message, its compression flag set as `compressed`.
fn grpc_message(message: &ClientMessage, compressed: bool) -> bytes::Bytes {
    let message = message.encode_to_vec();
    let mut framed = vec![u8::from(compressed)];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&message);
    framed.into()
}

/// Opens a `Session` stream with a bare HTTP/2 client, reads the sync
/// reply, then resets the stream with `reason`, as a gRPC client cancels
/// a call (CANCEL) or refuses one (REFUSED_STREAM).
async fn reset_after_the_reply(addr: std::net::SocketAddr, reason: h2::Reason) {
    let (mut stream, response) = bare_session(addr).await;
    stream
        .send_data(grpc_message(&sync_request(), false), false)
        .unwrap();
    let mut body = response.await.unwrap().into_body();
    let reply = body.data().await.expect("the sync reply").unwrap();
    let _ = body.flow_control().release_capacity(reply.len());
    stream.send_reset(reason);
}

/// A stream reset by its client is a lost connection whatever the reset's
/// code: neither a half-close, though tonic ends a CANCEL as one, nor the
/// host's refusal or shutdown that other codes map to as statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_reset_by_their_client_are_lost_connections() {
    let host = host();
    let served = serve_grpc_on_loopback(GrpcServer::builder(host.clone())).await;
    let reasons = [
        h2::Reason::CANCEL,
        h2::Reason::REFUSED_STREAM,
        h2::Reason::INTERNAL_ERROR,
        h2::Reason::PROTOCOL_ERROR,
    ];
    for _ in 0..5 {
        for reason in reasons {
            reset_after_the_reply(served.addr, reason).await;
        }
    }
    ended(&host, &[("connection_lost", 20)]).await;
    served.stop().await;
}

/// gRPC framing that tonic refuses (a compressed message on a stream that
/// named no encoding) is refused input, though its status is INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_framing_tonic_refuses_is_refused_input() {
    let host = host();
    let served = serve_grpc_on_loopback(GrpcServer::builder(host.clone())).await;
    let (mut stream, response) = bare_session(served.addr).await;
    stream
        .send_data(grpc_message(&sync_request(), true), false)
        .unwrap();
    let mut response = response.await.unwrap();
    while response.body_mut().data().await.is_some() {}
    let trailers = response
        .body_mut()
        .trailers()
        .await
        .unwrap()
        .expect("trailers");
    assert_eq!(trailers["grpc-status"], "13", "{trailers:?}");
    ended(&host, &[("refused_input", 1)]).await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_sessions_are_counted_by_how_they_ended() {
    let host = host();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(framed::serve_tcp(host.clone(), listener));
    let request = sync_request().encode_to_vec();
    let mut frame = u32::try_from(request.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&request);

    // A peer that half-closes after its request is answered, then closed.
    let mut polite = tokio::net::TcpStream::connect(addr).await.unwrap();
    polite.write_all(&frame).await.unwrap();
    polite.shutdown().await.unwrap();
    let mut rest = Vec::new();
    polite.read_to_end(&mut rest).await.unwrap();
    assert!(!rest.is_empty(), "the request was answered");
    ended(&host, &[("client_closed", 1)]).await;

    // A peer whose frame holds no envelope is refused.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let _ = garbage.read_to_end(&mut Vec::new()).await;
    ended(&host, &[("client_closed", 1), ("refused_input", 1)]).await;

    // A peer that goes away without closing its side: its reset is a lost
    // connection once the host's next write to it fails, or its read ends.
    let mut gone = tokio::net::TcpStream::connect(addr).await.unwrap();
    gone.write_all(&frame).await.unwrap();
    gone.read_u32().await.unwrap();
    gone.set_zero_linger().unwrap();
    drop(gone);
    let stats = ended(
        &host,
        &[
            ("client_closed", 1),
            ("connection_lost", 1),
            ("refused_input", 1),
        ],
    )
    .await;
    assert_eq!(stats.sessions_opened, 3);
    host.shutdown();
}
