//! The router resource: the agent table mirror, decisions and leases.

use erlmcp_flow_core::learning::EpsilonSchedule;
use erlmcp_flow_core::routing::ring::key_hash;
use erlmcp_flow_core::routing::router::SpanRequest;
use erlmcp_flow_core::tracing::correlation::SpanOutcome;

use erlmcp_flow_core::{
    Admission, AgentKind, AgentSpec, BreakerState, Clock, FlowError, Outcome, Request, Router,
    RouterConfig, Strategy, Transition, WindowKind,
};
use rustler::types::tuple::make_tuple;
use rustler::{Atom, Binary, Encoder, Env, ListIterator, MapIterator, ResourceArc, Term};

use crate::atoms;
use crate::error::{NifError, NifOutcome, badarg, reply};
use crate::resources::{
    AgentPid, LeaseResource, ProbeResource, RouterResource, SpanResource, class_arg, router_arg,
};
use crate::rng::with_rng;
use crate::terms::{
    Choice, binaries, binary_term, choice, nonempty_binary, state_atom, transition_term,
};

const STRATEGIES: &[Choice<Strategy>] = &[
    (atoms::round_robin, Strategy::RoundRobin),
    (atoms::least_connections, Strategy::LeastConnections),
    (atoms::weighted, Strategy::Weighted),
    (atoms::consistent_hash, Strategy::ConsistentHash),
    (atoms::p2c_ewma, Strategy::P2cEwma),
    (atoms::q_learning, Strategy::QLearning),
];

const KINDS: &[Choice<AgentKind>] = &[
    (atoms::agent, AgentKind::Agent),
    (atoms::swarm, AgentKind::Swarm),
];

const OUTCOMES: &[Choice<Outcome>] = &[
    (atoms::ok, Outcome::Success),
    (atoms::error, Outcome::Failure),
    (atoms::rejected, Outcome::Rejected),
    (atoms::timeout, Outcome::Timeout),
    (atoms::down, Outcome::AgentDown),
    (atoms::abandoned, Outcome::Abandoned),
];

const SCHEDULES: &[Choice<EpsilonSchedule>] = &[
    (atoms::exponential, EpsilonSchedule::Exponential),
    (atoms::linear, EpsilonSchedule::Linear),
    (atoms::cosine, EpsilonSchedule::Cosine),
];

/// A number option: an integer or a float, within `ok`.
fn number(term: Term<'_>, ok: impl Fn(f64) -> bool) -> NifOutcome<f64> {
    let v = term
        .decode::<f64>()
        .or_else(|_| term.decode::<i64>().map(|i| i as f64))
        .map_err(|_| badarg("opts"))?;
    if v.is_finite() && ok(v) {
        Ok(v)
    } else {
        Err(badarg("opts"))
    }
}

fn positive_int(term: Term<'_>) -> NifOutcome<u32> {
    match term.decode::<u32>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(badarg("opts")),
    }
}

