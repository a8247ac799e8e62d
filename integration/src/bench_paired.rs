//! sluice's and the peer's ClusterIP connection rates at the largest N, measured in alternation:
//! each round programs one ruleset alone (the other flushed), exactly as deployed, lets the
//! machine settle and measures, then does the same for the other. Rounds go in ABBA order, so
//! what comes first or follows the peer's long restore is balanced, and the pairs are seconds
//! apart instead of the minutes between the per-backend records, whose drift (±10% here) is
//! as large as the effect being measured.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sluice_core::Feature;
use sluice_iptables::incremental::Renderer;
use sluice_iptables::services::IMPLEMENTED;
use sluice_iptables::sync::RuleSyncer;
use sluice_iptables::{Iptables, Variant};

use crate::Lab;
use crate::bench_services::{Options, PEER_JUMPS, flush_all, load, peer_input, restore, services, sluice_rules, vip};

/// Rounds of one (sluice, peer) pair each.
pub const ROUNDS: usize = 8;

/// After programming, before measuring: the kernel frees the previous table and the restore's
/// memory; the load should not share the CPUs with that.
const SETTLE: Duration = Duration::from_secs(2);

/// `(sluice, peer)` ClusterIP conn/s per round at `n` Services; empty when the peer cannot be
/// programmed within the restore timeout (nft at 10k).
pub fn paired(lab: &Lab, o: &Options, variant: Variant, n: usize, backend: Ipv4Addr) -> anyhow::Result<Vec<[f64; 2]>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let owned: BTreeSet<Feature> = IMPLEMENTED.iter().copied().collect();
    let bin = format!("iptables-{}-restore", variant.as_str());
    let target_vip = SocketAddr::new(IpAddr::V4(vip(n / 2)), 80);
    let full = peer_input(o, n, "full", &format!("{target_vip}={backend}:8080"))?;
    let rules = sluice_rules(&mut Renderer::default(), &services(n, backend), &owned);
    let mut pairs = Vec::new();
    for round in 0..ROUNDS {
        // ABBA: peer, sluice | sluice, peer | ...
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        let mut pair = [0.0; 2];
        for is_sluice in order {
            flush_all()?;
            if is_sluice {
                RuleSyncer::new(Iptables { variant }).sync(&rules, true)?;
            } else {
                if restore(&bin, &["--noflush", "--wait"], &full, o.restore_timeout)?.is_none() {
                    flush_all()?;
                    return Ok(Vec::new());
                }
                restore(&bin, &["--noflush", "--wait"], PEER_JUMPS.as_bytes(), o.restore_timeout)?;
            }
            std::thread::sleep(SETTLE);
            pair[usize::from(!is_sluice)] = load(lab, target_vip, o)?;
        }
        eprintln!(
            "paired {} N={n}, round {}/{ROUNDS}: sluice {:.0} conn/s, peer {:.0} conn/s ({:.2}x)",
            variant.as_str(),
            round + 1,
            pair[0],
            pair[1],
            pair[0] / pair[1].max(1.0)
        );
        pairs.push(pair);
    }
    flush_all()?;
    Ok(pairs)
}

/// Median of sluice/peer over the rounds, with the smallest and largest round.
pub fn summary(pairs: &[[f64; 2]]) -> Option<(f64, f64, f64)> {
    let mut r: Vec<f64> = pairs.iter().filter(|p| p[1] > 0.0).map(|p| p[0] / p[1]).collect();
    r.sort_by(f64::total_cmp);
    let med = match r.len() {
        0 => return None,
        k if k % 2 == 1 => r[k / 2],
        k => (r[k / 2 - 1] + r[k / 2]) / 2.0,
    };
    Some((med, r[0], r[r.len() - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_the_median_ratio_with_its_range() {
        assert_eq!(summary(&[]), None);
        let (med, lo, hi) =
            summary(&[[120.0, 100.0], [110.0, 100.0], [150.0, 100.0], [130.0, 100.0]]).expect("ratios");
        assert!((med - 1.25).abs() < 1e-9 && (lo - 1.1).abs() < 1e-9 && (hi - 1.5).abs() < 1e-9);
        // A round where the peer measured nothing is left out, not divided by.
        assert_eq!(summary(&[[100.0, 0.0]]), None);
    }
}
