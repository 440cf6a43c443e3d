//! What fanning publications out to many gRPC clients costs the host,
//! against a bare tonic server pushing the same bytes.
//!
//! Two server processes, children of this bench (so that their memory can
//! be read apart from the clients'), on 127.0.0.1:
//!
//! - `host`: a `GrpcServer` serving a host whose one module, `feed`, has a
//!   method replacing a string; each call publishes a patch of about 200
//!   bytes to every session.
//! - `bare`: a bare tonic server of the same generated `HostService`
//!   (nothing else), which pushes the same ~200-byte `HostMessage` to every
//!   open stream through a tokio broadcast channel.
//!
//! The clients, in this process, are bare tonic streams that count the
//! messages they decode (a `SyncRequest` opens each host session), so both
//! sides of the comparison receive alike and the figures are the servers'.
//!
//! - `host/N`, `bare/N` (N = 1, 100, 1000 streams): time per publication
//!   delivered to all N, publishing in chunks of 256 and waiting for each
//!   chunk to arrive everywhere (the host keeps 1024 versions for slow
//!   readers; a chunk never outruns that). Target: at 1000 streams, ≥ 0.8×
//!   the bare server's deliveries per second, i.e. a time ratio ≤ 1.25.
//! - `idle_memory/1000`: the server's resident memory per idle stream, from
//!   `/proc/<pid>/status` before and after opening the 900 streams that take
//!   it from 100 to 1000 (so the publications already made do not count).
//!   Target ≤ 1.5× the bare server's.
//!
//! 1000 streams take about 2000 descriptors in this process and 1000 in
//! each server: `ulimit -n` must allow a few thousand (see README).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{BytesRow, HostMessages, Summary};
use cosystem_worker::app::{App, Draft, JsonModule};
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::grpc::GrpcServer;
use cosystem_worker::wire::host_service_client::HostServiceClient;
use cosystem_worker::wire::host_service_server::{HostService, HostServiceServer};
use cosystem_worker::wire::{ClientMessage, Header, HostMessage, Patch, host_message};
use criterion::BenchmarkId;
use futures::StreamExt;
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

const SUITE: &str = "fanout";
/// Which server a child process runs.
const CHILD_ENV: &str = "COSYSTEM_FANOUT_CHILD";
/// The target at 1000 streams: ≥ 0.8× the bare deliveries per second.
const DELIVERY_LIMIT: f64 = 1.25;
/// The target: host memory per idle client ≤ 1.5× the bare server's.
const MEMORY_LIMIT: f64 = 1.5;
/// Publications per chunk; well inside the host's 1024-version history.
const CHUNK: u64 = 256;
/// A host epoch's length on the wire (32 hex digits).
const EPOCH: &str = "00112233445566778899aabbccddeeff";

/// The string each publication sets: with the envelope, ~200 bytes.
fn text(i: u64) -> String {
    format!("{}{i:010}", "x".repeat(110))
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

// ---------------------------------------------------------------------------
// The servers (child processes).
// ---------------------------------------------------------------------------

/// The host: one module, `feed`, whose `set` replaces `/text`.
fn feed_host() -> Host {
    let feed = JsonModule::new("feed", json!({"text": text(0)})).method(
        "set",
        |d: &mut Draft<'_>, (t,): (String,)| {
            d.replace("/text", t)?;
            Ok(())
        },
    );
    Host::builder(App::new().with(feed))
        .sync(SyncMode::Patch)
        .epoch(EPOCH)
        // Only publications travel: no idle bookmarks to count.
        .bookmark_interval(None)
        .build()
}

/// The bare server's message: what the host publishes, byte for byte in
/// size (same header, same patch text).
fn bare_message(i: u64) -> HostMessage {
    HostMessage {
        header: Some(Header::v1(EPOCH, "host", "")),
        kind: Some(host_message::Kind::Patch(Patch {
            base_version: i + 1,
            version: i + 2,
            patch_json: json!([{"op": "replace", "path": "/feed/text", "value": text(i)}])
                .to_string(),
            sync_id: 0,
        })),
    }
}

struct Bare {
    tx: broadcast::Sender<HostMessage>,
}

#[tonic::async_trait]
impl HostService for Bare {
    type SessionStream = HostMessages;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<HostMessages>, Status> {
        // The request side stays open (and unread) as long as the stream.
        let inbound = request.into_inner();
        let hello = futures::stream::once(async { Ok(bare_message(0)) });
        let pushed = BroadcastStream::new(self.tx.subscribe()).filter_map(move |m| {
            let _keep = &inbound;
            std::future::ready(m.ok().map(Ok))
        });
        Ok(Response::new(Box::pin(hello.chain(pushed))))
    }
}

