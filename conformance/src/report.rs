//! Results of a run, and their printing as text, JSON or JUnit XML.
//!
//! Every mode of `cosystem-conformance` (vectors against the reference
//! cores, `client` against an adapter, `host` against a gRPC host) reports
//! through [`Report`], so they share one output format:
//!
//! ```text
//! PASS client-live-patch-applies
//! FAIL client-gap-reports-version-gap-and-resumes: step 2: expected 1 conflicts, got 0: []
//! XFAIL client-overflow-snapshot-is-noticed: step 1: expected 1 notices, got 0: []
//! 90 passed, 1 failed, 1 known failure
//! ```
//!
//! A run succeeds when no *required* case failed and no case listed as a
//! known failure passed; recommended failures are reported and counted but
//! do not fail it, unless the report is [`Report::strict`].

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::vectors::{Case, CaseInfo, Failure, Role, Tier};

/// What became of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Pass,
    /// It failed, for this reason.
    Fail(String),
    /// It was not run, for this reason (not applicable to the
    /// configuration given).
    Skip(String),
    /// It was listed as a known failure and failed, for this reason.
    KnownFailure(String),
    /// It was listed as a known failure but passed: the list is out of
    /// date, and the run fails until the case is taken off it.
    UnexpectedPass,
}

impl Outcome {
    /// The outcome of a case listed as a known failure: a failure is
    /// expected, a pass is not; a skip stays a skip.
    pub fn expected_to_fail(self) -> Self {
        match self {
            Self::Pass => Self::UnexpectedPass,
            Self::Fail(why) => Self::KnownFailure(why),
            skip => skip,
        }
    }
}

/// The longest reason a result keeps, in bytes: a peer that answers with
/// a whole state or thousands of envelopes must not make each failure, and
/// the report files, megabytes long.
pub const MAX_REASON_BYTES: usize = 16 * 1024;

impl Outcome {
    /// This outcome with its reason cut to [`MAX_REASON_BYTES`] in the
    /// middle, keeping the start (the step and its first difference) and
    /// the end (the adapter's last words on stderr).
    fn clipped(self) -> Self {
        match self {
            Self::Fail(why) => Self::Fail(clip_middle(why)),
            Self::Skip(why) => Self::Skip(clip_middle(why)),
            Self::KnownFailure(why) => Self::KnownFailure(clip_middle(why)),
            other => other,
        }
    }
}

/// `text` unchanged if it is at most [`MAX_REASON_BYTES`] long, else its
/// first and last halves of that, on character boundaries, with what was
/// left out said between them.
fn clip_middle(text: String) -> String {
    if text.len() <= MAX_REASON_BYTES {
        return text;
    }
    let half = MAX_REASON_BYTES / 2;
    let mut head = half;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - half;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} … ({} bytes of {} left out) … {}",
        &text[..head],
        tail - head,
        text.len(),
        &text[tail..]
    )
}

/// How many cases ended each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Passed.
    pub passed: usize,
    /// Failed, of either tier.
    pub failed: usize,
    /// Not run.
    pub skipped: usize,
    /// Listed as known failures, and failed.
    pub known_failures: usize,
    /// Listed as known failures, and passed.
    pub unexpected_passes: usize,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// The side it tests.
    pub role: Role,
    /// The requirement ids of spec/PROTOCOL.md it checks (may be empty).
    pub spec: Vec<String>,
    /// What it checks, in one line (may be empty).
    pub description: String,
    /// What became of it.
    pub outcome: Outcome,
    /// How long it ran, as the runner measured it from the case's start to
    /// its outcome; zero for a skipped case (one not run, or one that
    /// skipped itself as not applicable). Reported so that a CI's test
    /// view shows which cases a run's time went to.
    pub duration: Duration,
}

/// The results of a run, in the order the cases were run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One entry per case.
    pub results: Vec<CaseResult>,
    /// What suite ran (`suite::describe`), written into the JSON and
    /// JUnit reports when set.
    pub suite: Option<String>,
    /// Whether a recommended case's failure fails the run too (`--strict`),
    /// for an implementation that means to pass every case: one listed as
    /// a known failure still does not.
    pub strict: bool,
}

