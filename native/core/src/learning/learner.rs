//! Q-learning: which agent to prefer, learned from every outcome.
//!
//! # The table
//!
//! A *state* is the condition of one candidate agent at decision time: its
//! load level (0..=10, in-flight tasks scaled by the bulkhead size), its
//! success-rate bucket (low < 0.8 <= medium < 0.95 <= high, over an EWMA of
//! outcomes) and its latency bucket (fast < `fast_threshold` <= normal <=
//! `slow_threshold` < slow, over the EWMA latency): 11 x 3 x 3 = 99 states,
//! crossed with `task_classes` task classes. *Actions* are the agents; each
//! agent carries its own row of the table ([`QRow`], one value per state),
//! kept under its id in the [`QStore`] so that an agent that leaves and comes
//! back, or a node that restarts with a saved model, finds its values again.
//!
//! # The update
//!
//! After task completion, with reward `r` ([`reward`]):
//! `Q(s,a) += alpha * (r + gamma * max_a' Q(s',a') - Q(s,a))` ([`td_update`]).
//! `s` is the state the chosen agent was in when it was chosen. `s'` is the
//! situation the outcome hands on: the next routing decision, where every
//! candidate is in its own state and `max_a' Q(s',a')` is the best value among
//! them. Why: a routing decision does not change what the next task will be;
//! what follows an outcome is simply the next decision, and its worth is the
//! best candidate it has.
//!
//! That maximum is what every greedy decision computes anyway while it scans
//! its candidates, so each one leaves it behind ([`Learner::observe_best`], one
//! store per task class) and each update reads it (one load): the update costs
//! O(1) whatever the number of agents. Decisions for different capability
//! sets share it; the value it adds to every target of a class is the same,
//! which leaves the ranking of the candidates to the rewards.
//!
//! A cell nobody updated yet is worth what one step from it would give at
//! best ([`Learner::value`]): the best reward its state's buckets allow
//! ([`QConfig::prior_reward`]) plus `gamma` times the best next value every
//! learned value carries. Optimistic, so that a state not yet seen gets tried
//! and corrected instead of ignored; and on the scale of the learned values,
//! so that an agent entering a state it never visited (a slow agent that
//! turned fast, whose first answers move its latency bucket) is not sunk
//! below agents that merely stayed where they were. (A value that assumed
//! the reward forever, `r / (1 - gamma)`, started an agent recovering into the
//! `normal` bucket at -0.5 while steady agents sat near 5.)
//!
//! The learner also keeps the size of its own steps ([`Learner::noise`]): two
//! values closer than a few steps are not told apart by learning, and the
//! greedy choice among them is left to a measure of cost (see the
//! strategies).
//!
//! # Concurrency
//!
//! Values are `f64` bits in atomics. Selection reads without locks; an update
//! is a load, a computation and a store. Two completions updating the same
//! (state, agent) at the same instant can lose one of the two updates (the
//! later store wins). That is harmless: a lost update is one sample with a
//! learning rate of zero, the next sample for that cell corrects it, and no
//! value can leave the range the two stores spanned. Visit counts are advisory
//! and can lose increments the same way.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::striped::StripedCounter;
use ahash::RandomState;
use std::collections::BTreeMap;

/// Most task classes: each adds [`STATES`] values to every agent's row.
pub const MAX_TASK_CLASSES: u32 = 256;
/// Most rows kept for agents that left.
pub const MAX_DORMANT_ROWS: usize = 1_000_000;

/// Load levels 0..=10.
pub const LOAD_LEVELS: usize = 11;
/// Success-rate buckets: low, medium, high.
pub const SUCCESS_BUCKETS: usize = 3;
/// Latency buckets: fast, normal, slow.
pub const LATENCY_BUCKETS: usize = 3;
/// States per task class.
pub const STATES: usize = LOAD_LEVELS * SUCCESS_BUCKETS * LATENCY_BUCKETS;

/// Success-rate bucket edges.
pub const SUCCESS_LOW_BELOW: f64 = 0.8;
pub const SUCCESS_HIGH_FROM: f64 = 0.95;

/// Reward of a task that failed, timed out or lost its agent.
pub const ERROR_REWARD: f64 = -10.0;

/// Reward the prior takes off per load level (see [`QConfig::prior`]).
pub const LOAD_PRIOR_PENALTY: f64 = 0.1;

/// How epsilon falls from `epsilon` to `epsilon_min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpsilonSchedule {
    /// `epsilon * decay^n`.
    Exponential,
    /// A straight line reaching the floor when the exponential schedule would.
    Linear,
    /// Half a cosine wave over the same horizon.
    Cosine,
}

impl EpsilonSchedule {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "exponential" => Some(Self::Exponential),
            "linear" => Some(Self::Linear),
            "cosine" => Some(Self::Cosine),
            _ => None,
        }
    }
}