/// The router options map (see `erlmcp_flow_nif:router_new/1`).
fn router_options(opts: Term<'_>) -> NifOutcome<(RouterConfig, bool)> {
    let iter = MapIterator::new(opts).ok_or_else(|| badarg("opts"))?;
    let mut c = RouterConfig::default();
    let mut manual = false;
    // (time-based?, size): set from two keys, combined at the end
    let mut window = (false, 20u32);
    for (key, value) in iter {
        let k = Atom::from_term(key).map_err(|_| badarg("opts"))?;
        let q = &mut c.q;
        if k == atoms::clock() {
            manual = choice(
                value,
                &[(atoms::system, false), (atoms::manual, true)],
                "opts",
            )?;
        } else if k == atoms::alpha() {
            q.alpha = number(value, |v| v > 0.0 && v <= 1.0)?;
        } else if k == atoms::gamma() {
            q.gamma = number(value, |v| (0.0..1.0).contains(&v))?;
        } else if k == atoms::epsilon() {
            q.epsilon = number(value, |v| (0.0..=1.0).contains(&v))?;
        } else if k == atoms::epsilon_min() {
            q.epsilon_min = number(value, |v| (0.0..=1.0).contains(&v))?;
        } else if k == atoms::epsilon_decay() {
            q.epsilon_decay = number(value, |v| v > 0.0 && v <= 1.0)?;
        } else if k == atoms::epsilon_schedule() {
            q.schedule = choice(value, SCHEDULES, "opts")?;
        } else if k == atoms::softmax_temperature() {
            q.temperature = number(value, |v| v > 0.0)?;
        } else if k == atoms::fast_threshold_ms() {
            q.fast_us = number(value, |v| v > 0.0)? * 1000.0;
        } else if k == atoms::slow_threshold_ms() {
            q.slow_us = number(value, |v| v > 0.0)? * 1000.0;
        } else if k == atoms::task_classes() {
            q.task_classes = positive_int(value)?;
        } else if k == atoms::max_concurrent() {
            // The bulkhead size, and the in-flight count of load level 10.
            q.max_concurrent = positive_int(value)?;
            c.max_concurrent = q.max_concurrent;
        } else if k == atoms::consistent_hash_vnodes() {
            c.vnodes = positive_int(value)?;
        } else if k == atoms::hash_balance_factor() {
            c.hash_balance_factor = if Atom::from_term(value).is_ok_and(|a| a == atoms::infinity())
            {
                None
            } else {
                Some(number(value, |v| v > 1.0)?)
            };
        } else if k == atoms::sample_above() {
            c.sample_above = if Atom::from_term(value).is_ok_and(|a| a == atoms::infinity()) {
                None
            } else {
                Some(positive_int(value)? as usize)
            };
        } else if k == atoms::correlation_ttl_ms() {
            c.correlation.ttl_us = u64::from(positive_int(value)?) * 1000;
        } else if k == atoms::correlation_max_entries() {
            c.correlation.max_entries = positive_int(value)? as usize;
        } else if k == atoms::export_queue() {
            c.correlation.export_queue =
                value.decode::<u32>().map_err(|_| badarg("opts"))? as usize;
        } else if k == atoms::lazy_ring() {
            c.lazy_ring = value.decode::<bool>().map_err(|_| badarg("opts"))?;
        } else if k == atoms::ewma_decay_ms() {
            c.ewma_decay_us = number(value, |v| v > 0.0)? * 1000.0;
        } else if k == atoms::stale_after_ms() {
            // 0: aging off
            c.stale_after_us = u64::from(value.decode::<u32>().map_err(|_| badarg("opts"))?) * 1000;
        } else if !breaker_option(&mut c, k, value, &mut window)? {
            return Err(badarg("opts"));
        }
    }
    c.breaker.window = match window {
        (false, n) => WindowKind::Count(n),
        (true, n) => WindowKind::Time { ms: u64::from(n) },
    };
    if c.q.slow_us <= c.q.fast_us || c.check().is_err() {
        return Err(badarg("opts"));
    }
    Ok((c, manual))
}

/// The circuit-breaker options; `Ok(false)` for a key that is not one.
fn breaker_option(
    c: &mut RouterConfig,
    k: Atom,
    value: Term<'_>,
    window: &mut (bool, u32),
) -> NifOutcome<bool> {
    let b = &mut c.breaker;
    if k == atoms::breaker_enabled() {
        b.enabled = value.decode::<bool>().map_err(|_| badarg("opts"))?;
    } else if k == atoms::failure_threshold() {
        b.failure_threshold = positive_int(value)?;
    } else if k == atoms::min_requests() {
        b.min_requests = positive_int(value)?;
    } else if k == atoms::failure_rate_threshold() {
        b.failure_rate = number(value, |v| v > 0.0 && v <= 1.0)?;
    } else if k == atoms::breaker_timeout_ms() {
        b.open_timeout_us = u64::from(positive_int(value)?) * 1000;
    } else if k == atoms::half_open_max_requests() {
        b.half_open_max = positive_int(value)?;
    } else if k == atoms::success_threshold() {
        b.success_threshold = positive_int(value)?;
    } else if k == atoms::slow_call_threshold_ms() {
        b.slow_call_us = if Atom::from_term(value).is_ok_and(|a| a == atoms::infinity()) {
            None
        } else {
            Some(u64::from(positive_int(value)?) * 1000)
        };
    } else if k == atoms::window_type() {
        window.0 = choice(value, &[(atoms::count, false), (atoms::time, true)], "opts")?;
    } else if k == atoms::window_size() {
        window.1 = positive_int(value)?;
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// `none | {breaker, From, To}`.
fn maybe_transition<'a>(env: Env<'a>, t: Option<Transition>) -> Term<'a> {
    t.map_or_else(|| atoms::none().encode(env), |t| transition_term(env, t))
}

