//! rustler NIF of erlmcp_flow: resources and term conversion, nothing else.
//!
//! Every algorithm lives in `erlmcp_flow_core`; this crate decodes Erlang
//! terms into owned Rust values at the boundary, calls the core, and encodes
//! the answer. Arguments are taken as raw `Term`s and decoded here so that
//! garbage from Erlang becomes `{error, {badarg, What}}` naming the argument,
//! never a panic and never a bare `badarg`.

mod atoms;
mod cluster;
mod error;
mod jsonrpc;
mod learning;
mod memory;
mod resources;
mod rng;
mod router;
mod terms;
mod tracing;

rustler::init!("erlmcp_flow_nif");
