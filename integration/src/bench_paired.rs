//! The goals' ratios measured in alternation: each round programs one deployment alone (the
//! other flushed), exactly as deployed, lets the machine settle and measures, then does the
//! same for the other. Rounds go in ABBA order, so what comes first or follows the peer's long
//! restore is balanced, and each pair is seconds apart instead of the minutes between the
//! per-backend records, whose drift (±10% here) is as large as the effects being measured.
//!
//! Three comparisons at the largest N: sluice vs the peer through the ClusterIP; sluice at N vs
//! sluice at the smallest N through the ClusterIP; sluice at N vs sluice at N = 0 pod-to-pod.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use sluice_core::Feature;
use sluice_iptables::incremental::Renderer;
use sluice_iptables::ruleset::Ruleset;
use sluice_iptables::sync::RuleSyncer;
use sluice_iptables::{Iptables, Variant};

use crate::Lab;
use crate::bench_services::{Options, PEER_JUMPS, flush_all, load, peer_input, restore, services, sluice_rules, vip};

/// Rounds of one pair each.
pub const ROUNDS: usize = 8;

/// Settling time between programming and measuring.
pub const SETTLE_TIME: Duration = SETTLE;

/// After programming, before measuring: the kernel frees the previous table and the restore's
/// memory; the load should not share the CPUs with that.
const SETTLE: Duration = Duration::from_secs(2);

/// One side of a comparison: whose rules, for how many Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Deploy {
    Sluice(usize),
    Peer(usize),
    /// sluice's eBPF programs and maps at N Services, attached with TCX or classic tc.
    EbpfTcx(usize),
    EbpfClassic(usize),
}

/// Where the load goes: the deployment's target ClusterIP, or the backend pod itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Target {
    ClusterIp,
    Pod,
}

/// The rates of `a` and `b`, one pair per round.
#[derive(Debug, Clone, Serialize)]
pub struct Pairs {
    pub a: Deploy,
    pub b: Deploy,
    pub target: Target,
    pub conn_per_s: Vec<[f64; 2]>,
}

impl Pairs {
    /// a/b over the rounds: (median, geometric mean, smallest, largest). The deployment measured
    /// second in a round tends to measure lower here; ABBA puts each first equally often, and the
    /// geometric mean of the rounds cancels that effect exactly.
    pub fn summary(&self) -> Option<Summary> {
        summarize(&self.conn_per_s)
    }
}

/// a/b over rounds of `[a, b]` rates (see `Pairs::summary`); rounds where either side measured
/// nothing are left out.
pub fn summarize(rounds: &[[f64; 2]]) -> Option<Summary> {
    let mut r: Vec<f64> = rounds.iter().filter(|p| p[0] > 0.0 && p[1] > 0.0).map(|p| p[0] / p[1]).collect();
    r.sort_by(f64::total_cmp);
    let median = match r.len() {
        0 => return None,
        k if k % 2 == 1 => r[k / 2],
        k => (r[k / 2 - 1] + r[k / 2]) / 2.0,
    };
    let geomean = (r.iter().map(|x| x.ln()).sum::<f64>() / r.len() as f64).exp();
    Some(Summary { median, geomean, min: r[0], max: r[r.len() - 1] })
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub geomean: f64,
    pub min: f64,
    pub max: f64,
}

/// A deployment ready to be programmed again and again.
enum Prepared {
    Sluice(Ruleset),
    Peer(Vec<u8>),
}

struct Bench<'a> {
    lab: &'a Lab,
    o: &'a Options,
    variant: Variant,
    backend: Ipv4Addr,
}

