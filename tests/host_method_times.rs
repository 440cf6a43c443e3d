//! Per-method latency histograms: the sans-IO core says which declared
//! method an input ran, the driver times the input, and the stats and the
//! Prometheus text report a histogram for every declared method.

use std::time::Duration;

use cosystem_worker::app::{App, MethodError, TypedModule};
use cosystem_worker::demo;
use cosystem_worker::host::{
    Host, HostConfig, HostCore, LatencyHistogram, MethodTiming, PeerKey, PeerOptions,
};
use cosystem_worker::wire::{Call, ClientMessage, Header, client_message};
use serde_json::json;

const EPOCH: &str = "times";

const DEMO_METHODS: [&str; 9] = [
    "counter.decrease",
    "counter.fail",
    "counter.increase",
    "todos.add",
    "todos.add_many",
    "todos.clear",
    "todos.remove",
    "todos.toggle",
    "secret.rotate",
];

fn core() -> HostCore {
    timed(HostCore::new(HostConfig::default(), demo::app("t"), EPOCH))
}

fn timed(mut core: HostCore) -> HostCore {
    core.set_method_timing(true);
    core
}

fn connect(h: &mut HostCore) -> PeerKey {
    h.connect(PeerOptions {
        peer_id: "c".into(),
        publications: true,
    })
    .expect("a client slot")
}

fn call_envelope(call_id: u64, module: &str, method: &str, args: &str) -> ClientMessage {
    ClientMessage {
        header: Some(Header::v1(EPOCH, "c", "")),
        kind: Some(client_message::Kind::Call(Call {
            call_id,
            module: module.into(),
            method: method.into(),
            args_json: args.into(),
        })),
    }
}

fn timing<'a>(timings: &'a [MethodTiming], module: &str, method: &str) -> &'a MethodTiming {
    timings
        .iter()
        .find(|t| t.module == module && t.method == method)
        .unwrap_or_else(|| panic!("no histogram for {module}.{method}"))
}

#[test]
fn a_call_reports_the_declared_method_it_ran_once() {
    let mut h = core();
    let peer = connect(&mut h);
    h.handle_message(peer, call_envelope(1, "counter", "increase", "[1]"))
        .unwrap();
    let run = h.take_method_run().expect("the call ran counter.increase");
    assert_eq!(h.take_method_run(), None, "reported twice");

    h.record_method_time(run, Duration::from_millis(3));
    let stats = h.stats();
    let increase = timing(&stats.method_seconds, "counter", "increase");
    assert_eq!(increase.histogram.count(), 1);
    assert_eq!(increase.histogram.sum(), Duration::from_millis(3));
    let decrease = timing(&stats.method_seconds, "counter", "decrease");
    assert_eq!(decrease.histogram.count(), 0);

    // The host's own calls run methods too.
    h.invoke("counter", "decrease", &[json!(1)]).unwrap();
    let run = h.take_method_run().expect("invoke ran counter.decrease");
    h.record_method_time(run, Duration::from_millis(1));
    let stats = h.stats();
    assert_eq!(
        timing(&stats.method_seconds, "counter", "decrease")
            .histogram
            .count(),
        1
    );
    assert_eq!(
        timing(&stats.method_seconds, "counter", "increase")
            .histogram
            .count(),
        1
    );
}

#[test]
fn inputs_that_run_no_declared_method_report_none() {
    let mut h = core();
    let peer = connect(&mut h);
    let refused = [
        call_envelope(1, "counter", "nope", "[]"),
        call_envelope(2, "nothing", "increase", "[1]"),
        // call_id 0 is refused before anything runs.
        call_envelope(0, "counter", "increase", "[1]"),
        // Arguments that do not parse never reach the method.
        call_envelope(3, "counter", "increase", "[1"),
    ];
    for envelope in refused {
        let _ = h.handle_message(peer, envelope);
        assert_eq!(h.take_method_run(), None);
    }
    let stats = h.stats();
    assert!(
        stats
            .method_seconds
            .iter()
            .all(|t| t.histogram.count() == 0)
    );
    // Every method the demo app declares (spec §19) is listed, in module
    // order and then by name, and nothing else.
    let names: Vec<String> = stats
        .method_seconds
        .iter()
        .map(|t| format!("{}.{}", t.module, t.method))
        .collect();
    assert_eq!(names, DEMO_METHODS);
}

/// The time comes from the driver's clock around the input: a method that
/// sleeps 30 ms is never recorded at or below the 25 ms bound (a sleep lasts
/// at least as long as asked; no upper bound is assumed).
#[tokio::test]
async fn the_host_times_each_method_from_the_clock_around_its_input() {
    let app: App = demo::app("t").with(TypedModule::new("slow", 0u8).method(
        "nap",
        |_: &mut u8, (): ()| -> Result<(), MethodError> {
            std::thread::sleep(Duration::from_millis(30));
            Ok(())
        },
    ));
    let host = Host::builder(app).epoch(EPOCH).method_timing(true).build();
    host.invoke("slow", "nap", &[]).unwrap();
    let session = host
        .open_session(PeerOptions {
            peer_id: "c".into(),
            publications: true,
        })
        .unwrap();
    session
        .handle(call_envelope(1, "slow", "nap", "[]"))
        .unwrap();

    let stats = host.stats();
    let nap = timing(&stats.method_seconds, "slow", "nap");
    assert_eq!(nap.histogram.count(), 2);
    assert!(nap.histogram.sum() >= Duration::from_millis(60));
    let at_or_below_25ms = nap
        .histogram
        .cumulative()
        .find(|(bound, _)| *bound == 0.025)
        .map(|(_, n)| n);
    assert_eq!(at_or_below_25ms, Some(0));
}

