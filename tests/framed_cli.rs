//! The built binary over framed byte streams: `host --stdio` as a child of
//! the Rust client, `host --listen unix:…` and `tcp://…` answering the
//! client binary, and `client --spawn`.

mod common;

use common::{BIN, HostProcess, cli, cli_client, cli_client_with_env, json_line};

use std::process::Stdio;
use std::time::Duration;

use cosystem_worker::client::{Client, ClientConfig};
use cosystem_worker::transport::framed::SpawnConnector;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A hang guard, not a speed check.
const GUARD: Duration = Duration::from_secs(60);

fn socket_path(name: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("cosystem-cli-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test]
async fn the_rust_client_drives_a_stdio_host_it_spawned() {
    tokio::time::timeout(GUARD, async {
        let connector = SpawnConnector::new(BIN, ["host", "--stdio", "--sync", "snapshot"])
            .env("RUST_LOG", "off");
        let client = Client::new(connector, ClientConfig::default());
        client.ready().await.unwrap();
        assert_eq!(
            client.state(),
            Some(json!({"counter": {"count": 0}, "todos": {"items": []}}))
        );
        let mut watch = client.watch(|s| s["todos"]["items"].as_array().map_or(0, Vec::len));
        client
            .call("todos", "add_many", vec![json!(["a", "b"])])
            .await
            .unwrap();
        assert_eq!(watch.changed().await, Some(2));
        let error = client.call("secret", "rotate", vec![json!(1)]).await;
        assert_eq!(
            error.unwrap_err().code,
            cosystem_worker::wire::ErrorCode::InvalidArgument
        );
        client.dispose();
    })
    .await
    .expect("hung");
}

#[tokio::test]
async fn a_stdio_host_exits_cleanly_when_its_stdin_closes() {
    let mut child = Command::new(BIN)
        .args(["host", "--stdio"])
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.shutdown().await.unwrap();
    drop(stdin);
    let status = tokio::time::timeout(GUARD, child.wait())
        .await
        .expect("the host kept running after stdin closed")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// A session the host ends for an error is the stdio host's failure: its
/// parent sees a non-zero status and the reason, not a clean stop.
#[tokio::test]
async fn a_stdio_host_whose_session_ends_with_an_error_exits_1() {
    // A length prefix of 4 GiB - 1: over the 4 MiB frame limit.
    let text = stdio_host_fed(&[0xff; 4]).await;
    assert!(
        text.contains("error: the stdio session ended with an error: message of 4294967295 bytes exceeds the limit"),
        "{text}"
    );
}

/// Bytes of another protocol end a stdio session as an error too, named
/// (spec FB9), not as stdin closing.
#[tokio::test]
async fn a_stdio_host_fed_http_exits_1_naming_the_protocol() {
    let text = stdio_host_fed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        text.contains("error: the stdio session ended with an error: malformed")
            && text.contains("but HTTP/1"),
        "{text}"
    );
}

/// The stderr of a stdio host fed `bytes` and then the end of its stdin,
/// once it has exited 1.
async fn stdio_host_fed(bytes: &[u8]) -> String {
    let mut child = Command::new(BIN)
        .args(["host", "--stdio"])
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(bytes).await.unwrap();
    stdin.shutdown().await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(GUARD, child.wait_with_output())
        .await
        .expect("the host kept running")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_binary_serves_a_unix_socket_and_removes_it_on_sigterm() {
    let path = socket_path("listen");
    let endpoint = format!("unix:{}", path.display());
    let mut host = HostProcess::spawn(&["--listen", &endpoint]).await;
    assert_eq!(host.endpoint().await, endpoint);

    let first =
        json_line(&cli_client(&["--connect", &endpoint, "call", "counter", "increase", "2"]).await);
    assert_eq!(first, json!({"value": 2, "version": 2}));
    host.log_until("client connected").await;
    host.log_until("client disconnected").await;
    let state = json_line(&cli_client(&["--connect", &endpoint, "state"]).await);
    assert_eq!(state["version"], json!(2));
    assert_eq!(state["state"]["counter"], json!({"count": 2}));

    assert!(host.terminate().await.success());
    assert!(!path.exists(), "the socket file was left behind");
}

/// A framed host at its client limit closes a new client's connection
/// without a word (no envelope says "full", spec FB6), so it says why in
/// its own log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_framed_host_warns_that_it_refused_a_client() {
    use cosystem_worker::wire::{ClientMessage, Header, client_message};
    use tokio::io::AsyncReadExt;

    let mut host =
        HostProcess::spawn(&["--listen", "tcp://127.0.0.1:0", "--max-clients", "1"]).await;
    let endpoint = host.endpoint().await;
    let address = endpoint.trim_start_matches("tcp://").to_owned();
    let frame = common::frame(&ClientMessage {
        header: Some(Header::v1("", "raw", "")),
        kind: Some(client_message::Kind::SyncRequest(common::sync_request(
            1, 0,
        ))),
    });

    let mut holder = tokio::net::TcpStream::connect(&address).await.unwrap();
    holder.write_all(&frame).await.unwrap();
    host.log_until("client connected").await;
    let mut refused = tokio::net::TcpStream::connect(&address).await.unwrap();
    refused.write_all(&frame).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(GUARD, refused.read_to_end(&mut rest))
        .await
        .expect("the refused connection was left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?} {rest:?}");
    let line = host.log_until("refusing a client").await;
    assert!(
        line.contains("at its limit of clients") && line.contains("limit=1"),
        "{line}"
    );
    drop(holder);
    assert!(host.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_binary_serves_tcp_frames() {
    let mut host =
        HostProcess::spawn(&["--listen", "tcp://127.0.0.1:0", "--sync", "snapshot"]).await;
    let endpoint = host.endpoint().await;
    assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{endpoint}");
    assert!(!endpoint.ends_with(":0"), "{endpoint}");

    let added =
        json_line(&cli_client(&["--connect", &endpoint, "call", "todos", "add", "\"milk\""]).await);
    assert_eq!(added["version"], json!(2));
    let state = json_line(&cli_client(&["--connect", &endpoint, "state"]).await);
    assert_eq!(state["state"]["todos"]["items"][0]["text"], json!("milk"));
    let failed = cli_client(&["--connect", &endpoint, "call", "counter", "fail", "\"no\""]).await;
    assert_eq!(failed.status.code(), Some(1));
    assert!(host.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_binary_spawns_its_own_stdio_host() {
    let command = format!("{BIN} host --stdio --sync patch");
    let output = cli_client(&["--spawn", &command, "call", "counter", "increase", "5"]).await;
    assert_eq!(json_line(&output), json!({"value": 5, "version": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_command_that_cannot_start_exits_3() {
    let output = cli_client(&[
        "--spawn",
        "/nonexistent/cosystem-worker host --stdio",
        "state",
    ])
    .await;
    assert_eq!(output.status.code(), Some(3));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("cannot start /nonexistent/cosystem-worker: "),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

/// A spawned host that refuses its options exits 2 before speaking; the
/// client does not respawn it until the timeout but stops at once, naming
/// the exit status, with the exit code for a host it cannot reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_host_that_exits_at_once_is_reported_with_its_exit_status() {
    let command = format!("{BIN} host --stdio --sync bogus");
    let output = cli_client(&["--timeout", "30", "--spawn", &command, "state"]).await;
    assert_eq!(output.status.code(), Some(3));
    let text = String::from_utf8_lossy(&output.stderr);
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: unavailable: cannot connect as configured: host command "),
        "{text}"
    );
    assert!(
        last.ends_with("exited with status 2 before speaking the protocol"),
        "{text}"
    );
    // The child's own complaint reaches the terminal too (stderr is
    // inherited), once: it was not respawned.
    assert_eq!(text.matches("invalid value 'bogus'").count(), 1, "{text}");
}

/// A spawned host killed by a signal is respawned until the timeout; the
/// final error then says how the last one ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_host_that_keeps_dying_is_named_in_the_timeout_error() {
    let output = cli_client(&["--timeout", "3", "--spawn", "sh -c 'kill -9 $$'", "state"]).await;
    assert_eq!(output.status.code(), Some(3));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("no connection to --spawn sh -c"), "{text}");
    assert!(
        text.contains("(connection failed: host command sh was killed by signal 9)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_framed_host_fails_after_the_timeout_with_exit_3() {
    let path = socket_path("nobody");
    let endpoint = format!("unix:{}", path.display());
    let output = cli_client(&["--connect", &endpoint, "--timeout", "0.5", "state"]).await;
    assert_eq!(output.status.code(), Some(3));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains(&endpoint), "{text}");
}

/// A shell that exports `COSYSTEM_WORKER_LISTEN` for its gRPC hosts passes
/// it on to a spawned `host --stdio`, which must serve stdio regardless: a
/// flag wins over a variable. A `--listen` flag beside `--stdio` still asks
/// for two endpoints and is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_wins_over_the_listen_variable_but_not_over_the_listen_flag() {
    let command = format!("{BIN} host --stdio");
    let output = cli_client_with_env(
        &[("COSYSTEM_WORKER_LISTEN", "127.0.0.1:1")],
        &["--spawn", &command, "call", "counter", "increase", "1"],
    )
    .await;
    assert_eq!(json_line(&output), json!({"value": 1, "version": 2}));

    let output = cli(&["host", "--stdio", "--listen", "127.0.0.1:0"]).await;
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("'--stdio' cannot be used with '--listen"),
        "{text}"
    );
}

/// A host started by `client --spawn` inherits the environment of a
/// process that may serve gRPC: with `--stdio`, the gRPC-only options'
/// variables are ignored, as `COSYSTEM_WORKER_LISTEN` is. On a `tcp:`
/// listener they are refused, naming the variable, since a token meant to
/// guard a listener must not be dropped without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_ignores_the_grpc_only_variables_and_tcp_names_them_when_refusing() {
    let grpc_only = [
        ("COSYSTEM_WORKER_TOKEN_FILE", "/nonexistent/token"),
        ("COSYSTEM_WORKER_MAX_CONNECTIONS", "5"),
        // One of a pair alone: no clap `requires` may refuse it first.
        ("COSYSTEM_WORKER_TLS_CERT", "/nonexistent/cert.pem"),
    ];
    let command = format!("{BIN} host --stdio");
    let output = cli_client_with_env(
        &grpc_only,
        &["--spawn", &command, "call", "counter", "increase", "1"],
    )
    .await;
    assert_eq!(json_line(&output), json!({"value": 1, "version": 2}));

    let output = common::cli_with_env(&grpc_only, &["host", "--listen", "tcp://127.0.0.1:0"]).await;
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("set here by COSYSTEM_WORKER_TOKEN_FILE, COSYSTEM_WORKER_TLS_CERT, COSYSTEM_WORKER_MAX_CONNECTIONS"),
        "{text}"
    );
    // On the command line they are refused with --stdio too.
    let output = cli(&["host", "--stdio", "--token-file", "/nonexistent/token"]).await;
    assert_eq!(output.status.code(), Some(2));
}
