//! The gRPC server's connection limits: a connection over a limit is closed
//! as soon as it is accepted, and held connections and their clients are
//! served as before.

mod common;

use common::{serve_grpc, serve_grpc_on_loopback};

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig};
use cosystem_worker::demo;
use cosystem_worker::host::Host;
use cosystem_worker::transport::grpc::{
    ConnectionLimits, GrpcConnector, GrpcError, GrpcServer, GrpcServerBuilder, GuardedIncoming,
};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Bounds every wait, so that a regression fails instead of hanging.
const GUARD: Duration = Duration::from_secs(20);

/// The HTTP/2 client preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

fn builder(limits: ConnectionLimits) -> GrpcServerBuilder {
    let host = Host::builder(demo::app("limits-secret"))
        .sections(demo::DEFAULT_SECTIONS)
        .build();
    GrpcServer::builder(host).connection_limits(limits)
}

fn non_zero(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("a non-zero limit")
}

/// Opens a connection from `source` (any loopback address), starts HTTP/2
/// on it and returns it if the server answers with bytes of its own (its
/// SETTINGS), or `None` if the server closes it without a byte.
async fn open_from(server: SocketAddr, source: IpAddr) -> Option<TcpStream> {
    let attempt = async {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind source");
        let mut stream = socket.connect(server).await.expect("connect");
        // A write to a connection the server has already closed may fail.
        stream.write_all(PREFACE).await.ok()?;
        let mut buf = [0u8; 64];
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => Some(stream),
            _ => None,
        }
    };
    tokio::time::timeout(GUARD, attempt).await.expect("hung")
}

