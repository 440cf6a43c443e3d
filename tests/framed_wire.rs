//! The framed transport's bytes, Unix socket files, and spawning hosts.

use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig, ClientEvent};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::framed::{self, SpawnConnector, UnixConnector};
use cosystem_worker::wire::{
    ClientMessage, Header, HostMessage, Snapshot, SnapshotReason, SyncRequest, client_message,
    host_message,
};
use prost::Message;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

fn host() -> Host {
    Host::builder(demo::app("wire-secret"))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .build()
}

fn socket_path(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "cosystem-framed-{}-{name}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

async fn within_a_minute(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test hung");
}

#[tokio::test]
async fn a_frame_is_a_big_endian_length_then_one_protobuf_envelope() {
    within_a_minute(async {
        let path = socket_path("bytes");
        let host = host();
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(framed::serve_unix_listener(host.clone(), listener));

        // A peer written from the spec alone, with no codec library.
        let mut raw = UnixStream::connect(&path).await.unwrap();
        let request = ClientMessage {
            header: Some(Header::v1("", "hand-rolled", "")),
            kind: Some(client_message::Kind::SyncRequest(SyncRequest {
                sync_id: 42,
                have_version: 0,
                reason: 1,
            })),
        }
        .encode_to_vec();
        let mut frame = (request.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&request);
        raw.write_all(&frame).await.unwrap();

        let mut prefix = [0u8; 4];
        raw.read_exact(&mut prefix).await.unwrap();
        let length = u32::from_be_bytes(prefix) as usize;
        let mut body = vec![0u8; length];
        raw.read_exact(&mut body).await.unwrap();
        let reply = HostMessage::decode(&body[..]).unwrap();
        assert_eq!(reply.header.as_ref().unwrap().target, "hand-rolled");
        match reply.kind {
            Some(host_message::Kind::Snapshot(s)) => {
                assert_eq!(s.sync_id, 42);
                assert_eq!(s.version, 1);
                assert_eq!(s.reason, SnapshotReason::Sync as i32);
                let state: serde_json::Value = serde_json::from_str(&s.state_json).unwrap();
                assert_eq!(state, host.view());
            }
            other => panic!("expected a snapshot, got {other:?}"),
        }
        let _ = std::fs::remove_file(&path);
    })
    .await
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_and_a_live_one_is_kept() {
    within_a_minute(async {
        let path = socket_path("stale");
        // A host that bound the path and went away leaves the file behind.
        drop(tokio::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());

        let host = host();
        tokio::spawn(framed::serve_unix(host.clone(), path.clone()));
        let client = Client::new(UnixConnector::new(path.clone()), ClientConfig::default());
        client.ready().await.unwrap();
        client
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap();

        // A second host on the same live path is refused, not swapped in.
        let error = framed::serve_unix(self::host(), path.clone())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(
            client
                .call("counter", "increase", vec![json!(1)])
                .await
                .unwrap(),
            json!(2)
        );
        let _ = std::fs::remove_file(&path);
    })
    .await
}

#[tokio::test]
async fn a_client_drops_empty_frames_without_a_notice() {
    within_a_minute(async {
        let path = socket_path("empty-frames");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let client = Client::new(UnixConnector::new(path.clone()), ClientConfig::default());
        let mut events = client.events();
        // A host written from the spec alone, that writes two empty frames
        // (FB2) before answering the client's sync request.
        let (mut raw, _) = listener.accept().await.unwrap();
        let mut prefix = [0u8; 4];
        raw.read_exact(&mut prefix).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
        raw.read_exact(&mut body).await.unwrap();
        let request = ClientMessage::decode(&body[..]).unwrap();
        let Some(client_message::Kind::SyncRequest(sync)) = request.kind else {
            panic!("expected a sync request, got {request:?}");
        };
        let source = request.header.unwrap().source;
        let reply = HostMessage {
            header: Some(Header::v1(
                "0123456789abcdef0123456789abcdef",
                "host",
                source,
            )),
            kind: Some(host_message::Kind::Snapshot(Snapshot {
                version: 1,
                state_json: r#"{"counter":{"count":0}}"#.into(),
                sync_id: sync.sync_id,
                reason: SnapshotReason::Sync as i32,
            })),
        }
        .encode_to_vec();
        let mut frames = vec![0u8; 8];
        frames.extend_from_slice(&(reply.len() as u32).to_be_bytes());
        frames.extend_from_slice(&reply);
        raw.write_all(&frames).await.unwrap();
        // Events arrive in order: none before the snapshot's is a notice.
        loop {
            match events.recv().await.unwrap() {
                ClientEvent::Ready { version, .. } => {
                    assert_eq!(version, 1);
                    break;
                }
                ClientEvent::Notice(notice) => panic!("an empty frame was reported: {notice:?}"),
                _ => {}
            }
        }
        let _ = std::fs::remove_file(&path);
    })
    .await
}

/// The reason of the first `Retrying` whose connection error mentions
/// `what`; a client that stops instead fails the test.
async fn retried_because(client: &Client, what: &str) -> String {
    use cosystem_worker::client::Connection;
    use cosystem_worker::transport::TransportError;
    let mut changes = client.connection_changes();
    loop {
        changes.changed().await.unwrap();
        let state = changes.borrow_and_update().clone();
        match state {
            Connection::Retrying {
                error: Some(TransportError::Connection(why)),
                ..
            } if why.contains(what) => return why,
            Connection::Stopped { .. } => panic!("stopped: {state:?}"),
            _ => {}
        }
    }
}

/// A host command that fails before it says a word (a bad option, a
/// program that is not a host) would fail the same way again: the client
/// stops, and says how the command exited.
#[tokio::test]
async fn a_host_command_that_fails_before_speaking_stops_the_client_with_its_status() {
    use cosystem_worker::client::Connection;
    use cosystem_worker::transport::TransportError;
    within_a_minute(async {
        let connector = SpawnConnector::new("sh", ["-c", "exit 7"]);
        let client = Client::new(connector, ClientConfig::default());
        let error = client.ready().await.unwrap_err();
        assert_eq!(error.code, cosystem_worker::wire::ErrorCode::Unavailable);
        assert!(error.message.contains("exited with status 7"), "{error}");
        match client.connection() {
            Connection::Stopped {
                error: Some(TransportError::Setup(why)),
            } => assert!(
                why.contains("host command sh exited with status 7 before speaking"),
                "{why}"
            ),
            other => panic!("expected a setup error, got {other:?}"),
        }
    })
    .await
}

/// Once a child of the connector has spoken, the command is known to work:
/// a later child that fails before speaking is respawned, not a reason to
/// stop.
#[tokio::test]
async fn a_command_that_once_worked_is_respawned_when_a_later_child_fails_early() {
    within_a_minute(async {
        let marker = std::env::temp_dir().join(format!(
            "cosystem-worker-spoke-{}-{}",
            std::process::id(),
            line!()
        ));
        let _ = std::fs::remove_file(&marker);
        // The first child is a real host that stops after a moment; every
        // later one exits 3 at once.
        let script = format!(
            "if [ -e '{m}' ]; then exit 3; fi; touch '{m}'; exec timeout 1 '{bin}' host --stdio",
            m = marker.display(),
            bin = env!("CARGO_BIN_EXE_cosystem-worker"),
        );
        let client = Client::new(
            SpawnConnector::new("sh", ["-c", script.as_str()]),
            ClientConfig::default(),
        );
        client.ready().await.expect("the first child is a host");
        let why = retried_because(&client, "exited with status 3").await;
        assert!(why.contains("host command sh"), "{why}");
        client.dispose();
        let _ = std::fs::remove_file(&marker);
    })
    .await
}

/// A host command killed by a signal may be back when respawned: the
/// client retries, and its connection state says how the child ended.
#[tokio::test]
async fn a_host_command_killed_by_a_signal_is_respawned_and_the_link_says_why() {
    within_a_minute(async {
        let connector = SpawnConnector::new("sh", ["-c", "kill -9 $$"]);
        let client = Client::new(connector, ClientConfig::default());
        let why = retried_because(&client, "").await;
        assert!(
            why.contains("host command sh was killed by signal 9"),
            "{why}"
        );
        client.dispose();
    })
    .await
}

#[tokio::test]
async fn a_program_that_cannot_be_spawned_stops_the_client() {
    within_a_minute(async {
        let connector = SpawnConnector::new("/nonexistent/cosystem-worker-missing", ["host"]);
        let client = Client::new(connector, ClientConfig::default());
        let error = client.ready().await.unwrap_err();
        assert_eq!(error.code, cosystem_worker::wire::ErrorCode::Unavailable);
    })
    .await
}
