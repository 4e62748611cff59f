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

use crate::hot::Hot;

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

/// What a granted call holds: a plain call, or one of the probes of one
/// half-open period.
///
/// A probe belongs to the period that granted it: once the breaker has left
/// that period (closed, opened again, reset), the probe's outcome and its
/// release change nothing, so stale probes can neither lower a later
/// period's probe count nor count toward its successes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Call,
    Probe { period: u32, id: u32 },
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
                ring: vec![false; n.clamp(1, MAX_WINDOW_CALLS) as usize],
                next: 0,
                len: 0,
                failures: 0,
            },
            WindowKind::Time { ms } => Window::Time {
                buckets: vec![(u64::MAX, 0, 0); ms.clamp(1, MAX_WINDOW_MS).div_ceil(1000) as usize],
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
                b.1 = b.1.saturating_add(1);
                b.2 = b.2.saturating_add(u32::from(failed));
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
                    .filter(|b| {
                        b.0 != u64::MAX && b.0.saturating_add(span) > second && b.0 <= second
                    })
                    .fold((0u32, 0u32), |(c, f), b| {
                        (c.saturating_add(b.1), f.saturating_add(b.2))
                    })
            }
        }
    }
}

/// Most probes at once in a half-open period.
pub const MAX_HALF_OPEN: u32 = 10_000;

/// The longest count window, in calls.
pub const MAX_WINDOW_CALLS: u32 = 10_000;
/// The longest time window, in milliseconds (ten minutes of one-second buckets).
pub const MAX_WINDOW_MS: u64 = 600_000;

#[derive(Debug)]
struct Inner {
    window: Window,
    half_open_successes: u32,
    /// The current half-open period: every entry into half-open (and every
    /// reset) starts a new one.
    period: u32,
    next_probe: u32,
    /// The probes of the current period still out: (id, granted at).
    out: Vec<(u32, u64)>,
}

/// One agent's breaker. Its state byte lives in the agent's hot cell, given
/// to every call.
#[derive(Debug)]
pub struct Breaker {
    open_until_us: AtomicU64,
    /// Probes of the current half-open period still out (a copy of
    /// `Inner::out`'s length that decisions read without the lock).
    probes: AtomicU32,
    /// When the oldest probe still out stops being waited for (`u64::MAX`:
    /// none out); past it that probe counts as failed.
    probe_deadline_us: AtomicU64,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// Bytes this breaker holds on the heap (its window and probes).
    pub fn heap_bytes(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let window = match &inner.window {
            Window::Count { ring, .. } => ring.capacity(),
            Window::Time { buckets } => buckets.capacity() * std::mem::size_of::<(u64, u32, u32)>(),
        };
        window + inner.out.capacity() * std::mem::size_of::<(u32, u64)>()
    }

