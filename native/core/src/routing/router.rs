//! One routing decision and its completion.
//!
//! [`Router::decide`] filters the candidates by capability, lets the strategy
//! pick one and takes a [`Lease`] on it (its in-flight load goes up) in one
//! call. The lease is settled exactly once: by [`Lease::complete`] with the
//! task's outcome, which also teaches the learner, or, if the caller vanished
//! first, by its `Drop`, so no load can leak.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::{Rng, SeedableRng};

use crate::clock::Clock;
use crate::error::FlowError;
use crate::hot::Hot;
use crate::learning::State;
use crate::name::Name;
use crate::resilience::breaker::{BreakerState, Permit, Transition};
use crate::routing::agents::{Agent, AgentKind, AgentTable, Candidates, Snapshot};
use crate::routing::strategy::{PickContext, Strategy, StrategyState, softmax_weights};
use crate::shared::{DECISION_SAMPLE, Outcome, RouterConfig, Shared};
use crate::tracing::context::{self as trace, TraceParent};
use crate::tracing::correlation::{Opened, SpanHandle, SpanKind, SpanOutcome};

/// Router-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterStats {
    pub agents: usize,
    pub in_flight: u64,
    pub episodes: u64,
    /// Leases settled with an outcome (abandoned ones excluded).
    pub completed: u64,
    /// Breaker transitions into open, half-open and closed.
    pub breaker_opened: u64,
    pub breaker_half_opened: u64,
    pub breaker_closed: u64,
}

/// What the router's agents and table cost in memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    pub agents: usize,
    /// Every agent's own state (see `Agent::memory_bytes`).
    pub agents_bytes: usize,
    /// The current snapshot's indexes, hot cells and ring.
    pub table_bytes: usize,
}

/// The right to have one task in flight on one agent: a bulkhead permit and
/// a breaker permit.
#[derive(Debug)]
pub struct Lease<P> {
    agent: Arc<Agent<P>>,
    started_us: u64,
    /// The agent's learning state when it was chosen.
    state: u32,
    permit: Permit,
    /// The breaker transition the decision caused (open to half-open).
    transition: Option<Transition>,
    /// The attempt's span in the correlation store.
    span: Option<SpanHandle>,
    settled: AtomicBool,
}

/// What settling a lease did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub latency_us: u64,
    /// The breaker transition the outcome caused.
    pub transition: Option<Transition>,
}

impl<P> Lease<P> {
    pub fn agent(&self) -> &Arc<Agent<P>> {
        &self.agent
    }

    pub fn started_us(&self) -> u64 {
        self.started_us
    }

    /// The state the agent was chosen in.
    pub fn state(&self) -> State {
        State::from_index(self.state as usize)
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// The breaker transition the decision caused, if any (open to half-open).
    pub fn transition(&self) -> Option<Transition> {
        self.transition
    }

    /// The attempt's span id, when the decision opened one.
    pub fn span_id(&self) -> Option<[u8; 16]> {
        self.span.as_ref().map(SpanHandle::span_id)
    }

    /// Closes the attempt's span.
    fn close_span(&self, outcome: Outcome, now_us: u64) {
        if let Some(span) = &self.span {
            let o = match outcome {
                Outcome::Success => SpanOutcome::Ok,
                Outcome::Failure => SpanOutcome::Error,
                Outcome::Rejected => SpanOutcome::Rejected,
                Outcome::Timeout => SpanOutcome::Timeout,
                Outcome::AgentDown => SpanOutcome::Down,
                Outcome::Abandoned => SpanOutcome::Abandoned,
            };
            self.agent.shared().correlation.close(span, o, None, now_us);
        }
    }

    /// Whether this task is one of its agent's half-open probes.
    pub fn is_probe(&self) -> bool {
        matches!(self.permit, Permit::Probe { .. })
    }

    /// Settles the lease with `outcome`: the task's latency and the breaker
    /// transition it caused, or `None` when it was already settled (nothing
    /// changes). Every outcome but `Abandoned` is one learning episode; every
    /// one but `Abandoned` and `Rejected` one breaker outcome (a refusal of the
    /// caller's task is learned as an answer, its latency counting, and the
    /// breaker does not count it).
    pub fn complete(&self, outcome: Outcome) -> Option<Completion> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return None;
        }
        let shared = self.agent.shared();
        let now = shared.clock.now_us();
        let latency = now.saturating_sub(self.started_us);
        let known = self.agent.stats().condition();
        let turned_good = outcome == Outcome::Success
            && shared.learner.config().turned_good(known, latency as f64);
        let fresh = self.release(outcome, latency, now, turned_good);
        self.close_span(outcome, now);
        if outcome == Outcome::Abandoned {
            self.agent
                .breaker()
                .release(&shared.config.breaker, self.permit);
            return Some(Completion {
                latency_us: latency,
                transition: None,
            });
        }
        shared.completed.add(1);
        let learner = &shared.learner;
        let config = learner.config();
        // a refusal of the caller's task is an answer: its latency counts,
        // as a success's would, and it is not the agent's fault
        let answered = matches!(outcome, Outcome::Success | Outcome::Rejected);
        let r = config.reward(latency as f64, answered);
        learner.learn_at(
            self.agent.q_row(),
            self.state as usize,
            r,
            config.alpha.max(fresh),
        );
        if turned_good {
            // an agent known to be bad answered well: what it learned of the
            // condition it is in now dates from before it went bad (a hang
            // that began in its fast state taught that state its timeouts),
            // so that condition starts again from the one-step estimate;
            // and agents that changed together (a group that recovered) are
            // worth a look now, not one by one as each one's news ages (see
            // `Router::age`)
            self.agent
                .q_row()
                .forget_condition(self.agent.stats().condition());
            shared.surprise_us.store(now.max(1), Ordering::Relaxed);
        }
        self.agent.refresh_value();
        let transition = if outcome == Outcome::Rejected {
            // the caller's error is no news of the agent's health: its
            // permit (a probe's slot too) goes back unrecorded
            self.agent
                .breaker()
                .release(&shared.config.breaker, self.permit);
            None
        } else {
            shared.count(self.agent.breaker().record(
                self.agent.stats().hot(),
                &shared.config.breaker,
                self.permit,
                outcome != Outcome::Success,
                latency,
                now,
            ))
        };
        Some(Completion {
            latency_us: latency,
            transition,
        })
    }

    /// Releases the agent's load and records the outcome in its stats;
    /// returns the outcome's freshness ([`freshness`]). An agent that
    /// `turned_good` (known slow, now fast) has its latency average replaced
    /// by this answer: its next decisions place it in its new bucket instead
    /// of walking it there answer by answer (halving 400 ms toward 8 ms takes
    /// four answers, each in a bucket it was never learned in).
    fn release(&self, outcome: Outcome, latency_us: u64, now_us: u64, turned_good: bool) -> f64 {
        let shared = self.agent.shared();
        let stats = self.agent.stats();
        // how long the agent had been silent when this task started
        let silence = match stats.last_outcome_us() {
            0 => None,
            t => Some(self.started_us.saturating_sub(t)),
        };
        let fresh = freshness(silence, shared.config.stale_after_us);
        stats.release(
            outcome,
            latency_us,
            now_us,
            shared.config.ewma_decay_us,
            fresh,
            if turned_good { 1.0 } else { fresh },
        );
        stats.set_condition(
            shared
                .learner
                .config()
                .condition(stats.success_rate(), stats.ewma_latency_us()),
        );
        self.agent.refresh_value();
        shared.in_flight.add(-1);
        fresh
    }
}

