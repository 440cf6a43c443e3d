//! Counters of a host's work, for the operator's metrics: kept by the
//! sans-IO core as it works (a few array increments per envelope), read as a
//! [`HostStats`] snapshot, rendered in the Prometheus text format.

use std::collections::BTreeMap;

use crate::prometheus::{family, heading, label, labels, plain};

use super::session_end::SessionEnd;
use super::timing::MethodTiming;
use crate::wire::{ErrorCode, SnapshotReason, host_message};

/// What a host has done since it started, and where it stands now.
///
/// Counters only grow during a host's lifetime; a restarted host (a new
/// `epoch`) starts them again, as Prometheus counters expect of a restarted
/// process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostStats {
    /// The host's epoch.
    pub epoch: String,
    /// The current state version.
    pub version: u64,
    /// Sessions open now. On the shared bus this includes the host's own
    /// publishing session and the reply-only sessions it keeps for peers
    /// that spoke recently.
    pub sessions: usize,
    /// Sessions opened, the host's own on the bus included. Counted by the
    /// [`Host`](crate::host::Host) driver: a bare core's stats leave it 0.
    pub sessions_opened: u64,
    /// Sessions ended, by how: `client_closed` (the client closed its side
    /// and was answered), `connection_lost` (a reset, a lost connection, a
    /// failed write), `refused_input` (the host ended it over what the
    /// client sent, or for sending nothing in time), `host_shutdown`, or `other` (ended by the application
    /// that opened it, and every session on the shared bus). Only ends that
    /// occurred are present. Counted by the driver, as `sessions_opened`.
    pub sessions_ended: BTreeMap<&'static str, u64>,
    /// New sessions refused because `max_clients` were open (on the bus,
    /// also those it then admitted by closing its least recently used
    /// session).
    pub sessions_refused: u64,
    /// Calls answered, by outcome: `"ok"` or the error code's kebab-case
    /// name (spec §14), refusals made without running the method included.
    /// Only outcomes that occurred are present.
    pub calls_answered: BTreeMap<&'static str, u64>,
    /// Methods that panicked, in client calls (answered `internal`) and in
    /// the host's own [`invoke`](crate::host::Host::invoke) alike.
    pub method_panics: u64,
    /// SyncRequests handled (on the bus, the host's announcement of a new
    /// epoch counts as one).
    pub sync_requests: u64,
    /// Snapshots handed to sessions, by reason: `commit`, `sync`,
    /// `overflow` (the bus's announcement is a `sync` reply relabelled
    /// after it is counted). Only reasons that occurred are present.
    pub snapshots_sent: BTreeMap<&'static str, u64>,
    /// Patches handed to sessions: publications, and replies to sync
    /// requests (a resume, or an empty patch when the client is current).
    pub patches_sent: u64,
    /// Periodic bookmarks (empty patches that only carry the version)
    /// handed to sessions.
    pub bookmarks_sent: u64,
    /// Call results handed to sessions.
    pub results_sent: u64,
    /// How long each declared method took per call: the time the driver
    /// measured the core held for the input that ran it (decoding,
    /// arguments, method and commit). With method timing on, every method
    /// the modules declared when the core was made is present, in module
    /// order and then by name; with it off (the default), none is.
    pub method_seconds: Vec<MethodTiming>,
    /// Set only by [`Host::stats`](crate::host::Host::stats) when an input
    /// held the core past a short wait (a slow or stuck method): the other
    /// fields are then the latest stats taken before it, and this is how
    /// long that input has held the core so far (zero when method timing is
    /// off, which is what reads the clock). `None` when the stats are
    /// current.
    pub core_held_for: Option<std::time::Duration>,
}

/// Every error code, at the index of its wire value.
const CODES: [ErrorCode; 13] = [
    ErrorCode::Unspecified,
    ErrorCode::NotFound,
    ErrorCode::InvalidArgument,
    ErrorCode::Failed,
    ErrorCode::Unavailable,
    ErrorCode::PermissionDenied,
    ErrorCode::ResourceExhausted,
    ErrorCode::Internal,
    ErrorCode::FailedPrecondition,
    ErrorCode::DeadlineExceeded,
    ErrorCode::Cancelled,
    ErrorCode::Disposed,
    ErrorCode::OutcomeUnknown,
];

/// Every snapshot reason, at the index of its wire value.
const REASONS: [SnapshotReason; 5] = [
    SnapshotReason::Unspecified,
    SnapshotReason::Commit,
    SnapshotReason::Sync,
    SnapshotReason::Overflow,
    SnapshotReason::Announce,
];

/// The core's running counts: fixed arrays, so that counting costs no
/// lookup on the per-call path.
#[derive(Debug, Clone, Default)]
pub(super) struct Counters {
    calls_ok: u64,
    calls_failed: [u64; CODES.len()],
    snapshots: [u64; REASONS.len()],
    patches: u64,
    bookmarks: u64,
    results: u64,
    pub(super) sessions_refused: u64,
    pub(super) method_panics: u64,
    pub(super) sync_requests: u64,
}

