//! Load-balancer settings shared by the config and the eBPF backend: how backends are chosen
//! (random, or Maglev consistent hashing) and how big the BPF maps are. Pure.

use serde::{Deserialize, Serialize};

/// How a new flow's backend is chosen (Cilium's `bpf-lb-algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbAlgorithm {
    /// Uniformly at random per new flow.
    #[default]
    Random,
    /// Maglev consistent hashing of the 5-tuple: every node picks the same backend for a flow,
    /// and a backend change moves few flows.
    Maglev,
}

/// Maglev table sizes accepted (primes, as Cilium's `bpf-lb-maglev-table-size`).
pub const MAGLEV_SIZES: [u32; 10] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071];

/// Entries of the eBPF backend's maps. Defaults follow Cilium's where a counterpart exists
/// (lb-map-max 65536, ct-global-tcp-max and nat-global-max 524288).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapSizes {
    /// Service frontends (`sluice_svc`).
    pub services: u32,
    /// Backend slots, one per (frontend, endpoint) (`sluice_backends`).
    pub backends: u32,
    /// Connections tracked, each direction (`sluice_ct`, `sluice_rnat`).
    pub conntrack: u32,
    /// SNATed flows and socket-LB reverse entries (`sluice_snat`, `sluice_sock_rnat`).
    pub nat: u32,
    /// ClientIP affinity entries (`sluice_affinity`).
    pub affinity: u32,
    /// loadBalancerSourceRanges prefixes (`sluice_src_ranges`).
    pub source_ranges: u32,
    /// Maglev slots: frontends x table size (`sluice_maglev`), used with `lb_algorithm: maglev`.
    pub maglev: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            services: 65536,
            backends: 655_360,
            conntrack: 524_288,
            nat: 524_288,
            affinity: 65536,
            source_ranges: 16384,
            maglev: 1 << 20,
        }
    }
}

impl MapSizes {
    /// (key, value) pairs, for validation messages.
    pub fn named(&self) -> [(&'static str, u32); 7] {
        [
            ("services", self.services),
            ("backends", self.backends),
            ("conntrack", self.conntrack),
            ("nat", self.nat),
            ("affinity", self.affinity),
            ("source_ranges", self.source_ranges),
            ("maglev", self.maglev),
        ]
    }
}

/// FNV-1a, 64 bit, with a seed mixed in first: stable across nodes, builds and architectures
/// (every node must compute the same Maglev table).
fn fnv(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The Maglev lookup table (Eisenbud et al., NSDI 2016): `m` entries, each the index into
/// `backends` of the backend serving that hash bucket. Backends are named (e.g. "ip:port") so
/// that every node computes the same table from the same set, whatever order it lists them in.
/// Each backend gets floor(m/n) or ceil(m/n) entries. Empty without backends.
pub fn maglev_table(backends: &[String], m: u32) -> Vec<u32> {
    let n = backends.len();
    if n == 0 || m == 0 {
        return Vec::new();
    }
    // Order-independent: sort the names, then map back to the caller's indexes.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| backends[*a].cmp(&backends[*b]));
    let m64 = u64::from(m);
    let perm: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let name = backends[i].as_bytes();
            let offset = fnv(0, name) % m64;
            let skip = fnv(0x5bd1_e995, name) % (m64 - 1).max(1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (j, &(offset, skip)) in perm.iter().enumerate() {
            let mut c = (offset + next[j] * skip) % m64;
            while table[c as usize] != u32::MAX {
                next[j] += 1;
                c = (offset + next[j] * skip) % m64;
            }
            table[c as usize] = order[j] as u32;
            next[j] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 2)).collect()
    }

    #[test]
    fn every_backend_gets_an_even_share() {
        for n in [1, 2, 3, 10, 100] {
            let t = maglev_table(&names(n), 1021);
            assert_eq!(t.len(), 1021);
            let mut counts = vec![0u32; n];
            for i in &t {
                counts[*i as usize] += 1;
            }
            let (lo, hi) = (1021 / n as u32, 1021_u32.div_ceil(n as u32));
            assert!(counts.iter().all(|c| (lo..=hi).contains(c)), "n={n}: {counts:?}");
        }
        assert!(maglev_table(&[], 251).is_empty());
    }

    #[test]
    fn same_set_same_table_whatever_the_order() {
        let a = names(10);
        let mut b = a.clone();
        b.reverse();
        let ta: Vec<&String> = maglev_table(&a, 251).iter().map(|i| &a[*i as usize]).collect();
        let tb: Vec<&String> = maglev_table(&b, 251).iter().map(|i| &b[*i as usize]).collect();
        assert_eq!(ta, tb);
    }

    #[test]
    fn removing_a_backend_moves_few_buckets() {
        let all = names(10);
        let fewer: Vec<String> = all.iter().filter(|n| **n != all[3]).cloned().collect();
        let before: Vec<&String> = maglev_table(&all, 16381).iter().map(|i| &all[*i as usize]).collect();
        let after: Vec<&String> = maglev_table(&fewer, 16381).iter().map(|i| &fewer[*i as usize]).collect();
        // Buckets of the removed backend must move (1/10); Maglev moves only a little more.
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!(moved < 16381 * 2 / 10, "moved {moved} of 16381");
    }
}
