//! Load-balancing strategies: given the candidates of one decision, pick one.
//!
//! Every strategy sees the same candidate list (the agents holding the
//! required capabilities, in slot order) and returns an index into it. None of
//! them locks: they read the agents' atomics and the snapshot.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use rand::{Rng, RngExt};

use crate::error::FlowError;
use crate::hot::{Hot, HotCell};
use crate::learning::{ERROR_REWARD, StateIndexer};
use crate::routing::agents::{Agent, Candidates, Snapshot};
use crate::shared::Shared;

/// The strategies a decision can use, named in configuration and requests by
/// [`Strategy::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Cycles through the candidates in slot order.
    RoundRobin,
    /// Fewest tasks in flight; ties broken at random.
    LeastConnections,
    /// At random, with probability proportional to the agent's static weight
    /// times `exp(Q / temperature)` (softmax over the learned values; with no
    /// learning yet, plain static weights).
    Weighted,
    /// The agent owning the request's key on the hash ring, optionally
    /// skipping agents above the bounded-load cap.
    ConsistentHash,
    /// Power of two choices: two random candidates, the one with the lower
    /// peak-EWMA latency times (in flight + 1).
    P2cEwma,
    /// Epsilon-greedy over the learned values of each candidate's state.
    QLearning,
}

impl Strategy {
    pub const ALL: &'static [Strategy] = &[
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::Weighted,
        Strategy::ConsistentHash,
        Strategy::P2cEwma,
        Strategy::QLearning,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastConnections => "least_connections",
            Strategy::Weighted => "weighted",
            Strategy::ConsistentHash => "consistent_hash",
            Strategy::P2cEwma => "p2c_ewma",
            Strategy::QLearning => "q_learning",
        }
    }

    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.iter().copied().find(|s| s.name() == name)
    }
}

/// Cost of a p2c candidate with no latency sample yet, per task in flight:
/// an idle new agent is tried at once, a busy one waits for its first sample.
const P2C_UNMEASURED_PENALTY_US: f64 = 1e9;

/// What a pick needs to know about the decision besides the candidates.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a, P> {
    pub snapshot: &'a Snapshot<P>,
    pub shared: &'a Shared,
    /// Hash of the sticky key (consistent hashing).
    pub key: Option<u64>,
    pub class: u32,
    pub now_us: u64,
}

impl<P> PickContext<'_, P> {
    #[inline]
    fn agent(&self, slot: u32) -> &Agent<P> {
        self.snapshot.agent(slot)
    }

    /// The learned value of an agent in its current state, by an indexer
    /// made once per decision.
    #[inline]
    fn q_value(&self, indexer: &StateIndexer, agent: &Agent<P>) -> f64 {
        agent.current_value(indexer, self.class)
    }

    /// [`PickContext::q_value`] as Q-learning sees it: aged when the agent's
    /// news is stale (see `Router::age`).
    #[inline]
    fn aged_q_value(&self, indexer: &StateIndexer, agent: &Agent<P>) -> f64 {
        agent.aged(self.q_value(indexer, agent), self.now_us)
    }

    /// Whether a pick among `n` candidates looks at a sample.
    #[inline]
    fn sampled(&self, n: usize) -> bool {
        self.shared
            .config()
            .sample_above
            .is_some_and(|limit| n > limit)
    }

    fn indexer(&self) -> StateIndexer {
        self.shared.learner().config().indexer(self.class)
    }

    /// Whether the agent in `slot` would take a task now: room in its
    /// bulkhead and a breaker that admits calls. A closed breaker is one byte
    /// of the hot cell; only an open or half-open one reads the breaker.
    #[inline]
    fn admits_hot(&self, slot: u32, hot: &Hot) -> bool {
        let config = self.shared.config();
        hot.in_flight() < config.max_concurrent
            && (hot.breaker() == 0
                || self
                    .agent(slot)
                    .breaker()
                    .admits(hot, &config.breaker, self.now_us))
    }

    #[inline]
    fn admits(&self, slot: u32) -> bool {
        self.admits_hot(slot, self.snapshot.hot()[slot as usize].get())
    }

    /// Why no candidate admits a task: all full, or all broken.
    fn refusal(&self, candidates: &[u32]) -> FlowError {
        let config = self.shared.config();
        let some_breaker_admits = candidates.iter().any(|&s| {
            let hot = self.snapshot.hot()[s as usize].get();
            hot.breaker() == 0
                || self
                    .agent(s)
                    .breaker()
                    .admits(hot, &config.breaker, self.now_us)
        });
        if some_breaker_admits {
            FlowError::Overloaded
        } else {
            FlowError::NoAgentsAvailable
        }
    }

    /// The first candidate at or after `start` (cyclically) that admits a task.
    fn next_admitted(&self, candidates: &[u32], start: usize) -> Result<usize, FlowError> {
        let n = candidates.len();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.admits(candidates[i]))
            .ok_or_else(|| self.refusal(candidates))
    }
}

