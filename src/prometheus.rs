//! The Prometheus text exposition format (version 0.0.4), as far as the
//! crate's metrics need it: one metric family at a time, with its `HELP`
//! and `TYPE`, every name prefixed `cosystem_worker_`.

use std::fmt::Write;

/// The format's content type, for an HTTP answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Appends one metric family to `out`: `HELP`, `TYPE`, then each sample as
/// `(labels, value)`, where `labels` is `""` or `{name="value",…}` built
/// with [`label`].
pub(crate) fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(String, u64)],
) {
    let _ = writeln!(out, "# HELP cosystem_worker_{name} {help}");
    let _ = writeln!(out, "# TYPE cosystem_worker_{name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "cosystem_worker_{name}{labels} {value}");
    }
}

/// One sample without labels.
pub(crate) fn plain(value: u64) -> Vec<(String, u64)> {
    vec![(String::new(), value)]
}

/// The label set `{name="value"}`, with the value escaped as the format
/// requires (backslash, double quote, line feed).
pub(crate) fn label(name: &str, value: &str) -> String {
    let value = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{{{name}=\"{value}\"}}")
}
