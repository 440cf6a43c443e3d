//! A client whose transport fails for good (refused credentials, or a
//! transport that cannot reconnect) stops, and its `ready()`, pending calls
//! and later calls fail with a clear error instead of waiting forever; so
//! does one whose driver dies.

use std::time::Duration;

use cosystem_worker::client::{
    CallOptions, Client, ClientConfig, ClientEvent, Connection, Reconnect,
};
use cosystem_worker::demo;
use cosystem_worker::host::Host;
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
async fn refused_credentials_fail_ready_and_calls_permission_denied_saying_they_never_ran() {
    let client = Client::new(Refusing, ClientConfig::default());
    let mut events = client.events();
    let queued = client.call("counter", "increase", vec![json!(1)]);
    let id = queued.id().unwrap();
    let error = client.ready().await.unwrap_err();
    assert_eq!(error.code, ErrorCode::PermissionDenied);
    assert!(error.message.contains("bad token"), "{error}");
    let settled = queued.with_version().await;
    assert!(!settled.sent, "it never left, so making it again is safe");
    let queued = settled.outcome.unwrap_err();
    assert_eq!(queued.code, ErrorCode::PermissionDenied);
    assert!(
        queued
            .message
            .ends_with("bad token; settled before it was sent; it did not run"),
        "{queued}"
    );
    // The events say what the call's future was told, once (spec §11.1).
    let told: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .filter_map(|event| match event {
            ClientEvent::Settled {
                call,
                outcome,
                sent,
                ..
            } if call == id => Some((outcome.map_err(|e| e.code), sent)),
            _ => None,
        })
        .collect();
    assert_eq!(told, vec![(Err(ErrorCode::PermissionDenied), false)]);
    let later = client.call("counter", "increase", vec![json!(1)]).await;
    assert_eq!(later.unwrap_err().code, ErrorCode::PermissionDenied);
    // A watch made after the stop ends at once, rather than wait for a
    // change that never comes (a hang guard, not a speed check).
    let mut late = client.watch(|view| view.clone());
    let ended = tokio::time::timeout(Duration::from_secs(60), late.changed()).await;
    assert_eq!(ended.expect("a watch made after the stop ends"), None);
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

struct Panicking;

impl Connector for Panicking {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        async { panic!("a connector with a bug") }.boxed()
    }
}

/// A driver that dies (here, a connector that panics) stops the client:
/// `ready()`, a queued call and a later call all fail `internal` rather
/// than waiting on a driver that is gone.
#[tokio::test]
async fn a_driver_that_panics_stops_the_client_with_an_internal_error() {
    // A watchdog, not a timing assertion: without the stop this would hang.
    tokio::time::timeout(Duration::from_secs(60), driver_panics())
        .await
        .expect("the client stopped");
}

async fn driver_panics() {
    let client = Client::new(Panicking, ClientConfig::default());
    let queued = client.call("counter", "increase", vec![json!(1)]);
    let error = client.ready().await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Internal, "{error}");
    assert_eq!(queued.await.unwrap_err().code, ErrorCode::Internal);
    let later = client.call("counter", "increase", vec![json!(1)]).await;
    assert_eq!(later.unwrap_err().code, ErrorCode::Internal);
    assert!(matches!(client.connection(), Connection::Stopped { .. }));
}

/// Waits too long for the clock to express, as a reconnect wait or a call
/// timeout, mean "for ever", not a crash: the client retries at no
/// foreseeable time, and a call with such a timeout is answered.
#[tokio::test]
async fn waits_past_what_the_clock_can_express_wait_for_ever() {
    for jitter in [false, true] {
        let policy = Reconnect {
            initial: Duration::MAX,
            max: Duration::MAX,
            jitter,
        };
        let client = Client::with_reconnect(Refused, ClientConfig::default(), policy);
        let mut changes = client.connection_changes();
        let retrying = changes
            .wait_for(|c| !matches!(c, Connection::Connecting { .. }))
            .await
            .expect("the driver runs")
            .clone();
        // Not a wait turned into zero by an overflow, which would retry
        // in a tight loop: the wait is as long as the clock goes.
        match retrying {
            Connection::Retrying {
                attempt: 1,
                retry_in,
                retry_at,
                ..
            } => {
                assert!(retry_in >= Duration::MAX / 2, "{retry_in:?}");
                // The next connect's time too: an overflow there is "now".
                let year = Duration::from_secs(365 * 24 * 3600);
                let now = tokio::time::Instant::now().into_std();
                assert!(retry_at > now + year, "{retry_at:?}");
            }
            other => panic!("{other:?}"),
        }
        client.dispose();
    }

    let (host_end, connector) = memory::pair();
    let host = Host::builder(demo::app("token")).build();
    tokio::spawn(async move { host.serve(host_end).await });
    let client = Client::new(connector, ClientConfig::default());
    let options = CallOptions {
        timeout: Some(Duration::MAX),
    };
    let value = client
        .call_with("counter", "increase", vec![json!(1)], options)
        .await;
    assert_eq!(value, Ok(json!(1)));
}

struct Refused;

impl Connector for Refused {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        async { Err(TransportError::Connection("refused".into())) }.boxed()
    }
}

struct Never;

impl Connector for Never {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        futures::future::pending().boxed()
    }
}

/// A client whose runtime shut down under it has no driver any more: it
/// stops, `unavailable`, rather than leave its waiters hanging.
#[test]
fn a_client_whose_runtime_shut_down_is_stopped_unavailable() {
    let first = tokio::runtime::Runtime::new().expect("a runtime");
    let client = first.block_on(async { Client::new(Never, ClientConfig::default()) });
    drop(first);
    let second = tokio::runtime::Runtime::new().expect("a runtime");
    let ready = second.block_on(async {
        // A watchdog, not a timing assertion: without the stop this hangs.
        tokio::time::timeout(Duration::from_secs(60), client.ready()).await
    });
    let error = ready.expect("ready() answered").unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable, "{error}");
    assert!(matches!(client.connection(), Connection::Stopped { .. }));
}

/// A runtime that shuts down before the client's driver task first runs
/// drops the task unpolled: the client is stopped all the same, and
/// `closed()` resolves, since the guard that stops it is made before the
/// task is spawned.
#[test]
fn a_client_whose_runtime_shut_down_before_its_driver_ran_is_stopped() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let client = {
        let _enter = first.enter();
        Client::new(Never, ClientConfig::default())
    };
    drop(first);
    let second = tokio::runtime::Runtime::new().expect("a runtime");
    second.block_on(async {
        // Watchdogs, not timing assertions: without the guard these hang.
        tokio::time::timeout(Duration::from_secs(60), client.closed())
            .await
            .expect("closed() resolved");
        let ready = tokio::time::timeout(Duration::from_secs(60), client.ready())
            .await
            .expect("ready() answered");
        assert_eq!(ready.unwrap_err().code, ErrorCode::Unavailable);
    });
}
