//! The client interop runner (`cosystem-conformance client -- CMD…`) run as
//! a program against the reference adapter (`cosystem-conformance
//! adapter`): the unbroken adapter passes every case, each deliberate
//! breakage fails exactly the cases that check what it breaks, and adapters
//! that crash or hang fail cases instead of stalling the run.

use std::collections::BTreeSet;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cosystem-conformance");

fn conformance(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the conformance binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs every client case against the reference adapter with `adapter_args`
/// and returns the names of the failed cases and the exit code.
fn failing_cases(adapter_args: &[&str]) -> (BTreeSet<String>, Option<i32>) {
    let mut args = vec!["client", "--format", "json", "--", BIN, "adapter"];
    args.extend_from_slice(adapter_args);
    let output = conformance(&args);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): {}\n{}",
            stdout(&output),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let failures: Vec<&Value> = report["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| c["outcome"] == "fail")
        .collect();
    if let ["--break", mode] = adapter_args {
        let required = failures.iter().filter(|c| c["tier"] == "required");
        assert_eq!(
            documented_failures(mode),
            (failures.len(), required.count()),
            "CONFORMANCE.md §6.7's counts for --break {mode}"
        );
    }
    let failed = failures
        .iter()
        .map(|c| c["name"].as_str().expect("a name").to_owned())
        .collect();
    (failed, output.status.code())
}

/// The cases CONFORMANCE.md §6.7 says `--break mode` fails: all of them,
/// and how many are required (its "N (R)").
fn documented_failures(mode: &str) -> (usize, usize) {
    const DOC: &str = include_str!("../../spec/CONFORMANCE.md");
    let row = DOC
        .lines()
        .find(|l| l.starts_with(&format!("| `{mode}` |")))
        .unwrap_or_else(|| panic!("§6.7 has no row for {mode}"));
    let counts = row.rsplit(" | ").next().expect("a last column");
    let (all, rest) = counts.split_once(" (").expect("N (R)");
    let required = rest.split_once(')').expect("N (R)").0;
    (all.parse().expect("N"), required.parse().expect("R"))
}

/// Runs `client-live-patch-applies` alone, with `options`, against an
/// adapter that is the shell `script`.
fn one_case_against_shell(script: &str, options: &[&str]) -> Output {
    let mut args = vec!["client", "--case", "client-live-patch-applies"];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    conformance(&args)
}

/// The report of a run that must have failed (exit status 1). Quoted cut
/// to 4 KiB: the adapters that make such runs write megabytes.
fn failed_run(output: &Output) -> String {
    let text = stdout(output);
    assert_eq!(output.status.code(), Some(1), "{text:.4096}");
    text
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn reference_adapter_passes_every_client_case() {
    let output = conformance(&["client", "--", BIN, "adapter"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
    assert!(text.lines().filter(|l| l.starts_with("PASS ")).count() > 50);
    assert!(!text.contains("FAIL "));
}

// The sets below are exactly the vectors whose scripts reach the broken
// behaviour; a new vector exercising it belongs in its set.

/// Asserts that the reference adapter broken as `mode` fails exactly
/// `cases`, and that the run fails.
fn fails_exactly(mode: &str, cases: &[&str]) {
    let (failed, code) = failing_cases(&["--break", mode]);
    assert_eq!(code, Some(1));
    assert_eq!(failed, names(cases));
}

#[test]
fn applying_across_a_gap_fails_exactly_the_gap_cases() {
    fails_exactly(
        "apply-across-gap",
        &[
            "client-applicable-patches-apply-while-syncing",
            "client-bookmark-ahead-reveals-gap",
            "client-failed-patch-reported-while-syncing",
            "client-gap-reports-version-gap-and-resumes",
            "client-gap-while-disconnected-waits-for-reconnect",
            "client-gap-while-syncing-is-dropped",
            "client-huge-versions",
            "client-old-patch-while-syncing-is-dropped",
            "client-patch-from-other-epoch-while-resuming-asks-for-snapshot",
            "client-reply-that-cannot-apply-keeps-request-outstanding",
            "client-result-ahead-while-syncing-sends-nothing-more",
            "client-retry-resumes-from-mirror-version",
            "client-stale-snapshot-reply-clears-its-request",
            "client-stale-snapshot-reported-while-covered",
            "client-sync-reply-clears-request",
        ],
    );
}

#[test]
fn settling_before_catching_up_fails_exactly_the_read_your_writes_cases() {
    fails_exactly(
        "settle-before-catch-up",
        &[
            "client-connection-loss-settles-sent-calls",
            "client-deadline-applies-to-held-result",
            "client-dispose-settles-every-call",
            "client-duplicate-result-while-held-is-noticed",
            "client-error-result-waits-for-its-version",
            "client-held-results-settle-in-arrival-order",
            "client-reported-loss-keeps-held-results-and-an-outstanding-sync",
            "client-result-ahead-is-held-until-mirror-catches-up",
            "client-result-ahead-while-syncing-sends-nothing-more",
            "client-result-beyond-a-later-sync-reply-is-internal",
            "client-result-value-out-of-range-or-nan-is-internal",
        ],
    );
}

#[test]
fn reporting_settlements_before_state_changed_fails_exactly_the_held_result_cases() {
    fails_exactly(
        "settled-first",
        &[
            "client-connection-loss-settles-sent-calls",
            "client-duplicate-result-while-held-is-noticed",
            "client-error-result-waits-for-its-version",
            "client-held-results-settle-in-arrival-order",
            "client-reported-loss-keeps-held-results-and-an-outstanding-sync",
            "client-result-ahead-is-held-until-mirror-catches-up",
            "client-result-ahead-while-syncing-sends-nothing-more",
            "client-result-value-out-of-range-or-nan-is-internal",
            "client-result-waits-while-empty",
        ],
    );
}

#[test]
fn ignoring_the_epoch_fails_exactly_the_epoch_cases() {
    fails_exactly(
        "ignore-epoch",
        &[
            "client-calls-settled-together-settle-in-call-order",
            "client-envelope-with-empty-epoch-is-malformed",
            "client-new-epoch-settles-calls-outcome-unknown",
            "client-new-epoch-settles-queued-call-and-never-sends-it",
            "client-new-epoch-snapshot-replaces-mirror",
            "client-patch-from-other-epoch-reports-missing-snapshot",
            "client-patch-from-other-epoch-while-resuming-asks-for-snapshot",
            "client-result-from-other-epoch-is-outcome-unknown",
        ],
    );
}

#[test]
fn reporting_settlements_out_of_order_fails_exactly_the_settlement_order_cases() {
    fails_exactly(
        "reverse-settlements",
        &[
            "client-calls-settled-together-settle-in-call-order",
            "client-deadlines-passing-together-settle-in-deadline-order",
            "client-dispose-settles-every-call",
            "client-held-results-settle-in-arrival-order",
            "client-host-silence-comes-after-the-deadlines-due-with-it",
        ],
    );
}

#[test]
fn taking_a_missing_capability_for_the_right_one_fails_exactly_the_capability_case() {
    let (failed, code) = failing_cases(&["--break", "accept-empty-capability"]);
    assert_eq!(failed, names(&["client-ignores-foreign-capability"]));
    // A recommended case: reported, but the run passes.
    assert_eq!(code, Some(0));
}

#[test]
fn never_resyncing_fails_every_healing_case() {
    let (failed, code) = failing_cases(&["--break", "skip-resync"]);
    assert_eq!(code, Some(1));
    for healing in [
        "client-gap-reports-version-gap-and-resumes",
        "client-patch-before-snapshot-reports-missing-snapshot",
        "client-failed-patch-keeps-mirror-and-asks-for-snapshot",
        "client-result-ahead-is-held-until-mirror-catches-up",
        "client-unanswered-sync-is-retried",
        "client-reconnect-sends-sync-before-queued-calls",
    ] {
        assert!(failed.contains(healing), "{healing} passed: {failed:?}");
    }
    assert!(!failed.contains("client-start-sends-initial-sync"));
}

#[test]
fn the_breakage_is_also_read_from_the_environment() {
    let output = Command::new(BIN)
        .args([
            "client",
            "--case",
            "client-gap-reports-version-gap-and-resumes",
            "--",
            BIN,
            "adapter",
        ])
        .env("COSYSTEM_ADAPTER_BREAK", "apply-across-gap")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).starts_with("FAIL client-gap-reports-version-gap-and-resumes: "));
}

/// Runs the gap case with the case listed in a file passed as `flag`
/// (`--known-failures` or `--skip`), against an adapter broken (or not)
/// with `apply-across-gap`.
fn run_gap_case_listed(flag: &str, broken: bool) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!(
        "cosystem-list-{}{flag}-{broken}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cases.txt");
    std::fs::write(
        &file,
        "# the broken adapter cannot heal gaps\nclient-gap-reports-version-gap-and-resumes  # gap\n",
    )
    .unwrap();
    let mut args = vec![
        "client",
        "--case",
        "client-gap-reports-version-gap-and-resumes",
        flag,
        file.to_str().unwrap(),
        "--",
        BIN,
        "adapter",
    ];
    if broken {
        args.extend(["--break", "apply-across-gap"]);
    }
    let output = conformance(&args);
    std::fs::remove_dir_all(&dir).ok();
    output
}

fn run_listed_gap_case(broken: bool) -> std::process::Output {
    run_gap_case_listed("--known-failures", broken)
}

#[test]
fn a_listed_case_that_fails_is_reported_as_a_known_failure_and_the_run_succeeds() {
    let output = run_listed_gap_case(true);
    let text = stdout(&output);
    assert!(
        text.starts_with("XFAIL client-gap-reports-version-gap-and-resumes: "),
        "{text}"
    );
    assert!(
        text.ends_with("\n0 passed, 0 failed, 1 known failure\n"),
        "{text}"
    );
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn a_listed_case_that_passes_is_an_unexpected_pass_and_fails_the_run() {
    let output = run_listed_gap_case(false);
    assert_eq!(
        stdout(&output),
        "XPASS client-gap-reports-version-gap-and-resumes (listed as a known failure, but passed: take it off the list)\n\
         0 passed, 0 failed, 1 unexpected pass\n"
    );
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn one_case_can_be_run_and_reported_as_junit() {
    let output = conformance(&[
        "client",
        "--case",
        "client-live-patch-applies",
        "--format",
        "junit",
        "--",
        BIN,
        "adapter",
    ]);
    let xml = stdout(&output);
    assert_eq!(output.status.code(), Some(0));
    assert!(xml.starts_with("<?xml"));
    assert!(xml.contains("tests=\"1\" failures=\"0\" skipped=\"0\""));
    assert!(xml.contains("name=\"client-live-patch-applies\""));
}

#[test]
fn unknown_case_names_are_usage_errors() {
    let output = conformance(&[
        "client",
        "--case",
        "client-no-such-case",
        "--",
        BIN,
        "adapter",
    ]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn an_adapter_that_exits_fails_the_case_with_its_stderr() {
    let output =
        one_case_against_shell("read line || exit 0; echo adapter gave up >&2; exit 3", &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with("FAIL client-live-patch-applies: "),
        "{text}"
    );
    // Quoted once: the failure already carries it, and the runner does not
    // append it again.
    assert_eq!(text.matches("adapter gave up").count(), 1, "{text}");
}

#[test]
fn an_adapter_that_never_answers_is_timed_out() {
    let output = conformance(&[
        "client",
        "--case",
        "client-live-patch-applies",
        "--reply-timeout-ms",
        "200",
        "--start-timeout-ms",
        "200",
        "--",
        "sleep",
        "30",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("no reply to start"), "{text}");
}

#[test]
fn an_adapter_that_answers_garbage_fails_the_case() {
    let output = one_case_against_shell("while read line; do echo '{\"sent\": 5}'; done", &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("sent must be an array"), "{text}");
}

#[test]
fn an_adapter_writing_without_a_newline_fails_at_the_line_bound_not_out_of_memory() {
    let output = one_case_against_shell(
        "read line || exit 0; exec cat /dev/zero",
        &["--reply-timeout-ms", "60000"],
    );
    let text = failed_run(&output);
    assert!(
        text.contains("a reply line longer than 67108864 bytes"),
        "{text:.4096}"
    );
}

/// A mistyped script path given to an interpreter starts the interpreter,
/// which then fails: every case failing alike would hide that.
#[test]
fn an_adapter_that_fails_on_empty_input_is_a_run_that_cannot_be_made() {
    let output = conformance(&[
        "client",
        "--",
        "sh",
        "-c",
        "echo no such adapter script >&2; exit 2",
    ]);
    let text = stdout(&output);
    let error = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}{error}");
    assert!(!text.contains("FAIL "), "{text}");
    assert!(
        error.contains("exited (exit status: 2) when its input ended")
            && error.contains("no such adapter script"),
        "{error}"
    );
}

#[test]
fn a_huge_reply_is_quoted_cut_to_the_reason_bound() {
    let output = one_case_against_shell(
        "read line || exit 0; head -c 1000000 /dev/zero | tr '\\0' x; echo; sleep 5",
        &[],
    );
    let text = failed_run(&output);
    let failure = text.lines().next().unwrap_or_default();
    assert!(failure.contains("is not JSON"), "{failure:.4096}");
    assert!(failure.contains("left out"), "{failure:.4096}");
    assert!(failure.len() < 17 * 1024, "{}", failure.len());
}

#[test]
fn an_adapter_that_closes_its_stdout_and_stays_is_told_apart_from_one_that_exited() {
    let output = one_case_against_shell("read line || exit 0; exec >&-; sleep 30", &[]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("closed its stdout before replying to start, and is still running"),
        "{text}"
    );
}

#[cfg(unix)]
#[test]
fn a_hung_adapter_is_killed_with_everything_its_wrapper_started() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("cosystem-hung-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("adapter.sh");
    // A wrapper whose child never answers (and holds the pipes open).
    let marker = format!("{}", 900_000 + std::process::id() % 99_999);
    std::fs::write(&script, format!("#!/bin/sh\nsleep {marker}\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A PATH with `sleep` and no `kill` program, as in slim images: the
    // group must be killed all the same.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a sleep program");
    let _ = std::os::unix::fs::symlink(sleep, bin.join("sleep"));
    let output = Command::new(BIN)
        .args([
            "client",
            "--case",
            "client-live-patch-applies",
            "--reply-timeout-ms",
            "300",
            "--start-timeout-ms",
            "300",
            "--",
            script.to_str().unwrap(),
        ])
        .env("PATH", &bin)
        .output()
        .expect("the conformance binary runs");
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let left = Command::new("pgrep")
        .args(["-f", &format!("sleep {marker}")])
        .output()
        .expect("pgrep runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        left.stdout.is_empty(),
        "the wrapper's child outlived the run: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// A wrapper that leaves something running in the background and then
/// answers every case: what it left is killed with its group when each
/// case ends, not only when a case times out.
#[cfg(unix)]
#[test]
fn what_a_passing_adapters_wrapper_left_running_is_killed_after_the_case() {
    let marker = format!("{}", 800_000 + std::process::id() % 99_999);
    let output = one_case_against_shell(&format!("sleep {marker} & exec {BIN} adapter"), &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let left = Command::new("pgrep")
        .args(["-f", &format!("sleep {marker}")])
        .output()
        .expect("pgrep runs");
    assert!(
        left.stdout.is_empty(),
        "the wrapper's background child outlived the run: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// A runner stopped by a signal, as a CI job cancelled or an operator's
/// Ctrl-C stops it, kills the adapter it waits on, and what that adapter
/// started: their process group is their own, so nothing else would.
#[cfg(unix)]
#[test]
fn a_runner_stopped_by_a_signal_kills_the_adapter_it_waits_on() {
    let (mut runner, adapter) = runner_waiting_on_a_hung_adapter("", "a");
    signal(&runner, "TERM");
    let status = runner.wait().expect("the runner ends");
    assert_eq!(status.code(), Some(143), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut runner.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("stopped by a signal; killed 1 adapter(s)"),
        "{stderr}"
    );
    adapter.assert_gone();
}

/// A runner started ignoring SIGHUP, as `nohup` starts it, goes on
/// ignoring it; SIGTERM still stops it.
#[cfg(target_os = "linux")]
#[test]
fn a_runner_started_ignoring_sighup_goes_on_ignoring_it() {
    let (mut runner, adapter) = runner_waiting_on_a_hung_adapter("trap '' HUP; ", "b");
    signal(&runner, "HUP");
    // A runner that acted on it would have killed the adapter and exited.
    let kept = (0..25).all(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        matches!(runner.try_wait(), Ok(None))
    });
    signal(&runner, "TERM");
    let status = runner.wait().expect("the runner ends");
    assert!(kept, "the runner ended on SIGHUP: {status:?}");
    assert_eq!(status.code(), Some(143), "{status:?}");
    adapter.assert_gone();
}

/// Sends `name` (as `kill` takes it) to `child`.
#[cfg(unix)]
fn signal(child: &std::process::Child, name: &str) {
    let signalled = Command::new("sh")
        .args(["-c", &format!("kill -{name} {}", child.id())])
        .status()
        .expect("sh runs");
    assert!(signalled.success());
}

/// The processes of an adapter that never replies, found by the marker
/// in their command lines.
#[cfg(unix)]
struct HungAdapter {
    marker: String,
}

#[cfg(unix)]
impl HungAdapter {
    /// Asserts that no process of the adapter is left. SIGKILL is sent
    /// before the runner exits; the kernel may take a moment to end them.
    fn assert_gone(&self) {
        use std::time::{Duration, Instant};
        let survivors = || {
            let left = Command::new("pgrep")
                .args(["-f", &format!("sleep {}", self.marker)])
                .output()
                .expect("pgrep runs");
            String::from_utf8_lossy(&left.stdout).into_owned()
        };
        let bound = Instant::now() + Duration::from_secs(10);
        while !survivors().is_empty() && Instant::now() < bound {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            survivors().is_empty(),
            "the adapter outlived the runner: {}",
            survivors()
        );
    }
}

/// A client run, started by `sh` after `prefix`, whose adapter (a shell
/// that leaves a `sleep` in the background and becomes another) never
/// replies; returned once the case's adapter has started (after the
/// probe's). `tag` tells apart the markers of tests running at once.
#[cfg(unix)]
fn runner_waiting_on_a_hung_adapter(prefix: &str, tag: &str) -> (std::process::Child, HungAdapter) {
    use std::time::{Duration, Instant};
    let offset = if tag == "a" { 700_000 } else { 600_000 };
    let marker = format!("{}", offset + std::process::id() % 99_999);
    let started =
        std::env::temp_dir().join(format!("cosystem-signal-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&started);
    let script = format!(
        "echo $$ >> {}; sleep {marker} & exec sleep {marker}",
        started.display()
    );
    let runner = Command::new("sh")
        .arg("-c")
        .arg(format!("{prefix}exec \"$0\" \"$@\""))
        .arg(BIN)
        .args([
            "client",
            "--case",
            "client-live-patch-applies",
            "--reply-timeout-ms",
            "600000",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the conformance binary runs");
    let bound = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&started).map_or(0, |s| s.lines().count()) < 2 {
        assert!(Instant::now() < bound, "the case's adapter never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&started);
    (runner, HungAdapter { marker })
}

#[test]
fn the_report_files_of_a_run_not_made_say_why() {
    let dir = std::env::temp_dir().join(format!("cosystem-not-made-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (junit, json) = (dir.join("r.xml"), dir.join("r.json"));
    let output = conformance(&[
        "client",
        "--junit-file",
        junit.to_str().unwrap(),
        "--json-file",
        json.to_str().unwrap(),
        "--",
        "/no/such/adapter",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["success"], false);
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("cannot start adapter"),
        "{report}"
    );
    // A CI that keeps only the files still learns which suite it ran.
    assert!(
        report["suite"]
            .as_str()
            .is_some_and(|s| s.contains("PROTOCOL.md revision")),
        "{report}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<error type=\"not-made\""), "{xml}");
    assert!(xml.contains("cannot start adapter"), "{xml}");
    assert!(xml.contains("<property name=\"suite\""), "{xml}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_adapter_is_a_run_that_could_not_be_made() {
    let output = conformance(&["client", "--", "/no/such/adapter"]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot start adapter"));
}

#[test]
fn a_case_listed_to_skip_is_not_run_and_reported_skipped() {
    // The adapter would fail the case; skipped, it is not run at all.
    let output = run_gap_case_listed("--skip", true);
    assert_eq!(
        stdout(&output),
        "SKIP client-gap-reports-version-gap-and-resumes (listed in --skip)\n0 passed, 0 failed, 1 skipped\n"
    );
    assert_eq!(output.status.code(), Some(0));
}

/// Selection and report files, as a CI uses them: several `--case`s, a
/// `--filter` and a `--tier` each narrow the run; `--junit-file` and
/// `--json-file` hold the same run as the printed report; a failure is
/// printed with its requirements and what the case checks.
#[test]
fn a_ci_run_selects_cases_and_writes_its_reports_to_files() {
    let dir = std::env::temp_dir().join(format!("conformance-ci-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let junit = dir.join("report.xml");
    let json = dir.join("report.json");
    let output = conformance(&[
        "client",
        "--case",
        "client-live-patch-applies",
        "--case",
        "client-gap-reports-version-gap-and-resumes",
        "--junit-file",
        junit.to_str().unwrap(),
        "--json-file",
        json.to_str().unwrap(),
        "--",
        BIN,
        "adapter",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(
        stdout(&output).ends_with("2 passed, 0 failed\n"),
        "{}",
        stdout(&output)
    );
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file");
    assert!(xml.contains("name=\"client-live-patch-applies\""), "{xml}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON file")).unwrap();
    assert_eq!(report["passed"], 2);

    let output = conformance(&[
        "client",
        "--filter",
        "silence",
        "--tier",
        "recommended",
        "--",
        BIN,
        "adapter",
    ]);
    let text = stdout(&output);
    let played: Vec<&str> = text.lines().filter(|l| l.starts_with("PASS ")).collect();
    assert!(!played.is_empty(), "{text}");
    assert!(played.iter().all(|l| l.contains("silence")), "{text}");
    let recommended = conformance(&["list"]);
    for line in &played {
        let name = line.trim_start_matches("PASS ");
        assert!(
            stdout(&recommended)
                .lines()
                .any(|l| l.contains(" recommended ") && l.contains(name)),
            "{name} is not recommended"
        );
    }

    let broken = conformance(&[
        "client",
        "--case",
        "client-gap-reports-version-gap-and-resumes",
        "--",
        BIN,
        "adapter",
        "--break",
        "apply-across-gap",
    ]);
    let text = stdout(&broken);
    assert_eq!(broken.status.code(), Some(1), "{text}");
    assert!(
        text.contains("\n     spec "),
        "the failure names its requirements: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs a CI could not trust are refused before any case runs (status 2):
/// a selection that matches nothing, a report file that cannot be created,
/// a host vector named to a runner.
#[test]
fn runs_that_cannot_be_trusted_are_refused_before_any_case_runs() {
    // Each is refused with status 2 before any case runs (nothing printed
    // on stdout), saying why on stderr.
    let refused = |args: &[&str], why: &str| {
        let output = conformance(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stdout(&output)
        );
        assert!(
            stdout(&output).is_empty(),
            "{args:?} ran: {}",
            stdout(&output)
        );
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(why), "{args:?}: {said}");
    };
    let adapter = ["--", BIN, "adapter"];
    let client = |args: &[&'static str]| [&["client"], args, &adapter[..]].concat();
    refused(
        &client(&["--filter", "no-such-case"]),
        "no client case matches",
    );
    refused(
        &client(&["--case", "client-local-call-limit", "--tier", "recommended"]),
        "no client case matches",
    );
    refused(
        &client(&["--json-file", "/nonexistent-dir/report.json"]),
        "/nonexistent-dir/report.json",
    );
    refused(
        &client(&["--case", "host-todos-methods"]),
        "host-todos-methods is a host vector",
    );
    let host = |args: &[&'static str]| [&["host", "--connect", "127.0.0.1:1"], args].concat();
    refused(
        &host(&["--case", "host-todos-methods"]),
        "host-todos-methods is a host vector",
    );
    refused(
        &host(&["--filter", "nothing-like-it"]),
        "no host case matches",
    );
}
