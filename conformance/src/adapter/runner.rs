//! The client interop run: every client vector, each against a fresh
//! adapter process.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::ClientUnderTest;
use super::process::{AdapterProcess, STDERR_QUOTED, Started};
use crate::report::{Outcome, Report, catch, run_time};
use crate::select::Selection;
use crate::vectors::{Case, Failure, client};

/// How to start the adapter and which cases to run.
#[derive(Debug, Clone)]
pub struct ClientRun {
    /// The adapter program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The cases to play.
    pub select: Selection,
    /// Cases expected to fail: run, and reported XFAIL or XPASS.
    pub known_failures: BTreeSet<String>,
    /// Cases not to run at all, reported SKIP.
    pub skip: BTreeSet<String>,
    /// The longest the adapter may take to answer one command.
    pub reply_timeout: Duration,
    /// The longest it may take to answer its first command, from its start,
    /// until some case's adapter has answered one: what a wrapper that
    /// builds it (`go run`) may need (see `StartWindow`).
    pub start_timeout: Duration,
    /// Stop playing cases once a required one has failed; the rest are
    /// reported SKIP.
    pub fail_fast: bool,
}

impl ClientRun {
    /// A run of `program args…` with a 5 s reply timeout, a 30 s start
    /// timeout and every case.
    pub fn new(program: impl Into<String>, args: Vec<String>) -> Self {
        Self {
            program: program.into(),
            args,
            select: Selection::default(),
            known_failures: BTreeSet::new(),
            skip: BTreeSet::new(),
            reply_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(30),
            fail_fast: false,
        }
    }
}

/// The time a case's adapter has for its first reply, start-up included:
/// the start timeout until an adapter has answered one (a wrapper may be
/// building it on a cold cache); then twice the last start that was
/// answered, at least the reply timeout and at most the start timeout, so
/// that once the build is cached an adapter that hangs at start costs a
/// case little more than a reply timeout; and the reply timeout once two
/// cases have timed out at start with none answered yet, so that an
/// adapter that always hangs does not cost every case the start timeout.
#[derive(Debug, Default)]
struct StartWindow {
    last_answered: Option<Duration>,
    cold_timeouts: u32,
}

impl StartWindow {
    fn timeout(&self, config: &ClientRun) -> Duration {
        let most = config.start_timeout.max(config.reply_timeout);
        match self.last_answered {
            Some(took) => (took * 2).clamp(config.reply_timeout, most),
            None if self.cold_timeouts >= 2 => config.reply_timeout,
            None => most,
        }
    }

    fn record(&mut self, first: Option<Started>) {
        match first {
            Some(Started::Answered(took)) => self.last_answered = Some(took),
            Some(Started::TimedOut) if self.last_answered.is_none() => self.cold_timeouts += 1,
            _ => {}
        }
    }
}

/// Plays every client case of `cases` (or the one selected) against a new
/// adapter process per case, so a crash or a hang costs one case. `Err`
/// only when a name given does not refer to a client case.
pub fn run(cases: &[Case], config: &ClientRun) -> Result<Report, String> {
    let clients: Vec<&client::ClientCase> = cases
        .iter()
        .filter_map(|c| match c {
            Case::Client(c) => Some(c),
            Case::Host(_) => None,
        })
        .collect();
    let unknown: Vec<&str> = config
        .select
        .names
        .iter()
        .chain(&config.known_failures)
        .chain(&config.skip)
        .filter(|n| !clients.iter().any(|c| &c.info.name == *n))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let hint = crate::select::host_vector_hint(cases, &unknown);
        return Err(format!(
            "unknown client case(s): {}{hint}",
            unknown.join(", ")
        ));
    }
    // An adapter that cannot be started at all is a run that cannot be
    // made (exit 2), not every case failing alike.
    AdapterProcess::probe(&config.program, &config.args, config.reply_timeout)?;
    if !clients
        .iter()
        .any(|c| config.select.includes(&c.info.name, c.info.tier))
    {
        return Err("no client case matches the selection".to_owned());
    }
    let mut report = Report::default();
    let mut window = StartWindow::default();
    for case in clients {
        let name = &case.info.name;
        if !config.select.includes(name, case.info.tier) {
            continue;
        }
        let started = Instant::now();
        let outcome = match report.not_to_run(name, &config.skip, config.fail_fast) {
            Some(why) => Outcome::Skip(why.into()),
            None => {
                let mut first = None;
                let outcome = catch(|| {
                    let mut adapter =
                        AdapterProcess::spawn(&config.program, &config.args, config.reply_timeout)
                            .map_err(Failure::case)?
                            .with_start_timeout(window.timeout(config));
                    let ran = client::run_with(case, &mut adapter as &mut dyn ClientUnderTest);
                    first = adapter.started();
                    ran.map_err(|mut f| {
                        // An adapter that died or stopped answering is
                        // already reported with its stderr.
                        if !f.message.contains(STDERR_QUOTED) {
                            f.message.push_str(&adapter.stderr_tail());
                        }
                        f
                    })
                });
                window.record(first);
                // A listed case is still run: a pass means the list is out
                // of date.
                if config.known_failures.contains(name) {
                    outcome.expected_to_fail()
                } else {
                    outcome
                }
            }
        };
        let took = run_time(&outcome, started);
        report
            .push_case(&case.info, crate::vectors::Role::Client, outcome)
            .duration = took;
        report.progress();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_window_is_long_only_while_no_adapter_has_started() {
        let config = ClientRun::new("adapter", Vec::new());
        let (reply, start) = (config.reply_timeout, config.start_timeout);
        let mut window = StartWindow::default();
        assert_eq!(window.timeout(&config), start);
        // A cold build answered after 20 s; once cached, starts are quick.
        window.record(Some(Started::Answered(Duration::from_secs(20))));
        assert_eq!(window.timeout(&config), start);
        window.record(Some(Started::Answered(Duration::from_millis(300))));
        assert_eq!(window.timeout(&config), reply);
        window.record(Some(Started::Answered(Duration::from_secs(4))));
        assert_eq!(window.timeout(&config), Duration::from_secs(8));
        // An adapter that hangs at start every time: two cases pay the start
        // timeout, the rest the reply timeout.
        let mut hung = StartWindow::default();
        hung.record(Some(Started::TimedOut));
        assert_eq!(hung.timeout(&config), start);
        hung.record(Some(Started::TimedOut));
        assert_eq!(hung.timeout(&config), reply);
    }
}