/// Candidates drawn (uniformly, with replacement) for a sampled pick.
pub const SAMPLE: usize = 64;
/// Recent distinct winners of Q-learning's greedy pick, added to its sample:
/// once the best agent has been sampled and won, it stays in view.
const ELITE: usize = 16;

/// Per-router state the strategies share across decisions.
#[derive(Debug, Default)]
pub(crate) struct StrategyState {
    round_robin: AtomicUsize,
    /// Where Q-learning's next exploring pick goes.
    explore: AtomicUsize,
    /// Q-learning's recent greedy winners among large candidate sets, as
    /// slots. Slots are renumbered when the table is compacted: a stale entry
    /// then names another agent, which is only one more candidate looked at.
    elite: [AtomicU32; ELITE],
    elite_next: AtomicUsize,
}

thread_local! {
    /// The slots of a sampled pick.
    static SAMPLED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on [`SAMPLE`] slots drawn uniformly from `candidates`, followed
/// by those of `extra` that are candidates.
fn with_sample<P, R: Rng + ?Sized, T>(
    cands: Candidates<'_>,
    cx: &PickContext<'_, P>,
    rng: &mut R,
    extra: &[AtomicU32],
    f: impl FnOnce(&[u32], &mut R) -> T,
) -> T {
    let candidates = cands.slots;
    SAMPLED.with(|cell| {
        let mut sample = cell.take();
        sample.clear();
        sample.extend((0..SAMPLE).map(|_| candidates[rng.random_range(0..candidates.len())]));
        let live = cx.snapshot.hot().len() as u32;
        sample.extend(
            extra
                .iter()
                .map(|e| e.load(Ordering::Relaxed))
                .filter(|&slot| {
                    if cands.all {
                        slot < live
                    } else {
                        candidates.binary_search(&slot).is_ok()
                    }
                }),
        );
        let out = f(&sample, rng);
        cell.replace(sample);
        out
    })
}

impl StrategyState {
    /// The slot of the chosen candidate (`cands` is never empty).
    #[inline]
    pub(crate) fn pick<P, R: Rng + ?Sized>(
        &self,
        strategy: Strategy,
        cands: Candidates<'_>,
        cx: &PickContext<'_, P>,
        rng: &mut R,
    ) -> Result<u32, FlowError> {
        let candidates = cands.slots;
        debug_assert!(!candidates.is_empty());
        // Agents whose breaker is open or whose bulkhead is full are skipped
        // by every strategy; when none is left, the refusal says why.
        Ok(match strategy {
            // One cursor for the whole router: over a fixed candidate set it
            // visits every candidate once per cycle, so loads differ by at most one.
            //
            // The cursor is read and written with plain loads and stores, not
            // a locked add: two threads deciding at the same instant may read
            // the same position and send both tasks to one agent, which
            // shifts the rotation by one and costs nothing else; a locked add
            // would cost a third of a decision on every call.
            Strategy::RoundRobin => {
                let n = candidates.len();
                let c = self.round_robin.load(Ordering::Relaxed);
                let i = cx.next_admitted(candidates, if c < n { c } else { c % n })?;
                self.round_robin
                    .store(if i + 1 == n { 0 } else { i + 1 }, Ordering::Relaxed);
                candidates[i]
            }
            Strategy::LeastConnections => {
                let in_flight = |_, h: &Hot| f64::from(h.in_flight());
                let (slot, cost) = if cx.sampled(candidates.len()) {
                    // power of d choices: the least loaded of a sample; a
                    // sample where none admits a task falls back to the scan
                    match with_sample(cands, cx, rng, &[], |s, rng| {
                        argmin_slots(s, cx, rng, in_flight)
                    }) {
                        (slot, cost) if cost.is_finite() => (slot, cost),
                        _ => argmin_hot(cands, cx, rng, in_flight),
                    }
                } else {
                    argmin_hot(cands, cx, rng, in_flight)
                };
                admitted(candidates, cx, (slot, cost))?
            }
            Strategy::Weighted => {
                let drawn = if cx.sampled(candidates.len()) {
                    with_sample(cands, cx, rng, &[], |s, rng| {
                        softmax_pick(s, cx, rng).ok().map(|i| s[i])
                    })
                } else {
                    None
                };
                match drawn {
                    Some(slot) => slot,
                    None => candidates[softmax_pick(candidates, cx, rng)?],
                }
            }
            Strategy::ConsistentHash => consistent_hash(cands, cx)?,
            Strategy::P2cEwma => candidates[p2c(candidates, cx, rng)?],
            Strategy::QLearning => {
                let learner = cx.shared.learner();
                if rng.random::<f64>() < learner.epsilon() {
                    // Exploring picks walk the candidates in turn instead of
                    // drawing them: every candidate gets the same share as
                    // with a uniform draw, but all of them are measured again
                    // within one round, where draws would leave some waiting
                    // for several rounds (the coupon collector's problem).
                    let c = self.explore.fetch_add(1, Ordering::Relaxed);
                    candidates[cx.next_admitted(candidates, c % candidates.len())?]
                } else {
                    let (slot, best) = if cx.sampled(candidates.len()) {
                        let sampled = with_sample(cands, cx, rng, &self.elite, |s, rng| {
                            q_greedy(
                                Candidates {
                                    slots: s,
                                    all: false,
                                },
                                cx,
                                rng,
                            )
                        });
                        match sampled {
                            (slot, best) if best.is_finite() => {
                                self.remember(slot);
                                (slot, best)
                            }
                            _ => q_greedy(cands, cx, rng),
                        }
                    } else {
                        q_greedy(cands, cx, rng)
                    };
                    admitted(candidates, cx, (slot, best))?
                }
            }
        })
    }
}

impl StrategyState {
    /// Keeps a greedy winner in view, unless it is already.
    fn remember(&self, slot: u32) {
        if self.elite.iter().all(|e| e.load(Ordering::Relaxed) != slot) {
            let i = self.elite_next.fetch_add(1, Ordering::Relaxed) % ELITE;
            self.elite[i].store(slot, Ordering::Relaxed);
        }
    }
}

/// How many of the learner's typical steps ([`crate::learning::Learner::noise`])
/// two learned values must be apart before Q-learning's greedy choice takes
/// the difference for knowledge rather than chance.
const NOISE_BAND_STEPS: f64 = 3.0;

/// A busy agent that gave no news for more than this many times its usual
/// latency is judged by its silence (see [`q_greedy`]).
const SILENCE_FACTOR: f64 = 3.0;

/// Members of the noise band, besides the best, whose costs Q-learning's
/// greedy choice compares (see [`q_greedy`]).
const TIE_SAMPLE: usize = 8;

/// Q-learning's greedy choice among `cands` (every cell of the snapshot in
/// all-mode, else the slots listed, repeats allowed): the slot, and the best
/// value negated (infinity when no candidate takes a task).
///
/// Three passes at most, the first always, the others over few candidates:
///
/// 1. the best (aged) learned value among the candidates that take a task;
/// 2. the candidates within the learner's noise of it (a few of its typical
///    steps: the learner cannot tell them apart), the best and up to
///    [`TIE_SAMPLE`] more met from a random place, each first judged by its
///    silence: a busy agent that has given no news for more than
///    [`SILENCE_FACTOR`] times its usual latency is valued in the state its
///    silence puts it in (its latency bucket from the silence), so that an
///    agent that stopped answering stops taking tasks before its first slow
///    answer comes back. Among those still within the band, the cheapest by
///    peak-EWMA latency times (in flight + 1), decayed with the time since
///    its last sample (Linkerd's and Finagle's cost): what separates agents
///    of one latency bucket that learned values cannot;
/// 3. only when every one of them fell out by its silence: the best value
///    of all candidates, each judged by its silence.
///
/// The best learned value of the first pass is what the next TD targets
/// add ([`crate::learning::Learner::observe_best`]), unless it is an aged
/// one (an agent nobody asked for a while: a probe, which says nothing of
/// the values learned).
fn q_greedy<P, R: Rng + ?Sized>(
    cands: Candidates<'_>,
    cx: &PickContext<'_, P>,
    rng: &mut R,
) -> (u32, f64) {
    let ix = cx.indexer();
    if cx.class == 0 {
        // the default class: the value of each agent's current state is
        // cached in its hot cell
        let target = cx.shared.learner().aging_target(0);
        q_greedy_by(cands, cx, rng, &ix, |_, h| h.aged_value(target))
    } else {
        q_greedy_by(cands, cx, rng, &ix, |slot, _| {
            cx.aged_q_value(&ix, cx.agent(slot))
        })
    }
}

/// [`q_greedy`] with `value` the (aged) learned value of an agent's state.
#[inline(always)]
fn q_greedy_by<P, R: Rng + ?Sized>(
    cands: Candidates<'_>,
    cx: &PickContext<'_, P>,
    rng: &mut R,
    ix: &StateIndexer,
    value: impl Fn(u32, &Hot) -> f64 + Copy,
) -> (u32, f64) {
    let learner = cx.shared.learner();
    let config = learner.config();
    let (first, neg_best) = argmin_hot(cands, cx, rng, |slot, h| -value(slot, h));
    if !neg_best.is_finite() {
        return (first, neg_best);
    }
    let best = -neg_best;
    if cx.q_value(ix, cx.agent(first)) >= best {
        learner.observe_best(cx.class, best);
    }
    let floor = best - NOISE_BAND_STEPS * learner.noise();
    let hot = cx.snapshot.hot();
    let max = cx.shared.config().max_concurrent;
    let n = if cands.all {
        hot.len()
    } else {
        cands.slots.len()
    };
    let slot_at = |i: usize| {
        if cands.all { i as u32 } else { cands.slots[i] }
    };
    let takes =
        |slot: u32, h: &Hot| h.in_flight() < max && (h.breaker() == 0 || cx.admits_hot(slot, h));
    let stale = cx.shared.config().stale_after_us;
    // a busy agent's value as its silence has it (never above what was
    // learned); an agent busy with a probe (its news was stale when it took
    // its task, and it has not answered yet) takes nothing more until it
    // answers, but when nothing else is left
    let judged = |slot: u32, h: &Hot, v: f64| {
        if h.in_flight() == 0 {
            return v;
        }
        let agent = cx.agent(slot);
        let stats = agent.stats();
        if stale > 0 && stats.probing(stale) {
            return f64::MIN;
        }
        match stats.silence_us(cx.now_us) {
            Some(silence) if silence as f64 > SILENCE_FACTOR * stats.ewma_latency_us().max(1.0) => {
                let cond = config.condition(stats.success_rate(), silence as f64);
                let index = ix.index(stats.in_flight(), cond);
                v.min(learner.value(agent.q_row(), index))
            }
            _ => v,
        }
    };
    let tau = cx.shared.config().ewma_decay_us;
    // the cost of a candidate in the band: peak-EWMA latency x (in flight +
    // 1), and a failure weighs what the learner's reward says it does (as
    // many seconds as a failed task's reward is below zero)
    let cost = |slot: u32, h: &Hot| {
        let stats = cx.agent(slot).stats();
        let pending = f64::from(h.in_flight());
        let failing = (1.0 - stats.success_rate()) * -ERROR_REWARD * 1e6;
        failing
            + match stats.peak_latency_us(cx.now_us, tau) {
                Some(latency) => latency * (pending + 1.0),
                None => pending * P2C_UNMEASURED_PENALTY_US,
            }
    };
    // the band's members looked at: the best one and up to TIE_SAMPLE more,
    // the first met from a random place (reading an agent's figures costs a
    // cache miss: a band of thousands of equals is sampled, as p2c samples)
    let mut sample = [first; TIE_SAMPLE + 1];
    let mut taken = 1;
    let start = if n > TIE_SAMPLE {
        rng.random_range(0..n)
    } else {
        0
    };
    for k in 0..n {
        if taken > TIE_SAMPLE {
            break;
        }
        let i = if start + k < n {
            start + k
        } else {
            start + k - n
        };
        let slot = slot_at(i);
        let h = hot[slot as usize].get();
        if slot != first && takes(slot, h) && value(slot, h) >= floor {
            sample[taken] = slot;
            taken += 1;
        }
    }
    let mut chosen = None;
    let mut cheapest = f64::INFINITY;
    let mut ties = 0u32;
    for &slot in &sample[..taken] {
        let h = hot[slot as usize].get();
        if !takes(slot, h) || judged(slot, h, value(slot, h)) < floor {
            continue;
        }
        let c = cost(slot, h);
        if c < cheapest {
            cheapest = c;
            chosen = Some(slot);
            ties = 1;
        } else if c == cheapest {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                chosen = Some(slot);
            }
        }
    }
    if let Some(slot) = chosen {
        return (slot, neg_best);
    }
    // every agent near the top has gone silent: the best of all, as their
    // silences have them
    let mut best_slot = first;
    let mut best_judged = f64::NEG_INFINITY;
    for i in 0..n {
        let slot = slot_at(i);
        let h = hot[slot as usize].get();
        if takes(slot, h) {
            let v = judged(slot, h, value(slot, h));
            if v > best_judged {
                best_judged = v;
                best_slot = slot;
            }
        }
    }
    (best_slot, -best_judged)
}

