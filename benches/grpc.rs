//! What a call costs over gRPC, against a bare tonic echo of the same
//! messages, and where the difference goes.
//!
//! - `echo` (the baseline): a bare tonic server of the same generated
//!   `HostService` (nothing but that service: no token check, health or
//!   reflection) that answers each `ClientMessage` with one `HostMessage`,
//!   and a bare tonic client awaiting each answer. The request is a call
//!   envelope as the client sends it, the answer a result envelope as the
//!   host sends it.
//! - `call`: `client.call("counter", "increase", [1])` through a `Client`
//!   over `GrpcConnector` to a `GrpcServer` serving the demo host (patch
//!   mode), on 127.0.0.1: call up, patch and result down, settled once the
//!   mirror applied the patch.
//!
//! `one`: one at a time, each awaited (latency; target ≤ 1.2× the echo).
//! `in_flight_64`: 64 kept in flight, time per call or echo (the inverse of
//! throughput). A call moves three messages and an echo two, so the target
//! "≥ 0.5× the echo's messages per second" is a time per call of at most
//! 3× the echo's.
//!
//! Between the two, one in flight, six rows split a call's cost:
//!
//! - `echo_patch`: the bare server answering each call envelope with a
//!   patch-sized and a result-sized message (a call's three messages, no
//!   work): what the third message costs.
//! - `echo_patch_busy`: the same, the server first spinning for as long as
//!   the sans-IO `HostCore` takes to handle that call (decode, run
//!   `counter.increase`, commit, encode patch and result), measured hot in
//!   this run: what that much work costs once it sits between a request
//!   and its answer (in the real server it costs more: cold caches, the
//!   session's lock and wake-ups).
//! - `cores_floor`: the same, the bare client also spinning after each
//!   result for as long as the sans-IO `ClientCore` takes for that call
//!   (make and encode it, decode and apply the patch, decode the result,
//!   settle), measured hot in this run: the protocol's own work on both
//!   sides and no other cost, a floor for any driver built on these cores.
//! - `host_raw`: the bare client against a real `GrpcServer` serving the
//!   demo host, synced once, then calling and reading up to each result
//!   (patch, then result): the whole server side, without the `Client`.
//! - `link_raw`: `host_raw`'s call envelopes sent through the link a
//!   `Client` uses (`GrpcConnector`), without a `ClientCore`: what the link
//!   costs over `host_raw`, and what the client core costs in place under
//!   `client_inline`.
//! - `client_inline`: a `ClientCore` driven by the measuring task itself
//!   over the link a `Client` uses (`GrpcConnector`) to the same server:
//!   the protocol's client side with no driver task, channel or lock of its
//!   own. What the `Client` adds is the gap between this row and `call`.
//!
//! Servers and clients share one process and one runtime: two workers (the
//! machine's cores) for the rows above, and again every row on one
//! current-thread runtime (`…_current_thread`), where no hand-off between
//! tasks crosses threads. Targets apply in both.
//!
//! The deployment shape (`…_process`): `echo` and `call`, one in flight and
//! 64, with both servers in one child process of their own on the runtime
//! `cosystem-worker host` uses (one worker per core), and the clients in
//! this process on two workers: host and client are separate processes, as
//! deployed, and the bare echo server shares the host's process, runtime and
//! placement, so the ratio compares the two servers alike. Targets apply.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{HostMessages, Summary, interleaved_ratio_of};
use cosystem_worker::client::{Client, ClientConfig, ClientCore, ClientEvent};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, HostConfig, HostCore, PeerOptions, SyncMode};
use cosystem_worker::transport::grpc::{GrpcConnector, GrpcServer};
use cosystem_worker::transport::{ClientLink, Connector, HostInput};
use cosystem_worker::wire::host_service_client::HostServiceClient;
use cosystem_worker::wire::host_service_server::{HostService, HostServiceServer};
use cosystem_worker::wire::{
    Call, CallResult, ClientMessage, Header, HostMessage, Patch, call_result, client_message,
    host_message,
};
use criterion::{BenchmarkId, Criterion};
use futures::{SinkExt, StreamExt};
use prost::Message;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

