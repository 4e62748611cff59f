//! The single conversion of core errors into Erlang terms.

use erlmcp_flow_core::FlowError;
use rustler::{Atom, Encoder, Env, Term};

use crate::atoms;

/// Every `{error, Reason}` the NIFs answer: the core's one error type, and
/// the few refusals that exist only at the boundary (a term with no JSON
/// form, a lease or probe settled twice, a header that is not trace
/// context). Encoded into Erlang terms here and nowhere else.
#[derive(Debug)]
pub enum NifError {
    Core(FlowError),
    /// A term that has no JSON form; the text says which part.
    Unencodable(String),
    AlreadySettled,
    AlreadyRecorded,
    AlreadyEnded,
    InvalidTraceContext,
    /// The manual clock was asked to move, but the router runs on the system clock.
    SystemClock,
}

impl From<FlowError> for NifError {
    fn from(e: FlowError) -> Self {
        NifError::Core(e)
    }
}

/// `{error, {badarg, What}}` for an argument that failed to decode.
pub fn badarg(what: &'static str) -> NifError {
    NifError::Core(FlowError::BadArg(what))
}

impl Encoder for NifError {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let reason = match self {
            NifError::Core(e) => reason(env, e),
            NifError::Unencodable(why) => (atoms::unencodable(), why.as_str()).encode(env),
            NifError::AlreadySettled => atoms::already_settled().encode(env),
            NifError::AlreadyRecorded => atoms::already_recorded().encode(env),
            NifError::AlreadyEnded => atoms::already_ended().encode(env),
            NifError::InvalidTraceContext => atoms::invalid_trace_context().encode(env),
            NifError::SystemClock => atoms::system_clock().encode(env),
        };
        (atoms::error(), reason).encode(env)
    }
}

/// The Erlang reason of every core error, in one place: an atom, `{badarg,
/// What}` for an argument, `{Kind, Message}` for a model file, `{workload,
/// Message}` for a simulator workload.
pub fn reason<'a>(env: Env<'a>, e: &FlowError) -> Term<'a> {
    use FlowError::*;
    let atom = match e {
        NoAgentsAvailable => atoms::no_agents_available(),
        Overloaded => atoms::overloaded(),
        AlreadyRegistered => atoms::already_registered(),
        NotFound => atoms::not_found(),
        BadArg(what) => {
            // `what` is one of a fixed set of static names, so making the
            // atom cannot grow the atom table without bound.
            let what = Atom::from_str(env, what).unwrap_or_else(|_| atoms::badarg());
            return (atoms::badarg(), what).encode(env);
        }
        RingNotBuilt => atoms::ring_not_built(),
        MessageTooLarge => atoms::too_large(),
        MessageTooDeep => atoms::too_deep(),
        ParseError => atoms::parse_error(),
        WeakSecret => atoms::weak_secret(),
        BadSignature => atoms::bad_signature(),
        Stale => atoms::stale(),
        Replayed => atoms::replayed(),
        Truncated
        | BadMagic
        | UnsupportedVersion(_)
        | Incompatible { .. }
        | Checksum
        | TrailingBytes
        | NonFinite
        | NotRegular
        | FileTooLarge(_)
        | Io(_) => {
            let kind = match e {
                Truncated => atoms::truncated(),
                BadMagic => atoms::bad_magic(),
                UnsupportedVersion(_) => atoms::unsupported_version(),
                Incompatible { .. } => atoms::incompatible(),
                Checksum => atoms::checksum(),
                TrailingBytes => atoms::trailing_bytes(),
                NonFinite => atoms::non_finite(),
                NotRegular => atoms::not_regular(),
                FileTooLarge(_) => atoms::too_large(),
                _ => atoms::io(),
            };
            return (kind, e.to_string()).encode(env);
        }
        WorkloadJson(_) | InvalidWorkload(_) => {
            return (atoms::workload(), e.to_string()).encode(env);
        }
    };
    atom.encode(env)
}

pub type NifOutcome<T> = Result<T, NifError>;

/// The NIF's answer: the term made, or the error encoded.
pub fn reply<'a>(env: Env<'a>, result: NifOutcome<Term<'a>>) -> Term<'a> {
    result.unwrap_or_else(|e| e.encode(env))
}
