//! Results of running vectors, and their printing.

use std::fmt::Write as _;

use crate::vectors::{Case, Failure, Role, Tier};

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// Its role.
    pub role: Role,
    /// `Ok` if it passed.
    pub outcome: Result<(), Failure>,
}

/// The results of a run, in the order the cases were run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One entry per case run.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// Runs `cases` with `run` and collects the results. A panic in `run`
    /// is recorded as that case's failure, so one broken case cannot hide
    /// the others.
    pub fn run<'a>(
        cases: impl IntoIterator<Item = &'a Case>,
        run: impl Fn(&Case) -> Result<(), Failure>,
    ) -> Self {
        let results = cases
            .into_iter()
            .map(|case| {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(case)))
                    .unwrap_or_else(|payload| {
                        let what = payload
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_default();
                        Err(Failure::case(format!("panicked: {what}")))
                    });
                CaseResult {
                    name: case.info().name.clone(),
                    tier: case.info().tier,
                    role: case.role(),
                    outcome,
                }
            })
            .collect();
        Self { results }
    }

    /// The failed cases.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.results.iter().filter(|r| r.outcome.is_err())
    }

    /// Whether every required case passed.
    pub fn required_passed(&self) -> bool {
        self.failures().all(|r| r.tier != Tier::Required)
    }

    /// One line per case (`ok`/`FAIL`, role, tier, name, and why it
    /// failed), then `N passed, M failed`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            let _ = match &r.outcome {
                Ok(()) => writeln!(out, "ok    {:6} {:11} {}", r.role, r.tier, r.name),
                Err(f) => writeln!(out, "FAIL  {:6} {:11} {}: {f}", r.role, r.tier, r.name),
            };
        }
        let failed = self.failures().count();
        let _ = writeln!(
            out,
            "{} passed, {failed} failed",
            self.results.len() - failed
        );
        out
    }
}
