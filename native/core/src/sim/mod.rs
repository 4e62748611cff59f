//! A deterministic, seeded discrete-event simulator that replays the same task
//! arrivals through each strategy of the real [`Router`] (and through an
//! oracle that knows every agent's true current latency), on a manual clock.
//!
//! Each task is drawn once per seed (arrival time, latency noise, failure
//! coin), so every contender faces exactly the same tasks; only where they go
//! differs. An agent's latency is `mean * (1 + load_sensitivity * in_flight) *
//! noise`, `in_flight` counting every task it is still working on, including
//! those whose caller already timed out. The caller sees the answer at
//! `min(latency, timeout)`.

pub mod plot;
pub mod workload;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp, StandardNormal};
use serde::Serialize;

use crate::clock::Clock;
use crate::routing::agents::AgentSpec;
use crate::routing::router::{Lease, Request, Router};
use crate::routing::strategy::Strategy;
use crate::shared::{Outcome, RouterConfig};
pub use workload::{AfterChange, AgentGroup, Phase, Workload};

/// Who routes the tasks of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    Strategy(Strategy),
    /// Consistent hashing with the bounded-load option at a factor of 1.25.
    BoundedHash,
    /// Knows each agent's true mean, load and failure rate; sends every task
    /// where the expected cost to the caller is lowest: the expected latency,
    /// plus, for the share `p` of tasks that fail, a task timeout (what a
    /// failure costs a caller that retries after it). So it uses an
    /// unreliable agent only when it saves more than that, and its success
    /// rate is reported beside its latency (an oracle of `latency / (1 - p)`
    /// sent a third of the tasks to agents failing a third of them).
    Oracle,
}

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::Strategy(s) => s.name(),
            Contender::BoundedHash => "consistent_hash_bounded",
            Contender::Oracle => "oracle",
        }
    }

    pub fn from_name(name: &str) -> Option<Contender> {
        if name == "oracle" {
            Some(Contender::Oracle)
        } else if name == "consistent_hash_bounded" {
            Some(Contender::BoundedHash)
        } else {
            Strategy::from_name(name).map(Contender::Strategy)
        }
    }

    /// Every strategy, consistent hashing with bounded load, then the oracle.
    pub fn all() -> Vec<Contender> {
        Strategy::ALL
            .iter()
            .map(|s| Contender::Strategy(*s))
            .chain([Contender::BoundedHash, Contender::Oracle])
            .collect()
    }
}

/// Latency and success figures of a set of tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub tasks: usize,
    pub success_rate: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Figures {
    fn of(samples: &[(f64, bool)]) -> Figures {
        let mut lat: Vec<f64> = samples.iter().map(|s| s.0).collect();
        lat.sort_by(f64::total_cmp);
        let n = lat.len();
        let pct = |p: f64| {
            if n == 0 {
                0.0
            } else {
                lat[((p * n as f64).ceil() as usize).clamp(1, n) - 1]
            }
        };
        Figures {
            tasks: n,
            success_rate: if n == 0 {
                0.0
            } else {
                samples.iter().filter(|s| s.1).count() as f64 / n as f64
            },
            mean_ms: if n == 0 {
                0.0
            } else {
                lat.iter().sum::<f64>() / n as f64
            },
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
        }
    }
}

/// The result of one contender on one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    pub contender: String,
    pub all: Figures,
    /// Tasks sent to each agent group, in workload order.
    pub by_group: Vec<(String, usize)>,
    /// The tasks arriving in the `window` after the first phase change plus
    /// `settle` tasks (how well the contender has adapted by then), if the
    /// workload has phases.
    pub after_change: Option<Figures>,
    /// The same window after every change (each phase's start and end, in
    /// time order; a window stops at the next change), with the second the
    /// change came at.
    pub after_changes: Vec<(f64, Figures)>,
    /// The run second by second, by the arrival time of its tasks.
    #[serde(skip)]
    pub timeline: Vec<Second>,
}

