//! What every part of a router shares: its configuration, the state its
//! agents hold in common ([`Shared`]), and how a dispatched task ended
//! ([`Outcome`]). A module of its own so that the agent table, the live
//! stats, the strategies and the router read these without importing each
//! other.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::clock::Clock;
use crate::hot::HotArena;
use crate::learning::{Learner, QConfig, QStore};
use crate::resilience::breaker::{BreakerConfig, Transition};
use crate::striped::StripedCounter;
use crate::tracing::correlation::{CorrelationConfig, CorrelationStore};

/// How a dispatched task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The agent answered `{ok, _}`.
    Success,
    /// The agent answered `{error, _}` or something malformed: its fault.
    Failure,
    /// The agent refused the task as the caller's error (a tool error, bad
    /// params, `{reject, _}`): an answer, not a failure of the agent. Its
    /// latency counts; the breaker does not count it, the learner does not
    /// take it for the agent's fault, and it is not retried.
    Rejected,
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
            Outcome::Rejected => "rejected",
            Outcome::Timeout => "timeout",
            Outcome::AgentDown => "down",
            Outcome::Abandoned => "abandoned",
        }
    }

    pub fn from_name(name: &str) -> Option<Outcome> {
        [
            Outcome::Success,
            Outcome::Failure,
            Outcome::Rejected,
            Outcome::Timeout,
            Outcome::AgentDown,
            Outcome::Abandoned,
        ]
        .into_iter()
        .find(|o| o.name() == name)
    }
}

/// Router settings (the `load_balancer` and `q_learning` configuration sections).
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    pub q: QConfig,
    /// Points per agent on the consistent-hash ring.
    pub vnodes: u32,
    /// The consistent-hash ring is built on the first consistent-hash
    /// decision ([`crate::FlowError::RingNotBuilt`] asks for it) rather
    /// than kept from the start: a table that never routes by key holds no
    /// points (150 per agent by default, 8 bytes each).
    pub lazy_ring: bool,
    /// Bounded-load factor for consistent hashing (`None`: unbounded).
    pub hash_balance_factor: Option<f64>,
    /// Time constant of the peak-EWMA latency, microseconds.
    pub ewma_decay_us: f64,
    /// An agent with no news for this long (and nothing in flight) is
    /// measured anew: its latency and success averages are forgotten, so the
    /// learner sees it unmeasured and tries it again (0: never). See
    /// [`crate::routing::router::Router::age`].
    pub stale_after_us: u64,
    /// Candidates past which `least_connections`, `weighted` and
    /// `q_learning`'s greedy pick look at a uniform sample of
    /// [`crate::routing::strategy::SAMPLE`] candidates (Q-learning adds its
    /// recent winners) instead of all of them (`None`: always all).
    pub sample_above: Option<usize>,
    /// Rows of agents that left kept for their return.
    pub max_dormant_rows: usize,
    /// Bulkhead: tasks in flight per agent at most.
    pub max_concurrent: u32,
    pub breaker: BreakerConfig,
    pub correlation: CorrelationConfig,
}

/// The largest sizes a [`RouterConfig`] may give: each is allocated per
/// agent or per router, so none is taken from input unbounded.
pub mod limits {
    /// Tasks in flight per agent (the bulkhead).
    pub const MAX_CONCURRENT: u32 = 1_000_000;
    pub use crate::learning::{MAX_DORMANT_ROWS, MAX_TASK_CLASSES};
    pub use crate::resilience::breaker::{MAX_HALF_OPEN, MAX_WINDOW_CALLS, MAX_WINDOW_MS};
    pub use crate::routing::ring::MAX_VNODES;
    pub use crate::tracing::correlation::{MAX_CORRELATION_ENTRIES, MAX_EXPORT_QUEUE};
}

impl RouterConfig {
    /// Refuses a configuration past any of [`limits`], naming the setting.
    pub fn check(&self) -> Result<(), crate::error::FlowError> {
        use crate::error::FlowError::BadArg;
        use crate::resilience::breaker::WindowKind;
        let window_ok = match self.breaker.window {
            WindowKind::Count(n) => (1..=limits::MAX_WINDOW_CALLS).contains(&n),
            WindowKind::Time { ms } => (1..=limits::MAX_WINDOW_MS).contains(&ms),
        };
        let checks = [
            (
                (1..=limits::MAX_VNODES).contains(&self.vnodes),
                "consistent_hash_vnodes",
            ),
            (
                (1..=limits::MAX_TASK_CLASSES).contains(&self.q.task_classes),
                "task_classes",
            ),
            (
                (1..=limits::MAX_HALF_OPEN).contains(&self.breaker.half_open_max),
                "half_open_max_requests",
            ),
            (
                (1..=limits::MAX_CONCURRENT).contains(&self.max_concurrent),
                "max_concurrent",
            ),
            (
                self.q.max_concurrent == self.max_concurrent,
                "max_concurrent",
            ),
            (window_ok, "window_size"),
            (
                (1..=limits::MAX_CORRELATION_ENTRIES).contains(&self.correlation.max_entries),
                "correlation_max_entries",
            ),
            (
                self.correlation.export_queue <= limits::MAX_EXPORT_QUEUE,
                "export_queue",
            ),
            (
                self.max_dormant_rows <= limits::MAX_DORMANT_ROWS,
                "max_dormant_rows",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(BadArg(what)),
            None => Ok(()),
        }
    }
}

/// Candidates up to which `least_connections`, `weighted` and
/// `q_learning`'s greedy pick look at every candidate, by default (the
/// `sample_above` setting). Past it they look at a sample of candidates drawn
/// uniformly (`routing::strategy::SAMPLE`; Q-learning adds its recent
/// winners), so that a decision among 10 000 costs about what one among 100
/// does.
pub const EXACT_LIMIT: usize = 256;

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            q: QConfig::default(),
            vnodes: 150,
            lazy_ring: false,
            hash_balance_factor: None,
            ewma_decay_us: 3e6,
            stale_after_us: 3_000_000,
            sample_above: Some(EXACT_LIMIT),
            max_dormant_rows: 10_000,
            max_concurrent: 10,
            breaker: BreakerConfig::default(),
            correlation: CorrelationConfig::default(),
        }
    }
}

