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

/// The vectors built into the binary are exactly the files of
/// `conformance/vectors/`, byte for byte: a file added, removed or edited
/// without updating `vectors::EMBEDDED` fails here.
#[test]
fn the_embedded_vectors_are_the_vector_files() {
    let dir = vectors::default_dir();
    let mut on_disk = Vec::new();
    for role in ["client", "host"] {
        for entry in std::fs::read_dir(dir.join(role)).expect("the vectors directory") {
            let path = entry.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let rel = format!("{role}/{}", path.file_name().unwrap().to_string_lossy());
                on_disk.push((rel, std::fs::read_to_string(&path).expect("a vector file")));
            }
        }
    }
    on_disk.sort();
    let embedded: Vec<(String, String)> = vectors::EMBEDDED
        .iter()
        .map(|(rel, text)| ((*rel).to_owned(), (*text).to_owned()))
        .collect();
    let names =
        |files: &[(String, String)]| files.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&embedded),
        names(&on_disk),
        "vectors::EMBEDDED lists other files"
    );
    assert!(
        embedded == on_disk,
        "an embedded vector file differs from its source"
    );
    assert_eq!(
        vectors::load_embedded()
            .expect("the embedded vectors load")
            .len(),
        cases().len()
    );
}

/// §8: a selection that matches no case is a run that cannot be made, in
/// `vectors` as in the other modes, so a mistyped filter cannot pass a CI.
#[test]
fn a_vectors_filter_that_matches_nothing_is_a_run_that_cannot_be_made() {
    let run = |filter: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cosystem-conformance"))
            .args(["vectors", "--filter", filter])
            .output()
            .expect("the conformance binary runs")
    };
    let none = run("no-vector-is-named-this");
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no vector matches the selection"));
    assert_eq!(run("client-live-patch").status.code(), Some(0));
}