const SUITE: &str = "grpc";
/// The target: one call costs at most this many echo round trips.
const CALL_LIMIT: f64 = 1.2;
/// The target: ≥ 0.5× the echo's messages per second with 64 in flight,
/// as time per call over time per echo (3 messages a call, 2 an echo).
const PIPELINE_LIMIT: f64 = 3.0;
/// Messages kept in flight by the pipelined shape.
const DEPTH: u64 = 64;
/// Set in the environment of the child process that serves the
/// `…_process` rows.
const CHILD_ENV: &str = "COSYSTEM_BENCH_GRPC_SERVERS";
/// A host epoch's length on the wire (32 hex digits).
const EPOCH: &str = "00112233445566778899aabbccddeeff";

/// The runtime flavours measured: two workers (the machine's cores), the
/// verdict rows' setting; and one current thread, where no hand-off between
/// tasks crosses threads.
#[derive(Clone, Copy)]
enum Flavour {
    MultiThread,
    CurrentThread,
}

impl Flavour {
    fn runtime(self) -> Runtime {
        match self {
            Flavour::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
            Flavour::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        }
        .expect("a tokio runtime")
    }

    /// A row's note, saying the runtime when it is not the default.
    fn note(self, note: &str) -> String {
        match self {
            Flavour::MultiThread => note.to_owned(),
            Flavour::CurrentThread => {
                format!("{note}; servers and clients on one current-thread runtime")
            }
        }
    }

    /// The benchmark parameter for `shape` in this flavour.
    fn shape(self, shape: &str) -> String {
        match self {
            Flavour::MultiThread => shape.to_owned(),
            Flavour::CurrentThread => format!("{shape}_current_thread"),
        }
    }
}

/// Runs `f` as a spawned task on `rt` and returns what it measured.
fn timed<F>(rt: &Runtime, f: F) -> Duration
where
    F: Future<Output = Duration> + Send + 'static,
{
    rt.block_on(rt.spawn(f))
        .expect("the measuring task completes")
}

// ---------------------------------------------------------------------------
// The baseline: a bare tonic echo.
// ---------------------------------------------------------------------------

/// A call envelope as the client sends one, made against `epoch`.
fn call_envelope(epoch: &str, call_id: u64) -> ClientMessage {
    ClientMessage {
        header: Some(Header::v1(epoch, "client", "")),
        kind: Some(client_message::Kind::Call(Call {
            call_id,
            module: "counter".to_owned(),
            method: "increase".to_owned(),
            args_json: "[1]".to_owned(),
        })),
    }
}

/// A result envelope as the host sends one.
fn result_envelope(call_id: u64) -> HostMessage {
    HostMessage {
        header: Some(Header::v1(EPOCH, "host", "client")),
        kind: Some(host_message::Kind::Result(CallResult {
            call_id,
            state_version: 100_000,
            outcome: Some(call_result::Outcome::ValueJson("100000".to_owned())),
        })),
    }
}

/// A patch envelope as the host publishes `counter.increase(1)`.
fn patch_envelope(version: u64) -> HostMessage {
    HostMessage {
        header: Some(Header::v1(EPOCH, "host", "")),
        kind: Some(host_message::Kind::Patch(Patch {
            base_version: version - 1,
            version,
            patch_json: format!(
                r#"[{{"op":"replace","path":"/counter/count","value":{version}}}]"#
            ),
            sync_id: 0,
        })),
    }
}

/// How a bare server answers each call envelope.
#[derive(Clone, Copy)]
enum Reply {
    /// With a result: the echo.
    Result,
    /// With a patch and a result, after spinning for `busy`.
    PatchAndResult { busy: Duration },
}

struct Bare {
    reply: Reply,
}