/// `router_new(Opts) -> {ok, Router} | {error, {badarg, opts}}`.
#[rustler::nif]
fn router_new<'a>(env: Env<'a>, opts: Term<'a>) -> Term<'a> {
    let build = || -> NifOutcome<Term<'a>> {
        let (config, manual) = router_options(opts)?;
        let clock = if manual {
            Clock::manual(0)
        } else {
            Clock::system()
        };
        let res = ResourceArc::new(RouterResource {
            router: Router::new(config, clock),
        });
        Ok((atoms::ok(), res).encode(env))
    };
    reply(env, build())
}

/// `ring_build(Router) -> ok`: builds the consistent-hash ring of a router
/// made with `lazy_ring => true`, once (linear in the agents' points, hence a
/// dirty scheduler).
#[rustler::nif(schedule = "DirtyCpu")]
fn ring_build<'a>(env: Env<'a>, router: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        router_arg(router)?.router.agents().build_ring();
        Ok(atoms::ok().encode(env))
    };
    reply(env, run())
}

/// `clock_advance(Router, Microseconds) -> {ok, NowUs} | {error, system_clock}`.
#[rustler::nif]
fn clock_advance<'a>(env: Env<'a>, router: Term<'a>, us: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let us: u64 = us.decode().map_err(|_| badarg("microseconds"))?;
        Ok(match r.router.clock().advance(us) {
            Some(now) => (atoms::ok(), now).encode(env),
            None => NifError::SystemClock.encode(env),
        })
    };
    reply(env, run())
}

/// One registration's terms, as the table takes them.
fn agent_spec<'a>(
    id: Term<'a>,
    pid: Term<'a>,
    caps: Term<'a>,
    kind: Term<'a>,
    weight: Term<'a>,
) -> NifOutcome<AgentSpec<AgentPid>> {
    let payload = AgentPid::from_term(pid)?;
    Ok(AgentSpec {
        id: nonempty_binary(id, "agent_id")?.to_vec(),
        remote: payload.is_remote(),
        payload,
        capabilities: binaries(caps, "capabilities")?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect(),
        kind: choice(kind, KINDS, "kind")?,
        weight: weight
            .decode::<f64>()
            .or_else(|_| weight.decode::<i64>().map(|i| i as f64))
            .map_err(|_| badarg("weight"))?,
    })
}

/// `agent_insert(Router, Id, Pid, Capabilities, Kind, Weight) -> ok | {error, Reason}`.
/// A new snapshot sharing most of the old one's parts; now and then a merge of
/// the ring or a compaction, linear in the agents, hence a dirty scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn agent_insert<'a>(
    env: Env<'a>,
    router: Term<'a>,
    id: Term<'a>,
    pid: Term<'a>,
    caps: Term<'a>,
    kind: Term<'a>,
    weight: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        r.router
            .agents()
            .insert(agent_spec(id, pid, caps, kind, weight)?)?;
        Ok(atoms::ok().encode(env))
    };
    reply(env, run())
}

