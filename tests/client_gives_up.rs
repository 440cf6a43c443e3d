//! A client whose transport fails for good (refused credentials, or a
//! transport that cannot reconnect) stops, and its `ready()`, pending calls
//! and later calls fail with a clear error instead of waiting forever.

use cosystem_worker::client::{Client, ClientConfig};
use cosystem_worker::transport::{ClientLink, Connector, TransportError, memory};
use cosystem_worker::wire::ErrorCode;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;

struct Refusing;

impl Connector for Refusing {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        async { Err(TransportError::Unauthenticated("bad token".into())) }.boxed()
    }
}

#[tokio::test]
async fn refused_credentials_fail_ready_and_calls_permission_denied() {
    let client = Client::new(Refusing, ClientConfig::default());
    let queued = client.call("counter", "increase", vec![json!(1)]);
    let error = client.ready().await.unwrap_err();
    assert_eq!(error.code, ErrorCode::PermissionDenied);
    assert!(error.message.contains("bad token"), "{error}");
    assert_eq!(queued.await.unwrap_err().code, ErrorCode::PermissionDenied);
    let later = client.call("counter", "increase", vec![json!(1)]).await;
    assert_eq!(later.unwrap_err().code, ErrorCode::PermissionDenied);
}

#[tokio::test]
async fn a_call_made_after_the_transport_closed_for_good_fails_unavailable() {
    let (host_end, connector) = memory::pair();
    drop(host_end);
    let client = Client::new(connector, ClientConfig::default());
    assert_eq!(
        client.ready().await.unwrap_err().code,
        ErrorCode::Unavailable
    );
    let error = client
        .call("counter", "increase", vec![json!(1)])
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable);
}
