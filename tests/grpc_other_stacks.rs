//! The reference client against gRPC hosts that behave as other gRPC stacks
//! do by default, rather than as tonic does.

use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig, Connection, Reconnect};
use cosystem_worker::transport::TransportError;
use cosystem_worker::transport::grpc::GrpcConnector;
use cosystem_worker::wire::host_service_server::{HostService, HostServiceServer};
use cosystem_worker::wire::{
    ClientMessage, Header, HostMessage, Snapshot, SnapshotReason, client_message, host_message,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

/// A host that, like grpc-go, grpcio and grpc-js by default, sends its
/// response headers only with its first message, and answers the first
/// SyncRequest with a snapshot of `{"n":1}`. With `refuse`, it instead
/// answers the stream with UNAUTHENTICATED after that first message.
struct HeadersWithFirstMessage {
    refuse: bool,
}

#[tonic::async_trait]
impl HostService for HeadersWithFirstMessage {
    type SessionStream = BoxStream<'static, Result<HostMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        // Returning from here is what sends the headers; holding back until
        // the client has spoken is what those stacks amount to.
        let first = inbound.next().await;
        if self.refuse {
            return Err(Status::unauthenticated("wrong token"));
        }
        let Some(Ok(ClientMessage {
            header: Some(header),
            kind: Some(client_message::Kind::SyncRequest(sync)),
        })) = first
        else {
            return Err(Status::invalid_argument("expected a SyncRequest first"));
        };
        let snapshot = HostMessage {
            header: Some(Header::v1("e1", "h", header.source)),
            kind: Some(host_message::Kind::Snapshot(Snapshot {
                version: 1,
                state_json: r#"{"n":1}"#.into(),
                sync_id: sync.sync_id,
                reason: SnapshotReason::Sync.into(),
            })),
        };
        // The stream stays open after the snapshot, as a live session does.
        let answers = futures::stream::iter([Ok(snapshot)]).chain(futures::stream::pending());
        Ok(Response::new(answers.boxed()))
    }
}

async fn serve(host: HeadersWithFirstMessage) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HostServiceServer::new(host))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    url
}

/// A gRPC server that serves only health checks: no HostService at all,
/// as a host of another protocol version would appear to this client.
async fn serve_without_the_service() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    url
}

/// Waits (boundedly) until `client` stops; the error it stopped with.
async fn stopped(client: &Client) -> Option<TransportError> {
    let mut connection = client.connection_changes();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Connection::Stopped { error } = &*connection.borrow_and_update() {
                return error.clone();
            }
            connection.changed().await.expect("connection watch");
        }
    })
    .await
    .expect("the client kept retrying")
}

fn client(url: &str) -> Client {
    Client::with_reconnect(
        GrpcConnector::new(url).expect("url"),
        ClientConfig::default(),
        Reconnect {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            ..Reconnect::default()
        },
    )
}

#[tokio::test]
async fn a_client_syncs_with_a_host_that_sends_headers_only_with_its_first_message() {
    let url = serve(HeadersWithFirstMessage { refuse: false }).await;
    let client = client(&url);
    // A bound on liveness only: before, the client waited for headers the
    // host would send only after the client's first message, for ever.
    tokio::time::timeout(Duration::from_secs(20), client.ready())
        .await
        .expect("the client never synced: it waited for response headers first")
        .expect("ready");
    assert_eq!(client.select(|s| s["n"].clone()), Some(json!(1)));
    assert_eq!(client.version(), Some(1));
    client.dispose();
}

#[tokio::test]
async fn a_refusal_that_comes_after_the_first_message_stops_the_client() {
    let url = serve(HeadersWithFirstMessage { refuse: true }).await;
    let client = client(&url);
    let stopped = stopped(&client).await;
    assert!(
        matches!(stopped, Some(TransportError::Unauthenticated(_))),
        "stopped with {stopped:?}"
    );
    let error = client
        .ready()
        .await
        .expect_err("a refused client is never ready");
    assert!(error.to_string().contains("wrong token"), "{error}");
}

#[tokio::test]
async fn a_server_without_the_host_service_stops_the_client_instead_of_retrying() {
    let url = serve_without_the_service().await;
    let client = client(&url);
    let stopped = stopped(&client).await;
    assert!(
        matches!(stopped, Some(TransportError::Unsupported(_))),
        "stopped with {stopped:?}"
    );
    let error = client.ready().await.expect_err("never ready");
    assert_eq!(error.code, cosystem_worker::wire::ErrorCode::Unavailable);
}
