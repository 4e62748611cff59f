//! Workloads of the simulator: agents, arrivals, timeouts, and phases that
//! change agents while the run goes on. Built-in ones by name, others from
//! JSON (the same shape `--print-workload` shows).

use serde::{Deserialize, Serialize};

use crate::error::FlowError;

fn default_spread() -> f64 {
    0.3
}

/// A group of identical agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentGroup {
    pub name: String,
    pub count: usize,
    /// Mean latency with nothing else in flight, ms.
    pub mean_ms: f64,
    /// Sigma of the log-normal noise around the mean (0: none).
    #[serde(default = "default_spread")]
    pub spread: f64,
    /// Share of tasks answered with an error.
    #[serde(default)]
    pub failure_rate: f64,
    /// Latency grows by this share of the mean per task already in flight.
    #[serde(default)]
    pub load_sensitivity: f64,
}

/// A change to some agents of a group from `at_s` until `until_s` (or the end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub at_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_s: Option<f64>,
    pub group: String,
    /// How many agents of the group, from its first (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_sensitivity: Option<f64>,
}

impl Phase {
    /// A phase of every agent of `group` from `at_s` until `until_s`, that
    /// changes nothing yet (fill in what it changes).
    pub fn of(at_s: f64, until_s: Option<f64>, group: &str) -> Phase {
        Phase {
            at_s,
            until_s,
            group: group.into(),
            agents: None,
            mean_ms: None,
            failure_rate: None,
            spread: None,
            load_sensitivity: None,
        }
    }
}

/// A whole simulated run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Tasks arriving in the run.
    pub tasks: usize,
    /// Mean arrivals per second (a Poisson process).
    pub arrival_rate: f64,
    /// A task not answered within this is a timeout.
    pub task_timeout_ms: f64,
    pub agents: Vec<AgentGroup>,
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// Which tasks "after the change" measures (default: 2 000 tasks, after
    /// 2 000 allowed to adapt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_change: Option<AfterChange>,
}

/// The tasks "after the change" counts: from the first task arriving after
/// the first phase starts, `settle` are skipped and the next `tasks` count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterChange {
    pub settle: usize,
    pub tasks: usize,
}

