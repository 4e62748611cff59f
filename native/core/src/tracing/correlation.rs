//! The correlation store: one entry per span (a task, and each attempt at
//! it), kept for `ttl_us` after it finishes and at most about `max_entries`
//! at once.
//!
//! Spans are sharded by trace id, so a whole trace sits behind one shard lock
//! and [`CorrelationStore::chain`] reads one shard; a lock is held for a few
//! hash-map operations, never across anything slow (reading a long trace, a
//! lookup by span id and the sweep go in bounded steps, releasing the lock
//! between them). Trace ids come from callers (and soon from the network),
//! so they are hashed with a key drawn at random per store: crafted ids can
//! neither pile into one shard nor make a shard's index linear.
//!
//! An insert never waits for room and never fails. The cap is a bound on
//! the finished spans: past it an insert drops the oldest finished span of
//! its shard, or of another shard when its own has none, and a close drops
//! one when open spans alone fill the store. So after every operation the
//! store holds at most `max(max_entries, open spans)` entries, plus one per
//! insert or close running at that instant on another thread. Open spans are
//! never evicted (they are bounded by the tasks in flight); the TTL sweep
//! drops open spans older than the TTL too, which only a lost completion
//! leaves behind.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ahash::RandomState;
use hashbrown::HashTable;

use crate::name::Name;

/// Most spans a store may be configured to hold.
pub const MAX_CORRELATION_ENTRIES: usize = 10_000_000;
/// Most finished spans a store may keep for the exporter.
pub const MAX_EXPORT_QUEUE: usize = 1_000_000;

/// Shards of the store (a power of two: the top bits of a trace's hash).
const SHARDS: usize = 16;
const SHARD_SHIFT: u32 = 64 - SHARDS.trailing_zeros();
/// Spans one step of a long walk reads under a shard's lock.
const STEP: usize = 256;
/// Most task traces [`CorrelationStore::recent_tasks`] returns.
pub const MAX_RECENT: usize = 100;
/// Slots one step of a scan (lookup, sweep) looks at under a shard's lock.
const SCAN_STEP: usize = 4096;
/// A task summary is cut to this many bytes.
pub const SUMMARY_MAX: usize = 128;

/// How a span ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanOutcome {
    Open,
    Ok,
    Error,
    /// The agent refused the task as the caller's error.
    Rejected,
    Timeout,
    Down,
    Abandoned,
    /// A task span whose every attempt failed, or that found no agent.
    Failed,
}

impl SpanOutcome {
    pub fn name(self) -> &'static str {
        match self {
            SpanOutcome::Open => "open",
            SpanOutcome::Ok => "ok",
            SpanOutcome::Error => "error",
            SpanOutcome::Rejected => "rejected",
            SpanOutcome::Timeout => "timeout",
            SpanOutcome::Down => "down",
            SpanOutcome::Abandoned => "abandoned",
            SpanOutcome::Failed => "failed",
        }
    }
}

/// What a span stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A task: `execute` or a routed task, from its start to its answer.
    Task,
    /// One attempt of a task on one agent.
    Attempt,
    /// A span an agent opened under its attempt (or under another child),
    /// for a call of its own; its summary is the name the agent gave.
    Child,
}

impl SpanKind {
    pub fn name(self) -> &'static str {
        match self {
            SpanKind::Task => "task",
            SpanKind::Attempt => "attempt",
            SpanKind::Child => "child",
        }
    }
}

/// One span, as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// 32 lowercase hex digits.
    pub trace_id: [u8; 32],
    /// 16 lowercase hex digits.
    pub span_id: [u8; 16],
    pub parent_span_id: Option<[u8; 16]>,
    /// Empty until an agent is known.
    pub agent_id: Box<[u8]>,
    pub summary: Box<[u8]>,
    pub start_us: u64,
    /// 0 while open.
    pub end_us: u64,
    pub outcome: SpanOutcome,
    /// 0 for a task span, 1.. for its attempts.
    pub attempt: u16,
    pub kind: SpanKind,
}

/// Store settings (the `correlation` configuration section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationConfig {
    pub ttl_us: u64,
    pub max_entries: usize,
    /// Finished spans kept for the exporter, at most (0: no export).
    pub export_queue: usize,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        CorrelationConfig {
            ttl_us: 3_600_000_000,
            max_entries: 100_000,
            export_queue: 0,
        }
    }
}

/// Store-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CorrelationStats {
    pub entries: usize,
    /// Spans not closed yet: tasks and attempts in progress.
    pub open: usize,
    pub evicted: u64,
    pub expired: u64,
    /// Finished spans the export queue had no room for.
    pub export_dropped: u64,
}

/// A span being opened. Ids are lowercase hex, as [`crate::tracing::context`] makes
/// and validates them; the agent and the summary are shared, not copied.
#[derive(Debug, Clone)]
pub struct Opened {
    pub trace_id: [u8; 32],
    pub span_id: [u8; 16],
    pub parent_span_id: Option<[u8; 16]>,
    pub agent_id: Option<Name>,
    pub summary: Option<Name>,
    pub attempt: u16,
    pub kind: SpanKind,
}

/// A trace id as two words (the store keeps ids binary: half the bytes of
/// hex, and cheap to hash).
type TraceKey = (u64, u64);
/// "No slot".
const NIL: u32 = u32::MAX;

/// Where an inserted span lives, so that closing it costs no search: its
/// shard and slot, and its ids to check that the slot still holds it (a
/// span evicted or expired while open leaves its slot to another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanHandle {
    trace: TraceKey,
    span: u64,
    slot: u32,
    shard: u8,
}

impl SpanHandle {
    /// The span's trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> [u8; 32] {
        trace_hex(self.trace)
    }

    /// The span's id, 16 lowercase hex digits.
    pub fn span_id(&self) -> [u8; 16] {
        span_hex(self.span)
    }
}

/// What the store knows of one span, in 64 bytes: ids as integers, the
/// duration in 32 bits, the agent and the summary as one-word pointers to
/// bytes shared with the agent table and the task (`None` when absent). The
/// export queue keeps clones of these.
#[derive(Debug, Clone)]
struct Record {
    trace: TraceKey,
    span: u64,
    /// 0: none (an all-zero span id is invalid, so never a real parent).
    parent: u64,
    start_us: u64,
    /// How long the span lasted, [`took`]-encoded (0 while open).
    took: u32,
    attempt: u16,
    outcome: SpanOutcome,
    kind: SpanKind,
    agent: Option<Name>,
    summary: Option<Name>,
}

/// Durations below this many microseconds (35 minutes) are kept to the
/// microsecond; longer ones to the millisecond, flagged by the top bit
/// (up to 24 days; longer ones saturate there).
const TOOK_US_LIMIT: u64 = 1 << 31;

/// A span's duration in 32 bits (see [`TOOK_US_LIMIT`]).
fn took(us: u64) -> u32 {
    if us < TOOK_US_LIMIT {
        us as u32
    } else {
        (TOOK_US_LIMIT | (us / 1000).min(TOOK_US_LIMIT - 1)) as u32
    }
}

