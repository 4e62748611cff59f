//! Per-agent live statistics, read on every routing decision.
//!
//! All counters are atomics so that any number of scheduler threads can take and
//! release load on one agent without a lock. Averages are `f64` bits updated
//! with a compare-and-swap loop, so no sample is lost.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hot::{Hot, HotRef};
use crate::routing::latency::LatencyHistogram;
use crate::shared::Outcome;

/// Weight of the newest sample in the latency moving average. High, because
/// the average places the agent in a latency bucket for Q-learning: one
/// sample should be enough to see that an agent changed speed.
const EWMA_WEIGHT: f64 = 0.5;
/// Weight of the newest outcome in the success-rate moving average.
const SUCCESS_WEIGHT: f64 = 0.1;

/// Live counters of one agent.
#[derive(Debug)]
pub struct AgentStats {
    /// Load, condition and current value, in a dense cell (see [`crate::routing::hot`]).
    /// The condition is the learner's view of the agent's averages (success
    /// and latency buckets, see `QConfig::condition`), refreshed on every
    /// completion so that decisions read one byte instead of two averages;
    /// the value is that of the agent's current state for task class 0 (see
    /// `Agent::refresh_value`).
    hot: HotRef,
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Tasks the agent refused as the caller's error.
    rejected: AtomicU64,
    timed_out: AtomicU64,
    down: AtomicU64,
    abandoned: AtomicU64,
    /// `f64` bits of the latency EWMA in microseconds; 0 until the first sample.
    ewma_latency_us: AtomicU64,
    /// `f64` bits of the success-rate EWMA, 1.0 until the first outcome.
    success_rate: AtomicU64,
    /// `f64` bits of the peak-EWMA latency (Finagle's), with the time it was
    /// last moved; 0 until the first sample.
    peak_latency_us: AtomicU64,
    peak_stamp_us: AtomicU64,
    /// When a task was last handed to the agent (0: never).
    last_pick_us: AtomicU64,
    /// When the agent last went from idle to busy (its first task in flight).
    busy_since_us: AtomicU64,
    /// When the agent last gave news of itself: an answer, an error, a
    /// timeout or its death (0: never). The age of what is known about it.
    last_outcome_us: AtomicU64,
    /// Latencies of answered tasks (and timeouts, at the timeout), for
    /// percentiles; behind the agent's own lock, taken once per completion.
    latencies: Mutex<LatencyHistogram>,
}

impl Default for AgentStats {
    fn default() -> Self {
        AgentStats::with_hot(HotRef::detached())
    }
}

impl AgentStats {
    /// Stats whose hot figures live in `hot`.
    pub fn with_hot(hot: HotRef) -> Self {
        AgentStats {
            hot,
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            down: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            ewma_latency_us: AtomicU64::new(0),
            success_rate: AtomicU64::new(1f64.to_bits()),
            peak_latency_us: AtomicU64::new(0),
            peak_stamp_us: AtomicU64::new(0),
            last_pick_us: AtomicU64::new(0),
            busy_since_us: AtomicU64::new(0),
            last_outcome_us: AtomicU64::new(0),
            latencies: Mutex::new(LatencyHistogram::new()),
        }
    }

    /// The dense cell of this agent's load, condition and current value:
    /// a borrow of the agent's, which cannot outlive it (a cell goes back to
    /// its arena, for another agent, when its agent is dropped).
    #[inline]
    pub fn hot(&self) -> &Hot {
        self.hot.get()
    }

    /// The handle on the cell, for the table (snapshots' cell arrays) and
    /// the arena.
    #[inline]
    pub(crate) fn hot_ref(&self) -> &HotRef {
        &self.hot
    }
}

/// A point-in-time copy of an agent's counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StatsView {
    pub in_flight: u32,
    pub dispatched: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Refused as the caller's error (not counted as failed).
    pub rejected: u64,
    pub timed_out: u64,
    pub down: u64,
    pub abandoned: u64,
    pub ewma_latency_us: f64,
    pub success_rate: f64,
}

/// `exp(-x)` for `x >= 0`. Decisions read decays of milliseconds against a
/// time constant of seconds, so `x` is usually tiny and four terms of the
/// series are exact to 1e-10 below 0.005; larger `x` takes the real exponential.
#[inline]
fn decay(x: f64) -> f64 {
    if x < 0.005 {
        1.0 - x * (1.0 - x * (0.5 - x / 6.0))
    } else {
        (-x).exp()
    }
}

