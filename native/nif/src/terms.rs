//! Conversions at the boundary: decoding of NIF arguments, each failure
//! naming the argument it refused, and the encodings several NIF modules
//! share.

use erlmcp_flow_core::{BreakerState, Transition};
use rustler::{Atom, Binary, Encoder, Env, ListIterator, NewBinary, Term};

use crate::atoms;
use crate::error::{NifOutcome, badarg};

/// The bytes of a non-empty binary argument.
pub fn nonempty_binary<'a>(term: Term<'a>, what: &'static str) -> NifOutcome<&'a [u8]> {
    match Binary::from_term(term) {
        Ok(bin) if !bin.is_empty() => Ok(bin.as_slice()),
        _ => Err(badarg(what)),
    }
}

/// A proper list of non-empty binaries (the list may be empty).
pub fn binaries<'a>(term: Term<'a>, what: &'static str) -> NifOutcome<Vec<&'a [u8]>> {
    // rustler's list iterator panics at an improper tail; the length query
    // refuses improper lists up front, so the walk below never meets one.
    let len = term.list_length().map_err(|_| badarg(what))?;
    let iter: ListIterator<'a> = term.decode().map_err(|_| badarg(what))?;
    let mut out = Vec::with_capacity(len);
    for item in iter {
        out.push(nonempty_binary(item, what)?);
    }
    Ok(out)
}

/// An atom-named choice: the atom's constructor and the value it stands for.
pub type Choice<T> = (fn() -> Atom, T);

/// An atom argument, matched against `choices`.
pub fn choice<T: Copy>(term: Term<'_>, choices: &[Choice<T>], what: &'static str) -> NifOutcome<T> {
    let atom = Atom::from_term(term).map_err(|_| badarg(what))?;
    choices
        .iter()
        .find(|(name, _)| name() == atom)
        .map(|&(_, value)| value)
        .ok_or_else(|| badarg(what))
}

/// A binary term holding `bytes`.
pub fn binary_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    NewBinary::from_slice(env, bytes).into()
}

pub fn state_atom(s: BreakerState) -> Atom {
    match s {
        BreakerState::Closed => atoms::closed(),
        BreakerState::Open => atoms::open(),
        BreakerState::HalfOpen => atoms::half_open(),
    }
}

/// A breaker state as an atom term.
pub fn breaker_term<'a>(env: Env<'a>, s: BreakerState) -> Term<'a> {
    state_atom(s).encode(env)
}

/// `{breaker, From, To}`.
pub fn transition_term<'a>(env: Env<'a>, t: Transition) -> Term<'a> {
    (atoms::breaker(), state_atom(t.from), state_atom(t.to)).encode(env)
}
