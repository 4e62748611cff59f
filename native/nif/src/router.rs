//! The router resource: the agent table mirror, decisions and leases.

use erlmcp_flow_core::learning::EpsilonSchedule;
use erlmcp_flow_core::ring::key_hash;
use erlmcp_flow_core::{
    AgentKind, AgentSpec, Clock, FlowError, Lease, Outcome, Request, Router, RouterConfig, Strategy,
};
use rustler::types::tuple::make_tuple;
use rustler::{
    Atom, Binary, Encoder, Env, LocalPid, MapIterator, NewBinary, Resource, ResourceArc, Term,
};

use crate::atoms;
use crate::decode::{Choice, binaries, choice, nonempty_binary};
use crate::error::{NifError, NifOutcome, badarg};
use crate::trace::with_rng;

/// One router per running application, owned by the registry process.
pub struct RouterResource {
    pub router: Router<LocalPid>,
}

#[rustler::resource_impl]
impl Resource for RouterResource {}

/// A task in flight. Dropped by the garbage collector when its holder is gone;
/// the core's `Drop` then releases the load if nobody completed it.
pub struct LeaseResource {
    lease: Lease<LocalPid>,
}

#[rustler::resource_impl]
impl Resource for LeaseResource {}

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
    (atoms::timeout, Outcome::Timeout),
    (atoms::down, Outcome::AgentDown),
    (atoms::abandoned, Outcome::Abandoned),
];

const SCHEDULES: &[Choice<EpsilonSchedule>] = &[
    (atoms::exponential, EpsilonSchedule::Exponential),
    (atoms::linear, EpsilonSchedule::Linear),
    (atoms::cosine, EpsilonSchedule::Cosine),
];

pub fn reply<'a>(env: Env<'a>, result: NifOutcome<Term<'a>>) -> Term<'a> {
    result.unwrap_or_else(|e| e.encode(env))
}

pub fn router_arg(term: Term<'_>) -> NifOutcome<ResourceArc<RouterResource>> {
    term.decode().map_err(|_| badarg("router"))
}

pub fn binary_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    NewBinary::from_slice(env, bytes).into()
}

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
            q.max_concurrent = positive_int(value)?;
        } else if k == atoms::consistent_hash_vnodes() {
            c.vnodes = positive_int(value)?;
        } else if k == atoms::hash_balance_factor() {
            c.hash_balance_factor = if Atom::from_term(value).is_ok_and(|a| a == atoms::infinity())
            {
                None
            } else {
                Some(number(value, |v| v > 1.0)?)
            };
        } else if k == atoms::ewma_decay_ms() {
            c.ewma_decay_us = number(value, |v| v > 0.0)? * 1000.0;
        } else {
            return Err(badarg("opts"));
        }
    }
    if c.q.slow_us <= c.q.fast_us {
        return Err(badarg("opts"));
    }
    Ok((c, manual))
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

/// `clock_advance(Router, Microseconds) -> {ok, NowUs} | {error, system_clock}`.
#[rustler::nif]
fn clock_advance<'a>(env: Env<'a>, router: Term<'a>, us: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let us: u64 = us.decode().map_err(|_| badarg("microseconds"))?;
        Ok(match r.router.clock().advance(us) {
            Some(now) => (atoms::ok(), now).encode(env),
            None => (atoms::error(), atoms::system_clock()).encode(env),
        })
    };
    reply(env, run())
}

/// `agent_insert(Router, Id, Pid, Capabilities, Kind, Weight) -> ok | {error, Reason}`.
/// Rebuilds the snapshot and merges the ring, O(agents), hence a dirty scheduler.
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
        let spec = AgentSpec {
            id: nonempty_binary(id, "agent_id")?.to_vec(),
            payload: pid.decode::<LocalPid>().map_err(|_| badarg("pid"))?,
            capabilities: binaries(caps, "capabilities")?
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect(),
            kind: choice(kind, KINDS, "kind")?,
            weight: weight
                .decode::<f64>()
                .or_else(|_| weight.decode::<i64>().map(|i| i as f64))
                .map_err(|_| badarg("weight"))?,
        };
        r.router.agents().insert(spec)?;
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

