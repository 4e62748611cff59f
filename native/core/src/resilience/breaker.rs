//! Per-agent circuit breakers.
//!
//! Closed: calls flow, and their outcomes fill a sliding window (the last
//! `window_size` calls, or the calls of the last `window_size` ms). The
//! breaker opens when the window holds at least `min_requests` calls, at
//! least `failure_threshold` of them failed, and the failure rate is at least
//! `failure_rate`. Calls slower than `slow_call_us` count as failures.
//!
//! Open: calls are refused until `open_timeout_us` has passed; the next call
//! asked for then turns the breaker half-open.
//!
//! Half-open: at most `half_open_max` probes at once; `success_threshold`
//! successful probes close it, one failed probe opens it again.
//!
//! The state is one byte in the agent's hot cell, so a decision checks it with
//! one plain load; everything else sits behind a per-agent lock taken only to
//! record an outcome or change state.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::routing::hot::Hot;

/// Breaker settings (the `circuit_breaker` configuration section).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Off: every call is granted and nothing is recorded.
    pub enabled: bool,
    pub failure_threshold: u32,
    pub min_requests: u32,
    pub failure_rate: f64,
    pub open_timeout_us: u64,
    pub half_open_max: u32,
    pub success_threshold: u32,
    /// Calls at least this slow count as failures (`None`: off).
    pub slow_call_us: Option<u64>,
    pub window: WindowKind,
}

/// How the closed state's sliding window is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `ms` milliseconds, in one-second buckets.
    Time { ms: u64 },
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failure_threshold: 5,
            min_requests: 10,
            failure_rate: 0.5,
            open_timeout_us: 30_000_000,
            half_open_max: 3,
            success_threshold: 3,
            slow_call_us: None,
            window: WindowKind::Count(20),
        }
    }
}

