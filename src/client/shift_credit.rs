//! How many array elements a client's patches may shift over time (spec
//! §15, "Array shifting").
//!
//! Each patch may shift 4 elements per byte of its own, plus a credit kept
//! across patches: at most [`CREDIT`] elements, refilled at [`CREDIT`] a
//! second, and spent by whatever a patch shifts beyond its own allowance,
//! whether it then applies or fails (and is undone, shifting as much
//! again). Never more, in one patch, than `shift_budget` allows.
//! The per-patch floor of `shift_budget` alone let every small patch shift
//! 2^24 elements: ~20 ms of work for 600 bytes, so a host sending 30 KB a
//! second kept a client core busy. With the credit, a burst can still shift
//! 2^24 elements, as much as a snapshot's worth of any array, but the
//! sustained rate is bounded by time, not by how many patches arrive.

use std::time::Instant;

/// The most elements the credit holds, and how many it regains a second.
pub(crate) const CREDIT: usize = 1 << 24;

/// A client's shift credit.
#[derive(Debug)]
pub(crate) struct ShiftCredit {
    credit: usize,
    /// When the credit was last brought up to date.
    at: Option<Instant>,
}

impl ShiftCredit {
    /// A full credit.
    pub(crate) fn new() -> Self {
        Self {
            credit: CREDIT,
            at: None,
        }
    }

    /// What a patch of `patch_len` bytes arriving at `now` may shift: its
    /// own 4 elements a byte plus the credit, refilled for the time since
    /// the last patch.
    pub(crate) fn allowance(&mut self, now: Instant, patch_len: usize) -> usize {
        if let Some(at) = self.at {
            let nanos = now.saturating_duration_since(at).as_nanos();
            let regained = nanos.saturating_mul(CREDIT as u128) / 1_000_000_000;
            let regained = usize::try_from(regained).unwrap_or(usize::MAX);
            self.credit = self.credit.saturating_add(regained).min(CREDIT);
        }
        self.at = Some(now);
        own(patch_len).saturating_add(self.credit)
    }

    /// Spends what a patch of `patch_len` bytes shifted beyond its own
    /// allowance.
    pub(crate) fn spend(&mut self, patch_len: usize, shifted: usize) {
        let beyond = shifted.saturating_sub(own(patch_len));
        self.credit = self.credit.saturating_sub(beyond);
    }
}

/// What a patch of `patch_len` bytes may shift of its own.
fn own(patch_len: usize) -> usize {
    patch_len.saturating_mul(4)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_credit_is_spent_by_shifts_beyond_a_patch_s_own_and_regained_over_time() {
        let start = Instant::now();
        let mut credit = ShiftCredit::new();
        assert_eq!(credit.allowance(start, 100), 400 + CREDIT);
        credit.spend(100, 400 + CREDIT / 2);
        assert_eq!(credit.allowance(start, 100), 400 + CREDIT / 2);
        // A quarter of a second regains a quarter of the credit.
        let later = start + Duration::from_millis(250);
        assert_eq!(credit.allowance(later, 0), CREDIT / 2 + CREDIT / 4);
        // A patch that went over its allowance spent all of it.
        credit.spend(10, usize::MAX);
        assert_eq!(credit.allowance(later, 10), 40);
        // Never more than full, however long the wait.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!(credit.allowance(much_later, 0), CREDIT);
    }
}
