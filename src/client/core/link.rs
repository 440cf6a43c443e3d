//! The link to the host lost, found again and healed by a sync request.

use std::time::Instant;

use super::{ClientCore, OutstandingSync, later};
use crate::client::config::MIN_SYNC_RETRY;
use crate::client::event::Notice;
use crate::wire::{ClientMessage, ErrorCode, SyncReason, SyncRequest, client_message};

impl ClientCore {
    /// The transport broke. Calls already transmitted and unanswered settle
    /// `outcome-unknown` (they may or may not have run, and are never
    /// retried); calls not yet transmitted stay queued; results already in
    /// hand keep waiting for the mirror.
    ///
    /// A loss reported while already disconnected (again, or after host
    /// silence took the link down) changes nothing.
    pub fn connection_lost(&mut self) {
        if self.connected {
            self.lose_link("the connection broke while the call was in flight");
        }
    }

    /// L6, settling the calls the link took down with `why`.
    pub(super) fn lose_link(&mut self, why: &str) {
        self.connected = false;
        self.heard_at = None;
        self.settle_unanswered(why);
        self.outbox
            .retain(|m| matches!(m.kind, Some(client_message::Kind::Call(_))));
        self.sync = None;
    }

    /// The channel reports that it dropped `count` envelopes that may have
    /// been meant for this client, the link itself still being up (shared
    /// channels, spec SC12 and row L9).
    ///
    /// Calls transmitted and still without a result settle `outcome-unknown`
    /// at once, since their results may have been among the lost (they are
    /// never retried); results already in hand keep waiting for the mirror.
    /// The mirror asks to resume from its version now rather than at the
    /// next publication or bookmark, unless a sync request is outstanding
    /// (if its answer was lost, L5 repeats it).
    pub fn envelopes_lost(&mut self, now: Instant, count: u64) {
        if self.disposed {
            return;
        }
        self.notice(Notice::EnvelopesLost { count });
        self.settle_unanswered(
            "the channel lost envelopes while the call was in flight; its result may have been among them",
        );
        if self.connected
            && let Some(have) = self.version()
        {
            self.heal(now, have, SyncReason::VersionGap);
        }
    }

    /// Settles `outcome-unknown` every call transmitted and still without a
    /// result: it may or may not have run, and is never retried (CL2).
    fn settle_unanswered(&mut self, why: &str) {
        let unanswered: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.transmitted && p.held.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in unanswered {
            self.settle_local(id, ErrorCode::OutcomeUnknown, why);
        }
    }

    /// The transport is back: ask to resume from the mirror's version.
    pub fn reconnected(&mut self, now: Instant) {
        self.connected = true;
        self.heard_at = None;
        self.host_silent = false;
        if self.disposed {
            return;
        }
        let have = self.version().unwrap_or(0);
        self.sync = None;
        self.request_sync(now, have, SyncReason::Reconnect);
    }

    pub(super) fn request_sync(&mut self, now: Instant, have_version: u64, reason: SyncReason) {
        let sync_id = self.next_sync;
        self.next_sync += 1;
        // At most one request is outstanding: one still queued is superseded
        // by this one and must not be sent as well.
        self.withdraw_sync_requests();
        self.sync = Some(OutstandingSync {
            sync_id,
            have_version,
            deadline: later(now, self.config.sync_retry.max(MIN_SYNC_RETRY)),
        });
        // The request goes ahead of queued calls: it is what unblocks them.
        self.outbox.push_front(ClientMessage {
            header: Some(self.header()),
            kind: Some(client_message::Kind::SyncRequest(SyncRequest {
                sync_id,
                have_version,
                reason: reason as i32,
            })),
        });
    }

    /// Removes every sync request still queued for sending.
    pub(super) fn withdraw_sync_requests(&mut self) {
        self.outbox
            .retain(|m| !matches!(m.kind, Some(client_message::Kind::SyncRequest(_))));
    }

    /// Starts healing unless a sync request is already outstanding.
    pub(super) fn heal(&mut self, now: Instant, have_version: u64, reason: SyncReason) {
        match &self.sync {
            // A resume from a state that cannot take patches must be redone
            // as a snapshot request.
            Some(s) if have_version == 0 && s.have_version != 0 => {
                self.request_sync(now, 0, reason)
            }
            Some(_) => {}
            None => self.request_sync(now, have_version, reason),
        }
    }
}
