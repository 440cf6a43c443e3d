//! Keeping what the host sends within the max message size (spec §15):
//! the published view within one snapshot, a call's change admitted or
//! refused by the view's length, and a session's unread results bounded.

use super::HostCore;
use crate::app::MethodError;
use crate::host::view_size::{snapshot_overhead, view_len};
use crate::wire::ErrorCode;

/// A session's unread results may add up to this many maximum-size
/// messages before the session is closed as not reading them.
const BACKLOG_MESSAGES: usize = 8;

/// An upper bound on the published view's JSON length, and whether it is
/// the length itself.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ViewBound {
    pub(super) size: usize,
    pub(super) exact: bool,
}

/// A module's reported size change as an `isize`; no real change is
/// anywhere near either end.
pub(super) fn clamp(change: i64) -> isize {
    isize::try_from(change).unwrap_or(if change < 0 { isize::MIN } else { isize::MAX })
}

impl HostCore {
    /// Settles the call just run on module `i`, which may grow the view by
    /// `growth` bytes (`None`: unknown): kept if the view stays small enough
    /// to send as one snapshot or the call does not make it larger;
    /// otherwise reverted and refused (spec §15), unless the module cannot
    /// revert, when it is kept and the error to answer it with is returned
    /// (`Ok(Some)`: the commit stands, and the call's error says so).
    ///
    /// While the view's length is known exactly and the module reports its
    /// call's exact size change (both built-in kinds do), the length stays
    /// exact at O(1) per call, so refusing a call never measures the view.
    /// Otherwise the host keeps an upper bound and measures the view
    /// (O(state)) only when that bound reaches the limit, after which the
    /// length is exact again.
    pub(super) fn admit(
        &mut self,
        i: usize,
        growth: Option<usize>,
    ) -> Result<Option<MethodError>, MethodError> {
        let max = self.config.limits.max_message_bytes;
        let limit = self.view_limit();
        let before = self.view_bound;
        let change = self.modules[i].size_change().map(clamp);
        if let (true, Some(change)) = (before.exact, change) {
            let after = before.size.saturating_add_signed(change);
            return self.settle_sized(i, before, after, limit, max);
        }
        if let Some(growth) = growth {
            let bound = before.size.saturating_add(growth);
            if bound <= limit {
                self.view_bound = ViewBound {
                    size: bound,
                    exact: false,
                };
                self.modules[i].settle(true);
                return Ok(None);
            }
        }
        let after = self.published_view_len();
        // With the call's change known, the measurement also gives the
        // length before it exactly, which a refusal leaves the view at: the
        // next call then needs no measurement.
        let before = match change {
            Some(change) => ViewBound {
                size: after.saturating_add_signed(change.saturating_neg()),
                exact: true,
            },
            None => before,
        };
        self.settle_sized(i, before, after, limit, max)
    }

    /// Settles the call just run on module `i`, which takes the view's
    /// length from `before` to exactly `after`: refused (and reverted, if
    /// the module can) when that is over `limit` and larger than before.
    fn settle_sized(
        &mut self,
        i: usize,
        before: ViewBound,
        after: usize,
        limit: usize,
        max: usize,
    ) -> Result<Option<MethodError>, MethodError> {
        // An inexact bound is only ever kept within the limit, so the view
        // before this call fitted; an exact one (the view is over the limit
        // already) says whether this call makes it larger. A call that does
        // not make the view larger is never refused.
        let grows_past = after > limit && (!before.exact || after > before.size);
        let too_large = || {
            format!(
                "the call would make the published view {after} bytes of JSON, too large to send as one snapshot within the {max}-byte message limit"
            )
        };
        if grows_past && self.modules[i].settle(false) {
            self.view_bound = before;
            return Err(MethodError::new(
                ErrorCode::ResourceExhausted,
                format!("{}; nothing was committed", too_large()),
            ));
        }
        if !grows_past {
            self.modules[i].settle(true);
        }
        self.view_bound = ViewBound {
            size: after,
            exact: true,
        };
        // A module that cannot revert keeps its change; the caller is told
        // (spec §15), as for a view nested too deep.
        Ok(grows_past.then(|| {
            MethodError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "{}; the module could not revert the call, so its change was committed",
                    too_large()
                ),
            )
        }))
    }

    /// The longest view JSON that still fits one snapshot (spec §15).
    pub(super) fn view_limit(&self) -> usize {
        self.config
            .limits
            .max_message_bytes
            .saturating_sub(snapshot_overhead(
                &self.epoch,
                &self.config.peer_id,
                &self.config.capability,
            ))
    }

    /// How far a call on module `i` may grow the view's text before its
    /// work is cut short (`Module::limit_growth`): the room the view has
    /// left, plus some slack so that a call may pass through a larger view
    /// on its way to one that fits, or that is no larger than before (a
    /// call that does not grow the view is never refused). `None` for a
    /// private section, or while the view's length is only bounded.
    pub(super) fn growth_room(&self, i: usize) -> Option<usize> {
        const SLACK: usize = 64 * 1024;
        (self.published[i] && self.view_bound.exact).then(|| {
            self.view_limit()
                .saturating_sub(self.view_bound.size)
                .saturating_add(SLACK)
        })
    }

    /// The patch text to publish for module `i`'s change `ops`: as recorded,
    /// unless it is large and one `replace` of the whole section is shorter.
    /// A diff can be far larger than the value it produces (removing an
    /// array's first element rewrites every later index), and a patch must
    /// fit one message like the snapshot it stands for.
    pub(super) fn publishable(&self, i: usize, ops: String) -> String {
        const LARGE: usize = 64 * 1024;
        if ops.len() <= LARGE {
            return ops;
        }
        let Ok(section) = serde_json::to_string(self.modules[i].state()) else {
            return ops;
        };
        let whole = format!(
            "[{{\"op\":\"replace\",\"path\":{}\",\"value\":{section}}}]",
            self.prefixes[i]
        );
        if whole.len() < ops.len() { whole } else { ops }
    }

    /// The most bytes of JSON one envelope to a peer whose id is
    /// `target_len` bytes long can carry within the message limit.
    pub(super) fn message_room(&self, target_len: usize) -> usize {
        self.view_limit().saturating_sub(target_len)
    }

    /// The most encoded bytes of unread results kept for one session.
    pub(super) fn backlog_limit(&self) -> usize {
        self.config
            .limits
            .max_message_bytes
            .saturating_mul(BACKLOG_MESSAGES)
    }

    /// The published view's JSON length, measured: O(state).
    pub(super) fn published_view_len(&self) -> usize {
        view_len(
            self.modules
                .iter()
                .zip(&self.published)
                .filter(|(_, published)| **published)
                .map(|(m, _)| (m.name(), m.state())),
        )
    }
}
