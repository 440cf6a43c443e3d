//! The bytes a listener's connections may hold in frames still arriving.
//!
//! A frame is read whole before it is decoded, so a peer that sends a
//! length prefix and most of a large frame, and then stalls, holds that
//! much of the host's memory for as long as it keeps the connection open
//! (it answers TCP keepalive, and an open session has no deadline). One
//! frame per connection is bounded by the frame limit, but not the sum: at
//! the default 4 MiB frames and 10 000 clients, 40 GiB. The sessions of
//! one listener share one budget, and its connections still waiting for
//! their first frame share another; a connection whose frame in progress
//! would take its budget past the limit is closed, and releases what it
//! held. An honest client's frames are read as fast as they arrive, so it
//! holds part of one only briefly; under a peer that holds the budget, a
//! large frame is refused rather than the host run out of memory.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest frame in progress a connection holds without counting
/// against the budget: small frames are most, and each connection's read
/// buffer is about this size anyway. A larger frame counts from its
/// prefix on, at the length it announces, since the codec makes room for
/// all of it as soon as the prefix is read.
pub(crate) const FREE_BYTES: usize = 16 * 1024;

/// How many of the largest frames one listener's sessions may hold in
/// progress at once (the budget is this many times the frame limit).
pub const PARTIAL_FRAMES_PER_LISTENER: usize = 64;

/// How many of the largest frames one listener's connections still waiting
/// for their first frame may hold in progress at once. Apart from the
/// sessions' budget, so that connections that never become sessions (and
/// need nothing to connect) cannot take the sessions' room; small, since an
/// honest first frame is a SyncRequest of a few dozen bytes.
pub const PARTIAL_FIRST_FRAMES_PER_LISTENER: usize = 4;

/// The budget of one listener (see the module's doc).
#[derive(Debug)]
pub(crate) struct FrameBudget {
    used: AtomicUsize,
    limit: usize,
}

impl FrameBudget {
    /// A budget of `limit` bytes, none of them used.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// The budget of one listener's sessions for frames (or messages) of
    /// at most `max_frame` bytes: [`PARTIAL_FRAMES_PER_LISTENER`] of them.
    pub(crate) fn per_listener(max_frame: usize) -> Self {
        Self::new(max_frame.saturating_mul(PARTIAL_FRAMES_PER_LISTENER))
    }

    /// The budget's size in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Takes `bytes` more, unless that would pass the limit; then takes
    /// nothing and returns false.
    pub(crate) fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&sum| sum <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken earlier.
    pub(crate) fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes taken now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_no_further() {
        let budget = FrameBudget::new(100);
        assert!(budget.take(60));
        assert!(!budget.take(41), "past the limit");
        assert_eq!(budget.used(), 60, "a refusal takes nothing");
        assert!(budget.take(40));
        budget.give(100);
        assert_eq!(budget.used(), 0);
        assert!(!budget.take(usize::MAX), "no overflow");
    }
}
