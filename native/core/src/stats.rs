//! Per-agent live statistics, read on every routing decision.
//!
//! All counters are atomics so that any number of scheduler threads can take and
//! release load on one agent without a lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::router::Outcome;

/// Weight of the newest sample in the latency moving average.
const EWMA_WEIGHT: f64 = 0.2;

/// Live counters of one agent.
#[derive(Debug, Default)]
pub struct AgentStats {
    in_flight: AtomicU32,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    down: AtomicU64,
    abandoned: AtomicU64,
    /// `f64` bits of the latency EWMA in microseconds; 0 until the first sample.
    ewma_latency_us: AtomicU64,
}

/// A point-in-time copy of an agent's counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StatsView {
    pub in_flight: u32,
    pub dispatched: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub down: u64,
    pub abandoned: u64,
    pub ewma_latency_us: f64,
}

impl AgentStats {
    /// Tasks sent to the agent and not yet settled.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a task handed to the agent.
    #[inline]
    pub(crate) fn acquire(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Settles one task taken with [`AgentStats::acquire`]. Called exactly once
    /// per acquire (the lease guarantees it), so `in_flight` cannot underflow.
    pub(crate) fn release(&self, outcome: Outcome, latency_us: u64) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let counter = match outcome {
            Outcome::Success => &self.succeeded,
            Outcome::Failure => &self.failed,
            Outcome::Timeout => &self.timed_out,
            Outcome::AgentDown => &self.down,
            Outcome::Abandoned => &self.abandoned,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Only answers say how fast the agent is: a crash or an abandoned call
        // measures nothing about it, and a timeout is recorded at the timeout.
        if matches!(
            outcome,
            Outcome::Success | Outcome::Failure | Outcome::Timeout
        ) {
            self.record_latency(latency_us as f64);
        }
    }

    fn record_latency(&self, sample_us: f64) {
        // A lost race between two updates drops one sample's share of the
        // average; the next sample corrects it, so no retry loop is needed for
        // correctness, but a CAS loop keeps every sample at no real cost.
        let _ = self
            .ewma_latency_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let old = f64::from_bits(bits);
                let new = if bits == 0 {
                    sample_us
                } else {
                    old + EWMA_WEIGHT * (sample_us - old)
                };
                Some(new.max(f64::MIN_POSITIVE).to_bits())
            });
    }

    /// Copies every counter. The copy is not one atomic snapshot: a task
    /// settling meanwhile may show in one counter and not yet in another.
    pub fn view(&self) -> StatsView {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let succeeded = self.succeeded.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let timed_out = self.timed_out.load(Ordering::Relaxed);
        let down = self.down.load(Ordering::Relaxed);
        let abandoned = self.abandoned.load(Ordering::Relaxed);
        StatsView {
            in_flight,
            // Derived rather than counted: one atomic fewer per task.
            dispatched: u64::from(in_flight) + succeeded + failed + timed_out + down + abandoned,
            succeeded,
            failed,
            timed_out,
            down,
            abandoned,
            ewma_latency_us: match self.ewma_latency_us.load(Ordering::Relaxed) {
                0 => 0.0,
                bits => f64::from_bits(bits),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_release_balances_and_counts_outcomes() {
        let s = AgentStats::default();
        s.acquire();
        s.acquire();
        assert_eq!(s.in_flight(), 2);
        s.release(Outcome::Success, 100);
        s.release(Outcome::AgentDown, 0);
        let v = s.view();
        assert_eq!(v.in_flight, 0);
        assert_eq!(v.dispatched, 2);
        assert_eq!(v.succeeded, 1);
        assert_eq!(v.down, 1);
        assert_eq!(v.ewma_latency_us, 100.0);
    }

    #[test]
    fn ewma_moves_toward_new_samples() {
        let s = AgentStats::default();
        for lat in [100, 200] {
            s.acquire();
            s.release(Outcome::Success, lat);
        }
        assert!((s.view().ewma_latency_us - 120.0).abs() < 1e-9);
    }

    #[test]
    fn crashes_do_not_move_latency() {
        let s = AgentStats::default();
        s.acquire();
        s.release(Outcome::AgentDown, 5_000);
        assert_eq!(s.view().ewma_latency_us, 0.0);
    }
}
