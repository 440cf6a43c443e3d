//! Which cases a run plays: by name, by part of a name, by tier.

use std::collections::BTreeSet;

use crate::vectors::{Case, Tier};

/// The cases a `client` or `host` run plays. Empty, every case; otherwise a
/// case must pass every criterion given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only cases with one of these names (`--case`, repeatable).
    pub names: BTreeSet<String>,
    /// Only cases whose name contains this (`--filter`).
    pub filter: Option<String>,
    /// Only cases of this tier (`--tier`).
    pub tier: Option<Tier>,
}

impl Selection {
    /// Whether the case `name` of `tier` is played.
    pub fn includes(&self, name: &str, tier: Tier) -> bool {
        (self.names.is_empty() || self.names.contains(name))
            && self
                .filter
                .as_ref()
                .is_none_or(|f| name.contains(f.as_str()))
            && self.tier.is_none_or(|t| t == tier)
    }
}

/// For names a `client` or `host` run does not know: which of them are
/// host vectors, which only `vectors` plays (in process), as a note to
/// append to the error; empty when none is.
pub fn host_vector_hint(cases: &[Case], unknown: &[&str]) -> String {
    let hosts: Vec<&str> = unknown
        .iter()
        .copied()
        .filter(|n| {
            cases
                .iter()
                .any(|c| matches!(c, Case::Host(_)) && c.info().name == *n)
        })
        .collect();
    if hosts.is_empty() {
        return String::new();
    }
    format!(
        " ({} {} host {}: host vectors are played in process, by `vectors` only)",
        hosts.join(", "),
        if hosts.len() == 1 { "is a" } else { "are" },
        if hosts.len() == 1 {
            "vector"
        } else {
            "vectors"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_criterion_given_must_hold() {
        let all = Selection::default();
        assert!(all.includes("client-a", Tier::Recommended));
        let named = Selection {
            names: ["client-a".to_owned(), "client-b".to_owned()].into(),
            ..Selection::default()
        };
        assert!(named.includes("client-b", Tier::Required));
        assert!(!named.includes("client-c", Tier::Required));
        let narrowed = Selection {
            filter: Some("patch".into()),
            tier: Some(Tier::Required),
            ..Selection::default()
        };
        assert!(narrowed.includes("client-live-patch-applies", Tier::Required));
        assert!(!narrowed.includes("client-live-patch-applies", Tier::Recommended));
        assert!(!narrowed.includes("client-snapshot", Tier::Required));
    }
}
