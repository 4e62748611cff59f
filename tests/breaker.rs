//! The circuit breaker against a model of its state machine: random
//! sequences of calls, outcomes, clock moves and resets, through the router's
//! breaker API on a manual clock.

use std::collections::VecDeque;

use erlmcp_flow_core::{AgentSpec, BreakerConfig, BreakerState, Clock, Router, RouterConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Allow,
    Record { ok: bool, latency_us: u64 },
    Advance(u64),
    Reset,
    State,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Allow),
        6 => (any::<bool>(), 0u64..3000).prop_map(|(ok, latency_us)| Op::Record { ok, latency_us }),
        2 => prop_oneof![Just(1_000u64), Just(500_000), Just(1_000_000), Just(2_000_000)].prop_map(Op::Advance),
        1 => Just(Op::Reset),
        1 => Just(Op::State),
    ]
}

/// The specification, written plainly.
#[derive(Debug)]
enum ModelState {
    Closed(VecDeque<bool>),
    Open { until: u64 },
    HalfOpen { probes: u32, successes: u32 },
}

struct Model {
    c: BreakerConfig,
    window: usize,
    now: u64,
    state: ModelState,
}

impl Model {
    fn due(&mut self) {
        if let ModelState::Open { until } = self.state {
            if self.now >= until {
                self.state = ModelState::HalfOpen {
                    probes: 0,
                    successes: 0,
                };
            }
        }
    }

    fn allow(&mut self) -> bool {
        self.due();
        match &mut self.state {
            ModelState::Closed(_) => true,
            ModelState::Open { .. } => false,
            ModelState::HalfOpen { probes, .. } => {
                if *probes < self.c.half_open_max {
                    *probes += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    fn record(&mut self, ok: bool, latency_us: u64) {
        let failed = !ok || self.c.slow_call_us.is_some_and(|s| latency_us >= s);
        let open = ModelState::Open {
            until: self.now + self.c.open_timeout_us,
        };
        match &mut self.state {
            ModelState::Closed(w) => {
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
                    self.state = open;
                }
            }
            ModelState::HalfOpen { probes, successes } => {
                *probes = probes.saturating_sub(1);
                if failed {
                    self.state = open;
                } else {
                    *successes += 1;
                    if *successes >= self.c.success_threshold {
                        self.state = ModelState::Closed(VecDeque::new());
                    }
                }
            }
            ModelState::Open { .. } => {}
        }
    }

    fn state(&mut self) -> BreakerState {
        self.due();
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
        let mut m = Model { c, window: 6, now: 0, state: ModelState::Closed(VecDeque::new()) };
        for op in ops {
            match op {
                Op::Allow => {
                    let (granted, _) = r.breaker_allow(b"a").unwrap();
                    prop_assert_eq!(granted, m.allow());
                }
                Op::Record { ok, latency_us } => {
                    r.breaker_record(b"a", ok, latency_us).unwrap();
                    m.record(ok, latency_us);
                }
                Op::Advance(us) => {
                    r.clock().advance(us);
                    m.now += us;
                }
                Op::Reset => {
                    r.breaker_reset(b"a").unwrap();
                    m.state = ModelState::Closed(VecDeque::new());
                }
                Op::State => {}
            }
            let (state, _, _) = r.breaker_state(b"a").unwrap();
            prop_assert_eq!(state, m.state());
        }
    }
}
