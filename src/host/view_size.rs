//! How large the published view may grow: a commit must leave it small
//! enough to send as one snapshot (spec §15).
//!
//! Measuring the view is O(state), so the host measures it once at start
//! and then adds up each call's exact change, which both built-in module
//! kinds report (`Module::size_change`). For a module that reports none, a
//! commit's patch text bounds its growth: an `add` or `replace` puts into
//! the view at most the value (and key) its operation spells out, and a
//! `remove` only shrinks it; the host measures only when that bound reaches
//! the limit.

use json_patch::PatchOperation;
use serde_json::Value;

use crate::app::json_len::{json_len, member_len};

/// The bytes of a snapshot envelope other than the view's JSON, for a host
/// whose header carries `epoch`, `source` and `capability`, sent to a client
/// whose peer id is at most [`TARGET_ALLOWANCE`] bytes: the header, version,
/// sync id, reason, and every tag and length prefix at its widest.
pub(super) fn snapshot_overhead(epoch: &str, source: &str, capability: &str) -> usize {
    const FIXED: usize = 64;
    FIXED + TARGET_ALLOWANCE + epoch.len() + source.len() + capability.len()
}

/// The longest client peer id a snapshot is sized for.
const TARGET_ALLOWANCE: usize = 64;

/// How much the view's JSON can grow when `ops`, spelled out as
/// `ops_text_len` bytes of JSON, are applied; `None` when no bound follows
/// from the text (a `move` or `copy`, which can duplicate a subtree).
pub(super) fn growth_bound(ops: &[PatchOperation], ops_text_len: usize) -> Option<usize> {
    let mut grows = false;
    for op in ops {
        match op {
            PatchOperation::Add(_) | PatchOperation::Replace(_) => grows = true,
            PatchOperation::Remove(_) | PatchOperation::Test(_) => {}
            PatchOperation::Move(_) | PatchOperation::Copy(_) => return None,
        }
    }
    Some(if grows { ops_text_len } else { 0 })
}

/// The length of the view's JSON text, as `HostCore::view_json` writes it,
/// for these `(name, state)` sections, without building the text.
pub(super) fn view_len<'a>(sections: impl Iterator<Item = (&'a str, &'a Value)>) -> usize {
    let mut len = 2;
    for (n, (name, state)) in sections.enumerate() {
        len += usize::from(n > 0) + member_len(name, json_len(state));
    }
    len
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Also with a host peer id as long as one may be (§15), which the
    /// fixed slack alone would not cover.
    #[test]
    fn the_overhead_covers_a_snapshot_envelope_at_its_widest() {
        use crate::wire::{Header, HostMessage, Snapshot, host_message};
        use prost::Message;
        let (epoch, capability) = ("e".repeat(32), "cap");
        let state_json = "x".repeat(4 * 1024 * 1024);
        for source in ["host".to_owned(), "h".repeat(1024)] {
            let message = HostMessage {
                header: Some(Header {
                    protocol_version: u32::MAX,
                    epoch: epoch.clone(),
                    source: source.clone(),
                    target: "t".repeat(TARGET_ALLOWANCE),
                    capability: capability.to_owned(),
                }),
                kind: Some(host_message::Kind::Snapshot(Snapshot {
                    version: u64::MAX,
                    state_json: state_json.clone(),
                    sync_id: u64::MAX,
                    reason: i32::MAX,
                })),
            };
            assert!(
                message.encoded_len()
                    <= state_json.len() + snapshot_overhead(&epoch, &source, capability),
                "{} bytes of source",
                source.len()
            );
        }
    }

    #[test]
    fn view_len_is_the_length_of_the_view_text() {
        let a = json!({"count": 3, "s": "x\"y"});
        let b = json!([1, {"k": null}]);
        let sections = [("a", &a), ("b\u{e9}", &b)];
        let text = serde_json::to_string(&json!({"a": a, "b\u{e9}": b})).unwrap();
        assert_eq!(view_len(sections.into_iter()), text.len());
        assert_eq!(view_len(std::iter::empty()), "{}".len());
    }

    #[test]
    fn a_move_or_copy_has_no_growth_bound_and_a_removal_grows_nothing() {
        let ops: Vec<PatchOperation> =
            serde_json::from_value(json!([{"op": "remove", "path": "/a"}])).unwrap();
        assert_eq!(growth_bound(&ops, 30), Some(0));
        let ops: Vec<PatchOperation> =
            serde_json::from_value(json!([{"op": "add", "path": "/a", "value": 1}])).unwrap();
        assert_eq!(growth_bound(&ops, 30), Some(30));
        let ops: Vec<PatchOperation> =
            serde_json::from_value(json!([{"op": "copy", "from": "/a", "path": "/b"}])).unwrap();
        assert_eq!(growth_bound(&ops, 30), None);
    }
}
