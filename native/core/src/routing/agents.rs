//! The agent table: who can be routed to, and with which capabilities.
//!
//! The Erlang registry is the source of truth for membership and mirrors every
//! change here. Readers (every routing decision) load the current [`Snapshot`]
//! without a lock; a writer builds a new snapshot from the old one and swaps it
//! in, so a reader keeps a consistent view for as long as it holds its guard.
//! An [`Agent`] is shared between successive snapshots, so its live stats
//! survive unrelated membership changes.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use rustc_hash::FxHashMap;

use crate::error::FlowError;
use crate::learning::{QConfig, QRow, State, StateIndexer};
use crate::resilience::breaker::Breaker;
use crate::routing::hot::HotCell;
use crate::routing::ring::Ring;
use crate::routing::stats::AgentStats;
use crate::shared::Shared;

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
        }
    }
}

/// One routable agent or swarm.
#[derive(Debug)]
pub struct Agent<P> {
    /// First: what decisions read (see [`AgentStats`]).
    stats: AgentStats,
    /// Shared with the spans of its tasks.
    id: Arc<[u8]>,
    payload: P,
    capabilities: Box<[Box<[u8]>]>,
    kind: AgentKind,
    weight: f64,
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
    pub fn id_arc(&self) -> Arc<[u8]> {
        Arc::clone(&self.id)
    }

    pub fn payload(&self) -> &P {
        &self.payload
    }

    /// Sorted and without duplicates.
    pub fn capabilities(&self) -> &[Box<[u8]>] {
        &self.capabilities
    }

    pub fn kind(&self) -> AgentKind {
        self.kind
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
    /// `class`. For class 0 it is the cached copy in the agent's stats, one
    /// cache line with its load; other classes read the row.
    #[inline]
    pub fn current_value(&self, indexer: &StateIndexer, class: u32) -> f64 {
        if class == 0 {
            self.stats.current_value()
        } else {
            self.q.value(self.state_index(indexer))
        }
    }

    /// Refreshes the cached value after the load, the condition or the
    /// table changed. Concurrent refreshes may store in either order; a stale
    /// copy lasts until the agent's next task starts or ends, and only sways
    /// the choice between candidates meanwhile.
    pub(crate) fn refresh_value(&self) {
        let ix = self.shared.learner().config().indexer(0);
        self.stats
            .set_current_value(self.q.value(self.state_index(&ix)));
    }
}

impl<P> Drop for Agent<P> {
    fn drop(&mut self) {
        // The last reference went with the last snapshot and lease holding
        // it, so nothing reads the cell any more.
        self.shared.hot_arena().give(self.stats.hot().clone());
    }
}

/// A capability's posting list in one snapshot.
#[derive(Debug)]
struct Posting {
    cap_id: u32,
    /// Slots holding the capability, ascending.
    slots: Box<[u32]>,
}

/// An immutable view of the table. Slots are indices into `agents`; they are
/// only meaningful within one snapshot.
#[derive(Debug)]
pub struct Snapshot<P> {
    agents: Vec<Arc<Agent<P>>>,
    by_id: FxHashMap<Arc<[u8]>, u32>,
    postings: FxHashMap<Box<[u8]>, Posting>,
    /// Per slot, the snapshot-local ids of its capabilities, ascending.
    slot_caps: Vec<Box<[u32]>>,
    /// 0..len, so "no requirement" borrows a list like any other.
    all_slots: Box<[u32]>,
    /// Per slot, the agent's hot cell: what a scan over candidates reads.
    /// The agents above hold the cells' `HotRef`s.
    hot: Box<[HotCell]>,
    ring: Ring,
}

impl<P> Snapshot<P> {
    fn empty(vnodes: u32) -> Self {
        Snapshot {
            agents: Vec::new(),
            by_id: FxHashMap::default(),
            postings: FxHashMap::default(),
            slot_caps: Vec::new(),
            all_slots: Box::new([]),
            hot: Box::new([]),
            ring: Ring::empty(vnodes),
        }
    }

    fn build(agents: Vec<Arc<Agent<P>>>, ring: Ring) -> Self {
        let mut by_id = FxHashMap::default();
        let mut postings: FxHashMap<Box<[u8]>, (u32, Vec<u32>)> = FxHashMap::default();
        let mut slot_caps = Vec::with_capacity(agents.len());
        for (slot, agent) in agents.iter().enumerate() {
            let slot = slot as u32;
            by_id.insert(agent.id.clone(), slot);
            let mut ids = Vec::with_capacity(agent.capabilities.len());
            for cap in agent.capabilities.iter() {
                let next_id = postings.len() as u32;
                let entry = postings
                    .entry(cap.clone())
                    .or_insert_with(|| (next_id, Vec::new()));
                entry.1.push(slot);
                ids.push(entry.0);
            }
            ids.sort_unstable();
            slot_caps.push(ids.into_boxed_slice());
        }
        let postings = postings
            .into_iter()
            .map(|(cap, (cap_id, slots))| {
                (
                    cap,
                    Posting {
                        cap_id,
                        slots: slots.into_boxed_slice(),
                    },
                )
            })
            .collect();
        let all_slots = (0..agents.len() as u32).collect();
        let hot = agents
            .iter()
            // SAFETY: the snapshot holds every agent, and so its cell, for as
            // long as it holds the `HotCell`.
            .map(|a| unsafe { HotCell::of(a.stats().hot()) })
            .collect();
        Snapshot {
            hot,
            agents,
            by_id,
            postings,
            slot_caps,
            all_slots,
            ring,
        }
    }