/// The index in `0..n` of the lowest `cost(i)` and that cost, ties broken
/// uniformly at random. One pass finds the lowest cost and counts its ties;
/// only when there are several does a second pass draw one of them, so a
/// decision costs one random number at most.
#[inline]
pub fn argmin_random_ties<R: Rng + ?Sized>(
    n: usize,
    rng: &mut R,
    mut cost: impl FnMut(usize) -> f64,
) -> (usize, f64) {
    let mut best = 0;
    let mut best_cost = f64::INFINITY;
    let mut ties = 0u32;
    for i in 0..n {
        let c = cost(i);
        if c < best_cost {
            best = i;
            best_cost = c;
            ties = 1;
        } else if c == best_cost {
            ties += 1;
        }
    }
    if ties > 1 {
        let mut k = rng.random_range(0..ties);
        // Costs are live figures: if one moved since the first pass the tie
        // is gone, and the first of them stays the answer.
        for i in best..n {
            if cost(i) == best_cost {
                if k == 0 {
                    return (i, best_cost);
                }
                k -= 1;
            }
        }
    }
    (best, best_cost)
}

/// The slot with the lowest `cost` of its hot cell and that cost, as
/// [`argmin_random_ties`], candidates that do not admit a task costing
/// infinity. The cells are read from the snapshot's dense array, by slot or,
/// when every agent is a candidate, in order (holes are dead cells, which
/// admit nothing).
#[inline]
fn argmin_hot<P, R: Rng + ?Sized>(
    cands: Candidates<'_>,
    cx: &PickContext<'_, P>,
    rng: &mut R,
    cost: impl Fn(u32, &Hot) -> f64,
) -> (u32, f64) {
    let hot = cx.snapshot.hot();
    // admits_hot with the bulkhead limit read once for the scan, and the
    // breaker asked only when it is not closed (rare)
    let max = cx.shared.config().max_concurrent;
    let priced = |slot: u32, h: &Hot| {
        let admitted = h.in_flight() < max && (h.breaker() == 0 || cx.admits_hot(slot, h));
        if admitted {
            cost(slot, h)
        } else {
            f64::INFINITY
        }
    };
    // every slot a candidate (every agent, or a list as long as the slots:
    // distinct and ascending, so 0..len): the cells in order, no indirection
    if cands.all || cands.slots.len() == hot.len() {
        argmin_cells(hot, rng, priced)
    } else {
        let candidates = cands.slots;
        let (i, cost) = argmin_random_ties(candidates.len(), rng, |i| {
            let slot = candidates[i];
            priced(slot, hot[slot as usize].get())
        });
        (candidates[i], cost)
    }
}

