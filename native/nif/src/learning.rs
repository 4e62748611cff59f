//! Q-learning for Erlang: the table, its explanation, its file, and the pure
//! functions the shared vectors check.

use erlmcp_flow_core::learning::model;
use erlmcp_flow_core::learning::{self, State};
use rustler::{Encoder, Env, Term};

use crate::atoms;
use crate::error::{NifError, NifOutcome, badarg, reply};
use crate::resources::{class_arg, router_arg};
use crate::terms::{binaries, binary_term, breaker_term};

fn state_term<'a>(env: Env<'a>, s: State) -> Term<'a> {
    let success = [atoms::low(), atoms::medium(), atoms::high()][s.success as usize];
    let latency = [atoms::fast(), atoms::normal(), atoms::slow()][s.latency as usize];
    (s.load_level, success, latency, s.class).encode(env)
}

/// `q_table(Router) -> #{AgentId => #{{Load, Success, Latency, Class} => {Q, Visits}}}`,
/// visited cells only, for every row kept (registered agents and agents that left).
#[rustler::nif(schedule = "DirtyCpu")]
fn q_table<'a>(env: Env<'a>, router: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let mut out = Term::map_new(env);
        for (id, row) in r.router.shared().q_store().rows() {
            let mut cells = Term::map_new(env);
            for i in 0..row.len() {
                if row.visits(i) > 0 {
                    cells = cells
                        .map_put(
                            state_term(env, State::from_index(i)),
                            (row.value(i), row.visits(i)),
                        )
                        .map_err(|_| badarg("router"))?;
                }
            }
            out = out
                .map_put(binary_term(env, &id), cells)
                .map_err(|_| badarg("router"))?;
        }
        Ok(out)
    };
    reply(env, run())
}

/// `explain(Router, Capabilities, TaskClass) -> [#{...}]`, best value first.
/// A scan and an encoding of every candidate (1.5 ms at 10 000), hence a
/// dirty scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn explain<'a>(env: Env<'a>, router: Term<'a>, caps: Term<'a>, class: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let caps = binaries(caps, "capabilities")?;
        let class = class_arg(&r.router, class)?;
        let rows: Vec<Term<'a>> = r
            .router
            .explain(&caps, class)
            .into_iter()
            .map(|e| {
                let keys = [
                    atoms::id(),
                    atoms::state(),
                    atoms::q_value(),
                    atoms::visits(),
                    atoms::in_flight(),
                    atoms::ewma_latency_us(),
                    atoms::success_rate(),
                    atoms::weight(),
                    atoms::breaker(),
                    atoms::softmax(),
                    atoms::age_ms(),
                    atoms::aged_q_value(),
                ]
                .map(|a| a.encode(env));
                let values = [
                    binary_term(env, &e.id),
                    state_term(env, e.state),
                    e.q_value.encode(env),
                    e.visits.encode(env),
                    e.in_flight.encode(env),
                    e.ewma_latency_us.encode(env),
                    e.success_rate.encode(env),
                    e.weight.encode(env),
                    breaker_term(env, e.breaker),
                    e.softmax.encode(env),
                    match e.age_us {
                        Some(us) => (us / 1000).encode(env),
                        None => atoms::undefined().encode(env),
                    },
                    e.aged_q_value.encode(env),
                ];
                Term::map_from_term_arrays(env, &keys, &values).map_err(|_| badarg("router"))
            })
            .collect::<Result<_, _>>()?;
        Ok(rows.encode(env))
    };
    reply(env, run())
}

fn path_arg(term: Term<'_>) -> NifOutcome<std::path::PathBuf> {
    let bin = rustler::Binary::from_term(term).map_err(|_| badarg("path"))?;
    let s = std::str::from_utf8(bin.as_slice()).map_err(|_| badarg("path"))?;
    if s.is_empty() {
        return Err(badarg("path"));
    }
    Ok(std::path::PathBuf::from(s))
}

