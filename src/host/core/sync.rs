//! Sync requests answered (H1–H8) and bookmarks asked for (H10).

use super::{Direct, HostCore, PeerKey};
use crate::host::event::HostEvent;
use crate::wire::view::HeaderView;
use crate::wire::{HostFrame, Patch, SnapshotReason, SyncRequest, host_message};

impl HostCore {
    pub(super) fn handle_sync(
        &mut self,
        peer: PeerKey,
        header: &HeaderView<'_>,
        request: &SyncRequest,
    ) {
        self.stats.sync_requests += 1;
        if !self.peers.contains_key(&peer) {
            return;
        }
        // Judged now, as H2 says: a version above the current one asks for a
        // Snapshot even if the host reaches it before the reply is sent.
        let resumable = header.epoch == self.epoch
            && request.have_version > 0
            && request.have_version <= self.version;
        let have_version = if resumable { request.have_version } else { 0 };
        let reply_only = self
            .peers
            .get(&peer)
            .is_some_and(|p| !p.options.publications);
        let reply = if reply_only {
            Direct::Built(self.sync_reply(peer, header.source, request.sync_id, have_version))
        } else {
            Direct::Sync {
                target: header.source.to_owned(),
                sync_id: request.sync_id,
                have_version,
            }
        };
        let version = self.version;
        if let Some(p) = self.peers.get_mut(&peer) {
            // The answer covers every version up to the one it is sent at, so
            // it must go ahead of any queued result naming a version the
            // session has not been sent (H8), and no later than an unsent
            // older answer, which it supersedes and whose place it takes.
            let sent = p.cursor;
            let at = p
                .direct
                .iter()
                .position(|d| match d {
                    Direct::Sync { .. } | Direct::Built(_) => true,
                    Direct::Result { gate, .. } => *gate > sent,
                })
                .unwrap_or(p.direct.len());
            p.direct.retain(|d| matches!(d, Direct::Result { .. }));
            p.direct.insert(at, reply);
            p.attached = true;
            p.cursor = version;
            p.bookmark_due = false;
        }
    }

    /// The answer to a SyncRequest, at the current version (H2): a resume
    /// Patch from `have_version` if it is not 0, every version since is in
    /// the history window and the Patch fits one message; else a Snapshot.
    pub(super) fn sync_reply(
        &mut self,
        peer: PeerKey,
        target: &str,
        sync_id: u64,
        have_version: u64,
    ) -> HostFrame {
        // A resume Patch larger than one message would end the session it
        // is for, and the next resume would too: a Snapshot always fits (§15).
        let ops = (have_version > 0)
            .then(|| {
                let room = self.message_room(target.len());
                self.history.ops_between(have_version, self.version, room)
            })
            .flatten();
        match ops {
            Some(ops) => {
                let patch = Patch {
                    base_version: have_version,
                    version: self.version,
                    patch_json: format!("[{ops}]"),
                    sync_id,
                };
                HostFrame::with_header(
                    self.addressed(peer, target),
                    host_message::Kind::Patch(patch),
                )
            }
            None => {
                let header = self.addressed(peer, target);
                self.snapshot_frame(header, sync_id, SnapshotReason::Sync)
            }
        }
    }

    /// Asks every session that is idle at the current version to be sent a
    /// bookmark (an empty patch at the current version), so that a client
    /// that lost the last publication finds out. Call on an idle interval.
    pub fn bookmark(&mut self) {
        for peer in self.peers.values_mut() {
            if peer.attached && peer.options.publications {
                peer.bookmark_due = true;
            }
        }
        self.events.push_back(HostEvent::Bookmarked {
            version: self.version,
        });
    }
}
