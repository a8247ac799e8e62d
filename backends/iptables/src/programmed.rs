//! sluice's own Service rules read back from the kernel (`iptables-save -t nat`): which
//! frontends its chains translate, and to which endpoints. `sluice migrate verify` compares this
//! with what the agent wants, so a cutover is checked against what the kernel holds, not what
//! sluice meant to write. Pure; the layout it reads is the one `services.rs` writes.
//!
//! Frontends are found where the layout puts them: `-d IP/32 -p P -m P --dport N -j CHAIN` in
//! `SLUICE-SERVICES` and its dispatch chains (`SLUICE-D-*`), `-p P -m P --dport N -j CHAIN` in
//! `SLUICE-NODEPORTS` (every node address). A frontend's endpoints are the `DNAT
//! --to-destination` targets reachable from its chain through sluice's chains (the union of what
//! any client may be sent to: an external-traffic-local Service's `EXT` chain reaches both its
//! cluster-wide and its local endpoints).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use sluice_core::Protocol;
use sluice_core::programmed::HeldFrontend;

use crate::save::TableDump;

/// The value after `flag` in a rule (`-d 10.0.0.1/32` -> `10.0.0.1/32`).
fn arg<'a>(rule: &'a str, flag: &str) -> Option<&'a str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == flag {
            return words.next();
        }
    }
    None
}