impl Bench<'_> {
    fn prepare(&self, d: Deploy) -> anyhow::Result<Prepared> {
        let owned: BTreeSet<Feature> = sluice_iptables::SPEC.implemented();
        Ok(match d {
            Deploy::Sluice(n) => {
                Prepared::Sluice(sluice_rules(&mut Renderer::default(), &services(n, self.backend), &owned))
            }
            Deploy::Peer(n) => {
                let target = format!("{}={}:8080", SocketAddr::new(IpAddr::V4(vip(n / 2)), 80), self.backend);
                Prepared::Peer(peer_input(self.o, n, "full", &target)?)
            }
            // Compared by bench_attach, on one datapath.
            Deploy::EbpfTcx(_) | Deploy::EbpfClassic(_) => anyhow::bail!("{d:?} is not an iptables deployment"),
        })
    }

    /// Flush, then program `p` alone; false when the restore did not finish in time.
    fn program(&self, p: &Prepared) -> anyhow::Result<bool> {
        flush_all()?;
        match p {
            Prepared::Sluice(rules) => {
                RuleSyncer::new(Iptables { variant: self.variant }, sluice_iptables::ruleset::ChainOwner::Services)
                    .sync(rules, true)?;
            }
            Prepared::Peer(full) => {
                let bin = format!("iptables-{}-restore", self.variant.as_str());
                if restore(&bin, &["--noflush", "--wait"], full, self.o.restore_timeout)?.is_none() {
                    return Ok(false);
                }
                restore(&bin, &["--noflush", "--wait"], PEER_JUMPS.as_bytes(), self.o.restore_timeout)?;
            }
        }
        Ok(true)
    }

    fn addr(&self, d: Deploy, t: Target) -> SocketAddr {
        let n = match d {
            Deploy::Sluice(n) | Deploy::Peer(n) | Deploy::EbpfTcx(n) | Deploy::EbpfClassic(n) => n,
        };
        match t {
            Target::ClusterIp => SocketAddr::new(IpAddr::V4(vip(n / 2)), 80),
            Target::Pod => SocketAddr::new(IpAddr::V4(self.backend), 8080),
        }
    }

    /// None when a deployment cannot be programmed within the restore timeout (the peer on nft).
    fn alternate(&self, a: Deploy, b: Deploy, target: Target) -> anyhow::Result<Option<Pairs>> {
        let prepared = [self.prepare(a)?, self.prepare(b)?];
        let mut rates = Vec::new();
        for round in 0..ROUNDS {
            // ABBA: b, a | a, b | ...
            let order = if round % 2 == 0 { [1, 0] } else { [0, 1] };
            let mut pair = [0.0; 2];
            for i in order {
                if !self.program(&prepared[i])? {
                    flush_all()?;
                    return Ok(None);
                }
                std::thread::sleep(SETTLE);
                pair[i] = load(self.lab, self.addr([a, b][i], target), self.o)?;
            }
            eprintln!(
                "paired {} {a:?} vs {b:?} to {target:?}, round {}/{ROUNDS}: {:.0} vs {:.0} conn/s ({:.2}x)",
                self.variant.as_str(),
                round + 1,
                pair[0],
                pair[1],
                pair[0] / pair[1].max(1.0)
            );
            rates.push(pair);
        }
        flush_all()?;
        Ok(Some(Pairs { a, b, target, conn_per_s: rates }))
    }
}

/// The three comparisons at `n` (those that can be programmed), against the peer only when
/// `with_peer`.
pub fn paired(
    lab: &Lab,
    o: &Options,
    variant: Variant,
    n: usize,
    smallest: usize,
    backend: Ipv4Addr,
    with_peer: bool,
) -> anyhow::Result<Vec<Pairs>> {
    let bench = Bench { lab, o, variant, backend };
    let mut out = Vec::new();
    if n == 0 {
        return Ok(out);
    }
    let mut wanted = Vec::new();
    if with_peer {
        wanted.push((Deploy::Sluice(n), Deploy::Peer(n), Target::ClusterIp));
    }
    if smallest > 0 && smallest < n {
        wanted.push((Deploy::Sluice(n), Deploy::Sluice(smallest), Target::ClusterIp));
    }
    wanted.push((Deploy::Sluice(n), Deploy::Sluice(0), Target::Pod));
    for (a, b, t) in wanted {
        out.extend(bench.alternate(a, b, t)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_the_median_and_geometric_mean_with_the_range() {
        let p =
            |r: Vec<[f64; 2]>| Pairs { a: Deploy::Sluice(1), b: Deploy::Peer(1), target: Target::Pod, conn_per_s: r };
        assert_eq!(p(vec![]).summary(), None);
        let s = p(vec![[120.0, 100.0], [110.0, 100.0], [150.0, 100.0], [130.0, 100.0]]).summary().expect("ratios");
        assert!((s.median - 1.25).abs() < 1e-9 && (s.min - 1.1).abs() < 1e-9 && (s.max - 1.5).abs() < 1e-9);
        // An order effect of x1.2 on alternate rounds cancels in the geometric mean.
        let s = p(vec![[120.0, 100.0], [100.0, 120.0]]).summary().expect("ratios");
        assert!((s.geomean - 1.0).abs() < 1e-9, "{s:?}");
        // A round where either side measured nothing is left out, not divided by.
        assert_eq!(p(vec![[100.0, 0.0], [0.0, 100.0]]).summary(), None);
    }
}
