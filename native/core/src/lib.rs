//! The routing core of erlmcp_flow.
//!
//! Everything here is plain Rust and knows nothing of Erlang: the NIF crate
//! (`native/nif`) converts terms into these types and back. The pieces:
//!
//! - [`agents`]: the agent table, an immutable snapshot swapped on every
//!   membership change so readers never take a lock;
//! - [`stats`]: per-agent live counters (in-flight load, outcomes, EWMA latency);
//! - [`strategy`]: the load-balancing strategies that pick one candidate;
//! - [`learning`]: the Q-learning table, its update and its persistence;
//! - [`ring`]: the consistent-hash ring;
//! - [`breaker`]: per-agent circuit breakers; [`hot`]: the dense per-agent
//!   cells decisions scan;
//! - [`router`]: one routing decision (filter, pick, take a lease) and its completion;
//! - [`clock`]: the time seam, real or driven by tests;
//! - [`trace`]: trace and span identifiers.

pub mod agents;
pub mod breaker;
pub mod clock;
pub mod correlation;
pub mod error;
pub mod hot;
pub mod learning;
pub mod model;
pub mod otlp;
pub mod ring;
pub mod router;
pub mod shared;
pub mod sim;
pub mod stats;
pub mod strategy;
pub mod trace;

pub use agents::{Agent, AgentKind, AgentSpec, AgentTable, Snapshot};
pub use breaker::{BreakerConfig, BreakerState, Transition, WindowKind};
pub use clock::Clock;
pub use error::FlowError;
pub use learning::{EpsilonSchedule, QConfig, State};
pub use router::{Completion, Explained, Lease, Request, Router, RouterStats};
pub use shared::{Outcome, RouterConfig, Shared};
pub use stats::{AgentStats, StatsView};
pub use strategy::Strategy;
