//! Load test: N gRPC clients calling and watching one reference host, for a
//! fixed time, on loopback only.
//!
//! The host runs in a child process (this same binary, re-executed with
//! `--serve-host`) so that its memory can be read apart from the clients'.
//!
//! ```sh
//! cargo run --release --example load_test -- --clients 1000 --seconds 10
//! ```
//!
//! It reports calls per second, call latency percentiles, publications
//! delivered per second, host RSS per connected client, and every lost or
//! duplicated version (which must be zero).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use cosystem_worker::client::{Client, ClientConfig, ClientEvent};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::grpc::{GrpcConnector, GrpcServer};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// Connected clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// How long the calls run, in seconds (bounded: at most 300).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// How many of the clients make calls, one at a time each (the rest
    /// only watch). Default: all of them.
    #[arg(long)]
    callers: Option<usize>,
    /// Worker threads of the host process's runtime; 0 runs it on one
    /// current-thread runtime (`cosystem-worker host --threads`). Default:
    /// one per core.
    #[arg(long)]
    host_threads: Option<usize>,
    /// Internal: serve a demo host on 127.0.0.1 and print its port.
    #[arg(long, hide = true)]
    serve_host: bool,
}

fn rss_bytes(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

async fn serve_host() {
    let host = Host::builder(demo::app("load-secret"))
        .sync(SyncMode::Patch)
        .sections(demo::DEFAULT_SECTIONS)
        .build();
    let server = GrpcServer::builder(host)
        .bind("127.0.0.1:0".parse().expect("loopback address"))
        .await
        .expect("bind loopback");
    println!("{}", server.local_addr().port());
    // Ends when the parent closes our stdin.
    let shutdown = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
    };
    server.serve(shutdown).await.expect("serve");
}

