//! What [`Host::stats`](super::Host::stats) answers while an input holds
//! the core: one slow or stuck method holds it for as long as it runs, and a
//! metrics scrape that waited for it would hang exactly when the operator
//! most needs to see what is going on.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::HostStats;

/// The last stats taken, and when the input now holding the core began.
pub(super) struct Busy {
    base: Instant,
    /// One more than the nanoseconds after `base` at which the timed input
    /// now holding the core began; 0 when none is.
    since: AtomicU64,
    /// Inputs that have taken the core: one that moves while a scrape
    /// waits shows the core busy with many short inputs, not stuck on one.
    inputs: AtomicU64,
    /// Inputs that have let the core go: one fewer than `inputs` while an
    /// input holds it.
    left: AtomicU64,
    last: Mutex<HostStats>,
}

impl Busy {
    pub(super) fn new(first: HostStats) -> Self {
        Self {
            base: Instant::now(),
            since: AtomicU64::new(0),
            inputs: AtomicU64::new(0),
            left: AtomicU64::new(0),
            last: Mutex::new(first),
        }
    }

    /// Notes that an input takes the core now, when `timing` (method timing)
    /// is on: the clock is read only then, since each read costs the call
    /// path a few percent. The instant the input began, if read.
    pub(super) fn enter(&self, timing: bool) -> Option<Instant> {
        self.inputs.fetch_add(1, Ordering::Relaxed);
        timing.then(|| {
            let now = Instant::now();
            let nanos = u64::try_from(now.duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
            self.since
                .store(nanos.saturating_add(1).max(1), Ordering::Relaxed);
            now
        })
    }

    /// Notes that the input [`enter`](Self::enter) timed has let go.
    pub(super) fn leave(&self, started: Option<Instant>) {
        self.left.fetch_add(1, Ordering::Relaxed);
        if started.is_some() {
            self.since.store(0, Ordering::Relaxed);
        }
    }

    /// How long the timed input now holding the core has held it.
    fn held_for(&self) -> Option<Duration> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(since - 1)),
            ),
        }
    }

    /// The number of the input holding the core now, if one is: the same
    /// number seen twice is one input holding it all along.
    pub(super) fn holding(&self) -> Option<u64> {
        let left = self.left.load(Ordering::Relaxed);
        let inputs = self.inputs.load(Ordering::Relaxed);
        (inputs > left).then_some(inputs)
    }

    /// How many inputs have taken the core so far.
    pub(super) fn inputs(&self) -> u64 {
        self.inputs.load(Ordering::Relaxed)
    }

    /// Keeps `stats` as the latest taken.
    pub(super) fn remember(&self, stats: &HostStats) {
        stats.clone_into(&mut self.last.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The latest stats taken, marked as read while the core was held.
    pub(super) fn last(&self) -> HostStats {
        let mut stats = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        stats.core_held_for = Some(self.held_for().unwrap_or_default());
        stats
    }
}