/// Runs a server child: prints its port, then publishes on `publish K`
/// lines from stdin until stdin closes.
fn run_child(kind: &str) {
    let rt = runtime();
    let publish: Box<dyn Fn(u64, u64) + Send + Sync> = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let port = listener.local_addr().expect("bound").port();
        let publish: Box<dyn Fn(u64, u64) + Send + Sync> = if kind == "host" {
            let host = feed_host();
            let server = GrpcServer::builder(host.clone())
                .listen(listener)
                .expect("a gRPC server");
            tokio::spawn(server.serve(std::future::pending()));
            Box::new(move |from, k| {
                for i in from..from + k {
                    host.invoke("feed", "set", &[json!(text(i))])
                        .expect("feed.set succeeds");
                }
            })
        } else {
            let (tx, _) = broadcast::channel(4 * CHUNK as usize);
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(
                Server::builder()
                    .add_service(HostServiceServer::new(Bare { tx: tx.clone() }))
                    .serve_with_incoming(incoming),
            );
            Box::new(move |from, k| {
                for i in from..from + k {
                    let _ = tx.send(bare_message(i));
                }
            })
        };
        println!("{port}");
        publish
    });
    let _guard = rt.enter();
    let mut published = 1;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if let Some(k) = line
            .strip_prefix("publish ")
            .and_then(|k| k.parse::<u64>().ok())
        {
            publish(published, k);
            published += k;
        }
    }
}

// ---------------------------------------------------------------------------
// The clients (this process).
// ---------------------------------------------------------------------------

/// Messages received by every stream of one server, and a waiter.
#[derive(Default)]
struct Tally {
    received: AtomicU64,
    target: AtomicU64,
    ready: AtomicU64,
    notify: Notify,
}

impl Tally {
    fn count(&self, first: bool) {
        if first {
            self.ready.fetch_add(1, Ordering::AcqRel);
            self.notify.notify_one();
            return;
        }
        let received = self.received.fetch_add(1, Ordering::AcqRel) + 1;
        if received >= self.target.load(Ordering::Acquire) {
            self.notify.notify_one();
        }
    }

    async fn until(&self, done: impl Fn(&Tally) -> bool) {
        loop {
            let woken = self.notify.notified();
            if done(self) {
                return;
            }
            woken.await;
        }
    }
}

/// A server child and the streams opened to it.
struct Fleet {
    child: Child,
    stdin: ChildStdin,
    url: String,
    host: bool,
    tally: Arc<Tally>,
    streams: u64,
    /// Keeps each stream's request side open.
    requests: Vec<mpsc::Sender<ClientMessage>>,
    published: u64,
}

