//! The correlation store's memory stays bounded under a million tasks, and
//! what one entry costs: a counting global allocator measures the bytes the
//! store holds.
//!
//! cargo test --release --test correlation_memory -- --nocapture

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use erlmcp_flow_core::Name;
use erlmcp_flow_core::tracing::context as trace;
use erlmcp_flow_core::tracing::correlation::{
    CorrelationConfig, CorrelationStore, Opened, SpanKind, SpanOutcome,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn opened(rng: &mut SmallRng, agent: &Name, attempt: u16) -> Opened {
    Opened {
        trace_id: trace::generate_trace_id(rng),
        span_id: trace::generate_span_id(rng),
        parent_span_id: Some(trace::generate_span_id(rng)),
        agent_id: Some(agent.clone()),
        // a summary per span: more than the router makes (one per task)
        summary: Some(Name::new(format!("review {attempt}").as_bytes())),
        attempt,
        kind: SpanKind::Attempt,
    }
}

/// Opens and closes `n` spans; returns the store's bytes at the end.
fn run(store: &CorrelationStore, n: usize, rng: &mut SmallRng, now: &mut u64) {
    let agent = Name::new(b"agent-42");
    for i in 0..n {
        *now += 1;
        let o = opened(rng, &agent, (i % 3) as u16);
        let h = store.insert(o, *now);
        assert!(store.close(&h, SpanOutcome::Ok, None, *now));
    }
}

/// `n` tasks as the router records them: a task span and its attempt's,
/// in one trace, the attempt naming one of 1 000 agents (their ids shared
/// with the agent table), the task span the agent once the task answered;
/// with `summary`, the two share one.
fn tasks(store: &CorrelationStore, n: usize, summary: bool, rng: &mut SmallRng, now: &mut u64) {
    let agents: Vec<Name> = (0..1000)
        .map(|i| Name::new(format!("agent-{i}").as_bytes()))
        .collect();
    for i in 0..n {
        *now += 1;
        let trace_id = trace::generate_trace_id(rng);
        let task_id = trace::generate_span_id(rng);
        let summary = summary.then(|| Name::new(format!("review {i}").as_bytes()));
        let task = store.insert(
            Opened {
                trace_id,
                span_id: task_id,
                parent_span_id: None,
                agent_id: None,
                summary: summary.clone(),
                attempt: 0,
                kind: SpanKind::Task,
            },
            *now,
        );
        let agent = &agents[i % agents.len()];
        let attempt = store.insert(
            Opened {
                trace_id,
                span_id: trace::generate_span_id(rng),
                parent_span_id: Some(task_id),
                agent_id: Some(agent.clone()),
                summary,
                attempt: 1,
                kind: SpanKind::Attempt,
            },
            *now,
        );
        assert!(store.close(&attempt, SpanOutcome::Ok, None, *now + 1));
        assert!(store.close(&task, SpanOutcome::Ok, Some(agent.clone()), *now + 1));
    }
}

#[test]
fn memory_is_bounded_by_the_cap_and_an_entry_costs_little() {
    let mut rng = SmallRng::seed_from_u64(3);
    let mut now = 0;
    let before = live();
    let store = CorrelationStore::new(CorrelationConfig {
        ttl_us: u64::MAX / 4,
        max_entries: 10_000,
        export_queue: 0,
    });
    // a million tasks through a store capped at 10 000 entries
    run(&store, 100_000, &mut rng, &mut now);
    let at_100k = live() - before;
    run(&store, 900_000, &mut rng, &mut now);
    let at_1m = live() - before;
    let st = store.stats();
    assert!(st.entries <= 10_000 + 16, "{st:?}");
    assert_eq!(st.evicted as usize + st.entries, 1_000_000);
    // the store does not grow after it is full
    assert!(
        at_1m <= at_100k + at_100k / 10,
        "{at_100k} then {at_1m} bytes"
    );
    let per_entry = at_1m as f64 / st.entries as f64;
    println!(
        "correlation store: {} entries after 1 000 000 spans, {at_1m} bytes, {per_entry:.0} bytes per entry",
        st.entries
    );
    assert!(per_entry < 200.0, "{per_entry} bytes per entry");
    drop(store);
    assert!(
        live() - before < 4096,
        "memory left after the store: {}",
        live() - before
    );

    // (one test: the allocator's count is process-wide, and tests run in
    // parallel threads)
    for summary in [false, true] {
        let before = live();
        let store = CorrelationStore::new(CorrelationConfig::default());
        tasks(&store, 60_000, summary, &mut rng, &mut now);
        let bytes = live() - before;
        let entries = store.stats().entries;
        let per_span = bytes as f64 / entries as f64;
        println!(
            "correlation store at its default cap, {} summaries: {entries} spans, {:.1} MiB, {per_span:.0} bytes a span (memory_bytes says {:.0})",
            if summary { "with" } else { "without" },
            bytes as f64 / (1 << 20) as f64,
            store.memory_bytes() as f64 / entries as f64
        );
        assert!(entries <= 100_000 + 16);
        // the bound: a full store of 100 000 spans in about 10 MB
        if !summary {
            assert!(per_span <= 100.0, "{per_span} bytes a span");
        }
    }
}
