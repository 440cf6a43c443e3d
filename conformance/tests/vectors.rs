//! Plays every test vector under `conformance/vectors/` against the
//! reference cores. Each case is listed by name; a failure names the case and
//! the step.

use cosystem_conformance::report::{Outcome, Report};
use cosystem_conformance::vectors::{self, Case, Role, Tier};

fn cases() -> Vec<Case> {
    vectors::load_dir(&vectors::default_dir()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_vector_passes_against_the_reference_cores() {
    let cases = cases();
    let report = Report::run(&cases, Case::run_reference);
    print!("{}", report.to_text());
    let failures: Vec<String> = report
        .failures()
        .map(|r| match &r.outcome {
            Outcome::Fail(why) => format!("{} ({}): {why}", r.name, r.role),
            other => format!("{} ({}): {other:?}", r.name, r.role),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn vectors_cover_both_roles_and_both_tiers() {
    let cases = cases();
    for role in [Role::Client, Role::Host] {
        assert!(cases.iter().any(|c| c.role() == role), "no {role} cases");
    }
    for tier in [Tier::Required, Tier::Recommended] {
        assert!(
            cases.iter().any(|c| c.info().tier == tier),
            "no {tier} cases"
        );
    }
}
