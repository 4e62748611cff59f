//! The single conversion of core errors into Erlang terms.

use erlmcp_flow_core::FlowError;
use rustler::{Atom, Encoder, Env, Term};

use crate::atoms;

/// A core error on its way to Erlang as `{error, Reason}`.
pub struct NifError(pub FlowError);

impl From<FlowError> for NifError {
    fn from(e: FlowError) -> Self {
        NifError(e)
    }
}

/// `{error, {badarg, What}}` for an argument that failed to decode.
pub fn badarg(what: &'static str) -> NifError {
    NifError(FlowError::BadArg(what))
}

impl Encoder for NifError {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let reason = match &self.0 {
            FlowError::NoAgentsAvailable => atoms::no_agents_available().encode(env),
            FlowError::Overloaded => atoms::overloaded().encode(env),
            FlowError::AlreadyRegistered => atoms::already_registered().encode(env),
            FlowError::NotFound => atoms::not_found().encode(env),
            FlowError::BadArg(what) => {
                // `what` is one of a fixed set of static names, so making the
                // atom cannot grow the atom table without bound.
                let what = Atom::from_str(env, what).unwrap_or_else(|_| atoms::badarg());
                (atoms::badarg(), what).encode(env)
            }
        };
        (atoms::error(), reason).encode(env)
    }
}

pub type NifOutcome<T> = Result<T, NifError>;