    /// Per slot, the agents' hot cells.
    #[inline]
    pub fn hot(&self) -> &[HotCell] {
        &self.hot
    }

    /// The consistent-hash ring of this snapshot's agents.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The slot of the agent `id`.
    pub fn slot_of(&self, id: &[u8]) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The agent in `slot`. Panics on a slot that did not come from this snapshot.
    pub fn agent(&self, slot: u32) -> &Arc<Agent<P>> {
        &self.agents[slot as usize]
    }

    pub fn agents(&self) -> &[Arc<Agent<P>>] {
        &self.agents
    }

    pub fn find(&self, id: &[u8]) -> Option<&Arc<Agent<P>>> {
        self.by_id.get(id).map(|&slot| &self.agents[slot as usize])
    }

    /// The slots, ascending, of every agent holding all of `required` (every
    /// agent when `required` is empty). With at most one capability required
    /// this borrows a list the snapshot already has; otherwise the slots are
    /// written into `scratch`, starting from the shortest posting list and
    /// checking the other capabilities per agent, so the cost follows the rarest
    /// capability rather than the table size.
    pub fn candidates<'s>(&'s self, required: &[&[u8]], scratch: &'s mut Vec<u32>) -> &'s [u32] {
        match required {
            [] => &self.all_slots,
            [cap] => self.postings.get(*cap).map_or(&[], |p| &p.slots),
            _ => {
                self.candidates_into(required, scratch);
                scratch
            }
        }
    }

    /// As [`Snapshot::candidates`], always written into `out`.
    pub fn candidates_into(&self, required: &[&[u8]], out: &mut Vec<u32>) {
        out.clear();
        if required.is_empty() {
            out.extend_from_slice(&self.all_slots);
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
            let held = &self.slot_caps[slot as usize];
            others.iter().all(|id| held.binary_search(id).is_ok())
        }));
    }
}

fn check<P>(spec: &AgentSpec<P>) -> Result<(), FlowError> {
    if spec.id.is_empty() {
        return Err(FlowError::BadArg("agent_id"));
    }
    if spec.capabilities.is_empty() || spec.capabilities.iter().any(|c| c.is_empty()) {
        return Err(FlowError::BadArg("capabilities"));
    }
    if !(spec.weight > 0.0 && spec.weight.is_finite()) {
        return Err(FlowError::BadArg("weight"));
    }
    Ok(())
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
    writer: Mutex<()>,
    shared: Arc<Shared>,
}

static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// How many tables' snapshots one thread keeps.
const CACHED_TABLES: usize = 4;

struct CachedSnapshot {
    table: u64,
    generation: u64,
    snapshot: Arc<dyn Any + Send + Sync>,
}

thread_local! {
    /// Per thread, the current snapshot of the last few tables it read. With
    /// it a decision reads the snapshot with one plain load (the generation)
    /// instead of the two locked operations an `ArcSwap` guard costs, which
    /// on small tables are a third of a decision. A thread keeps an old
    /// snapshot (and the agents in it) alive until it next reads that table or
    /// the entry makes room for another table.
    static SNAPSHOTS: RefCell<Vec<CachedSnapshot>> = const { RefCell::new(Vec::new()) };
}

