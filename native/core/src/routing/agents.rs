//! The agent table: who can be routed to, and with which capabilities.
//!
//! The Erlang registry is the source of truth for membership and mirrors every
//! change here. Readers (every routing decision) load the current [`Snapshot`]
//! without a lock; a writer builds a new snapshot from the old one and swaps it
//! in, so a reader keeps a consistent view for as long as it holds its guard.
//! An [`Agent`] is shared between successive snapshots, so its live stats
//! survive unrelated membership changes.
//!
//! A change costs little however large the table, because successive
//! snapshots share most of their parts:
//!
//! - agents sit in slots, in chunks of 64 shared between snapshots; a change
//!   copies the chunks it touches and the list of chunk pointers;
//! - the id index and the capability index are split into 64 shards by a
//!   keyed hash; a change copies the shards it touches;
//! - a capability's posting list (its slots, ascending) grows in place when
//!   an agent holding it comes, and is copied when one goes;
//! - the ring keeps its new points in two small sorted runs (see
//!   [`crate::routing::ring`]).
//!
//! The dense array of hot cells, the list of live slots and each
//! capability's slots grow in place at their end (see
//! [`crate::routing::append`]): a registration writes its own entries, and
//! only a removal copies them (8, 4 and 4 bytes per agent). A removed agent
//! leaves a hole (its slot empty, its hot cell a dead one no strategy admits,
//! its points on the ring walked past); slots are renumbered densely once
//! holes make a quarter of them, in one linear pass. Ids and capabilities come from callers (and
//! soon from the network): the indexes hash them with a key drawn at random
//! per table.

use std::any::Any;
use std::borrow::Borrow;
use std::cell::RefCell;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ahash::RandomState;
use arc_swap::{ArcSwap, Guard};
use hashbrown::HashTable;

use crate::error::FlowError;
use crate::hot::HotCell;
use crate::learning::{LATENCY_BUCKETS, QConfig, QRow, State, StateIndexer};
use crate::name::Name;
use crate::resilience::breaker::Breaker;
use crate::routing::append::AppendVec;
use crate::routing::ring::Ring;
use crate::routing::stats::AgentStats;
use crate::shared::Shared;

/// Longest agent id, in bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// Longest capability, in bytes.
pub const MAX_CAPABILITY_BYTES: usize = 1024;
/// Most capabilities one agent may hold.
pub const MAX_CAPABILITIES: usize = 1024;

/// Slots per chunk.
const CHUNK: usize = 64;
/// Shards of the id and capability indexes.
const INDEX_SHARDS: usize = 64;

/// Whether an entry is a single agent or a swarm coordinator answering for its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    Agent,
    Swarm,
}

/// What a registration carries into the table. `P` is the caller's handle for
/// the agent (the NIF stores the Erlang pid).
#[derive(Debug, Clone)]
pub struct AgentSpec<P> {
    pub id: Vec<u8>,
    pub payload: P,
    pub capabilities: Vec<Vec<u8>>,
    pub kind: AgentKind,
    /// Static weight for the `weighted` strategy; positive and finite.
    pub weight: f64,
    /// Lives on another node (a cluster's mirrored agent): requests for
    /// local agents only pass it by.
    pub remote: bool,
}

impl<P> AgentSpec<P> {
    /// A spec of weight 1.
    pub fn new(id: impl Into<Vec<u8>>, payload: P, capabilities: Vec<Vec<u8>>) -> Self {
        AgentSpec {
            id: id.into(),
            payload,
            capabilities,
            kind: AgentKind::Agent,
            weight: 1.0,
            remote: false,
        }
    }
}

/// One routable agent or swarm.
#[derive(Debug)]
pub struct Agent<P> {
    /// First: what decisions read (see [`AgentStats`]).
    stats: AgentStats,
    /// Shared with the spans of its tasks and the table's id index.
    id: Name,
    payload: P,
    capabilities: Box<[Arc<[u8]>]>,
    /// The table's ids of the capabilities, in the order of `capabilities`.
    cap_ids_by_name: Box<[u32]>,
    /// The same ids, ascending: the multi-capability filter searches them.
    cap_ids_sorted: Box<[u32]>,
    kind: AgentKind,
    weight: f64,
    remote: bool,
    /// Unique per router, never reused: names the agent where an id would be
    /// too big (the learner's per-state maxima).
    uid: u32,
    q: QRow,
    breaker: Breaker,
    shared: Arc<Shared>,
}

impl<P> Agent<P> {
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// The id, shared.
    pub fn name(&self) -> Name {
        self.id.clone()
    }

    pub fn payload(&self) -> &P {
        &self.payload
    }

    /// Sorted and without duplicates.
    pub fn capabilities(&self) -> &[Arc<[u8]>] {
        &self.capabilities
    }

    pub fn kind(&self) -> AgentKind {
        self.kind
    }

