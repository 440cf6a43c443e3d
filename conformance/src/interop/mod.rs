//! The host interop runner: tests a host implementation, in any language,
//! as one or more raw clients: streams of its gRPC `Session` method
//! (spec/PROTOCOL.md §17.2), or connections to its framed-stream listener
//! (§17.3).
//!
//! The host under test serves the demo app (§19) and is started by whoever
//! runs the suite; [`run`] connects to it, plays every case of
//! [`cases::CASES`] that applies to the transport (or those selected), each
//! within a time limit, and reports.

pub mod cases;
pub mod codec;
pub mod framed;
pub mod json_rules;
pub mod peer;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;

use self::cases::{CaseOptions, Stop};
use self::framed::FramedAddress;
use self::peer::{Shared, Target, Transport};
use crate::report::{Outcome, Report, run_time};
use crate::select::Selection;
use crate::vectors::Role;

/// How to reach and test a host.
#[derive(Debug, Clone)]
pub struct HostRun {
    /// The host's URL: `http://127.0.0.1:50051` for gRPC (see
    /// [`host_url`]), `tcp://HOST:PORT` or `unix:PATH` for framed streams.
    pub url: String,
    /// A bearer token to present, if the host requires one.
    pub token: Option<String>,
    /// A string every token of the host's `secret` module contains; no
    /// byte the host sends may contain it.
    pub secret_marker: Option<String>,
    /// The cases to play.
    pub select: Selection,
    /// Cases expected to fail: run, and reported XFAIL or XPASS.
    pub known_failures: BTreeSet<String>,
    /// Cases not to run at all, reported SKIP.
    pub skip: BTreeSet<String>,
    /// The longest any single wait may last.
    pub step_timeout: Duration,
    /// The longest a whole case may last.
    pub case_timeout: Duration,
    /// Stop playing cases once a required one has failed; the rest are
    /// reported SKIP.
    pub fail_fast: bool,
    /// How long to keep trying the first connection before giving up (a
    /// host started just before the run may not accept yet); zero, once.
    pub wait: Duration,
    /// Settings some cases depend on.
    pub options: CaseOptions,
}

impl HostRun {
    /// A run against `url` with the default limits (5 s per wait, 60 s per
    /// case) and nothing else configured.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            secret_marker: None,
            select: Selection::default(),
            known_failures: BTreeSet::new(),
            skip: BTreeSet::new(),
            step_timeout: Duration::from_secs(5),
            case_timeout: Duration::from_secs(60),
            wait: Duration::ZERO,
            fail_fast: false,
            options: CaseOptions::default(),
        }
    }
}

