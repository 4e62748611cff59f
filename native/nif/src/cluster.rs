//! The cluster's byte work for Erlang: each peer's phi accrual estimate, and
//! signed quorum votes (the key held in a resource, never as a term).

use std::sync::Mutex;

use erlmcp_flow_core::FlowError;
use erlmcp_flow_core::cluster::phi::PhiEstimator;
use erlmcp_flow_core::cluster::vote::{self, ReplayGuard, Vote};
use rustler::{Binary, Encoder, Env, Resource, ResourceArc, Term};

use crate::atoms;
use crate::error::{NifError, NifOutcome, badarg, reply};
use crate::jsonrpc::{NORMAL_SIGN_BYTES, dirty_only};
use crate::terms::binary_term;

/// One peer's heartbeat history, owned by the failure detector process.
pub struct PhiResource {
    estimator: Mutex<PhiEstimator>,
}

#[rustler::resource_impl]
impl Resource for PhiResource {}

fn phi_arg(term: Term<'_>) -> NifOutcome<ResourceArc<PhiResource>> {
    term.decode().map_err(|_| badarg("phi"))
}

fn ms_arg(term: Term<'_>, what: &'static str) -> NifOutcome<u64> {
    term.decode::<u64>().map_err(|_| badarg(what))
}

/// `phi_new(MinStdDevMs) -> Phi`: an estimator whose deviation is never taken
/// below `MinStdDevMs`.
#[rustler::nif]
fn phi_new<'a>(env: Env<'a>, min_std_dev_ms: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let min = min_std_dev_ms
            .decode::<f64>()
            .or_else(|_| min_std_dev_ms.decode::<i64>().map(|i| i as f64))
            .map_err(|_| badarg("min_std_dev_ms"))?;
        let r = ResourceArc::new(PhiResource {
            estimator: Mutex::new(PhiEstimator::with_min_std_dev(min)),
        });
        Ok(r.encode(env))
    };
    reply(env, run())
}

/// `phi_heartbeat(Phi, NowMs) -> ok`.
#[rustler::nif]
fn phi_heartbeat<'a>(env: Env<'a>, phi: Term<'a>, now_ms: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = phi_arg(phi)?;
        let now = ms_arg(now_ms, "now_ms")?;
        if let Ok(mut e) = r.estimator.lock() {
            e.heartbeat(now);
        }
        Ok(atoms::ok().encode(env))
    };
    reply(env, run())
}

/// `phi_resume(Phi, NowMs) -> ok`: a heartbeat ending a silence judged an
/// outage, not learned as an interval.
#[rustler::nif]
fn phi_resume<'a>(env: Env<'a>, phi: Term<'a>, now_ms: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = phi_arg(phi)?;
        let now = ms_arg(now_ms, "now_ms")?;
        if let Ok(mut e) = r.estimator.lock() {
            e.resume(now);
        }
        Ok(atoms::ok().encode(env))
    };
    reply(env, run())
}

/// `phi_value(Phi, NowMs) -> {Phi :: float(), Samples}`.
#[rustler::nif]
fn phi_value<'a>(env: Env<'a>, phi: Term<'a>, now_ms: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = phi_arg(phi)?;
        let now = ms_arg(now_ms, "now_ms")?;
        let (value, samples) = match r.estimator.lock() {
            Ok(e) => (e.phi(now), e.samples()),
            Err(_) => (0.0, 0),
        };
        Ok((value, samples as u64).encode(env))
    };
    reply(env, run())
}

/// The cluster's shared secret, once loaded: signs and verifies votes. As a
/// term it is an opaque reference, so no log line or crash report can show it.
pub struct KeyResource {
    secret: Box<[u8]>,
}

#[rustler::resource_impl]
impl Resource for KeyResource {}

/// Seen nonces of verified votes, per sending node, within the replay window.
pub struct ReplayResource {
    guard: Mutex<ReplayGuard>,
}

#[rustler::resource_impl]
impl Resource for ReplayResource {}

/// `vote_key(Secret) -> {ok, Key} | {error, weak_secret}`.
#[rustler::nif]
fn vote_key<'a>(env: Env<'a>, secret: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let bin = Binary::from_term(secret).map_err(|_| badarg("secret"))?;
        if bin.len() < vote::MIN_SECRET_BYTES {
            return Ok(NifError::Core(FlowError::WeakSecret).encode(env));
        }
        let key = ResourceArc::new(KeyResource {
            secret: bin.as_slice().into(),
        });
        Ok((atoms::ok(), key).encode(env))
    };
    reply(env, run())
}

/// The vote in `{TraceId, SpanId, AgentId, Node, Answer, TimestampMs, Nonce}`,
/// every id a binary, `Answer` the answer's external term format.
struct VoteTerms<'a> {
    trace_id: Binary<'a>,
    span_id: Binary<'a>,
    agent_id: Binary<'a>,
    node: Binary<'a>,
    answer: Binary<'a>,
    timestamp_ms: u64,
    nonce: u64,
}

impl<'a> VoteTerms<'a> {
    fn from_term(term: Term<'a>) -> NifOutcome<Self> {
        let (t, s, a, n, ans, ts, nonce): (Binary, Binary, Binary, Binary, Binary, u64, u64) =
            term.decode().map_err(|_| badarg("vote"))?;
        Ok(VoteTerms {
            trace_id: t,
            span_id: s,
            agent_id: a,
            node: n,
            answer: ans,
            timestamp_ms: ts,
            nonce,
        })
    }