/// The microseconds a [`took`] value stands for.
fn took_us(t: u32) -> u64 {
    let t = u64::from(t);
    if t < TOOK_US_LIMIT {
        t
    } else {
        (t - TOOK_US_LIMIT) * 1000
    }
}

impl Record {
    fn end_us(&self) -> u64 {
        self.start_us + took_us(self.took)
    }

    fn view(&self) -> Span {
        Span {
            trace_id: trace_hex(self.trace),
            span_id: span_hex(self.span),
            parent_span_id: (self.parent != 0).then(|| span_hex(self.parent)),
            agent_id: self.agent.as_deref().unwrap_or_default().into(),
            summary: self.summary.as_deref().unwrap_or_default().into(),
            start_us: self.start_us,
            end_us: if self.outcome == SpanOutcome::Open {
                0
            } else {
                self.end_us()
            },
            outcome: self.outcome,
            attempt: self.attempt,
            kind: self.kind,
        }
    }
}

/// `prev` of a free slot (a live one's is `NIL` or an index): no flag of
/// its own, which would cost the slot 8 bytes of padding.
const FREE: u32 = u32::MAX - 1;

/// One span in a shard's slab.
#[derive(Debug)]
struct Slot {
    rec: Record,
    /// The neighbours in the trace's list of spans (newest first); `prev` is
    /// `FREE` when the slot holds no span.
    next: u32,
    prev: u32,
}

impl Slot {
    fn live(&self) -> bool {
        self.prev != FREE
    }
}

#[derive(Debug)]
struct Shard {
    /// The store's keyed hasher (a copy: same keys).
    hasher: RandomState,
    /// The spans; freed slots are reused first.
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The first slot of each trace, keyed by the trace of the span in it
    /// (4 bytes a trace); its spans are linked through `next` and `prev`, so
    /// that removing one is O(1) however long the trace. (No index by span
    /// id: a close holds its [`SpanHandle`], and a lookup by span id alone
    /// is for operators, so it scans.)
    by_trace: HashTable<u32>,
    /// Finished spans, oldest first: the eviction and expiry order, as the
    /// slot and the low half of the span's id (8 bytes a span). An entry
    /// whose slot holds another span by now is skipped.
    finished: VecDeque<(u32, u32)>,
    export: VecDeque<Record>,
    /// The shard's counters, kept under its lock (global atomics would be
    /// written by every scheduler on every span); `stats` sums them.
    open: usize,
    evicted: u64,
    expired: u64,
    /// The spans this shard is expected to hold when the store is full:
    /// its share of the cap and a little more (see [`grow`]).
    share: usize,
    /// No span in `finished` ended before this (µs): the TTL check of an
    /// insert reads no slot until the oldest could have expired.
    ends_after: u64,
}

/// Makes room in a full vector for a quarter more (at least 64), where
/// doubling would leave up to half of a large shard's slots unused; but not
/// past `share` while below it, so that a full store's slabs end close to
/// its cap rather than up to a quarter above it.
fn grow(len: usize, capacity: usize, share: usize) -> Option<usize> {
    if len < capacity {
        return None;
    }
    let more = (len / 4).max(64);
    Some(if len < share {
        more.min(share - len)
    } else {
        more
    })
}

/// A shard's share of a store capped at `max_entries`: the cap spread over
/// the shards, plus 1/16 for the uneven spread of random trace ids and for
/// spans in flight.
fn shard_share(max_entries: usize) -> usize {
    let even = max_entries.div_ceil(SHARDS);
    even + even / 16 + 64
}

impl Shard {
    fn new(hasher: RandomState, share: usize) -> Shard {
        Shard {
            share,
            ends_after: 0,
            hasher,
            slots: Vec::new(),
            free: Vec::new(),
            by_trace: HashTable::new(),
            finished: VecDeque::new(),
            export: VecDeque::new(),
            open: 0,
            evicted: 0,
            expired: 0,
        }
    }

    /// The first slot of `trace`'s list, or `NIL`.
    fn head(&self, trace: TraceKey) -> u32 {
        let h = self.hasher.hash_one(trace);
        let slots = &self.slots;
        self.by_trace
            .find(h, |&e| slots[e as usize].rec.trace == trace)
            .map_or(NIL, |&e| e)
    }

    /// Makes `slot` the first of `trace`'s list (`NIL`: the trace is gone).
    /// Every slot an entry names holds a span of the entry's trace (the old
    /// head while it is replaced or removed, `slot` once it is inserted).
    fn set_head(&mut self, trace: TraceKey, slot: u32) {
        let hasher = &self.hasher;
        let slots = &self.slots;
        let h = hasher.hash_one(trace);
        match self.by_trace.entry(
            h,
            |&e| slots[e as usize].rec.trace == trace,
            |&e| hasher.hash_one(slots[e as usize].rec.trace),
        ) {
            hashbrown::hash_table::Entry::Occupied(e) if slot == NIL => {
                e.remove();
            }
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = slot,
            hashbrown::hash_table::Entry::Vacant(e) if slot != NIL => {
                e.insert(slot);
            }
            hashbrown::hash_table::Entry::Vacant(_) => {}
        }
    }

    /// Makes `slot` the first and only span of `trace`, a trace with no
    /// span in the store (its id new: made here at random, not given): no
    /// look-up, which in a full store reads cold memory.
    fn new_head(&mut self, trace: TraceKey, slot: u32) {
        let hasher = &self.hasher;
        let slots = &self.slots;
        let h = hasher.hash_one(trace);
        self.by_trace
            .insert_unique(h, slot, |&e| hasher.hash_one(slots[e as usize].rec.trace));
    }

    fn alloc(&mut self, slot: Slot) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                if let Some(more) = grow(self.slots.len(), self.slots.capacity(), self.share) {
                    self.slots.reserve_exact(more);
                }
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Removes the span in slot `i`, counting it out of `open` if it was
    /// (the caller counts the store's entries).
    fn remove(&mut self, i: u32) {
        let (trace, next, prev) = {
            let s = &self.slots[i as usize];
            (s.rec.trace, s.next, s.prev)
        };
        if prev == NIL {
            self.set_head(trace, next);
        } else {
            self.slots[prev as usize].next = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        }
        let s = &mut self.slots[i as usize];
        if s.rec.outcome == SpanOutcome::Open {
            self.open -= 1;
        }
        s.rec.agent = None;
        s.rec.summary = None;
        s.next = NIL;
        s.prev = FREE;
        self.free.push(i);
    }