/// Checks that every name given refers to a host interop case that
/// applies to the run's transport, and that the selection is not empty.
pub fn check_names(run: &HostRun) -> Result<(), String> {
    let transport = target(&run.url, run.step_timeout)?.transport();
    if let Some(name) = run
        .select
        .names
        .iter()
        .find(|n| cases::find(n).is_some_and(|c| !c.runs_over(transport)))
    {
        return Err(format!(
            "host case {name} does not run over {transport}: {}",
            run.url
        ));
    }
    let unknown: Vec<&String> = run
        .select
        .names
        .iter()
        .chain(&run.known_failures)
        .chain(&run.skip)
        .filter(|n| cases::find(n).is_none())
        .collect();
    if unknown.is_empty() {
        if cases::CASES
            .iter()
            .any(|c| c.runs_over(transport) && run.select.includes(c.name, c.tier))
        {
            Ok(())
        } else {
            Err("no host case matches the selection".to_owned())
        }
    } else {
        Err(format!(
            "unknown host case(s): {}",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Plays one case in a task of its own, so that a panic is one case's
/// failure and an abandoned case cannot keep running.
async fn run_one(
    config: &HostRun,
    shared: &Arc<Shared>,
    case: &'static cases::HostCaseDef,
) -> Outcome {
    // What an earlier case waited for is not this one's.
    let _ = shared.take_waiting();
    let task = tokio::spawn({
        let shared = shared.clone();
        let options = config.options;
        async move { cases::run_case(case.name, &shared, options).await }
    });
    let abort = task.abort_handle();
    match tokio::time::timeout(config.case_timeout, task).await {
        Ok(Ok(Ok(()))) => Outcome::Pass,
        Ok(Ok(Err(Stop::Fail(why)))) => Outcome::Fail(why),
        Ok(Ok(Err(Stop::Skip(why)))) => Outcome::Skip(why),
        Ok(Err(e)) => Outcome::Fail(format!("the case panicked: {e}")),
        Err(_) => {
            // Read before the abort, whose drop of the case forgets it.
            let waiting = shared
                .take_waiting()
                .map(|w| format!("; when it was stopped, {w}"))
                .unwrap_or_default();
            abort.abort();
            Outcome::Fail(format!(
                "the case did not finish within {} ms{waiting}",
                config.case_timeout.as_millis()
            ))
        }
    }
}

/// The URL of a host given as a URL or as `HOST:PORT` (read as
/// `http://HOST:PORT`, as `cosystem-worker client --connect` reads it).
pub fn host_url(given: &str) -> String {
    let unix = given
        .get(..5)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("unix:"));
    if given.contains("://") || unix {
        given.to_owned()
    } else {
        format!("http://{given}")
    }
}

/// Runs the selected cases against the host, one after the other (they
/// share the host's state), and reports. `Err` only when the run cannot
/// start (an unknown case name, a malformed URL, nothing accepting
/// connections at the URL).
pub async fn run(config: &HostRun) -> Result<Report, String> {
    check_names(config)?;
    let target = target(&config.url, config.step_timeout)?;
    if matches!(target, Target::Framed(_)) && config.token.is_some() {
        return Err(format!(
            "{}: framed streams carry no token (spec §17.3, FB8); leave out --token-file",
            config.url
        ));
    }
    // One connection first, so that a host that is not there is one clear
    // error (exit 2) with its cause, not every case failing alike. A host
    // started just before the run gets `wait` to start accepting.
    // A wait past what the clock can express is "until it answers".
    let give_up = tokio::time::Instant::now().checked_add(config.wait);
    loop {
        match connect_once(&target, config.step_timeout).await {
            Ok(()) => break,
            Err(_) if give_up.is_none_or(|at| tokio::time::Instant::now() < at) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(why) => return Err(format!("cannot connect to {}: {why}", config.url)),
        }
    }
    let transport = target.transport();
    let shared = Arc::new(
        Shared::new(
            target,
            config.token.clone(),
            config.secret_marker.clone(),
            config.step_timeout,
        )
        .with_max_message(config.options.max_message_size as usize),
    );
    let mut report = Report::default();
    for case in cases::CASES {
        if !case.runs_over(transport) || !config.select.includes(case.name, case.tier) {
            continue;
        }
        let started = Instant::now();
        let outcome = match report.not_to_run(case.name, &config.skip, config.fail_fast) {
            Some(why) => Outcome::Skip(why.into()),
            None => {
                let outcome = run_one(config, &shared, case).await;
                // A listed case is still run: a pass means the list is out
                // of date.
                if config.known_failures.contains(case.name) {
                    outcome.expected_to_fail()
                } else {
                    outcome
                }
            }
        };
        let took = run_time(&outcome, started);
        report
            .push_described(
                case.name,
                case.tier,
                Role::Host,
                case.spec,
                case.description,
                outcome,
            )
            .duration = took;
        report.progress();
    }
    Ok(report)
}

/// How the runner reaches the host at `url`: framed streams for
/// `tcp://HOST:PORT` and `unix:PATH`, gRPC for anything else.
fn target(url: &str, connect_timeout: Duration) -> Result<Target, String> {
    if let Some(address) = FramedAddress::parse(url) {
        return address.map(Target::Framed);
    }
    // tonic connects to any scheme as if it were http: a mistyped one
    // (or https, which the runner does not speak) must not pass for it.
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !scheme.is_some_and(|scheme| scheme.eq_ignore_ascii_case("http")) {
        let given = scheme.map_or_else(
            || "a URL without a scheme".to_owned(),
            |s| format!("{s}://"),
        );
        return Err(format!(
            "{url}: the runner speaks plain gRPC (http://HOST:PORT) and framed streams (tcp://HOST:PORT, unix:PATH), not {given}"
        ));
    }
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| {
        format!("{url}: {e} (a gRPC host is http://HOST:PORT; a framed one tcp://HOST:PORT or unix:PATH)")
    })?;
    Ok(Target::Grpc(Box::new(
        endpoint.connect_timeout(connect_timeout).tcp_nodelay(true),
    )))
}

/// Connects once and lets go: whether anything accepts connections there.
async fn connect_once(target: &Target, connect_timeout: Duration) -> Result<(), String> {
    match target {
        Target::Grpc(endpoint) => endpoint.connect().await.map(drop).map_err(|e| {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                why.push_str(": ");
                why.push_str(&cause.to_string());
                source = cause.source();
            }
            why
        }),
        Target::Framed(address) => tokio::time::timeout(connect_timeout, framed::connect(address))
            .await
            .map_err(|_| "connecting timed out".to_owned())?
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

/// The transport a run against `url` uses.
pub fn transport_of(url: &str) -> Result<Transport, String> {
    target(url, Duration::from_secs(5)).map(|t| t.transport())
}
