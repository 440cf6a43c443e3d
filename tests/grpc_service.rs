//! What the gRPC host refuses and the standard services it answers, seen
//! from real clients on 127.0.0.1: bearer tokens, client and message
//! limits, flooding, a vanished raw client, health and reflection.

mod common;

use common::{ServedGrpc, serve_grpc_on_loopback};
use futures::StreamExt;

use std::net::SocketAddr;
use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig, Reconnect};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, HostLimits, SyncMode};
use cosystem_worker::transport::grpc::{
    GrpcConnector, GrpcServer, MAX_SIDE_SERVICE_MESSAGE_BYTES, SERVICE_NAME,
};
use cosystem_worker::transport::{Connector, TransportError};
use cosystem_worker::wire::host_service_client::HostServiceClient;
use cosystem_worker::wire::{
    Call, ClientMessage, ErrorCode, Header, HostMessage, SyncReason, SyncRequest, call_result,
    client_message, host_message,
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

const TOKEN: &str = "s3cr3t-t0ken";

fn host_with(limits: HostLimits) -> Host {
    Host::builder(demo::app("svc-secret"))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .limits(limits)
        .bookmark_interval(None)
        .build()
}

async fn until(stop: oneshot::Receiver<()>) {
    let _ = stop.await;
}

/// Serves `host` on a free port; the server stops when the second value
/// is dropped.
async fn start(host: &Host, token: Option<&str>) -> (SocketAddr, ServedGrpc) {
    let mut builder = GrpcServer::builder(host.clone());
    if let Some(token) = token {
        builder = builder.token(token);
    }
    let served = serve_grpc_on_loopback(builder).await;
    (served.addr, served)
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn header() -> Option<Header> {
    Some(Header::v1("", "raw", ""))
}

fn sync_request() -> ClientMessage {
    ClientMessage {
        header: header(),
        kind: Some(client_message::Kind::SyncRequest(SyncRequest {
            sync_id: 1,
            have_version: 0,
            reason: SyncReason::Initial as i32,
        })),
    }
}

fn call(id: u64, module: &str, method: &str, args_json: &str) -> ClientMessage {
    ClientMessage {
        header: header(),
        kind: Some(client_message::Kind::Call(Call {
            call_id: id,
            module: module.to_owned(),
            method: method.to_owned(),
            args_json: args_json.to_owned(),
        })),
    }
}

/// Opens a raw `Session` stream, optionally with an authorization value.
async fn raw_session(
    addr: SocketAddr,
    authorization: Option<&str>,
) -> (
    mpsc::Sender<ClientMessage>,
    Result<Streaming<HostMessage>, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(4096);
    let mut request = Request::new(ReceiverStream::new(rx));
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    let result = HostServiceClient::new(channel(addr).await)
        .session(request)
        .await
        .map(|r| r.into_inner());
    (tx, result)
}

/// Reads the stream to its end and returns the status it ended with.
async fn end_status(mut stream: Streaming<HostMessage>) -> tonic::Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return tonic::Status::ok(""),
            Err(status) => return status,
        }
    }
}

/// The counter's value after `client` increases it by `by`.
async fn increase(client: &Client, by: i64) -> serde_json::Value {
    client
        .call("counter", "increase", vec![json!(by)])
        .await
        .unwrap()
}

/// A `Client` of the host at `addr`, synced.
async fn ready_client(addr: SocketAddr) -> Client {
    let client = Client::new(
        GrpcConnector::new(format!("http://{addr}")).unwrap(),
        ClientConfig::default(),
    );
    client.ready().await.unwrap();
    client
}

