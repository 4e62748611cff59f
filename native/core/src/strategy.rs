//! Load-balancing strategies: given the candidates of one decision, pick one.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The strategies a decision can use. More arrive with their issues; each is
/// named in configuration and requests by [`Strategy::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Cycles through the candidates in slot order.
    RoundRobin,
}

impl Strategy {
    pub const ALL: &'static [Strategy] = &[Strategy::RoundRobin];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
        }
    }

    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.iter().copied().find(|s| s.name() == name)
    }
}

/// Per-router state the strategies share across decisions.
#[derive(Debug, Default)]
pub(crate) struct StrategyState {
    round_robin: AtomicUsize,
}

impl StrategyState {
    /// Index into `candidates` (never empty) of the chosen one.
    #[inline]
    pub(crate) fn pick(&self, strategy: Strategy, candidates: &[u32]) -> usize {
        debug_assert!(!candidates.is_empty());
        match strategy {
            // One cursor for the whole router: over a fixed candidate set it
            // visits every candidate once per cycle, so loads differ by at most one.
            Strategy::RoundRobin => {
                self.round_robin.fetch_add(1, Ordering::Relaxed) % candidates.len()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::from_name(s.name()), Some(*s));
        }
        assert_eq!(Strategy::from_name("nope"), None);
    }

    #[test]
    fn round_robin_cycles() {
        let st = StrategyState::default();
        let c = [7, 8, 9];
        let picks: Vec<usize> = (0..6).map(|_| st.pick(Strategy::RoundRobin, &c)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }
}
