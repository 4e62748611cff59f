//! Dense per-agent "hot" cells: the figures a decision reads for every
//! candidate (tasks in flight, the learner's condition byte, the breaker's
//! state, the value of the current state and how far its news has aged),
//! 16 bytes per agent, four agents per cache line.
//!
//! An agent is a few hundred bytes behind its own pointer; a scan over a
//! thousand of them touches a thousand scattered cache lines. Its hot cell
//! instead lives in a chunk of 256 cells shared with the agents registered
//! around the same time, and each table snapshot keeps the cells of its slots
//! in one array, so the scan reads two dense arrays.

use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Cells per chunk: a cell's index is a byte, so reading a cell needs no
/// bounds check.
const CHUNK: usize = 256;
const _: () = assert!(CHUNK == u8::MAX as usize + 1);

/// The condition of an agent nobody measured yet: high success, fast (see
/// `QConfig::state`).
pub const UNMEASURED: u8 = 6;

/// One agent's hot figures.
#[derive(Debug)]
pub struct Hot {
    in_flight: AtomicU32,
    condition: AtomicU8,
    /// `BreakerState` as a byte (0 closed).
    breaker: AtomicU8,
    /// How far Q-learning's view of the value has drifted toward the
    /// optimistic prior because the agent's news aged, in 1/65535ths (0:
    /// fresh). In the cell's padding: the cell stays 16 bytes.
    drift: AtomicU16,
    /// `f64` bits of the learned value of the agent's current state (class 0).
    value: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Hot>() == 16);

/// The cell of a hole in a snapshot's slots: as many tasks in flight as a
/// cell can count, so no strategy admits it.
static DEAD: Hot = Hot::holding(u32::MAX);

impl Hot {
    fn new() -> Hot {
        Hot::holding(0)
    }

    /// A cell of an unmeasured agent with `in_flight` tasks in flight.
    const fn holding(in_flight: u32) -> Hot {
        Hot {
            in_flight: AtomicU32::new(in_flight),
            condition: AtomicU8::new(UNMEASURED),
            breaker: AtomicU8::new(0),
            drift: AtomicU16::new(0),
            value: AtomicU64::new(0),
        }
    }