/// The three states, as stored in the agent's hot cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    pub fn from_u8(b: u8) -> BreakerState {
        match b {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A state change, reported to whoever caused it (to log and count it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

/// What a granted call holds: a plain call, or one of the half-open probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Call,
    Probe,
}

/// The closed state's sliding window.
#[derive(Debug)]
enum Window {
    /// Outcomes of the last calls, `true` for a failure, as a ring.
    Count {
        ring: Vec<bool>,
        next: usize,
        len: usize,
        failures: u32,
    },
    /// Per one-second bucket: (second, calls, failures).
    Time { buckets: Vec<(u64, u32, u32)> },
}

impl Window {
    fn new(kind: WindowKind) -> Window {
        match kind {
            WindowKind::Count(n) => Window::Count {
                ring: vec![false; n.max(1) as usize],
                next: 0,
                len: 0,
                failures: 0,
            },
            WindowKind::Time { ms } => Window::Time {
                buckets: vec![(u64::MAX, 0, 0); ms.div_ceil(1000).max(1) as usize],
            },
        }
    }

    fn clear(&mut self) {
        match self {
            Window::Count {
                next,
                len,
                failures,
                ..
            } => {
                *next = 0;
                *len = 0;
                *failures = 0;
            }
            Window::Time { buckets } => buckets.fill((u64::MAX, 0, 0)),
        }
    }

    fn push(&mut self, failed: bool, now_us: u64) {
        match self {
            Window::Count {
                ring,
                next,
                len,
                failures,
            } => {
                if *len == ring.len() {
                    if ring[*next] {
                        *failures -= 1;
                    }
                } else {
                    *len += 1;
                }
                ring[*next] = failed;
                *failures += u32::from(failed);
                *next = (*next + 1) % ring.len();
            }
            Window::Time { buckets } => {
                let second = now_us / 1_000_000;
                let span = buckets.len() as u64;
                let b = &mut buckets[(second % span) as usize];
                if b.0 != second {
                    *b = (second, 0, 0);
                }
                b.1 += 1;
                b.2 += u32::from(failed);
            }
        }
    }

    /// (calls, failures) in the window at `now_us`.
    fn totals(&self, now_us: u64) -> (u32, u32) {
        match self {
            Window::Count { len, failures, .. } => (*len as u32, *failures),
            Window::Time { buckets } => {
                let second = now_us / 1_000_000;
                let span = buckets.len() as u64;
                buckets
                    .iter()
                    .filter(|b| b.0 != u64::MAX && b.0 + span > second && b.0 <= second)
                    .fold((0, 0), |(c, f), b| (c + b.1, f + b.2))
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    window: Window,
    half_open_successes: u32,
}

/// One agent's breaker. Its state byte lives in the agent's hot cell, given
/// to every call.
#[derive(Debug)]
pub struct Breaker {
    open_until_us: AtomicU64,
    probes: AtomicU32,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(config: &BreakerConfig) -> Breaker {
        Breaker {
            open_until_us: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                window: Window::new(config.window),
                half_open_successes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call would be granted now, without taking anything: what
    /// decisions filter candidates with.
    #[inline]
    pub fn admits(&self, hot: &Hot, config: &BreakerConfig, now_us: u64) -> bool {
        match BreakerState::from_u8(hot.breaker()) {
            BreakerState::Closed => true,
            BreakerState::Open => now_us >= self.open_until_us.load(Ordering::Acquire),
            BreakerState::HalfOpen => self.probes.load(Ordering::Acquire) < config.half_open_max,
        }
    }

    /// Asks for a call: `Some(permit)` when granted (with the transition to
    /// half-open if this call made it), `None` when refused.
    pub fn acquire(
        &self,
        hot: &Hot,
        config: &BreakerConfig,
        now_us: u64,
    ) -> (Option<Permit>, Option<Transition>) {
        if !config.enabled {
            return (Some(Permit::Call), None);
        }
        match BreakerState::from_u8(hot.breaker()) {
            BreakerState::Closed => (Some(Permit::Call), None),
            BreakerState::Open => {
                if now_us < self.open_until_us.load(Ordering::Acquire) {
                    return (None, None);
                }
                let transition = self.half_open_if_due(hot, now_us);
                (self.take_probe(config), transition)
            }
            BreakerState::HalfOpen => (self.take_probe(config), None),
        }
    }

    fn take_probe(&self, config: &BreakerConfig) -> Option<Permit> {
        self.probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p < config.half_open_max).then_some(p + 1)
            })
            .ok()
            .map(|_| Permit::Probe)
    }

    /// Open and due: turn half-open (under the lock, so only one caller does).
    fn half_open_if_due(&self, hot: &Hot, now_us: u64) -> Option<Transition> {
        let mut inner = self.lock();
        if BreakerState::from_u8(hot.breaker()) == BreakerState::Open
            && now_us >= self.open_until_us.load(Ordering::Acquire)
        {
            inner.half_open_successes = 0;
            self.probes.store(0, Ordering::Release);
            hot.set_breaker(BreakerState::HalfOpen as u8);
            return Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
            });
        }
        None
    }

    /// Records the outcome of a granted call. `failed` is whether the call
    /// failed; `latency_us` makes a success slow (a failure) past the slow
    /// threshold.
    pub fn record(
        &self,
        hot: &Hot,
        config: &BreakerConfig,
        permit: Permit,
        failed: bool,
        latency_us: u64,
        now_us: u64,
    ) -> Option<Transition> {
        if !config.enabled {
            return None;
        }
        let failed = failed || config.slow_call_us.is_some_and(|slow| latency_us >= slow);
        let mut inner = self.lock();
        if permit == Permit::Probe {
            let _ = self
                .probes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
        }
        match BreakerState::from_u8(hot.breaker()) {
            BreakerState::Closed => {
                inner.window.push(failed, now_us);
                let (calls, failures) = inner.window.totals(now_us);
                let trips = calls >= config.min_requests
                    && failures >= config.failure_threshold
                    && f64::from(failures) >= config.failure_rate * f64::from(calls);
                trips.then(|| self.open(hot, &mut inner, config, now_us, BreakerState::Closed))
            }
            BreakerState::HalfOpen if permit == Permit::Probe => {
                if failed {
                    Some(self.open(hot, &mut inner, config, now_us, BreakerState::HalfOpen))
                } else {
                    inner.half_open_successes += 1;
                    (inner.half_open_successes >= config.success_threshold).then(|| {
                        inner.window.clear();
                        inner.half_open_successes = 0;
                        hot.set_breaker(BreakerState::Closed as u8);
                        Transition {
                            from: BreakerState::HalfOpen,
                            to: BreakerState::Closed,
                        }
                    })
                }
            }
            // A call granted before the state changed: it says nothing about
            // the state the breaker is in now.
            _ => None,
        }
    }

    /// Gives back a permit whose call has no outcome (the caller vanished).
    pub fn release(&self, permit: Permit) {
        if permit == Permit::Probe {
            let _ = self
                .probes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
        }
    }

    fn open(
        &self,
        hot: &Hot,
        inner: &mut Inner,
        config: &BreakerConfig,
        now_us: u64,
        from: BreakerState,
    ) -> Transition {
        inner.window.clear();
        inner.half_open_successes = 0;
        self.open_until_us.store(
            now_us.saturating_add(config.open_timeout_us),
            Ordering::Release,
        );
        hot.set_breaker(BreakerState::Open as u8);
        Transition {
            from,
            to: BreakerState::Open,
        }
    }

    /// The state now: an open breaker whose timeout has passed turns
    /// half-open here, as it would for the next call.
    pub fn state(&self, hot: &Hot, now_us: u64) -> (BreakerState, Option<Transition>) {
        let t = if BreakerState::from_u8(hot.breaker()) == BreakerState::Open {
            self.half_open_if_due(hot, now_us)
        } else {
            None
        };
        (BreakerState::from_u8(hot.breaker()), t)
    }

    /// Back to closed with an empty window.
    pub fn reset(&self, hot: &Hot) -> Option<Transition> {
        let mut inner = self.lock();
        inner.window.clear();
        inner.half_open_successes = 0;
        self.probes.store(0, Ordering::Release);
        let from = BreakerState::from_u8(hot.breaker());
        hot.set_breaker(BreakerState::Closed as u8);
        (from != BreakerState::Closed).then_some(Transition {
            from,
            to: BreakerState::Closed,
        })
    }

    /// Probes in flight (half-open).
    pub fn probes(&self) -> u32 {
        self.probes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::hot::HotRef;

    fn setup(config: &BreakerConfig) -> (Breaker, HotRef) {
        (Breaker::new(config), HotRef::detached())
    }

    fn state(b: &Breaker, h: &HotRef, now: u64) -> BreakerState {
        b.state(h.get(), now).0
    }

    #[test]
    fn opens_on_the_thresholds_only() {
        let c = BreakerConfig::default();
        let (b, h) = setup(&c);
        // 9 failures out of 9: under min_requests
        for _ in 0..9 {
            assert_eq!(b.record(h.get(), &c, Permit::Call, true, 1, 0), None);
        }
        let t = b.record(h.get(), &c, Permit::Call, true, 1, 0);
        assert_eq!(
            t,
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        assert_eq!(state(&b, &h, 0), BreakerState::Open);
        assert_eq!(b.acquire(h.get(), &c, 1), (None, None));
    }

    #[test]
    fn a_low_failure_rate_keeps_it_closed() {
        let c = BreakerConfig::default();
        let (b, h) = setup(&c);
        // 6 failures in 20: over the threshold of 5, under 50%
        for i in 0..20 {
            assert_eq!(b.record(h.get(), &c, Permit::Call, i % 10 < 3, 1, 0), None);
        }
        assert_eq!(state(&b, &h, 0), BreakerState::Closed);
    }

    #[test]
    fn half_open_admits_limited_probes_then_closes() {
        let c = BreakerConfig::default();
        let (b, h) = setup(&c);
        for _ in 0..10 {
            b.record(h.get(), &c, Permit::Call, true, 1, 0);
        }
        let due = c.open_timeout_us;
        assert!(!b.admits(h.get(), &c, due - 1));
        assert!(b.admits(h.get(), &c, due));
        let (p, t) = b.acquire(h.get(), &c, due);
        assert_eq!(p, Some(Permit::Probe));
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        assert_eq!(b.acquire(h.get(), &c, due).0, Some(Permit::Probe));
        assert_eq!(b.acquire(h.get(), &c, due).0, Some(Permit::Probe));
        assert_eq!(b.acquire(h.get(), &c, due), (None, None));
        assert!(!b.admits(h.get(), &c, due));
        for i in 0..3 {
            let t = b.record(h.get(), &c, Permit::Probe, false, 1, due);
            assert_eq!(t.is_some(), i == 2);
        }
        assert_eq!(state(&b, &h, due), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let c = BreakerConfig::default();
        let (b, h) = setup(&c);
        for _ in 0..10 {
            b.record(h.get(), &c, Permit::Call, true, 1, 0);
        }
        let due = c.open_timeout_us;
        assert_eq!(state(&b, &h, due), BreakerState::HalfOpen);
        let p = b.acquire(h.get(), &c, due).0.unwrap();
        assert_eq!(
            b.record(h.get(), &c, p, true, 1, due).unwrap().to,
            BreakerState::Open
        );
        assert!(!b.admits(h.get(), &c, due + 1));
        assert!(b.admits(h.get(), &c, 2 * due));
    }

    #[test]
    fn slow_calls_count_as_failures() {
        let c = BreakerConfig {
            slow_call_us: Some(1000),
            ..BreakerConfig::default()
        };
        let (b, h) = setup(&c);
        for _ in 0..10 {
            b.record(h.get(), &c, Permit::Call, false, 1000, 0);
        }
        assert_eq!(state(&b, &h, 0), BreakerState::Open);
    }

    #[test]
    fn time_windows_forget_old_seconds() {
        let c = BreakerConfig {
            window: WindowKind::Time { ms: 10_000 },
            ..BreakerConfig::default()
        };
        let (b, h) = setup(&c);
        for _ in 0..9 {
            b.record(h.get(), &c, Permit::Call, true, 1, 0);
        }
        // ten seconds later the nine old failures are gone
        assert_eq!(
            b.record(h.get(), &c, Permit::Call, true, 1, 10_000_000),
            None
        );
        assert_eq!(state(&b, &h, 10_000_000), BreakerState::Closed);
        for _ in 0..9 {
            b.record(h.get(), &c, Permit::Call, true, 1, 10_500_000);
        }
        assert_eq!(state(&b, &h, 10_500_000), BreakerState::Open);
    }

    #[test]
    fn a_disabled_breaker_grants_everything() {
        let c = BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        };
        let (b, h) = setup(&c);
        for _ in 0..50 {
            assert_eq!(b.record(h.get(), &c, Permit::Call, true, 1, 0), None);
        }
        assert_eq!(b.acquire(h.get(), &c, 0), (Some(Permit::Call), None));
        assert_eq!(state(&b, &h, 0), BreakerState::Closed);
    }

    #[test]
    fn reset_closes() {
        let c = BreakerConfig::default();
        let (b, h) = setup(&c);
        for _ in 0..10 {
            b.record(h.get(), &c, Permit::Call, true, 1, 0);
        }
        assert_eq!(b.reset(h.get()).unwrap().to, BreakerState::Closed);
        assert_eq!(state(&b, &h, 0), BreakerState::Closed);
        assert_eq!(b.reset(h.get()), None);
    }
}