    /// Whether the agent lives on another node.
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }

    pub fn weight(&self) -> f64 {
        self.weight
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// What this agent costs the core in memory, in bytes: the agent itself,
    /// its hot cell, id, capabilities, Q row, latency histogram and breaker
    /// (not the table's indexes and ring, see [`Snapshot::table_bytes`]).
    pub fn memory_bytes(&self) -> usize {
        let arc = 2 * std::mem::size_of::<usize>();
        std::mem::size_of::<Self>()
            + arc
            + std::mem::size_of::<crate::hot::Hot>()
            + self.id.heap_bytes()
            + self
                .capabilities
                .iter()
                .map(|c| std::mem::size_of::<Arc<[u8]>>() + arc + c.len() + 2 * 4)
                .sum::<usize>()
            + self.q.heap_bytes()
            + self.stats.heap_bytes()
            + self.breaker.heap_bytes()
    }

    /// This agent's row of the Q-table.
    pub fn q_row(&self) -> &QRow {
        &self.q
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The agent's learning state right now, for task class `class`.
    #[inline]
    pub fn state(&self, config: &QConfig, class: u32) -> State {
        State::from_index(self.state_index(&config.indexer(class)))
    }

    /// The row index of the agent's state right now.
    #[inline]
    pub fn state_index(&self, indexer: &StateIndexer) -> usize {
        indexer.index(self.stats.in_flight(), self.stats.condition())
    }

    /// The learned value of the agent's state right now for task class
    /// `class`. For class 0 it is the cached copy in the agent's hot cell,
    /// one cache line with its load; other classes read the row.
    #[inline]
    pub fn current_value(&self, indexer: &StateIndexer, class: u32) -> f64 {
        if class == 0 {
            self.stats.current_value()
        } else {
            self.shared
                .learner()
                .value(&self.q, self.state_index(indexer))
        }
    }

    /// How far Q-learning's view of this agent's value has drifted toward
    /// the optimistic prior of an unmeasured agent at `now_us`, 0 to 1: 0
    /// while its news is fresh or it has tasks in flight; once no news came
    /// for `stale_after_us`, `1 - exp(-t / stale_after)` after `t` more. An
    /// agent nobody asked for a while is then tried again, later the worse
    /// it was learned to be (see `Router::age`).
    ///
    /// Each agent's clock runs at its own pace, `stale_after_us` times a
    /// factor from 0.75 to 1.25 fixed by its `uid`: agents that went quiet
    /// together (a group that hung at one instant) are tried again spread
    /// over a while, not all in one instant. An agent known slow or failing
    /// (its latency bucket `slow` or its success bucket `low`) ages
    /// [`BAD_AGENT_PACE`] times slower: its probe costs a slow answer or a
    /// failure (a timeout, usually), and agents that recover together are
    /// found by the first of them to be tried anyway (see `Router::age`).
    #[inline]
    pub fn drift(&self, now_us: u64) -> f64 {
        let stale = self.stale_after_us();
        if stale == 0.0 {
            return 0.0;
        }
        match self.stats.age_us(now_us) {
            Some(age) if age as f64 >= stale && self.stats.in_flight() == 0 => {
                1.0 - (-((age as f64 - stale) / stale)).exp()
            }
            _ => 0.0,
        }
    }

    /// The silence after which this agent's news counts as stale, in
    /// microseconds: the router's `stale_after_us` at the agent's own pace
    /// (see [`Agent::drift`]); 0 with aging off.
    pub fn stale_after_us(&self) -> f64 {
        let stale = self.shared.config.stale_after_us;
        if stale == 0 {
            return 0.0;
        }
        // the golden ratio spreads consecutive uids evenly over [0, 1)
        let mut pace = 0.75 + 0.5 * (f64::from(self.uid) * 0.618_033_988_749_895).fract();
        let cond = self.stats.condition();
        if cond % LATENCY_BUCKETS as u8 == 2 || cond / LATENCY_BUCKETS as u8 == 0 {
            pace *= BAD_AGENT_PACE;
        }
        stale as f64 * pace
    }

    /// `learned` as Q-learning's decisions see it at `now_us`: moved
    /// [`Agent::drift`] of the way up to the learner's aging target (a
    /// little above the best value, see `Learner::aging_target`).
    #[inline]
    pub fn aged(&self, learned: f64, now_us: u64) -> f64 {
        let target = self.shared.learner().aging_target(0);
        // the cell's drift may be ahead of the clock's (a surprise set it)
        let drift = self.drift(now_us).max(self.stats.hot().drift());
        learned + (target - learned).max(0.0) * drift
    }

    /// Refreshes the cached value after the load, the condition or the
    /// table changed. Concurrent refreshes may store in either order; a stale
    /// copy lasts until the agent's next task starts or ends, and only sways
    /// the choice between candidates meanwhile.
    pub(crate) fn refresh_value(&self) {
        let learner = self.shared.learner();
        let ix = learner.config().indexer(0);
        self.stats
            .set_current_value(learner.value(&self.q, self.state_index(&ix)));
    }
}

impl<P> Drop for Agent<P> {
    fn drop(&mut self) {
        // The last reference went with the last snapshot and lease holding
        // it, so nothing reads the cell any more.
        self.shared.hot_arena().give(self.stats.hot_ref().clone());
    }
}

/// How many times slower an agent known slow or failing ages (see
/// [`Agent::drift`]).
pub const BAD_AGENT_PACE: f64 = 2.0;

/// A map shared between snapshots, split into shards by a keyed hash: a
/// change copies only the shards it touches.
#[derive(Debug)]
struct Index<K, V> {
    hasher: RandomState,
    shards: Arc<[Shard<K, V>]>,
}

/// One shard of an [`Index`], shared until a change copies it.
type Shard<K, V> = Arc<HashTable<(K, V)>>;

impl<K, V> Clone for Index<K, V> {
    fn clone(&self) -> Self {
        Index {
            hasher: self.hasher.clone(),
            shards: Arc::clone(&self.shards),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Index<K, V> {
    fn new(hasher: RandomState) -> Self {
        Index {
            hasher,
            shards: (0..INDEX_SHARDS)
                .map(|_| Arc::new(HashTable::new()))
                .collect(),
        }
    }

    /// Bytes of the shards' tables (their capacity, a control byte each).
    fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|t| t.capacity() * (std::mem::size_of::<(K, V)>() + 1))
            .sum()
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|t| t.iter().map(|(_, v)| v))
    }

    fn shard_of(hash: u64) -> usize {
        (hash >> (64 - INDEX_SHARDS.trailing_zeros())) as usize
    }

    #[inline]
    fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let h = self.hasher.hash_one(key);
        self.shards[Self::shard_of(h)]
            .find(h, |(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    /// This index with `edits` made: `(key, Some(value))` sets, `(key,
    /// None)` removes. Each shard touched is copied once.
    fn edited(&self, edits: Vec<(K, Option<V>)>) -> Self {
        let mut shards: Vec<Shard<K, V>> = self.shards.iter().cloned().collect();
        let hasher = &self.hasher;
        for (key, value) in edits {
            let h = hasher.hash_one(&key);
            let table = Arc::make_mut(&mut shards[Self::shard_of(h)]);
            let entry = table.entry(h, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k));
            match (entry, value) {
                (hashbrown::hash_table::Entry::Occupied(mut e), Some(v)) => e.get_mut().1 = v,
                (hashbrown::hash_table::Entry::Occupied(e), None) => {
                    e.remove();
                }
                (hashbrown::hash_table::Entry::Vacant(e), Some(v)) => {
                    e.insert((key, v));
                }
                (hashbrown::hash_table::Entry::Vacant(_), None) => {}
            }
        }
        Index {
            hasher: self.hasher.clone(),
            shards: shards.into(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
}

/// A capability's posting list in one snapshot.
#[derive(Debug)]
struct Posting {
    /// The table's id of the capability.
    cap_id: u32,
    /// Slots holding the capability, ascending.
    slots: AppendVec<u32>,
}

/// Slots of agents, `None` where a removed agent left a hole.
type Chunk<P> = [Option<Arc<Agent<P>>>; CHUNK];

/// An immutable view of the table. Slots are indices into it; they are
/// only meaningful within one snapshot.
#[derive(Debug)]
pub struct Snapshot<P> {
    chunks: Arc<[Arc<Chunk<P>>]>,
    /// Slots in use, holes included.
    slot_count: u32,
    live: usize,
    by_id: Index<Name, u32>,
    postings: Index<Arc<[u8]>, Arc<Posting>>,
    /// The live slots, ascending: the candidates of "no requirement".
    all: AppendVec<u32>,
    /// Per slot, the agent's hot cell (a dead one for a hole): what a scan
    /// over candidates reads. The agents in `chunks` hold the cells alive.
    hot: AppendVec<HotCell>,
    ring: Ring,
}

/// The candidates of one decision: slots, ascending, and whether they are
/// every live slot (a scan may then read the hot cells in order, holes
/// being dead cells no strategy admits).
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'s> {
    pub slots: &'s [u32],
    pub all: bool,
}

fn empty_chunk<P>() -> Chunk<P> {
    std::array::from_fn(|_| None)
}

impl<P> Snapshot<P> {
    fn empty(ring: Ring, hasher: RandomState) -> Self {
        Snapshot {
            chunks: Arc::from([]),
            slot_count: 0,
            live: 0,
            by_id: Index::new(hasher.clone()),
            postings: Index::new(hasher),
            all: AppendVec::new(),
            hot: AppendVec::new(),
            ring,
        }
    }

    /// This snapshot with `ring` in place of its own.
    fn with_ring(&self, ring: Ring) -> Snapshot<P> {
        Snapshot {
            chunks: Arc::clone(&self.chunks),
            slot_count: self.slot_count,
            live: self.live,
            by_id: self.by_id.clone(),
            postings: self.postings.clone(),
            all: self.all.clone(),
            // the same view: the new snapshot holds the same agents
            hot: self.hot.clone(),
            ring,
        }
    }

    /// Per slot, the agents' hot cells (dead cells for holes).
    #[inline]
    /// Bytes of this snapshot's own structures: the slot chunks, the id and
    /// capability indexes with their posting lists, the live slots, the hot
    /// cell array and the ring (the agents themselves are counted by
    /// [`Agent::memory_bytes`]).
    pub fn table_bytes(&self) -> usize {
        let word = std::mem::size_of::<usize>();
        let chunks = self.chunks.len() * (word + std::mem::size_of::<Chunk<P>>());
        let postings: usize = self
            .postings
            .values()
            .map(|p| 2 * word + std::mem::size_of::<Posting>() + 4 * p.slots.capacity())
            .sum();
        chunks
            + self.by_id.heap_bytes()
            + self.postings.heap_bytes()
            + postings
            + 4 * self.all.capacity()
            + word * self.hot.capacity()
            + self.ring.heap_bytes()
    }

    pub fn hot(&self) -> &[HotCell] {
        &self.hot
    }

    /// The consistent-hash ring of this snapshot's agents.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Registered agents and swarms.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Slots in use, holes included: every slot is below it.
    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// The slot of the agent `id`.
    pub fn slot_of(&self, id: &[u8]) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The agent in `slot`, `None` for a hole or a slot past the end.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<&Arc<Agent<P>>> {
        let slot = slot as usize;
        self.chunks.get(slot / CHUNK)?[slot % CHUNK].as_ref()
    }

    /// The agent in `slot`, a slot this snapshot listed as a candidate.
    /// Panics on a hole: candidate lists never hold one.
    #[inline]
    pub fn agent(&self, slot: u32) -> &Arc<Agent<P>> {
        match self.get(slot) {
            Some(a) => a,
            None => panic!("slot {slot} holds no agent"),
        }
    }

    /// The live agents, by slot.
    pub fn agents(&self) -> impl Iterator<Item = &Arc<Agent<P>>> + '_ {
        self.chunks.iter().flat_map(|c| c.iter().flatten())
    }

    pub fn find(&self, id: &[u8]) -> Option<&Arc<Agent<P>>> {
        self.slot_of(id).and_then(|slot| self.get(slot))
    }

    /// The live slots, ascending.
    pub fn all_slots(&self) -> &[u32] {
        &self.all
    }

    /// The slots, ascending, of every agent holding all of `required` (every
    /// agent when `required` is empty). With at most one capability required
    /// this borrows a list the snapshot already has; otherwise the slots are
    /// written into `scratch`, starting from the shortest posting list and
    /// checking the other capabilities per agent, so the cost follows the rarest
    /// capability rather than the table size.
    pub fn candidates<'s>(
        &'s self,
        required: &[&[u8]],
        scratch: &'s mut Vec<u32>,
    ) -> Candidates<'s> {
        match required {
            [] => Candidates {
                slots: &self.all,
                all: true,
            },
            [cap] => Candidates {
                slots: self.postings.get(*cap).map_or(&[], |p| &p.slots),
                all: false,
            },
            _ => {
                self.candidates_into(required, scratch);
                Candidates {
                    slots: scratch,
                    all: false,
                }
            }
        }
    }

    /// As [`Snapshot::candidates`], always written into `out`.
    pub fn candidates_into(&self, required: &[&[u8]], out: &mut Vec<u32>) {
        out.clear();
        if required.is_empty() {
            out.extend_from_slice(&self.all);
            return;
        }
        let mut rarest: Option<&Posting> = None;
        for cap in required {
            match self.postings.get(*cap) {
                None => return,
                Some(p) if rarest.is_none_or(|r| p.slots.len() < r.slots.len()) => rarest = Some(p),
                Some(_) => {}
            }
        }
        let Some(rarest) = rarest else { return };
        if required.len() == 1 {
            out.extend_from_slice(&rarest.slots);
            return;
        }
        // Every lookup succeeded above, so each required capability has an id.
        let others: Vec<u32> = required
            .iter()
            .filter_map(|cap| self.postings.get(*cap))
            .map(|p| p.cap_id)
            .filter(|&id| id != rarest.cap_id)
            .collect();
        out.extend(rarest.slots.iter().copied().filter(|&slot| {
            let held = &self.agent(slot).cap_ids_sorted;
            others.iter().all(|id| held.binary_search(id).is_ok())
        }));
    }

    /// Holes worth a renumbering: a quarter of the slots, and a chunk's worth.
    fn wants_compaction(&self) -> bool {
        let holes = self.slot_count as usize - self.live;
        holes >= CHUNK && holes * 4 > self.slot_count as usize
    }

    /// This snapshot plus `added` in new slots at the end.
    fn with_added(&self, added: &[Arc<Agent<P>>]) -> Snapshot<P> {
        let first = self.slot_count;
        let ring = self.ring.with_agents(
            added
                .iter()
                .enumerate()
                .map(|(k, a)| (a.id(), first + k as u32)),
        );
        self.with_added_on(added, ring)
    }

    /// [`Snapshot::with_added`] with the new ring given.
    fn with_added_on(&self, added: &[Arc<Agent<P>>], ring: Ring) -> Snapshot<P> {
        let first = self.slot_count;
        let count = first as usize + added.len();
        // slots: the last chunk and new ones are written, the others shared
        let mut chunks: Vec<Arc<Chunk<P>>> = self.chunks.iter().cloned().collect();
        for (k, agent) in added.iter().enumerate() {
            let slot = first as usize + k;
            if slot / CHUNK == chunks.len() {
                chunks.push(Arc::new(empty_chunk()));
            }
            Arc::make_mut(&mut chunks[slot / CHUNK])[slot % CHUNK] = Some(Arc::clone(agent));
        }
        // appended: in place when this is the newest snapshot and its
        // buffers have room (see `routing::append`)
        let hot = self.hot.extended(
            // SAFETY: the new snapshot holds the added agents, so their cells.
            added
                .iter()
                .map(|a| unsafe { HotCell::of(a.stats().hot_ref()) }),
            // SAFETY: the new snapshot holds every agent of this one that
            // has a live cell here (dead cells are static).
            |c| unsafe { c.duplicate() },
        );
        let slots = first..count as u32;
        let all = self.all.extended(slots.clone(), |s| *s);
        let by_id = self.by_id.edited(
            added
                .iter()
                .zip(slots.clone())
                .map(|(a, s)| (a.name(), Some(s)))
                .collect(),
        );
        // each capability's new slots, appended (they are above every old one)
        let mut per_cap: Vec<(&Arc<[u8]>, u32, u32)> = added
            .iter()
            .zip(slots.clone())
            .flat_map(|(a, s)| {
                a.capabilities
                    .iter()
                    .zip(a.cap_ids_by_name.iter())
                    .map(move |(c, &id)| (c, id, s))
            })
            .collect();
        per_cap.sort_by(|x, y| x.0.cmp(y.0).then(x.2.cmp(&y.2)));
        let mut edits = Vec::new();
        for group in per_cap.chunk_by(|x, y| x.0 == y.0) {
            let (cap, cap_id) = (group[0].0, group[0].1);
            let new = group.iter().map(|x| x.2);
            let slots = match self.postings.get(&**cap) {
                Some(old) => old.slots.extended(new, |s| *s),
                None => AppendVec::from_iter_exact(new),
            };
            edits.push((Arc::clone(cap), Some(Arc::new(Posting { cap_id, slots }))));
        }
        let postings = self.postings.edited(edits);
        Snapshot {
            chunks: chunks.into(),
            slot_count: count as u32,
            live: self.live + added.len(),
            by_id,
            postings,
            all,
            hot,
            ring,
        }
    }

    /// This snapshot without the agents in `gone` (their slots, ascending):
    /// holes where they were.
    fn with_removed(&self, gone: &[u32]) -> Snapshot<P> {
        let mut chunks: Vec<Arc<Chunk<P>>> = self.chunks.iter().cloned().collect();
        let mut hot = Vec::with_capacity(self.hot.len());
        // SAFETY: as in `with_added`; the cells of the removed agents are
        // replaced by dead ones below, before the snapshot is used.
        hot.extend(self.hot.iter().map(|c| unsafe { c.duplicate() }));
        let mut id_edits = Vec::with_capacity(gone.len());
        let mut cap_drops: Vec<(&Arc<[u8]>, u32)> = Vec::new();
        for &slot in gone {
            let agent = self.agent(slot);
            id_edits.push((agent.name(), None));
            cap_drops.extend(agent.capabilities.iter().map(|c| (c, slot)));
            Arc::make_mut(&mut chunks[slot as usize / CHUNK])[slot as usize % CHUNK] = None;
            hot[slot as usize] = HotCell::dead();
        }
        cap_drops.sort_by(|x, y| x.0.cmp(y.0).then(x.1.cmp(&y.1)));
        let mut edits = Vec::new();
        for group in cap_drops.chunk_by(|x, y| x.0 == y.0) {
            let cap = group[0].0;
            let Some(old) = self.postings.get(&**cap) else {
                continue;
            };
            let drop_slots: Vec<u32> = group.iter().map(|x| x.1).collect();
            let slots: Vec<u32> = old
                .slots
                .iter()
                .copied()
                .filter(|s| drop_slots.binary_search(s).is_err())
                .collect();
            let value = (!slots.is_empty()).then(|| {
                Arc::new(Posting {
                    cap_id: old.cap_id,
                    slots: AppendVec::from_iter_exact(slots.into_iter()),
                })
            });
            edits.push((Arc::clone(cap), value));
        }
        let all: Vec<u32> = self
            .all
            .iter()
            .copied()
            .filter(|s| gone.binary_search(s).is_err())
            .collect();
        Snapshot {
            chunks: chunks.into(),
            slot_count: self.slot_count,
            live: self.live - gone.len(),
            by_id: self.by_id.edited(id_edits),
            postings: self.postings.edited(edits),
            // room to grow again without a copy
            all: AppendVec::from_iter_with_room(all.into_iter(), self.all.len() / 2 + 16),
            hot: AppendVec::from_iter_with_room(hot.into_iter(), self.hot.len() / 2 + 16),
            ring: self.ring.clone(),
        }
    }

    /// The same agents in dense slots (in the old slot order), every index
    /// rebuilt and the ring renumbered: one linear pass.
    fn compacted(&self) -> Snapshot<P> {
        let mut renumber = vec![u32::MAX; self.slot_count as usize];
        let agents: Vec<Arc<Agent<P>>> = self.agents().cloned().collect();
        for (new, agent) in agents.iter().enumerate() {
            if let Some(old) = self.slot_of(agent.id()) {
                renumber[old as usize] = new as u32;
            }
        }
        Snapshot::empty(Ring::empty(self.ring.vnodes()), self.by_id.hasher.clone())
            .with_added_on(&agents, self.ring.renumbered(&renumber))
    }
}

fn check<P>(spec: &AgentSpec<P>) -> Result<(), FlowError> {
    if spec.id.is_empty() || spec.id.len() > MAX_ID_BYTES {
        return Err(FlowError::BadArg("agent_id"));
    }
    if spec.capabilities.is_empty()
        || spec.capabilities.len() > MAX_CAPABILITIES
        || spec
            .capabilities
            .iter()
            .any(|c| c.is_empty() || c.len() > MAX_CAPABILITY_BYTES)
    {
        return Err(FlowError::BadArg("capabilities"));
    }
    if !(spec.weight > 0.0 && spec.weight.is_finite()) {
        return Err(FlowError::BadArg("weight"));
    }
    Ok(())
}

/// The writer's side: the table's ids of capabilities, each with the number
/// of agents holding it, so that an id is freed (and reused) once no agent
/// holds its capability.
#[derive(Debug)]
struct Writer {
    caps: hashbrown::HashMap<Arc<[u8]>, (u32, u32), RandomState>,
    free_ids: Vec<u32>,
    next_id: u32,
}

impl Writer {
    fn intern(&mut self, cap: &Arc<[u8]>) -> u32 {
        if let Some((id, n)) = self.caps.get_mut(cap) {
            *n += 1;
            return *id;
        }
        let id = self.free_ids.pop().unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        });
        self.caps.insert(Arc::clone(cap), (id, 1));
        id
    }

    fn release(&mut self, cap: &[u8]) {
        if let Some((id, n)) = self.caps.get_mut(cap) {
            *n -= 1;
            if *n == 0 {
                let id = *id;
                self.caps.remove(cap);
                self.free_ids.push(id);
            }
        }
    }
}

