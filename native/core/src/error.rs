//! The one error type of the core.

use thiserror::Error;

/// Every way a core operation can refuse its input or fail.
///
/// The NIF crate turns each variant into an Erlang term once (`{error, Reason}`),
/// so the names here are the reasons Erlang callers see.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlowError {
    /// No registered agent holds every required capability, or all that do
    /// have their breaker open.
    #[error("no agent holds the required capabilities")]
    NoAgentsAvailable,
    /// Agents hold the capabilities but every one is at its bulkhead limit.
    #[error("every capable agent is at its concurrency limit")]
    Overloaded,
    /// An agent with this id is already in the table.
    #[error("agent id already registered")]
    AlreadyRegistered,
    /// No agent with this id is in the table.
    #[error("agent id not found")]
    NotFound,
    /// An argument was malformed; the payload names which one.
    #[error("bad argument: {0}")]
    BadArg(&'static str),
}
