//! What the host logs: `HostBuilder::build`'s warning about a published
//! section that names no module of the app (a typo that would otherwise
//! publish nothing, silently), and the per-call line, which quotes what a
//! client wrote without letting it forge lines.

use std::io::Write;
use std::sync::{Arc, Mutex};

use cosystem_worker::demo;
use cosystem_worker::host::{Host, HostConfig, HostCore, PeerOptions};
use cosystem_worker::wire::{Call, ClientMessage, Header, client_message};

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// A subscriber writing lines at `level` and above into this capture.
    fn subscriber(&self, level: tracing::Level) -> impl tracing::Subscriber + Send + Sync {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(level)
            .finish()
    }

    /// Everything written so far.
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// What `run` logs at debug level and above.
fn log_of(run: impl FnOnce()) -> String {
    let captured = Captured::default();
    tracing::subscriber::with_default(captured.subscriber(tracing::Level::DEBUG), run);
    captured.text()
}

/// The log lines written while `sections` are given to a demo host.
fn log_of_build(sections: &[&str]) -> String {
    log_of(|| {
        drop(
            Host::builder(demo::app("s"))
                .sections(sections.to_vec())
                // Built outside a runtime, where bookmarks cannot be sent
                // (a warning of its own, checked below).
                .bookmark_interval(None)
                .build(),
        );
    })
}

#[test]
fn a_section_that_names_no_module_is_warned_about() {
    let log = log_of_build(&["counter", "countr"]);
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("names no module"), "{log}");
    assert!(log.contains("countr"), "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");
}

#[test]
fn sections_that_all_name_modules_are_not_warned_about() {
    assert_eq!(log_of_build(&["counter", "todos"]), "");
}

#[test]
fn a_host_whose_initial_view_no_snapshot_can_carry_is_warned_about() {
    let limits = cosystem_worker::host::HostLimits {
        max_message_bytes: 4096,
        ..Default::default()
    };
    let big =
        cosystem_worker::app::JsonModule::new("big", serde_json::json!({"s": "b".repeat(5000)}));
    let log = log_of(|| {
        drop(
            Host::builder(cosystem_worker::app::App::new().with(big))
                .limits(limits)
                .bookmark_interval(None)
                .build(),
        )
    });
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("too large to send as one snapshot"), "{log}");
    assert!(
        log_of_build(&["counter"]).is_empty(),
        "a view that fits is not"
    );
}

#[test]
fn a_host_built_outside_a_runtime_warns_that_it_sends_no_bookmarks() {
    let log = log_of(|| drop(Host::builder(demo::app("s")).build()));
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("sends no bookmarks"), "{log}");
    let log = log_of(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _enter = rt.enter();
        drop(Host::builder(demo::app("s")).build());
    });
    assert!(!log.contains("bookmarks"), "{log}");
}

#[test]
fn a_call_s_log_line_escapes_what_the_client_wrote() {
    let mut host = HostCore::new(HostConfig::default(), demo::app("s"), "e1");
    let session = host
        .connect(PeerOptions {
            peer_id: "10.0.0.7:5000".into(),
            publications: true,
        })
        .unwrap();
    let forged = "\nWARN client refused: unauthenticated peer=10.0.0.1:1";
    let call = ClientMessage {
        header: Some(Header::v1("", format!("c1{forged}"), "")),
        kind: Some(client_message::Kind::Call(Call {
            call_id: 1,
            module: format!("counter{forged}"),
            method: "increase".into(),
            args_json: "[1]".into(),
        })),
    };
    let log = log_of(|| host.handle_message(session, call).unwrap());
    assert_eq!(log.lines().count(), 1, "one line per call: {log}");
    assert!(log.contains("call answered"), "{log}");
    assert!(log.contains(r"\nWARN client refused"), "escaped: {log}");
    assert!(log.contains("session=\"10.0.0.7:5000\""), "{log}");
}

/// A demo host served over gRPC on loopback: the host, its URL, the sender
/// that stops the server and the server's task.
async fn serve_demo_over_grpc() -> (
    Host,
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), cosystem_worker::transport::grpc::GrpcError>>,
) {
    use cosystem_worker::transport::grpc::GrpcServer;
    let host = Host::builder(demo::app("s")).build();
    let server = GrpcServer::builder(host.clone())
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    (host, url, stop, serving)
}

