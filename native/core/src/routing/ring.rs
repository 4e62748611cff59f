//! The consistent-hash ring: `vnodes` points per agent on a 64-bit circle.
//!
//! A key goes to the first point at or after its hash, walking clockwise.
//! Adding an agent only takes keys onto its own points and removing one only
//! hands its keys to the next points, so no key moves between two agents that
//! stayed. The ring is part of a table snapshot, built on the writer side and
//! swapped in with it; readers never wait for a rebuild.
//!
//! Changing a large ring must not cost a copy of every point per agent
//! (10 000 agents are 1.5 million points). So a ring is three sorted runs,
//! shared between snapshots: an indexed `base`, a `mid` run and a small
//! `delta` of the points added last. Adding agents copies the delta only;
//! once the delta has grown past its due size it is merged into `mid`, and
//! once `mid` has grown past its own, into a new `base` (a log-structured
//! merge of three levels). With `B` points in the base and `v` added per
//! change (one agent's, or a batch's), `mid` is due at `(2B)^(2/3) v^(1/3)`
//! points and the delta at `sqrt(mid_due * v)`, which balances the three
//! copies: about 6 000 points copied per agent added one by one at 10 000
//! agents of 150 points, where one delta over the base copied 21 000. Rings of up to [`SMALL_RING`] points keep
//! one run. The points of a removed agent stay until the table compacts its
//! slots (see `routing::agents`); lookups walk past them as past any agent
//! that is not a candidate, which is exactly where a removed agent's keys go.

use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

/// Most points an agent may have on the ring.
pub const MAX_VNODES: u32 = 1000;

/// Rings of at most this many points are kept as one sorted array.
pub const SMALL_RING: usize = 2_048;

/// Low bits of a point that hold its agent's slot; the high bits are the
/// top of its position. A point is one `u64`: position and slot in one
/// word, half the memory and half the copying of a `Point` pair, and
/// sorting the words sorts by position, then slot. Positions (and keys'
/// hashes) are compared on their top 40 bits: with a million points on the
/// ring, two fall within one 2^24-wide step about once in a million rings.
const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Slots a ring can name (the table refuses agents past it).
pub const MAX_SLOTS: usize = 1 << SLOT_BITS;

/// One point: the position's top bits and the slot.
type Point = u64;

#[inline]
fn pack(position: u64, slot: u32) -> Point {
    debug_assert!((slot as usize) < MAX_SLOTS);
    (position & !SLOT_MASK) | u64::from(slot)
}

#[inline]
fn slot_of(p: Point) -> u32 {
    (p & SLOT_MASK) as u32
}

/// A key's hash as points compare with it: its top bits.
#[inline]
fn at(hash: u64) -> u64 {
    hash & !SLOT_MASK
}

/// Sorted points (position and slot of the agent in its snapshot), with an
/// index of where each range of positions starts.
#[derive(Debug, Default)]
struct Points {
    points: Vec<Point>,
    /// `index[b]` is the first point whose position's top bits are >= `b`;
    /// `2^bits + 1` entries, so a lookup searches one short stretch instead
    /// of the whole ring.
    index: Vec<u32>,
    shift: u32,
}

impl Points {
    /// Sorted `points` with their index: about one bucket per point (at
    /// most 2^16 buckets).
    fn new(points: Vec<Point>) -> Points {
        let bits = (usize::BITS - points.len().leading_zeros()).clamp(1, 16);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        // one pass over the points: bucket b starts where the first point of
        // a bucket >= b is
        let mut index = vec![points.len() as u32; buckets + 1];
        let mut next = 0;
        for (p, &h) in points.iter().enumerate() {
            let b = (h >> shift) as usize;
            if b >= next {
                index[next..=b].fill(p as u32);
                next = b + 1;
            }
        }
        Points {
            points,
            index,
            shift,
        }
    }

    /// The index of the first point at or after `hash` (`len` if none).
    #[inline]
    fn start(&self, hash: u64) -> usize {
        if self.points.is_empty() {
            return 0;
        }
        let b = (hash >> self.shift) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        lo + self.points[lo..hi].partition_point(|&h| h < at(hash))
    }
}

