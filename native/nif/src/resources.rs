//! The resources the NIFs hand to Erlang, and the decoding of them.
//!
//! Every NIF module imports these from here (none imports another NIF
//! module): the router, a lease, an open span, a breaker's probe.

use erlmcp_flow_core::routing::router::OpenSpan;
use erlmcp_flow_core::{Lease, ProbePermit, Router};
use rustler::{Atom, Binary, Encoder, Env, LocalPid, Resource, Term, TermType};

use crate::atoms;
use crate::error::{NifOutcome, badarg};

/// An agent's pid as the table keeps it: a pid of this node as is; another
/// node's (a cluster's mirrored agent) in the external term format, made a
/// term again when a decision returns it.
#[derive(Clone)]
pub enum AgentPid {
    Local(LocalPid),
    Remote(Box<[u8]>),
}

impl AgentPid {
    pub fn from_term(term: Term<'_>) -> NifOutcome<Self> {
        if let Ok(pid) = term.decode::<LocalPid>() {
            return Ok(AgentPid::Local(pid));
        }
        if term.get_type() == TermType::Pid {
            return Ok(AgentPid::Remote(term.to_binary().as_slice().into()));
        }
        Err(badarg("pid"))
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, AgentPid::Remote(_))
    }
}

impl Encoder for AgentPid {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            AgentPid::Local(pid) => pid.encode(env),
            AgentPid::Remote(bytes) => env
                .binary_to_term(bytes)
                .map_or_else(|| atoms::undefined().encode(env), |(t, _)| t),
        }
    }
}

/// One router per running application, owned by the registry process.
pub struct RouterResource {
    pub router: Router<AgentPid>,
}

#[rustler::resource_impl]
impl Resource for RouterResource {}

/// A task in flight. Dropped by the garbage collector when its holder is gone;
/// the core's `Drop` then releases the load if nobody completed it.
pub struct LeaseResource {
    pub lease: Lease<AgentPid>,
}

#[rustler::resource_impl]
impl Resource for LeaseResource {}

/// An open span (a task's, or a child an agent opened), held by whoever
/// waits for the task or makes the call. The garbage collector drops it
/// when its holders are gone; the core then closes an unended span as
/// abandoned.
pub struct SpanResource {
    pub span: OpenSpan,
}

#[rustler::resource_impl]
impl Resource for SpanResource {}

/// A half-open probe granted to an Erlang caller by `breaker_allow`. The
/// caller keeps it until it records the call's outcome; if the caller dies
/// first, the garbage collector drops it and the probe's slot comes back.
pub struct ProbeResource {
    pub permit: ProbePermit<AgentPid>,
}

#[rustler::resource_impl]
impl Resource for ProbeResource {}

/// The router a term names, borrowed for the call (the term keeps it
/// alive): no reference count is taken and given back, which on the routing
/// path would be two atomic writes to one cache line every scheduler shares.
pub fn router_arg(term: Term<'_>) -> NifOutcome<&RouterResource> {
    term.try_get_resource::<RouterResource>()
        .ok_or_else(|| badarg("router"))
}

/// The task class argument: a binary (hashed into the configured classes) or `undefined`.
pub fn class_arg(router: &Router<AgentPid>, term: Term<'_>) -> NifOutcome<u32> {
    if Atom::from_term(term).is_ok_and(|a| a == atoms::undefined()) {
        return Ok(0);
    }
    let bin = Binary::from_term(term).map_err(|_| badarg("task_class"))?;
    Ok(router.task_class(bin.as_slice()))
}
