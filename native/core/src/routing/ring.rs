//! The consistent-hash ring: `vnodes` points per agent on a 64-bit circle.
//!
//! A key goes to the first point at or after its hash, walking clockwise.
//! Adding an agent only takes keys onto its own points and removing one only
//! hands its keys to the next points, so no key moves between two agents that
//! stayed. The ring is part of a table snapshot, built on the writer side and
//! swapped in with it; readers never wait for a rebuild.
//!
//! Changing a large ring must not cost a copy of every point per agent
//! (10 000 agents are 1.5 million points). So a ring is an indexed, sorted
//! `base` shared between snapshots, plus a small sorted `delta` of points
//! added since: adding an agent copies the delta only, and the delta is
//! merged into a new base (one linear merge) once it has grown past
//! `sqrt(2 * base * vnodes)` points, which keeps the cost per agent added
//! at about that many point copies (21 000 at 10 000 agents of 150 points).
//! Rings of up to [`SMALL_RING`] points keep no delta. The points of a
//! removed agent stay until the table compacts its slots (see
//! `routing::agents`); lookups walk past them as past any agent that is not
//! a candidate, which is exactly where a removed agent's keys go.

use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

/// Most points an agent may have on the ring.
pub const MAX_VNODES: u32 = 1000;

/// Rings of at most this many points are kept as one sorted array.
pub const SMALL_RING: usize = 16_384;

/// Sorted points: (position, slot of the agent in its snapshot), with an
/// index of where each range of positions starts.
#[derive(Debug, Default)]
struct Points {
    points: Vec<(u64, u32)>,
    /// `index[b]` is the first point whose position's top bits are >= `b`;
    /// `2^bits + 1` entries, so a lookup searches one short stretch instead
    /// of the whole ring.
    index: Vec<u32>,
    shift: u32,
}

