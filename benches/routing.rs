//! Criterion benches of the routing hot path, at the table sizes users run.
//!
//! cargo bench --bench routing
//!
//! - `select/<strategy>/<agents>`: choosing one candidate (snapshot, filter,
//!   strategy), no lease taken;
//! - `decide_complete/<strategy>/<agents>`: a whole decision with its lease and
//!   its completion (stats, learning), as one task costs;
//! - `learn/td_update`: one Q-learning episode's update;
//! - `ring/...`: lookup on our ring beside the `jumphash` crate, and a ring
//!   rebuild for 1000 agents x 150 points;
//! - `resilience/...`: a closed breaker's check, a bulkhead permit taken and
//!   given back, and a breaker call asked and recorded by agent id;
//! - `trace/...`: id generation.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use erlmcp_flow_core::learning::{Learner, QConfig, QRow};
use erlmcp_flow_core::ring::{Ring, key_hash};
use erlmcp_flow_core::{AgentSpec, Clock, Outcome, Request, Router, RouterConfig, Strategy, trace};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// `n` agents holding `work`, with some learning and some load behind them
/// so that every strategy has real figures to read.
fn router(n: usize) -> Router<usize> {
    let r = Router::new(RouterConfig::default(), Clock::manual(1));
    let specs = (0..n)
        .map(|i| AgentSpec::new(format!("agent-{i}"), i, vec![b"work".to_vec()]))
        .collect();
    r.agents().insert_many(specs).expect("fresh ids");
    let mut rng = SmallRng::seed_from_u64(1);
    for _ in 0..(4 * n).min(20_000) {
        let lease = r
            .decide(&Request::new(&[], Strategy::RoundRobin), &mut rng)
            .expect("agents");
        r.clock().advance(rng.random_range(1_000..40_000));
        lease.complete(Outcome::Success);
    }
    // a few tasks left in flight
    for _ in 0..n / 4 {
        std::mem::forget(
            r.decide(&Request::new(&[], Strategy::RoundRobin), &mut rng)
                .expect("agents"),
        );
    }
    r
}

const WORK: &[&[u8]] = &[b"work"];

fn select(c: &mut Criterion) {
    let mut g = c.benchmark_group("select");
    for n in [60usize, 65, 1000, 10_000] {
        let r = router(n);
        let mut rng = SmallRng::seed_from_u64(2);
        for s in Strategy::ALL {
            if n == 65 && *s != Strategy::QLearning {
                continue;
            }
            let mut key = 0u64;
            g.bench_with_input(BenchmarkId::new(s.name(), n), &n, |b, _| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let req = Request {
                        key: Some(key),
                        ..Request::new(WORK, *s)
                    };
                    r.pick_with(black_box(&req), &mut rng, |a| *a.payload())
                        .expect("agent")
                })
            });
        }
    }
    g.finish();
}

fn decide_complete(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide_complete");
    let r = router(60);
    let mut rng = SmallRng::seed_from_u64(3);
    for s in Strategy::ALL {
        let mut key = 0u64;
        g.bench_function(BenchmarkId::new(s.name(), 60), |b| {
            b.iter(|| {
                key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let req = Request {
                    key: Some(key),
                    ..Request::new(WORK, *s)
                };
                let lease = r.decide(black_box(&req), &mut rng).expect("agent");
                lease.complete(Outcome::Success)
            })
        });
    }
    g.finish();
}

fn learn(c: &mut Criterion) {
    let config = QConfig::default();
    let learner = Learner::new(config.clone());
    let row = QRow::new(&config);
    let mut i = 0usize;
    c.bench_function("learn/td_update", |b| {
        b.iter(|| {
            i = (i + 7) % row.len();
            learner.learn(black_box(&row), i, black_box(0.97))
        })
    });
}

fn ring(c: &mut Criterion) {
    let ids: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("agent-{i}").into_bytes())
        .collect();
    let mut g = c.benchmark_group("ring");
    g.bench_function("rebuild/1000x150", |b| {
        b.iter(|| Ring::build(ids.iter().map(|v| v.as_slice()), 150))
    });
    let ring = Ring::build(ids.iter().map(|v| v.as_slice()), 150);
    let jump = jumphash::JumpHasher::new();
    let mut k = 0u64;
    g.bench_function("lookup/erlmcp_flow/1000", |b| {
        b.iter(|| {
            k = k.wrapping_add(1);
            ring.lookup(key_hash(&k.to_le_bytes()))
        })
    });
    g.bench_function("lookup/jumphash/1000", |b| {
        b.iter(|| {
            k = k.wrapping_add(1);
            jump.slot(&k.to_le_bytes(), 1000)
        })
    });
    g.finish();
}

fn breaker(c: &mut Criterion) {
    let r = router(60);
    let config = r.shared().config().breaker.clone();
    let snapshot = r.agents().load_full();
    let agent = snapshot.agent(7).clone();
    let hot = agent.stats().hot().get();
    let mut g = c.benchmark_group("resilience");
    g.bench_function("breaker_check/closed", |b| {
        b.iter(|| {
            agent
                .breaker()
                .admits(black_box(hot), &config, black_box(1))
        })
    });
    g.bench_function("bulkhead_permit/acquire_release", |b| {
        b.iter(|| {
            let ok = hot.try_add_in_flight(black_box(10));
            hot.sub_in_flight();
            ok
        })
    });
    g.bench_function("breaker_allow_record/by_id", |b| {
        b.iter(|| {
            let allowed = r.breaker_allow(black_box(b"agent-7")).expect("agent");
            r.breaker_record(b"agent-7", true, 10).expect("agent");
            allowed
        })
    });
    g.finish();
}

fn trace_ids(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(7);
    c.bench_function("trace/generate_trace_id", |b| {
        b.iter(|| trace::generate_trace_id(&mut rng))
    });
    c.bench_function("trace/generate_span_id", |b| {
        b.iter(|| trace::generate_span_id(&mut rng))
    });
}

criterion_group!(
    benches,
    select,
    decide_complete,
    learn,
    ring,
    breaker,
    trace_ids
);
criterion_main!(benches);