/// Runs `run` and turns a panic into a failure, so one broken case cannot
/// hide the others.
pub fn catch(run: impl FnOnce() -> Result<(), Failure>) -> Outcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(())) => Outcome::Pass,
        Ok(Err(f)) => Outcome::Fail(f.to_string()),
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Outcome::Fail(format!("panicked: {what}"))
        }
    }
}

impl Report {
    /// Runs `cases` with `run` and collects the results. A panic in `run`
    /// is recorded as that case's failure.
    pub fn run<'a>(
        cases: impl IntoIterator<Item = &'a Case>,
        run: impl Fn(&Case) -> Result<(), Failure>,
    ) -> Self {
        let mut report = Self::default();
        for case in cases {
            let started = Instant::now();
            let outcome = catch(|| run(case));
            report.push_case(case.info(), case.role(), outcome).duration = started.elapsed();
        }
        report
    }

    /// Records one result, with nothing said about what the case checks;
    /// the result, to set its duration.
    pub fn push(
        &mut self,
        name: &str,
        tier: Tier,
        role: Role,
        outcome: Outcome,
    ) -> &mut CaseResult {
        self.push_described(name, tier, role, &[] as &[&str], "", outcome)
    }

    /// Records the result of the vector case `info`; the result, to set its
    /// duration.
    pub fn push_case(&mut self, info: &CaseInfo, role: Role, outcome: Outcome) -> &mut CaseResult {
        self.push_described(
            &info.name,
            info.tier,
            role,
            &info.spec,
            &info.description,
            outcome,
        )
    }

    /// Records one result with the requirements the case checks and what
    /// it checks, which a failure is reported with; the result, with a zero
    /// duration for the caller to set.
    pub fn push_described(
        &mut self,
        name: &str,
        tier: Tier,
        role: Role,
        spec: &[impl AsRef<str>],
        description: &str,
        outcome: Outcome,
    ) -> &mut CaseResult {
        let index = self.results.len();
        self.results.push(CaseResult {
            name: name.to_owned(),
            tier,
            role,
            spec: spec.iter().map(|s| s.as_ref().to_owned()).collect(),
            description: description.to_owned(),
            outcome: outcome.clipped(),
            duration: Duration::ZERO,
        });
        &mut self.results[index]
    }

    /// Why the case `name` is not to be run, if it is not: `skip` lists it,
    /// or `fail_fast` is set and a required case has failed already.
    pub fn not_to_run(
        &self,
        name: &str,
        skip: &BTreeSet<String>,
        fail_fast: bool,
    ) -> Option<&'static str> {
        if skip.contains(name) {
            Some(SKIPPED)
        } else if fail_fast && !self.required_passed() {
            Some(FAILED_FAST)
        } else {
            None
        }
    }

    /// The failed cases, of either tier.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
    }

    /// How many cases ended each way.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for r in &self.results {
            match r.outcome {
                Outcome::Pass => counts.passed += 1,
                Outcome::Fail(_) => counts.failed += 1,
                Outcome::Skip(_) => counts.skipped += 1,
                Outcome::KnownFailure(_) => counts.known_failures += 1,
                Outcome::UnexpectedPass => counts.unexpected_passes += 1,
            }
        }
        counts
    }

    /// Whether every required case that ran passed (a known failure is
    /// not counted as a failure).
    pub fn required_passed(&self) -> bool {
        self.failures().all(|r| r.tier != Tier::Required)
    }

    /// Whether the run succeeded: no required case failed (no case at
    /// all, when [`Report::strict`]), and no case listed as a known failure
    /// passed.
    pub fn succeeded(&self) -> bool {
        let counts = self.counts();
        let failures_allowed = !self.strict || counts.failed == 0;
        self.required_passed() && failures_allowed && counts.unexpected_passes == 0
    }

    /// One line per case (`PASS name`, `FAIL name: reason`,
    /// `XFAIL name: reason`, `XPASS name (…)`, `SKIP name (reason)`), then
    /// `N passed, N failed`, with the known failures, unexpected passes and
    /// skips appended when there are some.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            let _ = match &r.outcome {
                Outcome::Pass => writeln!(out, "PASS {}", r.name),
                Outcome::Fail(why) => writeln!(out, "FAIL {}: {}", r.name, one_line(why)),
                Outcome::Skip(why) => writeln!(out, "SKIP {} ({why})", r.name),
                Outcome::KnownFailure(why) => {
                    writeln!(out, "XFAIL {}: {}", r.name, one_line(why))
                }
                Outcome::UnexpectedPass => writeln!(out, "XPASS {} ({UNEXPECTED_PASS})", r.name),
            };
            // A failure says what the case checks and where the spec says
            // it, on a line of its own under it, and whether it fails the
            // run: a recommended case's does only under --strict.
            if matches!(r.outcome, Outcome::Fail(_)) {
                let tier = match (r.tier, self.strict) {
                    (Tier::Required, _) => None,
                    (Tier::Recommended, true) => Some("recommended"),
                    (Tier::Recommended, false) => {
                        Some("recommended, so it fails the run only with --strict")
                    }
                };
                let about = match (tier, r.about()) {
                    (Some(tier), Some(about)) => Some(format!("{tier}; {about}")),
                    (Some(tier), None) => Some(tier.to_owned()),
                    (None, about) => about,
                };
                if let Some(about) = about {
                    let _ = writeln!(out, "     {about}");
                }
            }
        }
        let _ = writeln!(out, "{}", self.summary());
        out
    }

    /// Writes the last result's line to stderr as the case ends, so that a
    /// run its CI cancels, or one that hangs, shows how far it got (the
    /// report itself comes at the end, on stdout or in its files).
    pub fn progress(&self) {
        let Some(r) = self.results.last() else {
            return;
        };
        let word = match &r.outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail(_) => "FAIL",
            Outcome::Skip(_) => "SKIP",
            Outcome::KnownFailure(_) => "XFAIL",
            Outcome::UnexpectedPass => "XPASS",
        };
        eprintln!(
            "[{}] {word} {} ({} ms)",
            self.results.len(),
            r.name,
            r.duration.as_millis()
        );
    }

    /// The closing line of [`Report::to_text`].
    pub fn summary(&self) -> String {
        let counts = self.counts();
        let mut line = format!("{} passed, {} failed", counts.passed, counts.failed);
        for (n, one, many) in [
            (counts.known_failures, "known failure", "known failures"),
            (
                counts.unexpected_passes,
                "unexpected pass",
                "unexpected passes",
            ),
            (counts.skipped, "skipped", "skipped"),
        ] {
            if n > 0 {
                let _ = write!(line, ", {n} {}", if n == 1 { one } else { many });
            }
        }
        line
    }

    /// The report as one JSON object: counts, whether the run succeeded,
    /// and one entry per case with its tier, outcome and reason.
    pub fn to_json(&self, mode: &str) -> Value {
        let counts = self.counts();
        let cases: Vec<Value> = self
            .results
            .iter()
            .map(|r| {
                let (outcome, reason) = match &r.outcome {
                    Outcome::Pass => ("pass", None),
                    Outcome::Fail(why) => ("fail", Some(why)),
                    Outcome::Skip(why) => ("skip", Some(why)),
                    Outcome::KnownFailure(why) => ("known-failure", Some(why)),
                    Outcome::UnexpectedPass => ("unexpected-pass", None),
                };
                let mut entry = json!({
                    "name": r.name,
                    "role": r.role.to_string(),
                    "tier": r.tier.to_string(),
                    "outcome": outcome,
                    "seconds": seconds(r.duration),
                });
                if let Some(reason) = reason {
                    entry["reason"] = json!(reason);
                }
                if !r.spec.is_empty() {
                    entry["spec"] = json!(r.spec);
                }
                if !r.description.is_empty() {
                    entry["description"] = json!(r.description);
                }
                entry
            })
            .collect();
        json!({
            "mode": mode,
            "suite": self.suite,
            "passed": counts.passed,
            "failed": counts.failed,
            "skipped": counts.skipped,
            "known_failures": counts.known_failures,
            "unexpected_passes": counts.unexpected_passes,
            "success": self.succeeded(),
            "cases": cases,
        })
    }

    /// The report as JUnit XML: one `<testsuite>` named after the mode, one
    /// `<testcase>` per case, classname `<role>.<tier>`. A failure is a
    /// `<failure>` whose `type` is the tier (so a recommended failure is
    /// visible but distinguishable); a skipped case and a known failure
    /// have `<skipped>`; an unexpected pass is a `<failure>` of type
    /// `unexpected-pass`.
    pub fn to_junit(&self, mode: &str) -> String {
        let counts = self.counts();
        let total = counts.passed
            + counts.failed
            + counts.skipped
            + counts.known_failures
            + counts.unexpected_passes;
        let failed = counts.failed + counts.unexpected_passes;
        let skipped = counts.skipped + counts.known_failures;
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites name=\"cosystem-conformance\" tests=\"{total}\" failures=\"{failed}\" skipped=\"{skipped}\">"
        );
        let time = junit_time(self.results.iter().map(|r| r.duration).sum());
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{total}\" failures=\"{failed}\" skipped=\"{skipped}\" time=\"{time}\">",
            xml_escape(mode)
        );
        if let Some(suite) = &self.suite {
            out.push_str(&suite_properties(suite));
        }
        for r in &self.results {
            let open = format!(
                "    <testcase classname=\"{}.{}\" name=\"{}\" time=\"{}\"",
                r.role,
                r.tier,
                xml_escape(&r.name),
                junit_time(r.duration)
            );
            let _ = match &r.outcome {
                Outcome::Pass => writeln!(out, "{open}/>"),
                Outcome::Fail(why) => writeln!(
                    out,
                    "{open}>\n      <failure type=\"{}\" message=\"{}\">{}{}</failure>\n    </testcase>",
                    r.tier,
                    xml_escape(&one_line(why)),
                    xml_escape(why),
                    r.about()
                        .map(|about| format!("\n{}", xml_escape(&about)))
                        .unwrap_or_default()
                ),
                Outcome::Skip(why) => writeln!(
                    out,
                    "{open}>\n      <skipped message=\"{}\"/>\n    </testcase>",
                    xml_escape(why)
                ),
                Outcome::KnownFailure(why) => writeln!(
                    out,
                    "{open}>\n      <skipped message=\"known failure: {}\"/>\n    </testcase>",
                    xml_escape(&one_line(why))
                ),
                Outcome::UnexpectedPass => writeln!(
                    out,
                    "{open}>\n      <failure type=\"unexpected-pass\" message=\"{UNEXPECTED_PASS}\"/>\n    </testcase>"
                ),
            };
        }
        out.push_str("  </testsuite>\n</testsuites>\n");
        out
    }

    /// The report of a run that could not be made (exit status 2), in
    /// `format`: no case results, and `why` as a JUnit `<error>` or a JSON
    /// `error` member, so that a CI step that publishes the report files
    /// whatever happened shows the reason instead of an empty file. `suite`
    /// is written as in a report of a run made.
    pub fn not_made(format: Format, mode: &str, why: &str, suite: Option<&str>) -> String {
        match format {
            Format::Text => format!("{why}\n"),
            Format::Json => {
                let value = json!({
                    "mode": mode,
                    "passed": 0,
                    "failed": 0,
                    "skipped": 0,
                    "known_failures": 0,
                    "unexpected_passes": 0,
                    "success": false,
                    "error": why,
                    "suite": suite,
                    "cases": [],
                });
                let mut text = serde_json::to_string_pretty(&value)
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                text.push('\n');
                text
            }
            Format::Junit => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                 <testsuites name=\"cosystem-conformance\" tests=\"1\" failures=\"0\" errors=\"1\">\n\
                 \x20 <testsuite name=\"{mode}\" tests=\"1\" failures=\"0\" errors=\"1\">\n\
                 {properties}\
                 \x20   <testcase classname=\"cosystem-conformance\" name=\"the run\">\n\
                 \x20     <error type=\"not-made\" message=\"{message}\">{text}</error>\n\
                 \x20   </testcase>\n\
                 \x20 </testsuite>\n\
                 </testsuites>\n",
                mode = xml_escape(mode),
                properties = suite.map_or(String::new(), suite_properties),
                message = xml_escape(&one_line(why)),
                text = xml_escape(why),
            ),
        }
    }

    /// Renders the report in `format`.
    pub fn render(&self, format: Format, mode: &str) -> String {
        match format {
            Format::Text => self.to_text(),
            Format::Json => {
                let mut text = serde_json::to_string_pretty(&self.to_json(mode))
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                text.push('\n');
                text
            }
            Format::Junit => self.to_junit(mode),
        }
    }
}