fn ewma_update(cell: &AtomicU64, sample: f64, weight: f64, empty_is_zero: bool) {
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
        let new = if empty_is_zero && bits == 0 {
            sample
        } else {
            let old = f64::from_bits(bits);
            old + weight * (sample - old)
        };
        // Keep a latency average off the "no sample" marker 0.
        let new = if empty_is_zero {
            new.max(f64::MIN_POSITIVE)
        } else {
            new
        };
        Some(new.to_bits())
    });
}

impl AgentStats {
    /// Tasks sent to the agent and not yet settled.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.hot.get().in_flight()
    }

    /// The learner's condition byte.
    #[inline]
    pub fn condition(&self) -> u8 {
        self.hot.get().condition()
    }

    pub(crate) fn set_condition(&self, c: u8) {
        self.hot.get().set_condition(c);
    }

    /// The cached value of the agent's current state (class 0).
    #[inline]
    pub fn current_value(&self) -> f64 {
        self.hot.get().value()
    }

    pub(crate) fn set_current_value(&self, v: f64) {
        self.hot.get().set_value(v);
    }

    /// The latency EWMA in microseconds; 0 before the first sample.
    #[inline]
    pub fn ewma_latency_us(&self) -> f64 {
        match self.ewma_latency_us.load(Ordering::Relaxed) {
            0 => 0.0,
            bits => f64::from_bits(bits),
        }
    }

    /// The success-rate EWMA; 1.0 before the first outcome.
    #[inline]
    pub fn success_rate(&self) -> f64 {
        f64::from_bits(self.success_rate.load(Ordering::Relaxed))
    }

    /// The peak-EWMA latency decayed to `now_us` with time constant `tau_us`,
    /// or `None` before the first sample. Reading does not write: the decay is
    /// applied to the copy.
    #[inline]
    pub fn peak_latency_us(&self, now_us: u64, tau_us: f64) -> Option<f64> {
        match self.peak_latency_us.load(Ordering::Relaxed) {
            0 => None,
            bits => {
                let stamp = self.peak_stamp_us.load(Ordering::Relaxed);
                let dt = now_us.saturating_sub(stamp) as f64;
                Some(f64::from_bits(bits) * decay(dt / tau_us))
            }
        }
    }

    /// When a task was last handed to the agent, microseconds (0: never).
    #[inline]
    pub fn last_pick_us(&self) -> u64 {
        self.last_pick_us.load(Ordering::Relaxed)
    }

    /// When the agent last gave news of itself (an outcome other than an
    /// abandoned call), microseconds (0: never).
    #[inline]
    pub fn last_outcome_us(&self) -> u64 {
        self.last_outcome_us.load(Ordering::Relaxed)
    }

    /// How old what is known about the agent is at `now_us`, or `None` when
    /// nothing is.
    pub fn age_us(&self, now_us: u64) -> Option<u64> {
        match self.last_outcome_us() {
            0 => None,
            t => Some(now_us.saturating_sub(t)),
        }
    }

    /// Counts a task handed to the agent (the router takes its load through
    /// the bulkhead instead, then marks the pick).
    #[cfg(test)]
    pub(crate) fn acquire(&self, now_us: u64) {
        assert!(self.hot.get().try_add_in_flight(u32::MAX));
        self.mark_picked(now_us);
    }

    /// Notes that a task was handed to the agent at `now_us` (its load
    /// already counts it).
    #[inline]
    pub(crate) fn mark_picked(&self, now_us: u64) {
        // A plain store: the newest of racing picks wins, which is the point.
        self.last_pick_us.store(now_us.max(1), Ordering::Relaxed);
        if self.in_flight() == 1 {
            self.busy_since_us.store(now_us.max(1), Ordering::Relaxed);
        }
    }

    /// How long a busy agent has given no news at `now_us`: since its last
    /// outcome or since it became busy, whichever came later; `None` while
    /// it has nothing in flight. An agent that stopped answering shows here
    /// long before its slow answers (or timeouts) reach its averages.
    #[inline]
    pub fn silence_us(&self, now_us: u64) -> Option<u64> {
        if self.in_flight() == 0 {
            return None;
        }
        let since = self
            .last_outcome_us
            .load(Ordering::Relaxed)
            .max(self.busy_since_us.load(Ordering::Relaxed));
        Some(now_us.saturating_sub(since))
    }

    /// Whether the agent is busy with a probe: it became busy after at
    /// least `stale_us` without news, and has not answered since. What was
    /// known of it is stale; until its first answer it should not take more.
    #[inline]
    pub fn probing(&self, stale_us: u64) -> bool {
        if self.in_flight() == 0 {
            return false;
        }
        let last = self.last_outcome_us.load(Ordering::Relaxed);
        let busy = self.busy_since_us.load(Ordering::Relaxed);
        last != 0 && busy > last && busy - last >= stale_us
    }

    /// Settles one task taken with [`AgentStats::acquire`]. Called exactly once
    /// per acquire (the lease guarantees it), so `in_flight` cannot underflow.
    ///
    /// `fresh` (0 to 1) is how much of what was known this outcome replaces
    /// at least: the router passes more than the averages' usual weights for
    /// the first outcome after a long silence, so that it is taken at its
    /// word rather than averaged with old news. `fresh_latency` is the same
    /// for the latency average alone (an agent known slow that answered fast
    /// is taken at its word for its speed, not for its success rate).
    pub(crate) fn release(
        &self,
        outcome: Outcome,
        latency_us: u64,
        now_us: u64,
        tau_us: f64,
        fresh: f64,
        fresh_latency: f64,
    ) {
        self.hot.get().sub_in_flight();
        let counter = match outcome {
            Outcome::Success => &self.succeeded,
            Outcome::Failure => &self.failed,
            Outcome::Rejected => &self.rejected,
            Outcome::Timeout => &self.timed_out,
            Outcome::AgentDown => &self.down,
            Outcome::Abandoned => &self.abandoned,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Only answers say how fast the agent is: a crash or an abandoned call
        // measures nothing about it, and a timeout is recorded at the timeout.
        if matches!(
            outcome,
            Outcome::Success | Outcome::Failure | Outcome::Rejected | Outcome::Timeout
        ) {
            let sample = latency_us as f64;
            ewma_update(
                &self.ewma_latency_us,
                sample,
                EWMA_WEIGHT.max(fresh_latency),
                true,
            );
            self.observe_peak(sample, now_us, tau_us);
            self.latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(latency_us);
        }
        if outcome != Outcome::Abandoned {
            self.last_outcome_us.store(now_us.max(1), Ordering::Relaxed);
            // a refusal of the caller's task is a proper answer
            let ok = if matches!(outcome, Outcome::Success | Outcome::Rejected) {
                1.0
            } else {
                0.0
            };
            ewma_update(&self.success_rate, ok, SUCCESS_WEIGHT.max(fresh), false);
        }
    }

    /// Finagle's peak EWMA: a sample above the average replaces it at once;
    /// a lower one is averaged in with weight `1 - exp(-dt / tau)`, `dt` being
    /// the time since the last sample. The stamp and the value are two stores:
    /// a concurrent sample can pair one value with the other's stamp, which
    /// shifts the decay by the gap between the two samples, microseconds.
    fn observe_peak(&self, sample: f64, now_us: u64, tau_us: f64) {
        let stamp = self.peak_stamp_us.load(Ordering::Relaxed);
        let w = (-(now_us.saturating_sub(stamp) as f64) / tau_us).exp();
        let _ = self
            .peak_latency_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let old = f64::from_bits(bits);
                let new = if bits == 0 || sample > old {
                    sample
                } else {
                    old * w + sample * (1.0 - w)
                };
                Some(new.max(f64::MIN_POSITIVE).to_bits())
            });
        self.peak_stamp_us.store(now_us, Ordering::Relaxed);
    }

    /// Bytes held on the heap (the latency histogram's buckets).
    pub fn heap_bytes(&self) -> usize {
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .heap_bytes()
    }

    /// One latency quantile in microseconds, `None` before the first sample.
    pub fn latency_quantile(&self, q: f64) -> Option<u64> {
        let h = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        h.quantile(q)
    }

    /// Latency percentiles in microseconds (p50, p95, p99), `None` before the
    /// first sample.
    pub fn latency_percentiles(&self) -> Option<(u64, u64, u64)> {
        let h = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        Some((h.quantile(0.50)?, h.quantile(0.95)?, h.quantile(0.99)?))
    }

    /// Copies every counter. The copy is not one atomic snapshot: a task
    /// settling meanwhile may show in one counter and not yet in another.
    pub fn view(&self) -> StatsView {
        let in_flight = self.in_flight();
        let succeeded = self.succeeded.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let rejected = self.rejected.load(Ordering::Relaxed);
        let timed_out = self.timed_out.load(Ordering::Relaxed);
        let down = self.down.load(Ordering::Relaxed);
        let abandoned = self.abandoned.load(Ordering::Relaxed);
        StatsView {
            in_flight,
            // Derived rather than counted: one atomic fewer per task.
            dispatched: u64::from(in_flight)
                + succeeded
                + failed
                + rejected
                + timed_out
                + down
                + abandoned,
            succeeded,
            failed,
            rejected,
            timed_out,
            down,
            abandoned,
            ewma_latency_us: self.ewma_latency_us(),
            success_rate: self.success_rate(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: f64 = 10e6;

    #[test]
    fn acquire_release_balances_and_counts_outcomes() {
        let s = AgentStats::default();
        s.acquire(0);
        s.acquire(0);
        assert_eq!(s.in_flight(), 2);
        s.release(Outcome::Success, 100, 0, TAU, 0.0, 0.0);
        s.release(Outcome::AgentDown, 0, 0, TAU, 0.0, 0.0);
        let v = s.view();
        assert_eq!(v.in_flight, 0);
        assert_eq!(v.dispatched, 2);
        assert_eq!(v.succeeded, 1);
        assert_eq!(v.down, 1);
        assert_eq!(v.ewma_latency_us, 100.0);
        assert!((v.success_rate - 0.9).abs() < 1e-12);
    }

    #[test]
    fn ewma_moves_toward_new_samples() {
        let s = AgentStats::default();
        for lat in [100, 200] {
            s.acquire(0);
            s.release(Outcome::Success, lat, 0, TAU, 0.0, 0.0);
        }
        assert!((s.view().ewma_latency_us - 150.0).abs() < 1e-9);
        assert_eq!(s.view().success_rate, 1.0);
    }

    #[test]
    fn crashes_do_not_move_latency_and_abandons_move_nothing() {
        let s = AgentStats::default();
        s.acquire(0);
        s.release(Outcome::AgentDown, 5_000, 0, TAU, 0.0, 0.0);
        assert_eq!(s.view().ewma_latency_us, 0.0);
        s.acquire(0);
        s.release(Outcome::Abandoned, 5_000, 0, TAU, 0.0, 0.0);
        assert!((s.success_rate() - 0.9).abs() < 1e-12);
    }

    #[test]
    fn decay_matches_the_exponential() {
        for i in 0..2000 {
            let x = i as f64 * 5e-6;
            assert!((decay(x) - (-x).exp()).abs() < 1e-10, "{x}");
        }
        assert_eq!(decay(3.0), (-3.0f64).exp());
    }

    #[test]
    fn percentiles_follow_the_samples() {
        let s = AgentStats::default();
        assert_eq!(s.latency_percentiles(), None);
        for lat in 1..=1000u64 {
            s.acquire(0);
            s.release(Outcome::Success, lat * 100, 0, TAU, 0.0, 0.0);
        }
        let (p50, p95, p99) = s.latency_percentiles().unwrap();
        let near = |got: u64, want: u64| (got as f64 / want as f64 - 1.0).abs() < 0.02;
        assert!(
            near(p50, 50_000) && near(p95, 95_000) && near(p99, 99_000),
            "{p50} {p95} {p99}"
        );
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let s = AgentStats::default();
        assert_eq!(s.peak_latency_us(0, TAU), None);
        s.acquire(0);
        s.release(Outcome::Success, 1_000, 0, TAU, 0.0, 0.0);
        s.acquire(0);
        s.release(Outcome::Timeout, 50_000, 1_000, TAU, 0.0, 0.0);
        let peak = s.peak_latency_us(1_000, TAU).unwrap();
        assert!((peak - 50_000.0).abs() < 1e-6, "{peak}");
        // one time constant later it has fallen to 1/e, without any sample
        let later = s.peak_latency_us(1_000 + TAU as u64, TAU).unwrap();
        assert!((later - 50_000.0 / std::f64::consts::E).abs() < 1e-6);
        // a low sample long after is averaged in with most of the weight
        s.acquire(0);
        s.release(
            Outcome::Success,
            1_000,
            1_000 + 5 * TAU as u64,
            TAU,
            0.0,
            0.0,
        );
        let after = s.peak_latency_us(1_000 + 5 * TAU as u64, TAU).unwrap();
        assert!(after < 1_500.0 && after > 1_000.0, "{after}");
    }
}
