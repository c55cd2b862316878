//! A latency histogram for the hot path: fixed log-scale buckets of atomics, no locks.
//!
//! Buckets split each power of two of nanoseconds from 1 µs up into eight, so a quantile is
//! read to within 12.5 %; below 1 µs is one bucket, above about 37 minutes another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two (a power of two itself).
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// The first power of two with its own buckets: 2^10 ns ≈ 1 µs.
const MIN_BIT: u32 = 10;
/// The last: 2^41 ns ≈ 37 minutes.
const MAX_BIT: u32 = 41;
const BUCKETS: usize = 2 + (MAX_BIT - MIN_BIT + 1) as usize * SUB;

/// Counts of durations in log-scale buckets, with their count and sum.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

fn index(ns: u64) -> usize {
    if ns < 1 << MIN_BIT {
        return 0;
    }
    let bit = 63 - ns.leading_zeros();
    if bit > MAX_BIT {
        return BUCKETS - 1;
    }
    let sub = ((ns >> (bit - SUB_BITS)) as usize) & (SUB - 1);
    1 + (bit - MIN_BIT) as usize * SUB + sub
}

/// The largest duration that falls in bucket `i`, in nanoseconds.
fn upper_bound(i: usize) -> u64 {
    if i == 0 {
        return (1 << MIN_BIT) - 1;
    }
    if i >= BUCKETS - 1 {
        return u64::MAX;
    }
    let bit = MIN_BIT + ((i - 1) / SUB) as u32;
    let sub = ((i - 1) % SUB) as u64;
    ((SUB as u64 + sub + 1) << (bit - SUB_BITS)) - 1
}

impl Histogram {
    /// Records one duration.
    pub(crate) fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[index(ns)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Their sum.
    pub(crate) fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed))
    }

    /// The upper bound of the bucket holding quantile `q` (0 to 1) of the recorded durations,
    /// or `None` if nothing was recorded.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: the smallest value with at least q of all at or
        // below it.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_nanos(upper_bound(i)));
            }
        }
        Some(Duration::from_nanos(upper_bound(BUCKETS - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bound_their_values() {
        for i in 0..BUCKETS - 1 {
            assert_eq!(index(upper_bound(i)), i, "upper bound of {i}");
            assert_eq!(index(upper_bound(i) + 1), i + 1, "after {i}");
        }
        for ns in [1_500u64, 10_000, 123_456, 9_999_999, 3_000_000_000] {
            let upper = upper_bound(index(ns));
            assert!(
                upper >= ns && (upper as f64) < ns as f64 * 1.13,
                "{ns} -> {upper}"
            );
        }
    }

    #[test]
    fn quantiles_fall_in_the_right_bucket() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..90 {
            h.record(Duration::from_micros(100));
        }
        for _ in 0..9 {
            h.record(Duration::from_millis(2));
        }
        h.record(Duration::from_millis(50));
        assert_eq!(h.count(), 100);
        let within = |d: Option<Duration>, v: Duration| {
            let d = d.expect("recorded");
            assert!(
                d >= v && d.as_secs_f64() < v.as_secs_f64() * 1.13,
                "{d:?} vs {v:?}"
            );
        };
        within(h.quantile(0.5), Duration::from_micros(100));
        within(h.quantile(0.9), Duration::from_micros(100));
        within(h.quantile(0.99), Duration::from_millis(2));
        within(h.quantile(1.0), Duration::from_millis(50));
        assert_eq!(
            h.sum(),
            Duration::from_micros(9_000) + Duration::from_millis(68)
        );
    }
}
