//! sluice's and the peer's ClusterIP connection rates, measured in alternation with both
//! rulesets installed at once. Only the order of the two `nat PREROUTING` hooks changes between
//! measurements: the first hook DNATs the connection and the other ruleset never sees it (a DNAT
//! ends the table's traversal for that packet). Both pay the same for everything else (both
//! POSTROUTING and filter chains are hooked in both orders), and the pairs are taken seconds
//! apart, in ABBA order, so the machine's drift over minutes (±10% here) cancels out, which the
//! separate per-backend records, minutes apart, cannot do.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::bail;
use sluice_core::Feature;
use sluice_iptables::incremental::Renderer;
use sluice_iptables::services::{IMPLEMENTED, SERVICES};
use sluice_iptables::sync::RuleSyncer;
use sluice_iptables::{Iptables, Variant};

use crate::Lab;
use crate::bench_services::{Options, PEER_JUMPS, flush_all, load, peer_input, restore, services, sluice_rules, vip};

/// Rounds of one (sluice, peer) pair each.
pub const ROUNDS: usize = 10;

/// sluice's PREROUTING hook rule, without the chain name (as `Hook::rule` renders it).
fn sluice_hook() -> String {
    format!("-m comment --comment \"sluice: hook {SERVICES}\" -j {SERVICES}")
}

const PEER_HOOK: &str = "-j KUBE-SERVICES";

/// Put `first`'s hook at the top of PREROUTING (one atomic restore).
fn hook_first(bin: &str, first: &str, o: &Options) -> anyhow::Result<()> {
    let batch = format!("*nat\n-D PREROUTING {first}\n-I PREROUTING 1 {first}\nCOMMIT\n");
    if restore(bin, &["--noflush", "--wait"], batch.as_bytes(), o.restore_timeout)?.is_none() {
        bail!("reordering the PREROUTING hooks did not finish in {:?}", o.restore_timeout);
    }
    // Check rather than trust: a wrong order would measure one ruleset twice.
    let list = bin.replace("-restore", "");
    let out = std::process::Command::new(&list).args(["-t", "nat", "-S", "PREROUTING"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let top = text.lines().find(|l| l.starts_with("-A PREROUTING")).unwrap_or_default();
    if !top.ends_with(first) {
        bail!("after reordering, the first PREROUTING rule is {top:?}, not the hook {first:?}");
    }
    Ok(())
}

/// `(sluice, peer)` ClusterIP conn/s per round at `n` Services; empty when the peer cannot be
/// programmed within the restore timeout (nft at 10k).
pub fn paired(lab: &Lab, o: &Options, variant: Variant, n: usize, backend: Ipv4Addr) -> anyhow::Result<Vec<[f64; 2]>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    flush_all()?;
    let owned: BTreeSet<Feature> = IMPLEMENTED.iter().copied().collect();
    let bin = format!("iptables-{}-restore", variant.as_str());
    let target_vip = SocketAddr::new(IpAddr::V4(vip(n / 2)), 80);
    let full = peer_input(o, n, "full", &format!("{target_vip}={backend}:8080"))?;
    if restore(&bin, &["--noflush", "--wait"], &full, o.restore_timeout)?.is_none() {
        flush_all()?;
        return Ok(Vec::new());
    }
    restore(&bin, &["--noflush", "--wait"], PEER_JUMPS.as_bytes(), o.restore_timeout)?;
    RuleSyncer::new(Iptables { variant })
        .sync(&sluice_rules(&mut Renderer::default(), &services(n, backend), &owned), true)?;
    let sluice = sluice_hook();
    let mut pairs = Vec::new();
    // Unknown until set: whichever synced last inserted its hook at the top.
    let mut first_is_sluice: Option<bool> = None;
    for round in 0..ROUNDS {
        // ABBA: peer, sluice | sluice, peer | ...; a swap only where the order changes.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        let mut pair = [0.0; 2];
        for is_sluice in order {
            if first_is_sluice != Some(is_sluice) {
                hook_first(&bin, if is_sluice { &sluice } else { PEER_HOOK }, o)?;
                first_is_sluice = Some(is_sluice);
            }
            pair[usize::from(!is_sluice)] = load(lab, target_vip, o)?;
        }
        eprintln!(
            "paired {} N={n}, round {}/{ROUNDS}: sluice {:.0} conn/s, peer {:.0} conn/s",
            variant.as_str(),
            round + 1,
            pair[0],
            pair[1]
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
        let (med, lo, hi) = summary(&[[120.0, 100.0], [110.0, 100.0], [150.0, 100.0], [130.0, 100.0]]).expect("ratios");
        assert!((med - 1.25).abs() < 1e-9 && (lo - 1.1).abs() < 1e-9 && (hi - 1.5).abs() < 1e-9);
        // A round where the peer measured nothing is left out, not divided by.
        assert_eq!(summary(&[[100.0, 0.0]]), None);
    }

    #[test]
    fn the_sluice_hook_matches_what_the_renderer_installs() {
        let svcs = crate::bench_services::services(2, Ipv4Addr::new(10, 244, 1, 2));
        let owned: BTreeSet<Feature> = IMPLEMENTED.iter().copied().collect();
        let rs = sluice_rules(&mut Renderer::default(), &svcs, &owned);
        let hook = rs.hooks.iter().find(|h| h.builtin == "PREROUTING").expect("a PREROUTING hook");
        assert_eq!(hook.rule(), format!("PREROUTING {}", sluice_hook()));
    }
}
