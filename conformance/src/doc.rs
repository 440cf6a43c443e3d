//! Renders the case catalogues of spec/CONFORMANCE.md from the vectors and
//! from the host interop cases' table, and its rule coverage from those and
//! spec/PROTOCOL.md, so the document cannot drift from them: a test compares
//! the generated text with the file, and `cosystem-conformance doc --write`
//! rewrites it.

use std::fmt::Write as _;

use serde_json::Value;

use crate::coverage::Spec;
use crate::interop::peer::Transport;
use crate::vectors::client::{ClientAction, ClientCase, ClientExpect};
use crate::vectors::host::{HostAction, HostCase};
use crate::vectors::{Case, CaseInfo, Role};

/// The line before the generated catalogue in spec/CONFORMANCE.md.
pub const BEGIN: &str = "<!-- BEGIN GENERATED CATALOGUE: edit the vectors, then run `cargo run -p cosystem-conformance -- doc --write spec/CONFORMANCE.md` -->";
/// The line after it.
pub const END: &str = "<!-- END GENERATED CATALOGUE -->";

/// The line before the generated host interop catalogue.
pub const BEGIN_INTEROP: &str = "<!-- BEGIN GENERATED HOST INTEROP CASES: edit conformance/src/interop/cases.rs, then run `cargo run -p cosystem-conformance -- doc --write spec/CONFORMANCE.md` -->";
/// The line after it.
pub const END_INTEROP: &str = "<!-- END GENERATED HOST INTEROP CASES -->";

/// The line before the generated rule coverage.
pub const BEGIN_COVERAGE: &str = "<!-- BEGIN GENERATED RULE COVERAGE: edit spec/PROTOCOL.md or the cases' spec lists, then run `cargo run -p cosystem-conformance -- doc --write spec/CONFORMANCE.md` -->";
/// The line after it.
pub const END_COVERAGE: &str = "<!-- END GENERATED RULE COVERAGE -->";

/// Replaces the text between [`BEGIN`] and [`END`] in `document` with
/// `catalogue`.
pub fn splice(document: &str, catalogue: &str) -> Result<String, String> {
    splice_between(document, BEGIN, END, catalogue)
}

/// Replaces every generated part of `document`: the vectors' catalogue,
/// the host interop cases' and the rule coverage of `spec` (the text of
/// spec/PROTOCOL.md). Fails without changing anything when a case cites an
/// id `spec` does not define.
pub fn splice_all(document: &str, cases: &[Case], spec: &str) -> Result<String, String> {
    let coverage = rule_coverage(cases, spec)?;
    let document = splice(document, &catalogue(cases))?;
    let document = splice_between(&document, BEGIN_INTEROP, END_INTEROP, &interop_catalogue())?;
    splice_between(&document, BEGIN_COVERAGE, END_COVERAGE, &coverage)
}

/// The rule coverage of `spec` (the text of spec/PROTOCOL.md) by `cases`
/// and the host interop cases: see [`crate::coverage::render`].
pub fn rule_coverage(cases: &[Case], spec: &str) -> Result<String, String> {
    let spec = Spec::parse(spec).map_err(|e| format!("spec/PROTOCOL.md: {e}"))?;
    crate::coverage::render(&spec, &crate::coverage::citing_cases(cases))
}

fn splice_between(document: &str, begin: &str, end: &str, text: &str) -> Result<String, String> {
    let start = document
        .find(begin)
        .ok_or_else(|| format!("the document has no line {begin}"))?
        + begin.len();
    let stop = document
        .find(end)
        .ok_or_else(|| format!("the document has no line {end}"))?;
    if stop < start {
        return Err(format!("{end} comes before {begin}"));
    }
    Ok(format!(
        "{}\n\n{}\n{}",
        &document[..start],
        text.trim_end(),
        &document[stop..]
    ))
}

fn between<'a>(document: &'a str, begin: &str, end: &str) -> Option<&'a str> {
    let start = document.find(begin)? + begin.len();
    let stop = document.find(end)?;
    document.get(start..stop).map(str::trim)
}

/// The generated vector catalogue currently between the markers of
/// `document`.
pub fn current(document: &str) -> Option<&str> {
    between(document, BEGIN, END)
}

/// The generated host interop catalogue currently in `document`.
pub fn current_interop(document: &str) -> Option<&str> {
    between(document, BEGIN_INTEROP, END_INTEROP)
}

/// The generated rule coverage currently in `document`.
pub fn current_coverage(document: &str) -> Option<&str> {
    between(document, BEGIN_COVERAGE, END_COVERAGE)
}

/// The host interop catalogue: one entry per case of
/// [`crate::interop::cases::CASES`], in the order they run, with the
/// transports it runs over, in the style of the gRPC interop test
/// descriptions (procedure, then what the host must have done).
pub fn interop_catalogue() -> String {
    let mut out = String::new();
    for case in crate::interop::cases::CASES {
        let _ = writeln!(out, "#### `{}`\n", case.name);
        let over = match case.only {
            None => "gRPC and framed streams",
            Some(Transport::Grpc) => "gRPC only",
            Some(Transport::Framed) => "framed streams only",
        };
        let _ = writeln!(
            out,
            "{} · {over} · spec: {}\n",
            case.tier,
            case.spec.join(", ")
        );
        let _ = writeln!(out, "{}\n\nProcedure:\n", case.description);
        for (i, step) in case.procedure.iter().enumerate() {
            let _ = writeln!(out, "{}. {step}", i + 1);
        }
        let _ = writeln!(out, "\nHost asserts:\n");
        for a in case.asserts {
            let _ = writeln!(out, "- {a}");
        }
        out.push('\n');
    }
    out
}

