//! Envelopes from the host taken in: checked, addressed, and dispatched
//! to the mirror or the pending calls.

use std::time::Instant;

use serde_json::Value;

use super::{ClientCore, MAX_EPOCH, of_epoch, parse_snapshot_state};
use crate::client::event::Notice;
use crate::client::read_ahead::{ReadAhead, Released};
use crate::wire::view::{HeaderView, HostKindView, HostView, ViewError};
use crate::wire::{ErrorCode, HostMessage, PROTOCOL_VERSION, SyncReason};

impl ClientCore {
    /// Handles one envelope from the host. It never fails: an envelope
    /// addressed elsewhere, from another host or with another capability is
    /// ignored; one of another protocol version or with a bad epoch changes
    /// nothing and is reported as a notice event; a patch that cannot be
    /// applied is a conflict, and the client resyncs (§11).
    pub fn handle_message(&mut self, now: Instant, message: HostMessage) {
        self.handle_view(now, HostView::from(&message));
    }

    /// Decodes and handles one encoded `HostMessage`, reading its strings
    /// in place; bytes that are not one change nothing and are refused.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ViewError> {
        let view = HostView::decode(bytes)?;
        self.handle_view(now, view);
        Ok(())
    }

    /// [`ClientCore::handle_message`] of a message read in place.
    pub(crate) fn handle_view(&mut self, now: Instant, message: HostView<'_>) {
        self.handle_view_parsed(now, message, ReadAhead::Nothing);
    }

    /// Whether `message` is a snapshot this core would read the state of:
    /// addressed to this client, from its host, of this protocol version,
    /// with an epoch. A driver parses such a state
    /// ([`parse_snapshot_state`]) before it locks the core, and hands it
    /// to [`ClientCore::handle_view_parsed`].
    pub(crate) fn reads_snapshot(&self, message: &HostView<'_>) -> bool {
        let header = message.header.unwrap_or_default();
        matches!(message.kind, Some(HostKindView::Snapshot(_)))
            && !self.disposed
            && self.addressed_here(&header)
            && header.protocol_version == PROTOCOL_VERSION
            && !header.epoch.is_empty()
            && header.epoch.len() <= MAX_EPOCH
    }

    /// Whether an envelope with `header` is for this client from its host.
    fn addressed_here(&self, header: &HeaderView<'_>) -> bool {
        (header.target.is_empty() || header.target == self.config.peer_id)
            && (self.config.host_id.is_empty() || header.source == self.config.host_id)
            && (self.config.capability.is_empty() || header.capability == self.config.capability)
    }

    /// [`ClientCore::handle_view`] with the envelope's payload already read
    /// by [`ReadAhead::read`] from this same `message` (`Nothing`: read
    /// here, if the core reads it). Returns what the core let go of, for
    /// the caller to free after it lets the core go: the mirror's state a
    /// snapshot replaced, the state offered when it was not adopted, and
    /// the patch read ahead.
    pub(crate) fn handle_view_parsed(
        &mut self,
        now: Instant,
        message: HostView<'_>,
        ahead: ReadAhead,
    ) -> Released {
        let (state, patch) = match ahead {
            ReadAhead::Nothing => (None, None),
            ReadAhead::Snapshot(state) => (Some(state), None),
            ReadAhead::Patch(patch) => (None, Some(patch)),
        };
        // What was read ahead for an envelope this core does not read is
        // handed back as it is, to be freed without the core too.
        let unread = |state: Option<Result<Value, String>>, patch| Released {
            state: state.and_then(Result::ok),
            patch,
        };
        if self.disposed {
            return unread(state, patch);
        }
        let header = message.header.unwrap_or_default();
        if !self.addressed_here(&header) {
            return unread(state, patch);
        }
        // Whatever it says, it came from the host this client follows.
        if self.connected {
            self.heard_at = Some(now);
        }
        if header.protocol_version != PROTOCOL_VERSION {
            self.notice(Notice::Malformed {
                reason: format!("unsupported protocol version {}", header.protocol_version),
            });
            return unread(state, patch);
        }
        // K2a: an empty epoch would make the mirror's epoch "", which every
        // later call and sync request reads as "unfenced" (E7, RS2); a
        // long one would be copied into every call and sync request.
        if header.epoch.is_empty() || header.epoch.len() > MAX_EPOCH {
            self.notice(Notice::Malformed {
                reason: format!(
                    "host envelope with an epoch of {} bytes (1 to {MAX_EPOCH} are allowed)",
                    header.epoch.len()
                ),
            });
            return unread(state, patch);
        }
        let mut released = Released::default();
        match message.kind {
            None => self.notice(Notice::Malformed {
                reason: "no known message kind".to_owned(),
            }),
            Some(HostKindView::Snapshot(s)) => {
                let state = state.unwrap_or_else(|| parse_snapshot_state(s.state_json));
                released.state = self.on_snapshot(header.epoch, s, state);
            }
            Some(HostKindView::Patch(p)) => {
                let mut patch = patch;
                self.on_patch(now, header.epoch, p, &mut patch);
                released.patch = patch;
            }
            Some(HostKindView::Result(r)) => self.on_result(now, header.epoch, r),
        }
        self.rearm_result_ahead(now);
        released
    }

    /// Q1: a held result still names a version the mirror has not reached and
    /// nothing is asking for it (a sync reply was sent before the result, so
    /// it stopped short). Ask again rather than wait for a bookmark.
    /// Q2: after the reply to sync request `sync_id` was accepted or
    /// applied, settles `internal` every held result of the mirror's epoch
    /// that arrived before that request was made and names a version the
    /// mirror still has not reached. A host sends a result only after the
    /// publication of its version (H8), so its answer to a later request
    /// covers that version; a result that names a version beyond it is
    /// forged or corrupt, and asking again would never end.
    pub(super) fn refute_unreachable(&mut self, sync_id: u64) {
        if sync_id == 0 || sync_id >= self.next_sync {
            return;
        }
        let Some(m) = &self.mirror else {
            return;
        };
        // A result's `sync_after` is the next sync id when it arrived, and
        // both only grow, so the results that arrived before request
        // `sync_id` was made are a prefix in arrival order. This runs
        // right after `settle_caught_up`, so each of them is still ahead and
        // settles here: the walk costs what it settles.
        let unreachable: Vec<(u64, u64)> = self
            .held
            .by_arrival
            .values()
            .map_while(|id| {
                let p = self.pending.get(id)?;
                let h = p.held.as_ref()?;
                (h.sync_after <= sync_id).then_some((id, p, h))
            })
            .filter(|(_, p, h)| {
                p.epoch.as_deref() == Some(&*m.epoch) && h.state_version > m.version
            })
            .map(|(id, _, h)| (*id, h.state_version))
            .collect();
        let reached = m.version;
        for (id, named) in unreachable {
            self.settle_local(
                id,
                ErrorCode::Internal,
                &format!(
                    "the result names version {named}, but the host's answer to a later sync request is at version {reached}: the result cannot be trusted"
                ),
            );
        }
    }

    fn rearm_result_ahead(&mut self, now: Instant) {
        if self.sync.is_some() || !self.connected {
            return;
        }
        let Some(m) = &self.mirror else {
            return;
        };
        // Only held results can be ahead, and the ones that are come last
        // in version order: this looks at one entry.
        let behind = self
            .held
            .by_version
            .iter()
            .rev()
            .take_while(|(named, _, _)| *named > m.version)
            .any(|(_, _, id)| of_epoch(&self.pending, *id, &m.epoch));
        if behind {
            let have = m.version;
            self.request_sync(now, have, SyncReason::ResultAhead);
        }
    }
}
