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
    /// Longest wait between attempts; the wait doubles up to it. Waits after
    /// the first are never shorter than [`MIN_BACKOFF`], whatever these
    /// say, so a zero `initial` or `max` cannot make the client reconnect
    /// in a tight loop.
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

/// The shortest wait after the first: a zero backoff would double to zero
/// for ever.
pub const MIN_BACKOFF: Duration = Duration::from_millis(1);

impl Reconnect {
    /// The backoff after `backoff`: doubled, at least [`MIN_BACKOFF`], at
    /// most [`Reconnect::max`] (or [`MIN_BACKOFF`], if that is more).
    pub fn next(&self, backoff: Duration) -> Duration {
        backoff
            .saturating_mul(2)
            .max(MIN_BACKOFF)
            .min(self.max.max(MIN_BACKOFF))
    }

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

    #[test]
    fn a_zero_backoff_grows_from_the_floor_to_the_max() {
        let zero = Reconnect {
            initial: Duration::ZERO,
            max: Duration::from_millis(4),
            jitter: false,
        };
        let mut backoff = zero.initial;
        let mut waits = Vec::new();
        for _ in 0..5 {
            backoff = zero.next(backoff);
            waits.push(backoff.as_millis());
        }
        assert_eq!(waits, [1, 2, 4, 4, 4]);
        let none = Reconnect {
            max: Duration::ZERO,
            ..zero
        };
        assert_eq!(none.next(Duration::ZERO), MIN_BACKOFF);
        assert_eq!(
            Reconnect::default().next(Duration::from_secs(4)),
            Duration::from_secs(5)
        );
    }

    proptest! {
        #[test]
        fn a_jittered_wait_stays_within_the_jitter_of_the_backoff(ms in 1u64..600_000) {
            let backoff = Duration::from_millis(ms);
            let wait = Reconnect::default().wait(backoff);
            prop_assert!(wait >= backoff.mul_f64(1.0 - JITTER));
            prop_assert!(wait <= backoff.mul_f64(1.0 + JITTER));
        }

        #[test]
        fn the_next_backoff_never_shrinks_and_stays_between_the_floor_and_the_max(
            backoff_ms in 0u64..10_000_000,
            max_ms in 0u64..10_000_000,
        ) {
            let policy = Reconnect {
                initial: Duration::ZERO,
                max: Duration::from_millis(max_ms),
                jitter: false,
            };
            let backoff = Duration::from_millis(backoff_ms);
            let next = policy.next(backoff);
            let ceiling = policy.max.max(MIN_BACKOFF);
            prop_assert!(next >= MIN_BACKOFF && next <= ceiling, "{next:?}");
            prop_assert!(next >= backoff.min(ceiling), "{backoff:?} -> {next:?}");
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