fn spawn_host(threads: Option<usize>) -> (Child, u16) {
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command.arg("--serve-host");
    if let Some(threads) = threads {
        command.arg(format!("--host-threads={threads}"));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the host process");
    let stdout = child.stdout.take().expect("host stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("host port");
    let port = line.trim().parse().expect("a port number");
    (child, port)
}

#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    errors: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    conflicts: AtomicU64,
    /// Events the observers missed because they fell behind; the sequence
    /// check restarts after each such hole (the mirror itself lost nothing).
    unobserved: AtomicU64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The host process's runtime: `threads` workers, one current thread for
/// 0, one per core by default.
fn host_runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    use tokio::runtime::Builder;
    match threads {
        Some(0) => Builder::new_current_thread().enable_all().build(),
        Some(n) => Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => Builder::new_multi_thread().enable_all().build(),
    }
}

fn main() {
    let args = Args::parse();
    let runtime = if args.serve_host {
        host_runtime(args.host_threads)
    } else {
        tokio::runtime::Runtime::new()
    }
    .expect("a tokio runtime");
    if args.serve_host {
        runtime.block_on(serve_host());
    } else {
        runtime.block_on(run_clients(args));
    }
}

async fn run_clients(args: Args) {
    let seconds = args.seconds.clamp(1, 300);
    let callers = args.callers.unwrap_or(args.clients).min(args.clients);
    let (mut host, port) = spawn_host(args.host_threads);
    let url = format!("http://127.0.0.1:{port}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = rss_bytes(host.id());

    let tally = Arc::new(Tally::default());
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let connector = GrpcConnector::new(url.clone()).expect("url");
        clients.push(Client::new(connector, ClientConfig::default()));
    }
    for client in &clients {
        tokio::time::timeout(Duration::from_secs(60), client.ready())
            .await
            .expect("clients became ready in time")
            .expect("client ready");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_bytes(host.id());

    // Every client checks its own version sequence: each applied version
    // must be exactly one more than the last (no loss, no duplicate).
    let mut watchers = Vec::new();
    for client in &clients {
        let mut events = client.events();
        let tally = tally.clone();
        let mut last = client.version().unwrap_or(0);
        watchers.push(tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tally.unobserved.fetch_add(n, Ordering::Relaxed);
                        last = 0;
                        continue;
                    }
                    Err(_) => break,
                };
                match event {
                    ClientEvent::StateChanged { version } => {
                        if last != 0 && version <= last {
                            tally.duplicates.fetch_add(1, Ordering::Relaxed);
                        } else if last != 0 && version != last + 1 {
                            tally.gaps.fetch_add(1, Ordering::Relaxed);
                        }
                        last = version;
                    }
                    ClientEvent::Conflict(_) => {
                        tally.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let versions_at_start: u64 = clients.iter().filter_map(Client::version).sum();
    let started = Instant::now();
    let mut workers = Vec::new();
    for client in clients.iter().take(callers) {
        let client = client.clone();
        let stop = stop.clone();
        let tally = tally.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let begun = Instant::now();
                match client.call("counter", "increase", vec![json!(1)]).await {
                    Ok(_) => {
                        tally.calls.fetch_add(1, Ordering::Relaxed);
                        latencies.push(begun.elapsed());
                    }
                    Err(_) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Every client applies every version once (patch mode, no loss), so the
    // versions its mirror advanced by are the publications it received.
    let versions_at_stop: u64 = clients.iter().filter_map(Client::version).sum();
    let deliveries_at_stop = versions_at_stop - versions_at_start;

    // Quiesce: every mirror must reach the same final version.
    let quiet = Instant::now();
    let target = loop {
        let versions: Vec<Option<u64>> = clients.iter().map(Client::version).collect();
        let max = versions.iter().flatten().max().copied().unwrap_or(0);
        if versions.iter().all(|v| *v == Some(max)) || quiet.elapsed() > Duration::from_secs(30) {
            break max;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let diverged = clients
        .iter()
        .filter(|c| c.version() != Some(target))
        .count();
    let reference = clients[0].state();
    let mismatched = clients.iter().filter(|c| c.state() != reference).count();
    latencies.sort();

    let calls = tally.calls.load(Ordering::Relaxed);
    let per_client = rss_connected.saturating_sub(rss_idle) / args.clients.max(1) as u64;
    println!("| measure | value |");
    println!("|---|---|");
    println!("| clients (callers) | {} ({callers}) |", args.clients);
    println!("| duration | {elapsed:.1} s |");
    println!("| calls per second | {:.0} |", calls as f64 / elapsed);
    println!(
        "| call latency p50 / p99 | {:.2} ms / {:.2} ms |",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| publications delivered per second | {:.0} |",
        deliveries_at_stop as f64 / elapsed
    );
    println!(
        "| host RSS idle / connected | {:.1} MiB / {:.1} MiB |",
        rss_idle as f64 / 1048576.0,
        rss_connected as f64 / 1048576.0
    );
    println!(
        "| host RSS per connected client | {:.1} KiB |",
        per_client as f64 / 1024.0
    );
    println!(
        "| failed calls | {} |",
        tally.errors.load(Ordering::Relaxed)
    );
    println!(
        "| lost versions (gaps) / duplicated versions | {} / {} |",
        tally.gaps.load(Ordering::Relaxed),
        tally.duplicates.load(Ordering::Relaxed)
    );
    println!(
        "| sync conflicts reported | {} |",
        tally.conflicts.load(Ordering::Relaxed)
    );
    println!(
        "| events the observers fell behind on (unchecked) | {} |",
        tally.unobserved.load(Ordering::Relaxed)
    );
    println!("| mirrors not at the final version / not equal | {diverged} / {mismatched} |");

    for client in &clients {
        client.dispose();
    }
    drop(host.stdin.take());
    let _ = host.wait();
    let failed = tally.gaps.load(Ordering::Relaxed)
        + tally.duplicates.load(Ordering::Relaxed)
        + diverged as u64
        + mismatched as u64;
    if failed > 0 {
        std::process::exit(1);
    }
}
