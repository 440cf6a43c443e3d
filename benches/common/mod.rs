//! Conventions shared by every bench of this crate (see `benches/README.md`).
//!
//! - Absolute times drift between runs on a shared machine, so every timed
//!   figure is reported as a ratio against a baseline measured in the same
//!   process. A [`Summary`] collects rows naming their baseline; at the end
//!   of the run it reads the medians criterion just wrote and writes one JSON
//!   line per row to `target/cosystem-bench/<suite>.jsonl`, which
//!   `cargo run --example bench_report` renders as markdown.
//! - Ratios of criterion medians compare benchmarks run seconds apart; on a
//!   loaded machine the load changes in between. Where a verdict depends on
//!   a ratio, also measure it with [`interleaved_ratio`], which alternates
//!   short batches of baseline and subject so both see the same load.
//! - `COSYSTEM_BENCH_QUICK=1` shortens every group (see [`criterion`]).
//! - Benchmark ids are `group/function/parameter`, ASCII letters, digits and
//!   `_` only, so an id is also criterion's directory for it.

// Each bench target compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::pin::Pin;

use cosystem_worker::client::Client;
use cosystem_worker::wire::{
    ClientMessage, Header, HostMessage, SyncReason, SyncRequest, client_message,
};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, measurement::WallTime};
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

/// What a bare tonic server of `HostService` answers a session with.
pub type HostMessages = Pin<Box<dyn Stream<Item = Result<HostMessage, Status>> + Send>>;

/// A channel to the gRPC server at `url` with `GrpcConnector`'s settings
/// (TCP_NODELAY), for the bare tonic clients the benches compare against.
pub async fn bare_channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .expect("a valid url")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect to the server")
}

/// The first message of a bare client of a host: a request for a snapshot,
/// from `source`.
pub fn initial_sync(source: &str) -> ClientMessage {
    ClientMessage {
        header: Some(Header::v1("", source, "")),
        kind: Some(client_message::Kind::SyncRequest(SyncRequest {
            sync_id: 1,
            have_version: 0,
            reason: SyncReason::Initial as i32,
        })),
    }
}

/// Whether `COSYSTEM_BENCH_QUICK` asks for a short run.
pub fn quick() -> bool {
    std::env::var("COSYSTEM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A criterion configured for this crate: short in quick mode, modest
/// otherwise; command-line options still override both.
pub fn criterion() -> Criterion {
    let c = Criterion::default();
    let c = if quick() {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(600))
    } else {
        c.sample_size(30)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    };
    c.configure_from_args()
}

/// Opens a group with flat sampling: the same iteration count in every
/// sample, so a slow routine (a 10 MiB diff) needs sample-size iterations,
/// not the sample-size triangle number that linear sampling needs.
pub fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.sampling_mode(SamplingMode::Flat);
    group
}

/// The cargo target directory this bench was built in.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Where criterion writes its estimates (its own rule, minus the
/// `cargo metadata` call, which gives the same answer for this workspace).
fn criterion_dir() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("criterion"))
}

/// Whether criterion runs in test mode (`cargo test --benches`, or
/// `cargo bench -- --test`): every benchmark once, to show it works. Mirrors
/// criterion's own rule.
pub fn test_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    !has("--bench") || has("--test")
}

/// Criterion's options that take a value, so that [`selected`] can tell a
/// filter from an option's value.
const VALUED_OPTIONS: [&str; 20] = [
    "-s",
    "-b",
    "-c",
    "--colour",
    "--color",
    "--save-baseline",
    "--baseline",
    "--baseline-lenient",
    "--format",
    "--profile-time",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--plotting-backend",
    "--output-format",
];

