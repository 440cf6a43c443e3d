//! A shared channel's capability token never reaches a point-to-point
//! client: the host writes it on everything it sends, so the gRPC and
//! framed servers refuse a host built with one (spec G9, FB8).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};

use cosystem_worker::demo;
use cosystem_worker::host::Host;
use cosystem_worker::transport::framed;
use cosystem_worker::transport::grpc::{GrpcError, GrpcServer};
use tokio::net::TcpListener;

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn host_with_token(token: &str) -> Host {
    Host::builder(demo::app("demo-secret"))
        .capability(token)
        .build()
}

#[tokio::test]
async fn grpc_refuses_a_host_that_carries_a_capability_token() {
    let bound = GrpcServer::builder(host_with_token("channel-secret"))
        .bind(loopback())
        .await;
    assert!(matches!(bound, Err(GrpcError::SharedChannelToken)));
    let service = GrpcServer::builder(host_with_token("channel-secret")).into_service();
    assert!(matches!(service, Err(GrpcError::SharedChannelToken)));
    // The error names the rule and the way out.
    let message = GrpcError::SharedChannelToken.to_string();
    assert!(
        message.contains("G9") && message.contains("without one"),
        "{message}"
    );
}

#[tokio::test]
async fn grpc_serves_a_host_without_a_capability_token() {
    let bound = GrpcServer::builder(Host::builder(demo::app("demo-secret")).build())
        .bind(loopback())
        .await;
    assert!(bound.is_ok());
}

#[tokio::test]
async fn framed_listeners_refuse_a_host_that_carries_a_capability_token() {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let served = framed::serve_tcp(host_with_token("channel-secret"), listener).await;
    let error = served.expect_err("a host with a token must not be served");
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(error.to_string().contains("FB8"), "{error}");

    let dir = std::env::temp_dir().join(format!("capability-scope-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let served = framed::serve_unix(host_with_token("channel-secret"), dir.join("host.sock")).await;
    assert_eq!(served.map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
    assert!(
        !dir.join("host.sock").exists(),
        "the refusal left a socket file"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn every_point_to_point_session_of_such_a_host_is_refused() {
    use cosystem_worker::host::InputError;
    use cosystem_worker::transport::framed::FramedConfig;
    use cosystem_worker::transport::memory;

    let (host_end, _client_end) = tokio::io::duplex(1024);
    let served = framed::serve_stream(
        host_with_token("channel-secret"),
        host_end,
        "pipe",
        FramedConfig::default(),
    )
    .await;
    assert_eq!(served, Err(InputError::SharedChannelToken));

    let (link, _connector) = memory::pair();
    let served = host_with_token("channel-secret").serve(link).await;
    assert_eq!(served, Err(InputError::SharedChannelToken));
}

#[tokio::test]
async fn grpc_refuses_such_a_host_before_binding_its_address() {
    // The address is taken: had it been bound first, the error would be
    // about the address.
    let taken = TcpListener::bind(loopback()).await.unwrap();
    let bound = GrpcServer::builder(host_with_token("channel-secret"))
        .bind(taken.local_addr().unwrap())
        .await;
    assert!(matches!(bound, Err(GrpcError::SharedChannelToken)));
}

#[test]
fn a_worker_refuses_such_a_host_at_start() {
    use cosystem_worker::transport::worker::{Worker, WorkerError};
    let started = Worker::start(|| host_with_token("channel-secret"));
    assert!(matches!(started, Err(WorkerError::SharedChannelToken)));
    assert!(Worker::start(|| Host::builder(demo::app("demo-secret")).build()).is_ok());
}
