//! The learner against shared vectors, the TD formula for any inputs, and
//! learning on a stationary two-agent problem.

use erlmcp_flow_core::learning::{QConfig, QRow, reward, td_update};
use erlmcp_flow_core::{AgentSpec, Clock, Outcome, Request, Router, RouterConfig, Strategy};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Deserialize;

#[derive(Deserialize)]
struct TdCase {
    q: f64,
    reward: f64,
    max_next: f64,
    alpha: f64,
    gamma: f64,
    expected: f64,
}

#[derive(Deserialize)]
struct RewardCase {
    latency_us: f64,
    ok: bool,
    fast_us: f64,
    slow_us: f64,
    expected: f64,
}

#[derive(Deserialize)]
struct Vectors<T> {
    cases: Vec<T>,
}

fn vectors<T: for<'de> Deserialize<'de>>(name: &str) -> Vec<T> {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("vector file");
    serde_json::from_str::<Vectors<T>>(&text)
        .expect("vector JSON")
        .cases
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[test]
fn td_update_matches_the_shared_vectors() {
    let cases: Vec<TdCase> = vectors("td_update.json");
    assert!(cases.len() > 100);
    for c in cases {
        let got = td_update(c.q, c.reward, c.max_next, c.alpha, c.gamma);
        assert!(close(got, c.expected), "{got} != {}", c.expected);
    }
}

#[test]
fn reward_matches_the_shared_vectors() {
    let cases: Vec<RewardCase> = vectors("reward.json");
    for c in cases {
        let got = reward(c.latency_us, c.ok, c.fast_us, c.slow_us);
        assert!(close(got, c.expected), "{got} != {}", c.expected);
    }
}

proptest! {
    /// A completed task moves its cell exactly by the formula, with the best
    /// value the latest greedy decision saw as max Q(s', .).
    #[test]
    fn a_completion_applies_the_formula(
        q in -100.0f64..100.0,
        best in -100.0f64..100.0,
        alpha in 0.001f64..1.0,
        gamma in 0.0f64..0.999,
        ok in any::<bool>(),
        latency_us in 0u64..2_000_000,
    ) {
        let config = RouterConfig {
            q: QConfig { alpha, gamma, ..QConfig::default() },
            ..RouterConfig::default()
        };
        let r: Router<()> = Router::new(config, Clock::manual(0));
        r.agents().insert(AgentSpec::new("a", (), vec![b"x".to_vec()])).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let lease = r.decide(&Request::new(&[], Strategy::RoundRobin), &mut rng).unwrap();
        let s = lease.state().index();
        // a cell updated before (a cell never updated starts from its
        // one-step estimate instead, see the next property)
        lease.agent().q_row().set(s, q, 1);
        r.shared().learner().observe_best(0, best);
        r.clock().advance(latency_us);
        lease.complete(if ok { Outcome::Success } else { Outcome::Failure });
        let c = r.shared().learner().config();
        let expected = q + alpha * (c.reward(latency_us as f64, ok) + gamma * best - q);
        let got = lease.agent().q_row().value(s);
        prop_assert!(close(got, expected), "{} != {}", got, expected);
        prop_assert_eq!(lease.agent().q_row().visits(s), 2);
    }

    /// A cell never updated starts from the best reward its state allows
    /// plus gamma times the best next value, and moves from there.
    #[test]
    fn a_first_update_starts_one_step_from_the_best(
        best in -100.0f64..100.0,
        alpha in 0.001f64..1.0,
        gamma in 0.0f64..0.999,
        ok in any::<bool>(),
        latency_us in 0u64..2_000_000,
    ) {
        let config = RouterConfig {
            q: QConfig { alpha, gamma, ..QConfig::default() },
            ..RouterConfig::default()
        };
        let r: Router<()> = Router::new(config, Clock::manual(0));
        r.agents().insert(AgentSpec::new("a", (), vec![b"x".to_vec()])).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let lease = r.decide(&Request::new(&[], Strategy::RoundRobin), &mut rng).unwrap();
        let s = lease.state().index();
        prop_assert_eq!(lease.agent().q_row().visits(s), 0);
        r.shared().learner().observe_best(0, best);
        let c = r.shared().learner().config().clone();
        let q = c.prior_reward(lease.state()) + gamma * best;
        r.clock().advance(latency_us);
        lease.complete(if ok { Outcome::Success } else { Outcome::Failure });
        let expected = q + alpha * (c.reward(latency_us as f64, ok) + gamma * best - q);
        let got = lease.agent().q_row().value(s);
        prop_assert!(close(got, expected), "{} != {}", got, expected);
    }

    /// The TD step never leaves the interval between the old value and the target.
    #[test]
    fn td_update_moves_toward_the_target(
        q in -1e6f64..1e6, r in -11.0f64..2.0, m in -1e6f64..1e6,
        alpha in 0.0f64..=1.0, gamma in 0.0f64..1.0,
    ) {
        let target = r + gamma * m;
        let new = td_update(q, r, m, alpha, gamma);
        let (lo, hi) = if q < target { (q, target) } else { (target, q) };
        prop_assert!(new >= lo - 1e-6 * lo.abs().max(1.0) && new <= hi + 1e-6 * hi.abs().max(1.0));
    }
}

/// Two agents, one answering in 10 ms and one in 100 ms, epsilon fixed at 0.1:
/// after 1000 episodes the better one is chosen at least 90% of the time.
#[test]
fn the_better_of_two_agents_is_learned() {
    for seed in 1..=5 {
        let config = RouterConfig {
            q: QConfig {
                epsilon: 0.1,
                epsilon_decay: 1.0,
                ..QConfig::default()
            },
            ..RouterConfig::default()
        };
        let r: Router<u64> = Router::new(config, Clock::manual(0));
        r.agents()
            .insert(AgentSpec::new("fast", 10_000, vec![b"x".to_vec()]))
            .unwrap();
        r.agents()
            .insert(AgentSpec::new("slow", 100_000, vec![b"x".to_vec()]))
            .unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut fast_picks = 0;
        for episode in 0..2000 {
            let lease = r
                .decide(&Request::new(&[], Strategy::QLearning), &mut rng)
                .unwrap();
            let latency = *lease.agent().payload();
            if episode >= 1000 && latency == 10_000 {
                fast_picks += 1;
            }
            r.clock().advance(latency);
            lease.complete(Outcome::Success);
        }
        assert!(fast_picks >= 900, "seed {seed}: {fast_picks} of 1000");
    }
}

#[test]
fn rows_start_at_the_priors() {
    let c = QConfig::default();
    let row = QRow::new(&c);
    assert_eq!(row.len(), 99);
    for i in 0..row.len() {
        assert_eq!(
            row.value(i),
            c.prior(erlmcp_flow_core::State::from_index(i))
        );
        assert_eq!(row.visits(i), 0);
    }
}
