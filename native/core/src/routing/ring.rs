//! The consistent-hash ring: `vnodes` points per agent on a 64-bit circle.
//!
//! A key goes to the first point at or after its hash, walking clockwise.
//! Adding an agent only takes keys onto its own points and removing one only
//! hands its keys to the next points, so no key moves between two agents that
//! stayed. The ring is part of a table snapshot, built on the writer side and
//! swapped in with it; readers never wait for a rebuild.

use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

/// Most points an agent may have on the ring.
pub const MAX_VNODES: u32 = 1000;

/// Sorted points: (position, slot of the agent in its snapshot), with an
/// index of where each range of positions starts.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    points: Vec<(u64, u32)>,
    vnodes: u32,
    /// `index[b]` is the first point whose position's top bits are >= `b`;
    /// `2^bits + 1` entries, so a lookup searches one short stretch instead
    /// of the whole ring.
    index: Vec<u32>,
    shift: u32,
}

/// The position of a key on the ring.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The points of agent `id`: point `v` is the hash of the id's 128-bit
/// digest followed by `v`.
///
/// Why not the id's hash seeded with `v`: xxh3 mixes the seed into inputs of
/// up to 16 bytes linearly (added or xored before the final mix), so for ids
/// of a few bytes `("ch1", v)` and `("ch2", v')` hashed alike whenever the
/// two seeds differed in the bits the ids differed in. Ten agents `ch1` to
/// `ch10` shared most of their points, and the first slot took every tie.
/// The digest takes the whole id in at full width, and the 20 bytes hashed
/// per point go through xxh3's multiplying path for 17 bytes and more.
fn agent_points(id: &[u8], slot: u32, vnodes: u32) -> impl Iterator<Item = (u64, u32)> + use<> {
    let mut buf = [0u8; 20];
    buf[..16].copy_from_slice(&xxh3_128(id).to_le_bytes());
    (0..vnodes).map(move |v| {
        buf[16..].copy_from_slice(&v.to_le_bytes());
        (xxh3_64(&buf), slot)
    })
}

/// The position of point `v` of agent `id` (for the shared vectors).
pub fn point(id: &[u8], v: u32) -> u64 {
    agent_points(id, 0, v + 1).last().map_or(0, |(h, _)| h)
}

impl Ring {
    pub fn empty(vnodes: u32) -> Ring {
        Ring::from_points(Vec::new(), vnodes.clamp(1, MAX_VNODES))
    }

    /// A ring over sorted `points`, with its index: about one bucket per
    /// point (at most 2^16 buckets).
    fn from_points(points: Vec<(u64, u32)>, vnodes: u32) -> Ring {
        let bits = (usize::BITS - points.len().leading_zeros()).clamp(1, 16);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut p = 0;
        for b in 0..buckets {
            while p < points.len() && ((points[p].0 >> shift) as usize) < b {
                p += 1;
            }
            index.push(p as u32);
        }
        index.push(points.len() as u32);
        Ring {
            points,
            vnodes,
            index,
            shift,
        }
    }

    /// A ring of `ids`, the agent in slot `i` being `ids[i]`.
    pub fn build<'a>(ids: impl Iterator<Item = &'a [u8]>, vnodes: u32) -> Ring {
        let vnodes = vnodes.clamp(1, MAX_VNODES);
        let mut points: Vec<(u64, u32)> = ids
            .enumerate()
            .flat_map(|(slot, id)| agent_points(id, slot as u32, vnodes))
            .collect();
        points.sort_unstable();
        Ring::from_points(points, vnodes)
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// This ring plus the points of agent `id` in `slot`: one merge, linear in
    /// the ring's size.
    pub fn with_agent(&self, id: &[u8], slot: u32) -> Ring {
        let mut new: Vec<(u64, u32)> = agent_points(id, slot, self.vnodes).collect();
        new.sort_unstable();
        let mut points = Vec::with_capacity(self.points.len() + new.len());
        let (mut a, mut b) = (self.points.iter().peekable(), new.into_iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&x), Some(&y)) => {
                    if x <= y {
                        points.push(x);
                        a.next();
                    } else {
                        points.push(y);
                        b.next();
                    }
                }
                (Some(&&x), None) => {
                    points.push(x);
                    a.next();
                }
                (None, Some(&y)) => {
                    points.push(y);
                    b.next();
                }
                (None, None) => break,
            }
        }
        Ring::from_points(points, self.vnodes)
    }

    /// This ring without the points of `slot`; slots above it move down by
    /// one, as they do in the snapshot.
    pub fn without_slot(&self, slot: u32) -> Ring {
        let points = self
            .points
            .iter()
            .filter(|&&(_, s)| s != slot)
            .map(|&(h, s)| (h, if s > slot { s - 1 } else { s }))
            .collect();
        Ring::from_points(points, self.vnodes)
    }

    /// The index of the first point at or after `hash` (wrapping to 0).
    #[inline]
    fn start(&self, hash: u64) -> usize {
        let b = (hash >> self.shift) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        let i = lo + self.points[lo..hi].partition_point(|&(h, _)| h < hash);
        if i == self.points.len() { 0 } else { i }
    }

    /// The slot owning `hash`, or `None` on an empty ring.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u32> {
        if self.points.is_empty() {
            return None;
        }
        Some(self.points[self.start(hash)].1)
    }

    /// Walks clockwise from `hash` and returns the first slot `accept` takes.
    /// Each point is visited at most once.
    #[inline]
    pub fn walk(&self, hash: u64, mut accept: impl FnMut(u32) -> bool) -> Option<u32> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let start = self.start(hash);
        (0..n)
            .map(|k| self.points[(start + k) % n].1)
            .find(|&slot| accept(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("agent-{i}").into_bytes()).collect()
    }

    #[test]
    fn incremental_changes_equal_a_rebuild() {
        let ids = ids(20);
        let full = Ring::build(ids.iter().map(|v| v.as_slice()), 50);
        let mut inc = Ring::empty(50);
        for (slot, id) in ids.iter().enumerate() {
            inc = inc.with_agent(id, slot as u32);
        }
        assert_eq!(full.points, inc.points);
        let removed = full.without_slot(7);
        let rest: Vec<&[u8]> = ids
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != 7)
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(removed.points, Ring::build(rest.into_iter(), 50).points);
    }

    #[test]
    fn indexed_lookup_equals_a_full_search() {
        for n in [1usize, 2, 7, 60, 400] {
            let ids = ids(n);
            let r = Ring::build(ids.iter().map(|v| v.as_slice()), 150);
            let mut x = 0x1234_5678_9abc_def0u64;
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = r.points.partition_point(|&(h, _)| h < x);
                let want = r.points[if i == r.points.len() { 0 } else { i }].1;
                assert_eq!(r.lookup(x), Some(want));
            }
            assert_eq!(r.lookup(0), Some(r.points[0].1));
        }
    }

    #[test]
    fn walk_skips_refused_slots_and_wraps() {
        let ids = ids(3);
        let r = Ring::build(ids.iter().map(|v| v.as_slice()), 10);
        let first = r.lookup(u64::MAX).unwrap();
        let other = r.walk(u64::MAX, |s| s != first).unwrap();
        assert_ne!(first, other);
        assert_eq!(r.walk(0, |_| false), None);
        assert_eq!(Ring::empty(10).lookup(1), None);
    }
}