/// The tasks that arrived in one second of simulated time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Second {
    /// Its start, seconds from the run's start.
    pub at_s: u64,
    pub tasks: usize,
    /// Sum of the latencies seen by callers, ms.
    pub latency_ms: f64,
    pub succeeded: usize,
    /// Tasks sent to each agent group, in workload order.
    pub by_group: Vec<usize>,
}

/// How `after_change` is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Tasks after the change that are not counted: the time allowed to adapt.
    pub settle: usize,
    /// Tasks counted after that.
    pub len: usize,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            settle: 2000,
            len: 2000,
        }
    }
}

/// One task as drawn for a seed.
#[derive(Debug, Clone, Copy)]
struct Task {
    arrival_us: u64,
    /// Standard normal draw for the log-normal noise.
    noise: f64,
    /// Uniform draw for the failure coin.
    coin: f64,
    /// Hash of a sticky key (tasks come from 1000 keys).
    key: u64,
}

fn draw_tasks(w: &Workload, seed: u64) -> Vec<Task> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let gap = Exp::new(w.arrival_rate / 1e6).unwrap_or_else(|_| Exp::new(1.0).expect("rate 1"));
    let mut t = 0.0f64;
    (0..w.tasks)
        .map(|_| {
            t += gap.sample(&mut rng);
            let key_id: u64 = rng.random_range(0..1000);
            Task {
                arrival_us: t as u64,
                noise: StandardNormal.sample(&mut rng),
                coin: rng.random::<f64>(),
                key: crate::routing::ring::key_hash(&key_id.to_le_bytes()),
            }
        })
        .collect()
}

/// The true state of one simulated agent.
#[derive(Debug, Clone)]
struct SimAgent {
    group: usize,
    index_in_group: usize,
    mean_ms: f64,
    spread: f64,
    failure_rate: f64,
    load_sensitivity: f64,
    /// Tasks it is working on (including ones whose caller gave up).
    busy: u32,
}

impl SimAgent {
    fn of(g: &AgentGroup, group: usize, index_in_group: usize) -> SimAgent {
        SimAgent {
            group,
            index_in_group,
            mean_ms: g.mean_ms,
            spread: g.spread,
            failure_rate: g.failure_rate,
            load_sensitivity: g.load_sensitivity,
            busy: 0,
        }
    }

    fn expected_ms(&self) -> f64 {
        self.mean_ms * (1.0 + self.load_sensitivity * f64::from(self.busy))
    }

    fn latency_ms(&self, noise: f64) -> f64 {
        let s = self.spread;
        self.expected_ms() * (s * noise - s * s / 2.0).exp()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Phases are applied before arrivals at the same instant.
    Phase(usize, bool),
    Arrival(usize),
    /// The caller of task `.0` gets its answer.
    Answer(usize),
    /// The agent finishes the work of a task.
    Free(usize),
}

struct Run<'a> {
    w: &'a Workload,
    agents: Vec<SimAgent>,
    /// The group values to restore when a phase ends.
    originals: Vec<SimAgent>,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
}

impl Run<'_> {
    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, e)));
    }

    fn apply_phase(&mut self, i: usize, start: bool) {
        let p = &self.w.phases[i];
        let Some(gi) = self.w.agents.iter().position(|g| g.name == p.group) else {
            return;
        };
        let limit = p.agents.unwrap_or(usize::MAX);
        for (a, orig) in self.agents.iter_mut().zip(&self.originals) {
            if a.group != gi || a.index_in_group >= limit {
                continue;
            }
            if start {
                a.mean_ms = p.mean_ms.unwrap_or(a.mean_ms);
                a.failure_rate = p.failure_rate.unwrap_or(a.failure_rate);
                a.spread = p.spread.unwrap_or(a.spread);
                a.load_sensitivity = p.load_sensitivity.unwrap_or(a.load_sensitivity);
            } else {
                a.mean_ms = orig.mean_ms;
                a.failure_rate = orig.failure_rate;
                a.spread = orig.spread;
                a.load_sensitivity = orig.load_sensitivity;
            }
        }
    }
}

