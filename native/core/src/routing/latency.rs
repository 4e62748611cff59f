//! A small latency histogram for one agent's percentiles.
//!
//! Buckets are log-linear: values below 64 µs have a bucket each; above,
//! every power of two is cut into 32 equal buckets, so a bucket is at most
//! 1/32 of its lower bound wide, and a quantile is reported as its bucket's
//! midpoint, within 1/64 (1.6%) of a sample in it. Values are clamped to
//! 1 µs ..= [`MAX_US`].
//!
//! Only the span of buckets between the lowest and the highest sample seen is
//! stored, so an agent whose answers take between 1 and 30 ms (five powers
//! of two) holds about 160 counters, 640 bytes, where a fixed layout over an
//! hour of range would hold thousands.

/// Largest value recorded, in microseconds (an hour); larger ones count here.
pub const MAX_US: u64 = 3_600_000_000;

/// Buckets per power of two, as a shift.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;

/// The bucket of `v` (1 ..= MAX_US).
#[inline]
fn index(v: u64) -> usize {
    if v < 2 * SUB {
        v as usize
    } else {
        let octave = 63 - v.leading_zeros(); // >= SUB_BITS + 1
        let shift = octave - SUB_BITS;
        // (v >> shift) is in SUB .. 2 SUB
        ((u64::from(shift) + 1) * SUB + ((v >> shift) - SUB)) as usize
    }
}

/// The midpoint of bucket `i`.
#[inline]
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        i
    } else {
        let shift = i / SUB - 1;
        let low = (SUB + i % SUB) << shift;
        low + ((1u64 << shift) >> 1)
    }
}

/// Counts of latencies, over the span of buckets seen so far.
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    /// Index of `counts[0]`.
    base: u32,
    counts: Vec<u32>,
    total: u64,
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Records one latency in microseconds. A bucket's count stops at
    /// `u32::MAX` (four billion answers in one bucket).
    pub fn record(&mut self, us: u64) {
        let i = index(us.clamp(1, MAX_US)) as u32;
        if self.counts.is_empty() {
            self.base = i;
            self.counts.reserve_exact(1);
            self.counts.push(0);
        } else if i < self.base {
            let grow = (self.base - i) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.base = i;
        } else if (i - self.base) as usize >= self.counts.len() {
            let len = (i - self.base) as usize + 1;
            self.counts.reserve_exact(len - self.counts.len());
            self.counts.resize(len, 0);
        }
        let c = &mut self.counts[(i - self.base) as usize];
        *c = c.saturating_add(1);
        self.total += 1;
    }

    /// The latency at quantile `q` (0 to 1) in microseconds: the midpoint
    /// of the bucket holding the sample of rank `ceil(q * n)`; `None` before
    /// the first sample.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (k, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(value(self.base as usize + k));
            }
        }
        // counts saturated: the highest bucket
        Some(value(self.base as usize + self.counts.len() - 1))
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_values_are_exact() {
        for v in 1..2 * SUB {
            assert_eq!(value(index(v)), v);
        }
    }

    #[test]
    fn buckets_are_contiguous_and_ascending() {
        let mut last = index(1);
        for v in 2..200_000u64 {
            let i = index(v);
            assert!(i == last || i == last + 1, "{v}: {last} -> {i}");
            last = i;
        }
        assert!(index(MAX_US) > last);
    }

    proptest! {
        #[test]
        fn a_bucket_reports_within_a_sixtyfourth(v in 1u64..=MAX_US) {
            let got = value(index(v)) as f64;
            prop_assert!((got / v as f64 - 1.0).abs() <= 1.0 / 64.0 + 1e-12, "{v} -> {got}");
        }
    }

    #[test]
    fn quantiles_follow_the_samples_and_memory_follows_the_span() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 30); // 30 us to 30 ms
        }
        assert_eq!(h.len(), 1000);
        for (q, want) in [(0.5, 15_000.0), (0.95, 28_500.0), (0.99, 29_700.0)] {
            let got = h.quantile(q).unwrap() as f64;
            assert!((got / want - 1.0).abs() < 0.02, "{q}: {got}");
        }
        assert_eq!(h.quantile(0.0), Some(value(index(30))));
        // ten powers of two, 32 buckets each, at most
        assert!(h.heap_bytes() <= 11 * 32 * 4, "{}", h.heap_bytes());
        // extremes are clamped, not lost
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.len(), 1002);
        assert_eq!(h.quantile(1.0), Some(value(index(MAX_US))));
        assert_eq!(h.quantile(0.0), Some(1));
    }
}