/// [`argmin_hot`] over `slots` (any slots of the snapshot, repeats allowed).
#[inline]
fn argmin_slots<P, R: Rng + ?Sized>(
    slots: &[u32],
    cx: &PickContext<'_, P>,
    rng: &mut R,
    cost: impl Fn(u32, &Hot) -> f64,
) -> (u32, f64) {
    let hot = cx.snapshot.hot();
    let max = cx.shared.config().max_concurrent;
    let (i, c) = argmin_random_ties(slots.len(), rng, |i| {
        let slot = slots[i];
        let h = hot[slot as usize].get();
        if h.in_flight() < max && (h.breaker() == 0 || cx.admits_hot(slot, h)) {
            cost(slot, h)
        } else {
            f64::INFINITY
        }
    });
    (slots[i], c)
}

/// [`argmin_random_ties`] over every cell of a snapshot, in order: the slot
/// of the lowest cost and that cost. Written over the slice's iterator, so
/// that the loop carries no bounds check and keeps its best in registers.
#[inline]
fn argmin_cells<R: Rng + ?Sized>(
    cells: &[HotCell],
    rng: &mut R,
    cost: impl Fn(u32, &Hot) -> f64,
) -> (u32, f64) {
    let mut best = 0u32;
    let mut best_cost = f64::INFINITY;
    let mut ties = 0u32;
    for (i, c) in cells.iter().enumerate() {
        let v = cost(i as u32, c.get());
        if v < best_cost {
            best = i as u32;
            best_cost = v;
            ties = 1;
        } else if v == best_cost {
            ties += 1;
        }
    }
    if ties > 1 {
        let mut k = rng.random_range(0..ties);
        // costs are live: if one moved since the first pass the tie is
        // gone, and the first of them stays the answer
        for (i, c) in cells.iter().enumerate().skip(best as usize) {
            if cost(i as u32, c.get()) == best_cost {
                if k == 0 {
                    return (i as u32, best_cost);
                }
                k -= 1;
            }
        }
    }
    (best, best_cost)
}