fn protocol(rule: &str) -> Option<Protocol> {
    match arg(rule, "-p")? {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Every frontend sluice's nat rules translate (`ip` `None`: a NodePort, every local address).
pub fn frontends(nat: &TableDump) -> Vec<HeldFrontend> {
    let mut chains: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &nat.rules {
        if let Some((chain, rest)) = r.split_once(' ')
            && chain.starts_with(crate::CHAIN_PREFIX)
        {
            chains.entry(chain).or_default().push(rest);
        }
    }
    let mut out = Vec::new();
    for (chain, rules) in &chains {
        let nodeports = *chain == crate::services::NODEPORTS;
        let dispatch = *chain == crate::services::SERVICES || chain.starts_with("SLUICE-D-");
        if !nodeports && !dispatch {
            continue;
        }
        for rule in rules {
            let (Some(target), Some(p), Some(port)) =
                (arg(rule, "-j"), protocol(rule), arg(rule, "--dport").and_then(|d| d.parse::<u16>().ok()))
            else {
                continue;
            };
            let ip = if nodeports {
                None
            } else {
                match arg(rule, "-d").and_then(|d| d.strip_suffix("/32")).and_then(|a| a.parse::<Ipv4Addr>().ok()) {
                    Some(ip) => Some(IpAddr::from(ip)),
                    None => continue,
                }
            };
            let mut endpoints = BTreeSet::new();
            reach(&chains, target, &mut endpoints, &mut BTreeSet::new());
            out.push(HeldFrontend { ip, port, protocol: p, endpoints });
        }
    }
    out.sort_by_key(|f| (f.ip, f.port, f.protocol));
    out
}

/// The DNAT targets reachable from `chain` (sluice's chains only; each visited once).
fn reach<'a>(
    chains: &BTreeMap<&'a str, Vec<&'a str>>,
    chain: &'a str,
    out: &mut BTreeSet<(IpAddr, u16)>,
    seen: &mut BTreeSet<&'a str>,
) {
    if !seen.insert(chain) {
        return;
    }
    for rule in chains.get(chain).into_iter().flatten() {
        match arg(rule, "-j") {
            Some("DNAT") => {
                if let Some((ip, port)) = arg(rule, "--to-destination").and_then(|d| d.split_once(':'))
                    && let (Ok(ip), Ok(port)) = (ip.parse::<Ipv4Addr>(), port.parse())
                {
                    out.insert((IpAddr::from(ip), port));
                }
            }
            Some(next) if chains.contains_key(next) => reach(chains, next, out, seen),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::testing::{ServiceBuilder, backend};

    /// What the renderer writes, as iptables-save prints it, reads back as the frontends and
    /// endpoints it was rendered from: ClusterIPs, a NodePort, an external IP, affinity (per
    /// endpoint chains), external traffic policy Local.
    #[test]
    fn rendered_rules_read_back_as_their_frontends() {
        let web = ServiceBuilder::new("default", "web")
            .cluster_ip("10.96.0.10", 80)
            .node_port(30080)
            .external_ip("203.0.113.10", 80)
            .backend(backend("10.244.1.2", 8080, "node-1"))
            .backend(backend("10.244.2.2", 8080, "node-2"))
            .build();
        let sticky = ServiceBuilder::new("default", "sticky")
            .cluster_ip("10.96.0.26", 80)
            .affinity(600)
            .backend(backend("10.244.1.2", 8080, "node-1"))
            .backend(backend("10.244.2.2", 8080, "node-2"))
            .build();
        let local = ServiceBuilder::new("default", "local")
            .cluster_ip("10.96.0.27", 80)
            .node_port(30081)
            .external_local()
            .backend(backend("10.244.1.3", 8080, "node-1"))
            .backend(backend("10.244.2.3", 8080, "node-2"))
            .build();
        let services = [web, sticky, local];
        let owned = crate::SPEC.implemented();
        let r = crate::services::render(&crate::services::NodeInput {
            node_name: "node-1",
            cluster_cidr: "10.244.0.0/16".parse().expect("net"),
            services: &services,
            host_ports: &[],
            owned: &owned,
            log_group: None,
        });
        let dump = TableDump {
            name: "nat".into(),
            chains: r.chains["nat"].keys().cloned().collect(),
            rules: r.chains["nat"]
                .iter()
                .flat_map(|(c, rules)| rules.iter().map(move |l| format!("{c} {l}")))
                .collect(),
        };
        let got = frontends(&dump);
        let v4 = |a: [u8; 4]| IpAddr::from(Ipv4Addr::from(a));
        let eps = |a: [u8; 4], b: [u8; 4]| -> BTreeSet<(IpAddr, u16)> { [(v4(a), 8080), (v4(b), 8080)].into() };
        let find = |ip: Option<[u8; 4]>, port| {
            got.iter().find(|f| f.ip == ip.map(v4) && f.port == port).map(|f| f.endpoints.clone())
        };
        let web_eps = eps([10, 244, 1, 2], [10, 244, 2, 2]);
        assert_eq!(find(Some([10, 96, 0, 10]), 80), Some(web_eps.clone()), "{got:#?}");
        assert_eq!(find(Some([203, 0, 113, 10]), 80), Some(web_eps.clone()), "{got:#?}");
        assert_eq!(find(None, 30080), Some(web_eps.clone()), "{got:#?}");
        assert_eq!(find(Some([10, 96, 0, 26]), 80), Some(web_eps), "affinity: {got:#?}");
        let local_eps = eps([10, 244, 1, 3], [10, 244, 2, 3]);
        assert_eq!(find(Some([10, 96, 0, 27]), 80), Some(local_eps.clone()), "{got:#?}");
        assert_eq!(find(None, 30081), Some(local_eps), "pods' and outside's endpoints together: {got:#?}");
        assert_eq!(got.len(), 6, "{got:#?}");
        assert!(got.iter().all(|f| f.protocol == Protocol::Tcp));
    }

    #[test]
    fn foreign_chains_loops_and_junk_are_not_frontends() {
        let dump = TableDump {
            name: "nat".into(),
            chains: vec![],
            rules: vec![
                "KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-X".into(),
                "SLUICE-SERVICES -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j SLUICE-SVC-A".into(),
                "SLUICE-SVC-A -j SLUICE-SVC-B".into(),
                "SLUICE-SVC-B -j SLUICE-SVC-A".into(),
                "SLUICE-SVC-B -p tcp -j DNAT --to-destination 10.244.1.9:8080".into(),
                "SLUICE-SERVICES -d 0.0.0.1/0.0.0.15 -j SLUICE-D-1".into(),
                "SLUICE-SERVICES -d nonsense -p tcp --dport x -j SLUICE-SVC-A".into(),
                "garbage".into(),
            ],
        };
        let got = frontends(&dump);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(got[0].ip, Some(Ipv4Addr::new(10, 96, 0, 11).into()));
        assert_eq!(got[0].endpoints, [(Ipv4Addr::new(10, 244, 1, 9).into(), 8080)].into());
    }
}