/// What every agent of a router shares: the clock its leases are timed by, the
/// router-wide count of leases in flight, the learner and its rows. Each agent
/// holds it, so a lease reaches it through its agent.
#[derive(Debug)]
pub struct Shared {
    pub(crate) config: RouterConfig,
    pub(crate) hot: HotArena,
    pub(crate) clock: Clock,
    /// Leases taken and not yet settled, over every agent, removed ones included.
    pub(crate) in_flight: StripedCounter,
    pub(crate) learner: Learner,
    pub(crate) q_store: QStore,
    pub(crate) next_uid: AtomicU32,
    /// Breaker transitions, by the state entered: open, half-open, closed.
    pub(crate) transitions: [AtomicU64; 3],
    /// Leases settled with an answer, a timeout or a death.
    pub(crate) completed: StripedCounter,
    /// When the next look for agents whose news is stale is due (see
    /// `Router::age`).
    pub(crate) next_aging_us: AtomicU64,
    /// When the last surprise came (0: none since the agents were walked);
    /// see `Router::age`.
    pub(crate) surprise_us: AtomicU64,
    pub(crate) correlation: CorrelationStore,
    /// Microseconds a decision took, for one decision in [`DECISION_SAMPLE`].
    pub(crate) decision_us: Mutex<Histogram<u32>>,
    /// Unix time in nanoseconds when the clock read 0.
    pub(crate) unix_origin_ns: u64,
}

/// Durations of the sampled decisions (one in [`DECISION_SAMPLE`]), in
/// microseconds; the sum is the samples' mean times their count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecisionLatency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub sum_us: u64,
    pub samples: u64,
}

/// One decision in this many has its duration recorded.
pub const DECISION_SAMPLE: u64 = 64;

impl Shared {
    pub fn new(config: RouterConfig, clock: Clock) -> Self {
        let unix_now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Shared {
            correlation: CorrelationStore::new(config.correlation.clone()),
            completed: StripedCounter::new(),
            next_aging_us: AtomicU64::new(0),
            surprise_us: AtomicU64::new(0),
            decision_us: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 2).expect("constant histogram bounds"),
            ),
            unix_origin_ns: unix_now_ns.saturating_sub(clock.now_us() * 1000),
            hot: HotArena::default(),
            learner: Learner::new(config.q.clone()),
            q_store: QStore::new(config.max_dormant_rows),
            config,
            clock,
            in_flight: StripedCounter::new(),
            next_uid: AtomicU32::new(0),
            transitions: Default::default(),
        }
    }

    pub fn correlation(&self) -> &CorrelationStore {
        &self.correlation
    }

    /// Unix time in nanoseconds of clock time `us`.
    pub fn unix_ns(&self, us: u64) -> u64 {
        self.unix_origin_ns.saturating_add(us.saturating_mul(1000))
    }

    /// Durations of the sampled decisions, in microseconds.
    pub fn decision_latency(&self) -> DecisionLatency {
        let h = self.decision_us.lock().unwrap_or_else(|e| e.into_inner());
        DecisionLatency {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            sum_us: (h.mean() * h.len() as f64).round() as u64,
            samples: h.len(),
        }
    }

    /// Counts a breaker transition and passes it on.
    pub(crate) fn count(&self, t: Option<Transition>) -> Option<Transition> {
        if let Some(t) = t {
            self.transitions[t.to as usize].fetch_add(1, Ordering::Relaxed);
        }
        t
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.sum().max(0) as u64
    }

    pub fn learner(&self) -> &Learner {
        &self.learner
    }

    pub fn q_store(&self) -> &QStore {
        &self.q_store
    }

    pub(crate) fn hot_arena(&self) -> &HotArena {
        &self.hot
    }

    pub(crate) fn next_uid(&self) -> u32 {
        self.next_uid.fetch_add(1, Ordering::Relaxed)
    }
}
