//! The router resource: the agent table mirror, decisions and leases.

use erlmcp_flow_core::{AgentKind, AgentSpec, Clock, Lease, Outcome, Router, Strategy};
use rustler::types::tuple::make_tuple;
use rustler::{Atom, Encoder, Env, LocalPid, MapIterator, NewBinary, Resource, ResourceArc, Term};

use crate::atoms;
use crate::decode::{Choice, binaries, choice, nonempty_binary};
use crate::error::{NifError, NifOutcome, badarg};

/// One router per running application, owned by the registry process.
pub struct RouterResource {
    router: Router<LocalPid>,
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

const STRATEGIES: &[Choice<Strategy>] = &[(atoms::round_robin, Strategy::RoundRobin)];

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

fn reply<'a>(env: Env<'a>, result: NifOutcome<Term<'a>>) -> Term<'a> {
    result.unwrap_or_else(|e| e.encode(env))
}

fn router_arg(term: Term<'_>) -> NifOutcome<ResourceArc<RouterResource>> {
    term.decode().map_err(|_| badarg("router"))
}

fn binary_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    NewBinary::from_slice(env, bytes).into()
}

/// `router_new(Opts) -> {ok, Router} | {error, {badarg, opts}}`.
/// Opts: `#{clock => system | manual}`.
#[rustler::nif]
fn router_new<'a>(env: Env<'a>, opts: Term<'a>) -> Term<'a> {
    let build = || -> NifOutcome<Term<'a>> {
        let iter = MapIterator::new(opts).ok_or_else(|| badarg("opts"))?;
        let mut clock = Clock::system();
        for (key, value) in iter {
            match Atom::from_term(key) {
                Ok(k) if k == atoms::clock() => {
                    let manual = choice(
                        value,
                        &[(atoms::system, false), (atoms::manual, true)],
                        "opts",
                    )?;
                    clock = if manual {
                        Clock::manual(0)
                    } else {
                        Clock::system()
                    };
                }
                _ => return Err(badarg("opts")),
            }
        }
        let res = ResourceArc::new(RouterResource {
            router: Router::new(clock),
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

/// `agent_insert(Router, Id, Pid, Capabilities, Kind) -> ok | {error, Reason}`.
/// Rebuilds the snapshot, O(agents), hence a dirty scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn agent_insert<'a>(
    env: Env<'a>,
    router: Term<'a>,
    id: Term<'a>,
    pid: Term<'a>,
    caps: Term<'a>,
    kind: Term<'a>,
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

/// `router_stats(Router) -> {ok, #{agents, in_flight}}`.
#[rustler::nif]
fn router_stats<'a>(env: Env<'a>, router: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let st = r.router.stats();
        let keys = [atoms::agents().encode(env), atoms::in_flight().encode(env)];
        let values = [st.agents.encode(env), st.in_flight.encode(env)];
        let map = Term::map_from_term_arrays(env, &keys, &values).map_err(|_| badarg("router"))?;
        Ok((atoms::ok(), map).encode(env))
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
            .ok_or(NifError(erlmcp_flow_core::FlowError::NotFound))?;
        let v = agent.stats().view();
        let keys = [
            atoms::in_flight().encode(env),
            atoms::dispatched().encode(env),
            atoms::succeeded().encode(env),
            atoms::failed().encode(env),
            atoms::timed_out().encode(env),
            atoms::down().encode(env),
            atoms::abandoned().encode(env),
            atoms::ewma_latency_us().encode(env),
        ];
        let values = [
            v.in_flight.encode(env),
            v.dispatched.encode(env),
            v.succeeded.encode(env),
            v.failed.encode(env),
            v.timed_out.encode(env),
            v.down.encode(env),
            v.abandoned.encode(env),
            v.ewma_latency_us.encode(env),
        ];
        let map =
            Term::map_from_term_arrays(env, &keys, &values).map_err(|_| badarg("agent_id"))?;
        Ok((atoms::ok(), map).encode(env))
    };
    reply(env, run())
}

/// `decide(Router, Capabilities, Strategy) -> {ok, AgentId, Pid, Lease} | {error, Reason}`.
#[rustler::nif]
fn decide<'a>(env: Env<'a>, router: Term<'a>, caps: Term<'a>, strategy: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let caps = binaries(caps, "capabilities")?;
        let strategy = choice(strategy, STRATEGIES, "strategy")?;
        let lease = r.router.decide(&caps, strategy)?;
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
