//! Trace and span identifiers for Erlang.

use std::cell::RefCell;

use erlmcp_flow_core::trace;
use rand::SeedableRng;
use rand::rngs::{SmallRng, SysRng};
use rustler::{Env, NewBinary, Term};

thread_local! {
    /// One fast PRNG per scheduler thread, seeded from the OS; falls back to a
    /// seed from the clock and the thread's address if the OS refuses.
    static RNG: RefCell<SmallRng> = RefCell::new(
        SmallRng::try_from_rng(&mut SysRng).unwrap_or_else(|_| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let local = 0u8;
            SmallRng::seed_from_u64(now ^ (&local as *const u8 as u64))
        })
    );
}

/// Runs `f` with this thread's PRNG.
pub fn with_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    RNG.with(|cell| f(&mut cell.borrow_mut()))
}

fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    NewBinary::from_slice(env, bytes).into()
}

#[rustler::nif]
fn generate_trace_id(env: Env<'_>) -> Term<'_> {
    binary(env, &with_rng(trace::generate_trace_id))
}

#[rustler::nif]
fn generate_span_id(env: Env<'_>) -> Term<'_> {
    binary(env, &with_rng(trace::generate_span_id))
}