    /// Up to [`STEP`] spans of `trace` from slot `at` on (`NIL`: from the
    /// head), and where to go on: `Some(slot, span)` to check the next step
    /// against, `None` at the end of the list. `Err(())` when `at` no longer
    /// holds `span` (removed since the last step).
    fn spans_from(
        &self,
        trace: TraceKey,
        at: Option<(u32, u64)>,
        out: &mut Vec<Span>,
    ) -> Result<Option<(u32, u64)>, ()> {
        let mut i = match at {
            None => self.head(trace),
            Some((slot, span)) => {
                let s = self.slots.get(slot as usize).ok_or(())?;
                if !(s.live() && s.rec.span == span && s.rec.trace == trace) {
                    return Err(());
                }
                slot
            }
        };
        for _ in 0..STEP {
            if i == NIL {
                return Ok(None);
            }
            let s = &self.slots[i as usize];
            out.push(s.rec.view());
            i = s.next;
        }
        Ok((i != NIL).then(|| (i, self.slots[i as usize].rec.span)))
    }

    /// Pops the oldest finished span still in the shard; whether one went.
    fn evict_oldest(&mut self) -> bool {
        while let Some((slot, tag)) = self.finished.pop_front() {
            if CorrelationStore::holds(self, slot, tag) {
                // finished spans are queued in the order they ended
                self.ends_after = self.ends_after.max(self.slots[slot as usize].rec.end_us());
                self.remove(slot);
                self.evicted += 1;
                return true;
            }
        }
        false
    }
}

/// Where an insert links its span in its trace's list.
#[derive(Clone, Copy)]
enum Near<'a> {
    /// After this span of the trace, when the store still holds it; else
    /// as `Search`.
    After(&'a SpanHandle),
    /// First, the trace looked up.
    Search,
    /// First and alone: the trace is new.
    NewTrace,
}

/// The store.
#[derive(Debug)]
pub struct CorrelationStore {
    shards: Box<[Mutex<Shard>]>,
    config: CorrelationConfig,
    /// Spans in the store: the one store-wide figure an insert needs (for
    /// the cap), written only when an insert does not evict as many spans as
    /// it adds.
    entries: AtomicUsize,
    /// Spans in the export queues, and the next queue to drain first.
    exporting: AtomicUsize,
    export_next: AtomicUsize,
    export_dropped: AtomicU64,
    /// Keyed with random keys drawn when the store is made.
    hasher: RandomState,
    /// Where an insert that found nothing to evict in its own shard looks
    /// next.
    evict_next: AtomicUsize,
}

/// 16 lowercase hex digits to their value, branch-free: each byte becomes
/// its nibble (`c & 0xf`, plus 9 for `a`-`f`), then neighbours pair up.
fn hex_word(hex: &[u8]) -> u64 {
    fn eight(b: &[u8]) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(b);
        let x = u64::from_be_bytes(x);
        let v = (x & 0x0f0f_0f0f_0f0f_0f0f) + ((x >> 6) & 0x0101_0101_0101_0101) * 9;
        let v = (v | (v >> 4)) & 0x00ff_00ff_00ff_00ff;
        let v = (v | (v >> 8)) & 0x0000_ffff_0000_ffff;
        (v | (v >> 16)) & 0xffff_ffff
    }
    (eight(&hex[..8]) << 32) | eight(&hex[8..16])
}

fn trace_key(hex: &[u8; 32]) -> TraceKey {
    (hex_word(&hex[..16]), hex_word(&hex[16..]))
}

fn span_key(hex: &[u8; 16]) -> u64 {
    hex_word(hex)
}

