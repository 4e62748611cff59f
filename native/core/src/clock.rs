//! The time seam: every duration the core measures comes from a [`Clock`].
//!
//! Production uses the monotonic system clock; tests and the simulator use a
//! manual clock they move forward themselves, so nothing in a test sleeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A monotonic microsecond clock, either real or manual.
#[derive(Debug)]
pub struct Clock {
    origin: Instant,
    manual: Option<AtomicU64>,
}

impl Clock {
    /// The monotonic system clock, counting from the moment it was made.
    pub fn system() -> Self {
        Clock {
            origin: Instant::now(),
            manual: None,
        }
    }

    /// A clock that stands still at `start_us` until [`Clock::advance`] moves it.
    pub fn manual(start_us: u64) -> Self {
        Clock {
            origin: Instant::now(),
            manual: Some(AtomicU64::new(start_us)),
        }
    }

    /// Whether this clock is driven by hand.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Microseconds since the clock's origin.
    #[inline]
    pub fn now_us(&self) -> u64 {
        match &self.manual {
            Some(t) => t.load(Ordering::Acquire),
            None => self.origin.elapsed().as_micros() as u64,
        }
    }

    /// Moves a manual clock forward by `us` (it stops at `u64::MAX` rather
    /// than wrap to 0); returns the new time, or `None` for the system clock,
    /// which cannot be moved.
    pub fn advance(&self, us: u64) -> Option<u64> {
        self.manual.as_ref().map(|t| {
            let before = t
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                    Some(now.saturating_add(us))
                })
                .unwrap_or_else(|now| now);
            before.saturating_add(us)
        })
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let c = Clock::manual(10);
        assert_eq!(c.now_us(), 10);
        assert_eq!(c.advance(5), Some(15));
        assert_eq!(c.now_us(), 15);
    }

    #[test]
    fn a_manual_clock_saturates_instead_of_wrapping() {
        let c = Clock::manual(u64::MAX - 5);
        assert_eq!(c.advance(10), Some(u64::MAX));
        assert_eq!(c.now_us(), u64::MAX);
        assert_eq!(c.advance(1), Some(u64::MAX));
    }

    #[test]
    fn system_clock_is_monotonic_and_cannot_be_advanced() {
        let c = Clock::system();
        let a = c.now_us();
        let b = c.now_us();
        assert!(b >= a);
        assert_eq!(c.advance(1), None);
    }
}