#[tonic::async_trait]
impl HostService for Bare {
    type SessionStream = HostMessages;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<HostMessages>, Status> {
        let reply = self.reply;
        let replies = request.into_inner().flat_map(move |message| {
            let id = match message {
                Ok(ClientMessage {
                    kind: Some(client_message::Kind::Call(call)),
                    ..
                }) => call.call_id,
                _ => 0,
            };
            let answers = match reply {
                Reply::Result => vec![Ok(result_envelope(id))],
                Reply::PatchAndResult { busy } => {
                    spin(busy);
                    vec![Ok(patch_envelope(id + 1)), Ok(result_envelope(id))]
                }
            };
            futures::stream::iter(answers)
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Keeps this thread busy for `time`.
fn spin(time: Duration) {
    let started = Instant::now();
    while started.elapsed() < time {
        std::hint::spin_loop();
    }
}

/// Starts a bare server answering with `reply`; its URL.
fn bare_server(rt: &Runtime, reply: Reply) -> String {
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(
            Server::builder()
                .add_service(HostServiceServer::new(Bare { reply }))
                .serve_with_incoming(incoming),
        );
        format!("http://{addr}")
    })
}

/// A bare tonic client on one stream, sending call envelopes.
#[derive(Clone)]
struct RawClient {
    epoch: Arc<str>,
    /// Spun after each result by [`RawClient::run_to_results`].
    busy: Duration,
    requests: mpsc::Sender<ClientMessage>,
    replies: Arc<Mutex<Streaming<HostMessage>>>,
}

impl RawClient {
    /// A client of the server at `url`, calling against [`EPOCH`].
    fn connect(rt: &Runtime, url: &str) -> Self {
        rt.block_on(async {
            let channel = common::bare_channel(url).await;
            let (requests, outbound) = mpsc::channel(1024);
            let replies = HostServiceClient::new(channel)
                .session(ReceiverStream::new(outbound))
                .await
                .expect("open the stream")
                .into_inner();
            Self {
                epoch: Arc::from(EPOCH),
                busy: Duration::ZERO,
                requests,
                replies: Arc::new(Mutex::new(replies)),
            }
        })
    }

    /// Asks a host for a snapshot, so that its calls bring patches too, and
    /// calls against the epoch the snapshot carries.
    fn sync(mut self, rt: &Runtime) -> Self {
        rt.block_on(async {
            let request = common::initial_sync("client");
            self.requests.send(request).await.expect("sync");
            let snapshot = self
                .replies
                .lock()
                .await
                .message()
                .await
                .expect("sync")
                .expect("a snapshot");
            let epoch = snapshot.header.map(|h| h.epoch).unwrap_or_default();
            self.epoch = Arc::from(epoch.as_str());
        });
        self
    }

    /// `n` echoes with at most `depth` in flight.
    async fn run(self, n: u64, depth: u64) -> Duration {
        let mut replies = self.replies.lock().await;
        let started = Instant::now();
        let mut sent = 0;
        while sent < depth.min(n) {
            sent += 1;
            let request = call_envelope(&self.epoch, sent);
            self.requests.send(request).await.expect("echo");
        }
        for _ in 0..n {
            replies.message().await.expect("echo").expect("a reply");
            if sent < n {
                sent += 1;
                let request = call_envelope(&self.epoch, sent);
                self.requests.send(request).await.expect("echo");
            }
        }
        started.elapsed()
    }

    /// Spins for `busy` after each result in [`RawClient::run_to_results`].
    fn busy(mut self, busy: Duration) -> Self {
        self.busy = busy;
        self
    }

    /// `n` calls one at a time, each read up to its result.
    async fn run_to_results(self, n: u64) -> Duration {
        let mut replies = self.replies.lock().await;
        let started = Instant::now();
        for id in 1..=n {
            let request = call_envelope(&self.epoch, id);
            self.requests.send(request).await.expect("call");
            loop {
                let answer = replies.message().await.expect("read").expect("an answer");
                if let Some(host_message::Kind::Result(result)) = answer.kind {
                    assert!(
                        matches!(result.outcome, Some(call_result::Outcome::ValueJson(_))),
                        "the call succeeds: {result:?}"
                    );
                    break;
                }
            }
            spin(self.busy);
        }
        started.elapsed()
    }
}

/// The protocol's own work for one `counter.increase(1)`, measured hot in
/// the sans-IO cores: what the host takes (decode the call, run it, commit,
/// encode the patch and the result) and what the client takes (make and
/// encode the call, then decode the patch and the result, apply the patch
/// and settle the call). Each the median of 15 batches of 2000.
struct CoreTimes {
    host: Duration,
    client: Duration,
}

fn core_call_times() -> CoreTimes {
    const BATCH: u64 = 2000;
    const BATCHES: u64 = 15;
    let config = HostConfig {
        sync: SyncMode::Patch,
        sections: Some(
            demo::DEFAULT_SECTIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        ),
        ..HostConfig::default()
    };
    let mut host = HostCore::new(config, demo::app("bench"), EPOCH);
    let peer = host
        .connect(PeerOptions {
            peer_id: "client".into(),
            publications: true,
        })
        .expect("one session");
    let median = |mut batches: Vec<Duration>| {
        batches.sort();
        batches[batches.len() / 2]
    };
    let now = Instant::now();
    let mut client = ClientCore::new(ClientConfig::default(), now);
    // The host's side, timed; its answers are kept for the client's side.
    let mut answers: Vec<Vec<bytes::Bytes>> = Vec::new();
    let exchange = |host: &mut HostCore, call: &[u8], keep: &mut Vec<Vec<bytes::Bytes>>| {
        host.handle_bytes(peer, call).expect("a valid message");
        let mut frames = Vec::new();
        while let Some(frame) = host.poll_transmit(peer) {
            frames.push(frame.encoded().clone());
        }
        keep.push(frames);
    };
    let sync = client
        .poll_transmit()
        .expect("the initial sync")
        .encode_to_vec();
    exchange(&mut host, &sync, &mut answers);
    let host_time = median(
        (0..BATCHES)
            .map(|batch| {
                let calls: Vec<Vec<u8>> = (0..BATCH)
                    .map(|i| call_envelope(EPOCH, batch * BATCH + i + 1).encode_to_vec())
                    .collect();
                let started = Instant::now();
                for call in &calls {
                    exchange(&mut host, call, &mut answers);
                }
                started.elapsed() / BATCH as u32
            })
            .collect(),
    );
    // The client's side: the same calls, answered with the host's frames.
    let mut answers = answers.into_iter();
    for frame in answers.next().expect("the snapshot") {
        client.handle_message(now, HostMessage::decode(frame).expect("a snapshot"));
    }
    while client.poll_event().is_some() {}
    let args = [serde_json::json!(1)];
    let client_time = median(
        (0..BATCHES)
            .map(|_| {
                let batch: Vec<Vec<bytes::Bytes>> = answers.by_ref().take(BATCH as usize).collect();
                let started = Instant::now();
                for frames in batch {
                    client
                        .call("counter", "increase", &args, None)
                        .expect("a call");
                    let call = client.poll_transmit().expect("the call");
                    std::hint::black_box(call.encode_to_vec());
                    // As the gRPC client hands them over: bytes, read in place.
                    for frame in frames {
                        client.handle_bytes(now, &frame).expect("an answer");
                    }
                    let mut settled = false;
                    while let Some(event) = client.poll_event() {
                        settled |= matches!(event, ClientEvent::Settled { outcome: Ok(_), .. });
                    }
                    assert!(settled, "the replayed call settles");
                }
                started.elapsed() / BATCH as u32
            })
            .collect(),
    );
    CoreTimes {
        host: host_time,
        client: client_time,
    }
}

// ---------------------------------------------------------------------------
// The subject: counter.increase(1) through a Client over gRPC.
// ---------------------------------------------------------------------------

/// Starts a `GrpcServer` serving the demo host (patch mode); its URL.
fn host_server(rt: &Runtime) -> String {
    rt.block_on(async {
        let host = Host::builder(demo::app("bench"))
            .sync(SyncMode::Patch)
            .sections(demo::DEFAULT_SECTIONS)
            .build();
        let server = GrpcServer::builder(host)
            .bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let url = format!("http://{}", server.local_addr());
        tokio::spawn(server.serve(std::future::pending()));
        url
    })
}

/// The servers of the `…_process` rows, in a child process.
struct ServerProcess {
    child: Child,
    echo_url: String,
    host_url: String,
}

impl ServerProcess {
    /// Starts this bench binary as [`run_servers`] and reads its two URLs.
    fn spawn() -> Self {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the server process");
        // Read on a thread of its own, so that a child that never prints
        // fails the bench instead of hanging it (and CI's test mode).
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let url = || {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("a URL from the server process within a minute")
        };
        let (echo_url, host_url) = (url(), url());
        Self {
            child,
            echo_url,
            host_url,
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child process: a bare echo server and a host server on one runtime
/// built as `cosystem-worker host` builds its own (one worker per core),
/// serving until stdin closes.
fn run_servers() {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let echo = bare_server(&rt, Reply::Result);
    let host = host_server(&rt);
    println!("{echo}\n{host}");
    let _ = std::io::stdin().lock().lines().count();
}

/// A `ClientCore` driven by the measuring task itself over the link a
/// `Client` would use (`GrpcConnector`): a client with no driver task, no
/// channels and no locks of its own, to show what the `Client` adds beyond
/// its core.
#[derive(Clone)]
struct InlineClient(Arc<Mutex<(ClientCore, ClientLink)>>);

impl InlineClient {
    /// A synced inline client of the host server at `url`.
    fn connect(rt: &Runtime, url: &str) -> Self {
        rt.block_on(async {
            let connector = GrpcConnector::new(url.to_owned()).expect("url");
            let mut link = connector.connect().await.expect("a link");
            let mut core = ClientCore::new(ClientConfig::default(), Instant::now());
            let sync = core.poll_transmit().expect("the initial sync");
            link.sink.send(sync).await.expect("the sync is sent");
            while !Self::take(&mut core, &mut link)
                .await
                .iter()
                .any(|e| matches!(e, ClientEvent::Ready { .. }))
            {}
            Self(Arc::new(Mutex::new((core, link))))
        })
    }

    /// Hands the core the link's next envelope; the events that follow.
    async fn take(core: &mut ClientCore, link: &mut ClientLink) -> Vec<ClientEvent> {
        let input = link
            .stream
            .next()
            .await
            .expect("open")
            .expect("an envelope");
        // As the Client takes it: bytes read in place.
        match input {
            HostInput::Encoded(bytes) => core
                .handle_bytes(Instant::now(), &bytes)
                .expect("a HostMessage"),
            other => core.handle_message(Instant::now(), other.into_message().expect("decoded")),
        }
        std::iter::from_fn(|| core.poll_event()).collect()
    }

    /// `n` calls one at a time, each until it settles.
    async fn run(self, n: u64) -> Duration {
        let mut guard = self.0.lock().await;
        let (core, link) = &mut *guard;
        let args = [serde_json::json!(1)];
        let started = Instant::now();
        for _ in 0..n {
            core.call("counter", "increase", &args, None)
                .expect("a call");
            let call = core.poll_transmit().expect("the call");
            link.sink.send(call).await.expect("the call is sent");
            while !Self::take(core, link)
                .await
                .iter()
                .any(|e| matches!(e, ClientEvent::Settled { outcome: Ok(_), .. }))
            {}
        }
        started.elapsed()
    }
}

/// The link a `Client` uses (`GrpcConnector`), driven by the measuring
/// task with pre-built call envelopes and no `ClientCore`: between
/// `host_raw`'s bare stream and `client_inline`'s core.
#[derive(Clone)]
struct LinkClient {
    epoch: Arc<str>,
    link: Arc<Mutex<ClientLink>>,
}

impl LinkClient {
    /// A link to the host server at `url`, synced once.
    fn connect(rt: &Runtime, url: &str) -> Self {
        rt.block_on(async {
            let connector = GrpcConnector::new(url.to_owned()).expect("url");
            let mut link = connector.connect().await.expect("a link");
            let sync = common::initial_sync("client");
            link.sink.send(sync).await.expect("the sync is sent");
            let snapshot = Self::next(&mut link).await;
            let epoch = snapshot.header.map(|h| h.epoch).unwrap_or_default();
            Self {
                epoch: Arc::from(epoch.as_str()),
                link: Arc::new(Mutex::new(link)),
            }
        })
    }

    /// The link's next envelope, decoded as `host_raw`'s bare client has
    /// tonic decode it.
    async fn next(link: &mut ClientLink) -> HostMessage {
        link.stream
            .next()
            .await
            .expect("open")
            .expect("an envelope")
            .into_message()
            .expect("a HostMessage")
    }

    /// `n` calls one at a time, each read up to its result.
    async fn run(self, n: u64) -> Duration {
        let mut link = self.link.lock().await;
        let started = Instant::now();
        for id in 1..=n {
            let call = call_envelope(&self.epoch, id);
            link.sink.send(call).await.expect("the call is sent");
            while !matches!(
                Self::next(&mut link).await.kind,
                Some(host_message::Kind::Result(_))
            ) {}
        }
        started.elapsed()
    }
}

/// A synced `Client` of the host server at `url`.
fn grpc_client(rt: &Runtime, url: String) -> Client {
    rt.block_on(async {
        let connector = GrpcConnector::new(url).expect("url");
        let client = Client::new(connector, ClientConfig::default());
        client.ready().await.expect("the client syncs");
        client
    })
}

// ---------------------------------------------------------------------------
// The measurements.
// ---------------------------------------------------------------------------

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        run_servers();
        return;
    }
    let mut c = common::criterion();
    let mut summary = Summary::new(SUITE);
    let cores = core_call_times();
    for flavour in [Flavour::MultiThread, Flavour::CurrentThread] {
        measure(&mut c, &mut summary, flavour, &cores);
    }
    measure_across_processes(&mut c, &mut summary);
    c.final_summary();
    summary.write();
}

fn measure(c: &mut Criterion, summary: &mut Summary, flavour: Flavour, cores: &CoreTimes) {
    let rt = flavour.runtime();
    let echo = RawClient::connect(&rt, &bare_server(&rt, Reply::Result));
    let echo_patch = RawClient::connect(
        &rt,
        &bare_server(
            &rt,
            Reply::PatchAndResult {
                busy: Duration::ZERO,
            },
        ),
    );
    let busy = Reply::PatchAndResult { busy: cores.host };
    let echo_patch_busy = RawClient::connect(&rt, &bare_server(&rt, busy));
    let cores_floor = RawClient::connect(&rt, &bare_server(&rt, busy)).busy(cores.client);
    let host_raw = RawClient::connect(&rt, &host_server(&rt)).sync(&rt);
    let client = grpc_client(&rt, host_server(&rt));
    let (rt, echo, client) = (&rt, &echo, &client);
    let mut group = common::group(c, SUITE);
    let busy_note = format!(
        "the bare server answering with a patch and a result after spinning {} ns, the sans-IO HostCore's time for that call measured hot in this run: what that much work between request and answer costs",
        cores.host.as_nanos()
    );
    let floor_note = format!(
        "the bare server spinning {} ns (the HostCore's time) before answering with a patch and a result, and the bare client spinning {} ns (the ClientCore's time for the same call, measured hot in this run) after each result: a call with the protocol's own work and no other cost",
        cores.host.as_nanos(),
        cores.client.as_nanos()
    );
    for (row, raw, note) in [
        (
            "echo_patch",
            echo_patch,
            "the bare server answering each call envelope with a patch and a result (a call's three messages, no work)",
        ),
        ("echo_patch_busy", echo_patch_busy, busy_note.as_str()),
        ("cores_floor", cores_floor, floor_note.as_str()),
        (
            "host_raw",
            host_raw,
            "the bare client against a real GrpcServer serving the demo host, reading each call's patch and result: the whole server side, without the Client",
        ),
    ] {
        let raw = &raw;
        let subject = move |n| timed(rt, raw.clone().run_to_results(n));
        one_in_flight_row(&mut group, summary, rt, echo, flavour, row, note, subject);
    }
    let link = &LinkClient::connect(rt, &host_server(rt));
    let subject = move |n| timed(rt, link.clone().run(n));
    let note = "the bare client's call envelopes through the link a Client uses (GrpcConnector), each read up to its result, with no ClientCore: the link's cost is the gap to `host_raw`, the client core's in place the gap to `client_inline`";
    one_in_flight_row(
        &mut group, summary, rt, echo, flavour, "link_raw", note, subject,
    );
    let inline = &InlineClient::connect(rt, &host_server(rt));
    let subject = move |n| timed(rt, inline.clone().run(n));
    let note = "counter.increase(1) from a ClientCore driven by the measuring task itself over the link a Client uses (GrpcConnector), with no driver task: what the Client adds is the gap between this row and `call`";
    one_in_flight_row(
        &mut group,
        summary,
        rt,
        echo,
        flavour,
        "client_inline",
        note,
        subject,
    );
    call_rows(&mut group, summary, rt, echo, client, |shape, note| {
        (flavour.shape(shape), flavour.note(note))
    });
    group.finish();
}

/// One row of `subject`, one in flight, against the echo one at a time,
/// with its interleaved ratio recorded.
#[allow(clippy::too_many_arguments)]
fn one_in_flight_row(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    summary: &mut Summary,
    rt: &Runtime,
    echo: &RawClient,
    flavour: Flavour,
    row: &str,
    note: &str,
    subject: impl Fn(u64) -> Duration + Copy,
) {
    let base = move |n| timed(rt, echo.clone().run(n, 1));
    let one = flavour.shape("one");
    group.bench_function(BenchmarkId::new(row, &one), |b| b.iter_custom(subject));
    let name = format!("{SUITE}/{row}/{one}");
    let interleaved = interleaved_ratio_of(&name, base, subject);
    summary.time(
        &name,
        Some(&format!("{SUITE}/echo/{one}")),
        interleaved,
        None,
        None,
        &flavour.note(note),
    );
}

/// The `…_process` rows: both servers in a child process, the clients here
/// on two workers.
fn measure_across_processes(c: &mut Criterion, summary: &mut Summary) {
    // No server process for rows a filter leaves out.
    let wanted = ["echo", "call"].iter().any(|kind| {
        ["one", "in_flight_64"]
            .iter()
            .any(|shape| common::filtered_in(&format!("{SUITE}/{kind}/{shape}_process")))
    });
    if !wanted {
        return;
    }
    let servers = ServerProcess::spawn();
    let rt = Flavour::MultiThread.runtime();
    let echo = RawClient::connect(&rt, &servers.echo_url);
    let client = grpc_client(&rt, servers.host_url.clone());
    let mut group = common::group(c, SUITE);
    call_rows(&mut group, summary, &rt, &echo, &client, |shape, note| {
        (
            format!("{shape}_process"),
            format!(
                "{note}; the host and the bare echo server in a process of their own on the host's runtime (a worker per core), the clients in this one"
            ),
        )
    });
    group.finish();
}

/// The `call` rows against the `echo` on `rt`, one in flight and
/// [`DEPTH`]; `label` turns a shape and a note into the rows' parameter and
/// note.
fn call_rows(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    summary: &mut Summary,
    rt: &Runtime,
    echo: &RawClient,
    client: &Client,
    label: impl Fn(&str, &str) -> (String, String),
) {
    for (shape, depth, limit, note) in [
        (
            "one",
            1,
            CALL_LIMIT,
            "counter.increase(1) over gRPC on loopback, one in flight, vs a bare tonic echo of a call-sized request and a result-sized reply",
        ),
        (
            "in_flight_64",
            DEPTH,
            PIPELINE_LIMIT,
            "64 in flight, time per call vs per echo; ≤ 3× means ≥ 0.5× the echo's messages per second (a call moves 3 messages, an echo 2)",
        ),
    ] {
        let base = move |n| timed(rt, echo.clone().run(n, depth));
        let subject = move |n| timed(rt, common::run_calls(client.clone(), n, depth));
        let (shape, note) = label(shape, note);
        group.bench_function(BenchmarkId::new("echo", &shape), |b| b.iter_custom(base));
        group.bench_function(BenchmarkId::new("call", &shape), |b| b.iter_custom(subject));
        let name = format!("{SUITE}/call/{shape}");
        let interleaved = common::pipelined_ratio_of(&name, depth, base, subject);
        summary.time(
            &name,
            Some(&format!("{SUITE}/echo/{shape}")),
            interleaved,
            Some(limit),
            None,
            &note,
        );
    }
}
