//! `Client::connection`: where the link to the host stands and why it last
//! failed, so that an application can show "reconnecting" with a cause.
//! Time is tokio's paused clock, so waits and attempt counts are exact.

mod common;

use std::time::Duration;

use common::{EndingLinks, memory_client};
use cosystem_worker::client::{Client, ClientConfig, Connection, Reconnect};
use cosystem_worker::demo;
use cosystem_worker::host::Host;
use cosystem_worker::transport::{ClientLink, Connector, HostInput, TransportError};
use cosystem_worker::wire::{
    ClientMessage, ErrorCode, Header, HostMessage, Snapshot, SnapshotReason, client_message,
    host_message,
};
use futures::FutureExt;
use futures::future::BoxFuture;

fn policy() -> Reconnect {
    Reconnect {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(5),
        // The waits are checked exactly.
        jitter: false,
    }
}

/// Every connect is refused, as by a host that is down.
struct Refused;

impl Connector for Refused {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        async { Err(TransportError::Connection("connection refused".into())) }.boxed()
    }
}

/// Every connect hangs.
struct Hanging;

impl Connector for Hanging {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        futures::future::pending().boxed()
    }
}

/// Credentials the host refuses.
struct Unauthenticated;

impl Connector for Unauthenticated {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        async { Err(TransportError::Unauthenticated("bad token".into())) }.boxed()
    }
}