/// `agent_insert_many(Router, [{Id, Pid, Capabilities, Kind, Weight}]) -> ok |
/// {error, Reason}`: every agent added with one snapshot swap, or, on the
/// first bad spec or taken id, none (the registry's batches).
#[rustler::nif(schedule = "DirtyCpu")]
fn agent_insert_many<'a>(env: Env<'a>, router: Term<'a>, specs: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let len = specs.list_length().map_err(|_| badarg("specs"))?;
        let mut out = Vec::with_capacity(len);
        for t in specs
            .decode::<ListIterator<'a>>()
            .map_err(|_| badarg("specs"))?
        {
            let (id, pid, caps, kind, weight): (Term, Term, Term, Term, Term) =
                t.decode().map_err(|_| badarg("specs"))?;
            out.push(agent_spec(id, pid, caps, kind, weight)?);
        }
        r.router.agents().insert_many(out)?;
        Ok(atoms::ok().encode(env))
    };
    reply(env, run())
}

/// `agent_remove(Router, Id) -> ok | {error, not_found}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn agent_remove<'a>(env: Env<'a>, router: Term<'a>, id: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        r.router.agents().remove(nonempty_binary(id, "agent_id")?)?;
        Ok(atoms::ok().encode(env))
    };
    reply(env, run())
}

/// `agent_remove_many(Router, [Id]) -> {ok, Removed}`: every id in the table
/// removed with one snapshot swap; unknown ids are skipped.
#[rustler::nif(schedule = "DirtyCpu")]
fn agent_remove_many<'a>(env: Env<'a>, router: Term<'a>, ids: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let ids = binaries(ids, "agent_ids")?;
        let removed = r.router.agents().remove_many(&ids);
        Ok((atoms::ok(), removed.len()).encode(env))
    };
    reply(env, run())
}

fn map<'a>(env: Env<'a>, pairs: &[(Atom, Term<'a>)]) -> NifOutcome<Term<'a>> {
    let keys: Vec<Term<'a>> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
    let values: Vec<Term<'a>> = pairs.iter().map(|(_, v)| *v).collect();
    Term::map_from_term_arrays(env, &keys, &values).map_err(|_| badarg("map"))
}

/// `router_memory(Router) -> {ok, #{agents, agents_bytes, table_bytes, spans,
/// correlation_bytes}}`: what the agents, the table and the correlation
/// store cost the core, in bytes; one pass over the agents and the spans,
/// hence a dirty scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn router_memory<'a>(env: Env<'a>, router: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let m = r.router.memory();
        let store = r.router.shared().correlation();
        let map = map(
            env,
            &[
                (atoms::agents(), m.agents.encode(env)),
                (atoms::agents_bytes(), m.agents_bytes.encode(env)),
                (atoms::table_bytes(), m.table_bytes.encode(env)),
                (atoms::spans(), store.stats().entries.encode(env)),
                (atoms::correlation_bytes(), store.memory_bytes().encode(env)),
            ],
        )?;
        Ok((atoms::ok(), map).encode(env))
    };
    reply(env, run())
}

/// `router_stats(Router) -> {ok, #{agents, in_flight, episodes, epsilon,
/// breaker_opened, breaker_half_opened, breaker_closed}}`.
#[rustler::nif]
fn router_stats<'a>(env: Env<'a>, router: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let st = r.router.stats();
        let decision = r.router.shared().decision_latency();
        let corr = r.router.shared().correlation().stats();
        let m = map(
            env,
            &[
                (atoms::agents(), st.agents.encode(env)),
                (atoms::in_flight(), st.in_flight.encode(env)),
                (atoms::episodes(), st.episodes.encode(env)),
                (atoms::breaker_opened(), st.breaker_opened.encode(env)),
                (
                    atoms::breaker_half_opened(),
                    st.breaker_half_opened.encode(env),
                ),
                (atoms::breaker_closed(), st.breaker_closed.encode(env)),
                (atoms::completed(), st.completed.encode(env)),
                (atoms::decision_p50_us(), decision.p50_us.encode(env)),
                (atoms::decision_p90_us(), decision.p90_us.encode(env)),
                (atoms::decision_p99_us(), decision.p99_us.encode(env)),
                (atoms::decision_max_us(), decision.max_us.encode(env)),
                (atoms::decision_sum_us(), decision.sum_us.encode(env)),
                (atoms::decision_samples(), decision.samples.encode(env)),
                (atoms::correlation_entries(), corr.entries.encode(env)),
                (atoms::correlation_open(), corr.open.encode(env)),
                (atoms::correlation_evicted(), corr.evicted.encode(env)),
                (atoms::correlation_expired(), corr.expired.encode(env)),
                (atoms::export_dropped(), corr.export_dropped.encode(env)),
                (
                    atoms::epsilon(),
                    r.router.shared().learner().epsilon().encode(env),
                ),
            ],
        )?;
        Ok((atoms::ok(), m).encode(env))
    };
    reply(env, run())
}

