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
    heading(out, name, kind, help);
    for (labels, value) in samples {
        let _ = writeln!(out, "cosystem_worker_{name}{labels} {value}");
    }
}

/// Appends the `HELP` and `TYPE` lines of metric family `name`.
pub(crate) fn heading(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP cosystem_worker_{name} {help}");
    let _ = writeln!(out, "# TYPE cosystem_worker_{name} {kind}");
}

/// One sample without labels.
pub(crate) fn plain(value: u64) -> Vec<(String, u64)> {
    vec![(String::new(), value)]
}

/// The label set `{name="value"}`, with the value escaped as the format
/// requires (backslash, double quote, line feed).
pub(crate) fn label(name: &str, value: &str) -> String {
    labels(&[(name, value)])
}

/// The label set `{a="x",b="y"}` of `pairs`, in order, values escaped as
/// in [`label`].
pub(crate) fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let value = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{name}=\"{value}\"");
    }
    out.push('}');
    out
}
