//! The routing core of erlmcp_flow.
//!
//! Everything here is plain Rust and knows nothing of Erlang: the NIF crate
//! (`native/nif`) converts terms into these types and back. The parts:
//!
//! - [`routing`]: the agent table (immutable snapshots swapped on every
//!   membership change, so readers never take a lock), each agent's hot cell
//!   and live stats, the strategies, the consistent-hash ring, and the router
//!   that makes one decision and settles its lease;
//! - [`learning`]: the Q-table, its update and its file;
//! - [`resilience`]: per-agent circuit breakers;
//! - [`tracing`]: W3C trace context, the correlation store, OTLP/JSON;
//! - [`cluster`]: signed votes for quorum tasks, and their replay guard;
//! - [`rpc`]: the JSON-RPC 2.0 codec of the transports;
//! - `sim`: the deterministic simulator (the `sim` feature, on by default;
//!   the NIF builds the core without it);
//! - [`shared`]: the configuration and state every part of a router shares;
//! - [`hot`]: each agent's hot cell, read by the strategies and written by
//!   the breakers and the learner;
//! - [`clock`]: the time seam, real or driven by tests; [`error`]: the one
//!   error type.
//!
//! Imports go one way: the parts import `shared`, `hot`, `clock` and `error`
//! (which import no part), `routing` imports `learning`, `resilience` and
//! `tracing`, and no module imports one that imports it (`tests/layers.rs`
//! checks it).

pub mod clock;
pub mod cluster;
pub mod error;
pub mod hot;
pub mod learning;
pub mod name;
pub mod resilience;
pub mod routing;
pub mod rpc;
pub mod shared;
#[cfg(feature = "sim")]
pub mod sim;
pub mod striped;
pub mod tracing;

pub use clock::Clock;
pub use error::FlowError;
pub use learning::{EpsilonSchedule, QConfig, State};
pub use name::Name;
pub use resilience::breaker::{BreakerConfig, BreakerState, Transition, WindowKind};
pub use routing::agents::{Agent, AgentKind, AgentSpec, AgentTable, Snapshot};
pub use routing::router::{
    Admission, Completion, Explained, Lease, ProbePermit, Request, Router, RouterStats,
};
pub use routing::stats::{AgentStats, StatsView};
pub use routing::strategy::Strategy;
pub use shared::{Outcome, RouterConfig, Shared};
