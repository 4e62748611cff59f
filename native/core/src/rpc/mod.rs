//! JSON-RPC 2.0: the codec the transports speak (see [`codec`]).

pub mod codec;

pub use codec::{Decoded, ErrorObject, Id, Item, Limits, Message, Rejected, decode};

/// serde, whose traits the NIF crate implements to convert terms directly.
pub use serde;
/// The JSON library the codec's values come from (for the NIF crate).
pub use serde_json;
