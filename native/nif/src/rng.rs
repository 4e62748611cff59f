//! The pseudo-random number generator of each scheduler thread: span and
//! trace ids, and the strategies' random draws.

use std::cell::RefCell;

use rand::SeedableRng;
use rand::rngs::{SmallRng, SysRng};

thread_local! {
    /// One fast PRNG per scheduler thread, seeded from the OS; falls back to a
    /// seed from the clock and the thread's address if the OS refuses.
    static RNG: RefCell<SmallRng> = RefCell::new(
        SmallRng::try_from_rng(&mut SysRng).unwrap_or_else(|_| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let local = 0u8;
            SmallRng::seed_from_u64(now ^ (&local as *const u8 as u64))
        })
    );
}

/// Runs `f` with this thread's PRNG.
pub fn with_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    RNG.with(|cell| f(&mut cell.borrow_mut()))
}
