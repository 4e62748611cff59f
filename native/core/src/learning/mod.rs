//! Learning: the Q-table, its update and selection rules ([`learner`]), and
//! the file it is saved to ([`model`]).

pub mod learner;
pub mod model;

pub use learner::*;
