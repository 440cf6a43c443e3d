//! `cosystem-worker host` end to end: the built binary serving, logging
//! each connect and disconnect, answering the client binary, and stopping
//! cleanly on SIGTERM; and its refusals of bad options.

mod common;

use common::{BIN, HostProcess, cli, cli_client, json_line};

use std::time::Duration;

use serde_json::json;
use tokio::process::Command;

/// A hang guard, not a speed check.
const GUARD: Duration = Duration::from_secs(60);

/// A host on a free loopback port, and its URL.
async fn spawn_host(args: &[&str]) -> (HostProcess, String) {
    let mut full = vec!["--listen", "127.0.0.1:0"];
    full.extend_from_slice(args);
    let mut host = HostProcess::spawn(&full).await;
    let url = host.endpoint().await;
    (host, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_binary_serves_clients_logs_each_session_and_stops_on_sigterm() {
    let (mut host, url) = spawn_host(&[]).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let first =
        json_line(&cli_client(&["--connect", &url, "call", "counter", "increase", "1"]).await);
    assert_eq!(first["value"], json!(1));
    host.log_until("client connected").await;
    host.log_until("client disconnected").await;

    let state = json_line(&cli_client(&["--connect", &url, "state"]).await);
    assert_eq!(state["version"], first["version"]);
    // Defaults: counter and todos published, secret private, patch mode.
    assert_eq!(
        state["state"],
        json!({"counter": {"count": 1}, "todos": {"items": []}})
    );

    let status = host.terminate().await;
    assert!(status.success(), "{status:?}");
    host.log_until("stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_binary_serves_on_one_thread_or_a_given_number_of_workers() {
    for threads in ["0", "1"] {
        let (mut host, url) = spawn_host(&["--threads", threads]).await;
        let called =
            json_line(&cli_client(&["--connect", &url, "call", "counter", "increase", "2"]).await);
        assert_eq!(called["value"], json!(2), "--threads {threads}");
        let state = json_line(&cli_client(&["--connect", &url, "state"]).await);
        assert_eq!(
            state["state"]["counter"],
            json!({"count": 2}),
            "--threads {threads}"
        );
        let status = host.terminate().await;
        assert!(status.success(), "--threads {threads}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_binary_publishes_the_sections_and_secret_it_is_given() {
    let dir = std::env::temp_dir().join(format!("cosystem-cli-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "  hunter2-token \n").unwrap();
    let token = token.to_str().unwrap();
    let (mut host, url) = spawn_host(&[
        "--sync",
        "snapshot",
        "--sections",
        "counter,secret",
        "--secret-token",
        "abc",
        "--token-file",
        token,
    ])
    .await;
    let refused = cli_client(&["--connect", &url, "state"]).await;
    assert_eq!(refused.status.code(), Some(3));

    let state = json_line(&cli_client(&["--connect", &url, "--token-file", token, "state"]).await);
    assert_eq!(
        state["state"],
        json!({"counter": {"count": 0}, "secret": {"token": "abc"}})
    );
    let status = host.terminate().await;
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_binary_refuses_bad_options_with_one_line_and_exit_2() {
    let cases: [&[&str]; 19] = [
        &["--sections", "counter,nope"],
        &["--sync", "sometimes"],
        &["--listen", "https://127.0.0.1:0"],
        &["--tls-cert", "/nonexistent.pem"],
        &["--tls-key", "/dev/null"],
        &["--tls-client-ca", "/dev/null"],
        &["--tls-cert", "/dev/null", "--tls-key", "/dev/null"],
        &["--token-file", "/dev/null"],
        &["--listen", "tcp://127.0.0.1:0", "--token-file", "/dev/null"],
        &[
            "--listen",
            "unix:/tmp/cosystem-test.sock",
            "--tls-cert",
            "/dev/null",
            "--tls-key",
            "/dev/null",
        ],
        &["--stdio", "--token-file", "/dev/null"],
        &["--max-clients", "0"],
        &["--max-connections", "0"],
        &["--metrics-listen", "not an address"],
        &["--max-connections-per-address", "0"],
        &["--listen", "tcp://127.0.0.1:0", "--max-connections", "5"],
        &["--secret-token", ""],
        &["--threads", "1025"],
        &["--threads", "18446744073709551615"],
    ];
    for args in cases {
        let args: Vec<&str> = std::iter::once("host")
            .chain(args.iter().copied())
            .collect();
        let output = cli(&args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(text.contains("error"), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = cli(&["host", "--listen", &addr]).await;
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains(&format!("cannot listen on {addr}")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_warns_when_anyone_beyond_this_machine_may_call_it() {
    // Beyond loopback with no token or client certificates: warned, after
    // a listening line that gives the effective settings.
    let mut open = HostProcess::spawn(&["--listen", "0.0.0.0:0"]).await;
    let listening = open.log_until("listening on").await;
    for setting in ["sync=Patch", "sections=counter,todos", "max_clients=10000"] {
        assert!(listening.contains(setting), "{setting}: {listening}");
    }
    let next = open.next_line().await;
    assert!(next.contains("beyond this machine"), "{next}");
    open.terminate().await;

    // With a token but no TLS, the token crosses the network in plaintext;
    // and the listening line shows the sections in effect, not as typed.
    let token = std::env::temp_dir().join(format!("cosystem-plain-token-{}", std::process::id()));
    std::fs::write(&token, "s3cr3t\n").unwrap();
    let mut plain = HostProcess::spawn(&[
        "--listen",
        "0.0.0.0:0",
        "--token-file",
        token.to_str().unwrap(),
        "--sections",
        "counter,,todos,",
    ])
    .await;
    let listening = plain.log_until("listening on").await;
    assert!(listening.contains("sections=counter,todos "), "{listening}");
    let next = plain.next_line().await;
    assert!(next.contains("without TLS"), "{next}");
    plain.terminate().await;
    let _ = std::fs::remove_file(&token);

    // On loopback nothing is warned: the next line is the first client's.
    let (mut local, url) = spawn_host(&[]).await;
    json_line(&cli_client(&["--connect", &url, "state"]).await);
    let next = local.next_line().await;
    assert!(next.contains("client connected"), "{next}");
    // The client half-closes its stream and waits for the host to end it
    // before exiting: the host sees an orderly close, not a client gone.
    let gone = local.log_until("client disconnected").await;
    assert!(gone.contains("the client closed its stream"), "{gone}");
    local.terminate().await;
}

/// Framed TCP carries no token and no TLS, so a bind beyond loopback is
/// warned whatever the options; on loopback it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_tcp_beyond_loopback_is_warned_as_unauthenticated() {
    let mut open = HostProcess::spawn(&["--listen", "tcp://0.0.0.0:0"]).await;
    open.log_until("listening on tcp://").await;
    let next = open.next_line().await;
    assert!(next.contains("WARN"), "{next}");
    assert!(next.contains("beyond this machine"), "{next}");
    assert!(next.contains("no authentication"), "{next}");
    open.terminate().await;

    let mut local = HostProcess::spawn(&["--listen", "tcp://127.0.0.1:0"]).await;
    let endpoint = local.endpoint().await;
    json_line(&cli_client(&["--connect", &endpoint, "state"]).await);
    let next = local.next_line().await;
    assert!(next.contains("client connected"), "{next}");
    local.terminate().await;
}

/// Pointed at the other kind of listener, a client is told what it reached:
/// a framed client at a gRPC host stops at once naming HTTP/2 (it used to
/// retry until its timeout, reporting a truncated stream), and a framed
/// host logs a gRPC client as such (it used to log a frame length at debug).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_the_other_transport_is_told_what_the_host_speaks() {
    let (mut grpc, url) = spawn_host(&[]).await;
    let framed_url = url.replace("http://", "tcp://");
    let output = cli_client(&["--connect", &framed_url, "--timeout", "60", "state"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not serve this protocol"), "{stderr}");
    assert!(stderr.contains("as a gRPC host does"), "{stderr}");
    grpc.terminate().await;

    let mut framed = HostProcess::spawn(&["--listen", "tcp://127.0.0.1:0"]).await;
    let endpoint = framed.endpoint().await;
    let grpc_url = endpoint.replace("tcp://", "http://");
    let output = cli_client(&["--connect", &grpc_url, "--timeout", "3", "state"]).await;
    assert!(!output.status.success());
    let line = framed.log_until("speaks another protocol").await;
    assert!(line.contains("as a gRPC client does"), "{line}");
    framed.terminate().await;
}

/// A stream its client never half-closes holds a stopping gRPC host for
/// its grace period; a second SIGTERM stops the host at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_the_host_without_waiting_for_connections() {
    let (mut host, url) = spawn_host(&[]).await;
    let _reflection = common::open_reflection_stream(url).await;

    host.signal_term().await;
    host.log_until("shutting down").await;
    let status = host.terminate().await;
    assert!(status.success(), "{status:?}");
    host.log_until("a second signal: stopping now").await;
}

/// A hang-up (a closed terminal, a lost SSH session) stops the host
/// gracefully, as SIGTERM does, rather than by its default action; a host
/// started with SIGHUP ignored, as `nohup` starts it, goes on ignoring it.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_stops_the_host_gracefully_unless_started_ignoring_it() {
    // A stream its client never closes holds the stop in its grace period,
    // through which a second hang-up (a closed terminal sends two) must not
    // cut the stop short as a second Ctrl-C or SIGTERM would.
    let (mut host, url) = spawn_host(&[]).await;
    let _reflection = common::open_reflection_stream(url).await;
    host.signal("HUP").await;
    host.log_until("hung up; shutting down").await;
    host.signal("HUP").await;
    let status = host.exited().await;
    assert!(status.success(), "{status:?}");
    let log = host.rest_of_log().await;
    assert!(log.iter().any(|l| l.contains("stopped")), "{log:?}");
    assert!(
        !log.iter().any(|l| l.contains("a second signal")),
        "{log:?}"
    );

    let mut ignoring = spawn_host_under("trap '' HUP", &[]).await;
    let url = ignoring.endpoint().await;
    ignoring.signal("HUP").await;
    let answered =
        json_line(&cli_client(&["--connect", &url, "call", "counter", "increase", "1"]).await);
    assert_eq!(answered["value"], json!(1));
    let status = ignoring.terminate().await;
    assert!(status.success(), "{status:?}");
    let log = ignoring.rest_of_log().await;
    assert!(
        log.iter().any(|l| l.contains("terminated; shutting down")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("hung up")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_a_connection_over_it_and_says_why() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut host, url) = spawn_host(&["--max-connections", "1"]).await;
    let addr = url.trim_start_matches("http://").to_owned();
    // A health watch holds the one connection.
    let _watch = common::open_health_watch(url).await;

    // A served connection answers the HTTP/2 preface with the server's
    // SETTINGS; the one over the limit ends without a byte.
    let mut refused = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = refused.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(GUARD, refused.read(&mut buf))
        .await
        .expect("the connection over the limit was left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let line = host.log_until("closing a new connection").await;
    assert!(line.contains("at its limit of connections (1)"), "{line}");
}

/// `cosystem-worker host ARGS` run by `sh` after `limits` (`ulimit …`).
#[cfg(target_os = "linux")]
async fn spawn_host_under(limits: &str, args: &[&str]) -> HostProcess {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("{limits} && exec \"$0\" host \"$@\""))
        .arg(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    HostProcess::spawn_command(command)
}

/// The soft and hard "Max open files" of a running process.
#[cfg(target_os = "linux")]
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_raises_its_open_file_limit_to_the_hard_limit() {
    let mut host = spawn_host_under("ulimit -Sn 256", &[]).await;
    host.endpoint().await;
    let (soft, hard) = open_files_limits(host.pid());
    assert_ne!(soft, "256");
    assert_eq!(soft, hard);
    host.terminate().await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_warns_when_its_open_file_limit_cannot_hold_max_connections() {
    let mut host = spawn_host_under("ulimit -n 512", &["--max-connections", "1000"]).await;
    let line = host
        .log_until("the open-file limit leaves too little room for --max-connections (1000)")
        .await;
    assert!(line.contains("open_files=512"), "{line}");
    // Still served: the warning is advice.
    host.endpoint().await;
    host.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_leaves_room_for_max_clients_unless_set_lower_with_a_warning() {
    // Each session takes a connection: the default grows with --max-clients.
    let mut roomy =
        HostProcess::spawn(&["--listen", "127.0.0.1:0", "--max-clients", "20000"]).await;
    let listening = roomy.log_until("listening on").await;
    assert!(listening.contains("max_connections=21024"), "{listening}");

    let mut tight = HostProcess::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--max-clients",
        "10",
        "--max-connections",
        "5",
    ])
    .await;
    let warning = tight
        .log_until("--max-connections is below --max-clients")
        .await;
    assert!(warning.contains("max_connections=5"), "{warning}");
    let listening = tight.log_until("listening on").await;
    assert!(listening.contains("max_connections=5"), "{listening}");
}

/// Sends one HTTP/1.1 request (`METHOD PATH`) to `addr` and reads the whole
/// response.
async fn http(addr: &str, method_and_path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("{method_and_path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    tokio::time::timeout(GUARD, exchange).await.expect("hung")
}

/// The metrics server asks nothing of who connects: served beyond loopback
/// it is warned, on loopback it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_beyond_loopback_are_warned_as_unauthenticated() {
    let mut open =
        HostProcess::spawn(&["--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0"]).await;
    open.log_until("metrics on http://").await;
    let next = open.next_line().await;
    assert!(next.contains("WARN"), "{next}");
    assert!(next.contains("beyond this machine"), "{next}");
    assert!(next.contains("no authentication"), "{next}");
    open.terminate().await;

    let mut local =
        HostProcess::spawn(&["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]).await;
    local.log_until("metrics on http://").await;
    let next = local.next_line().await;
    assert!(next.contains("listening on"), "{next}");
    local.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_the_hosts_counters_in_the_prometheus_format() {
    let mut host =
        HostProcess::spawn(&["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]).await;
    let line = host.log_until("metrics on http://").await;
    let metrics = line
        .split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("an address")
        .to_owned();
    let url = host.endpoint().await;
    let answered =
        json_line(&cli_client(&["--connect", &url, "call", "counter", "increase", "1"]).await);
    assert_eq!(answered["value"], json!(1));

    let response = http(&metrics, "GET /metrics").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{response}"
    );
    assert!(
        response.contains("cosystem_worker_calls_answered_total{outcome=\"ok\"} 1\n"),
        "{response}"
    );
    assert!(
        response.contains(
            "cosystem_worker_method_duration_seconds_count{module=\"counter\",method=\"increase\"} 1\n"
        ),
        "{response}"
    );
    let version = answered["version"].as_u64().expect("a version");
    assert!(
        response.contains(&format!("cosystem_worker_state_version {version}\n")),
        "{response}"
    );
    // The gRPC server's connections: the client's came and went.
    assert!(
        response.contains("cosystem_worker_grpc_connections_refused_total{limit=\"max\"} 0\n"),
        "{response}"
    );
    assert!(
        response.contains("# TYPE cosystem_worker_grpc_connections gauge\n"),
        "{response}"
    );
    assert!(
        http(&metrics, "GET /other")
            .await
            .starts_with("HTTP/1.1 404 ")
    );
    let post = http(&metrics, "POST /metrics").await;
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert!(post.contains("allow: GET, HEAD\r\n"), "{post}");
    host.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_come_from_the_environment_and_a_flag_wins_over_its_variable() {
    let mut command = Command::new(BIN);
    command
        .arg("host")
        .env("COSYSTEM_WORKER_LISTEN", "127.0.0.1:0")
        .env("COSYSTEM_WORKER_SECTIONS", "counter")
        // Not a number, but the flag below is what counts.
        .env("COSYSTEM_WORKER_MAX_CLIENTS", "many")
        .args(["--max-clients", "5"]);
    let mut host = HostProcess::spawn_command(command);
    let url = host.endpoint().await;
    let state = json_line(&cli_client(&["--connect", &url, "state"]).await);
    assert_eq!(state["state"], json!({"counter": {"count": 0}}));
    host.terminate().await;

    // A bad value from the environment is refused like a bad flag, and the
    // variable is named: the operator never typed the flag.
    let output = common::cli_with_env(
        &[("COSYSTEM_WORKER_MAX_CLIENTS", "many")],
        &["host", "--listen", "127.0.0.1:0"],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("invalid value 'many'"), "{text}");
    assert!(
        text.contains("the value came from the environment variable COSYSTEM_WORKER_MAX_CLIENTS"),
        "{text}"
    );

    // A bad value typed as the flag is the flag's, whatever the variable.
    let output = common::cli_with_env(
        &[("COSYSTEM_WORKER_MAX_CLIENTS", "many")],
        &["host", "--listen", "127.0.0.1:0", "--max-clients=lots"],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("invalid value 'lots'"), "{text}");
    assert!(!text.contains("environment variable"), "{text}");
}

/// `--metrics-listen` on the port `--listen` asks for is refused up front,
/// naming both: the metrics server bound first, so the gRPC bind failed
/// with an "address in use" that blamed neither flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_grpc_port_is_refused_naming_both_flags() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let same = format!("127.0.0.1:{port}");
    let any = format!("0.0.0.0:{port}");
    for metrics in [&same, &any] {
        let output = cli(&["host", "--listen", &same, "--metrics-listen", metrics]).await;
        assert_eq!(output.status.code(), Some(2), "{metrics}");
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(
            text.contains("--metrics-listen")
                && text.contains("--listen")
                && text.contains("share one port"),
            "{text}"
        );
    }
    let output = cli(&["host", "--metrics-listen", "nowhere"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--metrics-listen: cannot resolve"));
}