/// The ring of one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    base: Arc<Points>,
    /// Points merged out of the delta since `base` was built, sorted.
    mid: Arc<[Point]>,
    /// Points added since `mid` was last merged, sorted.
    delta: Arc<[Point]>,
    vnodes: u32,
    /// Not built: no points are kept until [`crate::AgentTable::build_ring`]
    /// builds them (a table whose ring is built on first use).
    lazy: bool,
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
fn agent_points(id: &[u8], slot: u32, vnodes: u32) -> impl Iterator<Item = Point> + use<> {
    let mut buf = [0u8; 20];
    buf[..16].copy_from_slice(&xxh3_128(id).to_le_bytes());
    (0..vnodes).map(move |v| {
        buf[16..].copy_from_slice(&v.to_le_bytes());
        pack(xxh3_64(&buf), slot)
    })
}

/// The position of point `v` of agent `id` (for the shared vectors).
pub fn point(id: &[u8], v: u32) -> u64 {
    let mut buf = [0u8; 20];
    buf[..16].copy_from_slice(&xxh3_128(id).to_le_bytes());
    buf[16..].copy_from_slice(&v.to_le_bytes());
    xxh3_64(&buf)
}

/// Two sorted runs merged into one sorted vector. Each of the shorter one's
/// points is placed in the longer by a galloping search from the place of
/// the one before (doubling steps, then a binary search within the last
/// step: it stays near, in cache), and the stretches between are copied
/// whole: a few new points cost one copy of the ring, not a comparison per
/// point.
fn merge(a: &[Point], b: &[Point]) -> Vec<Point> {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut from = 0;
    for &p in short {
        let rest = &long[from..];
        let mut step = 1;
        while step < rest.len() && rest[step - 1] <= p {
            step *= 2;
        }
        let lo = step / 2;
        let hi = step.min(rest.len());
        let at = from + lo + rest[lo..hi].partition_point(|&q| q <= p);
        out.extend_from_slice(&long[from..at]);
        out.push(p);
        from = at;
    }
    out.extend_from_slice(&long[from..]);
    out
}

impl Ring {
    pub fn empty(vnodes: u32) -> Ring {
        Ring {
            base: Arc::new(Points::new(Vec::new())),
            mid: Arc::from([]),
            delta: Arc::from([]),
            vnodes: vnodes.clamp(1, MAX_VNODES),
            lazy: false,
        }
    }

    /// A ring not built yet: it keeps no points through membership changes
    /// (they cost nothing) until it is built from a table's agents.
    pub fn lazy(vnodes: u32) -> Ring {
        Ring {
            lazy: true,
            ..Ring::empty(vnodes)
        }
    }

    /// Whether the ring holds its agents' points (not [`Ring::lazy`]).
    pub fn is_built(&self) -> bool {
        !self.lazy
    }

    fn from_sorted(points: Vec<Point>, vnodes: u32) -> Ring {
        Ring {
            base: Arc::new(Points::new(points)),
            mid: Arc::from([]),
            delta: Arc::from([]),
            vnodes,
            lazy: false,
        }
    }