impl Workload {
    pub fn from_json(text: &str) -> Result<Workload, FlowError> {
        let w: Workload =
            serde_json::from_str(text).map_err(|e| FlowError::WorkloadJson(e.to_string()))?;
        w.validate()?;
        Ok(w)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Refuses what would make the run meaningless or loop forever.
    pub fn validate(&self) -> Result<(), FlowError> {
        let bad = |m: String| Err(FlowError::InvalidWorkload(m));
        if self.tasks == 0 {
            return bad("tasks must be positive".into());
        }
        if !(self.arrival_rate > 0.0 && self.arrival_rate.is_finite()) {
            return bad("arrival_rate must be positive".into());
        }
        if !(self.task_timeout_ms > 0.0 && self.task_timeout_ms.is_finite()) {
            return bad("task_timeout_ms must be positive".into());
        }
        if self.agents.iter().map(|g| g.count).sum::<usize>() == 0 {
            return bad("at least one agent is needed".into());
        }
        for g in &self.agents {
            if !(g.mean_ms >= 0.0 && g.mean_ms.is_finite()) {
                return bad(format!("group {}: mean_ms must be >= 0", g.name));
            }
            if !(0.0..=1.0).contains(&g.failure_rate) {
                return bad(format!("group {}: failure_rate must be in [0, 1]", g.name));
            }
            let spread_ok = (0.0..5.0).contains(&g.spread);
            let sensitivity_ok = g.load_sensitivity >= 0.0 && g.load_sensitivity.is_finite();
            if !spread_ok || !sensitivity_ok {
                return bad(format!(
                    "group {}: spread and load_sensitivity must be >= 0",
                    g.name
                ));
            }
        }
        for p in &self.phases {
            if !self.agents.iter().any(|g| g.name == p.group) {
                return bad(format!("phase names unknown group {}", p.group));
            }
            if p.until_s.is_some_and(|u| u <= p.at_s) {
                return bad(format!("phase of {}: until_s must be after at_s", p.group));
            }
        }
        Ok(())
    }

    /// Every instant, in seconds, at which a phase starts or ends, in order.
    pub fn change_times_s(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self
            .phases
            .iter()
            .flat_map(|p| std::iter::once(p.at_s).chain(p.until_s))
            .collect();
        t.sort_by(f64::total_cmp);
        t.dedup();
        t
    }

    /// The built-in workloads, by name.
    pub fn builtin(name: &str) -> Option<Workload> {
        let group =
            |name: &str, count, mean_ms, spread, failure_rate, load_sensitivity| AgentGroup {
                name: name.into(),
                count,
                mean_ms,
                spread,
                failure_rate,
                load_sensitivity,
            };
        match name {
            "heterogeneous" => Some(Workload {
                name: name.into(),
                description: "60 agents: 15 fast, 20 normal, 15 slow, 10 fast but flaky; \
                              latency grows with load"
                    .into(),
                tasks: 30_000,
                arrival_rate: 800.0,
                task_timeout_ms: 1000.0,
                agents: vec![
                    group("fast", 15, 8.0, 0.3, 0.0, 0.25),
                    group("normal", 20, 40.0, 0.3, 0.0, 0.25),
                    group("slow", 15, 150.0, 0.3, 0.0, 0.25),
                    group("flaky", 10, 15.0, 0.5, 0.15, 0.25),
                ],
                phases: vec![],
                after_change: None,
            }),
            "degradation" => Some(Workload {
                name: name.into(),
                description: "11 equal agents; one turns 2 s slow from 15 s to 45 s; \
                              tasks time out at 1 s"
                    .into(),
                tasks: 12_000,
                arrival_rate: 200.0,
                task_timeout_ms: 1000.0,
                agents: vec![group("normal", 11, 20.0, 0.3, 0.0, 0.2)],
                phases: vec![Phase {
                    at_s: 15.0,
                    until_s: Some(45.0),
                    group: "normal".into(),
                    agents: Some(1),
                    mean_ms: Some(2000.0),
                    failure_rate: None,
                    spread: None,
                    load_sensitivity: None,
                }],
                after_change: None,
            }),
            "shift" => Some(Workload {
                name: name.into(),
                description: "20 agents; the 10 fast and the 10 slow swap speeds half way".into(),
                tasks: 20_000,
                arrival_rate: 500.0,
                task_timeout_ms: 1000.0,
                agents: vec![
                    group("a", 10, 10.0, 0.3, 0.0, 0.2),
                    group("b", 10, 80.0, 0.3, 0.0, 0.2),
                ],
                phases: vec![
                    Phase {
                        at_s: 20.0,
                        until_s: None,
                        group: "a".into(),
                        agents: None,
                        mean_ms: Some(80.0),
                        failure_rate: None,
                        spread: None,
                        load_sensitivity: None,
                    },
                    Phase {
                        at_s: 20.0,
                        until_s: None,
                        group: "b".into(),
                        agents: None,
                        mean_ms: Some(10.0),
                        failure_rate: None,
                        spread: None,
                        load_sensitivity: None,
                    },
                ],
                after_change: None,
            }),
            "recovery" => Some(Workload {
                name: name.into(),
                description: "3 agents of 25 ms carry the load while 17 others answer in \
                              150 ms; at 60 s the slow ones recover to 8 ms, and nothing else \
                              changes: only trying them again shows it. 2 agents of 12 ms \
                              fail 30% of tasks throughout"
                    .into(),
                tasks: 6_000,
                arrival_rate: 50.0,
                task_timeout_ms: 1000.0,
                agents: vec![
                    group("steady", 3, 25.0, 0.3, 0.0, 0.2),
                    group("recovering", 17, 150.0, 0.3, 0.0, 0.2),
                    group("flaky", 2, 12.0, 0.3, 0.3, 0.2),
                ],
                phases: vec![Phase {
                    at_s: 60.0,
                    until_s: None,
                    group: "recovering".into(),
                    agents: None,
                    mean_ms: Some(8.0),
                    failure_rate: None,
                    spread: None,
                    load_sensitivity: None,
                }],
                // the 2 000 tasks right after the change: nothing forced a
                // look at the recovered agents, so this is how fast one is taken
                after_change: Some(AfterChange {
                    settle: 0,
                    tasks: 2000,
                }),
            }),
            "large" => Some(Workload {
                name: name.into(),
                description: "1 000 agents: 250 fast, 350 normal, 250 slow, 150 fast but \
                              flaky; at 5 s, 50 of the fast ones turn 2 s slow (tasks time \
                              out at 1 s). Past 256 candidates the scanning strategies look at \
                              a sample: this is where that shows"
                    .into(),
                tasks: 100_000,
                arrival_rate: 10_000.0,
                task_timeout_ms: 1000.0,
                agents: vec![
                    group("fast", 250, 8.0, 0.3, 0.0, 0.25),
                    group("normal", 350, 40.0, 0.3, 0.0, 0.25),
                    group("slow", 250, 150.0, 0.3, 0.0, 0.25),
                    group("flaky", 150, 15.0, 0.5, 0.15, 0.25),
                ],
                phases: vec![Phase {
                    at_s: 5.0,
                    until_s: None,
                    group: "fast".into(),
                    agents: Some(50),
                    mean_ms: Some(2000.0),
                    failure_rate: None,
                    spread: None,
                    load_sensitivity: None,
                }],
                after_change: Some(AfterChange {
                    settle: 5000,
                    tasks: 40_000,
                }),
            }),
            "comeback" => Some(Workload {
                name: name.into(),
                description: "30 agents: 6 favourites of 30 ms carry the load (and stay \
                              acceptable) while 24 others answer in 400 ms; at 30 s the 24 \
                              turn 8 ms. Nothing forces a look at them: a recovered agent's \
                              first fast answers must raise it, not sink it"
                    .into(),
                tasks: 36_000,
                arrival_rate: 400.0,
                task_timeout_ms: 1000.0,
                agents: vec![
                    group("favourite", 6, 30.0, 0.3, 0.0, 0.2),
                    group("slow", 24, 400.0, 0.3, 0.0, 0.2),
                ],
                phases: vec![Phase {
                    mean_ms: Some(8.0),
                    ..Phase::of(30.0, None, "slow")
                }],
                after_change: Some(AfterChange {
                    settle: 1000,
                    tasks: 4000,
                }),
            }),
            "flap" => Some(Workload {
                name: name.into(),
                description: "30 agents: 15 of 8 ms and 15 of 400 ms swap speeds at 20 s and \
                              swap back at 40 s"
                    .into(),
                tasks: 24_000,
                arrival_rate: 400.0,
                task_timeout_ms: 1000.0,
                agents: vec![
                    group("a", 15, 8.0, 0.3, 0.0, 0.2),
                    group("b", 15, 400.0, 0.3, 0.0, 0.2),
                ],
                phases: vec![
                    Phase {
                        mean_ms: Some(400.0),
                        ..Phase::of(20.0, Some(40.0), "a")
                    },
                    Phase {
                        mean_ms: Some(8.0),
                        ..Phase::of(20.0, Some(40.0), "b")
                    },
                ],
                after_change: Some(AfterChange {
                    settle: 1000,
                    tasks: 4000,
                }),
            }),
            "fat_tail" => Some(Workload {
                name: name.into(),
                description: "30 agents: 20 of 25 ms, and 10 whose median is 10 ms but 2% of \
                              whose answers take over 300 ms (a mean of 40 ms); at 30 s their \
                              tail is fixed (10 ms, no tail)"
                    .into(),
                tasks: 24_000,
                arrival_rate: 400.0,
                task_timeout_ms: 1000.0,
                agents: vec![
                    group("steady", 20, 25.0, 0.3, 0.0, 0.2),
                    // log-normal: median = mean * exp(-s^2 / 2) = 10 ms, and
                    // P(> 300 ms) = P(Z > ln(30) / 1.66) = 2%
                    group("tailed", 10, 39.6, 1.66, 0.0, 0.2),
                ],
                phases: vec![Phase {
                    mean_ms: Some(10.0),
                    spread: Some(0.3),
                    ..Phase::of(30.0, None, "tailed")
                }],
                after_change: Some(AfterChange {
                    settle: 1000,
                    tasks: 5000,
                }),
            }),
            "cascade" => Some(Workload {
                name: name.into(),
                description: "30 agents of 20 ms; at 20 s 9 of them (30%) hang (tasks time \
                              out at 1 s), then come back one every 2 s from 30 s"
                    .into(),
                tasks: 60_000,
                arrival_rate: 1000.0,
                task_timeout_ms: 1000.0,
                agents: std::iter::once(group("steady", 21, 20.0, 0.3, 0.0, 0.2))
                    .chain((1..=9).map(|i| group(&format!("hang{i}"), 1, 20.0, 0.3, 0.0, 0.2)))
                    .collect(),
                phases: (1..=9)
                    .map(|i| Phase {
                        mean_ms: Some(5000.0),
                        ..Phase::of(20.0, Some(28.0 + 2.0 * f64::from(i)), &format!("hang{i}"))
                    })
                    .collect(),
                // 0.4 s to adapt after each change, then the 1.6 s until
                // the next one
                after_change: Some(AfterChange {
                    settle: 400,
                    tasks: 1600,
                }),
            }),
            _ => None,
        }
    }

    pub const BUILTIN: &'static [&'static str] = &[
        "heterogeneous",
        "degradation",
        "shift",
        "recovery",
        "large",
        "comeback",
        "flap",
        "fat_tail",
        "cascade",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_round_trip_through_json() {
        for name in Workload::BUILTIN {
            let w = Workload::builtin(name).unwrap();
            w.validate().unwrap();
            assert_eq!(Workload::from_json(&w.to_json()).unwrap(), w);
        }
    }

    #[test]
    fn bad_workloads_are_refused_with_a_reason() {
        let mut w = Workload::builtin("shift").unwrap();
        w.phases[0].group = "zzz".into();
        assert!(matches!(w.validate(), Err(FlowError::InvalidWorkload(m)) if m.contains("zzz")));
        assert!(matches!(
            Workload::from_json("{\"name\": 1}"),
            Err(FlowError::WorkloadJson(_))
        ));
        let mut w = Workload::builtin("shift").unwrap();
        w.agents[0].failure_rate = 2.0;
        assert!(w.validate().is_err());
    }
}