/// The slot of a scan's winner, or the refusal when even the winner costs
/// infinity (no candidate admits a task).
#[inline]
fn admitted<P>(
    candidates: &[u32],
    cx: &PickContext<'_, P>,
    (slot, cost): (u32, f64),
) -> Result<u32, FlowError> {
    if cost.is_finite() {
        Ok(slot)
    } else {
        Err(cx.refusal(candidates))
    }
}

/// Softmax weights `w * exp((q - q_max) / T)` of the candidates (shifted by
/// the maximum so that no exponential overflows); the probabilities are these
/// over their sum.
pub fn softmax_weights<P>(candidates: &[u32], cx: &PickContext<'_, P>, out: &mut Vec<f64>) {
    let t = cx.shared.learner().config().temperature;
    let ix = cx.indexer();
    out.clear();
    out.extend(candidates.iter().map(|&s| cx.q_value(&ix, cx.agent(s))));
    let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for (w, &s) in out.iter_mut().zip(candidates) {
        *w = if cx.admits(s) {
            cx.agent(s).weight() * ((*w - max) / t).exp()
        } else {
            0.0
        };
    }
}

fn softmax_pick<P, R: Rng + ?Sized>(
    candidates: &[u32],
    cx: &PickContext<'_, P>,
    rng: &mut R,
) -> Result<usize, FlowError> {
    thread_local! {
        static WEIGHTS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    WEIGHTS.with(|cell| {
        let mut weights = cell.borrow_mut();
        softmax_weights(candidates, cx, &mut weights);
        let total: f64 = weights.iter().sum();
        if total == 0.0 {
            return Err(cx.refusal(candidates));
        }
        if !total.is_finite() {
            return cx.next_admitted(candidates, rng.random_range(0..candidates.len()));
        }
        let mut target = rng.random::<f64>() * total;
        let mut last = 0;
        for (i, w) in weights.iter().enumerate() {
            if *w > 0.0 {
                if target < *w {
                    return Ok(i);
                }
                last = i;
            }
            target -= w;
        }
        // Rounding left the draw just past the end: the last admitted one.
        Ok(last)
    })
}

/// Points a consistent-hash walk looks at before it checks whether any
/// candidate would take the task at all.
const WALK_LIMIT: usize = 128;

fn consistent_hash<P>(cands: Candidates<'_>, cx: &PickContext<'_, P>) -> Result<u32, FlowError> {
    let key = cx.key.ok_or(FlowError::BadArg("sticky_key"))?;
    let candidates = cands.slots;
    let ring = cx.snapshot.ring();
    if !ring.is_built() {
        return Err(FlowError::RingNotBuilt);
    }
    let all = cands.all;
    let cap = cx.shared.config().hash_balance_factor.map(|factor| {
        let total: u64 = candidates
            .iter()
            .map(|&s| u64::from(cx.agent(s).stats().in_flight()))
            .sum();
        // Enough room for one more task at the mean, times the factor; some
        // candidate is always under it (their loads sum to less).
        (factor * (total + 1) as f64 / candidates.len() as f64).ceil() as u32
    });
    // in all-mode a hole's point is refused by its dead cell
    let takes =
        |slot: u32| cx.admits(slot) && cap.is_none_or(|c| cx.agent(slot).stats().in_flight() < c);
    let accept = |slot: u32| (all || candidates.binary_search(&slot).is_ok()) && takes(slot);
    match ring.walk(key, WALK_LIMIT, accept) {
        Ok(slot) => Ok(slot),
        // Far enough without a taker: if no candidate takes a task at all,
        // say so now (one pass over the candidates) rather than walking
        // every point of the ring; if one does, the walk reaches it.
        Err(true) if candidates.iter().any(|&s| takes(s)) => ring
            .walk(key, usize::MAX, accept)
            .map_err(|_| cx.refusal(candidates)),
        Err(_) => Err(cx.refusal(candidates)),
    }
}

fn p2c<P, R: Rng + ?Sized>(
    candidates: &[u32],
    cx: &PickContext<'_, P>,
    rng: &mut R,
) -> Result<usize, FlowError> {
    let n = candidates.len();
    // Two draws among the admitted: a refused draw moves to the next admitted
    // candidate, which keeps the choice uniform enough while few are refused.
    let a = cx.next_admitted(candidates, rng.random_range(0..n))?;
    if n == 1 {
        return Ok(a);
    }
    let mut b = rng.random_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    let b = cx.next_admitted(candidates, b)?;
    let tau = cx.shared.config().ewma_decay_us;
    let cost = |i: usize| {
        let agent = cx.agent(candidates[i]);
        let pending = f64::from(agent.stats().in_flight());
        match agent.stats().peak_latency_us(cx.now_us, tau) {
            Some(lat) => lat * (pending + 1.0),
            None => pending * P2C_UNMEASURED_PENALTY_US,
        }
    };
    let (ca, cb) = (cost(a), cost(b));
    Ok(if ca < cb || ca == cb && rng.random::<bool>() {
        a
    } else {
        b
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::from_name(s.name()), Some(*s));
        }
        assert_eq!(Strategy::from_name("nope"), None);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let mut rng = SmallRng::seed_from_u64(3);
        let c = [0, 1, 2, 3];
        let mut seen = [0; 4];
        for _ in 0..4000 {
            seen[argmin_random_ties(c.len(), &mut rng, |i| if c[i] == 0 { 1.0 } else { 0.0 }).0] +=
                1;
        }
        assert_eq!(seen[0], 0);
        for n in &seen[1..] {
            assert!((1100..1600).contains(n), "{seen:?}");
        }
    }
}