/// Whether the server still answers an HTTP/2 PING on `stream`: reads
/// frames until the acknowledgement of this one, or the end.
async fn answers_ping(stream: &mut TcpStream) -> bool {
    const PAYLOAD: &[u8; 8] = b"limits!!";
    let exchange = async {
        let mut ping = vec![0, 0, 8, 6, 0, 0, 0, 0, 0];
        ping.extend_from_slice(PAYLOAD);
        if stream.write_all(&ping).await.is_err() {
            return false;
        }
        loop {
            let mut header = [0u8; 9];
            if stream.read_exact(&mut header).await.is_err() {
                return false;
            }
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return false;
            }
            // PING (type 6) with ACK (flag 1) and this payload.
            if header[3] == 6 && header[4] & 1 == 1 && payload == PAYLOAD {
                return true;
            }
        }
    };
    tokio::time::timeout(GUARD, exchange).await.expect("hung")
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Opens connections from `source` until one is admitted: the server
/// gives a slot back when it has seen a closed connection end, which it
/// does on its own time.
async fn admitted_eventually(server: SocketAddr, source: IpAddr) -> TcpStream {
    let attempts = async {
        loop {
            if let Some(stream) = open_from(server, source).await {
                return stream;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(GUARD, attempts)
        .await
        .expect("never admitted")
}

// Other loopback addresses than 127.0.0.1 exist by default on Linux only.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_total_limit_is_closed_until_a_held_one_ends() {
    let bound = builder(ConnectionLimits::new(non_zero(2)))
        .bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    let gauge = bound.connections();
    let server = serve_grpc(bound);
    let first = open_from(server.addr, loopback(1)).await.expect("first");
    let second = open_from(server.addr, loopback(2)).await.expect("second");
    assert!(
        open_from(server.addr, loopback(3)).await.is_none(),
        "a third connection was served over a limit of two"
    );
    let counts = gauge.counts();
    assert_eq!(
        (
            counts.open,
            counts.refused_over_max,
            counts.refused_over_per_address
        ),
        (2, 1, 0)
    );
    drop(first);
    let third = admitted_eventually(server.addr, loopback(3)).await;
    let mut second = second;
    assert!(
        answers_ping(&mut second).await,
        "refusing a connection ended one already held"
    );
    // Raw connections would hold the server's graceful stop.
    drop((second, third));
    server.stop().await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_limit_closes_only_that_address_and_its_clients_stay_served() {
    let limits = ConnectionLimits::new(non_zero(100)).per_address(non_zero(1));
    let server = serve_grpc_on_loopback(builder(limits)).await;
    // The reference client connects from 127.0.0.1 and holds its slot.
    let client = Client::new(
        GrpcConnector::new(server.url()).expect("url"),
        ClientConfig::default(),
    );
    tokio::time::timeout(GUARD, client.ready())
        .await
        .expect("hung")
        .expect("ready");
    assert!(
        open_from(server.addr, loopback(1)).await.is_none(),
        "a second connection from 127.0.0.1 was served over a limit of one"
    );
    let other = open_from(server.addr, loopback(2))
        .await
        .expect("another address is served");
    let value = tokio::time::timeout(GUARD, client.call("counter", "increase", vec![json!(1)]))
        .await
        .expect("hung")
        .expect("the held client's call");
    assert_eq!(value, json!(1));
    client.dispose();
    drop(other);
    server.stop().await;
}

#[test]
fn into_service_refuses_connection_limits_it_would_not_enforce() {
    // Even the defaults, set explicitly, would silently not apply.
    for limits in [
        ConnectionLimits::new(non_zero(5)),
        ConnectionLimits::default(),
    ] {
        let service = builder(limits).into_service();
        assert!(matches!(
            service,
            Err(GrpcError::ConnectionLimitsNotApplied)
        ));
    }
    let host = Host::builder(demo::app("limits-secret")).build();
    assert!(GrpcServer::builder(host).into_service().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tls_failed_handshakes_give_their_slot_back_and_the_limit_still_binds() {
    use cosystem_worker::transport::Connector;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let server = serve_grpc_on_loopback(
        builder(ConnectionLimits::new(non_zero(1)))
            .tls(cert.cert.pem(), cert.signing_key.serialize_pem()),
    )
    .await;
    // Handshakes that fail, one after another: each must give its slot back.
    for _ in 0..3 {
        let mut garbage = TcpStream::connect(server.addr).await.unwrap();
        let _ = garbage.write_all(PREFACE).await;
        let mut buf = [0u8; 64];
        let closed = async { while let Ok(1..) = garbage.read(&mut buf).await {} };
        tokio::time::timeout(GUARD, closed).await.expect("hung");
    }
    let url = format!("https://localhost:{}", server.addr.port());
    let connector = GrpcConnector::new(&url).unwrap().ca_cert(cert.cert.pem());
    let link = async {
        loop {
            if let Ok(link) = connector.connect().await {
                return link;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let held = tokio::time::timeout(GUARD, link)
        .await
        .expect("the one slot never came back");
    assert!(
        connector.connect().await.is_err(),
        "a second TLS connection was served over a limit of one"
    );
    drop(held);
    let again = async {
        while connector.connect().await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(GUARD, again)
        .await
        .expect("the slot of a closed TLS connection never came back");
    server.stop().await;
}

/// Two listeners sharing one budget: a connection held on one counts
/// against the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_sharing_a_gauge_share_one_budget() {
    let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (first_addr, second_addr) = (first.local_addr().unwrap(), second.local_addr().unwrap());
    let mut first = GuardedIncoming::new(first, ConnectionLimits::new(non_zero(1)));
    let gauge = first.connections();
    let second = GuardedIncoming::sharing(second, &gauge);

    let _client = TcpStream::connect(first_addr).await.unwrap();
    let held = tokio::time::timeout(GUARD, first.next())
        .await
        .expect("hung")
        .expect("a connection")
        .expect("accepted");
    assert_eq!(gauge.counts().open, 1);

    // The second listener refuses: the budget is taken on the first.
    let accepting = tokio::spawn(async move {
        let mut second = second;
        second.next().await
    });
    let mut refused = TcpStream::connect(second_addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(GUARD, refused.read(&mut buf))
        .await
        .expect("hung");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the refused connection was served"
    );
    assert_eq!(gauge.counts().refused_over_max, 1);

    // Once the first listener's connection is gone, the second admits.
    drop(held);
    let _admitted = TcpStream::connect(second_addr).await.unwrap();
    let accepted = tokio::time::timeout(GUARD, accepting)
        .await
        .expect("hung")
        .unwrap();
    assert!(matches!(accepted, Some(Ok(_))));
    assert_eq!(gauge.counts().open, 1);
}
