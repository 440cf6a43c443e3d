//! The host over real gRPC on 127.0.0.1: many clients, calls reflected
//! everywhere, clients that vanish mid-call, TLS.

mod common;

use common::{ServedGrpc, closed_within, serve_grpc};

use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig, ClientEvent, Reconnect};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::grpc::{GrpcConnector, GrpcServer};
use cosystem_worker::transport::{Connector, TransportError};
use serde_json::{Value, json};

fn demo_host(sync: SyncMode) -> Host {
    Host::builder(demo::app("grpc-secret"))
        .sync(sync)
        .sections(demo::DEFAULT_SECTIONS)
        .build()
}

async fn start(host: &Host) -> ServedGrpc {
    let server = GrpcServer::builder(host.clone())
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    serve_grpc(server)
}

fn fast_reconnect() -> Reconnect {
    Reconnect {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        ..Reconnect::default()
    }
}

fn client(url: &str) -> Client {
    Client::with_reconnect(
        GrpcConnector::new(url).expect("url"),
        ClientConfig::default(),
        fast_reconnect(),
    )
}

fn count(state: &Value) -> i64 {
    state["counter"]["count"].as_i64().unwrap_or(-1)
}

/// The versions a client's mirror took, in order, from its event stream,
/// up to and including `last`.
async fn versions_until(
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    last: u64,
) -> Vec<u64> {
    let mut versions = Vec::new();
    loop {
        match events.recv().await.expect("event stream") {
            ClientEvent::StateChanged { version } => {
                versions.push(version);
                if version == last {
                    return versions;
                }
            }
            _ => continue,
        }
    }
}

