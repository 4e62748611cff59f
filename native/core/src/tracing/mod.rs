//! Tracing: W3C trace context ([`context`]), the correlation store of spans
//! ([`correlation`]) and their OTLP/JSON encoding ([`otlp`]).

pub mod context;
pub mod correlation;
pub mod otlp;
