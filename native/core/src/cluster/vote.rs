//! Signed votes: a remote agent's answer to a quorum task, as its node signs
//! it and the caller's node checks it.
//!
//! A vote is signed with HMAC-SHA256 under the cluster's shared secret, over
//! a canonical encoding of every field: a version byte, then each field with
//! its length (u32, big-endian) before it, in a fixed order (trace id, span
//! id, agent id, node, the answer's SHA-256, the timestamp, the nonce). Two
//! different votes never encode alike, so a signature covers exactly one
//! vote. Verification compares in constant time. A [`ReplayGuard`] refuses a
//! vote whose timestamp is outside the replay window and a nonce seen
//! before from the same node within it.

use std::collections::{HashMap, VecDeque};

use hmac::{Hmac, Mac};

use crate::error::FlowError;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Version of the canonical encoding.
const ENCODING: u8 = 1;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// One vote: who answered what, for which attempt of which task, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub agent_id: &'a [u8],
    pub node: &'a [u8],
    /// SHA-256 of the answer's encoding (see [`answer_digest`]).
    pub answer_digest: [u8; 32],
    pub timestamp_ms: u64,
    pub nonce: u64,
}

/// SHA-256 of an answer's bytes (the caller encodes the answer once, the
/// same way on every node: Erlang's external term format).
pub fn answer_digest(answer: &[u8]) -> [u8; 32] {
    Sha256::digest(answer).into()
}

fn encode(vote: &Vote<'_>, mac: &mut HmacSha256) {
    mac.update(&[ENCODING]);
    for field in [vote.trace_id, vote.span_id, vote.agent_id, vote.node] {
        mac.update(&(field.len() as u32).to_be_bytes());
        mac.update(field);
    }
    mac.update(&32u32.to_be_bytes());
    mac.update(&vote.answer_digest);
    mac.update(&8u32.to_be_bytes());
    mac.update(&vote.timestamp_ms.to_be_bytes());
    mac.update(&8u32.to_be_bytes());
    mac.update(&vote.nonce.to_be_bytes());
}

fn keyed(secret: &[u8]) -> Result<HmacSha256, FlowError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(FlowError::WeakSecret);
    }
    // HMAC takes a key of any length
    HmacSha256::new_from_slice(secret).map_err(|_| FlowError::WeakSecret)
}

/// The vote's signature under `secret`.
pub fn sign(secret: &[u8], vote: &Vote<'_>) -> Result<[u8; 32], FlowError> {
    let mut mac = keyed(secret)?;
    encode(vote, &mut mac);
    Ok(mac.finalize().into_bytes().into())
}

/// Whether `signature` is the vote's under `secret`, compared in constant time.
pub fn verify(secret: &[u8], vote: &Vote<'_>, signature: &[u8]) -> Result<(), FlowError> {
    let mut mac = keyed(secret)?;
    encode(vote, &mut mac);
    mac.verify_slice(signature)
        .map_err(|_| FlowError::BadSignature)
}

/// Refuses votes outside the replay window and nonces seen within it, per
/// node. Memory is bounded by the votes of one window: older entries are
/// dropped as time goes on.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    seen: HashMap<(Vec<u8>, u64), u64>,
    /// (expiry, node, nonce), oldest first.
    order: VecDeque<(u64, Vec<u8>, u64)>,
}

