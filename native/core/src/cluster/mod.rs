//! The cluster's byte work: signed votes for quorum tasks (see [`vote`]).
//! Membership, heartbeats and the quorum's collection are Erlang's; this part
//! signs, verifies and refuses replays.

pub mod vote;
