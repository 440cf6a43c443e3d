//! Deadlines: sync retries, call timeouts and a silent host.

use std::time::Instant;

use super::{ClientCore, later};
use crate::client::config::MIN_SYNC_RETRY;
use crate::client::event::Notice;
use crate::wire::{ErrorCode, SyncReason, client_message};

impl ClientCore {
    /// Fires whatever is due at `now`: call deadlines (settled
    /// `deadline-exceeded`, earliest deadline first); while connected, a
    /// sync request sent and unanswered (sent again; one still queued waits
    /// its turn); and host silence (L10): the
    /// link is then taken as lost, as by [`ClientCore::connection_lost`],
    /// and [`ClientCore::is_host_silent`] tells the driver to close it.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.disposed {
            return;
        }
        // L4: in deadline order, as timers of their own would fire; equal
        // deadlines in call order (the map's order, kept by a stable sort).
        let mut expired: Vec<(Instant, u64)> = self
            .pending
            .iter()
            .filter_map(|(id, p)| p.deadline.filter(|d| *d <= now).map(|d| (d, *id)))
            .collect();
        expired.sort_by_key(|(deadline, _)| *deadline);
        for (_, id) in expired {
            self.settle_saying_how_far(
                id,
                ErrorCode::DeadlineExceeded,
                "the call's deadline passed",
            );
        }
        // L5 retries only while connected: a request made while the link is
        // down is never sent, and L7 asks afresh on reconnecting. Nor is a
        // request still queued retried (a driver waiting for its first link
        // holds it): it has not gone unanswered, only unsent, and goes out
        // as it is, INITIAL included.
        if self.connected
            && let Some(s) = &self.sync
            && s.deadline <= now
        {
            let sync_id = s.sync_id;
            let queued = self.outbox.iter().any(|m| {
                matches!(&m.kind, Some(client_message::Kind::SyncRequest(r)) if r.sync_id == sync_id)
            });
            if queued {
                if let Some(s) = &mut self.sync {
                    s.deadline = later(now, self.config.sync_retry.max(MIN_SYNC_RETRY));
                }
            } else {
                // Resume from where the mirror is now: applicable patches
                // may have moved it on since the request was made.
                let have = if s.have_version == 0 {
                    0
                } else {
                    self.version().unwrap_or(0)
                };
                self.request_sync(now, have, SyncReason::Retry);
            }
        }
        if let Some(due) = self.silence_due()
            && due <= now
            && let Some(silence) = self.config.host_silence
        {
            self.notice(Notice::HostSilent { silence });
            self.lose_link(
                "the host went silent while the call was in flight, so the link was taken as lost",
            );
            self.host_silent = true;
        }
    }

    /// When host silence (L10) takes the current link down unless the host
    /// speaks first: `None` while it is not armed (no silence configured,
    /// disconnected, or the host has not spoken on this link). A driver
    /// that finds it passed can end the link before reporting the time, so
    /// that the link's end is published before the calls it takes down
    /// settle; [`ClientCore::handle_timeout`] then fires it.
    pub fn host_silent_at(&self) -> Option<Instant> {
        self.silence_due()
    }

    fn silence_due(&self) -> Option<Instant> {
        let silence = self.config.host_silence?;
        let heard = self.heard_at.filter(|_| self.connected && !self.disposed)?;
        heard.checked_add(silence)
    }

    /// Whether host silence (L10) has taken the current link down: the
    /// driver should close the link and reconnect. True from the
    /// [`ClientCore::handle_timeout`] that found the host silent until
    /// [`ClientCore::reconnected`]; the core has already acted as for
    /// [`ClientCore::connection_lost`].
    pub fn is_host_silent(&self) -> bool {
        self.host_silent
    }

    /// When [`ClientCore::handle_timeout`] next needs calling, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.pending.values().filter_map(|p| p.deadline);
        let sync = self
            .sync
            .as_ref()
            .filter(|_| self.connected)
            .map(|s| s.deadline);
        calls.chain(sync).chain(self.silence_due()).min()
    }
}