impl Counters {
    /// Counts a call answered with `error` (`None`: a value).
    pub(super) fn call_answered(&mut self, error: Option<ErrorCode>) {
        match error {
            None => self.calls_ok += 1,
            Some(code) => {
                if let Some(n) = self.calls_failed.get_mut(index(code as i32)) {
                    *n += 1;
                }
            }
        }
    }

    /// Counts an envelope handed to a session; `bookmark` says a Patch is
    /// a periodic bookmark rather than a publication or a sync reply.
    pub(super) fn sent(&mut self, kind: Option<&host_message::Kind>, bookmark: bool) {
        match kind {
            Some(host_message::Kind::Snapshot(s)) => {
                if let Some(n) = self.snapshots.get_mut(index(s.reason)) {
                    *n += 1;
                }
            }
            Some(host_message::Kind::Patch(_)) if bookmark => self.bookmarks += 1,
            Some(host_message::Kind::Patch(_)) => self.patches += 1,
            Some(host_message::Kind::Result(_)) => self.results += 1,
            None => {}
        }
    }

    /// The counts as a [`HostStats`], with the gauges the core knows.
    pub(super) fn snapshot(&self, epoch: &str, version: u64, sessions: usize) -> HostStats {
        let mut calls_answered = BTreeMap::new();
        if self.calls_ok > 0 {
            calls_answered.insert("ok", self.calls_ok);
        }
        for (code, n) in CODES.iter().zip(self.calls_failed) {
            if n > 0 {
                calls_answered.insert(code.kebab_name(), n);
            }
        }
        let snapshots_sent = REASONS
            .iter()
            .zip(self.snapshots)
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| (reason_name(*reason), n))
            .collect();
        HostStats {
            epoch: epoch.to_owned(),
            version,
            sessions,
            sessions_opened: 0,
            sessions_ended: BTreeMap::new(),
            sessions_refused: self.sessions_refused,
            calls_answered,
            method_panics: self.method_panics,
            sync_requests: self.sync_requests,
            snapshots_sent,
            patches_sent: self.patches,
            bookmarks_sent: self.bookmarks,
            results_sent: self.results,
            method_seconds: Vec::new(),
            core_held_for: None,
        }
    }
}

/// The counter index of a wire enum value: the value itself (0, the
/// unspecified value, for a negative one); a value past the table has no
/// counter and is not counted. The core only builds values it knows.
fn index(value: i32) -> usize {
    usize::try_from(value).unwrap_or(0)
}

fn reason_name(reason: SnapshotReason) -> &'static str {
    match reason {
        SnapshotReason::Unspecified => "unspecified",
        SnapshotReason::Commit => "commit",
        SnapshotReason::Sync => "sync",
        SnapshotReason::Overflow => "overflow",
        SnapshotReason::Announce => "announce",
    }
}