/// Learning parameters (the `q_learning` configuration section).
#[derive(Debug, Clone, PartialEq)]
pub struct QConfig {
    pub alpha: f64,
    pub gamma: f64,
    pub epsilon: f64,
    pub epsilon_min: f64,
    pub epsilon_decay: f64,
    pub schedule: EpsilonSchedule,
    pub temperature: f64,
    pub fast_us: f64,
    pub slow_us: f64,
    pub task_classes: u32,
    /// Tasks in flight that make load level 10 (the bulkhead size).
    pub max_concurrent: u32,
}

impl Default for QConfig {
    fn default() -> Self {
        QConfig {
            alpha: 0.1,
            gamma: 0.9,
            epsilon: 0.1,
            epsilon_min: 0.001,
            epsilon_decay: 0.995,
            schedule: EpsilonSchedule::Exponential,
            temperature: 1.0,
            fast_us: 50_000.0,
            slow_us: 200_000.0,
            task_classes: 1,
            max_concurrent: 10,
        }
    }
}

/// The condition of one agent, the pieces of a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct State {
    pub load_level: u8,
    /// 0 low, 1 medium, 2 high.
    pub success: u8,
    /// 0 fast, 1 normal, 2 slow.
    pub latency: u8,
    pub class: u32,
}

impl State {
    /// Index into a [`QRow`].
    #[inline]
    pub fn index(self) -> usize {
        self.class as usize * STATES
            + (self.load_level as usize * SUCCESS_BUCKETS + self.success as usize) * LATENCY_BUCKETS
            + self.latency as usize
    }

    /// The inverse of [`State::index`].
    pub fn from_index(index: usize) -> State {
        let class = (index / STATES) as u32;
        let s = index % STATES;
        State {
            load_level: (s / (SUCCESS_BUCKETS * LATENCY_BUCKETS)) as u8,
            success: ((s / LATENCY_BUCKETS) % SUCCESS_BUCKETS) as u8,
            latency: (s % LATENCY_BUCKETS) as u8,
            class,
        }
    }

    pub fn success_name(self) -> &'static str {
        ["low", "medium", "high"][self.success as usize]
    }

    pub fn latency_name(self) -> &'static str {
        ["fast", "normal", "slow"][self.latency as usize]
    }
}

/// Computes state indexes fast: the configuration's load scale worked out
/// once per decision instead of once per candidate.
#[derive(Debug, Clone, Copy)]
pub struct StateIndexer {
    /// Load levels per task in flight.
    scale: f64,
    class_base: usize,
}

impl StateIndexer {
    /// The row index of an agent with `in_flight` tasks and condition `cond`
    /// ([`QConfig::condition`]).
    #[inline]
    pub fn index(&self, in_flight: u32, cond: u8) -> usize {
        // The small epsilon keeps exact multiples exact despite rounding
        // (3 tasks of max_concurrent 3 must be level 10, not 9).
        let level = ((f64::from(in_flight) * self.scale + 1e-9) as usize).min(10);
        self.class_base + level * SUCCESS_BUCKETS * LATENCY_BUCKETS + usize::from(cond)
    }
}

impl QConfig {
    /// An indexer for task class `class`.
    #[inline]
    pub fn indexer(&self, class: u32) -> StateIndexer {
        StateIndexer {
            scale: 10.0 / f64::from(self.max_concurrent.max(1)),
            class_base: class as usize * STATES,
        }
    }

    /// The condition of an agent, `success bucket * 3 + latency bucket`: the
    /// part of its state that only changes when one of its tasks completes.
    #[inline]
    pub fn condition(&self, success_rate: f64, latency_us: f64) -> u8 {
        let st = self.state(0, success_rate, latency_us, 0);
        st.success * LATENCY_BUCKETS as u8 + st.latency
    }

    /// The state of an agent with `in_flight` tasks, a success-rate average
    /// `success_rate` and an EWMA latency `latency_us` (0: no sample yet,
    /// counted as fast so that new agents get tried).
    #[inline]
    pub fn state(&self, in_flight: u32, success_rate: f64, latency_us: f64, class: u32) -> State {
        let level = ((f64::from(in_flight) * 10.0 / f64::from(self.max_concurrent.max(1)) + 1e-9)
            as u64)
            .min(10);
        let success = if success_rate < SUCCESS_LOW_BELOW {
            0
        } else if success_rate < SUCCESS_HIGH_FROM {
            1
        } else {
            2
        };
        let latency = if latency_us < self.fast_us {
            0
        } else if latency_us <= self.slow_us {
            1
        } else {
            2
        };
        State {
            load_level: level as u8,
            success,
            latency,
            class,
        }
    }

