//! The circuit breaker against a model of its state machine: random
//! sequences of calls, outcomes, clock moves and resets, through the router's
//! breaker API on a manual clock.

use std::collections::VecDeque;

use erlmcp_flow_core::{
    Admission, AgentSpec, BreakerConfig, BreakerState, Clock, Router, RouterConfig,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Ask for a call; a granted permit is held.
    Allow,
    /// Record an outcome with the oldest permit held, or without one.
    Record {
        ok: bool,
        latency_us: u64,
    },
    /// Drop the oldest permit held unrecorded (its holder died).
    Drop,
    Advance(u64),
    Reset,
    State,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Allow),
        6 => (any::<bool>(), 0u64..3000).prop_map(|(ok, latency_us)| Op::Record { ok, latency_us }),
        1 => Just(Op::Drop),
        2 => prop_oneof![Just(1_000u64), Just(500_000), Just(1_000_000), Just(2_000_000)].prop_map(Op::Advance),
        1 => Just(Op::Reset),
        1 => Just(Op::State),
    ]
}

/// The specification, written plainly.
#[derive(Debug)]
enum ModelState {
    Closed(VecDeque<bool>),
    Open {
        until: u64,
    },
    /// The probes out: (id, granted at).
    HalfOpen {
        out: Vec<(u32, u64)>,
        successes: u32,
    },
}

/// A permit as the model sees it: a plain call, or probe `id` of `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelPermit {
    Call,
    Probe { period: u32, id: u32 },
}

struct Model {
    c: BreakerConfig,
    window: usize,
    now: u64,
    state: ModelState,
    /// Bumped whenever a half-open period ends or begins (and on reset).
    period: u32,
    next_probe: u32,
}

impl Model {
    fn enter(&mut self, state: ModelState) {
        self.period += 1;
        self.state = state;
    }

    fn open(&mut self) {
        self.enter(ModelState::Open {
            until: self.now + self.c.open_timeout_us,
        });
    }

    fn due(&mut self) {
        if let ModelState::Open { until } = self.state {
            if self.now >= until {
                self.enter(ModelState::HalfOpen {
                    out: Vec::new(),
                    successes: 0,
                });
            }
        }
    }

    /// A probe out for the whole open timeout counts as failed.
    fn expire(&mut self) -> bool {
        let timeout = self.c.open_timeout_us;
        let now = self.now;
        let overdue = matches!(&self.state, ModelState::HalfOpen { out, .. }
            if out.iter().any(|&(_, at)| now >= at + timeout));
        if overdue {
            self.open();
        }
        overdue
    }

    fn allow(&mut self) -> Option<ModelPermit> {
        self.due();
        if matches!(self.state, ModelState::HalfOpen { .. }) && self.expire() {
            return None;
        }
        let (period, now, max) = (self.period, self.now, self.c.half_open_max as usize);
        match &mut self.state {
            ModelState::Closed(_) => Some(ModelPermit::Call),
            ModelState::Open { .. } => None,
            ModelState::HalfOpen { out, .. } if out.len() < max => {
                let id = self.next_probe;
                self.next_probe += 1;
                out.push((id, now));
                Some(ModelPermit::Probe { period, id })
            }
            ModelState::HalfOpen { .. } => None,
        }
    }

    fn record(&mut self, permit: ModelPermit, ok: bool, latency_us: u64) {
        let failed = !ok || self.c.slow_call_us.is_some_and(|s| latency_us >= s);
        let current = self.period;
        match (&mut self.state, permit) {
            (ModelState::Closed(w), ModelPermit::Call) => {
                w.push_back(failed);
                if w.len() > self.window {
                    w.pop_front();
                }
                let calls = w.len() as u32;
                let failures = w.iter().filter(|f| **f).count() as u32;
                if calls >= self.c.min_requests
                    && failures >= self.c.failure_threshold
                    && f64::from(failures) >= self.c.failure_rate * f64::from(calls)
                {
                    self.open();
                }
            }
            (ModelState::HalfOpen { out, successes }, ModelPermit::Probe { period, id })
                if period == current && out.iter().any(|&(p, _)| p == id) =>
            {
                out.retain(|&(p, _)| p != id);
                if failed {
                    self.open();
                } else {
                    *successes += 1;
                    if *successes >= self.c.success_threshold {
                        self.enter(ModelState::Closed(VecDeque::new()));
                    }
                }
            }
            _ => {}
        }
    }

