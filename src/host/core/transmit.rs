//! What each session is sent next: its gated results and sync replies,
//! then the publications it has not been handed, then a bookmark.

use std::sync::Arc;

use super::{Direct, HostCore, PeerKey};
use crate::host::config::SyncMode;
use crate::wire::{HostFrame, Patch, SharedHeader, Snapshot, SnapshotReason, host_message};

impl HostCore {
    /// A Snapshot of the current version, sharing the view's text with
    /// every other Snapshot of that version.
    pub(super) fn snapshot_frame(
        &mut self,
        header: Arc<SharedHeader>,
        sync_id: u64,
        reason: SnapshotReason,
    ) -> HostFrame {
        let snapshot = Snapshot {
            version: self.version,
            state_json: String::new(),
            sync_id,
            reason: reason as i32,
        };
        let view = self.shared_view();
        HostFrame::snapshot(header, snapshot, view)
    }

    fn bookmark_frame(&mut self) -> HostFrame {
        if let Some((v, frame)) = &self.bookmark
            && *v == self.version
        {
            return frame.clone();
        }
        let frame = HostFrame::with_header(
            self.broadcast_header.clone(),
            host_message::Kind::Patch(Patch {
                base_version: self.version,
                version: self.version,
                patch_json: "[]".to_owned(),
                sync_id: 0,
            }),
        );
        self.bookmark = Some((self.version, frame.clone()));
        frame
    }

    fn live_snapshot_frame(&mut self) -> HostFrame {
        if let Some(frame) = &self.live_snapshot {
            return frame.clone();
        }
        let frame = self.snapshot_frame(self.broadcast_header.clone(), 0, SnapshotReason::Commit);
        self.live_snapshot = Some(frame.clone());
        frame
    }

    /// Whether results or a sync reply are queued for the session: what it
    /// is still owed once its client has stopped sending (H8).
    pub fn has_answers(&self, peer: PeerKey) -> bool {
        self.peers.get(&peer).is_some_and(|p| !p.direct.is_empty())
    }

    /// The next envelope to send on a session, if any.
    pub fn poll_transmit(&mut self, peer: PeerKey) -> Option<HostFrame> {
        let frame = self.next_frame(peer)?;
        // Periodic bookmarks are the one cached frame; a sync reply at the
        // current version looks the same on the wire but is a reply.
        let bookmark = self
            .bookmark
            .as_ref()
            .is_some_and(|(_, b)| HostFrame::ptr_eq(b, &frame));
        self.stats.sent(frame.kind_without_state(), bookmark);
        Some(frame)
    }

    /// What [`HostCore::poll_transmit`] hands out next, uncounted.
    fn next_frame(&mut self, peer: PeerKey) -> Option<HostFrame> {
        let version = self.version;
        let mode = self.config.sync;
        let p = self.peers.get_mut(&peer)?;
        let live = p.attached && p.options.publications;
        let ready = match p.direct.front() {
            Some(Direct::Sync { .. } | Direct::Built(_)) => true,
            Some(Direct::Result { gate, .. }) => !live || *gate <= p.cursor,
            None => false,
        };
        if ready {
            match p.direct.pop_front()? {
                Direct::Result { frame, bytes, .. } => {
                    p.direct_bytes = p.direct_bytes.saturating_sub(bytes);
                    p.direct_results = p.direct_results.saturating_sub(1);
                    return Some(frame);
                }
                Direct::Built(frame) => return Some(frame),
                Direct::Sync {
                    target,
                    sync_id,
                    have_version,
                } => {
                    // Nothing was sent to the session since the request was
                    // handled (this reply was ahead of every publication), so
                    // it may cover the versions committed meanwhile too.
                    p.cursor = version;
                    return Some(self.sync_reply(peer, &target, sync_id, have_version));
                }
            }
        }
        if live && p.cursor < version {
            let next = p.cursor + 1;
            p.bookmark_due = false;
            if mode == SyncMode::Patch {
                if let Some(frame) = self.history.get(next).and_then(|e| e.frame.clone()) {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.cursor = next;
                    }
                    return Some(frame);
                }
                let target = p.reply_to.clone();
                p.cursor = version;
                let header = self.addressed(peer, &target);
                return Some(self.snapshot_frame(header, 0, SnapshotReason::Overflow));
            }
            p.cursor = version;
            return Some(self.live_snapshot_frame());
        }
        if live && p.bookmark_due {
            p.bookmark_due = false;
            return Some(self.bookmark_frame());
        }
        None
    }
}
