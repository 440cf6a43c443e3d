//! A limit on how often one kind of warning is logged, so that a peer
//! repeating a cheap mistake (a wrong token, thousands of times a second)
//! cannot flood the log: the first is logged, then at most one per
//! interval, each saying how many were held back since the last.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a throttled warning may be logged.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// Decides which occurrences of one warning are logged.
#[derive(Default)]
pub(crate) struct Throttle(Mutex<State>);

#[derive(Default)]
struct State {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// Whether the occurrence at `now` is logged: `Some(n)` with the number
    /// of occurrences held back since the last one logged, or `None` if it
    /// is held back itself.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match state.last {
            Some(last) if now.saturating_duration_since(last) < INTERVAL => {
                state.held_back += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_then_one_per_interval_counting_the_held_back() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(throttle.admit(t0), Some(0));
        for ms in [1, 10, 999] {
            assert_eq!(throttle.admit(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.admit(t0 + INTERVAL), Some(3));
        assert_eq!(
            throttle.admit(t0 + INTERVAL + Duration::from_millis(1)),
            None
        );
        assert_eq!(throttle.admit(t0 + INTERVAL * 5), Some(1));
    }
}