/// Whether criterion will measure the benchmark `name` in this run: it is
/// not in test or `--profile-time` mode, and [`filtered_in`]. Work done
/// outside criterion's timing, such as an [`interleaved_ratio`], is skipped
/// for benchmarks that are not selected.
pub fn selected(name: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `--list` and `--ignored` measure nothing (criterion lists, or runs
    // no benchmark).
    let measuring = !args
        .iter()
        .any(|a| a.starts_with("--profile-time") || a == "--list" || a == "--ignored");
    !test_mode() && measuring && filtered_in(name)
}

/// The command line's filter, if any: its first argument that is neither
/// an option nor an option's value.
pub fn filter() -> Option<String> {
    let mut skip_value = false;
    for arg in std::env::args().skip(1) {
        if skip_value {
            skip_value = false;
        } else if arg.starts_with('-') {
            skip_value = VALUED_OPTIONS.contains(&arg.as_str());
        } else {
            return Some(arg);
        }
    }
    None
}

/// Whether criterion will run (or list) the benchmark `name` at all
/// (measured, or once in test mode): the command line's [`filter`], if
/// any, matches it, read as criterion reads it: a regular expression, or
/// with `--exact` the whole name.
pub fn filtered_in(name: &str) -> bool {
    let exact = std::env::args().any(|a| a == "--exact");
    match filter() {
        None => true,
        Some(f) if exact => name == f,
        Some(f) => regex::Regex::new(&f).is_ok_and(|r| r.is_match(name)),
    }
}

/// [`interleaved_ratio`] of `subject` (the benchmark `name`) against
/// `base`, or `None` when `name` is not [`selected`] in this run.
pub fn interleaved_ratio_of(
    name: &str,
    base: impl FnMut(u64) -> Duration,
    subject: impl FnMut(u64) -> Duration,
) -> Option<f64> {
    selected(name).then(|| interleaved_ratio(base, subject))
}

/// [`interleaved_ratio_of`] for operations run `depth` at a time: each
/// batch runs at least 32 pipelines' worth, so that filling and draining
/// the pipeline, which every batch pays once, stays a small part of it
/// (with 1 ms batches, 64 in flight was a few pipelines per batch, and the
/// ratio read up to twice the ratio of criterion's medians).
pub fn pipelined_ratio_of(
    name: &str,
    depth: u64,
    base: impl FnMut(u64) -> Duration,
    subject: impl FnMut(u64) -> Duration,
) -> Option<f64> {
    batched_ratio_of(name, 32 * depth, base, subject)
}

/// [`interleaved_ratio_of`] with batches of at least `min_n` iterations.
pub fn batched_ratio_of(
    name: &str,
    min_n: u64,
    base: impl FnMut(u64) -> Duration,
    subject: impl FnMut(u64) -> Duration,
) -> Option<f64> {
    selected(name).then(|| interleaved_ratio_at_least(min_n, base, subject))
}

/// `n` calls of the demo's `counter.increase(1)` through `client`, with at
/// most `depth` in flight; how long they took. One in flight is a plain
/// await per call, as a caller writes it.
pub async fn run_calls(client: Client, n: u64, depth: u64) -> Duration {
    let counter = client.module("counter");
    let call = || counter.call("increase", vec![json!(1)]);
    let started = Instant::now();
    if depth <= 1 {
        for _ in 0..n {
            call().await.expect("counter.increase succeeds");
        }
        return started.elapsed();
    }
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0;
    while sent < depth.min(n) {
        in_flight.push(call());
        sent += 1;
    }
    while let Some(outcome) = in_flight.next().await {
        outcome.expect("counter.increase succeeds");
        if sent < n {
            in_flight.push(call());
            sent += 1;
        }
    }
    started.elapsed()
}

/// The sizes to run: all of [`SIZES`], or in test mode the two smallest, so
/// that a debug build checks the bench without building 10 MiB states.
pub fn sizes() -> &'static [(&'static str, usize)] {
    if test_mode() { &SIZES[..2] } else { &SIZES }
}

/// Labelled state sizes every bench of state-dependent cost uses, smallest
/// (the baseline) first.
pub const SIZES: [(&str, usize); 4] = [
    ("1KiB", 1024),
    ("100KiB", 100 * 1024),
    ("1MiB", 1024 * 1024),
    ("10MiB", 10 * 1024 * 1024),
];

/// The label of the baseline size.
pub const BASE_SIZE: &str = SIZES[0].0;

/// The subject's time per iteration over the baseline's, as the median over
/// rounds of alternating batches (baseline-subject, then subject-baseline,
/// so a steady drift cancels out). Each closure runs its operation `n` times
/// and returns how long that took, excluding any setup.
///
/// Batches last about a millisecond (at least one iteration); rounds stop at
/// a count or a time budget, whichever comes first, after at least three.
pub fn interleaved_ratio(
    base: impl FnMut(u64) -> Duration,
    subject: impl FnMut(u64) -> Duration,
) -> f64 {
    interleaved_ratio_at_least(1, base, subject)
}

