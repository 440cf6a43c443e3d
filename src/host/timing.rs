//! How long each declared method takes: a histogram per method, kept by the
//! core and fed by its driver.
//!
//! The core has no clock, so it cannot time a method itself. It records
//! which method an input ran ([`MethodRun`]); the driver, which reads the
//! clock around each input it hands the core, reports the time back with
//! [`crate::host::HostCore::record_method_time`]. Every host's methods run
//! one at a time under the core's lock, so a slow method delays every
//! session: these histograms are how an operator finds it.

use std::time::Duration;

use crate::app::Module;

/// Upper bounds of the histogram buckets, in seconds: from 10 µs (a counter
/// call takes a few) to 10 s, about three per decade.
const BUCKETS: [f64; 13] = [
    0.000_01, 0.000_025, 0.000_1, 0.000_25, 0.001, 0.002_5, 0.01, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// A latency histogram with fixed bounds ([`LatencyHistogram::bounds`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket, not cumulative; the last is above every
    /// bound.
    counts: [u64; BUCKETS.len() + 1],
    sum: Duration,
}

impl LatencyHistogram {
    /// The buckets' upper bounds in seconds, ascending: 10 µs (a counter
    /// call takes a few) to 10 s, about three per decade. An observation
    /// above the last falls in the `+Inf` bucket only.
    pub fn bounds() -> &'static [f64] {
        &BUCKETS
    }

    /// Adds one observation. A time equal to a bound falls in that bound's
    /// bucket (Prometheus buckets are "less than or equal").
    pub(crate) fn record(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS.partition_point(|bound| *bound < seconds);
        if let Some(n) = self.counts.get_mut(bucket) {
            *n += 1;
        }
        self.sum = self.sum.saturating_add(elapsed);
    }

    /// How many observations there are.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The observations' total.
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// Each of [`LatencyHistogram::bounds`] with the observations at or
    /// below it, then `f64::INFINITY` with [`LatencyHistogram::count`]:
    /// cumulative, as Prometheus buckets are.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().scan(0u64, |total, n| {
                *total += n;
                Some(*total)
            }))
    }
}

/// One declared method's histogram, as [`crate::host::HostStats`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MethodTiming {
    /// The module's name.
    pub module: String,
    /// The method's name.
    pub method: String,
    /// How long its calls took, each as the driver measured the input that
    /// ran it.
    pub histogram: LatencyHistogram,
}

/// Which declared method an input ran, for
/// [`crate::host::HostCore::record_method_time`]. Only a core hands these
/// out, once per run, and only for methods its modules declared; it is
/// consumed when recorded, and another core ignores it.
#[derive(Debug, PartialEq, Eq)]
pub struct MethodRun {
    core: u64,
    module: usize,
    method: usize,
}

/// The histograms of every method the modules declared when the core was
/// made, indexed by module and by the method's place among its module's
/// names in sorted order.
#[derive(Debug, Clone, Default)]
pub(super) struct MethodTimes {
    /// Per module: its name, and its method names sorted.
    names: Vec<(String, Vec<String>)>,
    histograms: Vec<Vec<LatencyHistogram>>,
}

impl MethodTimes {
    pub(super) fn new(modules: &[Box<dyn Module>]) -> Self {
        let names: Vec<(String, Vec<String>)> = modules
            .iter()
            .map(|m| {
                let mut methods = m.methods();
                methods.sort();
                methods.dedup();
                (m.name().to_owned(), methods)
            })
            .collect();
        let histograms = names
            .iter()
            .map(|(_, methods)| vec![LatencyHistogram::default(); methods.len()])
            .collect();
        Self { names, histograms }
    }

    /// Method `method` of module `module` (an index into the modules of the
    /// core `core`), if it was declared when the core was made.
    pub(super) fn find(&self, core: u64, module: usize, method: &str) -> Option<MethodRun> {
        let (_, methods) = self.names.get(module)?;
        let index = methods
            .binary_search_by(|name| name.as_str().cmp(method))
            .ok()?;
        Some(MethodRun {
            core,
            module,
            method: index,
        })
    }

    /// Records `elapsed` for `run` if it came from the core `core`.
    pub(super) fn record(&mut self, core: u64, run: MethodRun, elapsed: Duration) {
        if run.core != core {
            return;
        }
        if let Some(histogram) = self
            .histograms
            .get_mut(run.module)
            .and_then(|methods| methods.get_mut(run.method))
        {
            histogram.record(elapsed);
        }
    }

    pub(super) fn snapshot(&self) -> Vec<MethodTiming> {
        self.names
            .iter()
            .zip(&self.histograms)
            .flat_map(|((module, methods), histograms)| {
                methods
                    .iter()
                    .zip(histograms)
                    .map(|(method, histogram)| MethodTiming {
                        module: module.clone(),
                        method: method.clone(),
                        histogram: histogram.clone(),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_time_on_a_bound_falls_in_that_bounds_bucket() {
        let mut h = LatencyHistogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_nanos(10_001));
        h.record(Duration::from_secs(11));
        let buckets: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(buckets[0], (0.000_01, 1));
        assert_eq!(buckets[1], (0.000_025, 2));
        assert_eq!(buckets[BUCKETS.len() - 1], (10.0, 2));
        assert_eq!(buckets[BUCKETS.len()], (f64::INFINITY, 3));
    }

    proptest! {
        #[test]
        fn buckets_are_cumulative_and_end_at_the_count_and_sum(
            micros in prop::collection::vec(0u64..20_000_000, 0..50),
        ) {
            let mut h = LatencyHistogram::default();
            for m in &micros {
                h.record(Duration::from_micros(*m));
            }
            let buckets: Vec<(f64, u64)> = h.cumulative().collect();
            prop_assert_eq!(buckets.len(), BUCKETS.len() + 1);
            prop_assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1));
            for (bound, n) in &buckets {
                let at_or_below = micros
                    .iter()
                    .filter(|m| Duration::from_micros(**m).as_secs_f64() <= *bound)
                    .count() as u64;
                prop_assert_eq!(*n, at_or_below);
            }
            prop_assert_eq!(h.count(), micros.len() as u64);
            prop_assert_eq!(h.sum(), Duration::from_micros(micros.iter().sum()));
        }
    }
}