impl<P> Drop for Lease<P> {
    fn drop(&mut self) {
        // `&mut self`: no `complete` can run concurrently, so no atomic is needed.
        if !*self.settled.get_mut() {
            let now = self.agent.shared().clock.now_us();
            self.release(Outcome::Abandoned, 0, now, false);
            self.close_span(Outcome::Abandoned, now);
            let config = &self.agent.shared().config.breaker;
            self.agent.breaker().release(config, self.permit);
        }
    }
}

/// What one agent's breaker answered a call asked outside routing (the
/// Erlang API's `allow_request/1`).
#[derive(Debug)]
pub enum Admission<P> {
    /// Refused: the breaker is open, or half-open with every probe out.
    Denied,
    /// A plain call of a closed breaker: its outcome is recorded by agent id
    /// ([`Router::breaker_record`]).
    Call,
    /// One of a half-open breaker's probes, recorded through its permit.
    Probe(ProbePermit<P>),
}

/// One of a half-open breaker's probes, granted outside routing. Recorded
/// once with [`ProbePermit::record`]; dropped unrecorded (its holder died) it
/// gives its slot back, and one held unrecorded past the open timeout counts
/// as failed (see [`crate::resilience::breaker`]).
#[derive(Debug)]
pub struct ProbePermit<P> {
    agent: Arc<Agent<P>>,
    permit: Permit,
    settled: AtomicBool,
}

impl<P> ProbePermit<P> {
    pub fn agent(&self) -> &Arc<Agent<P>> {
        &self.agent
    }

    /// Records the probe's outcome: the transition it caused, or `None`
    /// when it was recorded already.
    pub fn record(&self, ok: bool, latency_us: u64) -> Option<Recorded> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return None;
        }
        let shared = self.agent.shared();
        let transition = shared.count(self.agent.breaker().record(
            self.agent.stats().hot(),
            &shared.config.breaker,
            self.permit,
            !ok,
            latency_us,
            shared.clock.now_us(),
        ));
        Some(Recorded { transition })
    }
}

/// What recording a [`ProbePermit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The breaker transition the outcome caused.
    pub transition: Option<Transition>,
}

impl<P> Drop for ProbePermit<P> {
    fn drop(&mut self) {
        if !*self.settled.get_mut() {
            let config = &self.agent.shared().config.breaker;
            self.agent.breaker().release(config, self.permit);
        }
    }
}

/// A span its holder keeps open: a task's ([`Router::span_start`]) or one an
/// agent opened under its attempt ([`Router::child_span_start`]). Ended
/// once with [`OpenSpan::end`]; dropped unended (its holder died first), it
/// closes as abandoned, so no span is left open in the correlation store.
#[derive(Debug)]
pub struct OpenSpan {
    shared: Arc<Shared>,
    /// The span's trace context: `parent_id` is the span's own id, the one
    /// its children and the calls made under it name as their parent.
    context: TraceParent,
    /// Shared by the task's span and its attempts'.
    summary: Option<Name>,
    handle: SpanHandle,
    ended: AtomicBool,
}

impl OpenSpan {
    pub fn context(&self) -> &TraceParent {
        &self.context
    }

    /// Closes the span with the task's outcome and the agent that answered;
    /// false when it was ended already.
    pub fn end(&self, outcome: SpanOutcome, agent_id: Option<&[u8]>) -> bool {
        self.end_named(outcome, agent_id.map(Name::new))
    }

    /// [`OpenSpan::end`] with the agent's id shared (an agent's
    /// [`Agent::name`]) rather than copied.
    pub fn end_named(&self, outcome: SpanOutcome, agent: Option<Name>) -> bool {
        if self.ended.swap(true, Ordering::AcqRel) {
            return false;
        }
        let now = self.shared.clock.now_us();
        self.shared
            .correlation
            .close(&self.handle, outcome, agent, now)
    }
}

impl Drop for OpenSpan {
    fn drop(&mut self) {
        if !*self.ended.get_mut() {
            let now = self.shared.clock.now_us();
            self.shared
                .correlation
                .close(&self.handle, SpanOutcome::Abandoned, None, now);
        }
    }
}

/// What one decision asks for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Every one must be held.
    pub capabilities: &'a [&'a [u8]],
    pub strategy: Strategy,
    /// Hash of the sticky key, for consistent hashing ([`crate::routing::ring::key_hash`]).
    pub key: Option<u64>,
    /// Task class in `0..task_classes` ([`Router::task_class`]).
    pub class: u32,
    /// Agents not to choose (those a retried task already tried).
    pub exclude: &'a [&'a [u8]],
    /// Only swarms (a fallback after the agents failed).
    pub swarms_only: bool,
    /// Only agents of this node (`node => local`), not the cluster's others.
    pub local_only: bool,
    /// Open a span for this attempt under this task span.
    pub span: Option<SpanRequest<'a>>,
}

/// The span a decision opens for its attempt: a child of the task's span.
#[derive(Debug, Clone, Copy)]
pub struct SpanRequest<'a> {
    pub task: &'a OpenSpan,
    pub attempt: u16,
}

impl<'a> Request<'a> {
    pub fn new(capabilities: &'a [&'a [u8]], strategy: Strategy) -> Self {
        Request {
            capabilities,
            strategy,
            key: None,
            class: 0,
            exclude: &[],
            swarms_only: false,
            local_only: false,
            span: None,
        }
    }
}

/// One candidate as [`Router::explain`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    pub id: Vec<u8>,
    pub state: State,
    pub q_value: f64,
    pub visits: u32,
    pub in_flight: u32,
    pub ewma_latency_us: f64,
    pub success_rate: f64,
    pub weight: f64,
    pub breaker: BreakerState,
    /// Probability under the softmax of the `weighted` strategy (0 for an
    /// agent whose breaker or bulkhead refuses tasks now).
    pub softmax: f64,
    /// How old the news of the agent is: microseconds since its last
    /// outcome (`None`: never heard of).
    pub age_us: Option<u64>,
    /// The value Q-learning's decisions see: `q_value` drifted toward the
    /// optimistic prior when the news is stale (see [`Router::age`]).
    pub aged_q_value: f64,
}

/// How much of what is known about an agent an outcome replaces at least,
/// after `silence` microseconds without news of it: `1 - exp(-silence /
/// stale_after)`, 0 without a silence or with aging off. The latency and
/// success averages and the learning rate take at least this weight, so
/// that what is known of an agent nobody asked for a while is mostly its
/// newest answer.
fn freshness(silence: Option<u64>, stale_after_us: u64) -> f64 {
    match silence {
        Some(s) if stale_after_us > 0 => 1.0 - (-(s as f64) / stale_after_us as f64).exp(),
        _ => 0.0,
    }
}

/// Choices a decision makes before giving up on permits taken by others in
/// the meantime.
const DECIDE_ATTEMPTS: usize = 4;

/// Agents tried at once after a surprise (see [`Router::age`]).
const SURPRISE_PROBES: usize = 2;

