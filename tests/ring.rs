//! Consistent hashing: minimal disruption and balance.

use erlmcp_flow_core::routing::ring::{Ring, key_hash};
use proptest::prelude::*;

fn ids(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("agent-{i}").into_bytes()).collect()
}

fn owners(ring: &Ring, ids: &[Vec<u8>], keys: u64) -> Vec<Vec<u8>> {
    (0..keys)
        .map(|k| ids[ring.lookup(key_hash(&k.to_le_bytes())).unwrap() as usize].clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Adding one agent to N moves keys only onto the new agent, about 1/(N+1) of them.
    #[test]
    fn adding_an_agent_moves_keys_only_to_it(n in 2usize..40) {
        let all = ids(n + 1);
        let before = Ring::build(all[..n].iter().map(|v| v.as_slice()), 150);
        let after = before.with_agent(&all[n], n as u32);
        let keys = 20_000;
        let (a, b) = (owners(&before, &all, keys), owners(&after, &all, keys));
        let mut moved = 0;
        for (x, y) in a.iter().zip(&b) {
            if x != y {
                prop_assert_eq!(y, &all[n]);
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        let expected = 1.0 / (n + 1) as f64;
        prop_assert!((share - expected).abs() < expected * 0.5 + 0.01, "{} vs {}", share, expected);
    }

    /// Removing one agent of N moves only the keys it owned.
    #[test]
    fn removing_an_agent_moves_only_its_keys(n in 3usize..40, gone in 0usize..3) {
        let all = ids(n);
        let gone = gone % n;
        let before = Ring::build(all.iter().map(|v| v.as_slice()), 150);
        let after = before.without_slot(gone as u32);
        let rest: Vec<Vec<u8>> = all.iter().enumerate().filter(|&(i, _)| i != gone).map(|(_, v)| v.clone()).collect();
        let keys = 20_000;
        let a = owners(&before, &all, keys);
        let b = owners(&after, &rest, keys);
        let mut moved = 0;
        for (x, y) in a.iter().zip(&b) {
            if x != y {
                prop_assert_eq!(x, &all[gone]);
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        let expected = 1.0 / n as f64;
        prop_assert!((share - expected).abs() < expected * 0.5 + 0.01, "{} vs {}", share, expected);
    }
}

/// max/mean keys per agent over 1M keys at 10, 60 and 1000 agents, 150 points each.
#[test]
fn balance_over_a_million_keys() {
    for (n, bound) in [(10usize, 1.3), (60, 1.4), (1000, 1.6)] {
        let all = ids(n);
        let ring = Ring::build(all.iter().map(|v| v.as_slice()), 150);
        let mut counts = vec![0u32; n];
        for k in 0..1_000_000u64 {
            counts[ring.lookup(key_hash(&k.to_le_bytes())).unwrap() as usize] += 1;
        }
        let max = *counts.iter().max().unwrap() as f64;
        let mean = 1_000_000.0 / n as f64;
        println!("{n} agents: max/mean {:.3}", max / mean);
        assert!(max / mean < bound, "{n} agents: {}", max / mean);
    }
}