impl<P> AgentTable<P> {
    /// An empty table whose agents share `shared` (clock, learner, counters).
    pub fn new(shared: Arc<Shared>) -> Self {
        AgentTable {
            current: ArcSwap::from_pointee(Snapshot::empty(shared.config().vnodes)),
            generation: AtomicU64::new(0),
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            writer: Mutex::new(()),
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
    /// (see `SNAPSHOTS`). Equivalent to `f(&self.load())`, cheaper.
    #[inline]
    pub fn with_snapshot<T>(&self, f: impl FnOnce(&Snapshot<P>) -> T) -> T
    where
        P: Send + Sync + 'static,
    {
        let generation = self.generation.load(Ordering::Acquire);
        let mut f = Some(f);
        let cached = SNAPSHOTS
            .try_with(|cell| {
                // Borrowed already: a call nested in another `f` on this
                // thread; it takes the plain path below.
                let mut cache = cell.try_borrow_mut().ok()?;
                let i = self.cache_slot(&mut cache, generation);
                let snapshot = cache[i].snapshot.downcast_ref::<Snapshot<P>>()?;
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

    /// The index of this table's entry in `cache`, refreshed if its
    /// generation is not `generation`.
    fn cache_slot(&self, cache: &mut Vec<CachedSnapshot>, generation: u64) -> usize
    where
        P: Send + Sync + 'static,
    {
        let found = cache.iter().position(|c| c.table == self.id);
        if let Some(i) = found {
            if cache[i].generation == generation {
                return i;
            }
        }
        let entry = CachedSnapshot {
            table: self.id,
            generation,
            snapshot: self.current.load_full(),
        };
        match found {
            Some(i) => {
                cache[i] = entry;
                i
            }
            None => {
                if cache.len() == CACHED_TABLES {
                    cache.remove(0);
                }
                cache.push(entry);
                cache.len() - 1
            }
        }
    }

    /// Adds an agent. Fails with `AlreadyRegistered` if the id is taken and with
    /// `BadArg` for an empty id, an empty capability list, an empty capability
    /// or a weight that is not positive and finite.
    pub fn insert(&self, spec: AgentSpec<P>) -> Result<Arc<Agent<P>>, FlowError> {
        let mut added = self.insert_many(vec![spec])?;
        Ok(added.remove(0))
    }

    /// Adds several agents with one snapshot swap (and one ring merge per
    /// agent, but one copy of the table): all of them or, on the first bad
    /// spec or taken id, none.
    pub fn insert_many(&self, specs: Vec<AgentSpec<P>>) -> Result<Vec<Arc<Agent<P>>>, FlowError> {
        for spec in &specs {
            check(spec)?;
        }
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load();
        let mut seen = rustc_hash::FxHashSet::default();
        for spec in &specs {
            if old.by_id.contains_key(spec.id.as_slice()) || !seen.insert(spec.id.as_slice()) {
                return Err(FlowError::AlreadyRegistered);
            }
        }
        let shared = &self.shared;
        let added: Vec<Arc<Agent<P>>> = specs
            .into_iter()
            .map(|spec| {
                let mut capabilities: Vec<Box<[u8]>> = spec
                    .capabilities
                    .into_iter()
                    .map(Vec::into_boxed_slice)
                    .collect();
                capabilities.sort_unstable();
                capabilities.dedup();
                Arc::new(Agent {
                    q: shared
                        .q_store()
                        .checkout(&spec.id, shared.learner().config()),
                    uid: shared.next_uid(),
                    id: spec.id.into(),
                    payload: spec.payload,
                    capabilities: capabilities.into_boxed_slice(),
                    kind: spec.kind,
                    weight: spec.weight,
                    stats: AgentStats::with_hot(shared.hot_arena().take()),
                    breaker: Breaker::new(&shared.config().breaker),
                    shared: shared.clone(),
                })
            })
            .inspect(|a| a.refresh_value())
            .collect();
        let mut agents = Vec::with_capacity(old.agents.len() + added.len());
        agents.extend(old.agents.iter().cloned());
        let first = agents.len();
        agents.extend(added.iter().cloned());
        let ring = if added.len() == 1 {
            old.ring.with_agent(added[0].id(), first as u32)
        } else {
            Ring::build(agents.iter().map(|a| a.id()), old.ring.vnodes())
        };
        self.swap_in(Snapshot::build(agents, ring));
        Ok(added)
    }

    /// Removes an agent by id and returns it. In-flight leases keep their own
    /// reference, so their completion still settles the removed agent's stats.
    pub fn remove(&self, id: &[u8]) -> Result<Arc<Agent<P>>, FlowError> {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load();
        let Some(&slot) = old.by_id.get(id) else {
            return Err(FlowError::NotFound);
        };
        let removed = old.agents[slot as usize].clone();
        let agents = old
            .agents
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != slot as usize)
            .map(|(_, a)| a.clone())
            .collect();
        let ring = old.ring.without_slot(slot);
        self.swap_in(Snapshot::build(agents, ring));
        self.shared.q_store().release(id);
        Ok(removed)
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
        assert_eq!(snap.candidates(&req, &mut scratch), out.as_slice());
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
        let ids: Vec<Vec<u8>> = t.load().agents().iter().map(|a| a.id().to_vec()).collect();
        let full = Ring::build(ids.iter().map(|v| v.as_slice()), t.shared().config().vnodes);
        let snap = t.load();
        for k in 0..200u64 {
            assert_eq!(snap.ring().lookup(k << 54), full.lookup(k << 54));
        }
        drop(snap);
        t.remove(b"a2").unwrap();
        let snap = t.load();
        assert_eq!(snap.ring().len(), 4 * t.shared().config().vnodes as usize);
        for k in 0..200u64 {
            let slot = snap.ring().lookup(k << 54).unwrap();
            assert_ne!(snap.agent(slot).id(), b"a2");
        }
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
    fn duplicate_capabilities_are_merged() {
        let t = table();
        let a = t.insert(spec("a", &["x", "x", "w"])).unwrap();
        assert_eq!(a.capabilities().len(), 2);
        assert_eq!(ids(&t, &["x", "w", "x"]), ["a"]);
    }
}