    /// The best reward a state's buckets allow in one step: the reward at
    /// the lower edge of its latency bucket, weighed by the upper edge of its
    /// success bucket, less [`LOAD_PRIOR_PENALTY`] per load level (answers
    /// arrive late: without it an agent nobody measured would take task after
    /// task while its first ones run).
    pub fn prior_reward(&self, state: State) -> f64 {
        let latency = match state.latency {
            0 => 0.0,
            1 => self.fast_us,
            _ => self.slow_us,
        };
        let p = [SUCCESS_LOW_BELOW, SUCCESS_HIGH_FROM, 1.0][state.success as usize];
        p * self.reward(latency, true) + (1.0 - p) * ERROR_REWARD
            - LOAD_PRIOR_PENALTY * f64::from(state.load_level)
    }

    /// Whether a successful answer in `latency_us` from an agent whose
    /// condition was `known` ([`QConfig::condition`]) says the agent turned
    /// good: it was known slow (latency bucket `slow`: slow answers, or
    /// timeouts) and this answer is fast. The router takes the answer at its
    /// word and as news that agents may have recovered together. (An agent
    /// failing often but answering fast is no news when it succeeds.)
    #[inline]
    pub fn turned_good(&self, known: u8, latency_us: f64) -> bool {
        known % LATENCY_BUCKETS as u8 == 2 && latency_us < self.fast_us
    }

    /// The reward of one outcome ([`reward`] with this configuration's thresholds).
    #[inline]
    pub fn reward(&self, latency_us: f64, ok: bool) -> f64 {
        reward(latency_us, ok, self.fast_us, self.slow_us)
    }

    /// The stored starting value of a state: [`QConfig::prior_reward`] over
    /// `1 - gamma`, what a value converges to if that reward came forever.
    /// Decisions do not read it for a cell never updated (they read
    /// [`Learner::value`]); it is what the file keeps for such cells, the
    /// scale of the optimistic prior aging drifts toward, and the start of
    /// `max_a' Q(s', a')` before any decision.
    pub fn prior(&self, state: State) -> f64 {
        self.prior_reward(state) / (1.0 - self.gamma)
    }

    /// The highest prior of any state: the starting `max_a' Q(s', a')`.
    pub fn best_prior(&self) -> f64 {
        self.prior(State {
            load_level: 0,
            success: 2,
            latency: 0,
            class: 0,
        })
    }

    /// States per agent row.
    pub fn row_len(&self) -> usize {
        STATES * self.classes() as usize
    }

    /// Task classes, within 1..=[`MAX_TASK_CLASSES`].
    pub fn classes(&self) -> u32 {
        self.task_classes.clamp(1, MAX_TASK_CLASSES)
    }

    /// The episode count at which the exponential schedule reaches the floor;
    /// the linear and cosine schedules reach it at the same episode.
    fn horizon(&self) -> f64 {
        if self.epsilon_decay >= 1.0 || self.epsilon <= self.epsilon_min {
            return f64::INFINITY;
        }
        // A zero floor is never reached; stop where the exponential is at 1e-6.
        let floor = self.epsilon_min.max(1e-6);
        (floor / self.epsilon).ln() / self.epsilon_decay.ln()
    }

    /// Epsilon after `episodes` completed tasks.
    pub fn epsilon_at(&self, episodes: u64) -> f64 {
        let n = episodes as f64;
        let e0 = self.epsilon;
        let floor = self.epsilon_min.min(e0);
        let value = match self.schedule {
            EpsilonSchedule::Exponential => e0 * self.epsilon_decay.powf(n),
            EpsilonSchedule::Linear => {
                let h = self.horizon();
                if h.is_finite() {
                    e0 - (e0 - floor) * (n / h).min(1.0)
                } else {
                    e0
                }
            }
            EpsilonSchedule::Cosine => {
                let h = self.horizon();
                if h.is_finite() {
                    floor
                        + (e0 - floor) * (1.0 + (std::f64::consts::PI * (n / h).min(1.0)).cos())
                            / 2.0
                } else {
                    e0
                }
            }
        };
        value.max(floor)
    }
}

/// The reward of one outcome: minus the latency in seconds, +1 under the fast
/// threshold, -1 over the slow one; [`ERROR_REWARD`] for any failure.
#[inline]
pub fn reward(latency_us: f64, ok: bool, fast_us: f64, slow_us: f64) -> f64 {
    if !ok {
        return ERROR_REWARD;
    }
    let bonus = if latency_us < fast_us {
        1.0
    } else if latency_us > slow_us {
        -1.0
    } else {
        0.0
    };
    bonus - latency_us / 1e6
}

/// The largest magnitude a learned value takes. Rewards are bounded (a few
/// units a task) and values converge to rewards over `1 - gamma`, so real
/// values stay far below; the bound keeps any input from making a value
/// infinite or NaN.
pub const Q_LIMIT: f64 = 1e12;