/// [`interleaved_ratio`] with batches of at least `min_n` iterations.
fn interleaved_ratio_at_least(
    min_n: u64,
    mut base: impl FnMut(u64) -> Duration,
    mut subject: impl FnMut(u64) -> Duration,
) -> f64 {
    let (max_rounds, budget) = if quick() {
        (40, Duration::from_millis(1500))
    } else {
        (200, Duration::from_secs(3))
    };
    // A batch takes at least 1 ms even at its fastest: one hiccup during
    // calibration must not leave a batch too small to amortise its start
    // (with 64 in flight, a batch of a few calls is all pipeline fill).
    let batch = |f: &mut dyn FnMut(u64) -> Duration| {
        let mut n = min_n.max(1);
        while f(n).min(f(n)) < Duration::from_millis(1) && n < 1 << 20 {
            n *= 2;
        }
        n
    };
    let (nb, ns) = (batch(&mut base), batch(&mut subject));
    let per_iter = |d: Duration, n: u64| d.as_secs_f64() / n as f64;
    let started = Instant::now();
    let mut ratios = Vec::new();
    while ratios.len() < max_rounds && (ratios.len() < 3 || started.elapsed() < budget) {
        let (b, s) = if ratios.len() % 2 == 0 {
            let b = base(nb);
            (b, subject(ns))
        } else {
            let s = subject(ns);
            (base(nb), s)
        };
        ratios.push(per_iter(s, ns) / per_iter(b, nb).max(f64::MIN_POSITIVE));
    }
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

enum Row {
    Time {
        name: String,
        baseline: Option<String>,
        interleaved: Option<f64>,
        limit: Option<f64>,
        state_bytes: Option<usize>,
        note: String,
    },
    Bytes {
        name: String,
        bytes: usize,
        baseline: String,
        baseline_bytes: usize,
        limit_bytes: Option<usize>,
        payload_bytes: Option<usize>,
        state_bytes: Option<usize>,
        note: String,
    },
}

/// A size in bytes to report, against a baseline size.
pub struct BytesRow<'a> {
    /// The row's name, `group/function/parameter`.
    pub name: &'a str,
    /// The size measured.
    pub bytes: usize,
    /// What it is compared with.
    pub baseline: &'a str,
    /// The baseline's size.
    pub baseline_bytes: usize,
    /// The exclusive upper bound on `bytes`, if there is a target.
    pub limit_bytes: Option<usize>,
    /// The part of `bytes` that is payload (the rest is envelope), if known.
    pub payload_bytes: Option<usize>,
    /// The size of the state involved, if any.
    pub state_bytes: Option<usize>,
    /// What the row shows.
    pub note: &'a str,
}

/// The rows one bench target reports, written at the end of its run.
pub struct Summary {
    suite: String,
    started: SystemTime,
    /// The commit built, read as the run starts.
    commit: String,
    rows: Vec<Row>,
}

impl Summary {
    /// A summary for the bench target `suite`; the run starts now, and only
    /// estimates criterion writes from now on are reported.
    pub fn new(suite: &str) -> Self {
        Self {
            suite: suite.to_owned(),
            started: SystemTime::now(),
            commit: commit(),
            rows: Vec::new(),
        }
    }

    /// Reports the timed benchmark `name` as a ratio of `baseline`'s median,
    /// and the same ratio measured by [`interleaved_ratio`] if given.
    /// `limit` is the highest acceptable ratio, if there is a target.
    pub fn time(
        &mut self,
        name: &str,
        baseline: Option<&str>,
        interleaved: Option<f64>,
        limit: Option<f64>,
        state_bytes: Option<usize>,
        note: &str,
    ) {
        self.rows.push(Row::Time {
            name: name.to_owned(),
            baseline: baseline.map(str::to_owned),
            interleaved,
            limit,
            state_bytes,
            note: note.to_owned(),
        });
    }

    /// Reports a size in bytes (counted, not timed) against a baseline size.
    pub fn bytes(&mut self, row: BytesRow<'_>) {
        self.rows.push(Row::Bytes {
            name: row.name.to_owned(),
            bytes: row.bytes,
            baseline: row.baseline.to_owned(),
            baseline_bytes: row.baseline_bytes,
            limit_bytes: row.limit_bytes,
            payload_bytes: row.payload_bytes,
            state_bytes: row.state_bytes,
            note: row.note.to_owned(),
        });
    }

