//! Routing: the agent table and its snapshots, each agent's hot cell and live
//! stats, the strategies, the consistent-hash ring, and the router that makes
//! one decision and settles its lease.

pub mod agents;
pub mod append;
pub mod latency;
pub mod ring;
pub mod router;
pub mod stats;
pub mod strategy;