    /// Whether hashing it fits a call on a normal scheduler: an answer of up
    /// to [`NORMAL_SIGN_BYTES`] and ids of up to 1 KiB together.
    fn fits_normal(&self) -> bool {
        let ids = self.trace_id.len() + self.span_id.len() + self.agent_id.len() + self.node.len();
        self.answer.len() <= NORMAL_SIGN_BYTES && ids <= 1024
    }

    fn vote(&self) -> Vote<'_> {
        Vote {
            trace_id: self.trace_id.as_slice(),
            span_id: self.span_id.as_slice(),
            agent_id: self.agent_id.as_slice(),
            node: self.node.as_slice(),
            answer_digest: vote::answer_digest(self.answer.as_slice()),
            timestamp_ms: self.timestamp_ms,
            nonce: self.nonce,
        }
    }
}

fn key_arg(term: Term<'_>) -> NifOutcome<ResourceArc<KeyResource>> {
    term.decode().map_err(|_| badarg("key"))
}

/// `vote_sign(Key, Vote) -> Signature` (32 bytes). The time is that of
/// SHA-256 over the answer: on a normal scheduler an answer past 64 KiB (or
/// ids past 1 KiB) is `{error, {dirty_only, 65536}}`, signed with
/// `vote_sign_dirty`.
#[rustler::nif]
fn vote_sign<'a>(env: Env<'a>, key: Term<'a>, vote_term: Term<'a>) -> Term<'a> {
    sign(env, key, vote_term, true)
}

/// `vote_sign/2` on a dirty scheduler, for large answers: no bound.
#[rustler::nif(schedule = "DirtyCpu")]
fn vote_sign_dirty<'a>(env: Env<'a>, key: Term<'a>, vote_term: Term<'a>) -> Term<'a> {
    sign(env, key, vote_term, false)
}

fn sign<'a>(env: Env<'a>, key: Term<'a>, vote_term: Term<'a>, normal: bool) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let key = key_arg(key)?;
        let v = VoteTerms::from_term(vote_term)?;
        if normal && !v.fits_normal() {
            return Ok(dirty_only(env, NORMAL_SIGN_BYTES));
        }
        Ok(match vote::sign(&key.secret, &v.vote()) {
            Ok(sig) => binary_term(env, &sig),
            Err(e) => NifError::Core(e).encode(env),
        })
    };
    reply(env, run())
}

/// `vote_verify(Key, Vote, Signature) -> ok | {error, bad_signature}`,
/// compared in constant time. As `vote_sign`: on a normal scheduler past 64
/// KiB of answer, `{error, {dirty_only, 65536}}` (`vote_verify_dirty`).
#[rustler::nif]
fn vote_verify<'a>(env: Env<'a>, key: Term<'a>, vote_term: Term<'a>, sig: Term<'a>) -> Term<'a> {
    verify(env, key, vote_term, sig, true)
}

/// `vote_verify/3` on a dirty scheduler, for large answers.
#[rustler::nif(schedule = "DirtyCpu")]
fn vote_verify_dirty<'a>(
    env: Env<'a>,
    key: Term<'a>,
    vote_term: Term<'a>,
    sig: Term<'a>,
) -> Term<'a> {
    verify(env, key, vote_term, sig, false)
}

fn verify<'a>(
    env: Env<'a>,
    key: Term<'a>,
    vote_term: Term<'a>,
    sig: Term<'a>,
    normal: bool,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let key = key_arg(key)?;
        let v = VoteTerms::from_term(vote_term)?;
        if normal && !v.fits_normal() {
            return Ok(dirty_only(env, NORMAL_SIGN_BYTES));
        }
        let sig = Binary::from_term(sig).map_err(|_| badarg("signature"))?;
        Ok(match vote::verify(&key.secret, &v.vote(), sig.as_slice()) {
            Ok(()) => atoms::ok().encode(env),
            Err(e) => NifError::Core(e).encode(env),
        })
    };
    reply(env, run())
}

/// `replay_guard(WindowMs) -> Guard`.
#[rustler::nif]
fn replay_guard<'a>(env: Env<'a>, window_ms: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let w = ms_arg(window_ms, "window_ms")?;
        Ok(ResourceArc::new(ReplayResource {
            guard: Mutex::new(ReplayGuard::new(w)),
        })
        .encode(env))
    };
    reply(env, run())
}

/// `replay_check(Guard, Vote, NowMs) -> ok | {error, stale | replayed}`:
/// a vote (verified first) passes once within the window.
#[rustler::nif]
fn replay_check<'a>(
    env: Env<'a>,
    guard: Term<'a>,
    vote_term: Term<'a>,
    now_ms: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let g: ResourceArc<ReplayResource> = guard.decode().map_err(|_| badarg("guard"))?;
        let v = VoteTerms::from_term(vote_term)?;
        let now = ms_arg(now_ms, "now_ms")?;
        let result = match g.guard.lock() {
            Ok(mut guard) => guard.check(&v.vote(), now),
            Err(_) => Err(FlowError::Replayed),
        };
        Ok(match result {
            Ok(()) => atoms::ok().encode(env),
            Err(e) => NifError::Core(e).encode(env),
        })
    };
    reply(env, run())
}