/// `agent_stats(Router, Id) -> {ok, #{...}} | {error, not_found}`.
#[rustler::nif]
fn agent_stats<'a>(env: Env<'a>, router: Term<'a>, id: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let id = nonempty_binary(id, "agent_id")?;
        let snapshot = r.router.agents().load();
        let agent = snapshot
            .find(id)
            .ok_or(NifError::Core(FlowError::NotFound))?;
        let v = agent.stats().view();
        let pct = agent.stats().latency_percentiles();
        let pct_term = |f: fn((u64, u64, u64)) -> u64| {
            pct.map_or_else(|| atoms::undefined().encode(env), |p| f(p).encode(env))
        };
        let m = map(
            env,
            &[
                (atoms::in_flight(), v.in_flight.encode(env)),
                (atoms::dispatched(), v.dispatched.encode(env)),
                (atoms::succeeded(), v.succeeded.encode(env)),
                (atoms::failed(), v.failed.encode(env)),
                (atoms::rejected(), v.rejected.encode(env)),
                (atoms::timed_out(), v.timed_out.encode(env)),
                (atoms::down(), v.down.encode(env)),
                (atoms::abandoned(), v.abandoned.encode(env)),
                (atoms::ewma_latency_us(), v.ewma_latency_us.encode(env)),
                (atoms::success_rate(), v.success_rate.encode(env)),
                (atoms::weight(), agent.weight().encode(env)),
                (
                    atoms::breaker(),
                    state_atom(BreakerState::from_u8(agent.stats().hot().breaker())).encode(env),
                ),
                (atoms::probes(), agent.breaker().probes().encode(env)),
                (atoms::p50_us(), pct_term(|p| p.0)),
                (atoms::p95_us(), pct_term(|p| p.1)),
                (atoms::p99_us(), pct_term(|p| p.2)),
                (atoms::memory_bytes(), agent.memory_bytes().encode(env)),
            ],
        )?;
        Ok((atoms::ok(), m).encode(env))
    };
    reply(env, run())
}

/// The span argument of `decide`: `undefined` or `{OpenSpan, Attempt}`.
fn span_arg(term: Term<'_>) -> NifOutcome<Option<(ResourceArc<SpanResource>, u16)>> {
    if Atom::from_term(term).is_ok_and(|a| a == atoms::undefined()) {
        return Ok(None);
    }
    let (task, attempt): (ResourceArc<SpanResource>, u32) =
        term.decode().map_err(|_| badarg("span"))?;
    // decoded wide: rustler's u16 decoding would wrap
    let attempt = u16::try_from(attempt).map_err(|_| badarg("span"))?;
    Ok(Some((task, attempt)))
}

/// The sticky key argument: a binary (hashed) or `undefined`.
fn key_arg(term: Term<'_>) -> NifOutcome<Option<u64>> {
    if Atom::from_term(term).is_ok_and(|a| a == atoms::undefined()) {
        return Ok(None);
    }
    let bin = Binary::from_term(term).map_err(|_| badarg("sticky_key"))?;
    Ok(Some(key_hash(bin.as_slice())))
}

