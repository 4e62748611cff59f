//! The correlation store: one entry per span (a task, and each attempt at
//! it), kept for `ttl_us` after it finishes and at most about `max_entries`
//! at once.
//!
//! Spans are sharded by trace id, so a whole trace sits behind one shard lock
//! and [`CorrelationStore::chain`] reads one shard; a lock is held for a few
//! hash-map operations, never across anything slow. An insert never waits for
//! room and never fails: past the cap it drops the shard's oldest finished
//! spans (counted as evictions). Open spans are never evicted (they are
//! bounded by the tasks in flight); the TTL sweep drops open spans older than
//! the TTL too, which only a lost completion leaves behind.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustc_hash::FxHashMap;

/// Shards of the store.
const SHARDS: usize = 16;
/// A task summary is cut to this many bytes.
pub const SUMMARY_MAX: usize = 128;

/// How a span ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanOutcome {
    Open,
    Ok,
    Error,
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
            SpanOutcome::Timeout => "timeout",
            SpanOutcome::Down => "down",
            SpanOutcome::Abandoned => "abandoned",
            SpanOutcome::Failed => "failed",
        }
    }
}

/// One span.
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

#[derive(Debug, Default)]
struct Shard {
    /// Spans by trace; a trace has a task span and a few attempts.
    traces: FxHashMap<[u8; 32], Vec<Span>>,
    /// Span id to trace, for lookups by span.
    by_span: FxHashMap<[u8; 16], [u8; 32]>,
    /// Finished spans, oldest first: the eviction order.
    finished: VecDeque<([u8; 32], [u8; 16], u64)>,
}

impl Shard {
    /// Removes a span; returns it when it was there.
    fn remove(&mut self, trace: &[u8; 32], span: &[u8; 16]) -> Option<Span> {
        let spans = self.traces.get_mut(trace)?;
        let i = spans.iter().position(|s| &s.span_id == span)?;
        let removed = spans.swap_remove(i);
        if spans.is_empty() {
            self.traces.remove(trace);
        }
        self.by_span.remove(span);
        Some(removed)
    }
}

/// The store.
#[derive(Debug)]
pub struct CorrelationStore {
    shards: Box<[Mutex<Shard>]>,
    config: CorrelationConfig,
    entries: AtomicUsize,
    /// Spans inserted and not closed yet (nor removed).
    open: AtomicUsize,
    evicted: AtomicU64,
    expired: AtomicU64,
    export: Mutex<VecDeque<Span>>,
    export_dropped: AtomicU64,
}

fn shard_of(trace: &[u8; 32]) -> usize {
    (xxhash_rust::xxh3::xxh3_64(trace) as usize) % SHARDS
}