    fn reset(&self) {
        self.in_flight.store(0, Ordering::Relaxed);
        self.condition.store(UNMEASURED, Ordering::Relaxed);
        self.breaker.store(0, Ordering::Relaxed);
        self.drift.store(0, Ordering::Relaxed);
        self.value.store(0, Ordering::Relaxed);
    }

    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a bulkhead permit: one more task in flight, unless `max` are.
    #[inline]
    pub fn try_add_in_flight(&self, max: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    #[inline]
    pub fn breaker(&self) -> u8 {
        self.breaker.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn set_breaker(&self, b: u8) {
        self.breaker.store(b, Ordering::Release);
    }

    /// Gives a bulkhead permit back.
    #[inline]
    pub fn sub_in_flight(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    #[inline]
    pub fn condition(&self) -> u8 {
        self.condition.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn set_condition(&self, c: u8) {
        self.condition.store(c, Ordering::Relaxed);
    }

    #[inline]
    pub fn value(&self) -> f64 {
        f64::from_bits(self.value.load(Ordering::Relaxed))
    }

    /// Sets the learned value; the news is fresh again (no drift).
    #[inline]
    pub(crate) fn set_value(&self, v: f64) {
        self.value.store(v.to_bits(), Ordering::Relaxed);
        self.drift.store(0, Ordering::Relaxed);
    }

    /// How far the value has drifted toward the prior, 0 to 1.
    #[inline]
    pub fn drift(&self) -> f64 {
        f64::from(self.drift.load(Ordering::Relaxed)) / f64::from(u16::MAX)
    }

    #[inline]
    pub(crate) fn set_drift(&self, d: f64) {
        let d = (d.clamp(0.0, 1.0) * f64::from(u16::MAX)).round() as u16;
        self.drift.store(d, Ordering::Relaxed);
    }

    /// The value as Q-learning's decisions see it: the learned value moved
    /// `drift` of the way up to `prior` (never down).
    #[inline]
    pub fn aged_value(&self, prior: f64) -> f64 {
        let v = self.value();
        match self.drift.load(Ordering::Relaxed) {
            0 => v,
            d => v + (prior - v).max(0.0) * (f64::from(d) / f64::from(u16::MAX)),
        }
    }
}

#[derive(Debug)]
struct Chunk {
    cells: [Hot; CHUNK],
}

/// A handle on one cell: the chunk is kept alive by whoever holds a handle.
#[derive(Debug, Clone)]
pub struct HotRef {
    chunk: Arc<Chunk>,
    index: u8,
}

impl HotRef {
    #[inline]
    pub fn get(&self) -> &Hot {
        &self.chunk.cells[self.index as usize]
    }

    /// A cell of its own, outside any arena (stats made on their own).
    pub fn detached() -> HotRef {
        HotRef {
            chunk: Arc::new(Chunk {
                cells: std::array::from_fn(|_| Hot::new()),
            }),
            index: 0,
        }
    }
}

/// A cell as a table snapshot keeps it for its scans: the bare address,
/// 8 bytes, one load from the figures.
///
/// It is made only by [`HotCell::of`] from a [`HotRef`] that the snapshot
/// holds (through its agents) for as long as it holds the `HotCell`, so the
/// chunk stays alive; and a cell is given back to the arena for reuse only
/// when its agent is dropped, which no snapshot that lists the agent allows.
///
/// Neither `Clone` nor `Copy`: a `HotCell` is only ever reached by reference
/// through the snapshot that owns it, so `get` cannot outlive the snapshot.
#[derive(Debug)]
pub struct HotCell(std::ptr::NonNull<Hot>);

// SAFETY: a `HotCell` is a shared reference to a `Hot` (atomics only, so
// `Sync`) that outlives it by construction (see above).
unsafe impl Send for HotCell {}
unsafe impl Sync for HotCell {}

impl HotCell {
    /// # Safety
    /// `cell` (or a clone of it) must stay alive as long as the result and
    /// every copy of it.
    pub unsafe fn of(cell: &HotRef) -> HotCell {
        HotCell(std::ptr::NonNull::from(cell.get()))
    }

    /// The dead cell of a hole (static: always valid).
    pub fn dead() -> HotCell {
        HotCell(std::ptr::NonNull::from(&DEAD))
    }

    /// The same address, for the next snapshot.
    ///
    /// # Safety
    /// As for [`HotCell::of`]: whoever holds the copy must keep the cell's
    /// owner alive for as long (a snapshot holding the same agent, or the
    /// dead cell, which is static).
    pub(crate) unsafe fn duplicate(&self) -> HotCell {
        HotCell(self.0)
    }

    #[inline]
    pub fn get(&self) -> &Hot {
        // SAFETY: the cell outlives `self` (the contract of `of`).
        unsafe { self.0.as_ref() }
    }
}

/// Where a table's agents get their cells, and give them back.
#[derive(Debug, Default)]
pub struct HotArena {
    free: Mutex<Vec<HotRef>>,
}

impl HotArena {
    /// A fresh cell: a freed one, or one of a new chunk.
    pub fn take(&self) -> HotRef {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cell) = free.pop() {
            cell.get().reset();
            return cell;
        }
        let chunk = Arc::new(Chunk {
            cells: std::array::from_fn(|_| Hot::new()),
        });
        // Highest index first in the free list, so cells are handed out in
        // order and agents registered together sit together.
        free.extend((1..=u8::MAX).rev().map(|index| HotRef {
            chunk: chunk.clone(),
            index,
        }));
        HotRef { chunk, index: 0 }
    }

    /// Returns a cell whose agent is gone.
    pub fn give(&self, cell: HotRef) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_handed_out_in_order_and_reused_clean() {
        let arena = HotArena::default();
        let a = arena.take();
        let b = arena.take();
        assert!(Arc::ptr_eq(&a.chunk, &b.chunk));
        assert_eq!((a.index, b.index), (0, 1));
        assert!(b.get().try_add_in_flight(1));
        assert!(!b.get().try_add_in_flight(1));
        b.get().set_value(3.5);
        arena.give(b);
        let c = arena.take();
        assert_eq!(c.index, 1);
        assert_eq!(c.get().in_flight(), 0);
        assert_eq!(c.get().value(), 0.0);
        assert_eq!(c.get().condition(), UNMEASURED);
        let more: Vec<HotRef> = (0..CHUNK).map(|_| arena.take()).collect();
        assert!(!Arc::ptr_eq(&more.last().unwrap().chunk, &a.chunk));
        assert_eq!(std::mem::size_of::<Hot>(), 16);
    }
}
