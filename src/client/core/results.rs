//! Results matched to pending calls and settled once the mirror has
//! caught up with the version they name (read-your-writes).

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::{ClientCore, Held, Pending, of_epoch};
use crate::app::MethodError;
use crate::client::event::{CallId, ClientEvent, Notice};
use crate::wire::view::{OutcomeView, ResultView};
use crate::wire::{ErrorCode, SyncReason};

impl ClientCore {
    pub(super) fn on_result(&mut self, now: Instant, epoch: &str, result: ResultView<'_>) {
        let call_id = result.call_id;
        // R1: a call not sent yet cannot have been answered by a conforming
        // host; on a shared channel such a result is forged, and taking it
        // would settle the call and withdraw it unsent.
        let Some(pending) = self
            .pending
            .get_mut(&call_id)
            .filter(|p| p.transmitted && p.held.is_none())
        else {
            return self.notice(Notice::UnexpectedResult { call_id });
        };
        if pending.epoch.as_deref().is_some_and(|e| e != epoch) {
            self.settle_local(
                call_id,
                ErrorCode::OutcomeUnknown,
                "the result came from another host epoch than the call was made against",
            );
            return;
        }
        if pending.epoch.is_none() {
            pending.epoch = Some(Arc::from(epoch));
        }
        let outcome = match result.outcome {
            Some(OutcomeView::ValueJson(json)) => Ok(json),
            Some(OutcomeView::Error(error)) => Err(MethodError::from_view(error)),
            None => Err(MethodError::internal(
                "the host sent a result with no outcome",
            )),
        };
        // The usual case: the mirror already has the result's version, so
        // the call settles at once, its value parsed straight from the
        // envelope and the index left untouched. RW5's arrival order holds:
        // with a mirror, every result still held names a version beyond it,
        // so none of them could settle now.
        if self
            .mirror
            .as_ref()
            .is_some_and(|m| *m.epoch == *epoch && result.state_version <= m.version)
        {
            self.pending.remove(&call_id);
            self.events.push_back(ClientEvent::Settled {
                call: CallId(call_id),
                outcome: outcome.and_then(Self::parse_value),
                state_version: Some(result.state_version),
                sent: true,
            });
            return;
        }
        self.results_held += 1;
        let held = Held {
            sync_after: self.next_sync,
            arrival: self.results_held,
            state_version: result.state_version,
            outcome: outcome.map(str::to_owned),
        };
        self.held.insert(call_id, &held);
        pending.held = Some(held);
        if !self.settle_caught_up()
            && let Some(current) = self.version()
            && current < result.state_version
            && self.pending.contains_key(&call_id)
        {
            self.heal(now, current, SyncReason::ResultAhead);
        }
    }

    /// A result's `value_json`, parsed; a malformed one settles `internal`.
    fn parse_value(json: &str) -> Result<Value, MethodError> {
        serde_json::from_str(json)
            .map_err(|e| MethodError::internal(format!("the host sent a malformed value: {e}")))
    }

    /// Settles every held result the mirror has caught up with. Returns
    /// whether any settled.
    pub(super) fn settle_caught_up(&mut self) -> bool {
        let Some(m) = &self.mirror else {
            return false;
        };
        // What the mirror has reached is a range of the version order; RW5
        // settles it in arrival order, so the batch is sorted by arrival.
        let mut caught_up: Vec<(u64, u64)> = self
            .held
            .by_version
            .range(..=(m.version, u64::MAX, u64::MAX))
            .filter(|(_, _, id)| of_epoch(&self.pending, *id, &m.epoch))
            .map(|&(_, arrival, id)| (arrival, id))
            .collect();
        caught_up.sort_unstable();
        for &(_, id) in &caught_up {
            let Some(Pending {
                held: Some(h),
                transmitted,
                ..
            }) = self.pending.remove(&id)
            else {
                continue;
            };
            self.held.remove(id, &h);
            if !transmitted {
                self.withdraw(id);
            }
            self.events.push_back(ClientEvent::Settled {
                call: CallId(id),
                outcome: h.outcome.and_then(|json| Self::parse_value(&json)),
                state_version: Some(h.state_version),
                sent: transmitted,
            });
        }
        !caught_up.is_empty()
    }
}
