//! What the core holds in memory: the NIF's global allocator counts the
//! bytes it has handed out and not got back, so `core_memory/0` reports the
//! Rust side's share of the node (the VM's own `erlang:memory/0` does not
//! see it).
//!
//! The count is striped over 64 cache lines, one picked per thread, so
//! scheduler threads allocating at once never contend on one counter.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

const STRIPES: usize = 64;

#[repr(align(64))]
struct Stripe(AtomicIsize);

static LIVE: [Stripe; STRIPES] = [const { Stripe(AtomicIsize::new(0)) }; STRIPES];
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // const and without a destructor: usable from inside the allocator at
    // any point of a thread's life
    static MY_STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn stripe() -> &'static AtomicIsize {
    let i = MY_STRIPE
        .try_with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES);
            }
            s.get()
        })
        .unwrap_or(0);
    &LIVE[i].0
}

pub struct Counting;

// SAFETY: every call is passed on to `System` unchanged; the counting only
// adds and subtracts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            stripe().fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            stripe().fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        stripe().fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as given.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            stripe().fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes the core holds now.
pub fn live_bytes() -> usize {
    LIVE.iter()
        .map(|s| s.0.load(Ordering::Relaxed))
        .sum::<isize>()
        .max(0) as usize
}

/// `core_memory() -> Bytes`: what the Rust core holds, allocated and not
/// freed.
#[rustler::nif]
fn core_memory() -> usize {
    live_bytes()
}

/// `release_snapshot_cache() -> ok`: this scheduler thread lets go of the
/// table snapshot it keeps for fast decisions (see `routing::agents`).
#[rustler::nif]
fn release_snapshot_cache() -> rustler::Atom {
    erlmcp_flow_core::routing::agents::release_thread_cache();
    crate::atoms::ok()
}