/// One temporal-difference step: `q + alpha * (r + gamma * max_next - q)`,
/// kept within `±Q_LIMIT` (a NaN from non-finite inputs becomes 0), so no
/// update ever stores a value that is not finite.
#[inline]
pub fn td_update(q: f64, r: f64, max_next: f64, alpha: f64, gamma: f64) -> f64 {
    let v = q + alpha * (r + gamma * max_next - q);
    if v.is_nan() {
        0.0
    } else {
        v.clamp(-Q_LIMIT, Q_LIMIT)
    }
}

#[inline]
fn load_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

#[inline]
fn store_f64(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed)
}

/// One agent's cells: per state a value and how often it was updated, in
/// two arrays (12 bytes a state where one array of pairs would pad to 16).
#[derive(Debug)]
struct Cells {
    values: Box<[AtomicU64]>,
    visits: Box<[AtomicU32]>,
}

/// A row's cells, made on the first write: until an agent is learned (a
/// mirrored remote agent this node never routes to, an agent before its
/// first answer), its row reads as the priors every row of the router
/// shares, and costs one small allocation instead of 12 bytes a state.
#[derive(Debug)]
struct Row {
    cells: OnceLock<Cells>,
    /// The value of each state before anything is learned, shared.
    priors: Arc<[f64]>,
}

/// One agent's values, one per state, and how often each was updated. A
/// cheap handle (one reference count) on cells the store and the agent share,
/// so that reading a value is one hop from the agent.
#[derive(Debug, Clone)]
pub struct QRow(Arc<Row>);

/// Every state's prior under `config`, in state order.
pub fn priors(config: &QConfig) -> Arc<[f64]> {
    (0..config.row_len())
        .map(|i| config.prior(State::from_index(i)))
        .collect()
}

impl QRow {
    /// A row at the configuration's priors, its cells made now.
    pub fn new(config: &QConfig) -> QRow {
        let row = QRow::lazy(priors(config));
        row.cells();
        row
    }

    /// A row at `priors`, its cells made on the first write.
    pub fn lazy(priors: Arc<[f64]>) -> QRow {
        QRow(Arc::new(Row {
            cells: OnceLock::new(),
            priors,
        }))
    }