fn word_hex(w: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().enumerate() {
        *o = DIGITS[((w >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn trace_hex(t: TraceKey) -> [u8; 32] {
    let mut out = [0u8; 32];
    word_hex(t.0, &mut out[..16]);
    word_hex(t.1, &mut out[16..]);
    out
}

fn span_hex(s: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    word_hex(s, &mut out);
    out
}

impl CorrelationStore {
    pub fn new(config: CorrelationConfig) -> Self {
        let hasher = RandomState::new();
        let config = CorrelationConfig {
            max_entries: config.max_entries.clamp(1, MAX_CORRELATION_ENTRIES),
            export_queue: config.export_queue.min(MAX_EXPORT_QUEUE),
            ..config
        };
        CorrelationStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(hasher.clone(), shard_share(config.max_entries))))
                .collect(),
            hasher,
            evict_next: AtomicUsize::new(0),
            config,
            entries: AtomicUsize::new(0),
            exporting: AtomicUsize::new(0),
            export_next: AtomicUsize::new(0),
            export_dropped: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &CorrelationConfig {
        &self.config
    }

    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shard of a trace: the top bits of its keyed hash.
    fn shard_of(&self, trace: TraceKey) -> usize {
        (self.hasher.hash_one(trace) >> SHARD_SHIFT) as usize
    }

    /// The store's hash of a trace id (tests: it must not be predictable).
    #[cfg(test)]
    fn trace_hash(&self, trace: TraceKey) -> u64 {
        self.hasher.hash_one(trace)
    }

    /// Moves the entry count by `added - removed`.
    fn count_entries(&self, added: usize, removed: usize) {
        if added > removed {
            self.entries.fetch_add(added - removed, Ordering::Relaxed);
        } else if removed > added {
            self.entries.fetch_sub(removed - added, Ordering::Relaxed);
        }
    }

    /// Adds an open span, started now, and returns the handle that closes
    /// it. Past the cap, the shard's oldest finished spans go first; the
    /// insert itself always succeeds. Span ids are random, so the store does
    /// not look for an earlier span with the same id.
    pub fn insert(&self, span: Opened, now_us: u64) -> SpanHandle {
        self.insert_near(span, now_us, Near::Search)
    }

    /// [`CorrelationStore::insert`] of the first span of a trace whose id
    /// was just made at random (128 bits): no span of it can be in the
    /// store, so its trace is not looked up.
    pub fn insert_new_trace(&self, span: Opened, now_us: u64) -> SpanHandle {
        self.insert_near(span, now_us, Near::NewTrace)
    }

    /// [`CorrelationStore::insert`] of a span of the same trace as `near`
    /// (its task's span): linked after it when it is still in the store,
    /// which spares the look-up of the trace's first span.
    pub fn insert_after(&self, span: Opened, now_us: u64, near: &SpanHandle) -> SpanHandle {
        self.insert_near(span, now_us, Near::After(near))
    }

    fn insert_near(&self, span: Opened, now_us: u64, place: Near<'_>) -> SpanHandle {
        let (near, new_trace) = match place {
            Near::After(n) => (Some(n), false),
            Near::Search => (None, false),
            Near::NewTrace => (None, true),
        };
        let trace = trace_key(&span.trace_id);
        let id = span_key(&span.span_id);
        let shard_ix = self.shard_of(trace);
        let mut shard = self.shard(shard_ix);
        let expired = self.expire_front(&mut shard, now_us);
        // where the span goes in its trace's list: after `near` when that
        // slot still holds it, else first
        let after = near
            .filter(|n| n.trace == trace && n.shard as usize == shard_ix)
            .map(|n| n.slot)
            .filter(|&slot| {
                shard.slots.get(slot as usize).is_some_and(|s| {
                    s.live() && s.rec.trace == trace && near.is_some_and(|n| s.rec.span == n.span)
                })
            });
        let (prev, next) = match after {
            Some(slot) => (slot, shard.slots[slot as usize].next),
            None if new_trace => (NIL, NIL),
            None => (NIL, shard.head(trace)),
        };
        let summary = span.summary.map(|s| {
            if s.len() <= SUMMARY_MAX {
                s
            } else {
                Name::new(&s[..SUMMARY_MAX])
            }
        });
        let i = shard.alloc(Slot {
            rec: Record {
                trace,
                span: id,
                parent: span.parent_span_id.as_ref().map_or(0, span_key),
                start_us: now_us,
                took: 0,
                agent: span.agent_id,
                summary,
                attempt: span.attempt,
                outcome: SpanOutcome::Open,
                kind: span.kind,
            },
            next,
            prev,
        });
        if next != NIL {
            shard.slots[next as usize].prev = i;
        }
        if new_trace {
            shard.new_head(trace, i);
        } else if prev == NIL {
            shard.set_head(trace, i);
        } else {
            shard.slots[prev as usize].next = i;
        }
        shard.open += 1;
        // the cap: room for this span made from the shard's oldest finished
        // ones (a few per insert, so that a store over its cap comes back
        // under it while an insert stays short)
        let total = (self.entries.load(Ordering::Relaxed) + 1).saturating_sub(expired);
        let over = total.saturating_sub(self.config.max_entries);
        let mut evicted = 0;
        while evicted < over.min(4) && shard.evict_oldest() {
            evicted += 1;
        }
        drop(shard);
        if over > 0 && evicted == 0 {
            // nothing finished here: one from another shard, so that spans
            // finished elsewhere never let the store grow past its cap
            evicted += self.evict_elsewhere(shard_ix);
        }
        self.count_entries(1, expired + evicted);
        SpanHandle {
            trace,
            span: id,
            slot: i,
            shard: shard_ix as u8,
        }
    }

    /// Drops the oldest finished span of the first other shard that has one,
    /// taking one lock at a time (never two); returns how many went (0 or 1).
    fn evict_elsewhere(&self, own: usize) -> usize {
        let first = self.evict_next.fetch_add(1, Ordering::Relaxed);
        for k in 0..SHARDS {
            let i = (first + k) % SHARDS;
            if i != own && self.shard(i).evict_oldest() {
                return 1;
            }
        }
        0
    }

    /// Whether `slot` still holds the finished span whose id's low half is
    /// `tag` (a span reusing the slot with the same low half, one in four
    /// billion, would be taken for it: evicted or expired early).
    fn holds(shard: &Shard, slot: u32, tag: u32) -> bool {
        let s = &shard.slots[slot as usize];
        s.live() && s.rec.span as u32 == tag && s.rec.outcome != SpanOutcome::Open
    }

    /// Drops finished spans past their TTL from the front of a shard's
    /// queue; returns how many (the caller counts them out of the entries).
    fn expire_front(&self, shard: &mut Shard, now_us: u64) -> usize {
        let mut gone = 0;
        if shard.ends_after.saturating_add(self.config.ttl_us) > now_us {
            // nothing can have expired yet: no slot read
            return 0;
        }
        while let Some(&(slot, tag)) = shard.finished.front() {
            let held = Self::holds(shard, slot, tag);
            if held {
                let end = shard.slots[slot as usize].rec.end_us();
                shard.ends_after = shard.ends_after.max(end);
                if end.saturating_add(self.config.ttl_us) > now_us {
                    break;
                }
            }
            shard.finished.pop_front();
            if held {
                shard.remove(slot);
                gone += 1;
            }
        }
        shard.expired += gone as u64;
        gone
    }

    /// Closes a span with its outcome (and its agent, when it has one now).
    /// Returns whether the span was there and open.
    pub fn close(
        &self,
        handle: &SpanHandle,
        outcome: SpanOutcome,
        agent_id: Option<Name>,
        now_us: u64,
    ) -> bool {
        let (i, id) = (handle.slot, handle.span);
        let mut shard = self.shard(handle.shard as usize);
        let Some(slot) = shard.slots.get_mut(i as usize) else {
            return false;
        };
        // the slot may hold another span by now (this one evicted or swept)
        let held = slot.live() && slot.rec.span == id && slot.rec.trace == handle.trace;
        if !held || slot.rec.outcome != SpanOutcome::Open {
            return false;
        }
        let rec = &mut slot.rec;
        rec.took = took(now_us.saturating_sub(rec.start_us));
        rec.outcome = outcome;
        if agent_id.is_some() {
            rec.agent = agent_id;
        }
        let exported = (self.config.export_queue > 0).then(|| rec.clone());
        shard.open -= 1;
        if let Some(more) = grow(shard.finished.len(), shard.finished.capacity(), shard.share) {
            shard.finished.reserve_exact(more);
        }
        shard.finished.push_back((i, id as u32));
        // Open spans alone filled the store past its cap: this shard now
        // has a finished span to give back.
        let evicted =
            self.entries.load(Ordering::Relaxed) > self.config.max_entries && shard.evict_oldest();
        if let Some(f) = exported {
            if self.exporting.fetch_add(1, Ordering::Relaxed) < self.config.export_queue {
                shard.export.push_back(f);
            } else {
                self.exporting.fetch_sub(1, Ordering::Relaxed);
                self.export_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(shard);
        if evicted {
            self.count_entries(0, 1);
        }
        true
    }

    /// The spans of a trace in parent order: each span after its parent,
    /// siblings by start time; spans whose parent is not in the store first.
    /// O(n log n) in the trace's spans.
    ///
    /// The trace is copied [`STEP`] spans at a time, the shard's lock taken
    /// for each step alone, so that inserts and closes in that shard never
    /// wait for a copy as long as the trace. Spans inserted or removed while
    /// a long trace is read may be missing from the answer.
    pub fn chain(&self, trace_id: &[u8; 32]) -> Vec<Span> {
        let trace = trace_key(trace_id);
        let shard_ix = self.shard_of(trace);
        let mut spans = Vec::new();
        let mut at = None;
        let mut restarts = 0;
        loop {
            let step = self.shard(shard_ix).spans_from(trace, at, &mut spans);
            match step {
                Ok(Some(next)) => at = Some(next),
                Ok(None) => break,
                // the next span went meanwhile: start again from the head,
                // keeping what was read (duplicates are dropped below)
                Err(()) if restarts < 3 => {
                    restarts += 1;
                    at = None;
                }
                Err(()) => break,
            }
        }
        if restarts > 0 {
            let mut seen = hashbrown::HashSet::with_hasher(self.hasher.clone());
            spans.retain(|s| seen.insert(s.span_id));
        }
        self.order_chain(spans)
    }

    /// `spans` in parent order (see [`CorrelationStore::chain`]).
    fn order_chain(&self, spans: Vec<Span>) -> Vec<Span> {
        // span ids are chosen by callers too: keyed maps here as well
        type Keyed<K, V> = hashbrown::HashMap<K, V, RandomState>;
        let order = |i: &usize| (spans[*i].start_us, spans[*i].attempt, spans[*i].span_id);
        let mut ids: Keyed<[u8; 16], usize> = Keyed::with_hasher(self.hasher.clone());
        ids.extend(spans.iter().enumerate().map(|(i, s)| (s.span_id, i)));
        let mut children: Keyed<[u8; 16], Vec<usize>> = Keyed::with_hasher(self.hasher.clone());
        let mut roots = Vec::new();
        for (i, s) in spans.iter().enumerate() {
            match s.parent_span_id {
                Some(p) if p != s.span_id && ids.contains_key(&p) => {
                    children.entry(p).or_default().push(i)
                }
                _ => roots.push(i),
            }
        }
        roots.sort_by_key(order);
        let mut stack: Vec<usize> = roots.into_iter().rev().collect();
        let mut seen = vec![false; spans.len()];
        let mut out = Vec::with_capacity(spans.len());
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            out.push(spans[i].clone());
            if let Some(mut kids) = children.remove(&spans[i].span_id) {
                kids.sort_by_key(order);
                stack.extend(kids.into_iter().rev());
            }
        }
        // spans in a cycle of parents (ids a caller reused) come last
        let mut rest: Vec<usize> = (0..spans.len()).filter(|i| !seen[*i]).collect();
        rest.sort_by_key(order);
        out.extend(rest.into_iter().map(|i| spans[i].clone()));
        out
    }

    /// The trace ids of the `n` task spans (at most [`MAX_RECENT`]) that
    /// finished last, newest first: each shard's queue of finished spans
    /// read from its end, under that shard's lock alone (for operators'
    /// views; the routing path never calls it).
    pub fn recent_tasks(&self, n: usize) -> Vec<[u8; 32]> {
        let n = n.min(MAX_RECENT);
        let mut found: Vec<(u64, TraceKey)> = Vec::new();
        for i in 0..SHARDS {
            let shard = self.shard(i);
            found.extend(
                shard
                    .finished
                    .iter()
                    .rev()
                    .take(SCAN_STEP)
                    .filter(|&&(slot, tag)| {
                        CorrelationStore::holds(&shard, slot, tag)
                            && shard.slots[slot as usize].rec.kind == SpanKind::Task
                    })
                    .take(n)
                    .map(|&(slot, _)| {
                        let rec = &shard.slots[slot as usize].rec;
                        (rec.end_us(), rec.trace)
                    }),
            );
        }
        found.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        found.truncate(n);
        found.into_iter().map(|(_, t)| trace_hex(t)).collect()
    }

    /// One span by its id: a scan of the store, one shard at a time and
    /// [`SCAN_STEP`] slots per hold of its lock (for operators; the routing
    /// path never looks a span up by id alone).
    pub fn lookup(&self, span_id: &[u8; 16]) -> Option<Span> {
        let id = span_key(span_id);
        (0..SHARDS).find_map(|i| {
            let mut from = 0;
            loop {
                let shard = self.shard(i);
                let to = (from + SCAN_STEP).min(shard.slots.len());
                if from >= to {
                    return None;
                }
                let found = shard.slots[from..to]
                    .iter()
                    .find(|s| s.live() && s.rec.span == id)
                    .map(|s| s.rec.view());
                if found.is_some() {
                    return found;
                }
                from = to;
            }
        })
    }

    /// Drops every finished span past its TTL, and open spans older than the
    /// TTL (a completion that never came). Returns how many went.
    ///
    /// Each shard is swept in steps of [`SCAN_STEP`] slots, its lock
    /// released between them.
    pub fn sweep(&self, now_us: u64) -> usize {
        let ttl = self.config.ttl_us;
        let mut gone = 0;
        for i in 0..SHARDS {
            let removed = self.expire_front(&mut self.shard(i), now_us);
            self.count_entries(0, removed);
            gone += removed;
            let mut from = 0;
            loop {
                let mut shard = self.shard(i);
                let to = (from + SCAN_STEP).min(shard.slots.len());
                if from >= to {
                    break;
                }
                let stale: Vec<u32> = (from..to)
                    .filter(|&j| {
                        let s = &shard.slots[j];
                        s.live()
                            && s.rec.outcome == SpanOutcome::Open
                            && s.rec.start_us.saturating_add(ttl) <= now_us
                    })
                    .map(|j| j as u32)
                    .collect();
                shard.expired += stale.len() as u64;
                for &slot in &stale {
                    shard.remove(slot);
                }
                drop(shard);
                self.count_entries(0, stale.len());
                gone += stale.len();
                from = to;
            }
        }
        gone
    }

    /// Drops every span (the router that owns the store is gone).
    pub fn clear(&self) {
        for i in 0..SHARDS {
            let mut shard = self.shard(i);
            let removed = shard.slots.iter().filter(|s| s.live()).count();
            let exporting = shard.export.len();
            *shard = Shard::new(self.hasher.clone(), shard_share(self.config.max_entries));
            drop(shard);
            self.count_entries(0, removed);
            self.exporting.fetch_sub(exporting, Ordering::Relaxed);
        }
    }

    /// Up to `max` finished spans waiting for the exporter, oldest first
    /// within each shard.
    pub fn drain_export(&self, max: usize) -> Vec<Span> {
        let mut out = Vec::new();
        let first = self.export_next.fetch_add(1, Ordering::Relaxed);
        for k in 0..SHARDS {
            if out.len() >= max {
                break;
            }
            let mut shard = self.shard((first + k) % SHARDS);
            let n = shard.export.len().min(max - out.len());
            out.extend(shard.export.drain(..n).map(|f| f.view()));
        }
        self.exporting.fetch_sub(out.len(), Ordering::Relaxed);
        out
    }

    /// What the store holds in memory, in bytes: each shard's slab of slots
    /// (a slot is 72 bytes), its index of traces, its queues of finished and
    /// exported spans, and the summaries (counted once, on their task's
    /// span); agent ids are the agent table's. One shard's lock at a time.
    pub fn memory_bytes(&self) -> usize {
        (0..SHARDS)
            .map(|i| {
                let shard = self.shard(i);
                let summaries: usize = shard
                    .slots
                    .iter()
                    .filter(|s| s.live() && s.rec.kind != SpanKind::Attempt)
                    .filter_map(|s| s.rec.summary.as_ref().map(Name::heap_bytes))
                    .sum();
                std::mem::size_of::<Mutex<Shard>>()
                    + shard.slots.capacity() * std::mem::size_of::<Slot>()
                    + shard.free.capacity() * std::mem::size_of::<u32>()
                    + shard.by_trace.allocation_size()
                    + shard.finished.capacity() * std::mem::size_of::<(u32, u32)>()
                    + shard.export.capacity() * std::mem::size_of::<Record>()
                    + summaries
            })
            .sum()
    }

    /// The store's figures: the shards' counters summed, one shard at a time.
    pub fn stats(&self) -> CorrelationStats {
        let mut st = CorrelationStats {
            entries: self.entries.load(Ordering::Relaxed),
            export_dropped: self.export_dropped.load(Ordering::Relaxed),
            ..CorrelationStats::default()
        };
        for i in 0..SHARDS {
            let shard = self.shard(i);
            st.open += shard.open;
            st.evicted += shard.evicted;
            st.expired += shard.expired;
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(n: u64) -> [u8; 32] {
        let mut out = [b'0'; 32];
        out[16..].copy_from_slice(format!("{n:016x}").as_bytes());
        out
    }

    fn hex16(n: u64) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(format!("{n:016x}").as_bytes());
        out
    }

    fn span(trace: u64, id: u64, parent: Option<u64>, attempt: u16) -> Opened {
        Opened {
            trace_id: hex32(trace),
            span_id: hex16(id),
            parent_span_id: parent.map(hex16),
            agent_id: None,
            summary: Some(b"task".as_slice().into()),
            attempt,
            kind: if attempt == 0 {
                SpanKind::Task
            } else {
                SpanKind::Attempt
            },
        }
    }

    fn store(max: usize, ttl: u64) -> CorrelationStore {
        CorrelationStore::new(CorrelationConfig {
            ttl_us: ttl,
            max_entries: max,
            export_queue: 8,
        })
    }

    #[test]
    fn a_chain_comes_in_parent_order() {
        let s = store(100, 1_000_000);
        s.insert(span(1, 10, None, 0), 0);
        s.insert(span(1, 12, Some(10), 2), 5);
        let h = s.insert(span(1, 11, Some(10), 1), 1);
        s.insert(span(2, 20, None, 0), 0);
        let chain: Vec<u16> = s.chain(&hex32(1)).iter().map(|x| x.attempt).collect();
        assert_eq!(chain, [0, 1, 2]);
        assert_eq!((h.trace_id(), h.span_id()), (hex32(1), hex16(11)));
        assert!(s.close(&h, SpanOutcome::Timeout, Some(b"a1".as_slice().into()), 9));
        assert!(!s.close(&h, SpanOutcome::Ok, None, 10));
        let one = s.lookup(&hex16(11)).unwrap();
        assert_eq!(
            (one.outcome, one.end_us, &*one.agent_id),
            (SpanOutcome::Timeout, 9, b"a1".as_slice())
        );
        assert_eq!(s.lookup(&hex16(99)), None);
        assert_eq!(s.stats().open, 3);
        assert_eq!(s.drain_export(10).len(), 1);
    }

    #[test]
    fn recent_tasks_are_the_last_finished_task_spans_newest_first() {
        let s = store(10_000, u64::MAX / 2);
        for i in 0..300u64 {
            let task = s.insert(span(i, 1000 + i, None, 0), i);
            let attempt = s.insert(span(i, 5000 + i, Some(1000 + i), 1), i);
            s.close(&attempt, SpanOutcome::Ok, None, 10 * i + 1);
            // trace 299 stays open: not finished, not listed
            if i != 299 {
                s.close(&task, SpanOutcome::Ok, None, 10 * i + 2);
            }
        }
        let recent = s.recent_tasks(5);
        assert_eq!(recent, [298, 297, 296, 295, 294].map(hex32));
        assert_eq!(s.recent_tasks(1000).len(), MAX_RECENT);
        assert!(store(10, 100).recent_tasks(10).is_empty());
    }

    #[test]
    fn the_cap_evicts_the_oldest_finished_first() {
        let s = store(10, u64::MAX / 2);
        // every trace in its own shard order; close them all in order
        for i in 0..200u64 {
            let h = s.insert(span(i, i, None, 0), i);
            s.close(&h, SpanOutcome::Ok, None, i);
        }
        let st = s.stats();
        assert!(st.entries <= 10 + SHARDS, "{st:?}");
        assert!(st.evicted >= 200 - 10 - SHARDS as u64);
        // the newest survive
        assert!(s.lookup(&hex16(199)).is_some());
        assert!(s.lookup(&hex16(0)).is_none());
    }

    #[test]
    fn open_spans_are_never_evicted_and_ttl_expires_finished_ones() {
        let s = store(4, 100);
        let hs: Vec<SpanHandle> = (0..10u64)
            .map(|i| s.insert(span(i, i, None, 0), 0))
            .collect();
        assert_eq!(s.stats().entries, 10);
        for h in &hs {
            s.close(h, SpanOutcome::Ok, None, 10);
        }
        // closed past the cap, the oldest finished go at once
        assert_eq!((s.stats().entries, s.stats().evicted), (4, 6));
        assert_eq!(s.sweep(50), 0);
        assert_eq!(s.sweep(110), 4);
        assert_eq!(s.stats().entries, 0);
        // an open span older than the TTL is swept too
        s.insert(span(1, 1, None, 0), 0);
        assert_eq!(s.sweep(1_000), 1);
    }

    #[test]
    fn open_spans_are_counted_through_every_removal() {
        let s = store(2, 100);
        let h = s.insert(span(1, 1, None, 0), 0);
        assert_eq!((s.stats().entries, s.stats().open), (1, 1));
        assert!(s.close(&h, SpanOutcome::Ok, None, 2));
        assert_eq!(s.stats().open, 0);
        // evicted at the cap: finished ones, so the open count stays
        for i in 2..6u64 {
            s.insert(span(i, i, None, 0), 3);
        }
        assert_eq!(s.stats().open, 4);
        // swept past the TTL, open or not
        let entries = s.stats().entries;
        assert_eq!(s.sweep(1_000), entries);
        assert_eq!((s.stats().entries, s.stats().open), (0, 0));
    }

    #[test]
    fn ids_round_trip_through_their_binary_form() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        for _ in 0..10_000 {
            let t = crate::tracing::context::generate_trace_id(&mut rng);
            let sp = crate::tracing::context::generate_span_id(&mut rng);
            assert_eq!(trace_hex(trace_key(&t)), t);
            assert_eq!(span_hex(span_key(&sp)), sp);
        }
        assert_eq!(span_key(b"00f067aa0ba902b7"), 0x00f0_67aa_0ba9_02b7);
        assert_eq!(span_key(b"ffffffffffffffff"), u64::MAX);
    }

    #[test]
    fn a_handle_to_a_removed_span_closes_nothing() {
        let s = store(1, 100);
        let old = s.insert(span(1, 1, None, 0), 0);
        // swept while open; its slot goes to the next span
        assert_eq!(s.sweep(1_000), 1);
        let new = s.insert(span(1, 2, None, 0), 1_000);
        assert!(!s.close(&old, SpanOutcome::Ok, None, 1_001));
        assert_eq!(s.stats().open, 1);
        assert!(s.close(&new, SpanOutcome::Ok, None, 1_001));
        assert_eq!(s.stats().open, 0);
    }

    #[test]
    fn a_long_trace_unlinks_and_chains_in_order() {
        // one trace, one root and 10 000 children, evicted from the middle
        let s = store(5_000, u64::MAX / 2);
        let root = s.insert(span(7, 1, None, 0), 0);
        for i in 0..10_000u64 {
            let h = s.insert(span(7, 100 + i, Some(1), 1), i + 1);
            s.close(&h, SpanOutcome::Ok, None, i + 1);
        }
        let chain = s.chain(&hex32(7));
        assert_eq!(chain.len(), s.stats().entries);
        assert_eq!(chain[0].span_id, hex16(1));
        assert!(chain[1..].windows(2).all(|w| w[0].start_us < w[1].start_us));
        // the oldest children went first
        assert_eq!(
            *chain.last().unwrap(),
            s.lookup(&hex16(100 + 9_999)).unwrap()
        );
        assert!(s.lookup(&hex16(100)).is_none());
        assert!(s.close(&root, SpanOutcome::Ok, None, 20_000));
    }

    #[test]
    fn spans_inserted_after_their_task_span_are_in_its_trace() {
        let s = store(100, 10);
        let task = s.insert(span(7, 70, None, 0), 0);
        let a1 = s.insert_after(span(7, 71, Some(70), 1), 1, &task);
        let a2 = s.insert_after(span(7, 72, Some(70), 2), 2, &task);
        let chain: Vec<u16> = s.chain(&hex32(7)).iter().map(|x| x.attempt).collect();
        assert_eq!(chain, [0, 1, 2]);
        // each one removable, the list kept whole
        for h in [&a1, &task, &a2] {
            assert!(s.close(h, SpanOutcome::Ok, None, 3));
        }
        // the trace's spans expire; a span "after" the gone task span is
        // the first of its trace again
        assert_eq!(s.sweep(100), 3);
        assert!(s.chain(&hex32(7)).is_empty());
        let late = s.insert_after(span(7, 73, Some(70), 3), 101, &task);
        let chain: Vec<[u8; 16]> = s.chain(&hex32(7)).iter().map(|x| x.span_id).collect();
        assert_eq!(chain, [hex16(73)]);
        assert!(s.close(&late, SpanOutcome::Ok, None, 102));
        // a handle of another trace is not followed
        let other = s.insert_after(span(8, 80, None, 0), 103, &late);
        assert_eq!(s.chain(&hex32(8)).len(), 1);
        assert_eq!(s.chain(&hex32(7)).len(), 1);
        assert!(s.close(&other, SpanOutcome::Ok, None, 104));
    }

    #[test]
    fn a_cycle_of_parents_still_lists_every_span() {
        let s = store(10, 100);
        s.insert(span(3, 1, Some(2), 0), 0);
        s.insert(span(3, 2, Some(1), 1), 1);
        s.insert(span(3, 9, None, 0), 2);
        let ids: Vec<[u8; 16]> = s.chain(&hex32(3)).iter().map(|x| x.span_id).collect();
        assert_eq!(ids, [hex16(9), hex16(1), hex16(2)]);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_slot_is_72_bytes() {
        // docs/tracing.md's figure, and what memory_bytes counts
        assert_eq!(std::mem::size_of::<Slot>(), 72);
    }

    #[test]
    fn durations_keep_microseconds_below_35_minutes_then_milliseconds() {
        for us in [0, 1, 999, TOOK_US_LIMIT - 1] {
            assert_eq!(took_us(took(us)), us);
        }
        let long = TOOK_US_LIMIT + 1_234;
        assert_eq!(took_us(took(long)), long / 1000 * 1000);
        let day = 86_400_000_000;
        assert_eq!(took_us(took(day + 999)), day);
        // 24 days and more saturate
        assert_eq!(took(u64::MAX), u32::MAX);
        let s = store(10, u64::MAX / 2);
        let h = s.insert(span(1, 1, None, 0), 5);
        s.close(&h, SpanOutcome::Ok, None, 5 + 3 * TOOK_US_LIMIT);
        let one = s.lookup(&hex16(1)).unwrap();
        assert_eq!(one.end_us - 5, 3 * TOOK_US_LIMIT / 1000 * 1000);
    }

    /// A full store at its default cap: a task span and an attempt span
    /// per task, agents' ids shared, no summary.
    #[test]
    fn a_full_store_averages_at_most_100_bytes_a_span() {
        let s = CorrelationStore::new(CorrelationConfig::default());
        let agents: Vec<Name> = (0..1000)
            .map(|i| Name::new(format!("agent-{i}").as_bytes()))
            .collect();
        for i in 0..150_000u64 {
            let mut task = span(i + 1, 2 * i + 1, None, 0);
            task.summary = None;
            let t = s.insert(task, i);
            let mut attempt = span(i + 1, 2 * i + 2, Some(2 * i + 1), 1);
            attempt.summary = None;
            attempt.agent_id = Some(agents[(i % 1000) as usize].clone());
            let a = s.insert(attempt, i);
            s.close(&a, SpanOutcome::Ok, None, i + 1);
            s.close(&t, SpanOutcome::Ok, None, i + 1);
        }
        let entries = s.stats().entries;
        assert_eq!(entries, 100_000);
        let per_span = s.memory_bytes() / entries;
        eprintln!("a full store: {per_span} bytes a span");
        assert!(per_span <= 100, "{per_span} bytes a span");
    }

    #[test]
    fn summaries_are_cut() {
        let s = store(10, 100);
        let mut sp = span(1, 1, None, 0);
        sp.summary = Some(vec![b'x'; 1000].into());
        s.insert(sp, 0);
        assert_eq!(s.lookup(&hex16(1)).unwrap().summary.len(), SUMMARY_MAX);
    }

    /// The report: max 1 000; spans open when inserted (so not evictable),
    /// finished later, then inserts in other shards. The store stayed at
    /// 5 001 entries; the cap is a bound now.
    #[test]
    fn the_cap_holds_when_finished_spans_sit_in_other_shards() {
        let s = store(1_000, u64::MAX / 2);
        // 5 000 open spans of one trace: one shard
        let hs: Vec<SpanHandle> = (0..5_000u64)
            .map(|i| s.insert(span(7, 1 + i, None, 0), i))
            .collect();
        assert_eq!(s.stats().entries, 5_000);
        for h in &hs {
            assert!(s.close(h, SpanOutcome::Ok, None, 6_000));
            let st = s.stats();
            assert!(st.entries <= 1_000.max(st.open), "{st:?}");
        }
        assert_eq!(s.stats().entries, 1_000);
        // inserts landing in every other shard
        for t in 100..5_100u64 {
            let h = s.insert(span(t, 10_000 + t, None, 0), 7_000);
            s.close(&h, SpanOutcome::Ok, None, 7_000);
            let st = s.stats();
            assert!(st.entries <= 1_000, "{st:?}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert { trace: u64 },
        InsertNewTrace,
        InsertAfter(usize),
        Close(usize),
        Sweep,
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Under any sequence, after every operation: at most
        /// max(max_entries, open) entries, and the count is exact.
        #[test]
        fn the_cap_is_a_bound_under_any_sequence(
            cap in 1usize..40,
            ops in proptest::collection::vec(
                prop_oneof![
                    4 => (0u64..6).prop_map(|trace| Op::Insert { trace }),
                    4 => (0usize..1000).prop_map(Op::Close),
                    1 => Just(Op::Sweep),
                ],
                1..300,
            )
        ) {
            let s = store(cap, 1_000_000);
            let mut open: Vec<SpanHandle> = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                let now = n as u64;
                match op {
                    Op::Insert { trace } => open.push(s.insert(span(trace, 1 + n as u64, None, 0), now)),
                    Op::Close(i) if !open.is_empty() => {
                        let h = open.swap_remove(i % open.len());
                        s.close(&h, SpanOutcome::Ok, None, now);
                    }
                    Op::Close(_) | Op::InsertAfter(_) | Op::InsertNewTrace => {}
                    Op::Sweep => { s.sweep(now); }
                }
                let st = s.stats();
                let counted: usize = (0..SHARDS)
                    .map(|i| s.shard(i).slots.iter().filter(|x| x.live()).count())
                    .sum();
                prop_assert_eq!(st.entries, counted);
                prop_assert!(st.entries <= cap.max(st.open), "{:?}", st);
            }
        }
    }

    /// Every live slot is on its trace's list, reached from the head the
    /// trace index gives, the list's links agree both ways, and the index
    /// names exactly the traces that have spans; `chain` returns them all.
    fn check_lists(s: &CorrelationStore) -> Result<(), TestCaseError> {
        for i in 0..SHARDS {
            let shard = s.shard(i);
            let mut traces: std::collections::HashMap<TraceKey, usize> =
                std::collections::HashMap::new();
            for slot in shard.slots.iter().filter(|x| x.live()) {
                *traces.entry(slot.rec.trace).or_default() += 1;
            }
            prop_assert_eq!(shard.by_trace.len(), traces.len());
            for (&trace, &count) in &traces {
                let head = shard.head(trace);
                prop_assert!(head != NIL);
                prop_assert_eq!(shard.slots[head as usize].prev, NIL);
                let (mut at, mut seen, mut prev) = (head, 0, NIL);
                while at != NIL {
                    let slot = &shard.slots[at as usize];
                    prop_assert!(slot.live());
                    prop_assert_eq!(slot.rec.trace, trace);
                    prop_assert_eq!(slot.prev, prev);
                    seen += 1;
                    prop_assert!(seen <= count);
                    prev = at;
                    at = slot.next;
                }
                prop_assert_eq!(seen, count);
            }
            drop(shard);
            for (&trace, &count) in &traces {
                prop_assert_eq!(s.chain(&trace_hex(trace)).len(), count);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Inserts first in a trace (one looked up, or a new one) or after
        /// another span's handle (live, evicted or expired), closes, evictions at the cap and expiry by
        /// the TTL keep every trace's list and the trace index whole.
        #[test]
        fn trace_lists_stay_whole_under_any_sequence(
            cap in 1usize..30,
            ops in proptest::collection::vec(
                prop_oneof![
                    3 => (0u64..5).prop_map(|trace| Op::Insert { trace }),
                    2 => Just(Op::InsertNewTrace),
                    3 => (0usize..1000).prop_map(Op::InsertAfter),
                    3 => (0usize..1000).prop_map(Op::Close),
                    1 => Just(Op::Sweep),
                ],
                1..300,
            )
        ) {
            let s = store(cap, 40);
            let mut open: Vec<SpanHandle> = Vec::new();
            let mut all: Vec<(u64, SpanHandle)> = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                let now = n as u64;
                let id = 1 + n as u64;
                match op {
                    Op::Insert { trace } => {
                        let h = s.insert(span(trace, id, None, 0), now);
                        open.push(h);
                        all.push((trace, h));
                    }
                    Op::InsertNewTrace => {
                        // a trace no other op uses, as a random id is
                        let trace = 1_000 + id;
                        let h = s.insert_new_trace(span(trace, id, None, 0), now);
                        open.push(h);
                        all.push((trace, h));
                    }
                    Op::InsertAfter(i) if !all.is_empty() => {
                        let (trace, near) = all[i % all.len()];
                        let h = s.insert_after(span(trace, id, None, 1), now, &near);
                        open.push(h);
                        all.push((trace, h));
                    }
                    Op::Close(i) if !open.is_empty() => {
                        let h = open.swap_remove(i % open.len());
                        s.close(&h, SpanOutcome::Ok, None, now);
                    }
                    Op::Sweep => { s.sweep(now); }
                    _ => {}
                }
                check_lists(&s)?;
            }
        }
    }

    #[test]
    fn many_threads_keep_the_cap() {
        let s = store(500, u64::MAX / 2);
        std::thread::scope(|sc| {
            for t in 0..4u64 {
                let s = &s;
                sc.spawn(move || {
                    for i in 0..20_000u64 {
                        let h = s.insert(
                            span(t * 1_000_000 + i % 97, 1 + t * 1_000_000 + i, None, 0),
                            i,
                        );
                        s.close(&h, SpanOutcome::Ok, None, i);
                    }
                });
            }
        });
        let st = s.stats();
        assert!(st.entries <= 500, "{st:?}");
        assert_eq!(st.open, 0);
    }

    /// Trace ids are chosen by callers: the store's hash is keyed per store,
    /// so ids crafted to collide under an unkeyed hash do not collide here,
    /// and two stores (two nodes) hash the same id differently.
    #[test]
    fn trace_ids_are_hashed_with_a_random_key() {
        let a = store(10, 10);
        let b = store(10, 10);
        // ids that all collide under FxHash of (u64, u64): the second word
        // undoes the first's mixing
        let k = 0xf135_7aea_2e62_a9c5u64;
        let crafted: Vec<TraceKey> = (1..2_000u64)
            .map(|x| (x, (x.wrapping_mul(k)).rotate_left(5) ^ 0x1234))
            .collect();
        let hashes: std::collections::HashSet<u64> =
            crafted.iter().map(|&t| a.trace_hash(t)).collect();
        assert_eq!(hashes.len(), crafted.len());
        let shards: std::collections::HashSet<usize> =
            crafted.iter().map(|&t| a.shard_of(t)).collect();
        assert_eq!(shards.len(), SHARDS);
        assert_ne!(a.trace_hash(crafted[0]), b.trace_hash(crafted[0]));
    }

    /// A chain read while the trace changes: every span once, no panic.
    #[test]
    fn a_chain_read_during_inserts_and_evictions() {
        let s = store(3_000, u64::MAX / 2);
        for i in 0..3_000u64 {
            let h = s.insert(span(9, 1 + i, None, 1), i);
            s.close(&h, SpanOutcome::Ok, None, i);
        }
        std::thread::scope(|sc| {
            let s = &s;
            sc.spawn(move || {
                for i in 3_000..30_000u64 {
                    let h = s.insert(span(9, 1 + i, None, 1), i);
                    s.close(&h, SpanOutcome::Ok, None, i);
                }
            });
            for _ in 0..50 {
                let chain = s.chain(&hex32(9));
                let ids: std::collections::HashSet<[u8; 16]> =
                    chain.iter().map(|x| x.span_id).collect();
                assert_eq!(ids.len(), chain.len());
            }
        });
    }
}
