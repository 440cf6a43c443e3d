//! How a [`Client`](super::Client) waits between connection attempts.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How far a jittered wait may stray from the backoff, each way (as gRPC's
/// connection backoff does).
pub const JITTER: f64 = 0.2;

/// How the client reconnects after its link fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// First wait after a failure.
    pub initial: Duration,
    /// Longest wait between attempts; the wait doubles up to it.
    pub max: Duration,
    /// Whether each wait is spread at random over ±[`JITTER`] of it, so
    /// that the clients of a host that restarts do not all reconnect at the
    /// same instant. On by default; the doubling itself is not jittered.
    pub jitter: bool,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            jitter: true,
        }
    }
}

impl Reconnect {
    /// The wait for a given backoff: the backoff itself, or with
    /// [`Reconnect::jitter`] a random duration within ±[`JITTER`] of it,
    /// never more than [`Duration::MAX`].
    pub fn wait(&self, backoff: Duration) -> Duration {
        if !self.jitter {
            return backoff;
        }
        let factor = 1.0 + JITTER * (2.0 * unit_random() - 1.0);
        Duration::try_from_secs_f64(backoff.as_secs_f64() * factor).unwrap_or(Duration::MAX)
    }
}

/// A number in [0, 1), different on every call. Jitter needs spread, not
/// unpredictability: std's randomly keyed hasher over a counter gives it
/// without a dependency.
fn unit_random() -> f64 {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_jittered_wait_stays_within_the_jitter_of_the_backoff(ms in 1u64..600_000) {
            let backoff = Duration::from_millis(ms);
            let wait = Reconnect::default().wait(backoff);
            prop_assert!(wait >= backoff.mul_f64(1.0 - JITTER));
            prop_assert!(wait <= backoff.mul_f64(1.0 + JITTER));
        }
    }

    #[test]
    fn jittered_waits_differ_and_unjittered_ones_do_not() {
        let backoff = Duration::from_secs(1);
        let jittered: std::collections::BTreeSet<Duration> = (0..100)
            .map(|_| Reconnect::default().wait(backoff))
            .collect();
        assert!(jittered.len() > 50, "{} distinct of 100", jittered.len());
        let plain = Reconnect {
            jitter: false,
            ..Reconnect::default()
        };
        assert_eq!(plain.wait(backoff), backoff);
    }
}