/// The catalogue: one entry per case, client cases first, in file order.
pub fn catalogue(cases: &[Case]) -> String {
    let mut out = String::new();
    for (role, title) in [(Role::Client, "Client cases"), (Role::Host, "Host cases")] {
        let _ = writeln!(out, "### {title}\n");
        for case in cases.iter().filter(|c| c.role() == role) {
            match case {
                Case::Client(c) => client_entry(&mut out, c),
                Case::Host(c) => host_entry(&mut out, c),
            }
        }
    }
    out
}

fn heading(out: &mut String, info: &CaseInfo) {
    let _ = writeln!(out, "#### `{}`\n", info.name);
    let spec = if info.spec.is_empty() {
        String::new()
    } else {
        format!(" · spec: {}", info.spec.join(", "))
    };
    let _ = writeln!(out, "{} · `{}`{spec}\n", info.tier, info.file);
    let _ = writeln!(out, "{}\n", info.description);
}

/// `Kind{field=value, …}` for a canonical-JSON envelope, with the header
/// shown only where it departs from the usual.
fn envelope(message: &Value) -> String {
    let Some(map) = message.as_object() else {
        return message.to_string();
    };
    let mut kinds = Vec::new();
    for (k, v) in map {
        if k == "header" {
            continue;
        }
        let name = match k.as_str() {
            "snapshot" => "Snapshot",
            "patch" => "Patch",
            "result" => "CallResult",
            "call" => "Call",
            "syncRequest" => "SyncRequest",
            other => other,
        };
        kinds.push(format!("{name}{{{}}}", fields(v)));
    }
    let kind = if kinds.is_empty() {
        "envelope with no kind".to_owned()
    } else {
        kinds.join(" + ")
    };
    match map.get("header") {
        None => format!("`{kind}` without a header"),
        Some(h) => {
            // protocol_version 1 is the norm; only a departure is worth a word.
            let mut h = h.clone();
            if let Some(m) = h.as_object_mut()
                && m.get("protocolVersion") == Some(&Value::from(1))
            {
                m.remove("protocolVersion");
            }
            format!("`{kind}` (header {})", fields(&h))
        }
    }
}

fn fields(value: &Value) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let shown = match v {
                    Value::String(s) => {
                        let s = s
                            .trim_start_matches("SNAPSHOT_REASON_")
                            .trim_start_matches("SYNC_REASON_")
                            .trim_start_matches("ERROR_CODE_");
                        // A text with edge whitespace or control characters
                        // is shown as a JSON string, so that it stays on
                        // its line and its edges show.
                        if s.trim() != s || s.chars().any(char::is_control) {
                            Value::from(s).to_string()
                        } else {
                            s.to_owned()
                        }
                    }
                    Value::Object(_) => format!("{{{}}}", fields(v)),
                    other => other.to_string(),
                };
                format!("{k}={shown}")
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn client_action(action: &ClientAction) -> String {
    match action {
        ClientAction::Start => "Start the client.".into(),
        ClientAction::Deliver(m) => format!("Deliver {}.", envelope(m)),
        ClientAction::DeliverWithUnknownFields(m) => format!(
            "Deliver {}, its bytes carrying a field no v1 message has (number 15) in the envelope, in its header and in its kind's message.",
            envelope(m)
        ),
        ClientAction::Call(c) => {
            let args = c
                .args_json
                .clone()
                .unwrap_or_else(|| Value::Array(c.args.clone().unwrap_or_default()).to_string());
            let deadline = c
                .deadline_ms
                .map_or(String::new(), |d| format!(" with deadline {d} ms"));
            format!(
                "Call `{}.{}` with arguments `{args}`{deadline}, labelled `{}`.",
                c.module, c.method, c.id
            )
        }
        ClientAction::Cancel(label) => format!("Cancel call `{label}`."),
        ClientAction::Timeout => "Report the time to the client's timers.".into(),
        ClientAction::ConnectionLost => "The connection is lost.".into(),
        ClientAction::EnvelopesLost(count) => {
            format!("The shared channel reports {count} envelopes lost.")
        }
        ClientAction::Reconnected => "The connection is re-established.".into(),
        ClientAction::Dispose => "Dispose of the client.".into(),
    }
}

