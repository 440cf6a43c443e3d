//! What a call costs over gRPC, against a bare tonic echo of the same
//! messages.
//!
//! - `call`: `client.call("counter", "increase", [1])` through a `Client`
//!   over `GrpcConnector` to a `GrpcServer` serving the demo host (patch
//!   mode), on 127.0.0.1: call up, patch and result down, settled once the
//!   mirror applied the patch.
//! - `echo`: a bare tonic server of the same generated `HostService`
//!   (nothing but that service: no token check, health or reflection) that
//!   answers each `ClientMessage` with one `HostMessage`, and a bare tonic
//!   client awaiting each answer. The request is a call envelope as the
//!   client sends it, the answer a result envelope as the host sends it.
//!
//! `one`: one at a time, each awaited (latency; target ≤ 1.2× the echo).
//! `in_flight_64`: 64 kept in flight, time per call or echo (the inverse of
//! throughput). A call moves three messages and an echo two, so the target
//! "≥ 0.5× the echo's messages per second" is a time per call of at most
//! 3× the echo's.
//!
//! Server and client share one process and one runtime (two workers, the
//! machine's cores), both for the echo and for the call.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Summary, interleaved_ratio_of};
use cosystem_worker::client::{Client, ClientConfig};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::grpc::{GrpcConnector, GrpcServer};
use cosystem_worker::wire::host_service_client::HostServiceClient;
use cosystem_worker::wire::host_service_server::{HostService, HostServiceServer};
use cosystem_worker::wire::{
    Call, CallResult, ClientMessage, Header, HostMessage, call_result, client_message, host_message,
};
use criterion::{BenchmarkId, Criterion};
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

const SUITE: &str = "grpc";
/// The target: one call costs at most this many echo round trips.
const CALL_LIMIT: f64 = 1.2;
/// The target: ≥ 0.5× the echo's messages per second with 64 in flight,
/// as time per call over time per echo (3 messages a call, 2 an echo).
const PIPELINE_LIMIT: f64 = 3.0;
/// Messages kept in flight by the pipelined shape.
const DEPTH: u64 = 64;
/// A host epoch's length on the wire (32 hex digits).
const EPOCH: &str = "00112233445566778899aabbccddeeff";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
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

/// A call envelope as the client sends one.
fn call_envelope(call_id: u64) -> ClientMessage {
    ClientMessage {
        header: Some(Header::v1(EPOCH, "client", "")),
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

struct Echo;

type Replies = Pin<Box<dyn Stream<Item = Result<HostMessage, Status>> + Send>>;

#[tonic::async_trait]
impl HostService for Echo {
    type SessionStream = Replies;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Replies>, Status> {
        let replies = request.into_inner().map(|message| {
            message.map(|m| match m.kind {
                Some(client_message::Kind::Call(call)) => result_envelope(call.call_id),
                _ => result_envelope(0),
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// A bare tonic client on one echo stream.
#[derive(Clone)]
struct EchoClient {
    requests: mpsc::Sender<ClientMessage>,
    replies: Arc<Mutex<Streaming<HostMessage>>>,
}

impl EchoClient {
    fn new(rt: &Runtime) -> Self {
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("bound address");
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(
                Server::builder()
                    .add_service(HostServiceServer::new(Echo))
                    .serve_with_incoming(incoming),
            );
            // The same channel settings as GrpcConnector.
            let channel = Endpoint::from_shared(format!("http://{addr}"))
                .expect("url")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connect to the echo server");
            let (requests, outbound) = mpsc::channel(1024);
            let replies = HostServiceClient::new(channel)
                .session(ReceiverStream::new(outbound))
                .await
                .expect("open the echo stream")
                .into_inner();
            Self {
                requests,
                replies: Arc::new(Mutex::new(replies)),
            }
        })
    }

    /// `n` echoes with at most `depth` in flight.
    async fn run(self, n: u64, depth: u64) -> Duration {
        let mut replies = self.replies.lock().await;
        let started = Instant::now();
        let mut sent = 0;
        while sent < depth.min(n) {
            sent += 1;
            self.requests.send(call_envelope(sent)).await.expect("echo");
        }
        for _ in 0..n {
            replies.message().await.expect("echo").expect("a reply");
            if sent < n {
                sent += 1;
                self.requests.send(call_envelope(sent)).await.expect("echo");
            }
        }
        started.elapsed()
    }
}

// ---------------------------------------------------------------------------
// The subject: counter.increase(1) through a Client over gRPC.
// ---------------------------------------------------------------------------

fn grpc_client(rt: &Runtime) -> Client {
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
    let mut c = common::criterion();
    let mut summary = Summary::new(SUITE);
    measure(&mut c, &mut summary);
    c.final_summary();
    summary.write();
}

fn measure(c: &mut Criterion, summary: &mut Summary) {
    let rt = runtime();
    let echo = EchoClient::new(&rt);
    let client = grpc_client(&rt);
    let (rt, echo, client) = (&rt, &echo, &client);
    let mut group = common::group(c, SUITE);
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
        group.bench_function(BenchmarkId::new("echo", shape), |b| b.iter_custom(base));
        group.bench_function(BenchmarkId::new("call", shape), |b| b.iter_custom(subject));
        let name = format!("{SUITE}/call/{shape}");
        let interleaved = interleaved_ratio_of(&name, base, subject);
        summary.time(
            &name,
            Some(&format!("{SUITE}/echo/{shape}")),
            interleaved,
            Some(limit),
            None,
            note,
        );
    }
    group.finish();
}