/// Once every session has ended, stops the server and returns the log's
/// "client disconnected" line.
async fn disconnect_line(
    host: &Host,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), cosystem_worker::transport::grpc::GrpcError>>,
    captured: &Captured,
) -> String {
    // A hang guard, not a speed check.
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while host.session_count() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a session never ended");
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    let log = captured.text();
    log.lines()
        .find(|l| l.contains("client disconnected"))
        .unwrap_or_else(|| panic!("no disconnect line: {log}"))
        .to_owned()
}

#[tokio::test]
async fn a_grpc_session_ended_by_the_host_is_logged_with_its_reason() {
    use cosystem_worker::wire::host_service_client::HostServiceClient;
    use cosystem_worker::wire::{SyncRequest, client_message::Kind};
    let captured = Captured::default();
    // A current-thread test: the server's tasks log on this thread.
    let _logging = tracing::subscriber::set_default(captured.subscriber(tracing::Level::INFO));
    let (host, url, stop, serving) = serve_demo_over_grpc().await;

    // One envelope over the host's 4 MiB limit ends the session.
    let mut raw = HostServiceClient::connect(url)
        .await
        .unwrap()
        .max_encoding_message_size(usize::MAX);
    let oversized = ClientMessage {
        header: Some(Header::v1("", "x".repeat(5 << 20), "")),
        kind: Some(Kind::SyncRequest(SyncRequest::default())),
    };
    let mut answers = raw
        .session(futures::stream::iter([oversized]))
        .await
        .unwrap()
        .into_inner();
    let ended = loop {
        match answers.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert!(ended.is_err(), "the session ended without a status");
    drop(answers);
    let disconnect = disconnect_line(&host, stop, serving, &captured).await;
    assert!(
        disconnect.contains("reason=\"ResourceExhausted"),
        "{disconnect}"
    );
}

#[tokio::test]
async fn a_grpc_client_that_goes_away_without_closing_its_stream_is_logged_as_such() {
    use cosystem_worker::wire::host_service_client::HostServiceClient;
    use cosystem_worker::wire::{SyncRequest, client_message::Kind};
    use futures::StreamExt;
    let captured = Captured::default();
    let _logging = tracing::subscriber::set_default(captured.subscriber(tracing::Level::INFO));
    let (host, url, stop, serving) = serve_demo_over_grpc().await;

    // A client on a runtime of its own, with a request stream that never
    // ends: the runtime is dropped once the snapshot came, which closes the
    // socket mid-stream, as when a client process exits.
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let sync = ClientMessage {
                header: Some(Header::v1("", "leaver", "")),
                kind: Some(Kind::SyncRequest(SyncRequest {
                    sync_id: 1,
                    ..SyncRequest::default()
                })),
            };
            let mut raw = HostServiceClient::connect(url).await.unwrap();
            let mut answers = raw
                .session(futures::stream::iter([sync]).chain(futures::stream::pending()))
                .await
                .unwrap()
                .into_inner();
            assert!(answers.message().await.unwrap().is_some(), "no snapshot");
            // Kept alive until the runtime goes: nothing closes the stream.
            std::mem::forget(answers);
            std::mem::forget(raw);
        });
    });
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while !client.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the client's thread never finished");
    client.join().unwrap();
    let disconnect = disconnect_line(&host, stop, serving, &captured).await;
    assert!(
        disconnect.contains("went away without closing its stream"),
        "{disconnect}"
    );
}

#[tokio::test]
async fn a_peer_sending_garbage_again_and_again_cannot_flood_the_log() {
    use cosystem_worker::transport::framed::{self, FramedConfig};
    use tokio::io::AsyncWriteExt;
    const SESSIONS: usize = 30;
    let captured = Captured::default();
    // A current-thread test: the sessions log on this thread.
    let _logging = tracing::subscriber::set_default(captured.subscriber(tracing::Level::INFO));
    let host = Host::builder(demo::app("s")).build();
    for n in 0..SESSIONS {
        let (mut peer, io) = tokio::io::duplex(64);
        let served = tokio::spawn(framed::serve_stream(
            host.clone(),
            io,
            format!("garbage-{n}"),
            FramedConfig::default(),
        ));
        // A frame of three bytes that are no envelope.
        peer.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        assert!(served.await.unwrap().is_err());
    }
    let log = captured.text();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("closing session"))
        .count();
    // The first is logged, naming the peer's mistake; the rest are counted
    // into a later line rather than each written (one a second).
    assert!(warnings >= 1, "{log}");
    assert!(warnings < SESSIONS, "{log}");
}