impl CaseResult {
    /// What the case checks and the requirements it cites
    /// (`J11, PC2: -0 equals 0 …`), if anything is known of them.
    fn about(&self) -> Option<String> {
        match (self.spec.is_empty(), self.description.is_empty()) {
            (true, true) => None,
            (false, true) => Some(format!("spec {}", self.spec.join(", "))),
            (true, false) => Some(self.description.clone()),
            (false, false) => Some(format!(
                "spec {}: {}",
                self.spec.join(", "),
                self.description
            )),
        }
    }
}

/// The JUnit `<properties>` line naming the suite that ran.
fn suite_properties(suite: &str) -> String {
    format!(
        "    <properties><property name=\"suite\" value=\"{}\"/></properties>\n",
        xml_escape(suite)
    )
}

/// The reason printed for a case not run because an earlier required case
/// failed under `--fail-fast`.
pub const FAILED_FAST: &str = "not run: a required case failed before it (--fail-fast)";

/// The reason printed for a case not run because `--skip` lists it.
pub const SKIPPED: &str = "listed in --skip";

/// Why an unexpected pass fails the run.
const UNEXPECTED_PASS: &str = "listed as a known failure, but passed: take it off the list";

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One line per case and a summary line.
    #[default]
    Text,
    /// One JSON object ([`Report::to_json`]).
    Json,
    /// JUnit XML ([`Report::to_junit`]).
    Junit,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            "junit" => Ok(Self::Junit),
            other => Err(format!("unknown format {other:?} (text, json or junit)")),
        }
    }
}