async fn after(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn a_connect_under_way_is_connecting_attempt_one() {
    let client = Client::with_reconnect(Hanging, ClientConfig::default(), policy());
    after(1).await;
    assert_eq!(client.connection(), Connection::Connecting { attempt: 1 });
    assert!(!client.is_connected());
}

#[tokio::test(start_paused = true)]
async fn a_refused_connect_is_retrying_with_its_error_a_doubling_wait_and_when_it_ends() {
    let start = tokio::time::Instant::now();
    let at = |ms| (start + Duration::from_millis(ms)).into_std();
    let client = Client::with_reconnect(Refused, ClientConfig::default(), policy());
    let refused = Some(TransportError::Connection("connection refused".into()));
    after(1).await;
    // The clock is paused: the first connect fails at `start`.
    assert_eq!(
        retrying(client.connection()),
        (refused.clone(), Duration::from_millis(50), at(50), 1)
    );
    // The second attempt, at 50 ms, fails too and waits twice as long.
    after(59).await;
    assert_eq!(
        retrying(client.connection()),
        (refused, Duration::from_millis(100), at(150), 2)
    );
}

/// A `Retrying` state's error, wait, due instant and attempt.
fn retrying(state: Connection) -> (Option<TransportError>, Duration, std::time::Instant, u32) {
    match state {
        Connection::Retrying {
            error,
            retry_in,
            retry_at,
            attempt,
            ..
        } => (error, retry_in, retry_at, attempt),
        other => panic!("not retrying: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_link_the_host_ends_after_speaking_is_retrying_without_an_error_from_attempt_one() {
    // Links that stay up for the longest wait, so each resets the backoff.
    let links = EndingLinks {
        says: 1,
        lasts: policy().max,
        connects: Default::default(),
    };
    let client = Client::with_reconnect(links, ClientConfig::default(), policy());
    // Two links in (0-5 s, 5.05-10.05 s): each one the host spoke on starts
    // the count again.
    after(10_070).await;
    let (error, retry_in, retry_at, attempt) = retrying(client.connection());
    assert_eq!(
        (error, retry_in, attempt),
        (None, Duration::from_millis(50), 1)
    );
    assert!(retry_at > tokio::time::Instant::now().into_std());
}

#[tokio::test(start_paused = true)]
async fn a_served_client_is_connected_and_disposing_it_stops_without_an_error() {
    let host = Host::builder(demo::app("s")).build();
    let client = memory_client(&host);
    let mut changes = client.connection_changes();
    client.ready().await.expect("the client syncs");
    assert_eq!(client.connection(), Connection::Connected);
    assert!(client.is_connected());

    client.dispose();
    changes.changed().await.expect("the stop is published");
    assert_eq!(
        *changes.borrow_and_update(),
        Connection::Stopped { error: None }
    );
    assert!(!client.is_connected());
}

#[tokio::test(start_paused = true)]
async fn a_host_gone_for_good_stops_the_client_with_the_transports_error() {
    let host = Host::builder(demo::app("s")).build();
    let client = memory_client(&host);
    client.ready().await.expect("the client syncs");
    // The in-process pair cannot be reconnected once its host end is gone.
    host.shutdown();
    after(1000).await;
    assert_eq!(
        client.connection(),
        Connection::Stopped {
            error: Some(TransportError::Closed)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_stop_the_client_and_a_later_dispose_keeps_the_cause() {
    let client = Client::with_reconnect(Unauthenticated, ClientConfig::default(), policy());
    let stopped = Connection::Stopped {
        error: Some(TransportError::Unauthenticated("bad token".into())),
    };
    after(1).await;
    assert_eq!(client.connection(), stopped);
    client.dispose();
    assert_eq!(client.connection(), stopped);
}

/// One link whose two ends the test holds; later connects wait for ever.
struct Scripted(std::sync::Mutex<Option<ClientLink>>);

/// The test's ends of a scripted link: what the client sends, and where
/// the host's envelopes go in (dropping it ends the link).
struct HostSide {
    sent: tokio::sync::mpsc::UnboundedReceiver<cosystem_worker::wire::ClientMessage>,
    send: tokio::sync::mpsc::UnboundedSender<Result<HostInput, TransportError>>,
}

fn scripted() -> (Scripted, HostSide) {
    let (to_host, sent) = tokio::sync::mpsc::unbounded_channel();
    let (send, from_host) = tokio::sync::mpsc::unbounded_channel();
    let sink = futures::sink::unfold(to_host, |to_host, message| async move {
        to_host.send(message).map_err(|_| TransportError::Closed)?;
        Ok::<_, TransportError>(to_host)
    });
    let link = ClientLink {
        sink: Box::pin(sink),
        stream: Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(
            from_host,
        )),
    };
    (
        Scripted(std::sync::Mutex::new(Some(link))),
        HostSide { sent, send },
    )
}

impl Connector for Scripted {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        match self.0.lock().unwrap().take() {
            Some(link) => async move { Ok(link) }.boxed(),
            None => futures::future::pending().boxed(),
        }
    }
}

fn host_says(kind: host_message::Kind) -> Result<HostInput, TransportError> {
    Ok(HostMessage {
        header: Some(Header::v1("e", "h", "")),
        kind: Some(kind),
    }
    .into())
}

#[tokio::test]
async fn bytes_from_the_host_that_are_no_envelope_stop_the_client() {
    let (connector, mut host) = scripted();
    let client = Client::with_reconnect(connector, ClientConfig::default(), policy());
    host.sent.recv().await.expect("a sync request");
    host.send
        .send(Ok(HostInput::Encoded(bytes::Bytes::from_static(
            &[0xff; 11],
        ))))
        .unwrap();
    let error = client.ready().await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Unavailable, "{error}");
    assert!(
        matches!(
            client.connection(),
            Connection::Stopped {
                error: Some(TransportError::Malformed(_))
            }
        ),
        "{:?}",
        client.connection()
    );
}

#[tokio::test]
async fn a_link_up_before_the_host_speaks_is_still_connecting() {
    let (connector, mut host) = scripted();
    let client = Client::new(connector, ClientConfig::default());
    // The client has sent its sync request: the transport is connected.
    host.sent.recv().await.expect("a sync request");
    assert_eq!(client.connection(), Connection::Connecting { attempt: 1 });
    drop(host.send);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_lost_link_took_down_settles_after_the_state_left_connected() {
    let (connector, mut host) = scripted();
    let client = Client::with_reconnect(connector, ClientConfig::default(), policy());
    let Some(client_message::Kind::SyncRequest(sync)) =
        host.sent.recv().await.expect("a sync request").kind
    else {
        panic!("the client starts with a sync request");
    };
    host.send
        .send(host_says(host_message::Kind::Snapshot(Snapshot {
            version: 1,
            state_json: "{}".into(),
            sync_id: sync.sync_id,
            reason: SnapshotReason::Commit as i32,
        })))
        .unwrap();
    client.ready().await.unwrap();
    assert_eq!(client.connection(), Connection::Connected);

    // Awaited on a thread of its own, which wakes the moment the call
    // settles, whatever the runtime's workers are doing.
    let call = client.call("m", "f", vec![]);
    let caller = std::thread::spawn({
        let client = client.clone();
        move || {
            let outcome = futures::executor::block_on(call);
            (outcome, client.connection())
        }
    });
    host.sent.recv().await.expect("the call is sent");
    drop(host.send);
    let (outcome, seen) = tokio::task::spawn_blocking(move || caller.join().unwrap())
        .await
        .unwrap();
    assert_eq!(outcome.unwrap_err().code, ErrorCode::OutcomeUnknown);
    assert!(
        matches!(
            seen,
            Connection::Retrying {
                error: None,
                retry_in,
                attempt: 1,
                ..
            } if retry_in == Duration::from_millis(50)
        ),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_host_program_that_cannot_be_started_stops_the_client_with_why() {
    use cosystem_worker::transport::framed::SpawnConnector;
    let connector = SpawnConnector::new("/nonexistent/cosystem-host", Vec::<String>::new());
    let client = Client::new(connector, ClientConfig::default());
    assert!(client.ready().await.is_err());
    match client.connection() {
        Connection::Stopped {
            error: Some(TransportError::Setup(why)),
        } => assert!(why.contains("/nonexistent/cosystem-host"), "{why}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
}

/// A host that speaks once and then never reads: the link's sink takes the
/// first envelope and no more. The receiver is kept, so the sink waits for
/// room rather than fails.
struct NeverDrained(std::sync::Mutex<Vec<futures::channel::mpsc::Receiver<ClientMessage>>>);

impl Connector for NeverDrained {
    fn connect(&self) -> BoxFuture<'static, Result<ClientLink, TransportError>> {
        use futures::{SinkExt, StreamExt};
        // Room for one envelope: the client's SyncRequest.
        let (tx, rx) = futures::channel::mpsc::channel::<ClientMessage>(0);
        self.0.lock().unwrap().push(rx);
        let snapshot = host_says(host_message::Kind::Snapshot(Snapshot {
            version: 1,
            state_json: "{}".into(),
            sync_id: 1,
            reason: SnapshotReason::Sync as i32,
        }));
        let link = ClientLink {
            sink: Box::pin(tx.sink_map_err(|e| TransportError::Connection(e.to_string()))),
            stream: Box::pin(futures::stream::iter([snapshot]).chain(futures::stream::pending())),
        };
        async move { Ok(link) }.boxed()
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_reads_and_times_out_while_the_host_does_not_drain_the_link() {
    // The call cannot be sent; its deadline must still come due, rather than
    // wait with the driver for room that never comes.
    let client = Client::new(
        NeverDrained(std::sync::Mutex::default()),
        ClientConfig::default(),
    );
    // The SyncRequest filled the link: the host's answer is still read.
    tokio::time::timeout(Duration::from_secs(60), client.ready())
        .await
        .expect("the snapshot was read while the link had no room")
        .unwrap();
    let options = cosystem_worker::client::CallOptions {
        timeout: Some(Duration::from_secs(1)),
    };
    let call = client.call_with("m", "f", vec![], options);
    let outcome = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the call settled by its own deadline");
    assert_eq!(outcome.unwrap_err().code, ErrorCode::DeadlineExceeded);
}
