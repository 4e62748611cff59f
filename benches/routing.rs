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
//! - `trace/...`: id generation, `traceparent` parsing and formatting,
//!   `tracestate` validation;
//! - `correlation/...`: a span inserted and closed in the store at its cap of
//!   100 000 entries (each insert evicts the oldest finished span), and a
//!   trace's chain read back;
//! - `traced_task/...`: one task's decision and completion without tracing,
//!   and with its task span and attempt span opened and closed;
//! - `worst/...`: what a call may meet at 10 000 agents and 100 000 spans:
//!   a consistent-hash decision no candidate can take, `explain`, a
//!   membership change, a 100 000-span trace read back, a lookup by span id
//!   and a sweep (those marked dirty run on dirty schedulers).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use erlmcp_flow_core::learning::{Learner, QConfig, QRow};
use erlmcp_flow_core::routing::ring::{Ring, key_hash};

use erlmcp_flow_core::routing::router::SpanRequest;
use erlmcp_flow_core::tracing::context as trace;
use erlmcp_flow_core::tracing::correlation::{
    CorrelationConfig, CorrelationStore, Opened, SpanKind, SpanOutcome,
};
use erlmcp_flow_core::{
    Admission, AgentSpec, Clock, Name, Outcome, Request, Router, RouterConfig, Strategy,
};
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
    let small = Ring::build(ids[..60].iter().map(|v| v.as_slice()), 150);
    g.bench_function("with_agent/60x150", |b| {
        b.iter(|| small.with_agent(b"one-more", 60).len())
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
    let hot = agent.stats().hot();
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
            let (allowed, _) = r.breaker_allow(black_box(b"agent-7")).expect("agent");
            r.breaker_record(b"agent-7", true, 10).expect("agent");
            matches!(allowed, Admission::Call)
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
    let header = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    c.bench_function("trace/parse_traceparent", |b| {
        b.iter(|| trace::parse_traceparent(black_box(header)).expect("valid"))
    });
    let parsed = trace::parse_traceparent(header).expect("valid");
    c.bench_function("trace/format_traceparent", |b| {
        b.iter(|| trace::format_traceparent(black_box(&parsed)))
    });
    let state = b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,vendor@tenant=abc";
    c.bench_function("trace/validate_tracestate/3_members", |b| {
        b.iter(|| trace::validate_tracestate(black_box(state)).expect("valid"))
    });
    // a request's fields as a transport hands them over: a few others, a
    // traceparent with OWS, two tracestate fields to combine
    let fields: [(&[u8], &[u8]); 6] = [
        (b"host", b"127.0.0.1:5000"),
        (b"content-type", b"application/json"),
        (
            b"TraceParent",
            b" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\t",
        ),
        (b"tracestate", b"rojo=00f067aa0ba902b7"),
        (b"tracestate", b"congo=t61rcWkgMzE "),
        (b"content-length", b"118"),
    ];
    c.bench_function("trace/incoming/6_fields", |b| {
        b.iter(|| trace::incoming(black_box(fields)))
    });
}

/// A span as a task's attempt opens it.
fn span(trace_id: [u8; 32], span_id: [u8; 16], agent: &Name, summary: &Name) -> Opened {
    Opened {
        trace_id,
        span_id,
        parent_span_id: Some(*b"00f067aa0ba902b7"),
        agent_id: Some(agent.clone()),
        summary: Some(summary.clone()),
        attempt: 1,
        kind: SpanKind::Attempt,
    }
}

/// The correlation store at its default cap of 100 000 entries, full: every
/// insert evicts the oldest finished span.
fn correlation(c: &mut Criterion) {
    const ENTRIES: usize = 100_000;
    let store = CorrelationStore::new(CorrelationConfig::default());
    assert_eq!(store.config().max_entries, ENTRIES);
    let mut rng = SmallRng::seed_from_u64(11);
    // ids made beforehand, so that the bench times the store alone
    let ids: Vec<([u8; 32], [u8; 16])> = (0..1 << 20)
        .map(|_| {
            (
                trace::generate_trace_id(&mut rng),
                trace::generate_span_id(&mut rng),
            )
        })
        .collect();
    let agent = Name::new(b"agent-7");
    let summary = Name::new(b"review 42");
    let mut now = 0u64;
    for &(t, s) in &ids[..ENTRIES] {
        now += 1;
        let h = store.insert(span(t, s, &agent, &summary), now);
        store.close(&h, SpanOutcome::Ok, None, now);
    }
    let mut i = ENTRIES;
    c.bench_function("correlation/insert_close/100k_entries", |b| {
        b.iter(|| {
            let (t, s) = ids[i & ((1 << 20) - 1)];
            i += 1;
            now += 1;
            let h = store.insert(span(t, s, &agent, &summary), now);
            store.close(&h, SpanOutcome::Ok, None, now)
        })
    });
    assert!(store.stats().entries <= ENTRIES + 16);
    c.bench_function("correlation/chain/2_spans", |b| {
        b.iter(|| store.chain(black_box(&ids[(i - 1) & ((1 << 20) - 1)].0)))
    });
    // every span in one trace (callers passing one traceparent to every
    // task): the trace's list is 100 000 long, and insert + close must not
    // walk it
    let one = CorrelationStore::new(CorrelationConfig::default());
    let trace_id = ids[0].0;
    for &(_, s) in &ids[..ENTRIES] {
        now += 1;
        let h = one.insert(span(trace_id, s, &agent, &summary), now);
        one.close(&h, SpanOutcome::Ok, None, now);
    }
    c.bench_function("correlation/insert_close/100k_entries_one_trace", |b| {
        b.iter(|| {
            let (_, s) = ids[i & ((1 << 20) - 1)];
            i += 1;
            now += 1;
            let h = one.insert(span(trace_id, s, &agent, &summary), now);
            one.close(&h, SpanOutcome::Ok, None, now)
        })
    });
    assert!(one.stats().entries <= ENTRIES + 16);
}

/// One task as `execute` runs it with tracing on, beside the same without:
/// the task's span opened, a decision that opens the attempt's span, the
/// completion that closes it, the task's span closed.
fn traced_task(c: &mut Criterion) {
    let mut g = c.benchmark_group("traced_task");
    let r = router(60);
    let mut rng = SmallRng::seed_from_u64(5);
    g.bench_function("untraced/round_robin/60", |b| {
        b.iter(|| {
            let lease = r
                .decide(&Request::new(&[], Strategy::RoundRobin), &mut rng)
                .expect("agents");
            lease.complete(Outcome::Success)
        })
    });
    g.bench_function("traced/round_robin/60", |b| {
        b.iter(|| {
            let task = r
                .span_start(None, b"review 42", &mut rng)
                .expect("no header");
            let mut req = Request::new(&[], Strategy::RoundRobin);
            req.span = Some(SpanRequest {
                task: &task,
                attempt: 1,
            });
            let lease = r.decide(&req, &mut rng).expect("agents");
            let agent = lease.agent().id().to_vec();
            lease.complete(Outcome::Success);
            task.end(SpanOutcome::Ok, Some(&agent))
        })
    });
    // what an agent's call adds: a child span under its attempt, opened and
    // closed (the store full of the spans above)
    let task = r
        .span_start(None, b"review 42", &mut rng)
        .expect("no header");
    let parent = *task.context();
    g.bench_function("child_span/open_close", |b| {
        b.iter(|| {
            let child = r
                .child_span_start(&parent, b"GET http://svc/x", &mut rng)
                .expect("valid parent");
            child.end(SpanOutcome::Ok, None)
        })
    });
    g.finish();
}

/// A store holding `n` finished spans of the trace `trace_id`.
fn one_trace(trace_id: [u8; 32], n: u64, rng: &mut SmallRng) -> CorrelationStore {
    let store = CorrelationStore::new(CorrelationConfig::default());
    let agent = Name::new(b"agent-7");
    let summary = Name::new(b"review 42");
    for now in 0..n {
        let span_id = trace::generate_span_id(rng);
        let h = store.insert(span(trace_id, span_id, &agent, &summary), now);
        store.close(&h, SpanOutcome::Ok, None, now);
    }
    store
}

/// The worst cases a call on a normal scheduler may meet at 10 000 agents
/// and 100 000 spans, and what the dirty ones cost.
/// One agent added to the table and taken out again: a membership change,
/// which publishes a new snapshot each time.
fn insert_remove(r: &Router<usize>) -> impl FnMut(&mut criterion::Bencher) + '_ {
    let mut n = 0u64;
    move |b| {
        b.iter(|| {
            n += 1;
            let id = format!("extra-{n}");
            r.agents()
                .insert(AgentSpec::new(id.clone(), 0, vec![b"work".to_vec()]))
                .expect("fresh id");
            r.agents().remove(id.as_bytes()).expect("just added")
        })
    }
}