impl HostStats {
    /// The stats in the Prometheus text exposition format (version 0.0.4),
    /// every metric named `cosystem_worker_…` with its `HELP` and `TYPE`.
    /// The epoch is a label of `cosystem_worker_host_info`, so a restart
    /// (counters starting again) can be told from a counter reset.
    pub fn to_prometheus(&self) -> String {
        // Series a scraper will see sooner or later are there from the
        // start at 0, so that `rate()` sees their first increase.
        let labelled = |name: &str,
                        map: &BTreeMap<&'static str, u64>,
                        always: &[&'static str]|
         -> Vec<(String, u64)> {
            let mut all = map.clone();
            for key in always {
                all.entry(key).or_insert(0);
            }
            all.iter().map(|(k, v)| (label(name, k), *v)).collect()
        };
        let mut out = String::new();
        family(
            &mut out,
            "host_info",
            "gauge",
            "Always 1; the host's epoch, which changes when the host restarts.",
            &[(label("epoch", &self.epoch), 1)],
        );
        family(
            &mut out,
            "state_version",
            "gauge",
            "The current state version.",
            &plain(self.version),
        );
        family(
            &mut out,
            "sessions",
            "gauge",
            "Sessions open now.",
            &plain(u64::try_from(self.sessions).unwrap_or(u64::MAX)),
        );
        family(
            &mut out,
            "sessions_opened_total",
            "counter",
            "Sessions opened.",
            &plain(self.sessions_opened),
        );
        family(
            &mut out,
            "sessions_ended_total",
            "counter",
            "Sessions ended, by how: client_closed, connection_lost, refused_input, host_shutdown or other.",
            &labelled("reason", &self.sessions_ended, &SessionEnd::labels()),
        );
        family(
            &mut out,
            "sessions_refused_total",
            "counter",
            "New sessions refused because max clients were open.",
            &plain(self.sessions_refused),
        );
        family(
            &mut out,
            "calls_answered_total",
            "counter",
            "Calls answered, by outcome: ok or the error code.",
            &labelled("outcome", &self.calls_answered, &["ok"]),
        );
        family(
            &mut out,
            "method_panics_total",
            "counter",
            "Methods that panicked.",
            &plain(self.method_panics),
        );
        family(
            &mut out,
            "sync_requests_total",
            "counter",
            "Sync requests handled.",
            &plain(self.sync_requests),
        );
        family(
            &mut out,
            "snapshots_sent_total",
            "counter",
            "Snapshots handed to sessions, by reason.",
            &labelled(
                "reason",
                &self.snapshots_sent,
                &["commit", "sync", "overflow"],
            ),
        );
        family(
            &mut out,
            "patches_sent_total",
            "counter",
            "Patches handed to sessions: publications and sync replies.",
            &plain(self.patches_sent),
        );
        family(
            &mut out,
            "bookmarks_sent_total",
            "counter",
            "Periodic bookmarks handed to sessions.",
            &plain(self.bookmarks_sent),
        );
        family(
            &mut out,
            "results_sent_total",
            "counter",
            "Call results handed to sessions.",
            &plain(self.results_sent),
        );
        self.core_held(&mut out);
        self.method_histograms(&mut out);
        out
    }

    /// `core_held_seconds`: a stuck method shows as a gauge that keeps
    /// growing from one scrape to the next, the counters standing still.
    fn core_held(&self, out: &mut String) {
        use std::fmt::Write;
        heading(
            out,
            "core_held_seconds",
            "gauge",
            "How long one input (a method) had held the host's core when these metrics were read, if past a short wait; the other metrics are then from before it. 0 when the core was free, and always 0 without method timing (which reads the clock).",
        );
        let seconds = self.core_held_for.unwrap_or_default().as_secs_f64();
        let _ = writeln!(out, "cosystem_worker_core_held_seconds {seconds}");
    }

    /// `method_duration_seconds`, a histogram per declared method; nothing
    /// while method timing is off.
    fn method_histograms(&self, out: &mut String) {
        use std::fmt::Write;
        if self.method_seconds.is_empty() {
            return;
        }
        let name = "cosystem_worker_method_duration_seconds";
        heading(
            out,
            "method_duration_seconds",
            "histogram",
            "Time the host's core was held for the input that ran the method (one call).",
        );
        for timing in &self.method_seconds {
            let series = [
                ("module", timing.module.as_str()),
                ("method", timing.method.as_str()),
            ];
            for (bound, n) in timing.histogram.cumulative() {
                let le = if bound.is_infinite() {
                    "+Inf".to_owned()
                } else {
                    bound.to_string()
                };
                let mut with_le = series.to_vec();
                with_le.push(("le", &le));
                let _ = writeln!(out, "{name}_bucket{} {n}", labels(&with_le));
            }
            let series = labels(&series);
            let _ = writeln!(
                out,
                "{name}_sum{series} {}",
                timing.histogram.sum().as_secs_f64()
            );
            let _ = writeln!(out, "{name}_count{series} {}", timing.histogram.count());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_list_each_wire_value_at_its_own_index() {
        for (i, code) in CODES.iter().enumerate() {
            assert_eq!(*code as i32 as usize, i);
        }
        for (i, reason) in REASONS.iter().enumerate() {
            assert_eq!(*reason as i32 as usize, i);
        }
    }

    #[test]
    fn every_error_code_and_reason_has_a_counter_of_its_own() {
        let mut counters = Counters::default();
        for code in CODES {
            counters.call_answered(Some(code));
        }
        counters.call_answered(None);
        for reason in REASONS {
            counters.sent(
                Some(&host_message::Kind::Snapshot(crate::wire::Snapshot {
                    reason: reason as i32,
                    ..Default::default()
                })),
                false,
            );
        }
        let stats = counters.snapshot("e", 1, 0);
        assert_eq!(stats.calls_answered.len(), CODES.len() + 1);
        assert!(stats.calls_answered.values().all(|n| *n == 1));
        assert_eq!(stats.snapshots_sent.len(), REASONS.len());
        assert!(stats.snapshots_sent.values().all(|n| *n == 1));
    }

    #[test]
    fn the_prometheus_text_has_help_and_type_for_every_metric_and_escapes_the_epoch() {
        let mut stats = Counters::default().snapshot("a\"b\\c\nd", 7, 2);
        stats.calls_answered.insert("ok", 3);
        stats.calls_answered.insert("not-found", 1);
        let text = stats.to_prometheus();
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap_or_default().to_owned());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value.parse::<u64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap_or_default();
            assert!(typed.contains(name), "{name} has no TYPE before it");
        }
        assert!(text.contains("cosystem_worker_calls_answered_total{outcome=\"ok\"} 3\n"));
        assert!(text.contains("cosystem_worker_calls_answered_total{outcome=\"not-found\"} 1\n"));
        assert!(text.contains("cosystem_worker_state_version 7\n"));
        // Series that will occur are there from the start.
        assert!(text.contains("cosystem_worker_snapshots_sent_total{reason=\"overflow\"} 0\n"));
        let empty = Counters::default().snapshot("e", 1, 0).to_prometheus();
        assert!(empty.contains("cosystem_worker_calls_answered_total{outcome=\"ok\"} 0\n"));
        assert!(text.contains("cosystem_worker_sessions 2\n"));
        assert!(text.contains("cosystem_worker_host_info{epoch=\"a\\\"b\\\\c\\nd\"} 1\n"));
    }
}