/// The live table: the current snapshot plus the writer side.
#[derive(Debug)]
pub struct AgentTable<P> {
    current: ArcSwap<Snapshot<P>>,
    /// Bumped after every swap: readers holding a copy of the snapshot compare
    /// it with the generation they copied.
    generation: AtomicU64,
    /// Unique per table, never reused: names the table in the readers' caches.
    id: u64,
    /// Serializes writers; readers never touch it.
    writer: Mutex<Writer>,
    shared: Arc<Shared>,
}

static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

struct CachedSnapshot {
    table: u64,
    generation: u64,
    snapshot: Arc<dyn Any + Send + Sync>,
}

thread_local! {
    /// Per thread, the current snapshot of the last table it read. With it a
    /// decision reads the snapshot with one plain load (the generation)
    /// instead of the two locked operations an `ArcSwap` guard costs, which
    /// on small tables are a third of a decision.
    ///
    /// One entry: a thread keeps at most one snapshot alive that its table
    /// has replaced, until it next reads any table. (It kept four, which let
    /// routers stopped with their application stay in memory, up to three
    /// per scheduler thread.)
    static SNAPSHOT: RefCell<Option<CachedSnapshot>> = const { RefCell::new(None) };
}

/// Drops this thread's cached snapshot: a thread that will not route again
/// soon lets the snapshot (and, if its router is gone, the router) go.
pub fn release_thread_cache() {
    let _ = SNAPSHOT.try_with(|cell| {
        if let Ok(mut c) = cell.try_borrow_mut() {
            *c = None;
        }
    });
}