    pub fn new(config: &BreakerConfig) -> Breaker {
        Breaker {
            open_until_us: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            probe_deadline_us: AtomicU64::new(u64::MAX),
            inner: Mutex::new(Inner {
                window: Window::new(config.window),
                half_open_successes: 0,
                period: 0,
                next_probe: 0,
                out: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call would be granted now, without taking anything: what
    /// decisions filter candidates with. A half-open breaker whose oldest
    /// probe is overdue admits, so that the next decision settles that probe
    /// as failed (see [`Breaker::acquire`]) instead of leaving it wedged.
    #[inline]
    pub fn admits(&self, hot: &Hot, config: &BreakerConfig, now_us: u64) -> bool {
        match BreakerState::from_u8(hot.breaker()) {
            BreakerState::Closed => true,
            BreakerState::Open => now_us >= self.open_until_us.load(Ordering::Acquire),
            BreakerState::HalfOpen => {
                self.probes.load(Ordering::Acquire) < config.half_open_max
                    || now_us >= self.probe_deadline_us.load(Ordering::Acquire)
            }
        }
    }

    /// Asks for a call: `Some(permit)` when granted (with the transition to
    /// half-open if this call made it), `None` when refused (with the
    /// transition to open if an overdue probe was found).
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
                let mut inner = self.lock();
                let transition = self.half_open_if_due(hot, &mut inner, now_us);
                let (permit, expired) = self.take_probe(hot, &mut inner, config, now_us);
                (permit, expired.or(transition))
            }
            BreakerState::HalfOpen => {
                let mut inner = self.lock();
                self.take_probe(hot, &mut inner, config, now_us)
            }
        }
    }

    /// One probe of the current period, under the lock: the state is read
    /// again there (a failure may have opened the breaker since the caller
    /// looked), and an overdue probe is settled as failed first.
    fn take_probe(
        &self,
        hot: &Hot,
        inner: &mut Inner,
        config: &BreakerConfig,
        now_us: u64,
    ) -> (Option<Permit>, Option<Transition>) {
        if let Some(t) = self.expire_probes(hot, inner, config, now_us) {
            return (None, Some(t));
        }
        if BreakerState::from_u8(hot.breaker()) != BreakerState::HalfOpen
            || inner.out.len() >= config.half_open_max as usize
        {
            return (None, None);
        }
        let id = inner.next_probe;
        inner.next_probe = inner.next_probe.wrapping_add(1);
        inner.out.push((id, now_us));
        self.publish_probes(inner, config);
        (
            Some(Permit::Probe {
                period: inner.period,
                id,
            }),
            None,
        )
    }

    /// Half-open with a probe out for longer than the open timeout: that
    /// probe failed. The breaker opens again, for `open_timeout_us` from now.
    fn expire_probes(
        &self,
        hot: &Hot,
        inner: &mut Inner,
        config: &BreakerConfig,
        now_us: u64,
    ) -> Option<Transition> {
        let overdue = BreakerState::from_u8(hot.breaker()) == BreakerState::HalfOpen
            && inner
                .out
                .iter()
                .any(|&(_, at)| now_us >= at.saturating_add(config.open_timeout_us));
        overdue.then(|| self.open(hot, inner, config, now_us, BreakerState::HalfOpen))
    }

    /// Copies the probes out and the oldest one's deadline where decisions
    /// read them without the lock.
    fn publish_probes(&self, inner: &Inner, config: &BreakerConfig) {
        self.probes.store(inner.out.len() as u32, Ordering::Release);
        let deadline = inner
            .out
            .iter()
            .map(|&(_, at)| at.saturating_add(config.open_timeout_us))
            .min()
            .unwrap_or(u64::MAX);
        self.probe_deadline_us.store(deadline, Ordering::Release);
    }

    /// Open and due: turn half-open (under the lock, so only one caller
    /// does), starting a new probe period.
    fn half_open_if_due(&self, hot: &Hot, inner: &mut Inner, now_us: u64) -> Option<Transition> {
        if BreakerState::from_u8(hot.breaker()) == BreakerState::Open
            && now_us >= self.open_until_us.load(Ordering::Acquire)
        {
            self.new_period(inner);
            hot.set_breaker(BreakerState::HalfOpen as u8);
            return Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
            });
        }
        None
    }

    /// Forgets the probes out and their successes: they belong to a period
    /// that is over.
    fn new_period(&self, inner: &mut Inner) {
        inner.period = inner.period.wrapping_add(1);
        inner.half_open_successes = 0;
        inner.out.clear();
        self.probes.store(0, Ordering::Release);
        self.probe_deadline_us.store(u64::MAX, Ordering::Release);
    }

    /// Takes a probe of the current period out of the list; false for a
    /// probe of another period or one already settled.
    fn settle_probe(
        &self,
        inner: &mut Inner,
        config: &BreakerConfig,
        period: u32,
        id: u32,
    ) -> bool {
        if period != inner.period {
            return false;
        }
        match inner.out.iter().position(|&(p, _)| p == id) {
            Some(i) => {
                inner.out.swap_remove(i);
                self.publish_probes(inner, config);
                true
            }
            None => false,
        }
    }

    /// Records the outcome of a granted call. `failed` is whether the call
    /// failed; `latency_us` makes a success slow (a failure) past the slow
    /// threshold. A plain call counts only while the breaker is closed; a
    /// probe only within its own half-open period.
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
        match (BreakerState::from_u8(hot.breaker()), permit) {
            (BreakerState::Closed, Permit::Call) => {
                inner.window.push(failed, now_us);
                let (calls, failures) = inner.window.totals(now_us);
                let trips = calls >= config.min_requests
                    && failures >= config.failure_threshold
                    && f64::from(failures) >= config.failure_rate * f64::from(calls);
                trips.then(|| self.open(hot, &mut inner, config, now_us, BreakerState::Closed))
            }
            (BreakerState::HalfOpen, Permit::Probe { period, id }) => {
                if !self.settle_probe(&mut inner, config, period, id) {
                    return None;
                }
                if failed {
                    Some(self.open(hot, &mut inner, config, now_us, BreakerState::HalfOpen))
                } else {
                    inner.half_open_successes += 1;
                    (inner.half_open_successes >= config.success_threshold).then(|| {
                        inner.window.clear();
                        self.new_period(&mut inner);
                        hot.set_breaker(BreakerState::Closed as u8);
                        Transition {
                            from: BreakerState::HalfOpen,
                            to: BreakerState::Closed,
                        }
                    })
                }
            }
            // A call granted in another state or period: it says nothing
            // about the state the breaker is in now.
            _ => None,
        }
    }

    /// Gives back a permit whose call has no outcome (the caller vanished):
    /// a probe of the current period frees its slot.
    pub fn release(&self, config: &BreakerConfig, permit: Permit) {
        if let Permit::Probe { period, id } = permit {
            let mut inner = self.lock();
            self.settle_probe(&mut inner, config, period, id);
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
        self.new_period(inner);
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
    /// half-open here, and a half-open one with an overdue probe opens
    /// again, as they would for the next call. One transition at most.
    pub fn state(
        &self,
        hot: &Hot,
        config: &BreakerConfig,
        now_us: u64,
    ) -> (BreakerState, Option<Transition>) {
        let t = match BreakerState::from_u8(hot.breaker()) {
            BreakerState::Open => self.half_open_if_due(hot, &mut self.lock(), now_us),
            BreakerState::HalfOpen => self.expire_probes(hot, &mut self.lock(), config, now_us),
            BreakerState::Closed => None,
        };
        (BreakerState::from_u8(hot.breaker()), t)
    }

    /// Back to closed with an empty window; probes out become stale.
    pub fn reset(&self, hot: &Hot) -> Option<Transition> {
        let mut inner = self.lock();
        inner.window.clear();
        self.new_period(&mut inner);
        let from = BreakerState::from_u8(hot.breaker());
        hot.set_breaker(BreakerState::Closed as u8);
        (from != BreakerState::Closed).then_some(Transition {
            from,
            to: BreakerState::Closed,
        })
    }

    /// Probes of the current half-open period still out.
    pub fn probes(&self) -> u32 {
        self.probes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hot::HotRef;

    fn setup(config: &BreakerConfig) -> (Breaker, HotRef) {
        (Breaker::new(config), HotRef::detached())
    }

    fn state(b: &Breaker, h: &HotRef, now: u64) -> BreakerState {
        b.state(h.get(), &BreakerConfig::default(), now).0
    }

    fn is_probe(p: Option<Permit>) -> bool {
        matches!(p, Some(Permit::Probe { .. }))
    }

    /// Opens a default breaker with ten failures at time 0; returns when it
    /// is due for half-open.
    fn opened(b: &Breaker, h: &HotRef, c: &BreakerConfig) -> u64 {
        for _ in 0..10 {
            b.record(h.get(), c, Permit::Call, true, 1, 0);
        }
        assert_eq!(state(b, h, 0), BreakerState::Open);
        c.open_timeout_us
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
        assert!(is_probe(p));
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        let mut probes = vec![p.unwrap()];
        probes.extend(b.acquire(h.get(), &c, due).0);
        probes.extend(b.acquire(h.get(), &c, due).0);
        assert_eq!(probes.len(), 3);
        assert_eq!(b.acquire(h.get(), &c, due), (None, None));
        assert!(!b.admits(h.get(), &c, due));
        for (i, p) in probes.into_iter().enumerate() {
            let t = b.record(h.get(), &c, p, false, 1, due);
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

    /// The report: max 3 probes; 3 out, 1 fails; past the timeout 3 new
    /// ones; the 2 old ones succeed; 2 more asked for. Old probes belong to
    /// the period that granted them, so the new period stays at 3.
    #[test]
    fn stale_probes_neither_free_slots_nor_count() {
        let c = BreakerConfig::default();
        let (b, h) = setup(&c);
        let due = opened(&b, &h, &c);
        let old: Vec<Permit> = (0..3)
            .filter_map(|_| b.acquire(h.get(), &c, due).0)
            .collect();
        assert_eq!(old.len(), 3);
        assert_eq!(
            b.record(h.get(), &c, old[0], true, 1, due).unwrap().to,
            BreakerState::Open
        );
        let due2 = 2 * due;
        let new: Vec<Permit> = (0..3)
            .filter_map(|_| b.acquire(h.get(), &c, due2).0)
            .collect();
        assert_eq!(new.len(), 3);
        for p in &old[1..] {
            assert_eq!(b.record(h.get(), &c, *p, false, 1, due2), None);
        }
        assert_eq!(b.probes(), 3);
        assert_eq!(b.acquire(h.get(), &c, due2), (None, None));
        assert_eq!(b.acquire(h.get(), &c, due2), (None, None));
        // the old successes did not count: three new ones are still needed
        for (i, p) in new.into_iter().enumerate() {
            let t = b.record(h.get(), &c, p, false, 1, due2);
            assert_eq!(t.is_some(), i == 2);
        }
        assert_eq!(state(&b, &h, due2), BreakerState::Closed);
        // a stale probe released late changes nothing either
        b.release(&c, old[2]);
        assert_eq!(b.probes(), 0);
    }

    /// Probes taken and never recorded (their holders died without a word)
    /// count as failed once the open timeout has passed: the breaker opens
    /// again instead of refusing calls forever.
    #[test]
    fn overdue_probes_count_as_failed() {
        let c = BreakerConfig::default();
        let (b, h) = setup(&c);
        let due = opened(&b, &h, &c);
        let leaked: Vec<Permit> = (0..3)
            .filter_map(|_| b.acquire(h.get(), &c, due).0)
            .collect();
        assert_eq!(leaked.len(), 3);
        assert!(!b.admits(h.get(), &c, due + c.open_timeout_us - 1));
        // an hour later: not wedged
        let later = due + 3_600_000_000;
        assert!(b.admits(h.get(), &c, later));
        let (p, t) = b.acquire(h.get(), &c, later);
        assert_eq!(
            (p, t.map(|t| (t.from, t.to))),
            (None, Some((BreakerState::HalfOpen, BreakerState::Open)))
        );
        assert_eq!(b.probes(), 0);
        // open for one more timeout, then probes again
        assert!(!b.admits(h.get(), &c, later + 1));
        let again = later + c.open_timeout_us;
        assert!(is_probe(b.acquire(h.get(), &c, again).0));
        // the leaked ones are stale now
        for p in leaked {
            assert_eq!(b.record(h.get(), &c, p, false, 1, again), None);
        }
        assert_eq!(b.probes(), 1);
    }

    /// `state` notices an overdue probe too.
    #[test]
    fn state_opens_a_breaker_with_an_overdue_probe() {
        let c = BreakerConfig::default();
        let (b, h) = setup(&c);
        let due = opened(&b, &h, &c);
        assert!(is_probe(b.acquire(h.get(), &c, due).0));
        assert_eq!(
            state(&b, &h, due + c.open_timeout_us - 1),
            BreakerState::HalfOpen
        );
        assert_eq!(state(&b, &h, due + c.open_timeout_us), BreakerState::Open);
        assert_eq!(
            state(&b, &h, due + 2 * c.open_timeout_us),
            BreakerState::HalfOpen
        );
    }

    /// A call granted while closed and recorded once the breaker is
    /// half-open is not a probe: it takes no probe's slot and decides nothing.
    #[test]
    fn a_closed_call_recorded_in_half_open_takes_no_probe_slot() {
        let c = BreakerConfig::default();
        let (b, h) = setup(&c);
        let early = b.acquire(h.get(), &c, 0).0.unwrap();
        assert_eq!(early, Permit::Call);
        let due = opened(&b, &h, &c);
        let probes: Vec<Permit> = (0..3)
            .filter_map(|_| b.acquire(h.get(), &c, due).0)
            .collect();
        assert_eq!(probes.len(), 3);
        assert_eq!(b.record(h.get(), &c, early, true, 1, due), None);
        assert_eq!(state(&b, &h, due), BreakerState::HalfOpen);
        assert_eq!(b.probes(), 3);
    }

    /// Many threads asking and recording at once: never more probes out than
    /// the limit, and every probe settled leaves the count consistent.
    #[test]
    fn concurrent_probes_stay_within_the_limit() {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let c = BreakerConfig {
            min_requests: 2,
            failure_threshold: 1,
            open_timeout_us: 10,
            success_threshold: 2,
            ..BreakerConfig::default()
        };
        let (b, h) = setup(&c);
        let clock = AtomicU64::new(0);
        let over = AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (b, h, c, clock, over) = (&b, &h, &c, &clock, &over);
                s.spawn(move || {
                    for i in 0..20_000u64 {
                        let now = clock.fetch_add(1, Ordering::Relaxed);
                        if let (Some(p), _) = b.acquire(h.get(), c, now) {
                            if b.probes() > c.half_open_max {
                                over.store(true, Ordering::Relaxed);
                            }
                            let failed = (i * 7 + t) % 5 == 0;
                            b.record(h.get(), c, p, failed, 1, now);
                        }
                    }
                });
            }
        });
        assert!(!over.load(Ordering::Relaxed));
        assert!(b.probes() <= c.half_open_max);
    }
}