/// A task on its way: its lease (strategies only) and the answer to come.
struct Placed {
    lease: Option<Lease<usize>>,
    answer_in: u64,
    outcome: Outcome,
}

/// Runs `contender` on `workload` with `seed`. Without `resilience` the
/// router's breakers and bulkheads are off, so that the strategies are
/// compared on their own; with it they are as `config` says.
pub fn run(
    workload: &Workload,
    contender: Contender,
    seed: u64,
    config: &RouterConfig,
    window: Window,
    resilience: bool,
) -> RunResult {
    let tasks = draw_tasks(workload, seed);
    let mut agents = Vec::new();
    for (gi, g) in workload.agents.iter().enumerate() {
        for i in 0..g.count {
            agents.push(SimAgent::of(g, gi, i));
        }
    }
    let mut config = config.clone();
    if !resilience {
        // Strategies alone: no breaker opens and no bulkhead fills.
        config.breaker.enabled = false;
        config.max_concurrent = u32::MAX;
    }
    if contender == Contender::BoundedHash {
        config.hash_balance_factor = Some(1.25);
    }
    let router: Router<usize> = Router::new(config, Clock::manual(0));
    for (i, a) in agents.iter().enumerate() {
        let id = format!("{}-{}", workload.agents[a.group].name, a.index_in_group);
        router
            .agents()
            .insert(AgentSpec::new(id, i, vec![b"sim".to_vec()]))
            .expect("fresh ids");
    }
    let mut run = Run {
        w: workload,
        originals: agents.clone(),
        agents,
        events: BinaryHeap::new(),
        seq: 0,
    };
    for (i, p) in workload.phases.iter().enumerate() {
        run.push((p.at_s * 1e6) as u64, Event::Phase(i, true));
        if let Some(u) = p.until_s {
            run.push((u * 1e6) as u64, Event::Phase(i, false));
        }
    }
    for (i, t) in tasks.iter().enumerate() {
        run.push(t.arrival_us, Event::Arrival(i));
    }
    let timeout_us = (workload.task_timeout_ms * 1000.0) as u64;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x005e_ed0f_f10e);
    let caps: &[&[u8]] = &[b"sim"];
    let strategy = match contender {
        Contender::Strategy(s) => Some(s),
        Contender::BoundedHash => Some(Strategy::ConsistentHash),
        Contender::Oracle => None,
    };
    let mut placed: Vec<Option<Placed>> = (0..tasks.len()).map(|_| None).collect();
    let mut samples: Vec<(f64, bool)> = vec![(0.0, false); tasks.len()];
    let mut group_of: Vec<usize> = vec![0; tasks.len()];
    let mut by_group = vec![0usize; workload.agents.len()];
    let change_at_us = workload.phases.iter().map(|p| (p.at_s * 1e6) as u64).min();

    while let Some(Reverse((now, _, event))) = run.events.pop() {
        match event {
            Event::Phase(i, start) => run.apply_phase(i, start),
            Event::Arrival(ti) => {
                let set = router
                    .clock()
                    .advance(now.saturating_sub(router.clock().now_us()));
                debug_assert!(set.is_some());
                let task = tasks[ti];
                let (agent, lease) = match strategy {
                    Some(s) => {
                        let req = Request {
                            key: Some(task.key),
                            ..Request::new(caps, s)
                        };
                        let lease = router.decide(&req, &mut rng).expect("agents registered");
                        (*lease.agent().payload(), Some(lease))
                    }
                    None => (oracle_pick(&run.agents, workload.task_timeout_ms), None),
                };
                let a = &mut run.agents[agent];
                by_group[a.group] += 1;
                group_of[ti] = a.group;
                let latency_us = (a.latency_ms(task.noise) * 1000.0) as u64;
                let ok = task.coin >= a.failure_rate;
                a.busy += 1;
                run.push(now + latency_us, Event::Free(agent));
                let (answer_in, outcome) = if latency_us > timeout_us {
                    (timeout_us, Outcome::Timeout)
                } else if ok {
                    (latency_us, Outcome::Success)
                } else {
                    (latency_us, Outcome::Failure)
                };
                placed[ti] = Some(Placed {
                    lease,
                    answer_in,
                    outcome,
                });
                run.push(now + answer_in, Event::Answer(ti));
            }
            Event::Answer(ti) => {
                router
                    .clock()
                    .advance(now.saturating_sub(router.clock().now_us()));
                if let Some(p) = placed[ti].take() {
                    if let Some(lease) = p.lease {
                        lease.complete(p.outcome);
                    }
                    samples[ti] = (p.answer_in as f64 / 1000.0, p.outcome == Outcome::Success);
                }
            }
            Event::Free(agent) => run.agents[agent].busy -= 1,
        }
    }

    let window = workload.after_change.map_or(window, |a| Window {
        settle: a.settle,
        len: a.tasks,
    });
    let after_change = change_at_us.map(|at| {
        let first = tasks.partition_point(|t| t.arrival_us < at);
        let from = (first + window.settle).min(samples.len());
        let to = (from + window.len).min(samples.len());
        Figures::of(&samples[from..to])
    });
    let changes = workload.change_times_s();
    let after_changes = changes
        .iter()
        .enumerate()
        .map(|(i, &at_s)| {
            let index = |s: f64| tasks.partition_point(|t| t.arrival_us < (s * 1e6) as u64);
            let first = index(at_s);
            let next = changes.get(i + 1).map_or(samples.len(), |&n| index(n));
            let from = (first + window.settle).min(next);
            let to = (from + window.len).min(next);
            (at_s, Figures::of(&samples[from..to]))
        })
        .collect();
    let seconds = tasks.last().map_or(0, |t| t.arrival_us / 1_000_000 + 1);
    let mut timeline: Vec<Second> = (0..seconds)
        .map(|s| Second {
            at_s: s,
            tasks: 0,
            latency_ms: 0.0,
            succeeded: 0,
            by_group: vec![0; workload.agents.len()],
        })
        .collect();
    for ((t, &(ms, ok)), &g) in tasks.iter().zip(&samples).zip(&group_of) {
        let sec = &mut timeline[(t.arrival_us / 1_000_000) as usize];
        sec.tasks += 1;
        sec.latency_ms += ms;
        sec.succeeded += usize::from(ok);
        sec.by_group[g] += 1;
    }
    RunResult {
        contender: contender.name().to_string(),
        timeline,
        all: Figures::of(&samples),
        by_group: workload
            .agents
            .iter()
            .map(|g| g.name.clone())
            .zip(by_group)
            .collect(),
        after_change,
        after_changes,
    }
}

