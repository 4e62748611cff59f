//! Criterion benches of the routing hot path: one decision (filter, pick,
//! lease) plus its completion, at the table sizes users run.
//!
//! cargo bench --bench routing

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use erlmcp_flow_core::{AgentKind, AgentSpec, Clock, Outcome, Router, Strategy, trace};
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// `n` agents; every agent has `work`, every fourth also `review`.
fn router(n: usize) -> Router<usize> {
    let r = Router::new(Clock::system());
    for i in 0..n {
        let mut caps = vec![b"work".to_vec()];
        if i % 4 == 0 {
            caps.push(b"review".to_vec());
        }
        r.agents()
            .insert(AgentSpec {
                id: format!("agent-{i}").into_bytes(),
                payload: i,
                capabilities: caps,
                kind: AgentKind::Agent,
            })
            .expect("fresh ids");
    }
    r
}

fn decide_complete(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide_complete");
    for n in [60usize, 1000, 10_000] {
        let r = router(n);
        for (label, req) in [
            ("one_cap", &[b"work".as_slice()][..]),
            ("two_caps", &[b"work".as_slice(), b"review".as_slice()][..]),
        ] {
            let strategy = Strategy::RoundRobin;
            g.bench_with_input(
                BenchmarkId::new(format!("{}/{label}", strategy.name()), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let lease = r.decide(black_box(req), strategy).expect("candidates");
                        lease.complete(Outcome::Success)
                    })
                },
            );
        }
    }
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

criterion_group!(benches, decide_complete, trace_ids);
criterion_main!(benches);