    /// A ring of `ids`, the agent in slot `i` being `ids[i]`.
    pub fn build<'a>(ids: impl Iterator<Item = &'a [u8]>, vnodes: u32) -> Ring {
        let vnodes = vnodes.clamp(1, MAX_VNODES);
        let mut points: Vec<Point> = ids
            .enumerate()
            .flat_map(|(slot, id)| agent_points(id, slot as u32, vnodes))
            .collect();
        points.sort_unstable();
        Ring::from_sorted(points, vnodes)
    }

    /// Points on the ring, those of removed agents included.
    pub fn len(&self) -> usize {
        self.base.points.len() + self.mid.len() + self.delta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// Bytes of the points and the index.
    pub fn heap_bytes(&self) -> usize {
        8 * self.len() + 4 * self.base.index.len()
    }

    /// Points outside the base (0 for a ring held as one array).
    pub fn delta_len(&self) -> usize {
        self.mid.len() + self.delta.len()
    }

    /// This ring plus the points of agent `id` in `slot`: a copy of the
    /// delta, or one merge when the delta is due (see the module doc).
    pub fn with_agent(&self, id: &[u8], slot: u32) -> Ring {
        self.with_agents(std::iter::once((id, slot)))
    }

    /// This ring plus the points of several agents.
    pub fn with_agents<'a>(&self, agents: impl Iterator<Item = (&'a [u8], u32)>) -> Ring {
        if self.lazy {
            return self.clone();
        }
        let mut new: Vec<Point> = agents
            .flat_map(|(id, slot)| agent_points(id, slot, self.vnodes))
            .collect();
        new.sort_unstable();
        let delta = merge(&self.delta, &new);
        let (base, mid) = (self.base.points.len(), self.mid.len());
        if base + mid + delta.len() <= SMALL_RING {
            return Ring::from_sorted(
                merge(&merge(&self.base.points, &self.mid), &delta),
                self.vnodes,
            );
        }
        // the sizes at which each run is merged down (see the module doc),
        // for the points this change adds (one agent's, or a batch's)
        let v = f64::from(self.vnodes).max(new.len() as f64);
        let mid_due = (2.0 * base.max(SMALL_RING) as f64).powf(2.0 / 3.0) * v.cbrt();
        let delta_due = (mid_due * v).sqrt();
        if (delta.len() as f64) <= delta_due {
            return Ring {
                base: Arc::clone(&self.base),
                mid: Arc::clone(&self.mid),
                delta: delta.into(),
                vnodes: self.vnodes,
                lazy: false,
            };
        }
        let mid = merge(&self.mid, &delta);
        if (mid.len() as f64) <= mid_due {
            Ring {
                base: Arc::clone(&self.base),
                mid: mid.into(),
                delta: Arc::from([]),
                vnodes: self.vnodes,
                lazy: false,
            }
        } else {
            Ring::from_sorted(merge(&self.base.points, &mid), self.vnodes)
        }
    }

    /// This ring with only the points whose slot `renumber` keeps, under
    /// their new slots (`renumber[old]`, `u32::MAX` for a slot that goes):
    /// one linear pass, the order kept, the delta merged in.
    pub fn renumbered(&self, renumber: &[u32]) -> Ring {
        if self.lazy {
            return self.clone();
        }
        let keep = |&p: &Point| match renumber.get(slot_of(p) as usize) {
            Some(&n) if n != u32::MAX => Some(pack(p, n)),
            _ => None,
        };
        let base: Vec<Point> = self.base.points.iter().filter_map(keep).collect();
        let mid: Vec<Point> = self.mid.iter().filter_map(keep).collect();
        let delta: Vec<Point> = self.delta.iter().filter_map(keep).collect();
        Ring::from_sorted(merge(&merge(&base, &mid), &delta), self.vnodes)
    }

    /// This ring without the points of `slot`; slots above it move down by
    /// one, as they do when a table compacts.
    pub fn without_slot(&self, slot: u32) -> Ring {
        let n = self.slots_bound();
        let renumber: Vec<u32> = (0..n)
            .map(|s| match s.cmp(&slot) {
                std::cmp::Ordering::Less => s,
                std::cmp::Ordering::Equal => u32::MAX,
                std::cmp::Ordering::Greater => s - 1,
            })
            .collect();
        self.renumbered(&renumber)
    }

    /// One more than the highest slot on the ring.
    fn slots_bound(&self) -> u32 {
        let max = |p: &[Point]| p.iter().map(|&p| slot_of(p) + 1).max().unwrap_or(0);
        max(&self.base.points)
            .max(max(&self.mid))
            .max(max(&self.delta))
    }

    /// The slot owning `hash`, or `None` on an empty ring.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u32> {
        self.walk(hash, usize::MAX, |_| true).ok()
    }

    /// Walks clockwise from `hash` and returns the first slot `accept`
    /// takes, looking at `limit` points at most: `Err(true)` when it stopped
    /// at the limit, `Err(false)` when it went round the ring.
    #[inline]
    pub fn walk(
        &self,
        hash: u64,
        limit: usize,
        mut accept: impl FnMut(u32) -> bool,
    ) -> Result<u32, bool> {
        let runs: [&[Point]; 3] = [&self.base.points, &self.mid, &self.delta];
        let n = self.len();
        if n == 0 {
            return Err(false);
        }
        // One cursor per run, each going round its run once from the first
        // point at or after `hash`. A point's clockwise distance from `hash`
        // is `position - hash` (wrapping), which each cursor meets in
        // increasing order: the merged walk takes the nearest of the next
        // points (the lowest slot on a tie, as one sorted array would).
        let mut next = [
            self.base.start(hash),
            self.mid.partition_point(|&h| h < at(hash)),
            self.delta.partition_point(|&h| h < at(hash)),
        ];
        let mut taken = [0usize; 3];
        for _ in 0..n.min(limit) {
            // distance and slot in one word: the key's low bits are zero
            let from = at(hash);
            let mut best: Option<(usize, u64)> = None;
            for r in 0..3 {
                let run = runs[r];
                if taken[r] < run.len() {
                    let d = run[next[r] % run.len()].wrapping_sub(from);
                    if best.is_none_or(|(_, b)| d < b) {
                        best = Some((r, d));
                    }
                }
            }
            let Some((r, d)) = best else { break };
            next[r] += 1;
            taken[r] += 1;
            let slot = slot_of(d);
            if accept(slot) {
                return Ok(slot);
            }
        }
        Err(limit < n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("agent-{i}").into_bytes()).collect()
    }

    /// All points of a ring in clockwise order from 0.
    fn all(r: &Ring) -> Vec<Point> {
        merge(&merge(&r.base.points, &r.mid), &r.delta)
    }

    #[test]
    fn incremental_changes_equal_a_rebuild() {
        let ids = ids(20);
        let full = Ring::build(ids.iter().map(|v| v.as_slice()), 50);
        let mut inc = Ring::empty(50);
        for (slot, id) in ids.iter().enumerate() {
            inc = inc.with_agent(id, slot as u32);
        }
        assert_eq!(all(&full), all(&inc));
        let removed = full.without_slot(7);
        let rest: Vec<&[u8]> = ids
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != 7)
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(all(&removed), all(&Ring::build(rest.into_iter(), 50)));
    }

    /// A ring large enough to keep a delta answers as the same ring held in
    /// one array, for lookups and for walks that skip slots.
    #[test]
    fn a_ring_with_a_delta_answers_as_one_array() {
        let ids = ids(1100);
        let mut inc = Ring::build(ids[..600].iter().map(|v| v.as_slice()), 150);
        let (mut mid_used, mut base_merged) = (false, false);
        for (slot, id) in ids.iter().enumerate().skip(600) {
            let base = inc.base.points.len();
            inc = inc.with_agent(id, slot as u32);
            mid_used |= !inc.mid.is_empty();
            base_merged |= inc.base.points.len() > base;
        }
        // all three levels took part
        assert!(mid_used && base_merged, "{mid_used} {base_merged}");
        assert!(inc.delta_len() > 0, "no delta kept");
        let full = Ring::build(ids.iter().map(|v| v.as_slice()), 150);
        assert_eq!(full.delta_len(), 0);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            assert_eq!(inc.lookup(x), full.lookup(x));
            let odd = |s: u32| s % 7 == 3;
            assert_eq!(inc.walk(x, usize::MAX, odd), full.walk(x, usize::MAX, odd));
        }
        // keys past the last point wrap to the first
        assert_eq!(inc.lookup(u64::MAX), full.lookup(u64::MAX));
        assert_eq!(inc.lookup(0), full.lookup(0));
    }

    #[test]
    fn indexed_lookup_equals_a_full_search() {
        for n in [1usize, 2, 7, 60, 400] {
            let ids = ids(n);
            let r = Ring::build(ids.iter().map(|v| v.as_slice()), 150);
            let points = all(&r);
            let mut x = 0x1234_5678_9abc_def0u64;
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = points.partition_point(|&h| h < at(x));
                let want = slot_of(points[if i == points.len() { 0 } else { i }]);
                assert_eq!(r.lookup(x), Some(want));
            }
            assert_eq!(r.lookup(0), Some(slot_of(points[0])));
        }
    }

    #[test]
    fn walk_skips_refused_slots_wraps_and_stops_at_its_limit() {
        let ids = ids(3);
        let r = Ring::build(ids.iter().map(|v| v.as_slice()), 10);
        let first = r.lookup(u64::MAX).unwrap();
        let other = r.walk(u64::MAX, usize::MAX, |s| s != first).unwrap();
        assert_ne!(first, other);
        assert_eq!(r.walk(0, usize::MAX, |_| false), Err(false));
        assert_eq!(r.walk(0, 5, |_| false), Err(true));
        let mut seen = 0;
        assert_eq!(
            r.walk(0, 5, |_| {
                seen += 1;
                false
            }),
            Err(true)
        );
        assert_eq!(seen, 5);
        assert_eq!(Ring::empty(10).lookup(1), None);
    }
}