fn map<'a>(env: Env<'a>, pairs: &[(Atom, Term<'a>)]) -> NifOutcome<Term<'a>> {
    let keys: Vec<Term<'a>> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
    let values: Vec<Term<'a>> = pairs.iter().map(|(_, v)| *v).collect();
    Term::map_from_term_arrays(env, &keys, &values).map_err(|_| badarg("map"))
}

/// `router_stats(Router) -> {ok, #{agents, in_flight, episodes, epsilon}}`.
#[rustler::nif]
fn router_stats<'a>(env: Env<'a>, router: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let st = r.router.stats();
        let m = map(
            env,
            &[
                (atoms::agents(), st.agents.encode(env)),
                (atoms::in_flight(), st.in_flight.encode(env)),
                (atoms::episodes(), st.episodes.encode(env)),
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
        let agent = snapshot.find(id).ok_or(NifError(FlowError::NotFound))?;
        let v = agent.stats().view();
        let m = map(
            env,
            &[
                (atoms::in_flight(), v.in_flight.encode(env)),
                (atoms::dispatched(), v.dispatched.encode(env)),
                (atoms::succeeded(), v.succeeded.encode(env)),
                (atoms::failed(), v.failed.encode(env)),
                (atoms::timed_out(), v.timed_out.encode(env)),
                (atoms::down(), v.down.encode(env)),
                (atoms::abandoned(), v.abandoned.encode(env)),
                (atoms::ewma_latency_us(), v.ewma_latency_us.encode(env)),
                (atoms::success_rate(), v.success_rate.encode(env)),
                (atoms::weight(), agent.weight().encode(env)),
            ],
        )?;
        Ok((atoms::ok(), m).encode(env))
    };
    reply(env, run())
}

/// The sticky key argument: a binary (hashed) or `undefined`.
fn key_arg(term: Term<'_>) -> NifOutcome<Option<u64>> {
    if Atom::from_term(term).is_ok_and(|a| a == atoms::undefined()) {
        return Ok(None);
    }
    let bin = Binary::from_term(term).map_err(|_| badarg("sticky_key"))?;
    Ok(Some(key_hash(bin.as_slice())))
}

/// The task class argument: a binary (hashed into the configured classes) or `undefined`.
pub fn class_arg(router: &Router<LocalPid>, term: Term<'_>) -> NifOutcome<u32> {
    if Atom::from_term(term).is_ok_and(|a| a == atoms::undefined()) {
        return Ok(0);
    }
    let bin = Binary::from_term(term).map_err(|_| badarg("task_class"))?;
    Ok(router.task_class(bin.as_slice()))
}

/// `decide(Router, Capabilities, Strategy, StickyKey, TaskClass) ->
/// {ok, AgentId, Pid, Lease} | {error, Reason}`.
#[rustler::nif]
fn decide<'a>(
    env: Env<'a>,
    router: Term<'a>,
    caps: Term<'a>,
    strategy: Term<'a>,
    key: Term<'a>,
    class: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let caps = binaries(caps, "capabilities")?;
        let req = Request {
            capabilities: &caps,
            strategy: choice(strategy, STRATEGIES, "strategy")?,
            key: key_arg(key)?,
            class: class_arg(&r.router, class)?,
        };
        let lease = with_rng(|rng| r.router.decide(&req, rng))?;
        let agent = lease.agent().clone();
        let lease = ResourceArc::new(LeaseResource { lease });
        Ok(make_tuple(
            env,
            &[
                atoms::ok().encode(env),
                binary_term(env, agent.id()),
                agent.payload().encode(env),
                lease.encode(env),
            ],
        ))
    };
    reply(env, run())
}

/// `complete(Lease, Outcome) -> {ok, LatencyUs} | {error, already_settled}`.
/// Outcome: `ok | error | timeout | down | abandoned`.
#[rustler::nif]
fn complete<'a>(env: Env<'a>, lease: Term<'a>, outcome: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let lease: ResourceArc<LeaseResource> = lease.decode().map_err(|_| badarg("lease"))?;
        let outcome = choice(outcome, OUTCOMES, "outcome")?;
        Ok(match lease.lease.complete(outcome) {
            Some(latency) => (atoms::ok(), latency).encode(env),
            None => (atoms::error(), atoms::already_settled()).encode(env),
        })
    };
    reply(env, run())
}