/// One decision's arguments decoded, its attempt's span under `task` when
/// given, and its answer as `decide/8` returns it.
#[allow(clippy::too_many_arguments)]
fn decision<'a>(
    env: Env<'a>,
    r: &RouterResource,
    caps: Term<'a>,
    strategy: Term<'a>,
    key: Term<'a>,
    class: Term<'a>,
    exclude: Term<'a>,
    kind: Term<'a>,
    span: Option<SpanRequest<'_>>,
) -> NifOutcome<Term<'a>> {
    let caps = binaries(caps, "capabilities")?;
    let exclude = binaries(exclude, "exclude")?;
    let (swarms_only, local_only) = kind_arg(kind)?;
    let req = Request {
        capabilities: &caps,
        strategy: choice(strategy, STRATEGIES, "strategy")?,
        key: key_arg(key)?,
        class: class_arg(&r.router, class)?,
        exclude: &exclude,
        swarms_only,
        local_only,
        span,
    };
    let lease = with_rng(|rng| r.router.decide(&req, rng))?;
    let agent = lease.agent().clone();
    let transition = lease.transition();
    let span_id = lease
        .span_id()
        .map_or_else(|| atoms::undefined().encode(env), |s| binary_term(env, &s));
    let lease = ResourceArc::new(LeaseResource { lease });
    Ok(make_tuple(
        env,
        &[
            atoms::ok().encode(env),
            binary_term(env, agent.id()),
            agent.payload().encode(env),
            lease.encode(env),
            span_id,
            maybe_transition(env, transition),
        ],
    ))
}

/// `decide(Router, Capabilities, Strategy, StickyKey, TaskClass, Exclude, Kind, Span)
/// -> {ok, AgentId, Pid, Lease, SpanId | undefined, none | {breaker, open, half_open}}
/// | {error, no_agents_available | overloaded | ...}`. `Span` is `undefined` or
/// `{OpenSpan, Attempt}` (`OpenSpan` from `span_start`): the decision opens the
/// attempt's span under the task's and returns its id. The last element reports that
/// this decision turned the agent's breaker half-open (its task is a probe).
/// `Exclude` lists agent ids not to choose; `Kind` is `any`, or `swarm` for
/// swarms only, or `{any | swarm, local}` for this node's agents only.
#[rustler::nif]
#[allow(clippy::too_many_arguments)]
fn decide<'a>(
    env: Env<'a>,
    router: Term<'a>,
    caps: Term<'a>,
    strategy: Term<'a>,
    key: Term<'a>,
    class: Term<'a>,
    exclude: Term<'a>,
    kind: Term<'a>,
    span: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let span = span_arg(span)?;
        decision(
            env,
            r,
            caps,
            strategy,
            key,
            class,
            exclude,
            kind,
            span.as_ref().map(|(task, attempt)| SpanRequest {
                task: &task.span,
                attempt: *attempt,
            }),
        )
    };
    reply(env, run())
}

/// `task_start(Router, Traceparent | undefined, Summary, Capabilities,
/// Strategy, StickyKey, TaskClass, Exclude, Kind) -> {ok, TraceId, SpanId,
/// Flags, Span, Decision} | {error, invalid_trace_context} | {error, {badarg,
/// What}}`: `span_start/3` and the first attempt's `decide/8` in one call.
/// `Decision` is what `decide/8` returns (a failed decision leaves the task's
/// span open for the caller to end).
#[rustler::nif]
#[allow(clippy::too_many_arguments)]
fn task_start<'a>(
    env: Env<'a>,
    router: Term<'a>,
    traceparent: Term<'a>,
    summary: Term<'a>,
    caps: Term<'a>,
    strategy: Term<'a>,
    key: Term<'a>,
    class: Term<'a>,
    exclude: Term<'a>,
    kind: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let Some(span) = crate::tracing::open_task_span(r, traceparent, summary)? else {
            return Ok(NifError::InvalidTraceContext.encode(env));
        };
        let decided = decision(
            env,
            r,
            caps,
            strategy,
            key,
            class,
            exclude,
            kind,
            Some(SpanRequest {
                task: &span,
                attempt: 1,
            }),
        );
        // a failed decision (a bad argument too) is the decision's answer:
        // the caller ends the task's span with it
        let decided = decided.unwrap_or_else(|e| e.encode(env));
        let [trace_id, span_id, flags, resource] = crate::tracing::task_span_terms(env, span);
        Ok(make_tuple(
            env,
            &[
                atoms::ok().encode(env),
                trace_id,
                span_id,
                flags,
                resource,
                decided,
            ],
        ))
    };
    reply(env, run())
}

