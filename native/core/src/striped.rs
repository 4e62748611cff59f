//! A counter every scheduler thread adds to on every task, split into
//! stripes of a cache line each: a thread adds to its own stripe, so two
//! threads counting at once never pull one line back and forth between
//! their cores (one such line cost a decision and its settling more than
//! the rest of their work with two schedulers busy); a read sums the
//! stripes, exact once the adds it should see are done.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// Stripes per counter: more than the threads that usually count at once.
const STRIPES: usize = 16;

#[repr(align(64))]
#[derive(Debug, Default)]
struct Stripe(AtomicI64);

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // const, no destructor: usable at any point of a thread's life
    static MY_STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's stripe, the same for every counter.
#[inline]
fn my_stripe() -> usize {
    MY_STRIPE
        .try_with(|s| {
            let i = s.get();
            if i != usize::MAX {
                return i;
            }
            let i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
            i
        })
        .unwrap_or(0)
}

/// A signed count, striped.
#[derive(Debug, Default)]
pub struct StripedCounter {
    stripes: [Stripe; STRIPES],
}

impl StripedCounter {
    pub fn new() -> StripedCounter {
        StripedCounter::default()
    }

    /// Adds `n` (negative: takes away); returns this thread's stripe after
    /// the add (a count of this thread's own adds when they are all 1).
    #[inline]
    pub fn add(&self, n: i64) -> i64 {
        self.stripes[my_stripe()].0.fetch_add(n, Ordering::AcqRel) + n
    }

    /// The sum of the stripes.
    pub fn sum(&self) -> i64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Acquire))
            .sum()
    }

    /// Sets the sum to `n` (with no add running at once: a reset or a load).
    pub fn set(&self, n: i64) {
        for s in &self.stripes[1..] {
            s.0.store(0, Ordering::Release);
        }
        self.stripes[0].0.store(n, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn adds_from_many_threads_sum_exactly() {
        let c = Arc::new(StripedCounter::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.add(1);
                        if t % 2 == 0 {
                            c.add(-1);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.sum(), 40_000);
        c.set(7);
        assert_eq!(c.sum(), 7);
    }

    #[test]
    fn a_stripe_is_a_cache_line() {
        assert_eq!(std::mem::size_of::<Stripe>(), 64);
        assert_eq!(std::mem::align_of::<Stripe>(), 64);
    }
}
