//! spec/CONFORMANCE.md must describe exactly the shipped vectors, and
//! every case must cite only rules spec/PROTOCOL.md defines.

use cosystem_conformance::coverage::{self, Spec};
use cosystem_conformance::doc;
use cosystem_conformance::vectors::{self, Case};

fn read(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../spec")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn document() -> String {
    read("CONFORMANCE.md")
}

/// spec/PROTOCOL.md from the source tree, read like [`document`].
fn protocol() -> String {
    read("PROTOCOL.md")
}

fn cases() -> Vec<Case> {
    vectors::load_dir(&vectors::default_dir()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_vector_name_has_an_entry_in_conformance_md() {
    let doc = document();
    let missing: Vec<String> = cases()
        .iter()
        .map(|c| c.info().name.clone())
        .filter(|name| !doc.contains(&format!("#### `{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "spec/CONFORMANCE.md has no entry for: {}",
        missing.join(", ")
    );
}

#[test]
fn generated_catalogue_in_conformance_md_matches_the_vectors() {
    let doc = document();
    let current = doc::current(&doc).expect("CONFORMANCE.md has the catalogue markers");
    let expected = doc::catalogue(&cases());
    assert!(
        current == expected.trim(),
        "spec/CONFORMANCE.md's case catalogue is out of date: run \
         `cargo run -p cosystem-conformance -- doc --write spec/CONFORMANCE.md`"
    );
}

#[test]
fn generated_host_interop_catalogue_in_conformance_md_matches_the_case_table() {
    let doc = document();
    let current = doc::current_interop(&doc).expect("CONFORMANCE.md has the host interop markers");
    assert!(
        current == doc::interop_catalogue().trim(),
        "spec/CONFORMANCE.md's host interop catalogue is out of date: run \
         `cargo run -p cosystem-conformance -- doc --write spec/CONFORMANCE.md`"
    );
}

#[test]
fn every_host_interop_case_is_implemented_and_named_uniquely() {
    let names: std::collections::BTreeSet<&str> = cosystem_conformance::interop::cases::CASES
        .iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        names.len(),
        cosystem_conformance::interop::cases::CASES.len()
    );
    for case in cosystem_conformance::interop::cases::CASES {
        // The prefix says where a case runs: framed streams alone, or gRPC
        // (alone or with framed streams, §7).
        let prefix = match case.only {
            Some(cosystem_conformance::interop::peer::Transport::Framed) => "framed-",
            _ => "grpc-",
        };
        assert!(case.name.starts_with(prefix), "{}", case.name);
        assert!(
            !case.procedure.is_empty() && !case.asserts.is_empty(),
            "{}",
            case.name
        );
    }
    let vector_names: Vec<String> = cases().iter().map(|c| c.info().name.clone()).collect();
    assert!(names.iter().all(|n| !vector_names.iter().any(|v| v == n)));
}

#[test]
fn protocol_md_defines_each_rule_once() {
    if let Err(e) = Spec::parse(&protocol()) {
        panic!("spec/PROTOCOL.md: {e}");
    }
}

#[test]
fn every_rule_a_case_cites_is_defined_in_protocol_md() {
    let spec = Spec::parse(&protocol()).unwrap_or_else(|e| panic!("{e}"));
    let cases = cases();
    let broken = coverage::broken_references(&spec, &coverage::citing_cases(&cases));
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn generated_rule_coverage_in_conformance_md_is_current() {
    let doc = document();
    let current =
        doc::current_coverage(&doc).expect("CONFORMANCE.md has the rule coverage markers");
    let expected = doc::rule_coverage(&cases(), &protocol()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        current == expected.trim(),
        "spec/CONFORMANCE.md's rule coverage is out of date: run \
         `cargo run -p cosystem-conformance -- doc --write spec/CONFORMANCE.md`"
    );
}

/// §6.4's first transcript is what the reference adapter says: replayed
/// line by line, each reply equals the one shown (as JSON values).
#[test]
fn the_adapter_transcript_in_conformance_md_is_what_the_reference_adapter_says() {
    use cosystem_conformance::adapter::process::serve;
    use cosystem_conformance::adapter::reference::ReferenceClient;
    let doc = document();
    let section = &doc[doc.find("### 6.4 A transcript").expect("§6.4")..];
    let block = &section[section.find("```text\n").expect("a transcript") + 8..];
    let block = &block[..block.find("```").expect("its end")];
    let (mut commands, mut replies) = (String::new(), Vec::new());
    for line in block.lines() {
        if let Some(command) = line.strip_prefix("→ ") {
            commands.push_str(command);
            commands.push('\n');
        } else if let Some(reply) = line.strip_prefix("← ") {
            replies.push(reply);
        }
    }
    assert!(replies.len() > 10, "{block}");
    let mut output = Vec::new();
    serve(
        &mut ReferenceClient::new(None),
        commands.as_bytes(),
        &mut output,
    )
    .unwrap();
    let said: Vec<&str> = std::str::from_utf8(&output).unwrap().lines().collect();
    assert_eq!(said.len(), replies.len());
    for (said, shown) in said.iter().zip(&replies) {
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(
            parse(said),
            parse(shown),
            "§6.4 shows {shown}, the adapter said {said}"
        );
    }
}
