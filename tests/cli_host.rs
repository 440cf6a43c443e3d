//! `cosystem-worker host` end to end: the built binary serving, logging
//! each connect and disconnect, answering the client binary, and stopping
//! cleanly on SIGTERM; and its refusals of bad options.

mod common;

use common::{BIN, cli_client, json_line};

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A hang guard, not a speed check.
const GUARD: Duration = Duration::from_secs(60);

struct RunningHost {
    child: Child,
    log: mpsc::UnboundedReceiver<String>,
    url: String,
}

impl RunningHost {
    /// Reads log lines until one contains `needle`; returns it.
    async fn log_until(&mut self, needle: &str) -> String {
        tokio::time::timeout(GUARD, async {
            loop {
                let line = self.log.recv().await.expect("host log ended");
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no log line containing {needle:?}"))
    }
}

async fn spawn_host(args: &[&str]) -> RunningHost {
    let mut child = Command::new(BIN)
        .arg("host")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, log) = mpsc::unbounded_channel();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    let mut host = RunningHost {
        child,
        log,
        url: String::new(),
    };
    let line = host.log_until("listening on ").await;
    let url = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("address in the listening line");
    host.url = url.to_owned();
    host
}

async fn terminate(mut host: RunningHost) -> (std::process::ExitStatus, RunningHost) {
    let pid = host.child.id().expect("running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(GUARD, host.child.wait())
        .await
        .expect("host did not stop on SIGTERM")
        .unwrap();
    (status, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_binary_serves_clients_logs_each_session_and_stops_on_sigterm() {
    let mut host = spawn_host(&[]).await;
    let url = host.url.clone();
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

    let (status, mut host) = terminate(host).await;
    assert!(status.success(), "{status:?}");
    host.log_until("stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_binary_publishes_the_sections_and_secret_it_is_given() {
    let dir = std::env::temp_dir().join(format!("cosystem-cli-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "  hunter2-token \n").unwrap();
    let token = token.to_str().unwrap();
    let host = spawn_host(&[
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
    let url = host.url.clone();
    let refused = cli_client(&["--connect", &url, "state"]).await;
    assert_eq!(refused.status.code(), Some(3));

    let state = json_line(&cli_client(&["--connect", &url, "--token-file", token, "state"]).await);
    assert_eq!(
        state["state"],
        json!({"counter": {"count": 0}, "secret": {"token": "abc"}})
    );
    let (status, _) = terminate(host).await;
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_binary_refuses_bad_options_with_one_line_and_exit_2() {
    let cases: [&[&str]; 11] = [
        &["--sections", "counter,nope"],
        &["--sync", "sometimes"],
        &["--listen", "https://127.0.0.1:0"],
        &["--tls-cert", "/nonexistent.pem"],
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
        &["--secret-token", ""],
    ];
    for args in cases {
        let run = Command::new(BIN)
            .arg("host")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(GUARD, run)
            .await
            .expect("hung")
            .unwrap();
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
    let run = Command::new(BIN)
        .args(["host", "--listen", &addr])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(GUARD, run)
        .await
        .expect("hung")
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains(&format!("cannot listen on {addr}")), "{text}");
}