impl ReplayGuard {
    pub fn new(window_ms: u64) -> Self {
        ReplayGuard {
            window_ms,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Accepts a (verified) vote at `now_ms` once: `Stale` outside the
    /// window on either side, `Replayed` for a nonce its node used within it.
    pub fn check(&mut self, vote: &Vote<'_>, now_ms: u64) -> Result<(), FlowError> {
        self.expire(now_ms);
        if vote.timestamp_ms.abs_diff(now_ms) > self.window_ms {
            return Err(FlowError::Stale);
        }
        let key = (vote.node.to_vec(), vote.nonce);
        if self.seen.contains_key(&key) {
            return Err(FlowError::Replayed);
        }
        // kept until the vote could no longer pass the timestamp check
        let expiry = vote.timestamp_ms.saturating_add(self.window_ms);
        self.seen.insert(key.clone(), expiry);
        self.order.push_back((expiry, key.0, key.1));
        Ok(())
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((expiry, _, _)) = self.order.front() {
            if *expiry >= now_ms {
                break;
            }
            if let Some((_, node, nonce)) = self.order.pop_front() {
                self.seen.remove(&(node, nonce));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"0123456789abcdef0123";

    fn vote<'a>(agent: &'a [u8], answer: &[u8], ts: u64, nonce: u64) -> Vote<'a> {
        Vote {
            trace_id: b"4bf92f3577b34da6a3ce929d0e0e4736",
            span_id: b"00f067aa0ba902b7",
            agent_id: agent,
            node: b"a@host",
            answer_digest: answer_digest(answer),
            timestamp_ms: ts,
            nonce,
        }
    }

    #[test]
    fn a_signature_covers_exactly_its_vote() {
        let v = vote(b"agent-1", b"42", 1000, 7);
        let sig = sign(SECRET, &v).unwrap();
        assert_eq!(verify(SECRET, &v, &sig), Ok(()));
        // every field changed, the signature fails
        let changed = [
            Vote {
                trace_id: b"4bf92f3577b34da6a3ce929d0e0e4737",
                ..v.clone()
            },
            Vote {
                span_id: b"00f067aa0ba902b8",
                ..v.clone()
            },
            Vote {
                agent_id: b"agent-2",
                ..v.clone()
            },
            Vote {
                node: b"b@host",
                ..v.clone()
            },
            Vote {
                answer_digest: answer_digest(b"43"),
                ..v.clone()
            },
            Vote {
                timestamp_ms: 1001,
                ..v.clone()
            },
            Vote {
                nonce: 8,
                ..v.clone()
            },
        ];
        for c in &changed {
            assert_eq!(
                verify(SECRET, c, &sig),
                Err(FlowError::BadSignature),
                "{c:?}"
            );
        }
        // another secret, a truncated signature
        assert_eq!(
            verify(b"another-secret-0123", &v, &sig),
            Err(FlowError::BadSignature)
        );
        assert_eq!(verify(SECRET, &v, &sig[..31]), Err(FlowError::BadSignature));
        assert_eq!(sign(b"short", &v), Err(FlowError::WeakSecret));
    }

    /// Fields are length-prefixed: moving bytes from one field to the next
    /// changes the signature.
    #[test]
    fn field_boundaries_are_part_of_the_signature() {
        let a = Vote {
            agent_id: b"ab",
            node: b"c",
            ..vote(b"", b"x", 1, 1)
        };
        let b = Vote {
            agent_id: b"a",
            node: b"bc",
            ..vote(b"", b"x", 1, 1)
        };
        assert_ne!(sign(SECRET, &a).unwrap(), sign(SECRET, &b).unwrap());
    }

    #[test]
    fn replays_and_stale_votes_are_refused_and_memory_is_bounded() {
        let mut g = ReplayGuard::new(30_000);
        let v = vote(b"agent-1", b"42", 100_000, 1);
        assert_eq!(g.check(&v, 100_000), Ok(()));
        assert_eq!(g.check(&v, 100_001), Err(FlowError::Replayed));
        // same nonce from another node is another vote
        assert_eq!(
            g.check(
                &Vote {
                    node: b"b@host",
                    ..v.clone()
                },
                100_002
            ),
            Ok(())
        );
        assert_eq!(
            g.check(&vote(b"agent-1", b"42", 60_000, 2), 100_000),
            Err(FlowError::Stale)
        );
        assert_eq!(
            g.check(&vote(b"agent-1", b"42", 140_000, 3), 100_000),
            Err(FlowError::Stale)
        );
        // past the window the old nonces are forgotten (their votes are stale anyway)
        for i in 0..1000 {
            let t = 200_000 + i * 100;
            assert_eq!(g.check(&vote(b"agent-1", b"42", t, 10 + i), t), Ok(()));
        }
        assert!(g.len() <= 301, "{}", g.len());
        assert_eq!(g.check(&v, 400_000), Err(FlowError::Stale));
    }

    proptest! {
        #[test]
        fn any_vote_verifies_under_its_secret_only(
            agent in prop::collection::vec(any::<u8>(), 0..64),
            node in prop::collection::vec(any::<u8>(), 0..64),
            answer in prop::collection::vec(any::<u8>(), 0..256),
            ts in any::<u64>(), nonce in any::<u64>(),
            secret in prop::collection::vec(any::<u8>(), 16..64),
        ) {
            let v = Vote { node: &node, ..vote(&agent, &answer, ts, nonce) };
            let sig = sign(&secret, &v).unwrap();
            prop_assert_eq!(verify(&secret, &v, &sig), Ok(()));
            let mut other = secret.clone();
            other[0] ^= 1;
            prop_assert_eq!(verify(&other, &v, &sig), Err(FlowError::BadSignature));
        }
    }
}
