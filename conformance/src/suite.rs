//! What this build of the suite checks, for `--version` and the reports:
//! a CI log then says which suite ran, not only the runner's crate
//! version, which the vectors and cases do not change.

use crate::coverage::EMBEDDED_SPEC;
use crate::interop::cases::CASES;
use crate::vectors::{Case, Role};

/// The latest revision of PROTOCOL.md listed in its Appendix A, as built
/// into this binary.
pub fn spec_revision() -> Option<u32> {
    let start = EMBEDDED_SPEC.find("**Revision ")? + "**Revision ".len();
    let digits: String = EMBEDDED_SPEC[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// How many client vectors, host vectors and host interop cases `cases`
/// (the vectors loaded) and this build hold.
pub fn counts(cases: &[Case]) -> (usize, usize, usize) {
    let client = cases.iter().filter(|c| c.role() == Role::Client).count();
    (client, cases.len() - client, CASES.len())
}

/// One line naming the suite: crate version, spec revision and case counts.
pub fn describe(cases: &[Case]) -> String {
    let (client, host, interop) = counts(cases);
    let revision = spec_revision().map_or("?".to_owned(), |r| r.to_string());
    format!(
        "{} (PROTOCOL.md revision {revision}; {client} client vectors, {host} host vectors, {interop} host interop cases)",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_revision_is_the_latest_in_appendix_a() {
        let revision = spec_revision().expect("a revision");
        assert!(
            EMBEDDED_SPEC.contains(&format!("**Revision {revision}**")),
            "{revision}"
        );
        assert!(!EMBEDDED_SPEC.contains(&format!("**Revision {}**", revision + 1)));
    }

    #[test]
    fn the_description_counts_the_built_in_cases() {
        let cases = crate::vectors::load_embedded().expect("the built-in vectors");
        let line = describe(&cases);
        let (client, host, interop) = counts(&cases);
        assert!(client > 0 && host > 0 && interop > 0, "{line}");
        assert!(line.contains(&format!("{client} client vectors")), "{line}");
    }
}
