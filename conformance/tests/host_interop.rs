//! The host interop runner (`cosystem-conformance host`) against the
//! reference host served in process by the reference gRPC and framed
//! transports: the reference passes every case in both sync modes, and
//! deliberately broken hosts fail exactly the cases that check what they
//! break.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use cosystem_conformance::interop::peer::Transport;
use cosystem_conformance::interop::{self, HostRun};
use cosystem_conformance::report::{Outcome, Report};
use cosystem_worker::demo;
use cosystem_worker::host::{Host, HostLimits, SyncMode};
use serde_json::json;
use support::{
    FramedBreakage, HostBreakage, serve_broken, serve_broken_with_token, serve_framed_broken,
    serve_framed_tcp, serve_reference,
};

const MARKER: &str = "host-interop-secret-marker-41c7";

const VIEW_SIZE: &str = "grpc-view-too-large-for-a-snapshot-is-refused";

/// The bookmark interval of the hosts these tests serve, and what their
/// runs are told it is: short, so that the bookmark case's wait (twice the
/// interval) does not dominate every whole-suite run, and so that every
/// case also meets bookmarks arriving between its own envelopes.
const BOOKMARK_INTERVAL: Duration = Duration::from_millis(250);

/// The history window of the hosts these tests serve, and what their runs
/// are told it is: the cases that outrun the window make this many commits
/// and more, which at the default of 1024 were most of a whole-suite run.
const HISTORY_WINDOW: usize = 64;

/// The first-envelope deadline of the hosts these tests serve: the
/// framed deadline case waits it out once per whole-suite run, which at
/// the default 10 s was the longest case of each.
const FIRST_ENVELOPE_DEADLINE: Duration = Duration::from_secs(1);

fn demo_host(sync: SyncMode) -> Host {
    let limits = HostLimits {
        history_entries: HISTORY_WINDOW,
        first_envelope_timeout: FIRST_ENVELOPE_DEADLINE,
        ..HostLimits::default()
    };
    Host::builder(demo::app(MARKER))
        .sync(sync)
        .sections(demo::default_sections())
        .bookmark_interval(Some(BOOKMARK_INTERVAL))
        .limits(limits)
        .build()
}

/// A framed host that answers each connection with `serve`; its URL.
async fn fake_framed_host<F, Fut>(serve: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket));
        }
    });
    url
}

/// Runs the one case `run` selects, which must fail; why it failed.
async fn the_failure(run: &HostRun) -> String {
    let report = interop::run(run).await.unwrap();
    match &report.results[0].outcome {
        Outcome::Fail(why) => why.clone(),
        other => panic!("{other:?}"),
    }
}

fn config(url: &str) -> HostRun {
    let mut run = HostRun::new(url);
    run.secret_marker = Some(MARKER.to_owned());
    run.options.bookmark_interval = BOOKMARK_INTERVAL;
    run.options.history_window = HISTORY_WINDOW as u64;
    run
}

/// The reference demo host in `sync` mode with `limits`, served over
/// gRPC, and a run of the one case `case` against it.
async fn limited_reference(
    sync: SyncMode,
    limits: HostLimits,
    case: &str,
) -> (support::Served, HostRun) {
    let host = Host::builder(demo::app(MARKER))
        .sync(sync)
        .sections(demo::default_sections())
        .limits(limits)
        .build();
    let served = serve_reference(host, None).await;
    let mut run = config(&served.url);
    run.select.names = [case.to_owned()].into();
    (served, run)
}

fn failed(report: &Report) -> BTreeSet<String> {
    report.failures().map(|r| r.name.clone()).collect()
}

/// How many cases run over `transport`.
fn cases_over(transport: Transport) -> usize {
    interop::cases::CASES
        .iter()
        .filter(|c| c.runs_over(transport))
        .count()
}

fn assert_all_pass(report: &Report, transport: Transport) {
    let failures: Vec<String> = report
        .results
        .iter()
        .filter(|r| r.outcome != Outcome::Pass)
        .map(|r| format!("{}: {:?}", r.name, r.outcome))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(report.results.len(), cases_over(transport));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_host_passes_every_case_in_patch_mode() {
    let served = serve_reference(demo_host(SyncMode::Patch), None).await;
    let report = interop::run(&config(&served.url)).await.unwrap();
    print!("{}", report.to_text());
    assert!(failed(&report).is_empty(), "{}", report.to_text());
    // Without a token configured, only the authentication case is skipped.
    let skipped: Vec<&str> = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Skip(_)))
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(skipped, ["grpc-unauthenticated-without-token"]);
}

