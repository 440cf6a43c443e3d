//! A limit on how often one kind of warning is logged, so that a peer
//! repeating a cheap mistake (a wrong token, thousands of times a second)
//! cannot flood the log: the first is logged, then at most one per
//! interval, each saying how many were held back since the last.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a throttled warning may be logged.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// Decides which occurrences of one warning are logged: at most `limit`
/// in each [`INTERVAL`] (one, by default).
pub(crate) struct Throttle {
    limit: u32,
    state: Mutex<State>,
}

struct State {
    /// When the current interval began.
    window: Option<Instant>,
    /// How many were logged in it.
    logged: u32,
    held_back: u64,
}

/// Logs an event at `$level` through `$throttle` ([`Throttle::admit`]),
/// with a `held_back` field when some were held back before it, and at
/// debug when it is held back itself: a line a peer can make the host
/// write at will costs the log a bounded number a second at the level an
/// operator reads.
macro_rules! throttled {
    ($throttle:expr, $level:ident, $($event:tt)+) => {
        match $throttle.admit(::std::time::Instant::now()) {
            Some(0) => ::tracing::$level!($($event)+),
            Some(held_back) => ::tracing::$level!(held_back, $($event)+),
            None => ::tracing::debug!($($event)+),
        }
    };
}
pub(crate) use throttled;

impl Default for Throttle {
    fn default() -> Self {
        Self::per_interval(1)
    }
}

impl Throttle {
    /// A throttle that logs at most `limit` occurrences per interval.
    pub(crate) const fn per_interval(limit: u32) -> Self {
        Self {
            limit,
            state: Mutex::new(State {
                window: None,
                logged: 0,
                held_back: 0,
            }),
        }
    }

    /// Whether the occurrence at `now` is logged: `Some(n)` with the number
    /// of occurrences held back since the last one logged, or `None` if it
    /// is held back itself.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.window {
            Some(start) if now.saturating_duration_since(start) < INTERVAL => {
                if state.logged >= self.limit {
                    state.held_back += 1;
                    return None;
                }
                state.logged += 1;
            }
            _ => {
                state.window = Some(now);
                state.logged = 1;
            }
        }
        Some(std::mem::take(&mut state.held_back))
    }
}

/// The lines every session makes its host write, throttled per host: a
/// peer that connects and sends garbage in a loop must not be able to
/// fill the log.
pub(crate) struct SessionLogs {
    /// "client connected" and "client disconnected": enough a second for
    /// any honest churn to be logged line by line.
    pub(crate) comings_and_goings: Throttle,
    /// "closing session", a warning naming the peer's mistake.
    pub(crate) closing: Throttle,
}

impl Default for SessionLogs {
    fn default() -> Self {
        Self {
            comings_and_goings: Throttle::per_interval(64),
            closing: Throttle::per_interval(1),
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

    #[test]
    fn a_higher_limit_logs_that_many_per_interval() {
        let throttle = Throttle::per_interval(3);
        let t0 = Instant::now();
        for ms in [0, 1, 2] {
            assert_eq!(throttle.admit(t0 + Duration::from_millis(ms)), Some(0));
        }
        assert_eq!(throttle.admit(t0 + Duration::from_millis(3)), None);
        assert_eq!(throttle.admit(t0 + Duration::from_millis(4)), None);
        assert_eq!(throttle.admit(t0 + INTERVAL), Some(2));
        assert_eq!(throttle.admit(t0 + INTERVAL), Some(0));
    }
}