/// How a membership change grows with the table: the agents' slots, the
/// capability's candidate list and the ring's delta are copied, the rest
/// of a snapshot is shared.
fn membership(c: &mut Criterion) {
    let mut g = c.benchmark_group("membership");
    g.sample_size(20);
    for n in [60, 1_000, 10_000] {
        let r = router(n);
        g.bench_function(BenchmarkId::new("insert_remove", n), insert_remove(&r));
    }
    g.finish();
}

fn worst_cases(c: &mut Criterion) {
    let mut g = c.benchmark_group("worst");
    g.sample_size(20);
    let r = router(10_000);
    // every bulkhead full: a consistent-hash decision finds no taker
    let max = r.shared().config().max_concurrent;
    for agent in r.agents().load().agents() {
        while agent.stats().hot().try_add_in_flight(max) {}
    }
    let mut rng = SmallRng::seed_from_u64(9);
    let mut key = 0u64;
    g.bench_function("consistent_hash_refused/10000", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let req = Request {
                key: Some(key),
                ..Request::new(WORK, Strategy::ConsistentHash)
            };
            r.pick(&req, &mut rng).expect_err("every bulkhead is full")
        })
    });
    let r = router(10_000);
    g.bench_function("explain/10000 (dirty)", |b| {
        b.iter(|| r.explain(WORK, 0).len())
    });
    // membership: one agent added to 10 000 and taken out again
    g.bench_function("membership/insert_remove/10000", insert_remove(&r));
    // the correlation store full, 100 000 spans in one trace
    let mut rng = SmallRng::seed_from_u64(13);
    let trace_id = trace::generate_trace_id(&mut rng);
    let store = one_trace(trace_id, 100_000, &mut rng);
    g.bench_function("chain/100000_spans (dirty)", |b| {
        b.iter(|| store.chain(black_box(&trace_id)).len())
    });
    let missing = trace::generate_span_id(&mut rng);
    g.bench_function("lookup_missing/100000 (dirty)", |b| {
        b.iter(|| store.lookup(black_box(&missing)))
    });
    g.bench_function("sweep_nothing_due/100000 (dirty)", |b| {
        b.iter(|| store.sweep(black_box(100_000)))
    });
    // what an insert into the same shard waits for at most while a chain
    // is read: one step of 256 spans
    let shard_peer = one_trace(trace_id, 256, &mut rng);
    g.bench_function("chain/256_spans (one step under the lock)", |b| {
        b.iter(|| shard_peer.chain(black_box(&trace_id)).len())
    });
    let state = vec![b','; 32 * 1024];
    g.bench_function("validate_tracestate/32KiB_of_commas", |b| {
        b.iter(|| trace::validate_tracestate(black_box(&state)))
    });
    g.finish();
}