impl Points {
    /// Sorted `points` with their index: about one bucket per point (at
    /// most 2^16 buckets).
    fn new(points: Vec<(u64, u32)>) -> Points {
        let bits = (usize::BITS - points.len().leading_zeros()).clamp(1, 16);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        // one pass over the points: bucket b starts where the first point of
        // a bucket >= b is
        let mut index = vec![points.len() as u32; buckets + 1];
        let mut next = 0;
        for (p, &(h, _)) in points.iter().enumerate() {
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
        lo + self.points[lo..hi].partition_point(|&(h, _)| h < hash)
    }
}

/// The ring of one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    base: Arc<Points>,
    /// Points added since `base` was built, sorted.
    delta: Arc<[(u64, u32)]>,
    vnodes: u32,
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

/// Two sorted runs merged into one sorted vector. Each of the shorter one's
/// points is placed in the longer by a galloping search from the place of
/// the one before (doubling steps, then a binary search within the last
/// step: it stays near, in cache), and the stretches between are copied
/// whole: a few new points cost one copy of the ring, not a comparison per
/// point.
fn merge(a: &[(u64, u32)], b: &[(u64, u32)]) -> Vec<(u64, u32)> {
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
            delta: Arc::from([]),
            vnodes: vnodes.clamp(1, MAX_VNODES),
        }
    }

    fn from_sorted(points: Vec<(u64, u32)>, vnodes: u32) -> Ring {
        Ring {
            base: Arc::new(Points::new(points)),
            delta: Arc::from([]),
            vnodes,
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
        Ring::from_sorted(points, vnodes)
    }

    /// Points on the ring, those of removed agents included.
    pub fn len(&self) -> usize {
        self.base.points.len() + self.delta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// Points waiting in the delta (0 for a ring held as one array).
    pub fn delta_len(&self) -> usize {
        self.delta.len()
    }

    /// This ring plus the points of agent `id` in `slot`: a copy of the
    /// delta, or one merge when the delta is due (see the module doc).
    pub fn with_agent(&self, id: &[u8], slot: u32) -> Ring {
        self.with_agents(std::iter::once((id, slot)))
    }

    /// This ring plus the points of several agents.
    pub fn with_agents<'a>(&self, agents: impl Iterator<Item = (&'a [u8], u32)>) -> Ring {
        let mut new: Vec<(u64, u32)> = agents
            .flat_map(|(id, slot)| agent_points(id, slot, self.vnodes))
            .collect();
        new.sort_unstable();
        let delta = merge(&self.delta, &new);
        let base = self.base.points.len();
        // an agent added costs the delta's copy (half of `due` on average)
        // plus a share of the merge (`base * vnodes / due`): least at this
        let due = (2.0 * base as f64 * f64::from(self.vnodes)).sqrt() as usize;
        if base + delta.len() <= SMALL_RING || delta.len() > due {
            Ring::from_sorted(merge(&self.base.points, &delta), self.vnodes)
        } else {
            Ring {
                base: Arc::clone(&self.base),
                delta: delta.into(),
                vnodes: self.vnodes,
            }
        }
    }

    /// This ring with only the points whose slot `renumber` keeps, under
    /// their new slots (`renumber[old]`, `u32::MAX` for a slot that goes):
    /// one linear pass, the order kept, the delta merged in.
    pub fn renumbered(&self, renumber: &[u32]) -> Ring {
        let keep = |&(h, s): &(u64, u32)| match renumber.get(s as usize) {
            Some(&n) if n != u32::MAX => Some((h, n)),
            _ => None,
        };
        let base: Vec<(u64, u32)> = self.base.points.iter().filter_map(keep).collect();
        let delta: Vec<(u64, u32)> = self.delta.iter().filter_map(keep).collect();
        Ring::from_sorted(merge(&base, &delta), self.vnodes)
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
        let max = |p: &[(u64, u32)]| p.iter().map(|&(_, s)| s + 1).max().unwrap_or(0);
        max(&self.base.points).max(max(&self.delta))
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
        let (a, b) = (&self.base.points[..], &self.delta[..]);
        let n = a.len() + b.len();
        if n == 0 {
            return Err(false);
        }
        // Two cursors, each going round its array once from the first point
        // at or after `hash`. A point's clockwise distance from `hash` is
        // `position - hash` (wrapping), which each cursor meets in
        // increasing order: the merged walk takes the nearer of the two
        // next points (the lower slot on a tie, as one sorted array would).
        let (mut i, mut j) = (self.base.start(hash), b.partition_point(|&(h, _)| h < hash));
        let (mut ca, mut cb) = (0, 0);
        for _ in 0..n.min(limit) {
            let next_a = (ca < a.len()).then(|| a[i % a.len()]);
            let next_b = (cb < b.len()).then(|| b[j % b.len()]);
            let slot = match (next_a, next_b) {
                (Some(x), Some(y))
                    if (x.0.wrapping_sub(hash), x.1) > (y.0.wrapping_sub(hash), y.1) =>
                {
                    j += 1;
                    cb += 1;
                    y.1
                }
                (Some(x), _) => {
                    i += 1;
                    ca += 1;
                    x.1
                }
                (None, Some(y)) => {
                    j += 1;
                    cb += 1;
                    y.1
                }
                (None, None) => break,
            };
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
    fn all(r: &Ring) -> Vec<(u64, u32)> {
        merge(&r.base.points, &r.delta)
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
        let ids = ids(700);
        let mut inc = Ring::build(ids[..600].iter().map(|v| v.as_slice()), 150);
        for (slot, id) in ids.iter().enumerate().skip(600) {
            inc = inc.with_agent(id, slot as u32);
        }
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
                let i = points.partition_point(|&(h, _)| h < x);
                let want = points[if i == points.len() { 0 } else { i }].1;
                assert_eq!(r.lookup(x), Some(want));
            }
            assert_eq!(r.lookup(0), Some(points[0].1));
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
