//! Resilience: per-agent circuit breakers. (The bulkhead permit is a count in
//! the agent's hot cell, `routing::hot`.)

pub mod breaker;
