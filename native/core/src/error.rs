//! The one error type of the core.

use thiserror::Error;

/// Every way a core operation can refuse its input or fail: routing, JSON
/// values, votes, model files and simulator workloads alike.
///
/// The NIF crate turns each variant into an Erlang term in one place (its
/// `error.rs`), so the Erlang names live there, not here.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlowError {
    // -- routing --
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
    /// A consistent-hash decision on a table whose ring is built on first
    /// use ([`crate::RouterConfig::lazy_ring`]) before it was: build it
    /// ([`crate::AgentTable::build_ring`], linear in the agents) and decide
    /// again.
    #[error("the consistent-hash ring is not built yet")]
    RingNotBuilt,

    // -- JSON messages (rpc) --
    /// A message past the size limit.
    #[error("the message is larger than the limit")]
    MessageTooLarge,
    /// A message nested past the depth limit.
    #[error("the message nests deeper than the limit")]
    MessageTooDeep,
    /// Not JSON.
    #[error("the message is not JSON")]
    ParseError,

    // -- votes (cluster) --
    #[error("the secret is shorter than 16 bytes")]
    WeakSecret,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the timestamp is outside the replay window")]
    Stale,
    #[error("the nonce was seen before")]
    Replayed,

    // -- model files (learning) --
    #[error("the file ends before its content does")]
    Truncated,
    #[error("not a model file (bad magic)")]
    BadMagic,
    #[error("format version {0} is not supported")]
    UnsupportedVersion(u16),
    #[error(
        "the file has {file_states} states x {file_classes} classes, this node {states} x {classes}"
    )]
    Incompatible {
        file_states: u32,
        file_classes: u32,
        states: u32,
        classes: u32,
    },
    #[error("checksum mismatch: the file is corrupt")]
    Checksum,
    #[error("bytes after the content")]
    TrailingBytes,
    #[error("a value is not a finite number: the file is corrupt")]
    NonFinite,
    #[error("not a regular file")]
    NotRegular,
    #[error("{0} bytes: more than a model of its header's dimensions can be")]
    FileTooLarge(u64),
    #[error("i/o: {0}")]
    Io(String),

    // -- simulator workloads (sim) --
    #[error("workload JSON: {0}")]
    WorkloadJson(String),
    #[error("workload: {0}")]
    InvalidWorkload(String),
}

impl From<std::io::Error> for FlowError {
    fn from(e: std::io::Error) -> Self {
        FlowError::Io(e.to_string())
    }
}
