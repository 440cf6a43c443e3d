//! Renders the case catalogue of spec/CONFORMANCE.md from the vectors.

use crate::vectors::Case;

/// The catalogue section (placeholder).
pub fn catalogue(cases: &[Case]) -> String {
    cases
        .iter()
        .map(|c| format!("### `{}`\n", c.info().name))
        .collect()
}