thread_local! {
    /// Candidate slots of the decision running on this thread.
    static CANDIDATES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The agent table plus the strategies' shared state.
#[derive(Debug)]
pub struct Router<P> {
    agents: AgentTable<P>,
    strategies: StrategyState,
}

impl<P> Router<P> {
    pub fn new(config: RouterConfig, clock: Clock) -> Self {
        Router {
            agents: AgentTable::new(Arc::new(Shared::new(config, clock))),
            strategies: StrategyState::default(),
        }
    }

    pub fn agents(&self) -> &AgentTable<P> {
        &self.agents
    }

    pub fn shared(&self) -> &Shared {
        self.agents.shared()
    }

    pub fn clock(&self) -> &Clock {
        &self.shared().clock
    }

    pub fn stats(&self) -> RouterStats {
        let t = &self.shared().transitions;
        RouterStats {
            agents: self.agents.load().len(),
            in_flight: self.shared().in_flight(),
            episodes: self.shared().learner.episodes(),
            completed: self.shared().completed.sum().max(0) as u64,
            breaker_opened: t[BreakerState::Open as usize].load(Ordering::Relaxed),
            breaker_half_opened: t[BreakerState::HalfOpen as usize].load(Ordering::Relaxed),
            breaker_closed: t[BreakerState::Closed as usize].load(Ordering::Relaxed),
        }
    }

    /// What the agents and the table cost in memory: one pass over the
    /// agents (a dirty-scheduler call from Erlang).
    pub fn memory(&self) -> MemoryStats {
        let snapshot = self.agents.load();
        MemoryStats {
            agents: snapshot.len(),
            agents_bytes: snapshot.agents().map(|a| a.memory_bytes()).sum(),
            table_bytes: snapshot.table_bytes(),
        }
    }

    /// The class (in `0..task_classes`) of a task class name.
    pub fn task_class(&self, name: &[u8]) -> u32 {
        let k = u64::from(self.shared().learner.config().classes());
        (xxhash_rust::xxh3::xxh3_64(name) % k) as u32
    }

    /// Picks an agent for `req` and takes a lease on it: a bulkhead permit
    /// and a breaker permit. Strategies only consider agents whose breaker
    /// and bulkhead admit a call; if another decision takes the last permit
    /// between the choice and the lease, the choice is made again.
    pub fn decide<R: Rng + ?Sized>(
        &self,
        req: &Request<'_>,
        rng: &mut R,
    ) -> Result<Lease<P>, FlowError>
    where
        P: Send + Sync + 'static,
    {
        let shared = self.shared();
        let now_us = shared.clock.now_us();
        self.age(now_us);
        for _ in 0..DECIDE_ATTEMPTS {
            let agent = self
                .agents
                .with_snapshot(|snapshot| self.select(snapshot, req, now_us, rng).cloned())?;
            // The state the agent is chosen in: before this task's load.
            let state = agent.state(shared.learner.config(), req.class).index() as u32;
            let hot = agent.stats().hot();
            if !hot.try_add_in_flight(shared.config.max_concurrent) {
                continue;
            }
            let (permit, transition) = agent.breaker().acquire(hot, &shared.config.breaker, now_us);
            shared.count(transition);
            let Some(permit) = permit else {
                hot.sub_in_flight();
                continue;
            };
            agent.stats().mark_picked(now_us);
            agent.refresh_value();
            shared.in_flight.add(1);
            let span = req.span.map(|sr| {
                let span_id = trace::generate_span_id(rng);
                let task = sr.task.context();
                shared.correlation.insert_after(
                    Opened {
                        trace_id: task.trace_id,
                        span_id,
                        parent_span_id: Some(task.parent_id),
                        agent_id: Some(agent.name()),
                        summary: sr.task.summary.clone(),
                        attempt: sr.attempt,
                        kind: SpanKind::Attempt,
                    },
                    now_us,
                    &sr.task.handle,
                )
            });
            self.sample_decision(now_us);
            return Ok(Lease {
                agent,
                started_us: now_us,
                state,
                permit,
                transition,
                span,
                settled: AtomicBool::new(false),
            });
        }
        Err(FlowError::Overloaded)
    }

    /// Records the duration of one decision in [`DECISION_SAMPLE`] (a
    /// per-thread count picks which), so that measuring costs a clock read
    /// on one decision in 64.
    fn sample_decision(&self, started_us: u64) {
        thread_local! {
            static COUNT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }
        let n = COUNT.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        if n % DECISION_SAMPLE == 0 {
            let shared = self.shared();
            let took = shared.clock.now_us().saturating_sub(started_us);
            shared
                .decision_us
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .saturating_record(took.max(1));
        }
    }

    /// Opens a task's span: under the caller's `traceparent` when there is
    /// one (same trace, the caller's span as parent), else in a new trace.
    /// The span stays open until [`OpenSpan::end`], or until the returned
    /// guard is dropped, which closes it as abandoned.
    pub fn span_start<R: Rng + ?Sized>(
        &self,
        traceparent: Option<&[u8]>,
        summary: &[u8],
        rng: &mut R,
    ) -> Result<OpenSpan, trace::InvalidTraceContext> {
        // the flags passed on: the caller's known ones (the others are
        // reserved: zero); a new trace is sampled, and random as its id is
        let (trace_id, parent, flags) = match traceparent {
            Some(h) => {
                let tp = trace::parse_traceparent(h)?;
                (
                    tp.trace_id,
                    Some(tp.parent_id),
                    tp.flags & trace::KNOWN_FLAGS,
                )
            }
            None => (
                trace::generate_trace_id(rng),
                None,
                trace::FLAG_SAMPLED | trace::FLAG_RANDOM,
            ),
        };
        let span_id = trace::generate_span_id(rng);
        let new_trace = traceparent.is_none();
        Ok(self.open_span(
            trace_id,
            span_id,
            parent,
            summary,
            SpanKind::Task,
            flags,
            new_trace,
        ))
    }

    /// Opens a span under `parent`'s span (an attempt's context an agent
    /// received, or another child): same trace, same flags, a new span id,
    /// `name` as its summary (cut to the store's limit). Closed with
    /// [`OpenSpan::end`], or as abandoned when the guard is dropped.
    pub fn child_span_start<R: Rng + ?Sized>(
        &self,
        parent: &TraceParent,
        name: &[u8],
        rng: &mut R,
    ) -> Result<OpenSpan, trace::InvalidTraceContext> {
        if !trace::valid_id(&parent.trace_id, 32) || !trace::valid_id(&parent.parent_id, 16) {
            return Err(trace::InvalidTraceContext);
        }
        let span_id = trace::generate_span_id(rng);
        Ok(self.open_span(
            parent.trace_id,
            span_id,
            Some(parent.parent_id),
            name,
            SpanKind::Child,
            parent.flags & trace::KNOWN_FLAGS,
            false,
        ))
    }

    /// A span put in the correlation store, open, and the guard that closes
    /// it; its summary cut to the store's limit here, once, so that the
    /// spans that share it (a task's attempts) share it as the store keeps it.
    /// `new_trace` when the trace id was made here at random (see
    /// [`crate::tracing::correlation::CorrelationStore::insert_new_trace`]).
    #[allow(clippy::too_many_arguments)]
    fn open_span(
        &self,
        trace_id: [u8; 32],
        span_id: [u8; 16],
        parent: Option<[u8; 16]>,
        summary: &[u8],
        kind: SpanKind,
        flags: u8,
        new_trace: bool,
    ) -> OpenSpan {
        let shared = self.agents.shared_arc();
        let now = shared.clock.now_us();
        let summary = &summary[..summary.len().min(crate::tracing::correlation::SUMMARY_MAX)];
        let summary = (!summary.is_empty()).then(|| Name::new(summary));
        let opened = Opened {
            trace_id,
            span_id,
            parent_span_id: parent,
            agent_id: None,
            summary: summary.clone(),
            attempt: 0,
            kind,
        };
        let handle = if new_trace {
            shared.correlation.insert_new_trace(opened, now)
        } else {
            shared.correlation.insert(opened, now)
        };
        OpenSpan {
            shared,
            summary,
            handle,
            context: TraceParent {
                version: 0,
                trace_id,
                parent_id: span_id,
                flags,
            },
            ended: AtomicBool::new(false),
        }
    }

    /// Ages what decisions see of agents nobody asked for a while: the
    /// cached value of an idle agent with no news for `stale_after_us`
    /// drifts from what was learned toward the optimistic prior of an
    /// unmeasured agent ([`Agent::aged`]), so that it is tried again, later
    /// the worse it was learned to be. Its first answer then counts for
    /// most of what is known (the averages and the learned value take it
    /// with a weight that grows with the silence before it, see
    /// `AgentStats::release` and `alpha_after`): an agent that got better
    /// while the others took the load is taken at its new speed, and one
    /// still slow goes back to its learned place after one slow answer.
    ///
    /// Costs every decision one load; every quarter of `stale_after_us` one
    /// decision (the one that claims the look) walks the table's agents.
    ///
    /// After a surprise (an agent known to be slow answered fast, see
    /// `QConfig::turned_good`) the next decision walks the agents at once
    /// and sets the [`SURPRISE_PROBES`] idle agents heard of least recently
    /// (if older than a quarter of `stale_after_us`) to drift all the way:
    /// each is tried at once (its pick makes its view fresh again). Each of
    /// them that turned good too is another surprise: a group of agents that
    /// got better together is found in a chain that doubles each round trip,
    /// not each on its own clock; agents that did not change stop the chain
    /// after a probe or two (a hung agent's probe costs a timeout).
    pub fn age(&self, now_us: u64) {
        let shared = self.shared();
        let stale = shared.config.stale_after_us;
        if stale == 0 {
            return;
        }
        let surprise = shared.surprise_us.load(Ordering::Relaxed);
        if surprise != 0
            && shared
                .surprise_us
                .compare_exchange(surprise, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let quiet = (stale / 4).max(1_000);
            // the stalest idle agents (those not heard of for longest)
            type Aged<'s, P> = Option<(u64, &'s Arc<Agent<P>>)>;
            let mut stalest: [Aged<'_, P>; SURPRISE_PROBES] = [None; SURPRISE_PROBES];
            let snapshot = self.agents.load();
            for agent in snapshot.agents() {
                let stats = agent.stats();
                let Some(age) = stats.age_us(now_us) else {
                    continue;
                };
                if stats.in_flight() != 0 || age < quiet || stats.hot().drift() >= 1.0 {
                    continue;
                }
                // replace the youngest of those kept (an empty place first)
                let youngest = (0..SURPRISE_PROBES)
                    .min_by_key(|&i| stalest[i].map_or(0, |(a, _)| a + 1))
                    .unwrap_or(0);
                if stalest[youngest].is_none_or(|(a, _)| age > a) {
                    stalest[youngest] = Some((age, agent));
                }
            }
            for (_, agent) in stalest.into_iter().flatten() {
                agent.stats().hot().set_drift(1.0);
            }
        }
        let due = shared.next_aging_us.load(Ordering::Relaxed);
        if now_us < due
            || shared
                .next_aging_us
                .compare_exchange(
                    due,
                    now_us.saturating_add((stale / 4).max(1_000)),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        for agent in self.agents.load().agents() {
            let d = agent.drift(now_us);
            let hot = agent.stats().hot();
            // never lower: a surprise's full drift waits for its probe
            if d > hot.drift() {
                hot.set_drift(d);
            }
        }
    }

    /// The agent `req` would go to, without taking a lease: the selection
    /// half of [`Router::decide`].
    pub fn pick<R: Rng + ?Sized>(
        &self,
        req: &Request<'_>,
        rng: &mut R,
    ) -> Result<Arc<Agent<P>>, FlowError>
    where
        P: Send + Sync + 'static,
    {
        self.pick_with(req, rng, Arc::clone)
    }

    /// As [`Router::pick`], handing the chosen agent to `f` instead of
    /// returning a reference to it.
    pub fn pick_with<R: Rng + ?Sized, T>(
        &self,
        req: &Request<'_>,
        rng: &mut R,
        f: impl FnOnce(&Arc<Agent<P>>) -> T,
    ) -> Result<T, FlowError>
    where
        P: Send + Sync + 'static,
    {
        let now_us = self.shared().clock.now_us();
        self.agents
            .with_snapshot(|snapshot| self.select(snapshot, req, now_us, rng).map(f))
    }

    fn select<'s, R: Rng + ?Sized>(
        &self,
        snapshot: &'s Snapshot<P>,
        req: &Request<'_>,
        now_us: u64,
        rng: &mut R,
    ) -> Result<&'s Arc<Agent<P>>, FlowError> {
        let cx = PickContext {
            snapshot,
            shared: self.shared(),
            key: req.key,
            class: req.class,
            now_us,
        };
        CANDIDATES.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let mut candidates = snapshot.candidates(req.capabilities, &mut scratch);
            if !req.exclude.is_empty() || req.swarms_only || req.local_only {
                // Retries, fallbacks and local-only tasks: copy the list
                // without the excluded agents (for a fallback, without plain
                // agents; for a local-only task, without other nodes' agents).
                let keep = |slot: &u32| {
                    let agent = snapshot.agent(*slot);
                    (!req.swarms_only || agent.kind() == AgentKind::Swarm)
                        && (!req.local_only || !agent.is_remote())
                        && !req.exclude.contains(&agent.id())
                };
                let filtered: Vec<u32> = candidates.slots.iter().copied().filter(keep).collect();
                *scratch = filtered;
                candidates = Candidates {
                    slots: &scratch,
                    all: false,
                };
            }
            if candidates.slots.is_empty() {
                return Err(FlowError::NoAgentsAvailable);
            }
            let chosen = self.strategies.pick(req.strategy, candidates, &cx, rng)?;
            Ok(snapshot.agent(chosen))
        })
    }

    /// Whether some agent holding `capabilities` would take a task now (its
    /// bulkhead has room and its breaker admits calls).
    pub fn has_capacity(&self, capabilities: &[&[u8]]) -> bool
    where
        P: Send + Sync + 'static,
    {
        self.has_capacity_for(&Request::new(capabilities, Strategy::LeastConnections))
    }

    /// Whether a decision for `req` (its capabilities, the agents it passes
    /// by, swarms only or this node's only) would find an agent to take the
    /// task now; its strategy, key and span play no part, nothing is taken.
    pub fn has_capacity_for(&self, req: &Request<'_>) -> bool
    where
        P: Send + Sync + 'static,
    {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0);
        let req = Request {
            strategy: Strategy::LeastConnections,
            key: None,
            span: None,
            ..*req
        };
        let now_us = self.shared().clock.now_us();
        self.agents
            .with_snapshot(|snapshot| self.select(snapshot, &req, now_us, &mut rng).is_ok())
    }

    /// Why the current candidates for `capabilities` would be chosen: each
    /// with its state, learned value and softmax probability, best value first.
    pub fn explain(&self, capabilities: &[&[u8]], class: u32) -> Vec<Explained> {
        let snapshot = self.agents.load();
        let shared = self.shared();
        let config = shared.learner.config();
        let cx = PickContext {
            snapshot: &snapshot,
            shared,
            key: None,
            class,
            now_us: shared.clock.now_us(),
        };
        let mut scratch = Vec::new();
        let candidates = snapshot
            .candidates(capabilities, &mut scratch)
            .slots
            .to_vec();
        let mut weights = Vec::new();
        softmax_weights(&candidates, &cx, &mut weights);
        let total: f64 = weights.iter().sum();
        let now_us = cx.now_us;
        let mut out: Vec<Explained> = candidates
            .iter()
            .zip(&weights)
            .map(|(&slot, &w)| {
                let agent = snapshot.agent(slot);
                let state = agent.state(config, class);
                let stats = agent.stats();
                let q_value = shared.learner.value(agent.q_row(), state.index());
                Explained {
                    age_us: stats.age_us(now_us),
                    aged_q_value: agent.aged(q_value, now_us),
                    id: agent.id().to_vec(),
                    state,
                    q_value,
                    visits: agent.q_row().visits(state.index()),
                    in_flight: stats.in_flight(),
                    ewma_latency_us: stats.ewma_latency_us(),
                    success_rate: stats.success_rate(),
                    weight: agent.weight(),
                    breaker: BreakerState::from_u8(stats.hot().breaker()),
                    softmax: if total > 0.0 { w / total } else { 0.0 },
                }
            })
            .collect();
        out.sort_by(|a, b| b.q_value.total_cmp(&a.q_value).then(a.id.cmp(&b.id)));
        out
    }

    /// The Q-table in the model file format ([`crate::learning::model`]).
    pub fn encode_model(&self) -> Vec<u8> {
        let shared = self.shared();
        crate::learning::model::encode(
            shared.learner.config(),
            &shared.q_store.rows(),
            shared.learner.episodes(),
        )
    }

    /// Puts a decoded model's values into the rows of its agents (registered
    /// or not) and resumes its episode count.
    pub fn apply_model(&self, model: crate::learning::model::Model) {
        let shared = self.shared();
        let config = shared.learner.config();
        shared.q_store.load(model.rows, config);
        shared.learner.resume(model.episodes);
        self.refresh_values();
    }

    fn refresh_values(&self) {
        for a in self.agents.load().agents() {
            a.refresh_value();
        }
    }

    /// The breaker of agent `id`, with its hot cell.
    fn with_breaker<T>(
        &self,
        id: &[u8],
        f: impl FnOnce(&Agent<P>, &Hot) -> T,
    ) -> Result<T, FlowError>
    where
        P: Send + Sync + 'static,
    {
        self.agents.with_snapshot(|snapshot| {
            let agent = snapshot.find(id).ok_or(FlowError::NotFound)?;
            Ok(f(agent, agent.stats().hot()))
        })
    }

    /// Asks agent `id`'s breaker for a call outside routing (a half-open
    /// breaker hands out one of its probes), and the transition asking
    /// caused. A closed breaker's answer holds nothing: only a probe keeps
    /// its agent.
    pub fn breaker_allow(&self, id: &[u8]) -> Result<(Admission<P>, Option<Transition>), FlowError>
    where
        P: Send + Sync + 'static,
    {
        let shared = self.shared();
        self.agents.with_snapshot(|snapshot| {
            let agent = snapshot.find(id).ok_or(FlowError::NotFound)?;
            let hot = agent.stats().hot();
            let (permit, t) =
                agent
                    .breaker()
                    .acquire(hot, &shared.config.breaker, shared.clock.now_us());
            let admission = match permit {
                None => Admission::Denied,
                Some(Permit::Call) => Admission::Call,
                Some(permit) => Admission::Probe(ProbePermit {
                    agent: Arc::clone(agent),
                    permit,
                    settled: AtomicBool::new(false),
                }),
            };
            Ok((admission, shared.count(t)))
        })
    }

    /// Records the outcome of a call made without a permit in hand: a plain
    /// call, which counts only while the breaker is closed (a probe's
    /// outcome is recorded through its [`ProbePermit`]).
    pub fn breaker_record(
        &self,
        id: &[u8],
        ok: bool,
        latency_us: u64,
    ) -> Result<Option<Transition>, FlowError>
    where
        P: Send + Sync + 'static,
    {
        let shared = self.shared();
        self.with_breaker(id, |agent, hot| {
            shared.count(agent.breaker().record(
                hot,
                &shared.config.breaker,
                Permit::Call,
                !ok,
                latency_us,
                shared.clock.now_us(),
            ))
        })
    }

    /// The state of agent `id`'s breaker (an open one past its timeout turns
    /// half-open here, a half-open one with an overdue probe opens again)
    /// and the probes it has out.
    pub fn breaker_state(
        &self,
        id: &[u8],
    ) -> Result<(BreakerState, u32, Option<Transition>), FlowError>
    where
        P: Send + Sync + 'static,
    {
        let shared = self.shared();
        self.with_breaker(id, |agent, hot| {
            let (state, t) =
                agent
                    .breaker()
                    .state(hot, &shared.config.breaker, shared.clock.now_us());
            (state, agent.breaker().probes(), shared.count(t))
        })
    }

    /// Closes agent `id`'s breaker and empties its window.
    pub fn breaker_reset(&self, id: &[u8]) -> Result<Option<Transition>, FlowError>
    where
        P: Send + Sync + 'static,
    {
        let shared = self.shared();
        self.with_breaker(id, |agent, hot| shared.count(agent.breaker().reset(hot)))
    }

    /// Forgets everything learned.
    pub fn reset_learning(&self) {
        let rows = self.shared().q_store.rows();
        self.shared().learner.reset(rows.iter().map(|(_, r)| r));
        self.refresh_values();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::agents::AgentSpec;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn router(n: usize) -> Router<usize> {
        let r = Router::new(RouterConfig::default(), Clock::manual(0));
        for i in 0..n {
            r.agents()
                .insert(AgentSpec::new(
                    format!("agent-{i}"),
                    i,
                    vec![b"work".to_vec()],
                ))
                .unwrap();
        }
        r
    }

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    const WORK: &[&[u8]] = &[b"work"];

    #[test]
    fn a_lease_is_settled_exactly_once_and_teaches() {
        let r = router(1);
        let lease = r
            .decide(&Request::new(WORK, Strategy::RoundRobin), &mut rng())
            .unwrap();
        r.clock().advance(250);
        assert_eq!(lease.agent().stats().in_flight(), 1);
        let s = lease.state().index();
        let before = lease.agent().q_row().value(s);
        assert_eq!(
            lease.complete(Outcome::Success).map(|c| c.latency_us),
            Some(250)
        );
        assert_eq!(lease.complete(Outcome::Failure), None);
        let v = lease.agent().stats().view();
        assert_eq!((v.in_flight, v.succeeded, v.failed), (0, 1, 0));
        assert_eq!(r.stats().episodes, 1);
        assert_eq!(lease.agent().q_row().visits(s), 1);
        assert_ne!(lease.agent().q_row().value(s), before);
    }

    #[test]
    fn dropping_an_unsettled_lease_releases_it_as_abandoned_without_learning() {
        let r = router(1);
        let agent = {
            let lease = r
                .decide(&Request::new(&[], Strategy::RoundRobin), &mut rng())
                .unwrap();
            lease.agent().clone()
        };
        let v = agent.stats().view();
        assert_eq!((v.in_flight, v.abandoned), (0, 1));
        assert_eq!(r.stats().episodes, 0);
    }

    #[test]
    fn local_only_requests_pass_remote_agents_by() {
        let r = router(2);
        for i in 2..6 {
            r.agents()
                .insert(AgentSpec {
                    remote: true,
                    ..AgentSpec::new(format!("remote-{i}"), i, vec![b"work".to_vec()])
                })
                .unwrap();
        }
        let mut rng = rng();
        for s in Strategy::ALL {
            let req = Request {
                key: Some(42),
                local_only: true,
                ..Request::new(WORK, *s)
            };
            for _ in 0..30 {
                let lease = r.decide(&req, &mut rng).unwrap();
                assert!(*lease.agent().payload() < 2, "{s:?}");
                assert!(!lease.agent().is_remote());
                lease.complete(Outcome::Success);
            }
        }
        // any node: the remote ones are candidates too
        let picked: std::collections::HashSet<usize> = (0..200)
            .map(|_| {
                let lease = r
                    .decide(&Request::new(WORK, Strategy::RoundRobin), &mut rng)
                    .unwrap();
                let p = *lease.agent().payload();
                lease.complete(Outcome::Success);
                p
            })
            .collect();
        assert_eq!(picked.len(), 6);
        // only remote agents, and a local-only task: none available
        let remote_only: Router<usize> = Router::new(RouterConfig::default(), Clock::manual(0));
        remote_only
            .agents()
            .insert(AgentSpec {
                remote: true,
                ..AgentSpec::new("far", 0, vec![b"work".to_vec()])
            })
            .unwrap();
        let req = Request {
            local_only: true,
            ..Request::new(WORK, Strategy::RoundRobin)
        };
        assert_eq!(
            remote_only.decide(&req, &mut rng).unwrap_err(),
            FlowError::NoAgentsAvailable
        );
    }

    #[test]
    fn no_candidates_is_an_error() {
        let r = router(2);
        assert_eq!(
            r.decide(&Request::new(&[b"other"], Strategy::RoundRobin), &mut rng())
                .unwrap_err(),
            FlowError::NoAgentsAvailable
        );
        for s in Strategy::ALL {
            let empty: Router<usize> = Router::new(RouterConfig::default(), Clock::system());
            assert_eq!(
                empty
                    .decide(&Request::new(&[], *s), &mut rng())
                    .unwrap_err(),
                FlowError::NoAgentsAvailable
            );
        }
    }

    #[test]
    fn every_strategy_picks_a_candidate() {
        let r = router(5);
        let mut rng = rng();
        for s in Strategy::ALL {
            let req = Request {
                key: Some(42),
                ..Request::new(WORK, *s)
            };
            for _ in 0..20 {
                let lease = r.decide(&req, &mut rng).unwrap();
                assert!(*lease.agent().payload() < 5);
                lease.complete(Outcome::Success);
            }
        }
        assert_eq!(r.stats().in_flight, 0);
    }

    fn router_with(n: usize, config: RouterConfig) -> Router<usize> {
        let r = Router::new(config, Clock::manual(0));
        let specs = (0..n)
            .map(|i| AgentSpec::new(format!("agent-{i}"), i, vec![b"work".to_vec()]))
            .collect();
        r.agents().insert_many(specs).unwrap();
        r
    }

    /// Past `sample_above` candidates a pick looks at a sample; when none
    /// of the sample admits a task, it looks at every candidate, so the one
    /// agent with room is found, and a refusal still says why.
    #[test]
    fn sampled_picks_find_the_one_agent_with_room() {
        let config = RouterConfig {
            max_concurrent: 1,
            ..RouterConfig::default()
        };
        let r = router_with(1000, config);
        let mut rng = rng();
        let busy: Vec<_> = (0..999)
            .map(|_| {
                r.decide(&Request::new(WORK, Strategy::RoundRobin), &mut rng)
                    .unwrap()
            })
            .collect();
        let free = 999 * 1000 / 2 - busy.iter().map(|l| *l.agent().payload()).sum::<usize>();
        for s in [
            Strategy::LeastConnections,
            Strategy::Weighted,
            Strategy::QLearning,
        ] {
            for _ in 0..20 {
                let lease = r.decide(&Request::new(WORK, s), &mut rng).unwrap();
                assert_eq!(*lease.agent().payload(), free, "{s:?}");
                assert_eq!(
                    r.decide(&Request::new(WORK, s), &mut rng).unwrap_err(),
                    FlowError::Overloaded,
                    "{s:?}"
                );
                lease.complete(Outcome::Success);
            }
        }
        drop(busy);
    }

    /// Q-learning's greedy pick among a large set keeps the best agent it
    /// has sampled in view: once found, it is chosen on every greedy pick.
    #[test]
    fn sampled_q_learning_keeps_the_best_agent_in_view() {
        let mut config = RouterConfig::default();
        config.q.epsilon = 0.0;
        config.q.epsilon_min = 0.0;
        let r = router_with(1000, config);
        let mut rng = rng();
        // every agent measured once: agent 500 answers, the others fail
        for _ in 0..1000 {
            let lease = r
                .decide(&Request::new(WORK, Strategy::RoundRobin), &mut rng)
                .unwrap();
            r.clock().advance(100);
            let ok = *lease.agent().payload() == 500;
            lease.complete(if ok {
                Outcome::Success
            } else {
                Outcome::Failure
            });
        }
        let mut best = 0;
        for _ in 0..400 {
            let lease = r
                .decide(&Request::new(WORK, Strategy::QLearning), &mut rng)
                .unwrap();
            r.clock().advance(100);
            if *lease.agent().payload() == 500 {
                best += 1;
                lease.complete(Outcome::Success);
            } else {
                lease.complete(Outcome::Failure);
            }
        }
        // found within the first ~16 picks (64 of 1000 sampled each time),
        // then kept
        assert!(best >= 350, "{best}");
    }

    #[test]
    fn consistent_hash_needs_a_key() {
        let r = router(3);
        assert_eq!(
            r.decide(&Request::new(WORK, Strategy::ConsistentHash), &mut rng())
                .unwrap_err(),
            FlowError::BadArg("sticky_key")
        );
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let r = router(5);
        let mut counts = [0usize; 5];
        for _ in 0..23 {
            let lease = r
                .decide(&Request::new(WORK, Strategy::RoundRobin), &mut rng())
                .unwrap();
            counts[*lease.agent().payload()] += 1;
            lease.complete(Outcome::Success);
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "{counts:?}");
    }

    #[test]
    fn least_connections_takes_the_idle_agent() {
        let r = router(3);
        let mut rng = rng();
        let held: Vec<_> = (0..2)
            .map(|_| {
                r.decide(&Request::new(WORK, Strategy::LeastConnections), &mut rng)
                    .unwrap()
            })
            .collect();
        let third = r
            .decide(&Request::new(WORK, Strategy::LeastConnections), &mut rng)
            .unwrap();
        let busy: Vec<usize> = held.iter().map(|l| *l.agent().payload()).collect();
        assert!(!busy.contains(third.agent().payload()));
    }

    #[test]
    fn a_removed_agent_still_settles_its_leases() {
        let r = router(1);
        let lease = r
            .decide(&Request::new(&[], Strategy::RoundRobin), &mut rng())
            .unwrap();
        r.agents().remove(b"agent-0").unwrap();
        assert!(
            r.decide(&Request::new(&[], Strategy::RoundRobin), &mut rng())
                .is_err()
        );
        assert_eq!(r.stats().in_flight, 1);
        lease.complete(Outcome::AgentDown);
        assert_eq!(lease.agent().stats().in_flight(), 0);
        assert_eq!(r.stats().in_flight, 0);
    }

    #[test]
    fn explain_ranks_by_value_and_softmax_sums_to_one() {
        let r = router(3);
        let a = r.agents().load().find(b"agent-1").unwrap().clone();
        let s = a.state(r.shared().learner().config(), 0).index();
        a.q_row().set(s, 100.0, 1);
        a.refresh_value();
        let e = r.explain(WORK, 0);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].id, b"agent-1");
        let total: f64 = e.iter().map(|x| x.softmax).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(e[0].softmax > 0.99);
    }

    #[test]
    fn reset_forgets_what_was_learned() {
        let r = router(1);
        let mut rng = rng();
        for _ in 0..10 {
            r.decide(&Request::new(WORK, Strategy::QLearning), &mut rng)
                .unwrap()
                .complete(Outcome::Failure);
        }
        assert_eq!(r.stats().episodes, 10);
        r.reset_learning();
        assert_eq!(r.stats().episodes, 0);
        let a = r.agents().load().find(b"agent-0").unwrap().clone();
        assert!((0..a.q_row().len()).all(|i| a.q_row().visits(i) == 0));
    }

    /// Lease one task to the agent of `slot` (round robin from a fresh
    /// router reaches it), answered after `ms` of the manual clock.
    fn serve(r: &Router<usize>, want: usize, ms: u64, ok: bool) {
        let mut rng = rng();
        for _ in 0..16 {
            let lease = r
                .decide(&Request::new(WORK, Strategy::RoundRobin), &mut rng)
                .unwrap();
            if *lease.agent().payload() == want {
                r.clock().advance(ms * 1000);
                lease.complete(if ok {
                    Outcome::Success
                } else {
                    Outcome::Failure
                });
                return;
            }
            lease.complete(Outcome::Abandoned);
        }
        panic!("round robin never reached {want}");
    }

    #[test]
    fn stale_news_drifts_toward_the_best_and_the_next_answer_counts_most() {
        let r = router(2);
        let learner = &r.shared().learner;
        // agent 1 is slow (300 ms, the slow bucket), agent 0 fast
        for _ in 0..5 {
            serve(&r, 0, 5, true);
            serve(&r, 1, 300, true);
        }
        let snapshot = r.agents().load();
        let (a0, a1) = (snapshot.agent(0).clone(), snapshot.agent(1).clone());
        let learned = a1.stats().current_value();
        assert!(learned < a0.stats().current_value());
        assert_eq!(a1.drift(r.clock().now_us()), 0.0);
        // a slow agent's news goes stale at its own pace, twice a fast one's
        let stale = a1.stale_after_us();
        let own = r.shared().config().stale_after_us as f64;
        assert!((1.5 * own..=2.5 * own).contains(&stale), "{stale}");
        assert!((0.75 * own..=1.25 * own).contains(&a0.stale_after_us()));
        // a silence of its stale_after and as much again: the drift is 1 - 1/e
        r.clock().advance((2.0 * stale).ceil() as u64);
        let now = r.clock().now_us();
        assert!((a1.drift(now) - (1.0 - (-1.0f64).exp())).abs() < 1e-6);
        // a decision makes the router look: the hot cell carries the drift,
        // the learned value is untouched
        let lease = r
            .decide(&Request::new(WORK, Strategy::RoundRobin), &mut rng())
            .unwrap();
        lease.complete(Outcome::Abandoned);
        let hot = a1.stats().hot();
        assert!((hot.drift() - a1.drift(now)).abs() < 1e-4);
        assert_eq!(hot.value(), learned);
        // it drifts toward a little above the best value, not far past it
        let target = learner.aging_target(0);
        assert!(target > learner.best_next(0));
        let aged = hot.aged_value(target);
        assert!(aged > learned && aged < target);
        // an agent with a task in flight does not drift
        let held = a1.stats().hot().try_add_in_flight(10);
        assert!(held);
        assert_eq!(a1.drift(now), 0.0);
        a1.stats().hot().sub_in_flight();
        // after the silence, one fast answer moves the latency average nearly
        // all the way (weight 1 - exp(-2) at least, not the usual 0.5)
        let before = a1.stats().ewma_latency_us();
        serve(&r, 1, 5, true);
        let after = a1.stats().ewma_latency_us();
        let weight = (before - after) / (before - 5000.0);
        assert!(weight >= 1.0 - (-2.0f64).exp() - 1e-9, "{weight}");
        assert_eq!(a1.drift(r.clock().now_us()), 0.0);
        assert_eq!(a1.stats().hot().drift(), 0.0);
    }

    #[test]
    fn q_learning_tries_a_stale_agent_again_and_aging_can_be_off() {
        for (stale_after_us, tried) in [(3_000_000, true), (0, false)] {
            let r = Router::new(
                RouterConfig {
                    stale_after_us,
                    ..RouterConfig::default()
                },
                Clock::manual(0),
            );
            for i in 0..2 {
                r.agents()
                    .insert(AgentSpec::new(
                        format!("agent-{i}"),
                        i,
                        vec![b"work".to_vec()],
                    ))
                    .unwrap();
            }
            // agent 1 fails: worse than agent 0 by far more than the
            // learner's noise, so only aging brings it back
            for _ in 0..5 {
                serve(&r, 0, 5, true);
                serve(&r, 1, 5, false);
            }
            let mut rng = rng();
            let mut picks = |n: usize| {
                (0..n)
                    .map(|_| {
                        let lease = r
                            .decide(&Request::new(WORK, Strategy::QLearning), &mut rng)
                            .unwrap();
                        let who = *lease.agent().payload();
                        r.clock().advance(1000);
                        lease.complete(Outcome::Success);
                        who
                    })
                    .collect::<Vec<_>>()
            };
            // fresh news: the fast agent gets every greedy pick (epsilon aside)
            let now = picks(200);
            assert!(now.iter().filter(|&&w| w == 0).count() > 180);
            // agent 1 silent for long: with aging, the next picks try it
            r.clock().advance(30_000_000);
            let later = picks(5);
            assert_eq!(later.contains(&1), tried, "{stale_after_us}: {later:?}");
        }
    }

    /// A q_learning decision among the agents of `r` with epsilon at 0:
    /// the greedy pick, its lease settled as abandoned unless kept.
    fn greedy_pick(r: &Router<usize>, rng: &mut SmallRng) -> Lease<usize> {
        r.decide(&Request::new(WORK, Strategy::QLearning), rng)
            .unwrap()
    }

    fn greedy_router(n: usize, sample_above: Option<usize>) -> Router<usize> {
        let mut config = RouterConfig::default();
        config.q.epsilon = 0.0;
        config.q.epsilon_min = 0.0;
        config.sample_above = sample_above;
        let r = Router::new(config, Clock::manual(0));
        for i in 0..n {
            r.agents()
                .insert(AgentSpec::new(
                    format!("agent-{i}"),
                    i,
                    vec![b"work".to_vec()],
                ))
                .unwrap();
        }
        r
    }

    #[test]
    fn a_cell_never_updated_is_worth_one_step_from_the_best() {
        let r = router(1);
        let learner = &r.shared().learner;
        let config = learner.config().clone();
        let agent = r.agents().load().agent(0).clone();
        // the state a recovering agent moves into: normal latency
        let state = State {
            load_level: 0,
            success: 2,
            latency: 1,
            class: 0,
        };
        let i = state.index();
        assert_eq!(agent.q_row().visits(i), 0);
        learner.observe_best(0, 5.0);
        let expected = config.prior_reward(state) + config.gamma * 5.0;
        assert!((learner.value(agent.q_row(), i) - expected).abs() < 1e-12);
        // on the scale of learned values, not the reward forever
        assert!(learner.value(agent.q_row(), i) > 4.0);
        assert!(config.prior(state) < 0.0);
        // the first update starts from that estimate
        let (new, error) = learner.learn_at(agent.q_row(), i, 1.0, config.alpha);
        assert!(
            (new - (expected + config.alpha * (1.0 + config.gamma * 5.0 - expected))).abs() < 1e-12
        );
        assert!((error - (1.0 + config.gamma * 5.0 - expected)).abs() < 1e-12);
        assert_eq!(learner.value(agent.q_row(), i), new);
        assert!(learner.noise() > 0.0);
    }

    #[test]
    fn values_within_the_learners_noise_are_told_apart_by_cost() {
        for sample_above in [None, Some(2)] {
            let r = greedy_router(3, sample_above);
            // the same answers, so the same learned values; agent 2 is slower
            // within the fast bucket (40 ms against 5 ms)
            for _ in 0..20 {
                serve(&r, 0, 5, true);
                serve(&r, 1, 5, true);
                serve(&r, 2, 40, true);
            }
            // the learner's recent steps were large (outcomes swinging by
            // 10 either way on some other agent): its noise band is wide
            let learner = &r.shared().learner;
            let scratch = crate::learning::QRow::new(learner.config());
            for k in 0..300 {
                let reward = if k % 2 == 0 { 5.0 } else { -5.0 };
                learner.learn_at(&scratch, 0, reward, learner.config().alpha);
            }
            let snapshot = r.agents().load();
            let v: Vec<f64> = (0..3)
                .map(|i| snapshot.agent(i).stats().current_value())
                .collect();
            let band = 3.0 * learner.noise();
            assert!((v[0] - v[2]).abs() < band, "{v:?} band {band}");
            // agent 0 holds a task: it costs twice its latency now
            let mut rng = rng();
            let held = greedy_pick(&r, &mut rng);
            let busy = *held.agent().payload();
            let mut picks = [0usize; 3];
            for _ in 0..50 {
                let lease = greedy_pick(&r, &mut rng);
                picks[*lease.agent().payload()] += 1;
                lease.complete(Outcome::Abandoned);
            }
            // the idle 5 ms agent, never the 40 ms one nor the busy one
            assert_eq!(picks[busy], 0, "{sample_above:?}: {picks:?}");
            assert_eq!(picks[2], 0, "{sample_above:?}: {picks:?}");
            held.complete(Outcome::Abandoned);
        }
    }

    #[test]
    fn a_busy_agent_silent_past_its_usual_latency_takes_no_more() {
        for sample_above in [None, Some(2)] {
            let r = greedy_router(3, sample_above);
            for _ in 0..20 {
                serve(&r, 0, 5, true);
                serve(&r, 1, 5, true);
                serve(&r, 2, 5, true);
            }
            let mut rng = rng();
            let held = greedy_pick(&r, &mut rng);
            let silent = *held.agent().payload();
            // it answers in 5 ms usually; 300 ms later it has said nothing
            r.clock().advance(300_000);
            let stats = held.agent().stats();
            assert_eq!(stats.silence_us(r.clock().now_us()), Some(300_000));
            for _ in 0..30 {
                let lease = greedy_pick(&r, &mut rng);
                assert_ne!(*lease.agent().payload(), silent, "{sample_above:?}");
                lease.complete(Outcome::Abandoned);
            }
            // when it is the only one left, it is still chosen
            let others: Vec<Lease<usize>> =
                (0..2 * 10).map(|_| greedy_pick(&r, &mut rng)).collect();
            assert!(others.iter().all(|l| *l.agent().payload() != silent));
            let last = greedy_pick(&r, &mut rng);
            assert_eq!(*last.agent().payload(), silent);
            drop(others);
            drop(last);
            held.complete(Outcome::Timeout);
        }
    }

    #[test]
    fn an_agent_known_slow_answering_fast_sends_the_router_to_look_at_the_stalest() {
        let r = greedy_router(4, None);
        // agents 1, 2 and 3 are slow (400 ms), agent 0 fast
        for _ in 0..5 {
            serve(&r, 0, 5, true);
            serve(&r, 1, 400, true);
            serve(&r, 2, 400, true);
            serve(&r, 3, 400, true);
        }
        let snapshot = r.agents().load();
        let a = |i: usize| snapshot.agent(i as u32).clone();
        assert_eq!(a(1).stats().condition() % 3, 2, "slow bucket");
        // a while later agent 1 answers fast: taken at its word...
        r.clock().advance(2_000_000);
        let known_fast = State {
            load_level: 0,
            success: 2,
            latency: 0,
            class: 0,
        };
        a(1).q_row().set(known_fast.index(), -3.0, 9);
        serve(&r, 0, 5, true);
        serve(&r, 1, 5, true);
        assert!(a(1).stats().ewma_latency_us() < 6_000.0);
        assert_eq!(a(1).stats().condition() % 3, 0, "fast bucket at once");
        // ...what it learned of its fast states before is forgotten...
        assert_eq!(a(1).q_row().visits(known_fast.index()), 0);
        // ...and the next decision drifts the stalest idle agents all the way
        assert_ne!(r.shared().surprise_us.load(Ordering::Relaxed), 0);
        let lease = greedy_pick(&r, &mut rng());
        let picked = *lease.agent().payload();
        lease.complete(Outcome::Abandoned);
        assert_eq!(r.shared().surprise_us.load(Ordering::Relaxed), 0);
        // agents 2 and 3, not heard of since before agent 1's answer: one
        // was tried at once (its pick made its view fresh), the other waits
        // at full drift for the next decision
        assert!(picked == 2 || picked == 3, "{picked}");
        let other = 5 - picked;
        assert!(a(other).stats().hot().drift() >= 1.0);
        assert!(a(0).stats().hot().drift() < 1.0 && a(1).stats().hot().drift() < 1.0);
    }

    #[test]
    fn a_probe_in_flight_takes_nothing_more_until_it_answers() {
        let r = greedy_router(2, None);
        for _ in 0..5 {
            serve(&r, 0, 5, true);
            serve(&r, 1, 5, true);
        }
        // both silent for long: whichever is tried first is a probe
        r.clock().advance(60_000_000);
        let mut rng = rng();
        let probe = greedy_pick(&r, &mut rng);
        let probed = *probe.agent().payload();
        let stale = probe.agent().stale_after_us() as u64;
        assert!(probe.agent().stats().probing(stale));
        for _ in 0..10 {
            let lease = greedy_pick(&r, &mut rng);
            assert_ne!(*lease.agent().payload(), probed);
            lease.complete(Outcome::Abandoned);
        }
        probe.complete(Outcome::Success);
        assert!(
            !r.agents()
                .load()
                .agent(probed as u32)
                .stats()
                .probing(stale)
        );
    }

    #[test]
    fn a_refusal_of_the_callers_task_is_an_answer_not_a_failure() {
        let mut config = RouterConfig::default();
        config.breaker.failure_threshold = 2;
        config.breaker.min_requests = 2;
        let r = Router::new(config, Clock::manual(0));
        r.agents()
            .insert(AgentSpec::new("picky", 0usize, vec![b"work".to_vec()]))
            .unwrap();
        let mut rng = rng();
        for _ in 0..20 {
            let lease = r
                .decide(&Request::new(WORK, Strategy::RoundRobin), &mut rng)
                .expect("never refused by its breaker");
            r.clock().advance(2_000);
            let done = lease.complete(Outcome::Rejected).unwrap();
            assert_eq!(done.transition, None);
        }
        let agent = r.agents().load().agent(0).clone();
        let v = agent.stats().view();
        assert_eq!((v.rejected, v.failed, v.succeeded), (20, 0, 0));
        assert_eq!(v.dispatched, 20);
        assert!(v.success_rate > 0.99, "{}", v.success_rate);
        assert_eq!(agent.stats().hot().breaker(), 0, "closed");
        // learned as an answer of 2 ms: a fast state's reward, not -10
        assert!(agent.stats().current_value() > 0.0);
        // the same agent failing twice opens
        for _ in 0..2 {
            let lease = r
                .decide(&Request::new(WORK, Strategy::RoundRobin), &mut rng)
                .unwrap();
            lease.complete(Outcome::Failure);
        }
        assert_ne!(agent.stats().hot().breaker(), 0, "open");
    }
}