impl<P> Drop for AgentTable<P> {
    fn drop(&mut self) {
        // Leases, task spans and threads' cached snapshots may keep the
        // agents, and through them the shared state, alive for a while: its
        // large parts go now, with the table that fills them.
        self.shared.correlation().clear();
        self.shared.q_store().clear();
        release_thread_cache();
    }
}

impl<P> AgentTable<P> {
    /// An empty table whose agents share `shared` (clock, learner, counters).
    pub fn new(shared: Arc<Shared>) -> Self {
        let hasher = RandomState::new();
        AgentTable {
            current: ArcSwap::from_pointee(Snapshot::empty(
                if shared.config().lazy_ring {
                    Ring::lazy(shared.config().vnodes)
                } else {
                    Ring::empty(shared.config().vnodes)
                },
                hasher.clone(),
            )),
            generation: AtomicU64::new(0),
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            writer: Mutex::new(Writer {
                caps: hashbrown::HashMap::with_hasher(hasher),
                free_ids: Vec::new(),
                next_id: 0,
            }),
            shared,
        }
    }

    fn swap_in(&self, snapshot: Snapshot<P>) {
        self.current.store(Arc::new(snapshot));
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// A handle on the shared state that outlives a borrow of the table.
    pub fn shared_arc(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// The current snapshot; cheap, lock-free, and stable while held.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot<P>>> {
        self.current.load()
    }

    /// A snapshot that may be kept indefinitely.
    pub fn load_full(&self) -> Arc<Snapshot<P>> {
        self.current.load_full()
    }

    /// Runs `f` on the current snapshot, read through this thread's cache
    /// (see `SNAPSHOT`). Equivalent to `f(&self.load())`, cheaper.
    #[inline]
    pub fn with_snapshot<T>(&self, f: impl FnOnce(&Snapshot<P>) -> T) -> T
    where
        P: Send + Sync + 'static,
    {
        let generation = self.generation.load(Ordering::Acquire);
        let mut f = Some(f);
        let cached = SNAPSHOT
            .try_with(|cell| {
                // Borrowed already: a call nested in another `f` on this
                // thread; it takes the plain path below.
                let mut cache = cell.try_borrow_mut().ok()?;
                let fresh = cache
                    .as_ref()
                    .is_some_and(|c| c.table == self.id && c.generation == generation);
                if !fresh {
                    *cache = Some(CachedSnapshot {
                        table: self.id,
                        generation,
                        snapshot: self.current.load_full(),
                    });
                }
                let snapshot = cache.as_ref()?.snapshot.downcast_ref::<Snapshot<P>>()?;
                f.take().map(|f| f(snapshot))
            })
            .ok()
            .flatten();
        match (cached, f) {
            (Some(out), _) => out,
            (None, Some(f)) => f(&self.current.load()),
            (None, None) => unreachable!("f runs exactly once"),
        }
    }

    /// Builds the consistent-hash ring of a table made with
    /// [`crate::RouterConfig::lazy_ring`], from its agents, once: linear in
    /// the agents and their points (a dirty-scheduler call from Erlang).
    /// Whether it built it (false: built already).
    pub fn build_ring(&self) -> bool {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load();
        if old.ring.is_built() {
            return false;
        }
        let ring = Ring::empty(old.ring.vnodes()).with_agents(
            (0..old.slot_count).filter_map(|slot| old.get(slot).map(|a| (a.id(), slot))),
        );
        let new = old.with_ring(ring);
        drop(old);
        self.swap_in(new);
        true
    }

    /// Adds an agent. Fails with `AlreadyRegistered` if the id is taken and
    /// with `BadArg` for an empty or too long id, no capability or too many,
    /// an empty or too long capability, or a weight that is not positive and
    /// finite.
    pub fn insert(&self, spec: AgentSpec<P>) -> Result<Arc<Agent<P>>, FlowError> {
        let mut added = self.insert_many(vec![spec])?;
        Ok(added.remove(0))
    }

    /// Adds several agents with one snapshot swap: all of them or, on the
    /// first bad spec or taken id, none.
    pub fn insert_many(&self, specs: Vec<AgentSpec<P>>) -> Result<Vec<Arc<Agent<P>>>, FlowError> {
        for spec in &specs {
            check(spec)?;
        }
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load();
        // the ring names a slot in 24 bits: 16 million agents at most
        if old.slot_count as usize + specs.len() >= crate::routing::ring::MAX_SLOTS {
            return Err(FlowError::BadArg("too_many_agents"));
        }
        {
            let mut seen = hashbrown::HashSet::with_hasher(old.by_id.hasher.clone());
            for spec in &specs {
                if old.slot_of(&spec.id).is_some() || !seen.insert(spec.id.as_slice()) {
                    return Err(FlowError::AlreadyRegistered);
                }
            }
        }
        let shared = &self.shared;
        let added: Vec<Arc<Agent<P>>> = specs
            .into_iter()
            .map(|spec| {
                let mut capabilities: Vec<Arc<[u8]>> =
                    spec.capabilities.into_iter().map(Arc::from).collect();
                capabilities.sort_unstable();
                capabilities.dedup();
                let by_name: Box<[u32]> = capabilities.iter().map(|c| writer.intern(c)).collect();
                let mut sorted = by_name.to_vec();
                sorted.sort_unstable();
                Arc::new(Agent {
                    q: shared
                        .q_store()
                        .checkout(&spec.id, shared.learner().config()),
                    uid: shared.next_uid(),
                    id: Name::from(spec.id),
                    payload: spec.payload,
                    capabilities: capabilities.into_boxed_slice(),
                    cap_ids_by_name: by_name,
                    cap_ids_sorted: sorted.into(),
                    kind: spec.kind,
                    weight: spec.weight,
                    remote: spec.remote,
                    stats: AgentStats::with_hot(shared.hot_arena().take()),
                    breaker: Breaker::new(&shared.config().breaker),
                    shared: shared.clone(),
                })
            })
            .inspect(|a| a.refresh_value())
            .collect();
        let mut next = old.with_added(&added);
        if next.wants_compaction() {
            next = next.compacted();
        }
        self.swap_in(next);
        Ok(added)
    }

    /// Removes an agent by id and returns it. In-flight leases keep their own
    /// reference, so their completion still settles the removed agent's stats.
    pub fn remove(&self, id: &[u8]) -> Result<Arc<Agent<P>>, FlowError> {
        self.remove_many(&[id]).pop().ok_or(FlowError::NotFound)
    }

    /// Removes every agent of `ids` that is in the table, with one snapshot
    /// swap; returns those removed (unknown ids are skipped).
    pub fn remove_many(&self, ids: &[&[u8]]) -> Vec<Arc<Agent<P>>> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load();
        let mut slots: Vec<u32> = ids.iter().filter_map(|id| old.slot_of(id)).collect();
        slots.sort_unstable();
        slots.dedup();
        if slots.is_empty() {
            return Vec::new();
        }
        let removed: Vec<Arc<Agent<P>>> = slots.iter().map(|&s| Arc::clone(old.agent(s))).collect();
        let mut next = old.with_removed(&slots);
        if next.wants_compaction() {
            next = next.compacted();
        }
        self.swap_in(next);
        for agent in &removed {
            for cap in agent.capabilities() {
                writer.release(cap);
            }
            self.shared.q_store().release(agent.id());
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::shared::RouterConfig;

    fn table() -> AgentTable<u32> {
        AgentTable::new(Arc::new(Shared::new(
            RouterConfig::default(),
            Clock::manual(0),
        )))
    }

    fn spec(id: &str, caps: &[&str]) -> AgentSpec<u32> {
        AgentSpec::new(id, 0, caps.iter().map(|c| c.as_bytes().to_vec()).collect())
    }

    fn ids(table: &AgentTable<u32>, required: &[&str]) -> Vec<String> {
        let snap = table.load();
        let req: Vec<&[u8]> = required.iter().map(|c| c.as_bytes()).collect();
        let mut out = Vec::new();
        snap.candidates_into(&req, &mut out);
        let mut scratch = Vec::new();
        assert_eq!(snap.candidates(&req, &mut scratch).slots, out.as_slice());
        let mut v: Vec<String> = out
            .iter()
            .map(|&s| String::from_utf8(snap.agent(s).id().to_vec()).unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn filters_by_every_required_capability() {
        let t = table();
        t.insert(spec("a", &["code", "review"])).unwrap();
        t.insert(spec("b", &["code"])).unwrap();
        t.insert(spec("c", &["review", "test", "code"])).unwrap();
        assert_eq!(ids(&t, &["code"]), ["a", "b", "c"]);
        assert_eq!(ids(&t, &["code", "review"]), ["a", "c"]);
        assert_eq!(ids(&t, &["test", "code", "review"]), ["c"]);
        assert!(ids(&t, &["code", "deploy"]).is_empty());
        assert_eq!(ids(&t, &[]), ["a", "b", "c"]);
    }

    #[test]
    fn duplicate_ids_and_empty_input_are_refused() {
        let t = table();
        t.insert(spec("a", &["x"])).unwrap();
        assert_eq!(
            t.insert(spec("a", &["y"])).unwrap_err(),
            FlowError::AlreadyRegistered
        );
        assert_eq!(
            t.insert(spec("", &["y"])).unwrap_err(),
            FlowError::BadArg("agent_id")
        );
        assert_eq!(
            t.insert(spec("b", &[])).unwrap_err(),
            FlowError::BadArg("capabilities")
        );
        assert_eq!(
            t.insert(spec("b", &[""])).unwrap_err(),
            FlowError::BadArg("capabilities")
        );
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut s = spec("b", &["y"]);
            s.weight = w;
            assert_eq!(t.insert(s).unwrap_err(), FlowError::BadArg("weight"));
        }
        assert_eq!(t.load().len(), 1);
    }

    #[test]
    fn removal_rebuilds_indexes_and_keeps_other_agents_stats() {
        let t = table();
        let a = t.insert(spec("a", &["x"])).unwrap();
        t.insert(spec("b", &["x", "y"])).unwrap();
        a.stats().acquire(0);
        t.remove(b"b").unwrap();
        assert_eq!(ids(&t, &["x"]), ["a"]);
        assert!(ids(&t, &["y"]).is_empty());
        assert_eq!(t.load().find(b"a").unwrap().stats().in_flight(), 1);
        assert_eq!(t.remove(b"b").unwrap_err(), FlowError::NotFound);
    }

    #[test]
    fn readers_keep_their_snapshot_across_a_swap() {
        let t = table();
        t.insert(spec("a", &["x"])).unwrap();
        let before = t.load_full();
        t.remove(b"a").unwrap();
        assert_eq!(before.len(), 1);
        assert!(t.load().is_empty());
    }

    #[test]
    fn the_ring_follows_membership() {
        let t = table();
        for i in 0..5 {
            t.insert(spec(&format!("a{i}"), &["x"])).unwrap();
        }
        let ids: Vec<Vec<u8>> = t.load().agents().map(|a| a.id().to_vec()).collect();
        let full = Ring::build(ids.iter().map(|v| v.as_slice()), t.shared().config().vnodes);
        let snap = t.load();
        for k in 0..200u64 {
            assert_eq!(snap.ring().lookup(k << 54), full.lookup(k << 54));
        }
        drop(snap);
        t.remove(b"a2").unwrap();
        let snap = t.load();
        // the removed agent's points stay until the slots are compacted,
        // and every walk passes them
        let rest: Vec<Vec<u8>> = snap.agents().map(|a| a.id().to_vec()).collect();
        let rebuilt = Ring::build(
            rest.iter().map(|v| v.as_slice()),
            t.shared().config().vnodes,
        );
        for k in 0..2000u64 {
            let slot = snap
                .ring()
                .walk(k << 50, usize::MAX, |s| snap.get(s).is_some())
                .unwrap();
            assert_ne!(snap.agent(slot).id(), b"a2");
            let want = &rest[rebuilt.lookup(k << 50).unwrap() as usize];
            assert_eq!(snap.agent(slot).id(), want.as_slice());
        }
    }

    /// A table whose ring is built on first use keeps no points until
    /// then, and once built holds the same ring as a table that kept one
    /// from the start, through removals, holes and compactions.
    #[test]
    fn a_lazy_ring_is_built_once_and_then_follows_membership() {
        let lazy = AgentTable::<u32>::new(Arc::new(Shared::new(
            RouterConfig {
                lazy_ring: true,
                ..RouterConfig::default()
            },
            Clock::manual(0),
        )));
        let eager = table();
        for i in 0..40 {
            lazy.insert(spec(&format!("a{i}"), &["x"])).unwrap();
            eager.insert(spec(&format!("a{i}"), &["x"])).unwrap();
        }
        lazy.remove(b"a3").unwrap();
        eager.remove(b"a3").unwrap();
        assert!(!lazy.load().ring().is_built());
        assert_eq!(lazy.load().ring().len(), 0);
        assert!(lazy.load().table_bytes() < eager.load().table_bytes());
        assert!(lazy.build_ring());
        assert!(!lazy.build_ring());
        let same = |at: &str| {
            let (l, e) = (lazy.load(), eager.load());
            for k in 0..500u64 {
                let pick = |snap: &Snapshot<u32>| {
                    let slot = snap
                        .ring()
                        .walk(k << 52, usize::MAX, |s| snap.get(s).is_some())
                        .unwrap();
                    snap.agent(slot).id().to_vec()
                };
                assert_eq!(pick(&l), pick(&e), "{at}, key {k}");
            }
        };
        same("built");
        for i in 40..60 {
            lazy.insert(spec(&format!("a{i}"), &["x"])).unwrap();
            eager.insert(spec(&format!("a{i}"), &["x"])).unwrap();
        }
        for i in 0..30 {
            let id = format!("a{i}");
            let _ = lazy.remove(id.as_bytes());
            let _ = eager.remove(id.as_bytes());
        }
        same("after changes");
    }

    #[test]
    fn an_agent_that_comes_back_keeps_its_q_row() {
        let t = table();
        let a = t.insert(spec("a", &["x"])).unwrap();
        a.q_row().set(3, 7.5, 2);
        t.remove(b"a").unwrap();
        let again = t.insert(spec("a", &["x"])).unwrap();
        assert_eq!(again.q_row().value(3), 7.5);
        assert_ne!(again.uid(), a.uid());
    }

    #[test]
    fn insert_many_is_all_or_nothing() {
        let t = table();
        t.insert(spec("a", &["x"])).unwrap();
        assert_eq!(
            t.insert_many(vec![spec("b", &["x"]), spec("a", &["x"])])
                .unwrap_err(),
            FlowError::AlreadyRegistered
        );
        assert_eq!(
            t.insert_many(vec![spec("b", &["x"]), spec("b", &["y"])])
                .unwrap_err(),
            FlowError::AlreadyRegistered
        );
        assert_eq!(t.load().len(), 1);
        t.insert_many(vec![spec("b", &["x"]), spec("c", &["x"])])
            .unwrap();
        assert_eq!(ids(&t, &["x"]), ["a", "b", "c"]);
        let snap = t.load();
        assert_eq!(snap.ring().len(), 3 * t.shared().config().vnodes as usize);
    }

    #[test]
    fn ids_and_capabilities_have_limits() {
        let t = table();
        let long = "x".repeat(MAX_ID_BYTES + 1);
        assert_eq!(
            t.insert(spec(&long, &["y"])).unwrap_err(),
            FlowError::BadArg("agent_id")
        );
        assert!(t.insert(spec(&long[1..], &["y"])).is_ok());
        let cap = "c".repeat(MAX_CAPABILITY_BYTES + 1);
        assert_eq!(
            t.insert(spec("b", &[&cap])).unwrap_err(),
            FlowError::BadArg("capabilities")
        );
        let many: Vec<String> = (0..=MAX_CAPABILITIES).map(|i| format!("c{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            t.insert(spec("b", &many)).unwrap_err(),
            FlowError::BadArg("capabilities")
        );
        assert!(t.insert(spec("b", &many[1..])).is_ok());
    }

    /// Removals leave holes; once they are a quarter of the slots the table
    /// renumbers them, and every index and the ring agree with a table built
    /// from the agents that stayed.
    #[test]
    fn holes_are_compacted_and_indexes_stay_right() {
        let t = table();
        let specs = (0..300)
            .map(|i| {
                spec(
                    &format!("a{i}"),
                    &["all", if i % 3 == 0 { "three" } else { "other" }],
                )
            })
            .collect();
        t.insert_many(specs).unwrap();
        let gone: Vec<String> = (0..300)
            .filter(|i| i % 2 == 1)
            .map(|i| format!("a{i}"))
            .collect();
        for chunk in gone.chunks(10) {
            let ids: Vec<&[u8]> = chunk.iter().map(|s| s.as_bytes()).collect();
            assert_eq!(t.remove_many(&ids).len(), ids.len());
        }
        let snap = t.load();
        assert_eq!(snap.len(), 150);
        // compacted at least once: fewer slots than were ever used
        assert!(snap.slot_count() < 300, "{}", snap.slot_count());
        let mut want: Vec<String> = (0..300)
            .filter(|i| i % 2 == 0)
            .map(|i| format!("a{i}"))
            .collect();
        want.sort();
        assert_eq!(ids(&t, &["all"]), want);
        let three: Vec<String> = want
            .iter()
            .filter(|id| id[1..].parse::<u32>().unwrap() % 3 == 0)
            .cloned()
            .collect();
        assert_eq!(ids(&t, &["three", "all"]), three);
        for id in &want {
            assert_eq!(snap.find(id.as_bytes()).unwrap().id(), id.as_bytes());
        }
        assert!(snap.find(b"a1").is_none());
        let stayed: Vec<Vec<u8>> = snap.agents().map(|a| a.id().to_vec()).collect();
        let rebuilt = Ring::build(
            stayed.iter().map(|v| v.as_slice()),
            t.shared().config().vnodes,
        );
        for k in 0..5000u64 {
            let h = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let slot = snap
                .ring()
                .walk(h, usize::MAX, |s| snap.get(s).is_some())
                .unwrap();
            assert_eq!(
                snap.agent(slot).id(),
                stayed[rebuilt.lookup(h).unwrap() as usize].as_slice()
            );
        }
        // the hot cells follow the slots; holes are dead cells
        for (slot, cell) in snap.hot().iter().enumerate() {
            match snap.get(slot as u32) {
                Some(a) => assert!(std::ptr::eq(cell.get(), a.stats().hot())),
                None => assert_eq!(cell.get().in_flight(), u32::MAX),
            }
        }
    }

    /// A change copies the chunks and index shards it touches, and shares
    /// the rest with the snapshot before.
    #[test]
    fn snapshots_share_what_a_change_does_not_touch() {
        let t = table();
        t.insert_many((0..1000).map(|i| spec(&format!("a{i}"), &["x"])).collect())
            .unwrap();
        let before = t.load_full();
        t.insert(spec("new", &["y"])).unwrap();
        let after = t.load_full();
        let shared_chunks = before
            .chunks
            .iter()
            .zip(after.chunks.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared_chunks, before.chunks.len() - 1);
        let shared_shards = before
            .by_id
            .shards
            .iter()
            .zip(after.by_id.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared_shards, INDEX_SHARDS - 1);
        assert_eq!(after.by_id.len(), 1001);
    }

    /// A capability's id is freed when its last holder goes, and reused.
    #[test]
    fn capability_ids_are_reused() {
        let t = table();
        t.insert(spec("a", &["x", "only-a"])).unwrap();
        t.insert(spec("b", &["x", "y"])).unwrap();
        assert_eq!(t.writer.lock().unwrap().caps.len(), 3);
        t.remove(b"a").unwrap();
        assert_eq!(t.writer.lock().unwrap().caps.len(), 2);
        t.insert(spec("c", &["z", "y"])).unwrap();
        let w = t.writer.lock().unwrap();
        assert_eq!(w.caps.len(), 3);
        assert_eq!(w.next_id, 3);
        drop(w);
        assert_eq!(ids(&t, &["y", "z"]), ["c"]);
        assert_eq!(ids(&t, &["x", "y"]), ["b"]);
        assert!(ids(&t, &["only-a"]).is_empty());
    }

    #[test]
    fn duplicate_capabilities_are_merged() {
        let t = table();
        let a = t.insert(spec("a", &["x", "x", "w"])).unwrap();
        assert_eq!(a.capabilities().len(), 2);
        assert_eq!(ids(&t, &["x", "w", "x"]), ["a"]);
    }
}