    fn drop_permit(&mut self, permit: ModelPermit) {
        let current = self.period;
        if let (ModelState::HalfOpen { out, .. }, ModelPermit::Probe { period, id }) =
            (&mut self.state, permit)
        {
            if period == current {
                out.retain(|&(p, _)| p != id);
            }
        }
    }

    fn probes(&self) -> u32 {
        match &self.state {
            ModelState::HalfOpen { out, .. } => out.len() as u32,
            _ => 0,
        }
    }

    /// One step, as the breaker's `state` takes it.
    fn state(&mut self) -> BreakerState {
        match self.state {
            ModelState::Open { .. } => self.due(),
            ModelState::HalfOpen { .. } => {
                self.expire();
            }
            ModelState::Closed(_) => {}
        }
        match self.state {
            ModelState::Closed(_) => BreakerState::Closed,
            ModelState::Open { .. } => BreakerState::Open,
            ModelState::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

fn config() -> BreakerConfig {
    BreakerConfig {
        min_requests: 4,
        failure_threshold: 3,
        failure_rate: 0.5,
        open_timeout_us: 1_000_000,
        half_open_max: 2,
        success_threshold: 2,
        slow_call_us: Some(2_000),
        window: erlmcp_flow_core::WindowKind::Count(6),
        ..BreakerConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_breaker_follows_its_model(ops in proptest::collection::vec(op(), 1..120)) {
        let c = config();
        let r: Router<()> = Router::new(
            RouterConfig { breaker: c.clone(), ..RouterConfig::default() },
            Clock::manual(0),
        );
        r.agents().insert(AgentSpec::new("a", (), vec![b"x".to_vec()])).unwrap();
        let mut m = Model {
            c,
            window: 6,
            now: 0,
            state: ModelState::Closed(VecDeque::new()),
            period: 0,
            next_probe: 0,
        };
        let mut held = VecDeque::new();
        for op in ops {
            match op {
                Op::Allow => {
                    let (granted, _) = r.breaker_allow(b"a").unwrap();
                    let expected = m.allow();
                    match (granted, expected) {
                        (Admission::Denied, None) => {}
                        (Admission::Call, Some(ModelPermit::Call)) => {
                            held.push_back((None, ModelPermit::Call))
                        }
                        (Admission::Probe(g), Some(e)) if e != ModelPermit::Call => {
                            held.push_back((Some(g), e))
                        }
                        (granted, expected) => {
                            prop_assert!(false, "granted {granted:?}, the model {expected:?}")
                        }
                    }
                }
                Op::Record { ok, latency_us } => match held.pop_front() {
                    Some((Some(g), e)) => {
                        prop_assert!(g.record(ok, latency_us).is_some());
                        m.record(e, ok, latency_us);
                    }
                    // a plain call (held or not) is recorded by agent id
                    Some((None, _)) | None => {
                        r.breaker_record(b"a", ok, latency_us).unwrap();
                        m.record(ModelPermit::Call, ok, latency_us);
                    }
                },
                Op::Drop => {
                    if let Some((g, e)) = held.pop_front() {
                        drop(g);
                        m.drop_permit(e);
                    }
                }
                Op::Advance(us) => {
                    r.clock().advance(us);
                    m.now += us;
                }
                Op::Reset => {
                    r.breaker_reset(b"a").unwrap();
                    m.enter(ModelState::Closed(VecDeque::new()));
                }
                Op::State => {}
            }
            let (state, probes, _) = r.breaker_state(b"a").unwrap();
            prop_assert_eq!(state, m.state());
            prop_assert_eq!(probes, m.probes());
        }
    }
}
