//! One routing decision and its completion.
//!
//! [`Router::decide`] filters the candidates by capability, lets the strategy
//! pick one and takes a [`Lease`] on it (its in-flight load goes up) in one
//! call. The lease is settled exactly once: by [`Lease::complete`] with the
//! task's outcome, or, if the caller vanished first, by its `Drop`, so no
//! load can leak.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::agents::{Agent, AgentTable};
use crate::clock::Clock;
use crate::error::FlowError;
use crate::strategy::{Strategy, StrategyState};

/// How a dispatched task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The agent answered `{ok, _}`.
    Success,
    /// The agent answered `{error, _}` or something malformed.
    Failure,
    /// No answer within the execution timeout.
    Timeout,
    /// The agent died before answering.
    AgentDown,
    /// Nobody settled the lease: the caller died or dropped it.
    Abandoned,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Success => "ok",
            Outcome::Failure => "error",
            Outcome::Timeout => "timeout",
            Outcome::AgentDown => "down",
            Outcome::Abandoned => "abandoned",
        }
    }

    pub fn from_name(name: &str) -> Option<Outcome> {
        [
            Outcome::Success,
            Outcome::Failure,
            Outcome::Timeout,
            Outcome::AgentDown,
            Outcome::Abandoned,
        ]
        .into_iter()
        .find(|o| o.name() == name)
    }
}

/// What every agent of a router shares: the clock its leases are timed by
/// and the router-wide count of leases in flight. Each agent holds it, so a
/// lease reaches it through its agent without a reference of its own.
#[derive(Debug)]
pub struct Ledger {
    clock: Clock,
    /// Leases taken and not yet settled, over every agent, removed ones included.
    in_flight: AtomicU64,
}

impl Ledger {
    pub fn new(clock: Clock) -> Self {
        Ledger {
            clock,
            in_flight: AtomicU64::new(0),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Router-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterStats {
    pub agents: usize,
    pub in_flight: u64,
}

/// The right to have one task in flight on one agent.
#[derive(Debug)]
pub struct Lease<P> {
    agent: Arc<Agent<P>>,
    started_us: u64,
    settled: AtomicBool,
}

impl<P> Lease<P> {
    pub fn agent(&self) -> &Arc<Agent<P>> {
        &self.agent
    }

    pub fn started_us(&self) -> u64 {
        self.started_us
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Settles the lease with `outcome` and returns the task's latency in
    /// microseconds, or `None` when it was already settled (nothing changes).
    pub fn complete(&self, outcome: Outcome) -> Option<u64> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return None;
        }
        let latency = self
            .agent
            .ledger()
            .clock
            .now_us()
            .saturating_sub(self.started_us);
        self.release(outcome, latency);
        Some(latency)
    }

    fn release(&self, outcome: Outcome, latency_us: u64) {
        self.agent.stats().release(outcome, latency_us);
        self.agent.ledger().in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<P> Drop for Lease<P> {
    fn drop(&mut self) {
        // `&mut self`: no `complete` can run concurrently, so no atomic is needed.
        if !*self.settled.get_mut() {
            self.release(Outcome::Abandoned, 0);
        }
    }
}

thread_local! {
    /// Candidate slots of the decision running on this thread.
    static CANDIDATES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The agent table plus the strategies' shared state and the clock.
#[derive(Debug)]
pub struct Router<P> {
    agents: AgentTable<P>,
    strategies: StrategyState,
}

impl<P> Router<P> {
    pub fn new(clock: Clock) -> Self {
        Router {
            agents: AgentTable::new(Arc::new(Ledger::new(clock))),
            strategies: StrategyState::default(),
        }
    }

    pub fn agents(&self) -> &AgentTable<P> {
        &self.agents
    }

    pub fn clock(&self) -> &Clock {
        self.agents.ledger().clock()
    }

    pub fn stats(&self) -> RouterStats {
        RouterStats {
            agents: self.agents.load().len(),
            in_flight: self.agents.ledger().in_flight(),
        }
    }

    /// Picks an agent holding every capability in `required` with `strategy`
    /// and takes a lease on it.
    pub fn decide(&self, required: &[&[u8]], strategy: Strategy) -> Result<Lease<P>, FlowError> {
        let snapshot = self.agents.load();
        let agent = CANDIDATES.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let candidates = snapshot.candidates(required, &mut scratch);
            if candidates.is_empty() {
                return Err(FlowError::NoAgentsAvailable);
            }
            let chosen = self.strategies.pick(strategy, candidates);
            Ok(snapshot.agent(candidates[chosen]).clone())
        })?;
        agent.stats().acquire();
        let ledger = agent.ledger();
        ledger.in_flight.fetch_add(1, Ordering::AcqRel);
        let started_us = ledger.clock.now_us();
        Ok(Lease {
            agent,
            started_us,
            settled: AtomicBool::new(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{AgentKind, AgentSpec};

    fn router(n: usize) -> Router<usize> {
        let r = Router::new(Clock::manual(0));
        for i in 0..n {
            r.agents()
                .insert(AgentSpec {
                    id: format!("agent-{i}").into_bytes(),
                    payload: i,
                    capabilities: vec![b"work".to_vec()],
                    kind: AgentKind::Agent,
                })
                .unwrap();
        }
        r
    }

    #[test]
    fn a_lease_is_settled_exactly_once() {
        let r = router(1);
        let lease = r.decide(&[b"work"], Strategy::RoundRobin).unwrap();
        r.clock().advance(250);
        assert_eq!(lease.agent().stats().in_flight(), 1);
        assert_eq!(lease.complete(Outcome::Success), Some(250));
        assert_eq!(lease.complete(Outcome::Failure), None);
        let v = lease.agent().stats().view();
        assert_eq!((v.in_flight, v.succeeded, v.failed), (0, 1, 0));
    }

    #[test]
    fn dropping_an_unsettled_lease_releases_it_as_abandoned() {
        let r = router(1);
        let agent = {
            let lease = r.decide(&[], Strategy::RoundRobin).unwrap();
            lease.agent().clone()
        };
        let v = agent.stats().view();
        assert_eq!((v.in_flight, v.abandoned), (0, 1));
    }

    #[test]
    fn no_candidates_is_an_error() {
        let r = router(2);
        assert_eq!(
            r.decide(&[b"other"], Strategy::RoundRobin).unwrap_err(),
            FlowError::NoAgentsAvailable
        );
        let empty: Router<usize> = Router::new(Clock::system());
        assert_eq!(
            empty.decide(&[], Strategy::RoundRobin).unwrap_err(),
            FlowError::NoAgentsAvailable
        );
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let r = router(5);
        let mut counts = [0usize; 5];
        for _ in 0..23 {
            let lease = r.decide(&[b"work"], Strategy::RoundRobin).unwrap();
            counts[*lease.agent().payload()] += 1;
            lease.complete(Outcome::Success);
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "{counts:?}");
    }

    #[test]
    fn a_removed_agent_still_settles_its_leases() {
        let r = router(1);
        let lease = r.decide(&[], Strategy::RoundRobin).unwrap();
        r.agents().remove(b"agent-0").unwrap();
        assert!(r.decide(&[], Strategy::RoundRobin).is_err());
        assert_eq!(r.stats().in_flight, 1);
        lease.complete(Outcome::AgentDown);
        assert_eq!(lease.agent().stats().in_flight(), 0);
        assert_eq!(r.stats().in_flight, 0);
    }
}
