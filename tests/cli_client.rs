//! `cosystem-worker client …` end to end: the built binary against a host
//! served in this process over gRPC, checking stdout, stderr and exit codes.

mod common;

use common::{ServedGrpc, serve_grpc_on_loopback};

use common::{BIN, cli_client, cli_client_with_env};

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use cosystem_worker::demo;
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::grpc::GrpcServer;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::oneshot;

fn demo_host() -> Host {
    Host::builder(demo::app("cli-secret"))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .build()
}

/// Serves `builder` on a free port until the second value is dropped.
async fn start(
    builder: cosystem_worker::transport::grpc::GrpcServerBuilder,
) -> (SocketAddr, ServedGrpc) {
    let served = serve_grpc_on_loopback(builder).await;
    (served.addr, served)
}

fn stdout_json(output: &Output) -> Value {
    let text = String::from_utf8(output.stdout.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected, got {text:?}");
    serde_json::from_str(lines[0]).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The one error line: starts with `error:` and is the only line.
fn error_line(output: &Output) -> String {
    let text = stderr(output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one error line expected, got {text:?}");
    assert!(lines[0].starts_with("error: "), "{text:?}");
    assert!(!text.contains("panicked"), "{text:?}");
    lines[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_prints_version_epoch_and_published_state_as_one_json_line() {
    let host = demo_host();
    host.invoke("counter", "increase", &[json!(4)]).unwrap();
    let (addr, _stop) = start(GrpcServer::builder(host.clone())).await;
    let url = format!("http://{addr}");

    let output = cli_client(&["--connect", &url, "state"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let line = stdout_json(&output);
    assert_eq!(
        line,
        json!({"version": host.version(), "epoch": host.epoch(), "state": host.view()})
    );
    // Key order as documented: version, epoch, state.
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("{\"version\":"), "{text}");
    assert!(line["state"].get("secret").is_none(), "secret is private");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_the_value_and_the_version_it_observed() {
    let host = demo_host();
    let (addr, _stop) = start(GrpcServer::builder(host.clone())).await;
    let addr = addr.to_string(); // bare HOST:PORT means plaintext gRPC

    let output = cli_client(&["--connect", &addr, "call", "counter", "increase", "1"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout_json(&output),
        json!({"value": 1, "version": host.version()})
    );

    let output = cli_client(&["--connect", &addr, "call", "counter", "decrease", "-2"]).await;
    assert_eq!(stdout_json(&output)["value"], json!(3));

    let output = cli_client(&["--connect", &addr, "call", "todos", "add", "\"milk\""]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(host.view()["todos"]["items"][0]["text"], "milk");

    // Private modules are callable though never published.
    let output = cli_client(&["--connect", &addr, "call", "secret", "rotate"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout_json(&output)["value"], Value::Null);
    assert_eq!(
        host.module_state("secret").unwrap()["token"],
        "cli-secret-r1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_errors_print_the_code_and_message_and_exit_non_zero() {
    let host = demo_host();
    let (addr, _stop) = start(GrpcServer::builder(host.clone())).await;
    let url = format!("http://{addr}");
    let cases: [(&[&str], i32, &str); 5] = [
        (&["call", "nope", "x"], 1, "error: not-found:"),
        (&["call", "counter", "nope"], 1, "error: not-found:"),
        (
            &["call", "counter", "fail", "\"boom\""],
            1,
            "error: failed: boom",
        ),
        (
            &["call", "counter", "increase"],
            1,
            "error: invalid-argument:",
        ),
        (
            &["call", "counter", "increase", "\"one\""],
            1,
            "error: invalid-argument:",
        ),
    ];
    for (args, code, prefix) in cases {
        let mut full = vec!["--connect", url.as_str()];
        full.extend_from_slice(args);
        let output = cli_client(&full).await;
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty());
        let line = error_line(&output);
        assert!(line.starts_with(prefix), "{args:?}: {line}");
    }
    assert_eq!(host.view()["counter"]["count"], 0);
}

/// A host's error message is printed on one line whatever it holds: a
/// newline or an escape sequence in it would let a host forge a second
/// line (such as `details:`) or drive the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_error_message_cannot_add_lines_or_escape_sequences() {
    let host = demo_host();
    let (addr, _stop) = start(GrpcServer::builder(host)).await;
    let message = serde_json::to_string("boom\ndetails: {}\u{1b}[2J\u{2028}\u{202e}x").unwrap();
    let output = cli_client(&[
        "--connect",
        &format!("http://{addr}"),
        "call",
        "counter",
        "fail",
        &message,
    ])
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        error_line(&output),
        r"error: failed: boom\ndetails: {}\u{1b}[2J\u{2028}\u{202e}x"
    );
}

/// A method that answers `permission-denied` has been reached with
/// accepted credentials: that is the call's failure (exit 1), not a host
/// that refused the client (exit 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_methods_own_permission_denied_is_a_call_error_not_a_refusal() {
    use cosystem_worker::app::{App, MethodError, TypedModule};
    use cosystem_worker::wire::ErrorCode;
    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct Vault {}
    let vault = TypedModule::new("vault", Vault::default())
        .method("open", |_: &mut Vault, (): ()| {
            Err::<(), _>(MethodError::new(
                ErrorCode::PermissionDenied,
                "only the owner opens the vault",
            ))
        })
        .method("withdraw", |_: &mut Vault, (_amount,): (u64,)| {
            let mut error = MethodError::failed("insufficient funds");
            error.details = Some(json!({"balance": 10, "note": "\u{85}\u{2028}"}));
            Err::<(), _>(error)
        });
    let host = Host::builder(App::new().with(vault)).build();
    let (addr, _stop) = start(GrpcServer::builder(host).token("r1ght")).await;
    let dir = std::env::temp_dir().join(format!("cosystem-cli-vault-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "r1ght\n").unwrap();

    let url = format!("http://{addr}");
    let token = token.to_str().unwrap();
    let call = |method_and_args: &'static [&'static str]| {
        let mut args = vec![
            "--connect",
            url.as_str(),
            "--token-file",
            token,
            "call",
            "vault",
        ];
        args.extend_from_slice(method_and_args);
        async move { cli_client(&args).await }
    };

    let output = call(&["open"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        error_line(&output),
        "error: permission-denied: only the owner opens the vault"
    );

    // An error's details are part of the answer, printed on the next line.
    let output = call(&["withdraw", "50"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        "error: failed: insufficient funds\ndetails: {\"balance\":10,\"note\":\"\\u0085\\u2028\"}\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A call the host has not answered when `--timeout` runs out settles
/// `deadline-exceeded` on the client: it may have run, so it exits 4, not
/// 1 (the host's answer) or 3 (the host unreachable).
#[test]
fn a_call_still_running_at_the_timeout_exits_4_as_unanswered() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gate = common::Gate::default();
    let host = Host::builder(common::app_with_gate("cli-secret", gate.clone())).build();
    let (addr, stop) = rt.block_on(start(GrpcServer::builder(host)));
    let output = std::process::Command::new(BIN)
        .args(["client", "--connect", &format!("http://{addr}")])
        .args(["--timeout", "3", "call", "slow", "hold"])
        .output()
        .unwrap();
    gate.open();
    rt.block_on(async move { drop(stop) });
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        error_line(&output).starts_with("error: deadline-exceeded: "),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_gets_one_line_and_exit_2_without_contacting_anyone() {
    // Nothing listens here: every case must fail on its input alone.
    let url = "http://127.0.0.1:9";
    let cases: [&[&str]; 9] = [
        &["--connect", url, "call", "todos", "add", "milk"],
        &["--connect", url, "call", "counter", "increase", "{"],
        &["--connect", url, "watch", "counter"],
        &["--connect", url, "--timeout", "0", "state"],
        &["--connect", url, "--timeout", "soon", "state"],
        &["--connect", "ftp://x:1", "state"],
        &[
            "--connect",
            url,
            "--token-file",
            "/nonexistent/token",
            "state",
        ],
        &["--connect", url, "--ca-cert", "/dev/null", "state"],
        &["--connect", url],
    ];
    for args in cases {
        let output = cli_client(args).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        let text = stderr(&output);
        assert!(text.starts_with("error"), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_transports_refuse_grpc_only_options() {
    for args in [
        &[
            "--connect",
            "tcp://127.0.0.1:9",
            "--token-file",
            "/dev/null",
            "state",
        ][..],
        &[
            "--connect",
            "unix:/tmp/cosystem.sock",
            "--ca-cert",
            "/dev/null",
            "state",
        ][..],
        &[
            "--spawn",
            "cosystem-worker host --stdio",
            "--token-file",
            "/dev/null",
            "state",
        ][..],
    ] {
        let output = cli_client(args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let line = error_line(&output);
        assert!(line.contains("gRPC only"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_fails_after_the_timeout_with_exit_3() {
    let (_held, port) = common::refusing_port();
    let url = format!("http://127.0.0.1:{port}");
    for command in [
        &["state"][..],
        &["call", "counter", "increase", "1"],
        &["watch"],
    ] {
        let mut args = vec!["--connect", url.as_str(), "--timeout", "1"];
        args.extend_from_slice(command);
        let output = cli_client(&args).await;
        assert_eq!(output.status.code(), Some(3), "{command:?}");
        let line = error_line(&output);
        assert!(line.starts_with("error: unavailable:"), "{line}");
        assert!(line.contains(&url), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_missing_wrong_and_right() {
    let host = demo_host();
    let (addr, _stop) = start(GrpcServer::builder(host.clone()).token("r1ght")).await;
    let url = format!("http://{addr}");
    let dir = std::env::temp_dir().join(format!("cosystem-cli-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let right = dir.join("right");
    let wrong = dir.join("wrong");
    std::fs::write(&right, "r1ght\n").unwrap();
    std::fs::write(&wrong, "wr0ng\n").unwrap();

    let output = cli_client(&["--connect", &url, "state"]).await;
    assert_eq!(output.status.code(), Some(3));
    assert!(error_line(&output).starts_with("error: permission-denied:"));

    let output = cli_client(&[
        "--connect",
        &url,
        "--token-file",
        wrong.to_str().unwrap(),
        "call",
        "counter",
        "increase",
        "1",
    ])
    .await;
    assert_eq!(output.status.code(), Some(3));
    let line = error_line(&output);
    assert!(line.starts_with("error: permission-denied:"), "{line}");
    assert!(!line.contains("wr0ng"), "the token is never echoed: {line}");

    let output = cli_client(&[
        "--connect",
        &url,
        "--token-file",
        right.to_str().unwrap(),
        "call",
        "counter",
        "increase",
        "1",
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout_json(&output)["value"], json!(1));
    assert_eq!(host.view()["counter"]["count"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS host with a self-signed certificate for `localhost`, its URL, a
/// scratch directory holding that certificate as `cert.pem`, and the stop
/// handle.
async fn tls_host(tag: &str) -> (String, std::path::PathBuf, ServedGrpc) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("cosystem-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    let (addr, stop) = start(
        GrpcServer::builder(demo_host()).tls(cert.cert.pem(), cert.signing_key.serialize_pem()),
    )
    .await;
    (format!("https://localhost:{}", addr.port()), dir, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_needs_the_ca_certificate() {
    let (url, dir, _stop) = tls_host("tls").await;
    let ca = dir.join("cert.pem");

    let output = cli_client(&[
        "--connect",
        &url,
        "--ca-cert",
        ca.to_str().unwrap(),
        "call",
        "counter",
        "increase",
        "7",
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout_json(&output)["value"], json!(7));

    // Without --ca-cert the system's trust store decides, which here is
    // pointed at another certificate.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_ca = dir.join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let output = cli_client_with_env(
        &[("SSL_CERT_FILE", other_ca.to_str().unwrap())],
        &["--connect", &url, "--timeout", "3", "state"],
    )
    .await;
    assert_eq!(output.status.code(), Some(3));
    let line = error_line(&output);
    assert!(line.to_lowercase().contains("certificate"), "{line}");

    // A --ca-cert file that holds no certificate (here, a private key) is
    // a usage error at once, not a timeout blaming the host's certificate.
    let key = dir.join("key.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let output = cli_client(&[
        "--connect",
        &url,
        "--ca-cert",
        key.to_str().unwrap(),
        "--timeout",
        "30",
        "state",
    ])
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let line = error_line(&output);
    assert!(line.contains("holds no PEM certificate"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_client_of_a_tls_host_is_told_to_use_https() {
    let (url, dir, _stop) = tls_host("plain").await;
    let plain = url.replace("https://", "http://");
    let output = cli_client(&["--connect", &plain, "--timeout", "3", "state"]).await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let line = error_line(&output);
    assert!(line.contains("connect with https://"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_of_a_framed_listener_is_told_to_use_tcp() {
    let host = demo_host();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(cosystem_worker::transport::framed::serve_tcp(
        host.clone(),
        listener,
    ));
    let url = format!("http://{addr}");
    let output = cli_client(&["--connect", &url, "--timeout", "3", "state"]).await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let line = error_line(&output);
    assert!(
        line.contains(&format!("connect with tcp://{addr}")),
        "{line}"
    );
    host.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_a_ca_certificate_trusts_the_system_store() {
    let (url, dir, _stop) = tls_host("roots").await;
    let store = dir.join("cert.pem");
    let output = cli_client_with_env(
        &[("SSL_CERT_FILE", store.to_str().unwrap())],
        &["--connect", &url, "call", "counter", "increase", "3"],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout_json(&output)["value"], json!(3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_one_line_per_version_with_the_pointed_value() {
    let host = demo_host();
    let (addr, _stop) = start(GrpcServer::builder(host.clone())).await;
    let url = format!("http://{addr}");
    let (mut child, mut lines) = spawn_watch(&["--connect", &url]);
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("watch printed nothing")
            .unwrap()
            .expect("watch ended");
        serde_json::from_str(&line).unwrap()
    };
    let start = host.version();
    let epoch = host.epoch();
    assert_eq!(
        next().await,
        json!({"version": start, "epoch": epoch, "value": 0})
    );
    // Every version is printed, even one that leaves the value unchanged.
    host.invoke("counter", "increase", &[json!(2)]).unwrap();
    assert_eq!(
        next().await,
        json!({"version": start + 1, "epoch": epoch, "value": 2})
    );
    host.invoke("todos", "add", &[json!("x")]).unwrap();
    assert_eq!(
        next().await,
        json!({"version": start + 2, "epoch": epoch, "value": 2})
    );
    host.invoke("counter", "decrease", &[json!(5)]).unwrap();
    assert_eq!(
        next().await,
        json!({"version": start + 3, "epoch": epoch, "value": -3})
    );
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_refused_when_a_restarted_host_no_longer_accepts_its_token() {
    let dir = std::env::temp_dir().join(format!("cosystem-watch-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "first-token").unwrap();
    let (addr, mut stop) = start(GrpcServer::builder(demo_host()).token("first-token")).await;
    let url = format!("http://{addr}");
    let token_arg = token_file.to_str().unwrap();
    let (mut child, mut lines) = spawn_watch(&["--connect", &url, "--token-file", token_arg]);
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "watch printed nothing");

    // Read as it comes, so the host comes back only once the watch has said
    // it lost it: otherwise the watch may never see the link down.
    let mut stderr_lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
    let (said, mut heard) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(line)) = stderr_lines.next_line().await {
            let _ = said.send(line.clone());
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    // The same address, now with another token (its credentials rotated).
    stop.begin_stop();
    // Between the two hosts the link is lost, which a watch that has gone
    // quiet says on stderr. A hang guard, not a speed check.
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = heard.recv().await {
            if line.contains("lost the host") {
                return;
            }
        }
        panic!("the watch ended without saying it lost the host");
    })
    .await
    .expect("the watch never said it lost the host");
    let restarted = loop {
        match GrpcServer::builder(demo_host())
            .token("second-token")
            .bind(addr)
            .await
        {
            Ok(server) => break server,
            // The stopped server may not have released the port yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let (_stop_restarted, stopped) = oneshot::channel::<()>();
    tokio::spawn(restarted.serve(async move {
        let _ = stopped.await;
    }));

    // A hang guard, not a speed check.
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("watch kept running after its token was refused")
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let stderr_text = stderr_task.await.unwrap();
    assert!(stderr_text.contains("permission-denied"), "{stderr_text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `client ARGS watch /counter/count`, with its stdout as lines.
fn spawn_watch(
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = Command::new(BIN)
        .arg("client")
        .args(args)
        .args(["watch", "/counter/count"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}
