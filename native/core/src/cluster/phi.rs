//! The phi accrual failure detector's arithmetic (Hayashibara et al.; the
//! variant Akka and Cassandra use): from the intervals between a node's
//! heartbeats, how suspicious the silence since the last one is. `phi` is
//! `-log10` of the probability that a heartbeat still comes this late, the
//! intervals taken as normally distributed: phi 1 is a 10% chance, phi 8 one
//! in a hundred million.
//!
//! The Erlang detector owns the timers and the heartbeats; it keeps one
//! [`PhiEstimator`] per node and asks it on every tick.

use std::collections::VecDeque;

/// Intervals remembered per node.
pub const WINDOW: usize = 1000;

/// The smallest standard deviation used by default, in ms: heartbeats of a
/// loaded node are not as regular as a quiet one's, and a window of
/// identical intervals would make the least delay infinitely suspicious.
pub const MIN_STD_DEV_MS: f64 = 50.0;

/// One node's heartbeat history.
#[derive(Debug, Clone)]
pub struct PhiEstimator {
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last_ms: Option<u64>,
    min_std_dev_ms: f64,
}

impl Default for PhiEstimator {
    fn default() -> Self {
        Self::with_min_std_dev(MIN_STD_DEV_MS)
    }
}

impl PhiEstimator {
    pub fn new() -> Self {
        Self::default()
    }

    /// An estimator whose standard deviation is never taken below
    /// `min_std_dev_ms` (at least 1 ms): the detector passes a quarter of
    /// its heartbeat interval, so that a steady node is suspected about 2.4
    /// intervals after its last heartbeat, whatever the interval.
    pub fn with_min_std_dev(min_std_dev_ms: f64) -> Self {
        PhiEstimator {
            intervals: VecDeque::new(),
            sum: 0.0,
            sum_sq: 0.0,
            last_ms: None,
            min_std_dev_ms: if min_std_dev_ms.is_finite() {
                min_std_dev_ms.max(1.0)
            } else {
                MIN_STD_DEV_MS
            },
        }
    }

    /// A heartbeat arrived at `now_ms`.
    pub fn heartbeat(&mut self, now_ms: u64) {
        if let Some(last) = self.last_ms {
            let interval = now_ms.saturating_sub(last) as f64;
            if self.intervals.len() == WINDOW {
                if let Some(old) = self.intervals.pop_front() {
                    self.sum -= old;
                    self.sum_sq -= old * old;
                }
            }
            self.intervals.push_back(interval);
            self.sum += interval;
            self.sum_sq += interval * interval;
        }
        self.last_ms = Some(self.last_ms.map_or(now_ms, |l| l.max(now_ms)));
    }

    /// A heartbeat at `now_ms` that ends a silence judged an outage (the
    /// node was suspected): the silence is not one of the node's intervals,
    /// so it is not learned (learned, a 10 s partition would make every
    /// later gap of a few seconds look normal for the next 1 000
    /// heartbeats); the next interval counts from now.
    pub fn resume(&mut self, now_ms: u64) {
        self.last_ms = Some(self.last_ms.map_or(now_ms, |l| l.max(now_ms)));
    }

    /// Intervals seen (the detector waits for `min_samples` before it suspects).
    pub fn samples(&self) -> usize {
        self.intervals.len()
    }