fn no_retry_delay() -> Reconnect {
    Reconnect {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        ..Reconnect::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_the_right_token_is_refused_unauthenticated_before_any_state() {
    let host = host_with(HostLimits::default());
    let server = GrpcServer::builder(host.clone())
        .token(TOKEN)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Refusals are counted for metrics too: failed logins are what an
    // operator looks for first.
    let gauge = server.connections();
    let served = common::serve_grpc(server);
    let addr = served.addr;
    for authorization in [
        None,
        Some("Bearer wrong-token"),
        Some("Bearer s3cr3t-t0kenX"),
        Some(TOKEN),
        Some("Basic czNjcjN0LXQwa2Vu"),
    ] {
        let (_tx, result) = raw_session(addr, authorization).await;
        // The call itself fails: the response headers already carry the
        // status, so no HostMessage can have been sent.
        let status = result.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{authorization:?}");
        assert!(!status.message().contains("wrong-token"));
    }
    assert_eq!(host.session_count(), 0);
    assert_eq!(gauge.counts().unauthenticated, 5);
    assert!(
        gauge
            .counts()
            .to_prometheus()
            .contains("cosystem_worker_grpc_sessions_unauthenticated_total 5\n")
    );

    let (tx, result) = raw_session(addr, Some(&format!("Bearer {TOKEN}"))).await;
    let mut stream = result.expect("accepted");
    tx.send(sync_request()).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(host_message::Kind::Snapshot(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_missing_or_wrong_token_fails_permission_denied_instead_of_retrying() {
    let host = host_with(HostLimits::default());
    let (addr, _stop) = start(&host, Some(TOKEN)).await;
    let url = format!("http://{addr}");

    for connector in [
        GrpcConnector::new(&url).unwrap(),
        GrpcConnector::new(&url).unwrap().token("wrong"),
    ] {
        // The link is handed over before the host answers (§17.2,
        // opening): the refusal is its first item.
        let mut link = connector.connect().await.expect("connect");
        assert!(matches!(
            link.stream.next().await,
            Some(Err(TransportError::Unauthenticated(_)))
        ));
        let client = Client::with_reconnect(connector, ClientConfig::default(), no_retry_delay());
        let error = client.ready().await.unwrap_err();
        assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
        // Calls made afterwards fail the same way instead of waiting forever.
        let error = client
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::PermissionDenied);
    }

    let client = Client::new(
        GrpcConnector::new(&url).unwrap().token(TOKEN),
        ClientConfig::default(),
    );
    client.ready().await.unwrap();
    assert_eq!(increase(&client, 1).await, json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_queued_before_the_token_is_refused_fails_rather_than_hangs() {
    let host = host_with(HostLimits::default());
    let (addr, _stop) = start(&host, Some(TOKEN)).await;
    let client = Client::new(
        GrpcConnector::new(format!("http://{addr}"))
            .unwrap()
            .token("nope"),
        ClientConfig::default(),
    );
    // Made before the connection attempt has even started.
    let error = client
        .call("counter", "increase", vec![json!(1)])
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
    assert_eq!(host.version(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_cannot_be_built_stops_the_client_instead_of_retrying() {
    let connector = GrpcConnector::new("http://127.0.0.1:1")
        .unwrap()
        .token("not a token");
    assert!(connector.endpoint().is_err());
    let client = Client::new(connector, ClientConfig::default());
    // Without the guarantee the client retries forever and this times out.
    let error = tokio::time::timeout(Duration::from_secs(60), client.ready())
        .await
        .expect("the client gave up")
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable, "{error}");
    assert!(error.message.contains("as configured"), "{error}");
}

#[test]
fn tls_settings_on_a_plaintext_url_are_refused_rather_than_dropped() {
    // Plaintext would ignore them, and send the token in the clear to a
    // host the application meant to verify.
    let url = "http://127.0.0.1:1";
    let cases = [
        GrpcConnector::new(url).unwrap().ca_cert(b"pem".to_vec()),
        GrpcConnector::new(url)
            .unwrap()
            .identity(b"cert".to_vec(), b"key".to_vec()),
        GrpcConnector::new(url).unwrap().domain_name("host.example"),
    ];
    for connector in cases {
        let error = connector.endpoint().unwrap_err().to_string();
        assert!(error.contains("needs an https:// host"), "{error}");
    }
    assert!(GrpcConnector::new(url).unwrap().endpoint().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_at_its_client_limit_refuses_new_streams_resource_exhausted() {
    let host = host_with(HostLimits {
        max_clients: 2,
        ..HostLimits::default()
    });
    let (addr, _stop) = start(&host, None).await;
    let (_a_tx, a) = raw_session(addr, None).await;
    let (_b_tx, b) = raw_session(addr, None).await;
    let (_a, _b) = (a.unwrap(), b.unwrap());
    let (_c_tx, c) = raw_session(addr, None).await;
    assert_eq!(c.unwrap_err().code(), Code::ResourceExhausted);
    assert_eq!(host.session_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_refuses_a_stream_without_the_token_unauthenticated_not_as_full() {
    // G4: the token is checked first, so a client without it is told so,
    // which it takes as final, rather than to come back later.
    let host = host_with(HostLimits {
        max_clients: 1,
        ..HostLimits::default()
    });
    let (addr, _stop) = start(&host, Some(TOKEN)).await;
    let bearer = format!("Bearer {TOKEN}");
    let (_a_tx, a) = raw_session(addr, Some(&bearer)).await;
    let _a = a.expect("the one slot");
    let (_b_tx, b) = raw_session(addr, None).await;
    assert_eq!(b.unwrap_err().code(), Code::Unauthenticated);
    let (_c_tx, c) = raw_session(addr, Some(&bearer)).await;
    assert_eq!(c.unwrap_err().code(), Code::ResourceExhausted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_sends_no_first_envelope_is_ended_and_frees_its_client_slot() {
    // Long enough that a loaded machine opens the next two streams within
    // it; the test waits it out once.
    let deadline = Duration::from_secs(5);
    let host = host_with(HostLimits {
        max_clients: 2,
        first_envelope_timeout: deadline,
        ..HostLimits::default()
    });
    let (addr, _stop) = start(&host, None).await;
    // S speaks at once (its SyncRequest goes out with the stream's
    // opening), then idles past the deadline.
    let (s_tx, rx) = mpsc::channel(16);
    s_tx.send(sync_request()).await.unwrap();
    let mut s = HostServiceClient::new(channel(addr).await)
        .session(Request::new(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let reply = s.message().await.unwrap().expect("the sync reply");
    assert!(matches!(reply.kind, Some(host_message::Kind::Snapshot(_))));
    // The silent stream takes the other slot, so a third is refused ...
    let (_silent_tx, silent) = raw_session(addr, None).await;
    let silent = silent.expect("accepted: the host is not full yet");
    let (_refused_tx, refused) = raw_session(addr, None).await;
    assert_eq!(refused.unwrap_err().code(), Code::ResourceExhausted);
    // ... until the silent one is ended for not speaking.
    let status = tokio::time::timeout(Duration::from_secs(30), end_status(silent))
        .await
        .expect("the silent stream is ended");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("G2"), "{status:?}");
    let third = ready_client(addr).await;
    assert_eq!(increase(&third, 1).await, json!(1));
    // S had sent its first envelope: its session outlasts the deadline,
    // which it passed before the silent stream, opened after it, did.
    s_tx.send(call(7, "counter", "increase", "[2]"))
        .await
        .unwrap();
    let settled = loop {
        let message = s.message().await.unwrap().expect("S's session is open");
        if let Some(host_message::Kind::Result(result)) = message.kind {
            break result;
        }
    };
    assert_eq!(settled.call_id, 7);
    assert!(
        matches!(settled.outcome, Some(call_result::Outcome::ValueJson(_))),
        "{settled:?}"
    );
    assert_eq!(host.stats().sessions_ended.get("refused_input"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_ends_that_stream_resource_exhausted_and_no_other() {
    let host = host_with(HostLimits {
        max_message_bytes: 1024,
        ..HostLimits::default()
    });
    let (addr, _stop) = start(&host, None).await;
    let bystander = ready_client(addr).await;

    let (tx, stream) = raw_session(addr, None).await;
    let stream = stream.unwrap();
    let big = format!("[{:?}]", "x".repeat(2000));
    tx.send(call(1, "todos", "add", &big)).await.unwrap();
    let status = end_status(stream).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(host.view()["todos"]["items"].as_array().unwrap().is_empty());

    assert_eq!(increase(&bystander, 3).await, json!(3));
}

/// Sends each item as the bytes of one gRPC message, as they are, and
/// decodes the host's answers with prost.
#[derive(Clone, Copy, Default)]
struct RawBytes;

impl tonic::codec::Codec for RawBytes {
    type Encode = bytes::Bytes;
    type Decode = HostMessage;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = HostMessage;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<HostMessage>, tonic::Status> {
        prost::Message::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_no_client_message_end_that_stream_invalid_argument_and_no_other() {
    let host = host_with(HostLimits::default());
    let (addr, _stop) = start(&host, None).await;
    let bystander = ready_client(addr).await;

    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    let stream = grpc
        .streaming(
            Request::new(ReceiverStream::new(rx)),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/cosystem.worker.v1.HostService/Session",
            ),
            RawBytes,
        )
        .await
        .unwrap()
        .into_inner();
    // A varint that runs past ten bytes: no protobuf message at all.
    tx.send(bytes::Bytes::from_static(&[0xff; 11]))
        .await
        .unwrap();
    // Bounded so that a host that ignored the bytes fails the test rather
    // than hanging it.
    let status = tokio::time::timeout(Duration::from_secs(30), end_status(stream))
        .await
        .expect("the stream ends");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed ClientMessage"),
        "{status:?}"
    );

    assert_eq!(increase(&bystander, 3).await, json!(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_calls_without_reading_is_ended_resource_exhausted() {
    let host = host_with(HostLimits {
        max_calls_in_flight: 4,
        ..HostLimits::default()
    });
    let (addr, _stop) = start(&host, None).await;
    let bystander = ready_client(addr).await;

    let (tx, stream) = raw_session(addr, None).await;
    let stream = stream.unwrap();
    // Large results fill the HTTP/2 window quickly; once it is full the
    // host's answers queue up and the flood is detected.
    let text = format!("[{:?}]", "y".repeat(800));
    let mut sent = 0u64;
    for id in 1..=2000 {
        if tx.send(call(id, "todos", "add", &text)).await.is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent > 0);
    let status = end_status(stream).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("flood"), "{status:?}");

    let before = bystander
        .select(|s| s["counter"]["count"].as_i64())
        .flatten();
    assert_eq!(before, Some(0));
    assert_eq!(increase(&bystander, 1).await, json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_client_that_vanishes_mid_call_is_disconnected_and_others_continue() {
    let host = host_with(HostLimits::default());
    let (addr, _stop) = start(&host, None).await;
    let stays = ready_client(addr).await;
    for round in 1..=5 {
        let (tx, stream) = raw_session(addr, None).await;
        let stream = stream.unwrap();
        tx.send(call(1, "counter", "increase", "[10]"))
            .await
            .unwrap();
        // Gone before reading its result: stream, sender and connection.
        drop(stream);
        drop(tx);
        let value = stays
            .call("todos", "add", vec![json!(format!("round {round}"))])
            .await
            .unwrap();
        assert!(value.is_u64());
    }
    // Every vanished session is closed on the host.
    for _ in 0..500 {
        if host.session_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(host.session_count(), 1);
    assert_eq!(stays.state(), Some(host.view()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_for_the_service_and_the_server() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let host = host_with(HostLimits::default());
    // Health stays open even when sessions need a token.
    let (addr, _stop) = start(&host, Some(TOKEN)).await;
    let mut health = HealthClient::new(channel(addr).await);
    for service in ["", SERVICE_NAME] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    // Open to anyone, so it reads no more than a name needs: a large
    // message would be memory a peer without the token could hold.
    let oversized = health
        .check(HealthCheckRequest {
            service: "x".repeat(MAX_SIDE_SERVICE_MESSAGE_BYTES),
        })
        .await
        .unwrap_err();
    assert_eq!(oversized.code(), Code::OutOfRange, "{oversized:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_reads_no_more_than_a_name_needs() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let host = host_with(HostLimits::default());
    let (addr, _stop) = start(&host, Some(TOKEN)).await;
    let mut reflection = ServerReflectionClient::new(channel(addr).await);
    let ask = |symbol: String| {
        futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol)),
        }])
    };
    let mut answers = reflection
        .server_reflection_info(ask(SERVICE_NAME.to_owned()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        answers.message().await.unwrap().is_some(),
        "a name is answered"
    );
    let mut answers = reflection
        .server_reflection_info(ask("x".repeat(MAX_SIDE_SERVICE_MESSAGE_BYTES)))
        .await
        .unwrap()
        .into_inner();
    // tonic-reflection ends the stream on a request it cannot read; an
    // unknown name it reads is answered with an error instead.
    let refused = answers.message().await;
    assert!(matches!(refused, Ok(None)), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_the_host_service() {
    let host = host_with(HostLimits::default());
    let (addr, _stop) = start(&host, None).await;

    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel(addr).await);
        let requests = [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol(SERVICE_NAME.to_owned()),
        ]
        .map(|m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        });
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&SERVICE_NAME), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            responses.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected the file declaring the service");
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel(addr).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        assert!(list.service.iter().any(|s| s.name == SERVICE_NAME));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_still_gets_every_answer_then_a_clean_end() {
    let host = host_with(HostLimits::default());
    let (addr, _stop) = start(&host, None).await;
    let (tx, stream) = raw_session(addr, None).await;
    let mut stream = stream.unwrap();
    tx.send(sync_request()).await.unwrap();
    for id in 1..=20 {
        tx.send(call(id, "counter", "increase", "[1]"))
            .await
            .unwrap();
    }
    // Nothing more will be sent: the request stream ends here.
    drop(tx);
    let mut results = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    if let Some(host_message::Kind::Result(r)) = message.kind {
                        results.push(r.call_id);
                    }
                }
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    })
    .await
    .expect("the stream ends once everything is answered");
    assert!(ended.is_ok(), "{ended:?}");
    assert_eq!(results, (1..=20).collect::<Vec<_>>());
    assert_eq!(host.version(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_message_over_the_clients_limit_stops_the_client_instead_of_refetching_it() {
    let host = host_with(HostLimits {
        max_message_bytes: 16 << 20,
        ..HostLimits::default()
    });
    let texts: Vec<serde_json::Value> = (0..6).map(|_| json!("x".repeat(1 << 20))).collect();
    host.invoke("todos", "add_many", &[serde_json::Value::Array(texts)])
        .unwrap();
    let (addr, _stop) = start(&host, None).await;
    // The client keeps its default 4 MiB limit; the snapshot is over 6 MiB.
    let client = Client::with_reconnect(
        GrpcConnector::new(format!("http://{addr}")).unwrap(),
        ClientConfig::default(),
        no_retry_delay(),
    );
    let error = tokio::time::timeout(Duration::from_secs(30), client.ready())
        .await
        .expect("ready() ends")
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable);
    assert!(error.message.contains("exceeds the limit"), "{error}");
}

/// A `GrpcServer` serving a host, its address, the sender whose drop stops
/// it, and the task of its `serve`.
async fn serve_until_stopped() -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), cosystem_worker::transport::grpc::GrpcError>>,
) {
    let host = host_with(HostLimits::default());
    let server = GrpcServer::builder(host)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    (addr, stop, tokio::spawn(server.serve(until(stopped))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_watch_reads_not_serving_then_ends_unavailable_when_the_server_stops() {
    let (addr, stop, serving) = serve_until_stopped().await;
    let mut watch = common::open_health_watch(format!("http://{addr}")).await;
    drop(stop);
    // Watchdogs, not timing assertions: tonic-health's own watch never
    // ends, and this one would then end only when the grace period drops
    // the connection, without a status.
    let status = tokio::time::timeout(Duration::from_secs(60), watch.message())
        .await
        .expect("a status change")
        .expect("a status, not an error")
        .expect("not the end");
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    let end = tokio::time::timeout(Duration::from_secs(60), watch.message())
        .await
        .expect("the watch ends")
        .expect_err("it ends with a status");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert!(end.message().contains("stopping"), "{end:?}");
    let ended = tokio::time::timeout(Duration::from_secs(60), serving)
        .await
        .expect("serve returns")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_its_client_leaves_open_does_not_keep_the_server_from_stopping() {
    let (addr, stop, serving) = serve_until_stopped().await;
    let reflection = common::open_reflection_stream(format!("http://{addr}")).await;
    drop(stop);
    // The reflection stream is never half-closed; serve returns after its
    // grace period all the same.
    let ended = tokio::time::timeout(Duration::from_secs(60), serving)
        .await
        .expect("serve returns although a stream is still open")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    drop(reflection);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_while_the_host_is_full_wait_and_run_once_a_slot_frees() {
    // One client slot: a second client's streams are refused with
    // RESOURCE_EXHAUSTED after its SyncRequest went out. Its call must not
    // go out on such a stream (it would settle outcome-unknown though the
    // host ran nothing): it stays queued and runs once the slot frees.
    let host = host_with(HostLimits {
        max_clients: 1,
        ..HostLimits::default()
    });
    let (addr, _stop) = start(&host, None).await;
    let url = format!("http://{addr}");
    let first = Client::new(GrpcConnector::new(&url).unwrap(), ClientConfig::default());
    first.ready().await.unwrap();
    let second = Client::with_reconnect(
        GrpcConnector::new(&url).unwrap(),
        ClientConfig::default(),
        no_retry_delay(),
    );
    common::a_call_waits_for_a_free_slot(&host, first, second, 2, |error| {
        // Typed, so that an application can tell "host full" without
        // reading the message.
        assert!(
            matches!(error, Some(TransportError::HostLimit(m)) if m.contains("too many clients")),
            "{error:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_calls_than_the_link_buffers_queued_before_connecting_all_settle() {
    // Queued before the first link is up: more envelopes than the gRPC
    // link's buffer holds, so sending must not wait on the stream being
    // read (it used to, for ever).
    const CALLS: usize = 1500;
    let host = host_with(HostLimits {
        max_calls_in_flight: 4096,
        ..HostLimits::default()
    });
    let (addr, _stop) = start(&host, None).await;
    let client = Client::new(
        GrpcConnector::new(format!("http://{addr}")).unwrap(),
        ClientConfig {
            max_calls_in_flight: 4096,
            ..ClientConfig::default()
        },
    );
    let calls: Vec<_> = (0..CALLS)
        .map(|_| client.call("counter", "increase", vec![json!(1)]))
        .collect();
    let settled = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(calls))
        .await
        .expect("the calls never settled");
    assert!(settled.iter().all(Result::is_ok));
    assert_eq!(host.version(), 1 + CALLS as u64);
}
