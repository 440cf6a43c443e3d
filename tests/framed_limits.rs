//! Frame size limits, broken input and connections that never start on
//! framed byte streams: a typed error for the offending connection, or its
//! closing after the first-frame deadline, and the host keeps serving the
//! others.

mod common;

use std::time::Duration;

use common::{closed_within, frame};

use cosystem_worker::client::{Client, ClientConfig};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, HostLimits, SyncMode};
use cosystem_worker::transport::framed::{self, FramedConfig, TcpConnector};
use cosystem_worker::transport::{Connector, TransportError};
use cosystem_worker::wire::{
    Call, CallResult, ClientMessage, Header, HostMessage, SyncRequest, call_result, client_message,
    host_message,
};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn host(max_message_bytes: usize) -> Host {
    Host::builder(demo::app("framed-secret"))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .limits(HostLimits {
            max_message_bytes,
            ..HostLimits::default()
        })
        .build()
}

async fn serve(host: &Host) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(framed::serve_tcp(host.clone(), listener));
    address
}

fn sync_request() -> ClientMessage {
    ClientMessage {
        header: Some(Header::v1("", "raw", "")),
        kind: Some(client_message::Kind::SyncRequest(SyncRequest {
            sync_id: 7,
            have_version: 0,
            reason: 1,
        })),
    }
}

/// Reads until the host closes the connection; returns how many bytes came.
async fn read_to_close(stream: &mut TcpStream) -> usize {
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink).await.unwrap_or(0)
}

async fn within_a_minute(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test hung");
}

#[tokio::test]
async fn an_oversize_frame_closes_only_its_connection() {
    within_a_minute(async {
        let host = host(1024);
        let address = serve(&host).await;
        let client = Client::new(TcpConnector::new(address.clone()), ClientConfig::default());
        client.ready().await.unwrap();

        // A length prefix one past the host's limit: the host refuses the
        // frame without reading it and closes that connection.
        let mut rogue = TcpStream::connect(&address).await.unwrap();
        rogue.write_all(&1025u32.to_be_bytes()).await.unwrap();
        rogue.write_all(&[0u8; 64]).await.unwrap();
        assert_eq!(read_to_close(&mut rogue).await, 0);

        // Everyone else is still served.
        let value = client
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap();
        assert_eq!(value, json!(1));
        let another = Client::new(TcpConnector::new(address), ClientConfig::default());
        another.ready().await.unwrap();
        assert_eq!(another.version(), Some(2));
    })
    .await
}

#[tokio::test]
async fn undecodable_bytes_close_only_their_connection() {
    within_a_minute(async {
        let host = host(1024);
        let address = serve(&host).await;
        let client = Client::new(TcpConnector::new(address.clone()), ClientConfig::default());
        client.ready().await.unwrap();

        let mut rogue = TcpStream::connect(&address).await.unwrap();
        let garbage = [0xffu8; 8];
        rogue.write_all(&8u32.to_be_bytes()).await.unwrap();
        rogue.write_all(&garbage).await.unwrap();
        assert_eq!(read_to_close(&mut rogue).await, 0);

        let value = client
            .call("counter", "increase", vec![json!(2)])
            .await
            .unwrap();
        assert_eq!(value, json!(2));
    })
    .await
}