/// Reads a known-failures file: one case name per line; blank lines and
/// everything after a `#` are ignored.
pub fn parse_known_failures(text: &str) -> BTreeSet<String> {
    // Some editors start a UTF-8 file with a byte-order mark, which would
    // otherwise be an invisible first character of the first name.
    text.strip_prefix('\u{feff}')
        .unwrap_or(text)
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// How long a case that started at `started` ran, given its outcome: zero
/// if it was skipped (not run, or found not applicable), since a skip's own
/// bookkeeping is no case's time.
pub fn run_time(outcome: &Outcome, started: Instant) -> Duration {
    if matches!(outcome, Outcome::Skip(_)) {
        Duration::ZERO
    } else {
        started.elapsed()
    }
}

/// `duration` in seconds, to the millisecond, as a JSON number.
fn seconds(duration: Duration) -> f64 {
    // Rounded, not truncated, so that it reads as JUnit's `time` does.
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

/// `duration` in seconds with three decimals, as JUnit's `time` attribute
/// takes it.
fn junit_time(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64())
}

fn one_line(text: &str) -> String {
    text.replace('\n', " / ")
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters at all.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any reason, of any characters: at most the bound plus the note,
        /// its start and end kept, and one within the bound untouched.
        #[test]
        fn reasons_are_cut_in_the_middle_to_their_bound(
            head in "[a-zé]{0,64}",
            fill in 0usize..40_000,
            tail in "[a-z😀]{0,64}",
        ) {
            let why = format!("{head}{}{tail}", "ü".repeat(fill));
            let mut report = Report::default();
            report.push("x", Tier::Required, Role::Client, Outcome::Fail(why.clone()));
            let Outcome::Fail(kept) = &report.results[0].outcome else {
                panic!("{:?}", report.results[0].outcome);
            };
            if why.len() <= MAX_REASON_BYTES {
                proptest::prop_assert_eq!(kept, &why);
            } else {
                proptest::prop_assert!(kept.len() <= MAX_REASON_BYTES + 64, "{}", kept.len());
                proptest::prop_assert!(kept.starts_with(&head));
                proptest::prop_assert!(kept.ends_with(&tail));
                let note = format!(" bytes of {} left out) … ", why.len());
                proptest::prop_assert!(kept.contains(&note));
            }
        }
    }

    fn sample() -> Report {
        let mut r = Report::default();
        r.push("a", Tier::Required, Role::Client, Outcome::Pass)
            .duration = Duration::from_millis(1500);
        r.push(
            "b",
            Tier::Recommended,
            Role::Client,
            Outcome::Fail("x < y".into()),
        );
        r.push(
            "c",
            Tier::Recommended,
            Role::Client,
            Outcome::KnownFailure("no notice".into()),
        );
        r.push(
            "d",
            Tier::Recommended,
            Role::Host,
            Outcome::Skip("no token given".into()),
        );
        r
    }

    #[test]
    fn text_has_one_line_per_case_and_the_summary_counts_known_failures_and_skips() {
        assert_eq!(
            sample().to_text(),
            "PASS a\nFAIL b: x < y\n     recommended, so it fails the run only with --strict\n\
             XFAIL c: no notice\nSKIP d (no token given)\n\
             1 passed, 1 failed, 1 known failure, 1 skipped\n"
        );
        // Under --strict it fails the run, and the line says no more.
        let mut strict = sample();
        strict.strict = true;
        assert!(
            strict
                .to_text()
                .contains("FAIL b: x < y\n     recommended\n")
        );
        // A required case's line says what it checks, with no tier.
        let mut required = Report::default();
        required.push_described(
            "r",
            Tier::Required,
            Role::Client,
            &["P7"],
            "patches apply",
            Outcome::Fail("no".into()),
        );
        assert!(
            required
                .to_text()
                .starts_with("FAIL r: no\n     spec P7: patches apply\n")
        );
        let mut only = Report::default();
        only.push("a", Tier::Required, Role::Host, Outcome::Pass);
        assert_eq!(only.summary(), "1 passed, 0 failed");
    }

    #[test]
    fn recommended_failures_do_not_fail_the_run_but_required_ones_do() {
        assert!(sample().required_passed());
        let mut r = sample();
        r.push(
            "d",
            Tier::Required,
            Role::Client,
            Outcome::Fail("no".into()),
        );
        assert!(!r.required_passed());
    }

    #[test]
    fn junit_escapes_reasons_and_marks_failures_and_skips() {
        let xml = sample().to_junit("client");
        assert!(xml.contains("tests=\"4\" failures=\"1\" skipped=\"2\""));
        assert!(xml.contains("<failure type=\"recommended\" message=\"x &lt; y\">"));
        assert!(xml.contains("<skipped message=\"known failure: no notice\"/>"));
    }

    #[test]
    fn reports_give_each_case_its_duration_and_junit_the_total() {
        let xml = sample().to_junit("client");
        assert!(xml.contains("name=\"a\" time=\"1.500\"/>"), "{xml}");
        assert!(xml.contains("name=\"d\" time=\"0.000\">"), "{xml}");
        assert!(xml.contains("skipped=\"2\" time=\"1.500\">"), "{xml}");
        let json = sample().to_json("client");
        assert_eq!(json["cases"][0]["seconds"], 1.5);
        assert_eq!(json["cases"][3]["seconds"], 0.0);
    }

    #[test]
    fn a_case_not_run_took_no_time() {
        let started = Instant::now() - Duration::from_secs(1);
        assert_eq!(
            run_time(&Outcome::Skip("listed".into()), started),
            Duration::ZERO
        );
        assert!(run_time(&Outcome::Pass, started) >= Duration::from_secs(1));
    }

    #[test]
    fn a_strict_run_fails_on_a_recommended_failure_but_not_on_a_known_one() {
        let mut r = sample();
        assert!(r.succeeded(), "b, recommended, failed");
        r.strict = true;
        assert!(!r.succeeded(), "b fails a strict run");
        r.results.retain(|c| c.name != "b");
        assert!(r.succeeded(), "c, a known failure, does not");
    }

    #[test]
    fn a_listed_case_that_passes_fails_the_run_whatever_its_tier() {
        let outcome = Outcome::Pass.expected_to_fail();
        assert_eq!(outcome, Outcome::UnexpectedPass);
        let mut r = sample();
        assert!(r.succeeded());
        r.push("e", Tier::Recommended, Role::Client, outcome);
        assert!(r.required_passed());
        assert!(!r.succeeded());
        assert!(
            r.to_text().contains(
                "XPASS e (listed as a known failure, but passed: take it off the list)\n"
            )
        );
        assert!(r.summary().ends_with(", 1 unexpected pass, 1 skipped"));
        assert_eq!(r.to_json("client")["success"], false);
        assert!(
            r.to_junit("client")
                .contains("<failure type=\"unexpected-pass\"")
        );
    }

    #[test]
    fn a_listed_case_that_fails_is_a_known_failure_and_a_skip_stays_a_skip() {
        assert_eq!(
            Outcome::Fail("why".into()).expected_to_fail(),
            Outcome::KnownFailure("why".into())
        );
        assert_eq!(
            Outcome::Skip("n/a".into()).expected_to_fail(),
            Outcome::Skip("n/a".into())
        );
    }

    #[test]
    fn json_lists_every_case_with_its_outcome() {
        let v = sample().to_json("client");
        assert_eq!(v["passed"], 1);
        assert_eq!(v["success"], true);
        assert_eq!(v["cases"][1]["outcome"], "fail");
        assert_eq!(v["cases"][1]["reason"], "x < y");
        assert_eq!(v["cases"][2]["outcome"], "known-failure");
        assert_eq!(v["cases"][2]["reason"], "no notice");
        assert_eq!(v["known_failures"], 1);
        assert_eq!(v["cases"][3]["outcome"], "skip");
    }

    #[test]
    fn known_failures_ignore_comments_and_blank_lines() {
        let set = parse_known_failures("# header\n\na  # why\n  b\n#c\n");
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_name() {
        let set = parse_known_failures("\u{feff}client-live-patch-applies\r\nb\n");
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            ["b", "client-live-patch-applies"]
        );
    }

    #[test]
    fn a_run_not_made_is_a_valid_report_that_says_why() {
        let json: serde_json::Value = serde_json::from_str(&Report::not_made(
            Format::Json,
            "client",
            "no \"adapter\"",
            Some("0.1 (suite)"),
        ))
        .unwrap();
        assert_eq!(json["error"], "no \"adapter\"");
        assert_eq!(json["success"], false);
        assert_eq!(json["suite"], "0.1 (suite)");
        let xml = Report::not_made(Format::Junit, "host", "a <b> & c", Some("0.1 <s>"));
        assert!(xml.contains("message=\"a &lt;b&gt; &amp; c\""), "{xml}");
        assert!(xml.contains("errors=\"1\""), "{xml}");
        assert!(
            xml.contains("<property name=\"suite\" value=\"0.1 &lt;s&gt;\"/>"),
            "{xml}"
        );
        let xml = Report::not_made(Format::Junit, "host", "why", None);
        assert!(!xml.contains("<properties>"), "{xml}");
    }
}