    /// The median, in ns per iteration, criterion measured for `name` during
    /// this run; `None` if it was not measured in this run (filtered out, or
    /// criterion ran in test mode).
    fn median_ns(&self, name: &str) -> Option<f64> {
        let path = criterion_dir().join(name).join("new/estimates.json");
        let fresh = fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= self.started);
        if !fresh {
            return None;
        }
        let estimates: Value = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
        estimates["median"]["point_estimate"].as_f64()
    }

    /// Writes `target/cosystem-bench/<suite>.jsonl`: a `run` line, then one
    /// line per row. Writes nothing when no timed row was measured in this
    /// run, so a test-mode run never overwrites real results.
    pub fn write(self) {
        let mut lines = Vec::new();
        let mut measured = 0;
        for row in &self.rows {
            lines.push(match row {
                Row::Time {
                    name,
                    baseline,
                    interleaved,
                    limit,
                    state_bytes,
                    note,
                } => {
                    let median = self.median_ns(name);
                    let base = baseline.as_deref().and_then(|b| self.median_ns(b));
                    measured += usize::from(median.is_some());
                    let ratio = median.zip(base).map(|(m, b)| m / b);
                    json!({
                        "kind": "time", "suite": self.suite, "name": name,
                        "median_ns": median, "baseline": baseline,
                        "baseline_median_ns": base, "ratio": ratio,
                        "interleaved_ratio": interleaved, "limit": limit,
                        "state_bytes": state_bytes, "note": note,
                    })
                }
                Row::Bytes {
                    name,
                    bytes,
                    baseline,
                    baseline_bytes,
                    limit_bytes,
                    payload_bytes,
                    state_bytes,
                    note,
                } => json!({
                    "kind": "bytes", "suite": self.suite, "name": name,
                    "bytes": bytes, "baseline": baseline, "baseline_bytes": baseline_bytes,
                    "ratio": *bytes as f64 / (*baseline_bytes).max(1) as f64,
                    "limit_bytes": limit_bytes, "payload_bytes": payload_bytes,
                    "state_bytes": state_bytes, "note": note,
                }),
            });
        }
        if measured == 0 {
            eprintln!(
                "cosystem-bench: nothing measured in this run; {}.jsonl left as it was",
                self.suite
            );
            return;
        }
        let run = json!({
            "kind": "run", "suite": self.suite, "machine": machine(), "quick": quick(),
            "unix_time": self.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "commit": self.commit,
        });
        let dir = target_dir().join("cosystem-bench");
        let path = dir.join(format!("{}.jsonl", self.suite));
        // A row a filter left out of this run keeps what the last run that
        // measured it found, marked with that run, rather than being lost.
        let mut earlier = earlier_rows(&path);
        for line in &mut lines {
            let kept = line["name"].as_str().and_then(|n| earlier.remove(n));
            if let Some(kept) = kept
                && line["kind"] == "time"
                && line["median_ns"].is_null()
            {
                *line = kept;
            }
        }
        // Rows a filtered run did not even name (it left out their setup).
        // A run without a filter names every row there is: what it did not
        // name was renamed or removed, and goes.
        if filter().is_some() {
            lines.extend(earlier.into_values());
        }
        let written = fs::create_dir_all(&dir).and_then(|()| {
            let mut file = fs::File::create(&path)?;
            for line in std::iter::once(&run).chain(&lines) {
                writeln!(file, "{line}")?;
            }
            Ok(())
        });
        match written {
            Ok(()) => eprintln!(
                "cosystem-bench: wrote {} (render: cargo run --example bench_report)",
                path.display()
            ),
            Err(e) => eprintln!("cosystem-bench: cannot write {}: {e}", path.display()),
        }
    }
}

/// The timed rows a suite's file holds that were measured, by name, each
/// marked (`from_run`) with the run that measured it.
fn earlier_rows(path: &std::path::Path) -> std::collections::BTreeMap<String, Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut lines = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok());
    let run = lines.next().unwrap_or_default();
    let this_run = format!(
        "commit {} at Unix time {}",
        run["commit"].as_str().unwrap_or("unknown"),
        run["unix_time"].as_u64().unwrap_or(0)
    );
    lines
        .filter(|l| l["kind"] == "time" && !l["median_ns"].is_null())
        .filter_map(|mut l| {
            if l["from_run"].is_null() {
                l["from_run"] = json!(this_run);
            }
            Some((l["name"].as_str()?.to_owned(), l))
        })
        .collect()
}

/// The commit checked out as the bench starts, `-dirty` with uncommitted
/// changes to tracked files (or if that cannot be told); `unknown` outside
/// a git checkout.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head)
            if git(&["status", "--porcelain", "--untracked-files=no"])
                .is_none_or(|s| !s.is_empty()) =>
        {
            format!("{head}-dirty")
        }
        Some(head) => head,
        None => "unknown".to_owned(),
    }
}

/// A one-line description of the machine: CPU model and parallelism.
fn machine() -> String {
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores available, {}", std::env::consts::OS)
}