impl Fleet {
    fn spawn(kind: &str) -> Fleet {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env(CHILD_ENV, kind)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a server process");
        let stdin = child.stdin.take().expect("child stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("child stdout"))
            .read_line(&mut line)
            .expect("the child's port");
        let port: u16 = line.trim().parse().expect("a port number");
        Fleet {
            child,
            stdin,
            url: format!("http://127.0.0.1:{port}"),
            host: kind == "host",
            tally: Arc::new(Tally::default()),
            streams: 0,
            requests: Vec::new(),
            published: 0,
        }
    }

    /// Opens streams until there are `n`, each having received its first
    /// message (a host's snapshot, the bare server's hello).
    fn grow(&mut self, rt: &Runtime, n: u64) {
        rt.block_on(async {
            while self.streams < n {
                let channel = common::bare_channel(&self.url).await;
                let (tx, rx) = mpsc::channel(4);
                if self.host {
                    tx.send(common::initial_sync("fanout"))
                        .await
                        .expect("queue the sync request");
                }
                let mut replies = HostServiceClient::new(channel)
                    .session(ReceiverStream::new(rx))
                    .await
                    .expect("open a stream")
                    .into_inner();
                let tally = self.tally.clone();
                tokio::spawn(async move {
                    let mut first = true;
                    while let Ok(Some(_)) = replies.message().await {
                        tally.count(first);
                        first = false;
                    }
                });
                self.requests.push(tx);
                self.streams += 1;
            }
            let streams = self.streams;
            self.tally
                .until(|t| t.ready.load(Ordering::Acquire) >= streams)
                .await;
        });
    }

    /// Publishes `n` messages, in chunks, each delivered to every stream
    /// before the next; how long that took.
    fn publish(&mut self, rt: &Runtime, n: u64) -> Duration {
        let started = Instant::now();
        let mut left = n;
        while left > 0 {
            let k = left.min(CHUNK);
            let target = self.tally.received.load(Ordering::Acquire) + k * self.streams;
            self.tally.target.store(target, Ordering::Release);
            writeln!(self.stdin, "publish {k}").expect("command the server");
            self.stdin.flush().expect("command the server");
            rt.block_on(
                self.tally
                    .until(|t| t.received.load(Ordering::Acquire) >= target),
            );
            left -= k;
            self.published += k;
        }
        started.elapsed()
    }

    /// The server's resident memory in bytes (`VmRSS`, which the kernel
    /// gives in KiB whatever the page size), or `None` where there is no
    /// `/proc` to read it from.
    fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
        Some(kib * 1024)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.requests.clear();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The measurements.
// ---------------------------------------------------------------------------

fn main() {
    if let Ok(kind) = std::env::var(CHILD_ENV) {
        run_child(&kind);
        return;
    }
    let mut c = common::criterion();
    let mut summary = Summary::new(SUITE);
    let rt = runtime();
    let mut host = Fleet::spawn("host");
    let mut bare = Fleet::spawn("bare");
    let sizes: &[u64] = if common::test_mode() {
        &[1]
    } else {
        &[1, 100, 1000]
    };
    let mut group = common::group(&mut c, SUITE);
    for &n in sizes {
        let memory_from = (n == 1000).then(|| (host.rss(), bare.rss(), host.streams));
        host.grow(&rt, n);
        bare.grow(&rt, n);
        if let Some((host_before, bare_before, from)) = memory_from {
            // Let the last connections settle before reading.
            std::thread::sleep(Duration::from_millis(500));
            let per = |after: u64, before: u64| after.saturating_sub(before) / (n - from);
            let grown = |after: Option<u64>, before: Option<u64>| {
                after.zip(before).map(|(a, b)| per(a, b) as usize)
            };
            let measured = grown(host.rss(), host_before).zip(grown(bare.rss(), bare_before));
            // Unreadable, or no growth at all (which would make the bound one
            // byte): a measurement gone wrong, reported as none, never as a
            // pass. The other rows are still written.
            let Some((host_per, bare_per)) = measured.filter(|&(_, bare)| bare > 0) else {
                eprintln!("fanout: server memory could not be measured; no idle_memory row");
                continue;
            };
            summary.bytes(BytesRow {
                name: &format!("{SUITE}/idle_memory/{n}"),
                bytes: host_per,
                baseline: &format!("{SUITE}/idle_memory_bare/{n}"),
                baseline_bytes: bare_per,
                // Bytes rows take an exclusive bound: ≤ 1.5× the bare figure.
                limit_bytes: Some((bare_per as f64 * MEMORY_LIMIT) as usize + 1),
                payload_bytes: None,
                state_bytes: None,
                note: "server RSS per idle stream (host session vs bare tonic stream), from 100 to 1000 streams",
            });
        }
        let (h, b, rt_ref) = (&mut host, &mut bare, &rt);
        let name = format!("{SUITE}/host/{n}");
        {
            let hp = &mut *h;
            group.bench_function(BenchmarkId::new("bare", n), |bch| {
                bch.iter_custom(|iters| b.publish(rt_ref, iters))
            });
            group.bench_function(BenchmarkId::new("host", n), |bch| {
                bch.iter_custom(|iters| hp.publish(rt_ref, iters))
            });
        }
        // A batch of at least one chunk: publishing waits for each chunk to
        // arrive everywhere, so a smaller batch measures that wait alone.
        let interleaved = common::batched_ratio_of(
            &name,
            CHUNK,
            |iters| bare.publish(&rt, iters),
            |iters| host.publish(&rt, iters),
        );
        summary.time(
            &name,
            Some(&format!("{SUITE}/bare/{n}")),
            interleaved,
            (n == 1000).then_some(DELIVERY_LIMIT),
            None,
            "time per ~200-byte publication delivered to every stream; ≤ 1.25× means ≥ 0.8× the bare server's deliveries per second",
        );
    }
    group.finish();
    c.final_summary();
    summary.write();
}
