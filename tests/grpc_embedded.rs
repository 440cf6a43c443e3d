//! The host's `HostService` mounted on a tonic server the application runs
//! itself, next to a service of its own (`GrpcServerBuilder::into_service`).

mod common;

use std::net::SocketAddr;

use cosystem_worker::client::{Client, ClientConfig, Connection, Reconnect};
use cosystem_worker::demo;
use cosystem_worker::host::Host;
use cosystem_worker::transport::TransportError;
use cosystem_worker::transport::grpc::{
    ConnectionLimits, GrpcConnector, GrpcError, GrpcServer, GuardedIncoming, TokenFault,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TOKEN: &str = "app-t0ken";
/// A service of the application's own, served beside the host's.
const APP_SERVICE: &str = "example.Inventory";

struct AppServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// The application's server: its own health service and the host's
/// service, stopped by `stop`, shutting the host down as it stops.
async fn app_server(host: &Host, token: Option<&str>) -> AppServer {
    let mut builder = GrpcServer::builder(host.clone());
    if let Some(token) = token {
        builder = builder.token(token);
    }
    let service = builder.into_service().expect("a valid configuration");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(APP_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let stopping = {
        let host = host.clone();
        async move {
            let _ = stopped.await;
            host.shutdown();
        }
    };
    let served = tokio::spawn(
        Server::builder()
            .add_service(health)
            .add_service(service)
            .serve_with_incoming_shutdown(
                GuardedIncoming::new(listener, ConnectionLimits::default()),
                stopping,
            ),
    );
    AppServer { addr, stop, served }
}

fn client(addr: SocketAddr, token: Option<&str>) -> Client {
    let mut connector = GrpcConnector::new(format!("http://{addr}")).unwrap();
    if let Some(token) = token {
        connector = connector.token(token);
    }
    Client::with_reconnect(connector, ClientConfig::default(), Reconnect::default())
}

#[tokio::test]
async fn the_host_serves_sessions_beside_the_application_s_own_service() {
    let host = Host::builder(demo::app("s")).build();
    let server = app_server(&host, None).await;

    let client = client(server.addr, None);
    client.ready().await.expect("the client syncs");
    let value = client
        .module("counter")
        .call("increase", vec![json!(2)])
        .await
        .expect("the call succeeds");
    assert_eq!(value, json!(2));
    assert_eq!(
        client.select(|s| s["counter"]["count"].clone()),
        Some(json!(2))
    );

    // The application's own service answers on the same server.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: APP_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    client.dispose();
}

#[tokio::test]
async fn the_embedded_service_refuses_a_client_without_the_token() {
    let host = Host::builder(demo::app("s")).build();
    let server = app_server(&host, Some(TOKEN)).await;

    let stranger = client(server.addr, None);
    assert!(stranger.ready().await.is_err());
    assert!(matches!(
        stranger.connection(),
        Connection::Stopped {
            error: Some(TransportError::Unauthenticated(_))
        }
    ));

    let member = client(server.addr, Some(TOKEN));
    member.ready().await.expect("the token is accepted");
    member.dispose();
}

#[tokio::test]
async fn shutting_the_host_down_with_the_server_lets_the_server_stop_under_open_sessions() {
    let host = Host::builder(demo::app("s")).build();
    let server = app_server(&host, None).await;
    let client = client(server.addr, None);
    client.ready().await.expect("the client syncs");

    // Without the host's shutdown the open session would hold the graceful
    // shutdown for ever.
    server.stop.send(()).unwrap();
    // A hang guard, not a speed check.
    tokio::time::timeout(std::time::Duration::from_secs(30), server.served)
        .await
        .expect("the server stops")
        .unwrap()
        .expect("the server stops cleanly");
    assert_eq!(host.session_count(), 0);
    client.dispose();
}

#[test]
fn into_service_refuses_tls_and_an_unusable_token() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let host = Host::builder(demo::app("s")).build();
    let tls = GrpcServer::builder(host.clone())
        .tls("cert", "key")
        .into_service();
    assert!(matches!(tls, Err(GrpcError::TlsNotApplied)));
    let token = GrpcServer::builder(host).token("has space").into_service();
    assert!(matches!(
        token,
        Err(GrpcError::InvalidToken(TokenFault::Byte {
            at: 3,
            byte: b' '
        }))
    ));
}

#[tokio::test]
async fn a_principal_set_by_the_application_s_interceptor_reaches_the_method() {
    use cosystem_worker::host::Principal;
    use tonic::service::interceptor::InterceptedService;

    let host = Host::builder(common::whoami_app()).build();
    let service = GrpcServer::builder(host.clone()).into_service().unwrap();
    // Stands in for the application's own authentication, and is none: it
    // takes a bearer token as the user's name unchecked. A real layer
    // verifies the token (or reads `request.peer_certs()`) first.
    let authenticated = InterceptedService::new(service, |mut request: tonic::Request<()>| {
        let user = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        if let Some(user) = user {
            request.extensions_mut().insert(Principal::new(user));
        }
        Ok(request)
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(authenticated)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let connector = GrpcConnector::new(format!("http://{addr}"))
        .unwrap()
        .token("ada");
    let config = ClientConfig {
        peer_id: "laptop-1".into(),
        ..ClientConfig::default()
    };
    let named = Client::new(connector, config);
    let answer = named.module("who").call("ami", vec![]).await.unwrap();
    assert_eq!(answer, json!({"peer": "laptop-1", "principal": "ada"}));

    let anonymous = client(addr, None);
    let answer = anonymous.module("who").call("ami", vec![]).await.unwrap();
    assert_eq!(answer["principal"], json!(null));
    named.dispose();
    anonymous.dispose();
}

#[tokio::test]
async fn a_method_another_host_s_method_invokes_does_not_see_that_caller() {
    use cosystem_worker::app::{App, TypedModule};
    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct Nothing {}
    let inner = Host::builder(common::whoami_app()).build();
    let forwarding = TypedModule::new("fwd", Nothing::default())
        .method("inner_whoami", move |_: &mut Nothing, (): ()| {
            inner.invoke("who", "ami", &[])
        });
    let outer = Host::builder(App::new().with(forwarding)).build();
    let client = common::memory_client(&outer);
    let error = client
        .module("fwd")
        .call("inner_whoami", vec![])
        .await
        .unwrap_err();
    assert!(error.message.contains("no caller"), "{error}");
    client.dispose();
}

#[tokio::test]
async fn a_link_served_as_a_principal_runs_its_calls_as_that_principal() {
    let host = Host::builder(common::whoami_app()).build();
    let (host_end, connector) = cosystem_worker::transport::memory::pair();
    tokio::spawn({
        let host = host.clone();
        async move { host.serve_as(host_end, Some("uid:1000".into())).await }
    });
    let config = ClientConfig {
        peer_id: "local".into(),
        ..ClientConfig::default()
    };
    let client = Client::new(connector, config);
    let answer = client.module("who").call("ami", vec![]).await.unwrap();
    assert_eq!(answer, json!({"peer": "local", "principal": "uid:1000"}));
    client.dispose();
}

#[test]
fn a_method_run_by_the_host_itself_has_no_caller() {
    let host = Host::builder(common::whoami_app()).build();
    let refused = host.invoke("who", "ami", &[]).unwrap_err();
    assert_eq!(refused.message, "no caller");
    assert_eq!(cosystem_worker::host::caller(), None);
}