    /// The suspicion level at `now_ms`: 0 before any interval is known.
    pub fn phi(&self, now_ms: u64) -> f64 {
        let (Some(last), n) = (self.last_ms, self.intervals.len()) else {
            return 0.0;
        };
        if n == 0 {
            return 0.0;
        }
        let mean = self.sum / n as f64;
        let variance = (self.sum_sq / n as f64 - mean * mean).max(0.0);
        let std_dev = variance.sqrt().max(self.min_std_dev_ms);
        let elapsed = now_ms.saturating_sub(last) as f64;
        // P(interval > elapsed) for a normal distribution, by the logistic
        // approximation of its CDF (accurate to about 1e-4), in log space so
        // that long silences stay finite
        let y = (elapsed - mean) / std_dev;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let p_later = if elapsed > mean {
            e / (1.0 + e)
        } else {
            1.0 - 1.0 / (1.0 + e)
        };
        if p_later > 0.0 {
            -p_later.log10()
        } else {
            // past what a float holds: the exponent itself
            y * (1.5976 + 0.070566 * y * y) / std::f64::consts::LN_10
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regular(every_ms: u64, beats: u64) -> PhiEstimator {
        let mut e = PhiEstimator::new();
        for i in 0..beats {
            e.heartbeat(i * every_ms);
        }
        e
    }

    #[test]
    fn silence_grows_suspicion() {
        let e = regular(1000, 20);
        let last = 19 * 1000;
        assert_eq!(e.samples(), 19);
        let phis: Vec<f64> = [0, 500, 1000, 1100, 1200, 1500, 3000, 10_000]
            .iter()
            .map(|d| e.phi(last + d))
            .collect();
        assert!(phis.windows(2).all(|w| w[0] <= w[1]), "{phis:?}");
        // on time: unsuspicious; half an interval late: suspicious; long: very
        assert!(e.phi(last + 1000) < 1.0, "{phis:?}");
        assert!(e.phi(last + 1500) > 8.0, "{phis:?}");
        assert!(e.phi(last + 10_000).is_finite() && e.phi(last + 10_000) > 100.0);
    }

    #[test]
    fn irregular_heartbeats_tolerate_more() {
        let mut jittery = PhiEstimator::new();
        let mut t = 0;
        for i in 0..100u64 {
            t += 700 + (i * 7919 % 600); // 700..1300 ms
            jittery.heartbeat(t);
        }
        let steady = regular(1000, 101);
        assert!(jittery.phi(t + 1400) < steady.phi(100_000 + 1400));
    }

    #[test]
    fn a_quarter_interval_deviation_suspects_within_three_intervals() {
        for every in [100u64, 200, 1000, 5000] {
            let mut e = PhiEstimator::with_min_std_dev(every as f64 / 4.0);
            for i in 0..20 {
                e.heartbeat(i * every);
            }
            let last = 19 * every;
            assert!(e.phi(last + every) < 1.0, "{every}");
            assert!(e.phi(last + 2 * every) < 8.0, "{every}");
            assert!(e.phi(last + 3 * every) > 8.0, "{every}");
        }
        // nonsense floors are clamped, never a NaN
        assert!(PhiEstimator::with_min_std_dev(f64::NAN).phi(10).is_finite());
        assert!(PhiEstimator::with_min_std_dev(-5.0).phi(10).is_finite());
    }

    #[test]
    fn an_outage_ended_by_resume_is_not_learned() {
        // learned, a 10 s gap makes a later 5 s one look normal
        let mut learned = regular(1000, 30);
        let mut resumed = regular(1000, 30);
        learned.heartbeat(29_000 + 10_000);
        resumed.resume(29_000 + 10_000);
        for i in 1..10u64 {
            learned.heartbeat(39_000 + i * 1000);
            resumed.heartbeat(39_000 + i * 1000);
        }
        let last = 39_000 + 9 * 1000;
        assert!(
            learned.phi(last + 5000) < 8.0,
            "{}",
            learned.phi(last + 5000)
        );
        assert!(
            resumed.phi(last + 5000) > 8.0,
            "{}",
            resumed.phi(last + 5000)
        );
        assert_eq!(resumed.samples(), learned.samples() - 1);
        // a first heartbeat through resume starts the clock, as heartbeat does
        let mut fresh = PhiEstimator::new();
        fresh.resume(7);
        fresh.heartbeat(1007);
        assert_eq!(fresh.samples(), 1);
    }

    #[test]
    fn no_history_no_suspicion_and_the_window_is_bounded() {
        let mut e = PhiEstimator::new();
        assert_eq!(e.phi(1_000_000), 0.0);
        e.heartbeat(5);
        assert_eq!(e.phi(1_000_000), 0.0);
        for i in 0..(WINDOW as u64 * 3) {
            e.heartbeat(10 + i * 100);
        }
        assert_eq!(e.samples(), WINDOW);
        // a heartbeat from the past does not move the clock back
        e.heartbeat(0);
        assert!(e.phi(10 + (WINDOW as u64 * 3 - 1) * 100 + 50) < 1.0);
    }
}