impl CorrelationStore {
    pub fn new(config: CorrelationConfig) -> Self {
        CorrelationStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            config,
            entries: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            export: Mutex::new(VecDeque::new()),
            export_dropped: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &CorrelationConfig {
        &self.config
    }

    fn shard(&self, trace: &[u8; 32]) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard_of(trace)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an open span. Past the cap, the shard's oldest finished spans go
    /// first; the insert itself always succeeds.
    pub fn insert(&self, mut span: Span, now_us: u64) {
        span.summary = cut(span.summary);
        let trace = span.trace_id;
        let id = span.span_id;
        let mut shard = self.shard(&trace);
        self.expire_front(&mut shard, now_us);
        if let Some(old_trace) = shard.by_span.insert(id, trace) {
            // The same span id again (a caller reusing a traceparent's span
            // id as its own): the newer span replaces the older.
            if let Some(old) = shard.remove(&old_trace, &id) {
                self.forget(&old);
            }
            shard.by_span.insert(id, trace);
        }
        shard.traces.entry(trace).or_default().push(span);
        self.open.fetch_add(1, Ordering::Relaxed);
        let total = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        let over = total.saturating_sub(self.config.max_entries);
        for _ in 0..over.min(4) {
            match shard.finished.pop_front() {
                Some((t, s, _)) => {
                    if let Some(old) = shard.remove(&t, &s) {
                        self.forget(&old);
                        self.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => break,
            }
        }
    }

    /// Drops finished spans past their TTL from the front of a shard's queue.
    fn expire_front(&self, shard: &mut Shard, now_us: u64) {
        while let Some(&(t, s, end)) = shard.finished.front() {
            if end.saturating_add(self.config.ttl_us) > now_us {
                break;
            }
            shard.finished.pop_front();
            if let Some(old) = shard.remove(&t, &s) {
                self.forget(&old);
                self.expired.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Closes a span with its outcome (and its agent, when it has one now).
    /// Returns whether the span was there and open.
    pub fn close(
        &self,
        trace: &[u8; 32],
        span: &[u8; 16],
        outcome: SpanOutcome,
        agent_id: Option<&[u8]>,
        now_us: u64,
    ) -> bool {
        let mut shard = self.shard(trace);
        let Some(entry) = shard
            .traces
            .get_mut(trace)
            .and_then(|spans| spans.iter_mut().find(|s| &s.span_id == span))
        else {
            return false;
        };
        if entry.outcome != SpanOutcome::Open {
            return false;
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        entry.end_us = now_us.max(entry.start_us);
        entry.outcome = outcome;
        if let Some(a) = agent_id {
            entry.agent_id = a.into();
        }
        let exported = (self.config.export_queue > 0).then(|| entry.clone());
        shard.finished.push_back((*trace, *span, now_us));
        drop(shard);
        if let Some(e) = exported {
            let mut q = self.export.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.config.export_queue {
                q.pop_front();
                self.export_dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(e);
        }
        true
    }

    /// The spans of a trace in parent order: each span after its parent,
    /// siblings by start time; spans whose parent is not in the store first.
    pub fn chain(&self, trace: &[u8; 32]) -> Vec<Span> {
        let spans = self
            .shard(trace)
            .traces
            .get(trace)
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::with_capacity(spans.len());
        let mut roots: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.parent_span_id
                    .is_none_or(|p| !spans.iter().any(|o| o.span_id == p))
            })
            .collect();
        roots.sort_by_key(|s| (s.start_us, s.attempt));
        let mut stack: Vec<&Span> = roots.into_iter().rev().collect();
        while let Some(s) = stack.pop() {
            out.push(s.clone());
            let mut children: Vec<&Span> = spans
                .iter()
                .filter(|c| c.parent_span_id == Some(s.span_id))
                .collect();
            children.sort_by_key(|c| (c.start_us, c.attempt));
            stack.extend(children.into_iter().rev());
        }
        out
    }

    /// One span by its id.
    pub fn lookup(&self, span: &[u8; 16]) -> Option<Span> {
        self.shards.iter().find_map(|m| {
            let shard = m.lock().unwrap_or_else(|e| e.into_inner());
            let trace = shard.by_span.get(span)?;
            shard
                .traces
                .get(trace)?
                .iter()
                .find(|s| &s.span_id == span)
                .cloned()
        })
    }

    /// Drops every finished span past its TTL, and open spans older than the
    /// TTL (a completion that never came). Returns how many went.
    pub fn sweep(&self, now_us: u64) -> usize {
        let mut gone = 0;
        for m in self.shards.iter() {
            let mut shard = m.lock().unwrap_or_else(|e| e.into_inner());
            let before = self.expired.load(Ordering::Relaxed);
            self.expire_front(&mut shard, now_us);
            gone += (self.expired.load(Ordering::Relaxed) - before) as usize;
            let ttl = self.config.ttl_us;
            let stale: Vec<([u8; 32], [u8; 16])> = shard
                .traces
                .iter()
                .flat_map(|(t, spans)| {
                    spans
                        .iter()
                        .filter(|s| {
                            s.outcome == SpanOutcome::Open
                                && s.start_us.saturating_add(ttl) <= now_us
                        })
                        .map(move |s| (*t, s.span_id))
                })
                .collect();
            for (t, s) in stale {
                if let Some(old) = shard.remove(&t, &s) {
                    self.forget(&old);
                    self.expired.fetch_add(1, Ordering::Relaxed);
                    gone += 1;
                }
            }
        }
        gone
    }

    /// Up to `max` finished spans waiting for the exporter, oldest first.
    pub fn drain_export(&self, max: usize) -> Vec<Span> {
        let mut q = self.export.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    /// Spans still open.
    pub fn open_spans(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a removed span out.
    fn forget(&self, span: &Span) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        if span.outcome == SpanOutcome::Open {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> CorrelationStats {
        CorrelationStats {
            entries: self.entries.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            export_dropped: self.export_dropped.load(Ordering::Relaxed),
        }
    }
}

fn cut(summary: Box<[u8]>) -> Box<[u8]> {
    if summary.len() <= SUMMARY_MAX {
        summary
    } else {
        summary[..SUMMARY_MAX].into()
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

    fn span(trace: u64, id: u64, parent: Option<u64>, attempt: u16, start: u64) -> Span {
        Span {
            trace_id: hex32(trace),
            span_id: hex16(id),
            parent_span_id: parent.map(hex16),
            agent_id: Box::new([]),
            summary: b"task".as_slice().into(),
            start_us: start,
            end_us: 0,
            outcome: SpanOutcome::Open,
            attempt,
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
        s.insert(span(1, 10, None, 0, 0), 0);
        s.insert(span(1, 12, Some(10), 2, 5), 5);
        s.insert(span(1, 11, Some(10), 1, 1), 1);
        s.insert(span(2, 20, None, 0, 0), 0);
        let chain: Vec<u16> = s.chain(&hex32(1)).iter().map(|x| x.attempt).collect();
        assert_eq!(chain, [0, 1, 2]);
        assert!(s.close(&hex32(1), &hex16(11), SpanOutcome::Timeout, Some(b"a1"), 9));
        assert!(!s.close(&hex32(1), &hex16(11), SpanOutcome::Ok, None, 10));
        let one = s.lookup(&hex16(11)).unwrap();
        assert_eq!(
            (one.outcome, one.end_us, &*one.agent_id),
            (SpanOutcome::Timeout, 9, b"a1".as_slice())
        );
        assert_eq!(s.lookup(&hex16(99)), None);
        assert_eq!(s.open_spans(), 3);
        assert_eq!(s.drain_export(10).len(), 1);
    }

    #[test]
    fn the_cap_evicts_the_oldest_finished_first() {
        let s = store(10, u64::MAX / 2);
        // every trace in its own shard order; close them all in order
        for i in 0..200u64 {
            s.insert(span(i, i, None, 0, i), i);
            s.close(&hex32(i), &hex16(i), SpanOutcome::Ok, None, i);
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
        for i in 0..10u64 {
            s.insert(span(i, i, None, 0, 0), 0);
        }
        assert_eq!(s.stats().entries, 10);
        for i in 0..10u64 {
            s.close(&hex32(i), &hex16(i), SpanOutcome::Ok, None, 10);
        }
        assert_eq!(s.sweep(50), 0);
        assert_eq!(s.sweep(110), 10);
        assert_eq!(s.stats().entries, 0);
        // an open span older than the TTL is swept too
        s.insert(span(1, 1, None, 0, 0), 0);
        assert_eq!(s.sweep(1_000), 1);
    }

    #[test]
    fn open_spans_are_counted_through_every_removal() {
        let s = store(2, 100);
        s.insert(span(1, 1, None, 0, 0), 0);
        // the same span id again, in another trace of the same shard or not:
        // the newer replaces the older
        s.insert(span(1, 1, None, 0, 1), 1);
        assert_eq!((s.stats().entries, s.open_spans()), (1, 1));
        assert!(s.close(&hex32(1), &hex16(1), SpanOutcome::Ok, None, 2));
        assert_eq!(s.open_spans(), 0);
        // evicted at the cap: finished ones, so the open count stays
        for i in 2..6u64 {
            s.insert(span(i, i, None, 0, 3), 3);
        }
        assert_eq!(s.open_spans(), 4);
        // swept past the TTL, open or not
        let entries = s.stats().entries;
        assert_eq!(s.sweep(1_000), entries);
        assert_eq!((s.stats().entries, s.open_spans()), (0, 0));
    }

    #[test]
    fn summaries_are_cut() {
        let s = store(10, 100);
        let mut sp = span(1, 1, None, 0, 0);
        sp.summary = vec![b'x'; 1000].into();
        s.insert(sp, 0);
        assert_eq!(s.lookup(&hex16(1)).unwrap().summary.len(), SUMMARY_MAX);
    }
}
