//! I/O counters of a volume, kept where the I/O passes: relaxed atomics only, no lock, so
//! that counting costs the hot path a few uncontended additions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds (100 µs to 10 s).
const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets, in atomics.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// One count per bound, and the last for everything above the largest.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Seconds, summed over every observation.
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound in seconds, count in this bucket alone); the last bound is `f64::MAX`
    /// (+Inf).
    pub buckets: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BOUNDS_US.iter().position(|&b| us <= b).unwrap_or(BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The counts now. The count is the sum of the buckets read, so the two always agree.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = BOUNDS_US.get(i).map_or(f64::MAX, |&b| b as f64 / 1e6);
                (bound, n.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        HistogramSnapshot { sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6, count, buckets }
    }
}

/// What a volume counts of the I/O it serves (NBD READ and WRITE; zeroing and trim are not
/// counted as writes).
#[derive(Debug, Default)]
pub struct IoStats {
    pub read_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
    /// Chunk pieces of reads served from the local cache.
    pub cache_hits: AtomicU64,
    /// Chunk pieces of reads that had to come from the targets.
    pub cache_misses: AtomicU64,
    /// Chunks read ahead into the cache for sequential readers.
    pub prefetched: AtomicU64,
    pub read_latency: LatencyHistogram,
    pub write_latency: LatencyHistogram,
    /// Bytes of chunk shares stored on the targets (the rest of what the volume stores
    /// there is metadata: journal records, checkpoints, map pages).
    pub data_stored_bytes: AtomicU64,
}

impl IoStats {
    pub(crate) fn read(&self, bytes: u64, took: Duration) {
        self.read_ops.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.read_latency.observe(took);
    }

    pub(crate) fn write(&self, bytes: u64, took: Duration) {
        self.write_ops.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.write_latency.observe(took);
    }

    pub(crate) fn cache(&self, hit: bool) {
        let c = if hit { &self.cache_hits } else { &self.cache_misses };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn prefetched(&self) {
        self.prefetched.fetch_add(1, Ordering::Relaxed);
    }

    /// A counter's value now.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_buckets() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets.len(), BOUNDS_US.len() + 1);
        assert_eq!(s.buckets[0], (0.0001, 1));
        assert_eq!(s.buckets[1], (0.00025, 1));
        assert_eq!(s.buckets[BOUNDS_US.len()], (f64::MAX, 1));
        assert!((s.sum_seconds - 60.000201).abs() < 1e-9);
    }
}
