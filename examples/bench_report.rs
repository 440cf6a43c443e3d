//! Renders the bench summaries in `target/cosystem-bench/*.jsonl` (written
//! by `cargo bench`, see `benches/README.md`) as markdown tables of ratios.
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

fn time_table(rows: &[&Value]) {
    println!(
        "| benchmark | state | baseline | ratio of medians | interleaved ratio | target | verdict |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        // The verdict uses the interleaved ratio when there is one: it is
        // measured with baseline and subject alternating under the same load.
        let judged = r["interleaved_ratio"].as_f64().or(r["ratio"].as_f64());
        let (target, verdict) = match (r["limit"].as_f64(), judged) {
            (Some(limit), Some(x)) if x <= limit => (format!("≤ {limit}×"), "ok"),
            (Some(limit), Some(_)) => (format!("≤ {limit}×"), "**over**"),
            (Some(limit), None) => (format!("≤ {limit}×"), "not measured"),
            (None, _) => ("—".to_owned(), ""),
        };
        println!(
            "| {} | {} | {} | {} | {} | {target} | {verdict} |",
            str_of(&r["name"]),
            size(&r["state_bytes"]),
            str_of(&r["baseline"]),
            opt_ratio(&r["ratio"]),
            opt_ratio(&r["interleaved_ratio"]),
        );
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
                "Machine: {}. Mode: {}. Ratios only: absolute times drift between runs; every baseline was measured in the same run.\n",
                str_of(&run["machine"]),
                if run["quick"] == true {
                    "quick (COSYSTEM_BENCH_QUICK=1)"
                } else {
                    "full"
                },
            );
        }
        let times = of("time");
        if !times.is_empty() {
            time_table(&times);
            println!();
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