/// `q_save(Router, Path) -> {ok, Bytes} | {error, {Kind, Message}}`: encodes and
/// writes atomically (temporary file, fsync, rename).
#[rustler::nif(schedule = "DirtyIo")]
fn q_save<'a>(env: Env<'a>, router: Term<'a>, path: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let path = path_arg(path)?;
        let bytes = r.router.encode_model();
        Ok(match model::write_atomic(&path, &bytes) {
            Ok(()) => (atoms::ok(), bytes.len()).encode(env),
            Err(e) => NifError::Core(e).encode(env),
        })
    };
    reply(env, run())
}

/// `q_load(Router, Path) -> {ok, none} | {ok, {loaded, Agents, Episodes}} |
/// {error, {Kind, Message}}`. Kind: `truncated | bad_magic |
/// unsupported_version | incompatible | checksum | trailing_bytes | io`.
#[rustler::nif(schedule = "DirtyIo")]
fn q_load<'a>(env: Env<'a>, router: Term<'a>, path: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let path = path_arg(path)?;
        let config = r.router.shared().learner().config().clone();
        Ok(match model::read(&path, &config) {
            Ok(None) => (atoms::ok(), atoms::none()).encode(env),
            Ok(Some(m)) => {
                let (n, episodes) = (m.rows.len(), m.episodes);
                r.router.apply_model(m);
                (atoms::ok(), (atoms::loaded(), n, episodes)).encode(env)
            }
            Err(e) => NifError::Core(e).encode(env),
        })
    };
    reply(env, run())
}

/// `q_reset(Router) -> ok`.
#[rustler::nif(schedule = "DirtyCpu")]
fn q_reset<'a>(env: Env<'a>, router: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        router_arg(router)?.router.reset_learning();
        Ok(atoms::ok().encode(env))
    };
    reply(env, run())
}

/// A number argument within `ok` (and finite: Erlang floats always are, but
/// integers can be large enough to round to infinity).
fn float(term: Term<'_>, what: &'static str, ok: impl Fn(f64) -> bool) -> NifOutcome<f64> {
    let v = term
        .decode::<f64>()
        .or_else(|_| term.decode::<i64>().map(|i| i as f64))
        .map_err(|_| badarg(what))?;
    if v.is_finite() && ok(v) {
        Ok(v)
    } else {
        Err(badarg(what))
    }
}

fn any(_: f64) -> bool {
    true
}

/// `td_update(Q, Reward, MaxNext, Alpha, Gamma) -> float()`: the update rule
/// alone, with alpha in (0, 1] and gamma in [0, 1) as the configuration
/// takes them; the result is always finite (within `±1e12`).
#[rustler::nif]
fn td_update<'a>(
    env: Env<'a>,
    q: Term<'a>,
    r: Term<'a>,
    max_next: Term<'a>,
    alpha: Term<'a>,
    gamma: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        Ok(learning::td_update(
            float(q, "q", any)?,
            float(r, "reward", any)?,
            float(max_next, "max_next", any)?,
            float(alpha, "alpha", |a| a > 0.0 && a <= 1.0)?,
            float(gamma, "gamma", |g| (0.0..1.0).contains(&g))?,
        )
        .encode(env))
    };
    reply(env, run())
}

/// `reward(LatencyUs, Ok, FastUs, SlowUs) -> float()`: the reward function alone.
#[rustler::nif]
fn reward<'a>(
    env: Env<'a>,
    latency: Term<'a>,
    ok: Term<'a>,
    fast: Term<'a>,
    slow: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let ok: bool = ok.decode().map_err(|_| badarg("ok"))?;
        Ok(learning::reward(
            float(latency, "latency_us", |l| l >= 0.0)?,
            ok,
            float(fast, "fast_us", |f| f > 0.0)?,
            float(slow, "slow_us", |s| s > 0.0)?,
        )
        .encode(env))
    };
    reply(env, run())
}