/// `any | swarm`, or `{any | swarm, any | local}`: swarms only, and this
/// node's agents only.
fn kind_arg(kind: Term<'_>) -> NifOutcome<(bool, bool)> {
    const KIND: &[Choice<bool>] = &[(atoms::any, false), (atoms::swarm, true)];
    const NODE: &[Choice<bool>] = &[(atoms::any, false), (atoms::local, true)];
    if kind.is_atom() {
        return Ok((choice(kind, KIND, "kind")?, false));
    }
    let (k, n): (Term, Term) = kind.decode().map_err(|_| badarg("kind"))?;
    Ok((choice(k, KIND, "kind")?, choice(n, NODE, "kind")?))
}

/// `complete(Lease, Outcome) -> {ok, LatencyUs} | {ok, LatencyUs, {breaker,
/// From, To}} | {error, already_settled}`. Outcome: `ok | error | timeout |
/// down | abandoned`. The three-element form reports a breaker transition
/// this outcome caused.
#[rustler::nif]
fn complete<'a>(env: Env<'a>, lease: Term<'a>, outcome: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let lease: &LeaseResource = lease.try_get_resource().ok_or_else(|| badarg("lease"))?;
        let outcome = choice(outcome, OUTCOMES, "outcome")?;
        Ok(match lease.lease.complete(outcome) {
            Some(c) => match c.transition {
                None => (atoms::ok(), c.latency_us).encode(env),
                Some(t) => (atoms::ok(), c.latency_us, transition_term(env, t)).encode(env),
            },
            None => NifError::AlreadySettled.encode(env),
        })
    };
    reply(env, run())
}

/// `task_complete(Lease, Span) -> {ok, LatencyUs} | {ok, LatencyUs, {breaker,
/// From, To}} | {error, already_settled}`: `complete(Lease, ok)` and
/// `span_end(Span, ok, AgentId)` of the lease's agent in one call, the
/// agent's id shared with the task's span rather than copied. The span ends
/// (if it had not) even when the lease was settled already.
#[rustler::nif]
fn task_complete<'a>(env: Env<'a>, lease: Term<'a>, span: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let lease: &LeaseResource = lease.try_get_resource().ok_or_else(|| badarg("lease"))?;
        let span: &SpanResource = span.try_get_resource().ok_or_else(|| badarg("span"))?;
        let completed = lease.lease.complete(Outcome::Success);
        span.span
            .end_named(SpanOutcome::Ok, Some(lease.lease.agent().name()));
        Ok(match completed {
            Some(c) => match c.transition {
                None => (atoms::ok(), c.latency_us).encode(env),
                Some(t) => (atoms::ok(), c.latency_us, transition_term(env, t)).encode(env),
            },
            None => NifError::AlreadySettled.encode(env),
        })
    };
    reply(env, run())
}

/// `lease_p95(Lease) -> LatencyUs | undefined`: the p95 latency of the
/// lease's agent (for adaptive timeouts), without looking the agent up.
#[rustler::nif]
fn lease_p95<'a>(env: Env<'a>, lease: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let lease: &LeaseResource = lease.try_get_resource().ok_or_else(|| badarg("lease"))?;
        Ok(match lease.lease.agent().stats().latency_quantile(0.95) {
            Some(p95) => p95.encode(env),
            None => atoms::undefined().encode(env),
        })
    };
    reply(env, run())
}

