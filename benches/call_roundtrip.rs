//! What a call costs end to end over the in-memory transport, against the
//! cheapest async round trip tokio offers.
//!
//! - `memory_call`: `client.call("counter", "increase", [1])` on a demo host
//!   in patch mode, over `transport::memory`: the call leaves the client's
//!   core, the host runs the method and commits, publishes the patch, sends
//!   the result, and the future settles once the client's mirror has applied
//!   the patch (read-your-writes). Everything the async layer does is in:
//!   the client driver task, the host session task, both cores, JSON.
//! - `mpsc_pingpong`: a `u64` sent over a tokio `mpsc` channel to an echo
//!   task and back over another one, the baseline.
//!
//! Each is measured with one message in flight (`one`: latency) and with 64
//! in flight (`in_flight_64`: time per call at a pipeline depth of 64, the
//! inverse of throughput), in both runtime flavours: `current_thread`, and
//! `multi_thread` with two workers (the machine's cores). The measuring loop
//! runs in a spawned task, as an application's code would. Ratios are taken
//! between the same shape in the same flavour; the target is ≤ 10× for one
//! call in flight.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Summary;
use cosystem_worker::client::{Client, ClientConfig};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, SyncMode};
use cosystem_worker::transport::memory;
use criterion::{BenchmarkId, Criterion};
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, mpsc};

const SUITE: &str = "call_roundtrip";
/// The target: one in-memory call costs at most this many mpsc round trips.
const CALL_LIMIT: f64 = 10.0;
/// Messages kept in flight by the pipelined shape.
const DEPTH: u64 = 64;

/// A runtime of the given flavour (`current_thread` or `multi_thread`).
fn runtime(flavour: &str) -> Runtime {
    let mut builder = if flavour == "current_thread" {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    builder.enable_all().build().expect("a tokio runtime")
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
// The baseline: tokio mpsc to an echo task and back.
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct PingPong {
    to_echo: mpsc::Sender<u64>,
    from_echo: Arc<Mutex<mpsc::Receiver<u64>>>,
}

impl PingPong {
    fn new(rt: &Runtime) -> Self {
        // The same buffer as the memory transport's channels.
        let (to_echo, mut echo_in) = mpsc::channel::<u64>(memory::CAPACITY);
        let (echo_out, from_echo) = mpsc::channel::<u64>(memory::CAPACITY);
        rt.spawn(async move {
            while let Some(x) = echo_in.recv().await {
                if echo_out.send(x).await.is_err() {
                    break;
                }
            }
        });
        Self {
            to_echo,
            from_echo: Arc::new(Mutex::new(from_echo)),
        }
    }

    /// `n` round trips with at most `depth` in flight.
    async fn run(self, n: u64, depth: u64) -> Duration {
        let mut rx = self.from_echo.lock().await;
        let started = Instant::now();
        let mut sent = 0;
        while sent < depth.min(n) {
            self.to_echo.send(sent).await.expect("echo alive");
            sent += 1;
        }
        for _ in 0..n {
            rx.recv().await.expect("echo alive");
            if sent < n {
                self.to_echo.send(sent).await.expect("echo alive");
                sent += 1;
            }
        }
        started.elapsed()
    }
}

// ---------------------------------------------------------------------------
// The subject: counter.increase(1) through a Client over memory.
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Calls {
    _host: Host,
    client: Client,
}

impl Calls {
    fn new(rt: &Runtime) -> Self {
        rt.block_on(async {
            let host = Host::builder(demo::app("bench"))
                .sync(SyncMode::Patch)
                .sections(demo::DEFAULT_SECTIONS)
                .build();
            let (host_end, connector) = memory::pair();
            let serving = host.clone();
            tokio::spawn(async move { serving.serve(host_end).await });
            let client = Client::new(connector, ClientConfig::default());
            client.ready().await.expect("the client syncs");
            Self {
                _host: host,
                client,
            }
        })
    }
}

// ---------------------------------------------------------------------------
// The measurements.
// ---------------------------------------------------------------------------

fn measure(c: &mut Criterion, summary: &mut Summary, flavour: &str) {
    let rt = runtime(flavour);
    let pingpong = PingPong::new(&rt);
    let calls = Calls::new(&rt);
    // Borrowed, so the closures below are `Copy` and can be handed out twice.
    let (rt, pingpong, calls) = (&rt, &pingpong, &calls);
    let mut group = common::group(c, flavour);
    for (shape, depth) in [("one", 1), ("in_flight_64", DEPTH)] {
        let base = move |n| timed(rt, pingpong.clone().run(n, depth));
        let subject = move |n| timed(rt, common::run_calls(calls.client.clone(), n, depth));
        group.bench_function(BenchmarkId::new("mpsc_pingpong", shape), |b| {
            b.iter_custom(base)
        });
        group.bench_function(BenchmarkId::new("memory_call", shape), |b| {
            b.iter_custom(subject)
        });
        let name = format!("{flavour}/memory_call/{shape}");
        let interleaved = common::pipelined_ratio_of(&name, depth, base, subject);
        summary.time(
            &name,
            Some(&format!("{flavour}/mpsc_pingpong/{shape}")),
            interleaved,
            (depth == 1).then_some(CALL_LIMIT),
            None,
            if depth == 1 {
                "counter.increase(1) over memory, settled after catch-up, one in flight, vs a u64 mpsc ping-pong"
            } else {
                "the same with 64 calls in flight (time per call), vs 64 u64s in flight over mpsc"
            },
        );
    }
    group.finish();
}

fn main() {
    let mut c = common::criterion();
    let mut summary = Summary::new(SUITE);
    for flavour in ["current_thread", "multi_thread"] {
        measure(&mut c, &mut summary, flavour);
    }
    c.final_summary();
    summary.write();
}
