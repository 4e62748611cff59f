//! The cluster's byte work and arithmetic: signed votes for quorum tasks
//! (see [`vote`]) and the phi accrual failure detector's estimate ([`phi`]).
//! Membership, heartbeats and the quorum's collection are Erlang's; this part
//! signs, verifies and refuses replays.

pub mod phi;
pub mod vote;
