//! The application's own authentication under `GrpcServer::serve`
//! (`GrpcServerBuilder::interceptor`): refusing streams, and naming each
//! session's principal from its metadata or its client certificate.

mod common;

use common::serve_grpc_on_loopback;

use std::net::SocketAddr;

use cosystem_worker::client::{Client, ClientConfig, Connection, Reconnect};
use cosystem_worker::host::{Host, Principal};
use cosystem_worker::transport::TransportError;
use cosystem_worker::transport::grpc::{GrpcConnector, GrpcError, GrpcServer};
use serde_json::json;
use tonic::{Request, Status};

/// Stands in for the application's authentication: a bearer value from a
/// fixed list of API keys names the user; anything else is refused.
fn api_keys(request: Request<()>) -> Result<Request<()>, Status> {
    let key = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let user = match key {
        Some("key-of-ada") => "ada",
        Some("key-of-grace") => "grace",
        _ => return Err(Status::unauthenticated("unknown API key")),
    };
    let mut request = request;
    request.extensions_mut().insert(Principal::new(user));
    Ok(request)
}

fn client(addr: SocketAddr, key: Option<&str>) -> Client {
    let mut connector = GrpcConnector::new(format!("http://{addr}")).unwrap();
    if let Some(key) = key {
        connector = connector.token(key);
    }
    Client::with_reconnect(connector, ClientConfig::default(), Reconnect::default())
}

#[tokio::test]
async fn each_session_runs_as_the_principal_the_interceptor_names() {
    let host = Host::builder(common::whoami_app()).build();
    let server = serve_grpc_on_loopback(GrpcServer::builder(host).interceptor(api_keys)).await;

    let ada = client(server.addr, Some("key-of-ada"));
    let grace = client(server.addr, Some("key-of-grace"));
    for (client, name) in [(&ada, "ada"), (&grace, "grace")] {
        let answer = client.module("who").call("ami", vec![]).await.unwrap();
        assert_eq!(answer["principal"], json!(name));
    }
    ada.dispose();
    grace.dispose();
    server.stop().await;
}

#[tokio::test]
async fn a_stream_the_interceptor_refuses_stops_its_client_and_spares_the_others() {
    let host = Host::builder(common::whoami_app()).build();
    let server = GrpcServer::builder(host.clone())
        .interceptor(api_keys)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let gauge = server.connections();
    let server = common::serve_grpc(server);
    let member = client(server.addr, Some("key-of-ada"));
    member.ready().await.unwrap();

    let stranger = client(server.addr, Some("key-of-nobody"));
    assert!(stranger.ready().await.is_err());
    match stranger.connection() {
        Connection::Stopped {
            error: Some(TransportError::Unauthenticated(message)),
        } => assert!(message.contains("unknown API key"), "{message}"),
        other => panic!("the refused client is {other:?}"),
    }
    // Refused before a session opened; the member's session is untouched.
    assert_eq!(host.session_count(), 1);
    // Counted for metrics, as a refused token is: the interceptor is this
    // server's login.
    assert_eq!(gauge.counts().refused_by_interceptor, 1);
    assert_eq!(gauge.counts().unauthenticated, 0);
    assert!(
        gauge
            .counts()
            .to_prometheus()
            .contains("cosystem_worker_grpc_sessions_refused_by_interceptor_total 1\n")
    );
    let answer = member.module("who").call("ami", vec![]).await.unwrap();
    assert_eq!(answer["principal"], json!("ada"));
    member.dispose();
    server.stop().await;
}

#[tokio::test]
async fn the_interceptor_runs_before_the_token_check() {
    let host = Host::builder(common::whoami_app()).build();
    let refuse_all = |_: Request<()>| Err(Status::permission_denied("closed today"));
    let server = serve_grpc_on_loopback(
        GrpcServer::builder(host)
            .token("the-shared-token")
            .interceptor(refuse_all),
    )
    .await;
    let with_token = client(server.addr, Some("the-shared-token"));
    assert!(with_token.ready().await.is_err());
    match with_token.connection() {
        Connection::Stopped {
            error: Some(TransportError::Unauthenticated(message)),
        } => assert!(message.contains("closed today"), "{message}"),
        other => panic!("the refused client is {other:?}"),
    }
    server.stop().await;
}

#[test]
fn into_service_refuses_an_interceptor_it_would_not_apply() {
    let host = Host::builder(common::whoami_app()).build();
    let service = GrpcServer::builder(host)
        .interceptor(Ok::<_, Status>)
        .into_service();
    assert!(matches!(service, Err(GrpcError::InterceptorNotApplied)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mutual_tls_the_interceptor_names_the_principal_from_the_client_certificate() {
    let host_cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let host_pem = host_cert.cert.pem();
    let ca = common::TestCa::new();
    let ada = ca.issue("ada");
    let someone = ca.issue("someone-else");
    let ada_der = ada.der.clone();

    // The application's directory of certificates: a real one would read
    // the verified certificate's subject; the DER bytes stand in here.
    let check = move |mut request: Request<()>| {
        let user = request
            .peer_certs()
            .and_then(|chain| chain.first().cloned())
            .filter(|leaf| leaf.as_ref() == ada_der.as_slice())
            .map(|_| Principal::new("ada"));
        if let Some(user) = user {
            request.extensions_mut().insert(user);
        }
        Ok(request)
    };
    let server = serve_grpc_on_loopback(
        GrpcServer::builder(Host::builder(common::whoami_app()).build())
            .tls(host_pem.clone(), host_cert.signing_key.serialize_pem())
            .client_ca(ca.pem())
            .interceptor(check),
    )
    .await;
    let url = format!("https://localhost:{}", server.addr.port());
    let connect = |pem: String, key: String| {
        let connector = GrpcConnector::new(&url)
            .unwrap()
            .ca_cert(host_pem.clone())
            .identity(pem, key);
        Client::with_reconnect(connector, ClientConfig::default(), Reconnect::default())
    };

    let ada = connect(ada.pem, ada.key_pem);
    let answer = ada.module("who").call("ami", vec![]).await.unwrap();
    assert_eq!(answer["principal"], json!("ada"));
    let other = connect(someone.pem, someone.key_pem);
    let answer = other.module("who").call("ami", vec![]).await.unwrap();
    assert_eq!(answer["principal"], json!(null));
    ada.dispose();
    other.dispose();
    server.stop().await;
}