#[test]
fn method_histograms_render_as_prometheus_histograms() {
    let mut h = core();
    h.invoke("counter", "increase", &[json!(1)]).unwrap();
    let run = h.take_method_run().unwrap();
    h.record_method_time(run, Duration::from_micros(20));
    let text = h.stats().to_prometheus();
    let series = "module=\"counter\",method=\"increase\"";
    assert!(text.contains("# TYPE cosystem_worker_method_duration_seconds histogram\n"));
    assert!(text.contains(&format!(
        "cosystem_worker_method_duration_seconds_bucket{{{series},le=\"0.00001\"}} 0\n"
    )));
    assert!(text.contains(&format!(
        "cosystem_worker_method_duration_seconds_bucket{{{series},le=\"0.000025\"}} 1\n"
    )));
    assert!(text.contains(&format!(
        "cosystem_worker_method_duration_seconds_bucket{{{series},le=\"+Inf\"}} 1\n"
    )));
    assert!(text.contains(&format!(
        "cosystem_worker_method_duration_seconds_count{{{series}}} 1\n"
    )));
    assert!(text.contains(&format!(
        "cosystem_worker_method_duration_seconds_sum{{{series}}} 0.00002\n"
    )));
    // A method never called has its series at zero from the start.
    assert!(text.contains(
        "cosystem_worker_method_duration_seconds_count{module=\"counter\",method=\"decrease\"} 0\n"
    ));
    let buckets = text
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "cosystem_worker_method_duration_seconds_bucket{{{series}"
            ))
        })
        .count();
    assert_eq!(buckets, LatencyHistogram::bounds().len() + 1);

    // With no methods at all there is no family to describe.
    let empty = timed(HostCore::new(HostConfig::default(), App::new(), EPOCH))
        .stats()
        .to_prometheus();
    assert!(!empty.contains("cosystem_worker_method_duration_seconds"));
}

#[test]
fn a_run_left_untaken_is_not_reported_for_a_later_input() {
    let mut h = core();
    let peer = connect(&mut h);
    h.invoke("counter", "increase", &[json!(1)]).unwrap();
    // Not taken; the next input runs no method.
    h.handle_message(
        peer,
        ClientMessage {
            header: Some(Header::v1(EPOCH, "c", "")),
            kind: Some(client_message::Kind::SyncRequest(Default::default())),
        },
    )
    .unwrap();
    assert_eq!(h.take_method_run(), None);
}

#[test]
fn methods_that_fail_or_panic_are_timed_too() {
    let app: App = demo::app("t").with(
        TypedModule::new("boom", 0u8)
            .method("go", |_: &mut u8, (): ()| -> Result<(), MethodError> {
                panic!("boom")
            }),
    );
    let mut h = timed(HostCore::new(HostConfig::default(), app, EPOCH));
    let peer = connect(&mut h);
    h.handle_message(peer, call_envelope(1, "counter", "fail", "[\"no\"]"))
        .unwrap();
    let failed = h.take_method_run().expect("counter.fail ran");
    h.record_method_time(failed, Duration::from_millis(1));
    h.handle_message(peer, call_envelope(2, "boom", "go", "[]"))
        .unwrap();
    let panicked = h.take_method_run().expect("boom.go ran");
    h.record_method_time(panicked, Duration::from_millis(1));
    let stats = h.stats();
    assert_eq!(stats.calls_answered.get("failed"), Some(&1));
    assert_eq!(stats.method_panics, 1);
    for (module, method) in [("counter", "fail"), ("boom", "go")] {
        assert_eq!(
            timing(&stats.method_seconds, module, method)
                .histogram
                .count(),
            1,
            "{module}.{method}"
        );
    }
}

#[test]
fn a_run_from_another_core_is_ignored() {
    let (mut a, mut b) = (core(), core());
    a.invoke("counter", "increase", &[json!(1)]).unwrap();
    let run = a.take_method_run().unwrap();
    b.record_method_time(run, Duration::from_millis(1));
    assert!(
        b.stats()
            .method_seconds
            .iter()
            .all(|t| t.histogram.count() == 0)
    );
}

/// Timing costs two clock reads per input, so it is off unless asked for:
/// nothing is recorded and nothing is reported.
#[tokio::test]
async fn method_timing_is_off_by_default() {
    let mut h = HostCore::new(HostConfig::default(), demo::app("t"), EPOCH);
    h.invoke("counter", "increase", &[json!(1)]).unwrap();
    assert_eq!(h.take_method_run(), None);
    assert!(h.stats().method_seconds.is_empty());
    assert!(
        !h.stats()
            .to_prometheus()
            .contains("cosystem_worker_method_duration_seconds")
    );

    let host = Host::builder(demo::app("t")).build();
    host.invoke("counter", "increase", &[json!(1)]).unwrap();
    assert!(host.stats().method_seconds.is_empty());

    // Turned off again, a run not yet taken is dropped.
    let mut h = core();
    h.invoke("counter", "increase", &[json!(1)]).unwrap();
    h.set_method_timing(false);
    assert_eq!(h.take_method_run(), None);
}