/// A host whose message limit is over gRPC's usual 4 MiB (§15 lets a
/// deployment raise it, and `--max-message-size` tells the runner) sends
/// snapshots larger than that: the runner reads them, as over framed
/// streams, rather than take its own library's limit for the host's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_a_message_limit_over_4_mib_passes_the_view_size_case() {
    let limit = 5 * 1024 * 1024;
    let limits = HostLimits {
        max_message_bytes: limit,
        ..HostLimits::default()
    };
    let (_served, mut run) = limited_reference(SyncMode::Snapshot, limits, VIEW_SIZE).await;
    run.options.max_message_size = limit as u32;
    let report = interop::run(&run).await.unwrap();
    assert!(
        report.required_passed() && failed(&report).is_empty(),
        "{}",
        report.to_text()
    );
    assert!(
        matches!(report.results[0].outcome, Outcome::Pass),
        "{}",
        report.to_text()
    );
    // Told the default limit, the runner holds the host to it (§15): its
    // snapshots over 4 MiB fail the case, naming the option.
    run.options.max_message_size = 4 * 1024 * 1024;
    let why = the_failure(&run).await;
    assert!(
        why.contains("--max-message-size") && why.contains("§15"),
        "{why}"
    );
}

/// A host that refuses a call whose view would still fit the max message
/// size the runner is told fails the view-size case: the reference with a
/// 2 MiB limit, the runner told 4 MiB. Before, a host refusing every call
/// passed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_refuses_a_view_that_fits_fails_the_view_size_case() {
    let limits = HostLimits {
        max_message_bytes: 2 * 1024 * 1024,
        ..HostLimits::default()
    };
    let (_served, run) = limited_reference(SyncMode::Patch, limits, VIEW_SIZE).await;
    let why = the_failure(&run).await;
    assert!(
        why.contains("was refused") && why.contains("fits the 4194304-byte"),
        "{why}"
    );
}

