//! A host that has shut down opens no session again, so the servers refuse
//! to start serving it instead of starting and ending at once with
//! nothing said.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};

use cosystem_worker::demo;
use cosystem_worker::host::{Host, InputError};
use cosystem_worker::transport::grpc::{GrpcError, GrpcServer};
use cosystem_worker::transport::{framed, memory};
use tokio::net::TcpListener;

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn shut_down_host() -> Host {
    let host = Host::builder(demo::app("demo-secret")).build();
    assert!(!host.is_shut_down());
    host.shutdown();
    assert!(host.is_shut_down());
    host
}

#[tokio::test]
async fn grpc_refuses_a_host_that_has_shut_down() {
    let bound = GrpcServer::builder(shut_down_host()).bind(loopback()).await;
    assert!(matches!(bound, Err(GrpcError::HostShutDown)));
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let listened = GrpcServer::builder(shut_down_host()).listen(listener);
    assert!(matches!(listened, Err(GrpcError::HostShutDown)));
    let service = GrpcServer::builder(shut_down_host()).into_service();
    assert!(matches!(service, Err(GrpcError::HostShutDown)));
}

#[tokio::test]
async fn framed_listeners_refuse_a_host_that_has_shut_down() {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let served = framed::serve_tcp(shut_down_host(), listener).await;
    let error = served.expect_err("a shut-down host must not be served");
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(error.to_string().contains("shut down"), "{error}");

    let dir = std::env::temp_dir().join(format!("shut-down-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("host.sock");
    let served = framed::serve_unix(shut_down_host(), &socket).await;
    assert_eq!(served.map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
    assert!(!socket.exists(), "a refusal must leave no socket file");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn serving_a_link_from_a_host_that_has_shut_down_is_refused() {
    let (host_end, _connector) = memory::pair();
    assert_eq!(
        shut_down_host().serve(host_end).await,
        Err(InputError::ShuttingDown)
    );
}