fn client_asserts(e: &ClientExpect) -> Vec<String> {
    let mut out = Vec::new();
    if e.ready {
        out.push("reports ready".to_owned());
    }
    for m in &e.outbound {
        out.push(format!("sends {}", envelope(m)));
    }
    for c in &e.conflicts {
        out.push(format!("reports conflict {}", fields(c)));
    }
    for n in &e.notices {
        out.push(format!("reports notice {}", fields(n)));
    }
    for s in &e.settled {
        let how = match (&s.ok, &s.error) {
            (Some(v), _) => format!("ok `{v}`"),
            (None, Some(code)) => format!("error `{code}`"),
            _ => "?".into(),
        };
        let msg = s
            .message
            .as_ref()
            .map_or(String::new(), |m| format!(" with message {m:?}"));
        out.push(format!("settles call `{}` {how}{msg}", s.call));
    }
    if let Some(m) = &e.mirror {
        out.push(match m {
            Value::Null => "has no mirror (EMPTY)".to_owned(),
            v => format!("mirror is `{v}`"),
        });
    }
    if let Some(v) = &e.version {
        out.push(format!("version is {}", fields(v)));
    }
    if let Some(ep) = &e.epoch {
        out.push(format!("epoch is `{ep}`"));
    }
    if let Some(sc) = &e.state_changed {
        out.push(if sc.is_empty() {
            "reports no state-changed".to_owned()
        } else {
            format!(
                "reports state-changed at {}",
                sc.iter().map(fields).collect::<Vec<_>>().join(", ")
            )
        });
    }
    if let Some(n) = e.pending {
        out.push(format!("has {n} pending call(s)"));
    }
    if let Some(t) = &e.timer_ms {
        out.push(match t {
            Value::Null => "needs no timer".to_owned(),
            v => format!("next needs the time at {} ms", fields(v)),
        });
    }
    out
}

fn client_entry(out: &mut String, case: &ClientCase) {
    heading(out, &case.info);
    let _ = writeln!(out, "Procedure:\n");
    let mut asserts = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        let at = step
            .at_ms
            .map_or(String::new(), |ms| format!("At {ms} ms: "));
        let note = step
            .note
            .as_ref()
            .map_or(String::new(), |n| format!(" ({n})"));
        let _ = writeln!(out, "{}. {at}{}{note}", i, client_action(&step.action));
        let list = client_asserts(&step.expect);
        if list.is_empty() {
            asserts.push(format!("after step {i}: nothing else happens"));
        } else {
            asserts.push(format!("after step {i}: {}", list.join("; ")));
        }
    }
    let _ = writeln!(
        out,
        "\nClient asserts (and nothing else is sent or reported):\n"
    );
    for a in asserts {
        let _ = writeln!(out, "- {a}");
    }
    out.push('\n');
}

fn host_action(action: &HostAction) -> String {
    match action {
        HostAction::Connect { session, peer_id } => {
            format!("Session `{session}` connects as `{peer_id}`.")
        }
        HostAction::Send { session, messages } => format!(
            "Session `{session}` sends {}.",
            messages
                .iter()
                .map(envelope)
                .collect::<Vec<_>>()
                .join(", then ")
        ),
        HostAction::SendBytes { session, bytes } => format!(
            "Session `{session}` sends the raw bytes `{}`.",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        HostAction::Disconnect(s) => format!("Session `{s}` ends."),
        HostAction::Bookmark => "The host's idle interval elapses.".into(),
        HostAction::Pause(s) => format!("Session `{s}` stops reading."),
        HostAction::Resume(s) => format!("Session `{s}` reads again."),
    }
}

fn host_entry(out: &mut String, case: &HostCase) {
    heading(out, &case.info);
    let h = &case.host;
    let mut setup = format!("Host: demo app, {} mode, epoch `{}`", h.sync, h.epoch);
    if let Some(s) = &h.sections {
        let _ = write!(setup, ", sections {}", s.join(", "));
    }
    if let Some(n) = h.history_entries {
        let _ = write!(setup, ", history window {n}");
    }
    if let Some(n) = h.max_calls_in_flight {
        let _ = write!(setup, ", in-flight limit {n}");
    }
    let _ = writeln!(out, "{setup}.\n\nProcedure:\n");
    let mut asserts = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        let note = step
            .note
            .as_ref()
            .map_or(String::new(), |n| format!(" ({n})"));
        let _ = writeln!(out, "{i}. {}{note}", host_action(&step.action));
        let mut list: Vec<String> = step
            .expect
            .sent
            .iter()
            .map(|(s, msgs)| {
                if msgs.is_empty() {
                    format!("`{s}` receives nothing")
                } else {
                    format!(
                        "`{s}` receives {}",
                        msgs.iter()
                            .map(envelope)
                            .collect::<Vec<_>>()
                            .join(", then ")
                    )
                }
            })
            .collect();
        for (s, m) in &step.expect.mirror {
            list.push(format!(
                "`{s}`'s mirror is `{}` at version {}",
                m.view,
                fields(&m.version)
            ));
        }
        if list.is_empty() {
            asserts.push(format!("after step {i}: no session receives anything"));
        } else {
            asserts.push(format!("after step {i}: {}", list.join("; ")));
        }
    }
    let _ = writeln!(
        out,
        "\nHost asserts (sessions not named receive nothing; no byte sent carries the private section):\n"
    );
    for a in asserts {
        let _ = writeln!(out, "- {a}");
    }
    out.push('\n');
}