/// A host that sends a resume Patch over the max message size fails the
/// oversize-resume case. The reference, given a 16 MiB limit while the
/// runner is told 4 MiB, is such a host: the Patch fits its own limit.
/// Told 16 MiB, the runner passes it, the reference then answering with
/// a Snapshot for its size. Its window is widened so that it holds every
/// operation either way: the default window (8 MiB, which counts a
/// published operation twice) lets the oldest go first, and the Snapshot
/// would then be the window's doing, not the size rule's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_resumes_with_a_patch_over_the_limit_fails_the_oversize_resume_case() {
    let limit = 16 * 1024 * 1024;
    let limits = HostLimits {
        max_message_bytes: limit,
        history_bytes: 8 * limit,
        ..HostLimits::default()
    };
    let case = "grpc-resume-over-the-message-size-is-a-snapshot";
    let (_served, mut run) = limited_reference(SyncMode::Patch, limits, case).await;
    run.options.max_message_size = 4 * 1024 * 1024;
    let why = the_failure(&run).await;
    assert!(
        why.contains("--max-message-size") || why.contains("expected a snapshot"),
        "{why}"
    );
    run.options.max_message_size = limit as u32;
    let report = interop::run(&run).await.unwrap();
    assert!(
        matches!(report.results[0].outcome, Outcome::Pass),
        "{}",
        report.to_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_host_passes_every_case_in_snapshot_mode_with_a_token() {
    let token = "host-interop-token";
    let served = serve_reference(demo_host(SyncMode::Snapshot), Some(token.into())).await;
    let mut run = config(&served.url);
    run.token = Some(token.into());
    let report = interop::run(&run).await.unwrap();
    print!("{}", report.to_text());
    assert_all_pass(&report, Transport::Grpc);
}

/// A host whose token check reads one entry and one spelling of the
/// scheme, or that refuses after sending response headers, fails the
/// authentication case, naming the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_checks_tokens_loosely_or_late_fails_the_authentication_case() {
    let token = "host-interop-token";
    for (breakage, rule) in [
        (HostBreakage::ReadsOneTokenEntryCaseSensitively, "G5"),
        (HostBreakage::RefusesTokensAfterHeaders, "G4"),
    ] {
        let served = serve_broken_with_token(demo_host(SyncMode::Patch), token, breakage).await;
        let mut run = config(&served.url);
        run.token = Some(token.into());
        run.select.names = ["grpc-unauthenticated-without-token".to_owned()].into();
        let why = the_failure(&run).await;
        assert!(why.contains(rule), "{breakage:?}: {why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_case_is_skipped_without_a_token() {
    let served = serve_reference(demo_host(SyncMode::Patch), None).await;
    let mut run = config(&served.url);
    run.select.names = ["grpc-unauthenticated-without-token".to_owned()].into();
    let report = interop::run(&run).await.unwrap();
    assert_eq!(
        report.results[0].outcome,
        Outcome::Skip("needs --token-file".into())
    );
}

/// Runs every case against the reference host broken as `breakage` says;
/// the cases that failed and whether the required ones all passed.
async fn run_broken(breakage: HostBreakage) -> (BTreeSet<String>, bool) {
    let served = serve_broken(demo_host(SyncMode::Patch), breakage).await;
    let report = interop::run(&config(&served.url)).await.unwrap();
    print!("{}", report.to_text());
    (failed(&report), report.required_passed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_ignores_call_epochs_fails_exactly_the_fencing_and_check_order_cases() {
    let (failed, required_passed) = run_broken(HostBreakage::IgnoreCallEpoch).await;
    // The order case sends a fenced call whose arguments are not an array:
    // without the fence it is answered INVALID_ARGUMENT.
    assert_eq!(
        failed,
        BTreeSet::from([
            "grpc-call-checks-apply-in-order".to_owned(),
            "grpc-call-from-other-epoch-is-fenced".to_owned(),
        ])
    );
    assert!(!required_passed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_ends_the_session_at_a_half_close_fails_exactly_the_half_close_case() {
    let (failed, required_passed) = run_broken(HostBreakage::EndOnHalfClose).await;
    assert_eq!(
        failed,
        BTreeSet::from(["grpc-half-closed-stream-is-answered".to_owned()])
    );
    // A recommended case (H16 is a SHOULD): the run still passes.
    assert!(required_passed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_sends_results_ahead_of_their_publication_fails() {
    let served = serve_broken(demo_host(SyncMode::Patch), HostBreakage::ResultsFirst).await;
    let report = interop::run(&config(&served.url)).await.unwrap();
    print!("{}", report.to_text());
    let failed = failed(&report);
    for case in [
        "grpc-versions-are-contiguous",
        "grpc-results-follow-their-publication",
        "grpc-add-many-is-one-version",
    ] {
        assert!(failed.contains(case), "{case} passed");
    }
    assert!(!report.required_passed());
}

/// Whether a failure's reason cites `rule` among the ids of a
/// parenthesis, as in "… (PA3)" or "… (J10, §19.1)": each check's message
/// names the rules it enforces so.
fn cites(reason: &str, rule: &str) -> bool {
    reason.split('(').skip(1).any(|part| {
        part.split(')')
            .next()
            .is_some_and(|ids| ids.split(", ").any(|id| id == rule))
    })
}

/// Plays `cases` against the reference host broken as `breakage` says, and
/// asserts each fails for a reason citing `rule` and containing `saying`;
/// returns the host, still served.
async fn assert_fail_citing(
    breakage: HostBreakage,
    cases: &[&str],
    rule: &str,
    saying: &str,
) -> support::Served {
    let served = serve_broken(demo_host(SyncMode::Patch), breakage).await;
    let mut run = config(&served.url);
    run.select.names = cases.iter().map(|c| (*c).to_owned()).collect();
    let report = interop::run(&run).await.unwrap();
    print!("{}", report.to_text());
    assert_eq!(report.results.len(), cases.len());
    for result in &report.results {
        match &result.outcome {
            Outcome::Fail(reason) if cites(reason, rule) && reason.contains(saying) => {}
            other => panic!(
                "{}: {other:?}, expected a failure citing {rule} and saying {saying:?}",
                result.name
            ),
        }
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_patches_name_the_root_fails_on_its_first_patch() {
    assert_fail_citing(
        HostBreakage::PatchesTheRoot,
        &[
            "grpc-versions-are-contiguous",
            "grpc-add-many-is-one-version",
        ],
        "PA3",
        "the root",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_patches_name_a_member_beside_the_sections_fails_though_the_view_is_right() {
    assert_fail_citing(
        HostBreakage::PatchesOutsideTheSections,
        &[
            "grpc-versions-are-contiguous",
            "grpc-add-many-is-one-version",
        ],
        "PA2",
        "\"/extra\"",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_snapshots_repeat_a_member_fails_though_the_last_one_is_right() {
    assert_fail_citing(
        HostBreakage::DuplicatesMembersInSnapshots,
        &[
            "grpc-initial-sync-gets-snapshot",
            "grpc-sync-ahead-of-host-gets-snapshot",
        ],
        "J3",
        "state_json",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_patches_repeat_a_member_fails_on_its_first_patch() {
    assert_fail_citing(
        HostBreakage::DuplicatesMembersInPatches,
        &["grpc-versions-are-contiguous"],
        "J3",
        "patch_json",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_error_details_repeat_a_member_fails_on_its_first_error() {
    assert_fail_citing(
        HostBreakage::DuplicatesMembersInDetails,
        &["grpc-method-failure-is-failed"],
        "J3",
        "details_json",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_an_epoch_over_1024_bytes_fails_on_its_first_envelope() {
    assert_fail_citing(
        HostBreakage::LongEpoch,
        &["grpc-initial-sync-gets-snapshot"],
        "E2",
        "1025 bytes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_writes_integers_in_patches_as_floats_fails_the_exact_integers_case() {
    assert_fail_citing(
        HostBreakage::WritesPatchIntegersAsFloats,
        &["grpc-integers-are-kept-exactly"],
        "J10",
        "stream A's count was written as",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_writes_returned_integers_as_floats_fails_only_where_they_are_used_as_integers()
{
    let served = assert_fail_citing(
        HostBreakage::WritesIntegersAsFloats,
        &["grpc-integers-are-kept-exactly"],
        "J10",
        "the result was written as 9007199254740993.0, which reads as",
    )
    .await;
    // It failed on its first call, which set the count to 2^53+1; it put
    // the count back to where it found it.
    let count = served.host.invoke("counter", "increase", &[json!(0)]);
    assert_eq!(count, Ok(json!(0)));
    // Most cases compare values as JSON does, where `2.0` equals `2`. The
    // resume cases pass a returned id back as an argument, which must be
    // an integer, the limit case checks the count it is returned as the
    // integer case does (J10), and the add_many case requires its ids to
    // be integers (§19). The integer case puts the count back
    // where it found it, so the cases after it start from a count they can
    // add to.
    let (failed, required_passed) = run_broken(HostBreakage::WritesIntegersAsFloats).await;
    assert_eq!(
        failed,
        BTreeSet::from(
            [
                "grpc-integers-are-kept-exactly",
                "grpc-resume-reaches-current-view",
                "grpc-resume-inside-window-is-patch",
                "grpc-messages-up-to-the-limit-are-accepted",
                "grpc-add-many-is-one-version",
            ]
            .map(str::to_owned)
        )
    );
    assert!(!required_passed);
    assert_fail_citing(
        HostBreakage::WritesIntegersAsFloats,
        &["grpc-messages-up-to-the-limit-are-accepted"],
        "J10",
        "which reads as",
    )
    .await;
}

#[test]
fn a_failure_cites_a_rule_only_inside_its_parentheses() {
    assert!(cites("x (J10, §19.1)", "J10"));
    assert!(cites("x (PA3): y", "PA3"));
    assert!(!cites("x (J10, §19.1)", "J1"));
    assert!(!cites("J3 in text", "J3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_publishes_the_secret_fails_the_isolation_cases() {
    let leaky = Host::builder(demo::app(MARKER))
        .sections(["counter", "todos", "secret"])
        .build();
    let served = serve_reference(leaky, None).await;
    for name in [
        "grpc-initial-sync-gets-snapshot",
        "grpc-private-section-never-sent",
    ] {
        let mut run = HostRun::new(&served.url);
        run.select.names = [name.to_owned()].into();
        // The initial-snapshot case must fail on the view's members alone;
        // the isolation case needs the marker.
        if name == "grpc-private-section-never-sent" {
            run.secret_marker = Some(MARKER.into());
        }
        let report = interop::run(&run).await.unwrap();
        assert!(
            matches!(&report.results[0].outcome, Outcome::Fail(_)),
            "{name}: {:?}",
            report.results[0].outcome
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_fails_rather_than_hangs_when_no_host_answers() {
    // Bind a port and never accept on it: connections are queued by the
    // kernel but no gRPC ever answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut run = config(&format!("http://{}", listener.local_addr().unwrap()));
    run.step_timeout = Duration::from_millis(200);
    run.case_timeout = Duration::from_secs(2);
    run.select.names = ["grpc-versions-are-contiguous".to_owned()].into();
    let report = interop::run(&run).await.unwrap();
    assert!(matches!(&report.results[0].outcome, Outcome::Fail(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_case_names_are_refused_before_running() {
    let mut run = HostRun::new("http://127.0.0.1:1");
    run.select.names = ["grpc-no-such-case".to_owned()].into();
    assert!(interop::run(&run).await.is_err());
    let mut run = HostRun::new("http://127.0.0.1:1");
    run.known_failures.insert("grpc-no-such-case".into());
    assert!(interop::run(&run).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_where_nothing_listens_is_a_run_that_cannot_be_made() {
    let (_held, port) = support::refusing_port();
    let error = interop::run(&config(&format!("http://127.0.0.1:{port}")))
        .await
        .unwrap_err();
    assert!(error.contains("cannot connect"), "{error}");
    assert!(error.to_lowercase().contains("refused"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_known_failures_run_and_cases_to_skip_do_not() {
    const FENCING: &str = "grpc-call-from-other-epoch-is-fenced";
    const ORDER: &str = "grpc-call-checks-apply-in-order";
    const HALF_CLOSE: &str = "grpc-half-closed-stream-is-answered";
    let served = serve_broken(demo_host(SyncMode::Patch), HostBreakage::IgnoreCallEpoch).await;
    let mut run = config(&served.url);
    // Fails on this host: expected. Passes on it: not expected.
    run.known_failures.insert(FENCING.to_owned());
    run.known_failures.insert(ORDER.to_owned());
    run.known_failures.insert(HALF_CLOSE.to_owned());
    let skipped = interop::cases::CASES[0].name;
    run.skip.insert(skipped.to_owned());
    let report = interop::run(&run).await.unwrap();
    let outcome = |name: &str| {
        report
            .results
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.outcome.clone())
    };
    assert!(matches!(outcome(FENCING), Some(Outcome::KnownFailure(_))));
    assert!(matches!(outcome(ORDER), Some(Outcome::KnownFailure(_))));
    assert_eq!(outcome(HALF_CLOSE), Some(Outcome::UnexpectedPass));
    assert_eq!(
        outcome(skipped),
        Some(Outcome::Skip(cosystem_conformance::report::SKIPPED.into()))
    );
    assert!(report.required_passed());
    assert!(!report.succeeded(), "an unexpected pass fails the run");
}

/// The framed case that waits for the host's first-frame deadline
/// ([`FIRST_ENVELOPE_DEADLINE`] for these hosts): run once, by the TCP
/// test.
const FIRST_FRAME: &str = "framed-connection-without-a-first-envelope-is-closed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_host_passes_every_framed_case_over_tcp_in_patch_mode() {
    let served = serve_framed_tcp(demo_host(SyncMode::Patch)).await;
    let report = interop::run(&config(&served.url)).await.unwrap();
    print!("{}", report.to_text());
    assert_all_pass(&report, Transport::Framed);
    let names: BTreeSet<&str> = report.results.iter().map(|r| r.name.as_str()).collect();
    assert!(names.contains("framed-oversize-frame-closes-only-that-connection"));
    assert!(names.contains("grpc-malformed-message-disturbs-no-one"));
    assert!(names.contains("grpc-half-closed-stream-is-answered"));
    assert!(!names.contains("grpc-unauthenticated-without-token"));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_host_passes_every_framed_case_over_a_unix_socket_in_snapshot_mode() {
    let dir = std::env::temp_dir().join(format!("cosystem-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("host.sock");
    let served = support::serve_framed_unix(demo_host(SyncMode::Snapshot), &path).await;
    let mut run = config(&served.url);
    run.skip.insert(FIRST_FRAME.into());
    let report = interop::run(&run).await.unwrap();
    print!("{}", report.to_text());
    drop(served);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failed(&report).is_empty(), "{}", report.to_text());
    assert_eq!(report.results.len(), cases_over(Transport::Framed));
}

/// Runs every framed case but the first-frame deadline's against a framed
/// host broken as `breakage` says; the cases that failed.
async fn run_framed_broken(breakage: FramedBreakage) -> BTreeSet<String> {
    let served = serve_framed_broken(demo_host(SyncMode::Patch), breakage).await;
    let mut run = config(&served.url);
    run.skip.insert(FIRST_FRAME.into());
    // Where the expected failure is a wait that never ends, it ends sooner;
    // every other run keeps the default, so that a loaded machine cannot
    // fail a case the broken host should pass.
    if matches!(
        breakage,
        FramedBreakage::ReadsOversizeBodies
            | FramedBreakage::TwoGiBLimit
            | FramedBreakage::KeepsMalformedSessionsAndStaysOpen
    ) {
        run.step_timeout = Duration::from_secs(2);
    }
    let report = interop::run(&run).await.unwrap();
    print!("{}", report.to_text());
    failed(&report)
}

const OVERSIZE: &str = "framed-oversize-frame-closes-only-that-connection";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_that_waits_for_an_oversize_body_fails_exactly_the_oversize_case() {
    assert_eq!(
        run_framed_broken(FramedBreakage::ReadsOversizeBodies).await,
        BTreeSet::from([OVERSIZE.to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_that_measures_lengths_against_2_gib_fails_exactly_the_oversize_case() {
    assert_eq!(
        run_framed_broken(FramedBreakage::TwoGiBLimit).await,
        BTreeSet::from([OVERSIZE.to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_that_writes_text_before_closing_fails_exactly_the_oversize_case() {
    assert_eq!(
        run_framed_broken(FramedBreakage::WritesTextOnOversize).await,
        BTreeSet::from([OVERSIZE.to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_that_closes_on_an_empty_frame_fails_exactly_the_empty_frame_case() {
    assert_eq!(
        run_framed_broken(FramedBreakage::ClosesOnEmptyFrames).await,
        BTreeSet::from(["framed-empty-frames-are-ignored".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_that_discards_what_is_owed_at_the_end_of_input_fails_the_half_close_case() {
    assert_eq!(
        run_framed_broken(FramedBreakage::EndsSessionAtEndOfInput).await,
        BTreeSet::from(["grpc-half-closed-stream-is-answered".to_owned()])
    );
}

/// A host that never closes what it should, while it sends bookmarks more
/// often than a step, fails within a step of the moment the close was due,
/// not at the case timeout: envelopes do not extend a wait for a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_do_not_extend_the_wait_for_a_close() {
    for (breakage, case, why) in [
        (
            FramedBreakage::TwoGiBLimit,
            OVERSIZE,
            "did not close M's connection within 1000 ms",
        ),
        (
            FramedBreakage::KeepsMalformedSessionsAndStaysOpen,
            "grpc-half-closed-stream-is-answered",
            "A's stream was not ended within 1000 ms of its last result",
        ),
    ] {
        let served = serve_framed_broken(demo_host(SyncMode::Patch), breakage).await;
        let mut run = config(&served.url);
        run.select.names = [case.to_owned()].into();
        run.step_timeout = Duration::from_secs(1);
        run.case_timeout = Duration::from_secs(30);
        let why_it_failed = the_failure(&run).await;
        assert!(why_it_failed.contains(why), "{case}: {why_it_failed}");
    }
}

const AT_LIMIT: &str = "grpc-messages-up-to-the-limit-are-accepted";

/// Besides the limit case, the oversize-resume case fails it too: its
/// calls carry a quarter of the limit the runner was told (4 MiB), which
/// such a host refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_with_a_limit_under_1_mib_fails_exactly_the_cases_that_send_that_much() {
    assert_eq!(
        run_framed_broken(FramedBreakage::SmallLimit).await,
        BTreeSet::from([
            AT_LIMIT.to_owned(),
            "grpc-resume-over-the-message-size-is-a-snapshot".to_owned()
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_that_refuses_a_frame_of_exactly_its_limit_fails_exactly_the_limit_case() {
    assert_eq!(
        run_framed_broken(FramedBreakage::OffByOneLimit).await,
        BTreeSet::from([AT_LIMIT.to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_may_keep_a_malformed_session_and_leave_it_open_at_the_end_of_input() {
    // Only the half-close case, which expects the close that follows what
    // is owed, fails: the malformed-input case allows both choices.
    assert_eq!(
        run_framed_broken(FramedBreakage::KeepsMalformedSessionsAndStaysOpen).await,
        BTreeSet::from(["grpc-half-closed-stream-is-answered".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_that_sends_empty_frames_passes_since_receivers_ignore_them() {
    assert_eq!(
        run_framed_broken(FramedBreakage::SendsEmptyFrames).await,
        BTreeSet::new()
    );
}

/// A host that leaves a frame unfinished when it closes a connection, as
/// an abortive close may (FB5), has closed it (§7.3): it passes the cases
/// where the close is what it owes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_that_cuts_its_last_frame_when_closing_passes() {
    let served = serve_framed_broken(
        demo_host(SyncMode::Patch),
        FramedBreakage::CutsAFrameWhenClosing,
    )
    .await;
    let mut run = config(&served.url);
    run.select.names = [
        OVERSIZE.to_owned(),
        "grpc-malformed-message-disturbs-no-one".to_owned(),
    ]
    .into();
    let report = interop::run(&run).await.unwrap();
    assert_eq!(report.results.len(), 2, "{}", report.to_text());
    for result in &report.results {
        assert!(
            matches!(result.outcome, Outcome::Pass),
            "{}",
            report.to_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_without_a_first_frame_deadline_fails_the_deadline_case() {
    let served =
        serve_framed_broken(demo_host(SyncMode::Patch), FramedBreakage::SendsEmptyFrames).await;
    let mut run = config(&served.url);
    run.select.names = [FIRST_FRAME.to_owned()].into();
    run.options.first_frame_wait = Duration::from_secs(2);
    let why = the_failure(&run).await;
    // Both trickling connections are named as still held.
    assert!(why.contains("E (") && why.contains("U ("), "{why}");
}

/// A host whose deadline ends every connection, sessions included (here a
/// proxy in front of the reference that closes each connection a second
/// after accepting it), closes the trickling connections in time, but not
/// only them: it fails the case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_whose_deadline_closes_sessions_too_fails_the_deadline_case() {
    let backend = serve_framed_tcp(demo_host(SyncMode::Patch)).await;
    let backend_addr = backend.url.trim_start_matches("tcp://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let backend_addr = backend_addr.clone();
            tokio::spawn(async move {
                let mut upstream = tokio::net::TcpStream::connect(backend_addr).await.unwrap();
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::io::copy_bidirectional(&mut socket, &mut upstream),
                )
                .await;
            });
        }
    });
    let mut run = config(&url);
    run.select.names = [FIRST_FRAME.to_owned()].into();
    run.options.first_frame_wait = Duration::from_secs(3);
    let why = the_failure(&run).await;
    assert!(why.contains("S sent its first envelope at once"), "{why}");
}

/// H10 is a SHOULD: a host that sends no bookmarks fails the bookmark
/// case; one that sends them more often than the interval the run was
/// told passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_sends_no_bookmarks_fails_the_bookmark_case() {
    const CASE: &str = "grpc-quiet-session-is-sent-a-bookmark";
    let silent = Host::builder(demo::app(MARKER))
        .sections(demo::default_sections())
        .bookmark_interval(None)
        .build();
    let served = serve_reference(silent, None).await;
    let mut run = config(&served.url);
    run.select.names = [CASE.to_owned()].into();
    run.options.bookmark_interval = Duration::from_millis(300);
    run.step_timeout = Duration::from_millis(300);
    let why = the_failure(&run).await;
    assert!(why.contains("was sent nothing for 900 ms"), "{why}");

    let frequent = Host::builder(demo::app(MARKER))
        .sections(demo::default_sections())
        .bookmark_interval(Some(Duration::from_millis(100)))
        .build();
    let served = serve_reference(frequent, None).await;
    let mut run = config(&served.url);
    run.select.names = [CASE.to_owned()].into();
    let report = interop::run(&run).await.unwrap();
    assert_eq!(report.results[0].outcome, Outcome::Pass);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_run_refuses_a_token_and_cases_of_grpc_alone() {
    let served = serve_framed_tcp(demo_host(SyncMode::Patch)).await;
    let mut run = config(&served.url);
    run.token = Some("a-token".into());
    let error = interop::run(&run).await.unwrap_err();
    assert!(error.contains("FB8"), "{error}");
    let mut run = config(&served.url);
    run.select.names = ["grpc-unauthenticated-without-token".to_owned()].into();
    let error = interop::run(&run).await.unwrap_err();
    assert!(
        error.contains("does not run over framed streams"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_names_a_framed_runs_report_apart_from_a_grpc_one() {
    const BIN: &str = env!("CARGO_BIN_EXE_cosystem-conformance");
    let framed = serve_framed_tcp(demo_host(SyncMode::Patch)).await;
    let grpc = serve_reference(demo_host(SyncMode::Patch), None).await;
    for (url, mode) in [(&framed.url, "host-framed"), (&grpc.url, "host")] {
        let url = url.clone();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN)
                .args(["host", "--connect", &url, "--format", "json"])
                .args(["--case", "grpc-initial-sync-gets-snapshot"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(output.status.success(), "{output:?}");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["mode"], mode);
        assert_eq!(report["passed"], 1);
    }
}

/// §7.3: every wait is bounded by the step timeout. A host that writes
/// nothing but empty frames (which receivers ignore, FB2) is still a host
/// that sent nothing, so the wait ends on time rather than at the case's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_sending_only_empty_frames_fails_at_the_step_timeout() {
    use tokio::io::AsyncWriteExt;
    let url = fake_framed_host(|mut socket| async move {
        while socket.write_all(&[0, 0, 0, 0]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut run = config(&url);
    run.select.names = ["grpc-initial-sync-gets-snapshot".to_owned()].into();
    run.step_timeout = Duration::from_millis(300);
    run.case_timeout = Duration::from_secs(50);
    let why = the_failure(&run).await;
    assert!(why.contains("nothing received within 300 ms"), "{why}");
}

/// A case that runs out of time says what it was waiting for when it was
/// stopped, and how far its stream had got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_timeout_names_the_wait_it_stopped() {
    // A framed host that accepts and reads, and never answers.
    let url = fake_framed_host(|mut socket| async move {
        let _ = tokio::io::copy(&mut socket, &mut tokio::io::sink()).await;
    })
    .await;
    let mut run = config(&url);
    run.select.names = ["grpc-initial-sync-gets-snapshot".to_owned()].into();
    run.step_timeout = Duration::from_secs(600);
    run.case_timeout = Duration::from_millis(500);
    let why = the_failure(&run).await;
    assert!(
        why.starts_with("the case did not finish within 500 ms; when it was stopped, stream "),
        "{why}"
    );
    assert!(
        why.contains(
            " was waiting for its next envelope, having received 0 envelope(s), with sync request "
        ),
        "{why}"
    );
    assert!(why.ends_with(" unanswered"), "{why}");
}

/// A framed host that closes a connection amid a frame, wherever the cut
/// falls, has closed it (FB5, §7.3): a case that expects an envelope fails
/// for the close. One that closes after bytes that cannot begin a frame
/// (text) fails with that named: they are not a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framed_host_closing_amid_a_frame_has_closed_and_after_text_has_not() {
    use tokio::io::AsyncWriteExt;
    let cut = "the host closed the connection amid a frame";
    let cases: [(&[u8], &str); 5] = [
        (&[0, 0, 0], cut),
        (&[0, 0, 0, 16, 1, 2, 3], cut),
        (&[0, 0, 0, 16], cut),
        (
            b"err",
            "the host closed the connection after bytes that cannot begin a frame (the stream ended with 3 byte(s) of an unfinished frame, its length prefix included)",
        ),
        (
            b"error: bad frame\n",
            "the host wrote bytes that are not frames of envelopes (FB1)",
        ),
    ];
    for (written, expected) in cases {
        let url = fake_framed_host(move |mut socket| async move {
            let _ = socket.write_all(written).await;
            let _ = socket.shutdown().await;
        })
        .await;
        let mut run = config(&url);
        run.select.names = ["grpc-initial-sync-gets-snapshot".to_owned()].into();
        let why = the_failure(&run).await;
        assert!(why.contains(expected), "{written:?}: {why}");
    }
}

/// tonic would connect to any scheme as plain gRPC: a URL of another
/// scheme is refused before anything is tried, naming what is spoken.
#[tokio::test]
async fn a_url_of_a_scheme_the_runner_does_not_speak_is_refused() {
    for url in ["ftp://127.0.0.1:1", "https://127.0.0.1:1", "127.0.0.1:1"] {
        let error = interop::run(&config(url)).await.unwrap_err();
        assert!(error.contains("the runner speaks plain gRPC"), "{error}");
    }
}