/// Waits until `client`'s mirror is at `version`.
async fn reach(client: &Client, version: u64) {
    let mut watch = client.watch_with(
        |_| (),
        cosystem_worker::client::WatchOptions::with_equals(|_, _| false),
    );
    while client.version() != Some(version) {
        watch.changed().await.expect("client stopped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_see_identical_version_sequences_and_final_state() {
    let host = demo_host(SyncMode::Patch);
    let server = start(&host).await;
    let clients: Vec<Client> = (0..8).map(|_| client(&server.url())).collect();
    // Subscribed before the first snapshot, so nothing is missed.
    let mut records: Vec<_> = clients.iter().map(Client::events).collect();
    for c in &clients {
        c.ready().await.unwrap();
    }
    let start_version = host.version();

    // Three clients call concurrently, interleaving their commits.
    let mut calls = Vec::new();
    for c in &clients[..3] {
        let c = c.clone();
        calls.push(tokio::spawn(async move {
            for i in 0..10 {
                c.call("counter", "increase", vec![json!(1)]).await.unwrap();
                c.call("todos", "add", vec![json!(format!("item {i}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    let end_version = host.version();
    assert_eq!(end_version, start_version + 60);
    for c in &clients {
        reach(c, end_version).await;
        assert_eq!(c.state(), Some(host.view()));
    }
    // Patch mode over an ordered stream: every client applied every version,
    // in order, with no gap and no repeat.
    let expected: Vec<u64> = (start_version + 1..=end_version).collect();
    for record in &mut records {
        let seen: Vec<u64> = versions_until(record, end_version)
            .await
            .into_iter()
            .filter(|v| *v > start_version)
            .collect();
        assert_eq!(seen, expected);
    }
    assert_eq!(count(&host.view()), 30);
    for c in &clients {
        c.dispose();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_one_client_is_reflected_in_every_client() {
    let host = demo_host(SyncMode::Snapshot);
    let server = start(&host).await;
    let clients: Vec<Client> = (0..4).map(|_| client(&server.url())).collect();
    for c in &clients {
        c.ready().await.unwrap();
    }
    let settled = clients[0]
        .call("counter", "increase", vec![json!(5)])
        .with_version()
        .await;
    assert_eq!(settled.outcome, Ok(json!(5)));
    let version = settled.state_version.expect("the host answered");
    assert_eq!(version, host.version());
    for c in &clients {
        reach(c, version).await;
        assert_eq!(c.select(count), Some(5));
    }
    // The secret module is private: never mirrored, still callable.
    assert_eq!(clients[1].select(|s| s.get("secret").cloned()), Some(None));
    clients[1].call("secret", "rotate", vec![]).await.unwrap();
    assert_eq!(
        host.module_state("secret").unwrap()["token"],
        "grpc-secret-r1"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_with_a_call_sent_leaves_the_others_unaffected() {
    let host = demo_host(SyncMode::Patch);
    let server = start(&host).await;
    let stays = client(&server.url());
    stays.ready().await.unwrap();

    for _ in 0..3 {
        let leaves = client(&server.url());
        leaves.ready().await.unwrap();
        // Start a call, let it go out, then drop everything about the client.
        let call = leaves.call("todos", "add", vec![json!("orphan")]);
        let id = call.id().expect("the call was made");
        let pending = tokio::spawn(call);
        // A hang guard, not a speed check.
        tokio::time::timeout(Duration::from_secs(60), async {
            while leaves.call_sent(id) == Some(false) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the call was sent");
        pending.abort();
        leaves.dispose();
        drop(leaves);

        let before = stays.select(count).unwrap();
        let value = stays
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap();
        assert_eq!(value, json!(before + 1));
    }
    // The host may or may not have run each orphan call; either way the
    // survivor's mirror is exactly the host's view.
    reach(&stays, host.version()).await;
    assert_eq!(stays.state(), Some(host.view()));
    assert_eq!(count(&host.view()), 3);
    stays.dispose();
    server.stop().await;
}

/// Whether the host refuses `connector`'s session: the connect fails, or
/// the link ends or fails before the host sends anything. The link is
/// handed over before the host answers (spec §17.2, opening), so a refusal
/// may come either way. A session the host admits sends nothing until asked,
/// so it shows as no answer within a bound (a liveness bound, not a timing
/// assertion).
async fn refused(connector: &GrpcConnector) -> bool {
    use futures::StreamExt;
    let Ok(mut link) = connector.connect().await else {
        return true;
    };
    match tokio::time::timeout(Duration::from_secs(10), link.stream.next()).await {
        Ok(None | Some(Err(_))) => true,
        Ok(Some(Ok(_))) | Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_certificate_made_at_test_time() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let host = demo_host(SyncMode::Patch);
    let server = GrpcServer::builder(host.clone())
        .tls(cert_pem.clone(), key_pem)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind with TLS");
    let server = serve_grpc(server);
    let url = format!("https://localhost:{}", server.addr.port());

    let trusted = Client::with_reconnect(
        GrpcConnector::new(&url).unwrap().ca_cert(cert_pem.clone()),
        ClientConfig::default(),
        fast_reconnect(),
    );
    trusted.ready().await.unwrap();
    assert_eq!(
        trusted
            .call("counter", "increase", vec![json!(2)])
            .await
            .unwrap(),
        json!(2)
    );

    // Without trusting the certificate, the handshake fails (retryably:
    // the certificate may be fixed on the host side).
    let untrusting = GrpcConnector::new(&url).unwrap();
    match untrusting.connect().await {
        Err(TransportError::Connection(message)) => {
            assert!(message.to_lowercase().contains("certificate"), "{message}")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("connected without trusting the certificate"),
    }
    // Plaintext against a TLS port does not get a session either.
    let plaintext = GrpcConnector::new(format!("http://127.0.0.1:{}", server.addr.port())).unwrap();
    assert!(refused(&plaintext).await);
    trusted.dispose();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tls_key_is_refused_at_bind() {
    let host = demo_host(SyncMode::Patch);
    let result = GrpcServer::builder(host)
        .tls("not a certificate", "not a key")
        .bind("127.0.0.1:0".parse().unwrap())
        .await;
    assert!(result.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let host_cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let host_pem = host_cert.cert.pem();
    let ca = common::TestCa::new();
    let member_cert = ca.issue("a-client");
    let stranger_cert = common::TestCa::new().issue("a-client");

    let server = GrpcServer::builder(demo_host(SyncMode::Patch))
        .tls(host_pem.clone(), host_cert.signing_key.serialize_pem())
        .client_ca(ca.pem())
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind with mutual TLS");
    let server = serve_grpc(server);
    let url = format!("https://localhost:{}", server.addr.port());
    let connector = || GrpcConnector::new(&url).unwrap().ca_cert(host_pem.clone());

    let member = Client::with_reconnect(
        connector().identity(member_cert.pem, member_cert.key_pem),
        ClientConfig::default(),
        fast_reconnect(),
    );
    member.ready().await.unwrap();
    let value = member.call("counter", "increase", vec![json!(1)]).await;
    assert_eq!(value.unwrap(), json!(1));

    for (who, refused) in [
        ("no certificate", connector()),
        (
            "a certificate from another CA",
            connector().identity(stranger_cert.pem, stranger_cert.key_pem),
        ),
    ] {
        // Refused in the handshake ("CertificateRequired"), or by the
        // connection closing once the host rejects the certificate.
        assert!(self::refused(&refused).await, "{who} was admitted");
    }
    member.dispose();
    server.stop().await;
}

#[test]
fn a_client_ca_without_tls_is_refused() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(async {
        GrpcServer::builder(demo_host(SyncMode::Patch))
            .client_ca("a CA")
            .bind("127.0.0.1:0".parse().unwrap())
            .await
    });
    assert!(matches!(
        result,
        Err(cosystem_worker::transport::grpc::GrpcError::ClientCaWithoutTls)
    ));
}

#[tokio::test]
async fn one_connection_may_hold_only_a_bounded_number_of_streams() {
    use cosystem_worker::transport::grpc::MAX_STREAMS_PER_CONNECTION;
    // Without a bound, a client needing no token (health is open) could
    // open streams on one connection without end.
    let server = start(&demo_host(SyncMode::Patch)).await;
    let mut client = common::h2_client(server.addr).await;
    let (response, mut body) =
        common::open_grpc(&mut client, server.addr, "/grpc.health.v1.Health/Check");
    // One empty HealthCheckRequest: uncompressed, zero bytes long.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    // The server's SETTINGS come before any response on the connection.
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        client.current_max_send_streams(),
        MAX_STREAMS_PER_CONNECTION as usize
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_starts_its_handshake_is_closed() {
    use cosystem_worker::transport::grpc::HANDSHAKE_TIMEOUT;
    // HTTP/2 pings start only after the handshake: without a deadline, a
    // silent connection would hold a descriptor for ever.
    let server = start(&demo_host(SyncMode::Patch)).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The clock is paused: the guard is virtual time, three deadlines long.
    assert!(
        closed_within(&mut silent, HANDSHAKE_TIMEOUT * 3).await,
        "the silent connection was still open"
    );
    // A client that does speak is served as ever.
    let client = client(&server.url());
    client.ready().await.unwrap();
    client.dispose();
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_tls_handshake_that_stalls_is_closed() {
    use cosystem_worker::transport::grpc::HANDSHAKE_TIMEOUT;
    use tokio::io::AsyncWriteExt;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let server = GrpcServer::builder(demo_host(SyncMode::Patch))
        .tls(cert.cert.pem(), cert.signing_key.serialize_pem())
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server = serve_grpc(server);
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The start of a ClientHello record announcing 512 bytes, then nothing:
    // more than the raw preface deadline needs, so only TLS's own bounds it.
    let mut start = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    start.resize(40, 0);
    stalled.write_all(&start).await.unwrap();
    assert!(
        closed_within(&mut stalled, HANDSHAKE_TIMEOUT * 3).await,
        "the stalled TLS connection was still open"
    );
    server.stop().await;
}

/// Shutting the host down from the application ends the gRPC server serving
/// it, as the server's own shutdown would: it does not go on accepting
/// connections only to refuse every session while its clients retry.
#[tokio::test]
async fn a_host_shut_down_by_the_application_stops_its_grpc_server() {
    let host = Host::builder(demo::app("s")).build();
    let server = GrpcServer::builder(host.clone())
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind");
    let url = format!("http://{}", server.local_addr());
    let serving = tokio::spawn(server.serve(std::future::pending()));
    let client = Client::new(GrpcConnector::new(&url).unwrap(), ClientConfig::default());
    client.ready().await.expect("ready");
    host.shutdown();
    // A watchdog, not a timing assertion: before, `serve` never returned.
    let served = tokio::time::timeout(Duration::from_secs(60), serving)
        .await
        .expect("serve returned once the host shut down");
    served
        .expect("the server task")
        .expect("serve ended cleanly");
    let refused = GrpcConnector::new(&url).unwrap().connect().await;
    assert!(refused.is_err(), "the listener is closed");
}

/// The `grpc-status` a Session stream ends with after the client sent
/// `body` on it and half-closed.
async fn session_status_after(server: &ServedGrpc, body: &'static [u8]) -> String {
    let mut client = common::h2_client(server.addr).await;
    let (response, mut stream) = common::open_grpc(
        &mut client,
        server.addr,
        "/cosystem.worker.v1.HostService/Session",
    );
    stream
        .send_data(bytes::Bytes::from_static(body), true)
        .unwrap();
    let mut response = response.await.unwrap().into_body();
    while let Some(data) = response.data().await {
        let data = data.unwrap();
        let _ = response.flow_control().release_capacity(data.len());
    }
    let trailers = response.trailers().await.unwrap().unwrap_or_default();
    trailers
        .get("grpc-status")
        .map(|s| s.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn broken_grpc_framing_ends_only_its_session_with_an_error_status() {
    // §17.2: INTERNAL, as gRPC's rules have libraries report it, or
    // INVALID_ARGUMENT; never OK, and never a host that stops serving.
    let server = start(&demo_host(SyncMode::Patch)).await;
    let cases: [(&str, &'static [u8]); 3] = [
        (
            "a compressed flag without grpc-encoding",
            &[1, 0, 0, 0, 2, 0x0a, 0x00],
        ),
        ("a flag byte that is neither 0 nor 1", &[7, 0, 0, 0, 0]),
        ("a message cut short by the end", &[0, 0, 0, 0, 9, 0x0a]),
    ];
    for (what, body) in cases {
        // 13 is INTERNAL, 3 INVALID_ARGUMENT.
        let status = session_status_after(&server, body).await;
        assert!(status == "13" || status == "3", "{what}: {status:?}");
    }
    // The host still serves everyone else.
    let client = client(&server.url());
    client.ready().await.unwrap();
    client.dispose();
    server.stop().await;
}
