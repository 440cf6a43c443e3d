//! The mirror kept in step with the host: snapshots adopted, patches
//! applied in order, gaps and conflicts healed.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::{ClientCore, Mirror};
use crate::client::apply::{ReadPatch, apply_read_shifting};
use crate::client::event::{ClientEvent, ConflictReason, Notice};
use crate::wire::view::{PatchView, SnapshotView};
use crate::wire::{ErrorCode, SnapshotReason, SyncReason};

impl ClientCore {
    /// Takes a snapshot whose state parsed as `state`; the state it let go
    /// of, if any: the mirror's it replaced, or `state` itself if refused.
    pub(super) fn on_snapshot(
        &mut self,
        epoch: &str,
        snapshot: SnapshotView<'_>,
        state: Result<Value, String>,
    ) -> Option<Value> {
        let state = match state {
            Ok(state) => state,
            Err(reason) => {
                self.notice(Notice::Malformed { reason });
                return None;
            }
        };
        if snapshot.version == 0 {
            self.notice(Notice::Malformed {
                reason: "snapshot version 0".to_owned(),
            });
            return Some(state);
        }
        let replaced;
        match &mut self.mirror {
            Some(m) if *m.epoch == *epoch => {
                if snapshot.version < m.version {
                    let current = m.version;
                    self.answered(snapshot.sync_id);
                    self.conflict(
                        ConflictReason::StaleMessage,
                        snapshot.version,
                        format!(
                            "snapshot {} is older than the mirror ({current})",
                            snapshot.version
                        ),
                    );
                    return Some(state);
                }
                replaced = Some(std::mem::replace(&mut m.state, state));
                m.version = snapshot.version;
            }
            Some(m) => {
                let old = std::mem::replace(&mut m.epoch, Arc::from(epoch)).to_string();
                replaced = Some(std::mem::replace(&mut m.state, state));
                m.version = snapshot.version;
                self.events.push_back(ClientEvent::EpochChanged {
                    old,
                    new: epoch.to_owned(),
                });
            }
            None => {
                replaced = None;
                self.mirror = Some(Mirror {
                    epoch: Arc::from(epoch),
                    version: snapshot.version,
                    state,
                });
                self.events.push_back(ClientEvent::Ready {
                    epoch: epoch.to_owned(),
                    version: snapshot.version,
                });
            }
        }
        // Also on the first snapshot: a call made with no mirror may already
        // be bound, by its result, to an epoch this mirror is not of.
        let orphaned: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.epoch.as_deref().is_some_and(|e| e != epoch))
            .map(|(id, _)| *id)
            .collect();
        for id in orphaned {
            // OUTCOME_UNKNOWN even for a call never sent, so that one rule
            // covers every call of a vanished epoch (spec §11.2); the
            // message tells the application which it was.
            self.settle_saying_how_far(
                id,
                ErrorCode::OutcomeUnknown,
                "the host restarted (new epoch)",
            );
        }
        if let Some(m) = &self.mirror {
            for pending in self.pending.values_mut() {
                pending.epoch.get_or_insert_with(|| m.epoch.clone());
            }
        }
        if snapshot.reason == SnapshotReason::Overflow as i32 {
            self.notice(Notice::Overflow {
                version: snapshot.version,
            });
        }
        // Whatever was asked, a snapshot answers it: the mirror is whole. A
        // request still queued answers nothing any more, so it is not sent.
        self.sync = None;
        self.withdraw_sync_requests();
        self.events.push_back(ClientEvent::StateChanged {
            version: snapshot.version,
        });
        self.settle_caught_up();
        self.refute_unreachable(snapshot.sync_id);
        replaced
    }

    /// Applies `patch` if it follows the mirror. `read` is its operations
    /// if read ahead; the core reads them there if it applies the patch and
    /// they were not, so that the caller frees them either way.
    pub(super) fn on_patch(
        &mut self,
        now: Instant,
        epoch: &str,
        patch: PatchView<'_>,
        read: &mut Option<ReadPatch>,
    ) {
        if patch.version < patch.base_version {
            return self.notice(Notice::Malformed {
                reason: format!(
                    "patch version {} is below its base {}",
                    patch.version, patch.base_version
                ),
            });
        }
        let outstanding = self.sync.is_some();
        let Some(m) = self.mirror.as_mut().filter(|m| *m.epoch == *epoch) else {
            if !outstanding {
                let detail = if self.mirror.is_some() {
                    format!("patch from epoch {epoch:?}, which the mirror has no snapshot of")
                } else {
                    "patch before any snapshot".to_owned()
                };
                self.conflict(ConflictReason::MissingSnapshot, patch.version, detail);
            }
            return self.heal(now, 0, SyncReason::MissingSnapshot);
        };
        let current = m.version;
        if patch.base_version == current {
            let applied =
                if patch.version == patch.base_version && !is_empty_array(patch.patch_json) {
                    // PC4: a patch that claims to change nothing must not change anything.
                    Err("a patch whose version equals its base must have no operations".to_owned())
                } else {
                    let len = patch.patch_json.len();
                    let allowance = self.shift_credit.allowance(now, len);
                    let read = read.get_or_insert_with(|| ReadPatch::read(patch.patch_json));
                    let (applied, shifted) = apply_read_shifting(&mut m.state, read, allowance);
                    // A patch that failed shifted as much, and undid it.
                    self.shift_credit.spend(len, shifted);
                    applied.map_err(|error| error.to_string())
                };
            if let Err(detail) = applied {
                self.conflict(ConflictReason::PatchApplyFailed, patch.version, detail);
                return self.heal(now, 0, SyncReason::PatchApplyFailed);
            }
            m.version = patch.version;
            self.answered(patch.sync_id);
            if patch.version != current {
                self.events.push_back(ClientEvent::StateChanged {
                    version: patch.version,
                });
            }
            self.settle_caught_up();
            self.refute_unreachable(patch.sync_id);
        } else if patch.base_version > current {
            if !outstanding {
                self.conflict(
                    ConflictReason::VersionGap,
                    patch.version,
                    format!(
                        "patch starts at {}, mirror is at {current}",
                        patch.base_version
                    ),
                );
            }
            self.heal(now, current, SyncReason::VersionGap);
        } else if self
            .sync
            .as_ref()
            .is_some_and(|s| s.sync_id == patch.sync_id)
        {
            // Our own answer, overtaken by publications that already brought
            // the mirror this far.
            self.answered(patch.sync_id);
        } else if !outstanding {
            self.conflict(
                ConflictReason::StaleMessage,
                patch.version,
                format!(
                    "patch {}..{} is behind the mirror ({current})",
                    patch.base_version, patch.version
                ),
            );
        }
    }
}

/// Whether `json` is a JSON array with no elements.
fn is_empty_array(json: &str) -> bool {
    serde_json::from_str::<Vec<serde::de::IgnoredAny>>(json).is_ok_and(|ops| ops.is_empty())
}