/// A 1 KiB JSON-RPC request decoded (limits checked) and its response
/// encoded: the codec's share of one task over a transport.
fn jsonrpc(c: &mut Criterion) {
    use erlmcp_flow_core::rpc::codec::{self, Decoded, Id, Limits, Message};
    let params: Vec<serde_json::Value> = (0..52)
        .map(|i| serde_json::json!({"k": i, "v": "abcdef"}))
        .collect();
    let req = codec::request_json(
        Some(&Id::from(1)),
        "flow.route_task",
        Some(&serde_json::json!({ "task": params }).to_string()),
    )
    .into_bytes();
    let limits = Limits::default();
    c.bench_function("jsonrpc/decode_encode_1KiB", |b| {
        b.iter(|| {
            let Decoded::Single(Ok(Message::Request { id, params, .. })) =
                codec::decode(black_box(&req), &limits)
            else {
                unreachable!()
            };
            let result = params.as_ref().map_or("null", |p| p.text());
            codec::response_json(&id, Ok(result))
        })
    });
}

/// One vote signed and verified (HMAC-SHA256 over its canonical encoding):
/// the byte work of each remote vote of a quorum task.
fn vote(c: &mut Criterion) {
    use erlmcp_flow_core::cluster::vote::{Vote, answer_digest, sign, verify};
    let secret = b"0123456789abcdef0123456789abcdef";
    let v = Vote {
        trace_id: b"4bf92f3577b34da6a3ce929d0e0e4736",
        span_id: b"00f067aa0ba902b7",
        agent_id: b"agent-17",
        node: b"flow2@host",
        answer_digest: answer_digest(b"an answer of a few bytes"),
        timestamp_ms: 1_764_600_000_000,
        nonce: 0x9e37_79b9_7f4a_7c15,
    };
    c.bench_function("vote/sign_verify", |b| {
        b.iter(|| {
            let sig = sign(black_box(secret), black_box(&v)).expect("secret");
            verify(secret, &v, &sig).expect("signed")
        })
    });
}

criterion_group!(
    benches,
    vote,
    jsonrpc,
    select,
    decide_complete,
    learn,
    ring,
    breaker,
    trace_ids,
    correlation,
    traced_task,
    membership,
    worst_cases
);
criterion_main!(benches);