/// `breaker_allow(Router, Id) -> {allow, call | Probe, none | {breaker, From,
/// To}} | {deny, none | {breaker, From, To}}`. `Probe` (a resource) is one of
/// a half-open breaker's probes: pass it to `breaker_record`.
#[rustler::nif]
fn breaker_allow<'a>(env: Env<'a>, router: Term<'a>, id: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let (permit, t) = r.router.breaker_allow(nonempty_binary(id, "agent_id")?)?;
        let t = maybe_transition(env, t);
        Ok(match permit {
            Admission::Denied => (atoms::deny(), t).encode(env),
            Admission::Call => (atoms::allow(), atoms::call(), t).encode(env),
            Admission::Probe(p) => {
                let probe = ResourceArc::new(ProbeResource { permit: p });
                (atoms::allow(), probe, t).encode(env)
            }
        })
    };
    reply(env, run())
}

/// `breaker_record(Router, Id, call | Probe, ok | error, LatencyUs) -> {ok,
/// none | {breaker, From, To}} | {error, already_recorded}`. A plain call
/// counts while the breaker is closed; a probe within its own half-open
/// period.
#[rustler::nif]
fn breaker_record<'a>(
    env: Env<'a>,
    router: Term<'a>,
    id: Term<'a>,
    permit: Term<'a>,
    outcome: Term<'a>,
    latency: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let id = nonempty_binary(id, "agent_id")?;
        let ok = choice(
            outcome,
            &[(atoms::ok, true), (atoms::error, false)],
            "outcome",
        )?;
        let latency: u64 = latency.decode().map_err(|_| badarg("microseconds"))?;
        let t = if Atom::from_term(permit).is_ok_and(|a| a == atoms::call()) {
            r.router.breaker_record(id, ok, latency)?
        } else {
            let probe: ResourceArc<ProbeResource> =
                permit.decode().map_err(|_| badarg("permit"))?;
            if probe.permit.agent().id() != id {
                return Err(badarg("permit"));
            }
            match probe.permit.record(ok, latency) {
                Some(recorded) => recorded.transition,
                None => return Ok(NifError::AlreadyRecorded.encode(env)),
            }
        };
        Ok((atoms::ok(), maybe_transition(env, t)).encode(env))
    };
    reply(env, run())
}

/// `breaker_state(Router, Id) -> {State, Probes, none | {breaker, From, To}}`.
#[rustler::nif]
fn breaker_state<'a>(env: Env<'a>, router: Term<'a>, id: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let (state, probes, t) = r.router.breaker_state(nonempty_binary(id, "agent_id")?)?;
        Ok((state_atom(state), probes, maybe_transition(env, t)).encode(env))
    };
    reply(env, run())
}

/// `breaker_reset(Router, Id) -> {ok, none | {breaker, From, closed}}`.
#[rustler::nif]
fn breaker_reset<'a>(env: Env<'a>, router: Term<'a>, id: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let t = r.router.breaker_reset(nonempty_binary(id, "agent_id")?)?;
        Ok((atoms::ok(), maybe_transition(env, t)).encode(env))
    };
    reply(env, run())
}

/// `has_capacity(Router, Capabilities) -> boolean()`: whether some agent
/// holding the capabilities would take a task now.
#[rustler::nif]
fn has_capacity<'a>(env: Env<'a>, router: Term<'a>, caps: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let caps = binaries(caps, "capabilities")?;
        Ok(r.router.has_capacity(&caps).encode(env))
    };
    reply(env, run())
}

/// `has_capacity(Router, Capabilities, Exclude, Kind) -> boolean()`: whether
/// a decision with these capabilities, passing `Exclude` by, of `Kind` (as
/// `decide/8`'s) would find an agent to take a task now.
#[rustler::nif(name = "has_capacity")]
fn has_capacity_for<'a>(
    env: Env<'a>,
    router: Term<'a>,
    caps: Term<'a>,
    exclude: Term<'a>,
    kind: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let caps = binaries(caps, "capabilities")?;
        let exclude = binaries(exclude, "exclude")?;
        let (swarms_only, local_only) = kind_arg(kind)?;
        let req = Request {
            exclude: &exclude,
            swarms_only,
            local_only,
            ..Request::new(&caps, Strategy::LeastConnections)
        };
        Ok(r.router.has_capacity_for(&req).encode(env))
    };
    reply(env, run())
}
