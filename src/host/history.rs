//! The host's bounded log of recent publications.
//!
//! One entry per published version, shared by every client: live
//! publications are read from it through per-client cursors (so a
//! publication is stored and encoded once however many clients there are),
//! and a reconnecting client resumes from it. A client whose cursor falls
//! behind the oldest entry has missed publications for good and must be sent
//! a snapshot instead.

use std::collections::VecDeque;

use crate::wire::{HostFrame, host_message};

/// One published version.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The version this entry produced.
    pub version: u64,
    /// The version's RFC 6902 operations as a JSON array, unless `frame`
    /// carries them (patch mode), so that they are held once.
    ops: String,
    /// The live publication, addressed to every client (patch mode only;
    /// snapshot mode publishes one shared latest snapshot instead).
    pub frame: Option<HostFrame>,
}

impl Entry {
    /// A version published as `frame`, a patch whose `patch_json` holds the
    /// version's operations.
    pub fn published(version: u64, frame: HostFrame) -> Self {
        Self {
            version,
            ops: String::new(),
            frame: Some(frame),
        }
    }

    /// A version whose operations `ops` (a JSON array) are only kept for
    /// resuming clients (snapshot mode).
    pub fn ops_only(version: u64, ops: String) -> Self {
        Self {
            version,
            ops,
            frame: None,
        }
    }

    /// The operations without the enclosing brackets, so that consecutive
    /// entries concatenate with a comma.
    pub fn ops(&self) -> &str {
        let array = match self.frame.as_ref().and_then(HostFrame::kind_without_state) {
            Some(host_message::Kind::Patch(patch)) => patch.patch_json.as_str(),
            _ => self.ops.as_str(),
        };
        array
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or("")
    }

    fn cost(&self) -> usize {
        // The frame holds roughly the ops again once encoded.
        self.ops().len() * if self.frame.is_some() { 2 } else { 1 } + 64
    }
}

/// A window of the most recent entries, bounded in count and bytes.
#[derive(Debug)]
pub(crate) struct History {
    entries: VecDeque<Entry>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl History {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Appends the entry for the next version and evicts the oldest entries
    /// beyond the bounds. The newest entry is always kept, so live
    /// publication never needs a snapshot for a client that keeps up.
    pub fn push(&mut self, entry: Entry) {
        self.bytes += entry.cost();
        self.entries.push_back(entry);
        while self.entries.len() > 1
            && (self.entries.len() > self.max_entries || self.bytes > self.max_bytes)
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.cost();
            }
        }
    }

    /// The entry that produced `version`, if still held.
    pub fn get(&self, version: u64) -> Option<&Entry> {
        let first = self.entries.front()?.version;
        let offset = usize::try_from(version.checked_sub(first)?).ok()?;
        self.entries.get(offset)
    }

    /// The concatenated operations taking version `from` to `to`, if every
    /// version in between is still held and they take at most `max_len`
    /// bytes. `from == to` yields an empty list.
    pub fn ops_between(&self, from: u64, to: u64, max_len: usize) -> Option<String> {
        if from > to {
            return None;
        }
        if from == to {
            return Some(String::new());
        }
        let mut out = String::new();
        for version in from + 1..=to {
            let entry = self.get(version)?;
            let ops = entry.ops();
            if ops.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(ops);
            if out.len() > max_len {
                return None;
            }
        }
        Some(out)
    }

    /// How many entries are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, ops: &str) -> Entry {
        Entry::ops_only(version, format!("[{ops}]"))
    }

    #[test]
    fn window_evicts_oldest_beyond_count() {
        let mut h = History::new(2, usize::MAX);
        for v in 2..=5 {
            h.push(entry(v, "{}"));
        }
        assert_eq!(h.len(), 2);
        assert!(h.get(3).is_none());
        assert_eq!(h.get(4).map(|e| e.version), Some(4));
        assert_eq!(h.get(5).map(|e| e.version), Some(5));
    }

    #[test]
    fn window_evicts_beyond_bytes_but_keeps_newest() {
        let mut h = History::new(100, 10);
        h.push(entry(2, &"x".repeat(50)));
        h.push(entry(3, &"y".repeat(50)));
        assert_eq!(h.get(3).map(Entry::ops), Some("y".repeat(50).as_str()));
        assert_eq!(h.len(), 1);
        assert!(h.get(3).is_some());
    }

    #[test]
    fn a_published_entry_reads_its_operations_from_its_frame() {
        let frame = HostFrame::new(crate::wire::HostMessage {
            header: None,
            kind: Some(host_message::Kind::Patch(crate::wire::Patch {
                base_version: 1,
                version: 2,
                patch_json: "[{\"a\":1}]".to_owned(),
                sync_id: 0,
            })),
        });
        let mut h = History::new(10, usize::MAX);
        h.push(Entry::published(2, frame));
        h.push(entry(3, "{\"b\":2}"));
        assert_eq!(
            h.ops_between(1, 3, usize::MAX).as_deref(),
            Some("{\"a\":1},{\"b\":2}")
        );
    }

    #[test]
    fn ops_between_concatenates_and_refuses_missing_versions_and_too_long_results() {
        let mut h = History::new(10, usize::MAX);
        h.push(entry(2, "{\"a\":1}"));
        h.push(entry(3, ""));
        h.push(entry(4, "{\"b\":2}"));
        assert_eq!(
            h.ops_between(1, 4, usize::MAX).as_deref(),
            Some("{\"a\":1},{\"b\":2}")
        );
        assert_eq!(h.ops_between(4, 4, usize::MAX).as_deref(), Some(""));
        assert_eq!(h.ops_between(0, 4, usize::MAX), None);
        assert_eq!(h.ops_between(5, 4, usize::MAX), None);
        // A resume that would take more than the given room is refused.
        assert_eq!(
            h.ops_between(1, 4, 15).as_deref(),
            Some("{\"a\":1},{\"b\":2}")
        );
        assert_eq!(h.ops_between(1, 4, 14), None);
    }

    /// H11/§15: the window holds up to its byte bound; it evicts only beyond it.
    #[test]
    fn a_window_exactly_at_its_byte_bound_keeps_every_entry() {
        // Each entry costs 36 + 64 = 100 bytes (H11, ops-only).
        let mut h = History::new(10, 200);
        h.push(entry(2, &"x".repeat(36)));
        h.push(entry(3, &"y".repeat(36)));
        assert_eq!(h.len(), 2);
        assert!(h.get(2).is_some());
        h.push(entry(4, &"z".repeat(36)));
        assert_eq!(h.len(), 2);
        assert!(h.get(2).is_none());
    }

    /// H11: in patch mode a version costs twice its operations' JSON plus 64.
    #[test]
    fn a_published_entry_costs_twice_its_operations_plus_64() {
        let published = |version: u64| {
            Entry::published(
                version,
                HostFrame::new(crate::wire::HostMessage {
                    header: None,
                    kind: Some(host_message::Kind::Patch(crate::wire::Patch {
                        base_version: version - 1,
                        version,
                        patch_json: format!("[{}]", "x".repeat(36)),
                        sync_id: 0,
                    })),
                }),
            )
        };
        // Each costs 2 * 36 + 64 = 136 bytes.
        let mut h = History::new(10, 272);
        h.push(published(2));
        h.push(published(3));
        assert_eq!(h.len(), 2);
        let mut h = History::new(10, 271);
        h.push(published(2));
        h.push(published(3));
        assert_eq!(h.len(), 1);
    }
}
