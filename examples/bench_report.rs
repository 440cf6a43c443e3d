//! Renders the bench summaries in `target/cosystem-bench/*.jsonl` (written
//! by `cargo bench`, see `benches/README.md`) as markdown tables: each
//! figure with its baseline and their ratio, and the fan-out rows as
//! deliveries per second.
//!
//! ```text
//! cargo run --example bench_report            # every suite
//! cargo run --example bench_report publication
//! ```

use std::path::PathBuf;

use serde_json::Value;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// A ratio for humans: two decimals near 1, fewer digits far from it.
fn ratio(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}×")
    } else if r >= 0.01 {
        format!("{r:.2}×")
    } else {
        format!("{r:.1e}×")
    }
}

fn opt_ratio(v: &Value) -> String {
    v.as_f64().map_or_else(|| "—".to_owned(), ratio)
}

fn size(bytes: &Value) -> String {
    match bytes.as_u64() {
        None => "—".to_owned(),
        Some(b) if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        Some(b) if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / f64::from(1 << 10)),
        Some(b) => format!("{b} B"),
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("—")
}

/// A criterion median for humans, in the unit that suits it.
fn time(ns: &Value) -> String {
    match ns.as_f64() {
        None => "—".to_owned(),
        Some(ns) if ns >= 1e9 => format!("{:.2} s", ns / 1e9),
        Some(ns) if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        Some(ns) if ns >= 1e3 => format!("{:.2} µs", ns / 1e3),
        Some(ns) => format!("{ns:.0} ns"),
    }
}

/// The verdict on a row with a limit: by the interleaved ratio where there
/// is one (baseline and subject alternate under the same load), saying so
/// when the ratio of medians falls on the other side of the limit.
fn verdict(r: &Value) -> (String, String) {
    let Some(limit) = r["limit"].as_f64() else {
        return ("—".to_owned(), String::new());
    };
    let target = format!("≤ {limit}×");
    let interleaved = r["interleaved_ratio"].as_f64();
    let medians = r["ratio"].as_f64();
    let word = |x: f64| if x <= limit { "ok" } else { "**over**" };
    let verdict = match (interleaved, medians) {
        (Some(i), Some(m)) if word(i) != word(m) => {
            format!("{} (medians: {})", word(i), word(m).trim_matches('*'))
        }
        (Some(x), _) => word(x).to_owned(),
        (None, Some(m)) => format!("{} (medians only)", word(m)),
        (None, None) => "not measured".to_owned(),
    };
    (target, verdict)
}

fn time_table(rows: &[&Value]) {
    println!(
        "| benchmark | state | median | baseline | baseline median | ratio of medians | interleaved ratio | target | verdict |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (target, verdict) = verdict(r);
        println!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {target} | {verdict} |",
            str_of(&r["name"]),
            from_earlier_run(r),
            size(&r["state_bytes"]),
            time(&r["median_ns"]),
            str_of(&r["baseline"]),
            time(&r["baseline_median_ns"]),
            opt_ratio(&r["ratio"]),
            opt_ratio(&r["interleaved_ratio"]),
        );
    }
}

/// A mark on a row kept from an earlier run than its suite's latest (a
/// later run's filter left it out), with that run's commit.
fn from_earlier_run(r: &Value) -> String {
    match r["from_run"].as_str() {
        Some(run) => format!(" (from {run})"),
        None => String::new(),
    }
}

/// Deliveries per second of the fan-out rows (`fanout/<server>/<N>`: the
/// time to deliver one publication to N streams), with the bare server's.
fn rates_table(rows: &[&Value]) {
    let rate = |ns: &Value, n: f64| ns.as_f64().map(|ns| n * 1e9 / ns);
    let per_second = |r: Option<f64>| r.map_or_else(|| "—".to_owned(), |r| format!("{:.0}", r));
    let mut printed = false;
    for r in rows {
        let name = str_of(&r["name"]);
        let Some(n) = name
            .strip_prefix("fanout/host/")
            .and_then(|n| n.parse::<f64>().ok())
        else {
            continue;
        };
        if !printed {
            println!("| streams | host deliveries/s | bare tonic deliveries/s | ratio |");
            println!("|---|---|---|---|");
            printed = true;
        }
        let host = rate(&r["median_ns"], n);
        let bare = rate(&r["baseline_median_ns"], n);
        let ratio = host.zip(bare).map(|(h, b)| h / b);
        println!(
            "| {n}{} | {} | {} | {} |",
            from_earlier_run(r),
            per_second(host),
            per_second(bare),
            ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"))
        );
    }
    if printed {
        println!();
    }
}

fn bytes_table(rows: &[&Value]) {
    println!(
        "| measure | state | bytes | of which payload | baseline | baseline bytes | ratio | target | verdict |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let bytes = r["bytes"].as_u64().unwrap_or(0);
        let (target, verdict) = match r["limit_bytes"].as_u64() {
            Some(limit) if bytes < limit => (format!("< {limit} B"), "ok"),
            Some(limit) => (format!("< {limit} B"), "**over**"),
            None => ("—".to_owned(), ""),
        };
        println!(
            "| {} | {} | {bytes} | {} | {} | {} | {} | {target} | {verdict} |",
            str_of(&r["name"]),
            size(&r["state_bytes"]),
            r["payload_bytes"]
                .as_u64()
                .map_or_else(|| "—".to_owned(), |p| p.to_string()),
            str_of(&r["baseline"]),
            r["baseline_bytes"].as_u64().unwrap_or(0),
            opt_ratio(&r["ratio"]),
        );
    }
}

fn notes(rows: &[&Value]) {
    let mut seen = Vec::new();
    for r in rows {
        // Notes are per benchmark function: the name without its parameter.
        let name = str_of(&r["name"]);
        let function = name.rsplit_once('/').map_or(name, |(f, _)| f);
        let note = str_of(&r["note"]);
        if !seen.contains(&function) {
            seen.push(function);
            println!("- `{function}`: {note}");
        }
    }
}

fn main() {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let dir = target_dir().join("cosystem-bench");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        eprintln!(
            "no summaries in {}: run `cargo bench` first (see benches/README.md)",
            dir.display()
        );
        std::process::exit(1);
    }
    for file in files {
        let suite = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !only.is_empty() && !only.contains(&suite) {
            continue;
        }
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("cannot read {}: {e}", file.display());
                continue;
            }
        };
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let of =
            |kind: &str| -> Vec<&Value> { lines.iter().filter(|l| l["kind"] == kind).collect() };
        println!("## {suite}\n");
        if let Some(run) = of("run").first() {
            println!(
                "Machine: {}. Mode: {}. Run at Unix time {} on commit {}. Absolute times drift between runs (about 1.5× on a shared machine); every baseline was measured in the same run, so compare ratios.\n",
                str_of(&run["machine"]),
                if run["quick"] == true {
                    "quick (COSYSTEM_BENCH_QUICK=1)"
                } else {
                    "full"
                },
                run["unix_time"].as_u64().unwrap_or(0),
                str_of(&run["commit"]),
            );
        }
        let times = of("time");
        if !times.is_empty() {
            time_table(&times);
            println!();
            rates_table(&times);
        }
        let sizes = of("bytes");
        if !sizes.is_empty() {
            bytes_table(&sizes);
            println!();
        }
        notes(&times.iter().chain(&sizes).copied().collect::<Vec<_>>());
        println!();
    }
}