    /// The cells, made at the priors if they were not yet.
    fn cells(&self) -> &Cells {
        self.0.cells.get_or_init(|| Cells {
            values: self
                .0
                .priors
                .iter()
                .map(|p| AtomicU64::new(p.to_bits()))
                .collect(),
            visits: self.0.priors.iter().map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Whether anything was written to the row yet (its cells exist).
    pub fn is_written(&self) -> bool {
        self.0.cells.get().is_some()
    }

    pub fn len(&self) -> usize {
        self.0.priors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.priors.is_empty()
    }

    /// Bytes of the row on the heap (its reference counts included; the
    /// shared priors not).
    pub fn heap_bytes(&self) -> usize {
        2 * std::mem::size_of::<usize>()
            + std::mem::size_of::<Row>()
            + self.0.cells.get().map_or(0, |c| {
                std::mem::size_of_val(&*c.values) + std::mem::size_of_val(&*c.visits)
            })
    }

    #[inline]
    pub fn value(&self, index: usize) -> f64 {
        match self.0.cells.get() {
            Some(c) => load_f64(&c.values[index]),
            None => self.0.priors[index],
        }
    }

    #[inline]
    pub fn visits(&self, index: usize) -> u32 {
        match self.0.cells.get() {
            Some(c) => c.visits[index].load(Ordering::Relaxed),
            None => 0,
        }
    }

    /// Overwrites one cell (loading a model, tests).
    pub fn set(&self, index: usize, value: f64, visits: u32) {
        let c = self.cells();
        store_f64(&c.values[index], value);
        c.visits[index].store(visits, Ordering::Relaxed);
    }

    /// Applies one TD step from `q` (the cell's value as decisions saw it) to
    /// `index` and returns the new value.
    #[inline]
    fn learn(&self, index: usize, q: f64, r: f64, max_next: f64, alpha: f64, gamma: f64) -> f64 {
        let c = self.cells();
        let value = &c.values[index];
        let new = td_update(q, r, max_next, alpha, gamma);
        store_f64(value, new);
        let v = &c.visits[index];
        v.store(
            v.load(Ordering::Relaxed).saturating_add(1),
            Ordering::Relaxed,
        );
        new
    }

    /// Forgets what was learned of every state of condition `cond`
    /// ([`QConfig::condition`]), at every load level and in every class: its
    /// cells count as never updated again (decisions read them at
    /// [`Learner::initial_value`]). For an agent that turned good: what it
    /// learned in those states was learned of the agent it was before.
    pub fn forget_condition(&self, cond: u8) {
        // a row never written has nothing to forget
        let Some(cells) = self.0.cells.get() else {
            return;
        };
        let per_level = SUCCESS_BUCKETS * LATENCY_BUCKETS;
        for start in (0..self.len()).step_by(STATES) {
            for level in 0..LOAD_LEVELS {
                let index = start + level * per_level + usize::from(cond);
                if index < self.len() {
                    cells.visits[index].store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// Resets every cell to its prior.
    pub fn reset(&self, config: &QConfig) {
        if !self.is_written() {
            return;
        }
        for i in 0..self.len() {
            self.set(i, config.prior(State::from_index(i)), 0);
        }
    }
}

/// The learning state shared by every agent of a router.
#[derive(Debug)]
pub struct Learner {
    config: QConfig,
    /// Per task class, `f64` bits of the best value seen by the latest greedy
    /// decision: `max_a' Q(s', a')` for the next update.
    best_next: Box<[AtomicU64]>,
    /// Striped: every settled task adds one, from every scheduler.
    episodes: StripedCounter,
    /// `f64` bits of the current epsilon.
    epsilon: AtomicU64,
    /// `f64` bits of the moving average of the size of the TD steps.
    noise: AtomicU64,
}

/// Weight of the newest step in [`Learner::noise`]'s average.
const NOISE_WEIGHT: f64 = 1.0 / 64.0;

/// How far above the best value an aged agent's value can drift (see
/// [`Learner::aging_target`]): about the reward of one latency bucket.
pub const AGING_MARGIN: f64 = 0.5;

impl Learner {
    pub fn new(config: QConfig) -> Learner {
        Learner {
            best_next: (0..config.classes())
                .map(|_| AtomicU64::new(config.best_prior().to_bits()))
                .collect(),
            episodes: StripedCounter::new(),
            epsilon: AtomicU64::new(config.epsilon_at(0).to_bits()),
            noise: AtomicU64::new(0f64.to_bits()),
            config,
        }
    }

    /// The value decisions see in cell `index` of `row`: what was learned,
    /// or, for a cell never updated, the best one step from it can give
    /// ([`Learner::initial_value`]).
    #[inline]
    pub fn value(&self, row: &QRow, index: usize) -> f64 {
        if row.visits(index) == 0 {
            self.initial_value(index)
        } else {
            row.value(index)
        }
    }

    /// The estimate of a cell never updated: the best reward its state
    /// allows plus `gamma` times the best next value now.
    #[inline]
    pub fn initial_value(&self, index: usize) -> f64 {
        let state = State::from_index(index);
        self.config.prior_reward(state) + self.config.gamma * self.best_next(state.class)
    }

    /// The typical size of one TD step lately (a moving average of
    /// `|new - old|`): how much a learned value moves by chance between two
    /// samples. Values closer than a few of these are not told apart by
    /// learning.
    #[inline]
    pub fn noise(&self) -> f64 {
        load_f64(&self.noise)
    }

    pub fn config(&self) -> &QConfig {
        &self.config
    }

    pub fn episodes(&self) -> u64 {
        self.episodes.sum().max(0) as u64
    }

    #[inline]
    pub fn epsilon(&self) -> f64 {
        load_f64(&self.epsilon)
    }

    /// `max_a' Q(s', a')` for class `class`: the best candidate value the
    /// latest greedy decision saw.
    #[inline]
    pub fn best_next(&self, class: u32) -> f64 {
        load_f64(&self.best_next[class as usize % self.best_next.len()])
    }

    /// Left behind by a greedy decision: the best value among its candidates.
    #[inline]
    pub fn observe_best(&self, class: u32, value: f64) {
        store_f64(
            &self.best_next[class as usize % self.best_next.len()],
            value,
        );
    }

    /// One episode: the TD step for cell `s` of `row` with reward `r`;
    /// advances the epsilon schedule. Returns the new value.
    pub fn learn(&self, row: &QRow, s: usize, r: f64) -> f64 {
        self.learn_at(row, s, r, self.config.alpha).0
    }

    /// [`Learner::learn`] with learning rate `alpha`: the router raises it
    /// for an outcome that ends a long silence, which old values should not
    /// outweigh (see `Lease::complete`). Returns the new value and the TD
    /// error (`r + gamma * max_next - q`, how much better the outcome was
    /// than the value expected).
    pub fn learn_at(&self, row: &QRow, s: usize, r: f64, alpha: f64) -> (f64, f64) {
        let c = &self.config;
        let class = (s / STATES) as u32;
        let q = self.value(row, s);
        let max_next = self.best_next(class);
        let new = row.learn(s, q, r, max_next, alpha, c.gamma);
        let error = r + c.gamma * max_next - q;
        // the step's size joins the average (racing updates may lose one
        // sample of it: the average is advisory)
        let step = (new - q).abs();
        if step.is_finite() {
            let old = self.noise();
            store_f64(&self.noise, old + NOISE_WEIGHT * (step - old));
        }
        let mine = self.episodes.add(1);
        // The schedule moves by less than a percent per episode: recomputing
        // it (a `powf`, and the sum of the counter's stripes) every 16
        // episodes of a thread is as good and costs 1/16.
        if mine % 16 == 0 {
            store_f64(&self.epsilon, c.epsilon_at(self.episodes()));
        }
        (new, error)
    }

    /// What an idle agent's value drifts toward while its news ages (see
    /// `Agent::aged`): a little above the best value decisions see now, so
    /// that a stale agent is tried again once its drift has covered the gap
    /// between what it was learned to be worth and the best; the worse it
    /// was learned to be, the later. (Drifting toward the optimistic prior
    /// of an unmeasured agent, far above every learned value, had every
    /// stale agent tried again within about one `stale_after` of the last,
    /// slow ones included: at 400 tasks a second against agents of 8 ms,
    /// probes of agents of 400 ms cost a third of the mean latency.)
    #[inline]
    pub fn aging_target(&self, class: u32) -> f64 {
        self.best_next(class) + AGING_MARGIN
    }

    /// Continues the epsilon schedule from `episodes` (a loaded model).
    pub fn resume(&self, episodes: u64) {
        self.episodes.set(episodes.min(i64::MAX as u64) as i64);
        store_f64(&self.epsilon, self.config.epsilon_at(episodes));
    }

    /// Forgets everything learned: every row given, and the schedule.
    pub fn reset<'a>(&self, rows: impl Iterator<Item = &'a QRow>) {
        for row in rows {
            row.reset(&self.config);
        }
        for b in self.best_next.iter() {
            store_f64(b, self.config.best_prior());
        }
        store_f64(&self.noise, 0.0);
        self.episodes.set(0);
        store_f64(&self.epsilon, self.config.epsilon_at(0));
    }
}

/// One saved row: the agent id and, per state, (value, visits).
pub type SavedRow = (Vec<u8>, Vec<(f64, u32)>);

/// A live row with its agent id.
pub type IdRow = (Box<[u8]>, QRow);

/// Rows by agent id: those of registered agents and, up to a bound, of agents
/// that left, so that an agent coming back finds what it learned.
///
/// Ids come from outside, so the index hashes them with a key drawn per
/// store. Each dormant row carries its place in the line of dormant rows, so
/// that an agent coming back leaves the line in O(log n), whatever its
/// length.
#[derive(Debug)]
pub struct QStore {
    rows: Mutex<StoreInner>,
    max_dormant: usize,
    /// The priors every row starts from (one router, one configuration).
    priors: OnceLock<Arc<[f64]>>,
}

#[derive(Debug)]
struct StoreInner {
    rows: hashbrown::HashMap<Box<[u8]>, Stored, RandomState>,
    /// Ids of rows whose agent left, by the order they left in.
    dormant: BTreeMap<u64, Box<[u8]>>,
    next: u64,
}

#[derive(Debug)]
struct Stored {
    row: QRow,
    /// Its key in `dormant` while its agent is away.
    dormant: Option<u64>,
}

impl StoreInner {
    fn new() -> StoreInner {
        StoreInner {
            rows: hashbrown::HashMap::with_hasher(RandomState::new()),
            dormant: BTreeMap::new(),
            next: 0,
        }
    }

    /// Puts the row of `id` at the end of the dormant line.
    fn send_away(&mut self, id: &[u8]) {
        if let Some(stored) = self.rows.get_mut(id)
            && stored.dormant.is_none()
        {
            stored.dormant = Some(self.next);
            self.dormant.insert(self.next, id.into());
            self.next += 1;
        }
    }

    /// Drops the rows that left first until at most `max` are dormant.
    fn trim(&mut self, max: usize) {
        while self.dormant.len() > max {
            if let Some((_, id)) = self.dormant.pop_first() {
                self.rows.remove(&id);
            }
        }
    }
}

impl QStore {
    pub fn new(max_dormant: usize) -> QStore {
        QStore {
            rows: Mutex::new(StoreInner::new()),
            max_dormant: max_dormant.min(MAX_DORMANT_ROWS),
            priors: OnceLock::new(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The row of `id`, made at the priors if there is none (its cells on
    /// its first write, see [`QRow::lazy`]).
    pub fn checkout(&self, id: &[u8], config: &QConfig) -> QRow {
        let mut inner = self.inner();
        let inner = &mut *inner;
        if let Some(stored) = inner.rows.get_mut(id) {
            if let Some(at) = stored.dormant.take() {
                inner.dormant.remove(&at);
            }
            return stored.row.clone();
        }
        let row = QRow::lazy(Arc::clone(self.priors.get_or_init(|| priors(config))));
        inner.rows.insert(
            id.into(),
            Stored {
                row: row.clone(),
                dormant: None,
            },
        );
        row
    }

    /// Marks the row of `id` as belonging to an agent that left.
    pub fn release(&self, id: &[u8]) {
        let mut inner = self.inner();
        inner.send_away(id);
        inner.trim(self.max_dormant);
    }

    /// Rows of agents that left, kept for their return.
    pub fn dormant(&self) -> usize {
        self.inner().dormant.len()
    }

    /// Drops every row (the router that owns the store is gone).
    pub fn clear(&self) {
        *self.inner() = StoreInner::new();
    }

    /// Every row with its id, sorted by id.
    pub fn rows(&self) -> Vec<IdRow> {
        let inner = self.inner();
        let mut v: Vec<_> = inner
            .rows
            .iter()
            .map(|(k, s)| (k.clone(), s.row.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Copies `values` (row-major, `row_len` per id) into the rows of `ids`,
    /// creating dormant rows for ids not registered.
    pub fn load(&self, entries: Vec<SavedRow>, config: &QConfig) {
        let mut inner = self.inner();
        for (id, cells) in entries {
            let row = match inner.rows.get(id.as_slice()) {
                Some(s) => s.row.clone(),
                None => {
                    let row = QRow::new(config);
                    let stored = Stored {
                        row: row.clone(),
                        dormant: None,
                    };
                    inner.rows.insert(id.as_slice().into(), stored);
                    inner.send_away(&id);
                    row
                }
            };
            for (i, (v, n)) in cells.into_iter().enumerate().take(row.len()) {
                row.set(i, v, n);
            }
        }
        inner.trim(self.max_dormant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_index_round_trips_and_covers_99_states() {
        let mut seen = std::collections::HashSet::new();
        for class in 0..2 {
            for l in 0..11u8 {
                for s in 0..3u8 {
                    for t in 0..3u8 {
                        let st = State {
                            load_level: l,
                            success: s,
                            latency: t,
                            class,
                        };
                        assert_eq!(State::from_index(st.index()), st);
                        seen.insert(st.index());
                    }
                }
            }
        }
        assert_eq!(seen.len(), 2 * STATES);
        assert_eq!(STATES, 99);
    }

    #[test]
    fn buckets_follow_the_thresholds() {
        let c = QConfig::default();
        let st = c.state(0, 1.0, 0.0, 0);
        assert_eq!((st.load_level, st.success, st.latency), (0, 2, 0));
        let st = c.state(3, 0.9, 50_000.0, 0);
        assert_eq!((st.load_level, st.success, st.latency), (3, 1, 1));
        let st = c.state(25, 0.5, 200_001.0, 0);
        assert_eq!((st.load_level, st.success, st.latency), (10, 0, 2));
        let c20 = QConfig {
            max_concurrent: 20,
            ..QConfig::default()
        };
        assert_eq!(c20.state(5, 1.0, 0.0, 0).load_level, 2);
    }

    #[test]
    fn the_indexer_agrees_with_the_state() {
        for mc in [1u32, 3, 7, 10, 20, 64] {
            let c = QConfig {
                max_concurrent: mc,
                task_classes: 3,
                ..QConfig::default()
            };
            for class in 0..3 {
                let ix = c.indexer(class);
                for in_flight in 0..80u32 {
                    for (sr, lat) in [(1.0, 0.0), (0.9, 60_000.0), (0.5, 1e6), (0.97, 49_999.0)] {
                        let st = c.state(in_flight, sr, lat, class);
                        assert_eq!(ix.index(in_flight, c.condition(sr, lat)), st.index());
                    }
                }
            }
        }
    }

    #[test]
    fn td_update_stays_finite_for_any_input() {
        let extreme = [
            0.0,
            1.0,
            -1.66,
            1.0e308,
            -1.0e308,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        for q in extreme {
            for r in extreme {
                for m in extreme {
                    for a in extreme {
                        for g in extreme {
                            let v = td_update(q, r, m, a, g);
                            assert!(v.is_finite() && v.abs() <= Q_LIMIT, "{q} {r} {m} {a} {g}");
                        }
                    }
                }
            }
        }
        // the report's overflow
        assert!(td_update(1.0e308, 0.0, -1.0e308, -1.0e308, -1.66).is_finite());
    }

    #[test]
    fn reward_follows_the_design() {
        assert!((reward(10_000.0, true, 50_000.0, 200_000.0) - 0.99).abs() < 1e-12);
        assert!((reward(100_000.0, true, 50_000.0, 200_000.0) + 0.1).abs() < 1e-12);
        assert!((reward(300_000.0, true, 50_000.0, 200_000.0) + 1.3).abs() < 1e-12);
        assert_eq!(reward(1.0, false, 50_000.0, 200_000.0), ERROR_REWARD);
    }

    /// A row checked out of the store has no cells until it is written: it
    /// reads as the priors (every visit 0), forgetting or resetting it does
    /// nothing, and it costs a few dozen bytes instead of 12 a state.
    #[test]
    fn a_row_makes_its_cells_on_its_first_write() {
        let c = QConfig::default();
        let store = QStore::new(10);
        let row = store.checkout(b"never", &c);
        assert!(!row.is_written());
        assert_eq!(row.len(), c.row_len());
        for i in 0..row.len() {
            assert_eq!(row.value(i), c.prior(State::from_index(i)));
            assert_eq!(row.visits(i), 0);
        }
        row.forget_condition(0);
        row.reset(&c);
        assert!(!row.is_written());
        let small = row.heap_bytes();
        assert!(small < 100, "{small} bytes");
        // the same as a row made at once, for decisions
        let eager = QRow::new(&c);
        assert!(eager.is_written());
        let learner = Learner::new(c.clone());
        for i in 0..row.len() {
            assert_eq!(learner.value(&row, i), learner.value(&eager, i));
        }
        // the first update makes the cells, shared with the store's copy
        let (a, _) = learner.learn_at(&row, 5, 1.0, c.alpha);
        let (b, _) = learner.learn_at(&eager, 5, 1.0, c.alpha);
        assert_eq!(a, b);
        assert!(row.is_written());
        assert_eq!(store.checkout(b"never", &c).visits(5), 1);
        assert_eq!(row.heap_bytes(), small + 12 * c.row_len());
    }

    #[test]
    fn priors_order_states_sensibly() {
        let c = QConfig::default();
        let at = |l, s, t| {
            c.prior(State {
                load_level: l,
                success: s,
                latency: t,
                class: 0,
            })
        };
        assert!(at(0, 2, 0) > at(0, 2, 1));
        assert!(at(0, 2, 1) > at(0, 2, 2));
        assert!(at(0, 2, 0) > at(5, 2, 0));
        assert!(at(0, 2, 0) > at(0, 0, 0));
    }

    #[test]
    fn epsilon_schedules_start_at_epsilon_and_reach_the_floor() {
        for schedule in [
            EpsilonSchedule::Exponential,
            EpsilonSchedule::Linear,
            EpsilonSchedule::Cosine,
        ] {
            let c = QConfig {
                schedule,
                ..QConfig::default()
            };
            assert!((c.epsilon_at(0) - 0.1).abs() < 1e-12);
            let mut prev = 1.0;
            for n in (0..2000).step_by(50) {
                let e = c.epsilon_at(n);
                assert!(e <= prev + 1e-12, "{schedule:?} rises at {n}");
                prev = e;
            }
            assert!((c.epsilon_at(100_000) - 0.001).abs() < 1e-9, "{schedule:?}");
        }
        let flat = QConfig {
            epsilon_decay: 1.0,
            ..QConfig::default()
        };
        assert_eq!(flat.epsilon_at(10_000), 0.1);
    }

    #[test]
    fn store_keeps_rows_of_agents_that_left_up_to_a_bound() {
        let c = QConfig::default();
        let store = QStore::new(2);
        let a = store.checkout(b"a", &c);
        a.set(0, 42.0, 1);
        store.release(b"a");
        assert_eq!(store.checkout(b"a", &c).value(0), 42.0);
        for id in [b"a", b"b", b"c"] {
            store.checkout(id, &c);
            store.release(id);
        }
        // a was released first and the bound is 2: gone
        assert_ne!(store.checkout(b"a", &c).value(0), 42.0);
    }

    #[test]
    fn a_row_is_in_the_dormant_line_once_and_leaves_it_on_return() {
        let c = QConfig::default();
        let store = QStore::new(3);
        for id in [&b"a"[..], b"b", b"c"] {
            store.checkout(id, &c).set(0, 7.0, 1);
        }
        // released twice (a removal reported twice): still one place
        store.release(b"a");
        store.release(b"a");
        store.release(b"b");
        assert_eq!(store.dormant(), 2);
        // b comes back: it leaves the line; c leaves; a and c are dormant
        store.checkout(b"b", &c);
        store.release(b"c");
        assert_eq!(store.dormant(), 2);
        // two more leave: the bound of 3 drops a, the oldest, and keeps c
        for id in [&b"d"[..], b"e"] {
            store.checkout(id, &c);
            store.release(id);
        }
        assert_eq!(store.dormant(), 3);
        assert_eq!(store.checkout(b"c", &c).value(0), 7.0);
        assert_eq!(store.checkout(b"b", &c).value(0), 7.0);
        assert_ne!(store.checkout(b"a", &c).value(0), 7.0);
        // a release of an id with no row keeps nothing
        store.release(b"never");
        assert_eq!(store.dormant(), 2);
    }
}