fn oracle_pick(agents: &[SimAgent], timeout_ms: f64) -> usize {
    let cost = |a: &SimAgent| {
        let lat = a.expected_ms();
        if lat > timeout_ms {
            // Every answer would be a timeout.
            return f64::INFINITY;
        }
        lat + a.failure_rate * timeout_ms
    };
    let mut best = 0;
    for (i, a) in agents.iter().enumerate() {
        if cost(a) < cost(&agents[best]) {
            best = i;
        }
    }
    best
}

/// Runs every contender of `contenders` on `workload` with `seed` (see [`run`]).
pub fn compare(
    workload: &Workload,
    contenders: &[Contender],
    seed: u64,
    config: &RouterConfig,
    window: Window,
    resilience: bool,
) -> Vec<RunResult> {
    contenders
        .iter()
        .map(|c| run(workload, *c, seed, config, window, resilience))
        .collect()
}

/// The results as an aligned text table. When the oracle ran, each
/// contender is also compared with it, on latency (its mean over the
/// oracle's) and on success (the difference in percentage points), over the
/// whole run and after the change.
pub fn format_table(workload: &Workload, seed: u64, results: &[RunResult]) -> String {
    let mut out = format!(
        "workload {} (seed {seed}): {} tasks at {}/s, timeout {} ms\n",
        workload.name, workload.tasks, workload.arrival_rate, workload.task_timeout_ms
    );
    let with_window = results.iter().any(|r| r.after_change.is_some());
    let oracle = results
        .iter()
        .find(|r| r.contender == Contender::Oracle.name());
    out.push_str(&format!(
        "{:<24} {:>9} {:>9} {:>9} {:>9}",
        "strategy", "success", "mean ms", "p50 ms", "p99 ms"
    ));
    if oracle.is_some() {
        out.push_str(&format!(" {:>9} {:>9}", "x oracle", "pp"));
    }
    if with_window {
        out.push_str(&format!(" | {:>8} {:>9}", "after:ms", "success"));
        if oracle.is_some() {
            out.push_str(&format!(" {:>9} {:>9}", "x oracle", "pp"));
        }
    }
    out.push('\n');
    // against the oracle: mean latency as a multiple, success in points
    let versus = |f: &Figures, o: &Figures| {
        format!(
            " {:>9.2} {:>+9.2}",
            f.mean_ms / o.mean_ms,
            100.0 * (f.success_rate - o.success_rate)
        )
    };
    for r in results {
        let f = &r.all;
        out.push_str(&format!(
            "{:<24} {:>8.2}% {:>9.2} {:>9.2} {:>9.2}",
            r.contender,
            100.0 * f.success_rate,
            f.mean_ms,
            f.p50_ms,
            f.p99_ms
        ));
        if let Some(o) = oracle {
            out.push_str(&versus(f, &o.all));
        }
        if let Some(a) = &r.after_change {
            out.push_str(&format!(
                " | {:>8.2} {:>8.2}%",
                a.mean_ms,
                100.0 * a.success_rate
            ));
            if let Some(oa) = oracle.and_then(|o| o.after_change.as_ref()) {
                out.push_str(&versus(a, oa));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(name: &str, tasks: usize) -> Workload {
        let mut w = Workload::builtin(name).unwrap();
        w.tasks = tasks;
        w
    }

    #[test]
    fn runs_are_deterministic_per_seed() {
        let w = small("heterogeneous", 3000);
        let c = RouterConfig::default();
        for contender in Contender::all() {
            let a = run(&w, contender, 7, &c, Window::default(), false);
            let b = run(&w, contender, 7, &c, Window::default(), false);
            assert_eq!(a, b, "{}", contender.name());
            assert_eq!(a.all.tasks, 3000);
        }
        let other = run(
            &w,
            Contender::Strategy(Strategy::QLearning),
            8,
            &c,
            Window::default(),
            false,
        );
        assert_ne!(
            other,
            run(
                &w,
                Contender::Strategy(Strategy::QLearning),
                7,
                &c,
                Window::default(),
                false
            )
        );
    }

    #[test]
    fn the_oracle_beats_round_robin() {
        let w = small("heterogeneous", 5000);
        let c = RouterConfig::default();
        let rr = run(
            &w,
            Contender::Strategy(Strategy::RoundRobin),
            1,
            &c,
            Window::default(),
            false,
        );
        let oracle = run(&w, Contender::Oracle, 1, &c, Window::default(), false);
        assert!(oracle.all.mean_ms < rr.all.mean_ms / 2.0);
        assert!(oracle.all.success_rate >= rr.all.success_rate);
    }

    #[test]
    fn a_phase_changes_agents_for_its_span() {
        let w = small("degradation", 12_000);
        let rr = run(
            &w,
            Contender::Strategy(Strategy::RoundRobin),
            1,
            &RouterConfig::default(),
            Window::default(),
            false,
        );
        // 1 of 11 agents times out every task for half the run
        let lost = 1.0 - rr.all.success_rate;
        assert!((0.03..0.07).contains(&lost), "{lost}");
        assert!(rr.after_change.is_some());
    }
}