#[tokio::test]
async fn a_host_frame_over_the_client_limit_is_frame_too_large() {
    within_a_minute(async {
        let host = host(1024);
        host.invoke("todos", "add", &[json!("x".repeat(200))])
            .unwrap();
        let address = serve(&host).await;
        let connector = TcpConnector::new(address).with_config(FramedConfig {
            max_frame_bytes: 64,
        });
        let mut link = connector.connect().await.unwrap();
        link.sink.send(sync_request()).await.unwrap();
        match link.stream.next().await {
            Some(Err(TransportError::FrameTooLarge { size, limit })) => {
                assert_eq!(limit, 64);
                assert!(size > 200, "reported size {size}");
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    })
    .await
}

#[tokio::test]
async fn a_client_frame_over_the_limit_is_refused_before_it_is_sent() {
    within_a_minute(async {
        let host = host(1024);
        let address = serve(&host).await;
        let connector = TcpConnector::new(address).with_config(FramedConfig {
            max_frame_bytes: 128,
        });
        let mut link = connector.connect().await.unwrap();
        let call = ClientMessage {
            header: Some(Header::v1("", "big", "")),
            kind: Some(client_message::Kind::Call(Call {
                call_id: 1,
                module: "todos".to_owned(),
                method: "add".to_owned(),
                args_json: format!("[\"{}\"]", "y".repeat(500)),
            })),
        };
        match link.sink.send(call).await {
            Err(TransportError::FrameTooLarge { size, limit }) => {
                assert_eq!(limit, 128);
                assert!(size > 500, "reported size {size}");
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert_eq!(host.version(), 1);
    })
    .await
}

#[tokio::test]
async fn the_host_stream_reports_an_oversize_frame_with_its_size() {
    let (host_io, mut peer) = tokio::io::duplex(1024);
    let (reader, writer) = tokio::io::split(host_io);
    let mut link = framed::host_link(
        reader,
        writer,
        "duplex",
        FramedConfig {
            max_frame_bytes: 100,
        },
    );
    peer.write_all(&5000u32.to_be_bytes()).await.unwrap();
    match link.stream.next().await {
        Some(Err(TransportError::FrameTooLarge { size, limit })) => {
            assert_eq!((size, limit), (5000, 100))
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn the_default_limit_is_the_host_max_message_size() {
    assert_eq!(
        FramedConfig::default().max_frame_bytes,
        HostLimits::default().max_message_bytes
    );
    assert_eq!(FramedConfig::for_host(&host(2048)).max_frame_bytes, 2048);
    // And a frame of exactly the host's limit is read, not refused. (`todos`
    // is private here: published, a 4 KiB item would make the view too
    // large for one snapshot, and the call would be refused for that.)
    let host = Host::builder(demo::app("framed-secret"))
        .sections(["counter"])
        .limits(HostLimits {
            max_message_bytes: 4096,
            ..HostLimits::default()
        })
        .build();
    let address = serve(&host).await;
    let mut raw = TcpStream::connect(&address).await.unwrap();
    let mut call = ClientMessage {
        header: Some(Header::v1("", "raw", "")),
        kind: Some(client_message::Kind::Call(Call {
            call_id: 1,
            module: "todos".to_owned(),
            method: "add".to_owned(),
            args_json: String::new(),
        })),
    };
    let base = prost::Message::encoded_len(&call);
    // Pad the text so the whole envelope is exactly 4096 bytes long.
    let mut text_len = 4096 - base - 4;
    loop {
        if let Some(client_message::Kind::Call(c)) = &mut call.kind {
            c.args_json = format!("[\"{}\"]", "z".repeat(text_len));
        }
        let len = prost::Message::encoded_len(&call);
        if len == 4096 {
            break;
        }
        text_len = text_len + 4096 - len;
    }
    let bytes = prost::Message::encode_to_vec(&call);
    raw.write_all(&(bytes.len() as u32).to_be_bytes())
        .await
        .unwrap();
    raw.write_all(&bytes).await.unwrap();
    // The call ran: a result frame comes back.
    let mut prefix = [0u8; 4];
    raw.read_exact(&mut prefix).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
    raw.read_exact(&mut body).await.unwrap();
    let reply: cosystem_worker::wire::HostMessage = prost::Message::decode(&body[..]).unwrap();
    assert!(
        matches!(
            reply.kind,
            Some(host_message::Kind::Result(CallResult {
                call_id: 1,
                outcome: Some(call_result::Outcome::ValueJson(_)),
                ..
            }))
        ),
        "unexpected reply {reply:?}"
    );
    assert_eq!(
        host.module_state("todos").unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Serves one framed session over an in-memory pipe; the test's end of it
/// and the session's outcome.
fn serve_pipe(
    host: &Host,
    peer_id: &str,
) -> (
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<Result<(), cosystem_worker::host::InputError>>,
) {
    let (peer, io) = tokio::io::duplex(64);
    let served = tokio::spawn(framed::serve_stream(
        host.clone(),
        io,
        peer_id.to_owned(),
        FramedConfig::default(),
    ));
    (peer, served)
}

#[tokio::test]
async fn a_session_ended_by_bad_input_reports_what_was_wrong() {
    use cosystem_worker::host::InputError;
    within_a_minute(async {
        let host = host(1 << 20);
        // A length prefix far over the limit.
        let (mut peer, served) = serve_pipe(&host, "big");
        peer.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(
            served.await.unwrap(),
            Err(InputError::MessageTooLarge {
                size: 0xffff_ffff,
                ..
            })
        ));
        // A frame that is not a ClientMessage.
        let (mut peer, served) = serve_pipe(&host, "garbage");
        peer.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        assert!(matches!(
            served.await.unwrap(),
            Err(InputError::Malformed(_))
        ));
        // A peer that just goes away ends its session plainly.
        let (peer, served) = serve_pipe(&host, "gone");
        drop(peer);
        assert_eq!(served.await.unwrap(), Ok(()));
        // After shutdown no session opens, and the error says why.
        host.shutdown();
        let (_peer, io) = tokio::io::duplex(64);
        let served = framed::serve_stream(host.clone(), io, "late", FramedConfig::default());
        assert_eq!(served.await, Err(InputError::ShuttingDown));
    })
    .await;
}

/// The first-envelope deadline of [`host_for`]'s hosts: shorter than the
/// default 10 s, so that the tests show the host's own limit is the one
/// its listeners keep.
const DEADLINE: Duration = Duration::from_secs(2);

/// A host that serves at most `max_clients` sessions, with a first-envelope
/// deadline of [`DEADLINE`].
fn host_for(max_clients: usize) -> Host {
    Host::builder(demo::app("framed-secret"))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .limits(HostLimits {
            max_clients,
            first_envelope_timeout: DEADLINE,
            ..HostLimits::default()
        })
        .build()
}

/// The next host envelope on `stream` that is not a bookmark or other
/// publication: a sync reply or a result.
async fn next_reply(stream: &mut TcpStream) -> HostMessage {
    loop {
        let mut prefix = [0u8; 4];
        stream.read_exact(&mut prefix).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
        stream.read_exact(&mut body).await.unwrap();
        let message: HostMessage = prost::Message::decode(&body[..]).unwrap();
        match &message.kind {
            Some(host_message::Kind::Snapshot(s)) if s.sync_id != 0 => return message,
            Some(host_message::Kind::Result(_)) => return message,
            _ => {}
        }
    }
}

/// Whether the host has closed `stream`, without waiting: no bytes and no
/// end of stream waiting means it is still open.
fn is_open(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(start_paused = true)]
async fn connections_that_send_no_frame_do_not_lock_out_a_real_client() {
    within_a_minute(async {
        // Each of these would have held one of the two slots for ever.
        let host = host_for(2);
        let address = serve(&host).await;
        let silent = TcpStream::connect(&address).await.unwrap();
        let mut half_prefix = TcpStream::connect(&address).await.unwrap();
        half_prefix.write_all(&[0, 0]).await.unwrap();
        let mut half_frame = TcpStream::connect(&address).await.unwrap();
        half_frame
            .write_all(&[0, 0, 0, 100, 1, 2, 3])
            .await
            .unwrap();
        // Empty frames are valid (FB2) but carry no envelope.
        let mut empty_frames = TcpStream::connect(&address).await.unwrap();
        empty_frames.write_all(&[0; 12]).await.unwrap();

        let client = Client::new(TcpConnector::new(address), ClientConfig::default());
        client.ready().await.unwrap();
        // Only the client holds a session, while the others are still open.
        assert_eq!(host.session_count(), 1);
        for stream in [&silent, &half_prefix, &half_frame, &empty_frames] {
            assert!(is_open(stream), "a waiting connection was closed early");
        }
        let value = client
            .call("counter", "increase", vec![json!(1)])
            .await
            .unwrap();
        assert_eq!(value, json!(1));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_connection_without_a_complete_first_frame_is_closed_after_the_deadline() {
    let host = host_for(10);
    let address = serve(&host).await;
    let mut silent = TcpStream::connect(&address).await.unwrap();
    let mut half_prefix = TcpStream::connect(&address).await.unwrap();
    half_prefix.write_all(&[0, 0, 0]).await.unwrap();
    // A body trickled in, but never finished before the deadline.
    let mut trickle = TcpStream::connect(&address).await.unwrap();
    trickle.write_all(&[0, 0, 0, 100]).await.unwrap();
    // Empty frames, one every quarter deadline: complete frames, but none
    // carries an envelope, so none opens a session.
    let mut empty_frames = TcpStream::connect(&address).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(DEADLINE / 4).await;
        trickle.write_all(&[0]).await.unwrap();
        empty_frames.write_all(&[0; 4]).await.unwrap();
    }
    // The clock is paused: the guard is virtual time, three deadlines long.
    for (name, stream) in [
        ("silent", &mut silent),
        ("half a prefix", &mut half_prefix),
        ("trickled", &mut trickle),
        ("empty frames", &mut empty_frames),
    ] {
        assert!(
            closed_within(stream, DEADLINE * 3).await,
            "the {name} connection was still open"
        );
    }
    assert_eq!(host.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_silent_unix_connection_is_closed_after_the_deadline() {
    let path = std::env::temp_dir().join(format!(
        "cosystem-framed-limits-{}-silent.sock",
        std::process::id()
    ));
    let host = host_for(10);
    let listener = framed::bind_unix(&path).await.unwrap();
    tokio::spawn(framed::serve_unix_listener(host.clone(), listener));
    let mut silent = tokio::net::UnixStream::connect(&path).await.unwrap();
    assert!(
        closed_within(&mut silent, DEADLINE * 3).await,
        "the silent connection was still open"
    );
    assert_eq!(host.session_count(), 0);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(start_paused = true)]
async fn a_connection_whose_first_frame_arrives_in_time_is_served_with_no_later_deadline() {
    let host = host_for(10);
    let address = serve(&host).await;
    let mut raw = TcpStream::connect(&address).await.unwrap();
    // Just inside the deadline.
    tokio::time::sleep(DEADLINE - Duration::from_secs(1)).await;
    assert!(is_open(&raw), "closed before the deadline");
    raw.write_all(&frame(&sync_request())).await.unwrap();
    let reply = next_reply(&mut raw).await;
    assert!(
        matches!(reply.kind, Some(host_message::Kind::Snapshot(_))),
        "{reply:?}"
    );
    assert_eq!(host.session_count(), 1);

    // The deadline was for the first frame only: the session may then be
    // idle, or take its time over a frame, as long as it likes.
    tokio::time::sleep(DEADLINE * 3).await;
    let call = frame(&ClientMessage {
        header: Some(Header::v1("", "raw", "")),
        kind: Some(client_message::Kind::Call(Call {
            call_id: 1,
            module: "counter".to_owned(),
            method: "increase".to_owned(),
            args_json: "[5]".to_owned(),
        })),
    });
    let (start, rest) = call.split_at(6);
    raw.write_all(start).await.unwrap();
    tokio::time::sleep(DEADLINE * 3).await;
    raw.write_all(rest).await.unwrap();
    let reply = next_reply(&mut raw).await;
    assert!(
        matches!(
            &reply.kind,
            Some(host_message::Kind::Result(CallResult {
                call_id: 1,
                outcome: Some(call_result::Outcome::ValueJson(v)),
                ..
            })) if v == "5"
        ),
        "{reply:?}"
    );
    assert_eq!(host.session_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_past_the_waiting_bound_closes_the_one_that_waited_longest() {
    use framed::MAX_WAITING;
    let host = host_for(10);
    let address = serve(&host).await;
    let mut silent = Vec::new();
    for _ in 0..MAX_WAITING {
        silent.push(TcpStream::connect(&address).await.unwrap());
    }
    // Every place is taken by a connection that never sends a frame; a
    // client arriving now is still served at once, long before any of them
    // reaches its deadline, and the oldest of them is closed to make room.
    let client = Client::new(TcpConnector::new(address), ClientConfig::default());
    tokio::time::timeout(DEADLINE / 10, client.ready())
        .await
        .expect("served without waiting for the silent connections' deadline")
        .expect("served");
    assert!(
        closed_within(&mut silent[0], DEADLINE / 10).await,
        "the connection that waited longest was kept"
    );
    assert!(
        !closed_within(&mut silent[MAX_WAITING - 1], DEADLINE / 10).await,
        "a newer waiting connection was closed"
    );
    drop(silent);
}

/// Shutting the host down ends the framed listeners serving it.
#[tokio::test]
async fn a_host_shut_down_by_the_application_stops_its_framed_listener() {
    let host = Host::builder(demo::app("s")).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let serving = tokio::spawn(framed::serve_tcp(host.clone(), listener));
    host.shutdown();
    // A watchdog, not a timing assertion: before, the listener ran on.
    let served = tokio::time::timeout(std::time::Duration::from_secs(60), serving)
        .await
        .expect("serve_tcp returned once the host shut down");
    served
        .expect("the listener task")
        .expect("serve_tcp ended cleanly");
}

/// A framed client pointed at a gRPC host stops at once, naming HTTP/2
/// (spec FB9), whatever the length of its first frame: a tonic host reads
/// only the 24 bytes of the HTTP/2 preface and hangs up, so a longer first
/// frame is left unread and the hang-up arrives as a reset, not an end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_client_at_a_grpc_host_stops_naming_http2_whatever_its_first_frame() {
    use cosystem_worker::transport::grpc::GrpcServer;
    let server = GrpcServer::builder(host(HostLimits::default().max_message_bytes))
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let address = server.local_addr().to_string();
    tokio::spawn(server.serve(std::future::pending()));
    for peer_id in ["c", "client", "a-client-whose-id-makes-a-long-first-frame"] {
        let client = Client::new(
            TcpConnector::new(address.clone()),
            ClientConfig {
                peer_id: peer_id.into(),
                ..ClientConfig::default()
            },
        );
        // A watchdog, not a timing assertion: a client that took the
        // hang-up for a lost connection would retry until it.
        let error = tokio::time::timeout(Duration::from_secs(60), client.ready())
            .await
            .expect("the client stopped")
            .expect_err("a gRPC host is no framed host");
        assert!(
            error.message.contains("as a gRPC host does"),
            "{peer_id}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_while_a_framed_host_is_full_wait_and_run_once_a_slot_frees() {
    use cosystem_worker::client::Reconnect;
    // A full host closes a connection after its first frame (FB6). A call
    // sent behind the SyncRequest would settle outcome-unknown though the
    // host ran nothing: it must wait for the host to speak, stay queued
    // while refused, and run once the slot frees.
    let host = host_for(1);
    let address = serve(&host).await;
    let first = Client::new(TcpConnector::new(address.clone()), ClientConfig::default());
    first.ready().await.unwrap();
    let second = Client::with_reconnect(
        TcpConnector::new(address),
        ClientConfig::default(),
        Reconnect {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            ..Reconnect::default()
        },
    );
    // No envelope says "full": the host closes the connection.
    common::a_call_waits_for_a_free_slot(&host, first, second, 3, |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_large_frames_cannot_hold_more_than_the_listeners_budget() {
    use cosystem_worker::transport::framed::PARTIAL_FRAMES_PER_LISTENER;
    // Each peer opens a session, then sends most of a frame of nearly the
    // limit and stalls. Without a budget each would hold a frame's worth of
    // the host's memory for as long as it liked, and together without end.
    const LIMIT: usize = 1 << 20;
    const BODY: usize = LIMIT - 8 * 1024;
    let host = host(LIMIT);
    let address = serve(&host).await;
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut peers = Vec::new();
    for _ in 0..PARTIAL_FRAMES_PER_LISTENER + 2 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let closed_tx = closed_tx.clone();
        peers.push(tokio::spawn(async move {
            let mut bytes = frame(&sync_request());
            bytes.extend_from_slice(&((LIMIT - 100) as u32).to_be_bytes());
            bytes.resize(bytes.len() + BODY, 0x0a);
            // A peer closed for the budget may see its write fail.
            let _ = stream.write_all(&bytes).await;
            let mut sink = [0u8; 4096];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            let _ = closed_tx.send(());
        }));
    }
    // Some of them are closed: the budget holds 64 such frames, not 66.
    tokio::time::timeout(Duration::from_secs(60), closed_rx.recv())
        .await
        .expect("no stalled peer was closed");
    // The host serves everyone else as before.
    let client = Client::new(TcpConnector::new(address), ClientConfig::default());
    let value = client
        .call("counter", "increase", vec![json!(1)])
        .await
        .unwrap();
    assert_eq!(value, json!(1));
    for peer in peers {
        peer.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_session_cannot_take_the_sessions_frame_budget() {
    use cosystem_worker::transport::framed::PARTIAL_FRAMES_PER_LISTENER;
    // Connecting needs nothing: if connections still waiting for their
    // first frame counted against the sessions' budget, enough of them
    // stalling on a large first frame would get every session that sends
    // a large frame closed.
    const LIMIT: usize = 1 << 20;
    let host = host(LIMIT);
    let address = serve(&host).await;
    let mut honest = TcpStream::connect(&address).await.unwrap();
    honest.write_all(&frame(&sync_request())).await.unwrap();
    assert!(matches!(
        next_reply(&mut honest).await.kind,
        Some(host_message::Kind::Snapshot(_))
    ));
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stalled = Vec::new();
    for _ in 0..PARTIAL_FRAMES_PER_LISTENER + 2 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let mut bytes = ((LIMIT - 100) as u32).to_be_bytes().to_vec();
        bytes.resize(bytes.len() + LIMIT - 1024, 0x0a);
        let closed_tx = closed_tx.clone();
        stalled.push(tokio::spawn(async move {
            let _ = stream.write_all(&bytes).await;
            // Held open: closed by the host or at the test's end.
            let _ = read_to_close(&mut stream).await;
            let _ = closed_tx.send(());
        }));
    }
    // Two closed means every budget they count against is full: with one
    // budget for all, 64 of these would fill the sessions' room too.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(60), closed_rx.recv())
            .await
            .expect("no stalled connection was closed");
    }
    // A large frame from the session is still read: a call with 200 KiB
    // of arguments the method refuses.
    let big = ClientMessage {
        header: Some(Header::v1("", "raw", "")),
        kind: Some(client_message::Kind::Call(Call {
            call_id: 1,
            module: "counter".into(),
            method: "increase".into(),
            args_json: format!("[\"{}\"]", "x".repeat(200 * 1024)),
        })),
    };
    honest.write_all(&frame(&big)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(60), next_reply(&mut honest))
        .await
        .expect("no answer");
    assert!(
        matches!(
            &answer.kind,
            Some(host_message::Kind::Result(CallResult {
                call_id: 1,
                outcome: Some(call_result::Outcome::Error(_)),
                ..
            }))
        ),
        "{answer:?}"
    );
    assert_eq!(host.session_count(), 1);
    for task in stalled {
        task.abort();
    }
}
