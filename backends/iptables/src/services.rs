//! Services as iptables rules. Pure: core services in, [`Ruleset`] out.
//!
//! Dispatch is not a linear chain: `SLUICE-SERVICES` fans out on the low 4 bits of the
//! destination address (`-d 0.0.0.N/0.0.0.15`), then on the next 4 bits, into 256 leaf chains
//! holding each ~1/256 of the frontends. A new connection meets about 8 + 8 + n/512 rules instead
//! of kube-proxy's n/2, and pod-to-pod traffic (not addressed to a frontend) crosses at most 16.
//!
//! Per service port: `SLUICE-SVC-*` picks an endpoint (`-m statistic --mode random
//! --probability 1/(n-i)`, as kube-proxy) and DNATs directly (no per-endpoint chain unless
//! ClientIP affinity needs one for `-m recent`); `SLUICE-SVL-*` uses only this node's endpoints
//! (traffic policy Local); `SLUICE-EXT-*` handles NodePort/ExternalIP/LoadBalancer traffic;
//! `SLUICE-FW-*` enforces loadBalancerSourceRanges. Hairpin (a pod reaching itself through a
//! Service) is one POSTROUTING rule per local endpoint address, not per service-endpoint pair.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};
use sluice_core::{Backend, Feature, FrontendKind, HostPort, Protocol, Service};

use crate::ruleset::Ruleset;

/// Packet mark bit: masquerade on the way out (kube-proxy uses 0x4000; a separate bit keeps the
/// two from interfering when both run).
pub const MASQ_MARK: &str = "0x10000/0x10000";
/// Packet mark bit: drop in the filter table (nat cannot drop).
pub const DROP_MARK: &str = "0x20000/0x20000";

pub const SERVICES: &str = "SLUICE-SERVICES";
pub const NODEPORTS: &str = "SLUICE-NODEPORTS";
pub const HOSTPORTS: &str = "SLUICE-HOSTPORTS";
pub const MARK_MASQ: &str = "SLUICE-MARK-MASQ";
pub const MARK_DROP: &str = "SLUICE-MARK-DROP";
pub const POSTROUTING: &str = "SLUICE-POSTROUTING";
pub const FILTER: &str = "SLUICE-FILTER";
pub const REJECT: &str = "SLUICE-REJECT";

pub struct NodeInput<'a> {
    pub node_name: &'a str,
    pub cluster_cidr: Ipv4Net,
    pub services: &'a [Service],
    pub host_ports: &'a [HostPort],
    /// Features the plan gives to iptables on this node.
    pub owned: &'a BTreeSet<Feature>,
    /// While flows are recorded: the NFLOG group the Service drops (no endpoints, source
    /// ranges) are logged to, each before its REJECT or DROP.
    pub log_group: Option<u16>,
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02X}")).collect()
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// A rule comment from object names: printable ASCII only (no quote, backslash or control
/// character can end the comment or the restore line), at most 200 bytes (iptables allows 256).
/// Validation refuses such names before they get here; this is the second line of defence.
pub(crate) fn quote(s: &str) -> String {
    s.chars()
        .map(|c| if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' { c } else { '?' })
        .take(200)
        .collect()
}

/// Chain names of one service port (`ns/name:port/proto`).
pub struct PortChains {
    pub svc: String,
    pub svl: String,
    pub ext: String,
    pub fw: String,
    pub label: String,
}

pub fn port_chains(svc: &Service, port_name: &str, p: Protocol) -> PortChains {
    let label = format!("{}:{}/{}", svc.name, if port_name.is_empty() { "-" } else { port_name }, proto(p));
    let h = short_hash(&[&label]);
    PortChains {
        svc: format!("SLUICE-SVC-{h}"),
        svl: format!("SLUICE-SVL-{h}"),
        ext: format!("SLUICE-EXT-{h}"),
        fw: format!("SLUICE-FW-{h}"),
        label,
    }
}

/// The dispatch tree position of a frontend address: (level-1 chain, leaf match, leaf chain).
fn bucket(ip: Ipv4Addr) -> (String, String, String) {
    let b = ip.octets()[3];
    let (lo, hi) = (b & 0x0f, b >> 4);
    (format!("SLUICE-D-{lo:X}"), format!("-d 0.0.0.{b}/0.0.0.255"), format!("SLUICE-D-{lo:X}{hi:X}"))
}

/// What one Service contributes to the ruleset: a pure function of the Service and the node
/// context, so it can be cached per Service ([`crate::incremental::Renderer`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    /// The Service's own nat chains (SVC, SVL, EXT, FW), in name order. Compact vectors, not
    /// maps: at 10k Services the cache holds 10k of these.
    chains: Vec<(String, Arc<Vec<String>>)>,
    /// Dispatch leaf chain -> this Service's rules in it.
    leaves: Vec<(String, Vec<String>)>,
    nodeports: Vec<String>,
    rejects: Vec<String>,
    local_eps: Vec<Ipv4Addr>,
    /// Per-endpoint chains (affinity), set after every Service chain.
    sep_chains: Vec<(String, Vec<String>)>,
}

impl Fragment {
    /// Whether `chain` is one of this Service's own chains (not a shared dispatch chain).
    pub fn owns_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|(n, _)| n == chain) || self.sep_chains.iter().any(|(n, _)| n == chain)
    }
}

/// A fragment while it is being built.
#[derive(Default)]
struct Draft {
    r: Ruleset,
    leaves: BTreeMap<String, Vec<String>>,
    nodeports: Vec<String>,
    rejects: Vec<String>,
    local_eps: BTreeSet<Ipv4Addr>,
    sep_chains: Vec<(String, Vec<String>)>,
}

impl Draft {
    fn done(mut self) -> Fragment {
        let mut f = Fragment {
            chains: self.r.chains.remove("nat").unwrap_or_default().into_iter().collect(),
            leaves: self.leaves.into_iter().collect(),
            nodeports: self.nodeports,
            rejects: self.rejects,
            local_eps: self.local_eps.into_iter().collect(),
            sep_chains: self.sep_chains,
        };
        f.chains.shrink_to_fit();
        f.nodeports.shrink_to_fit();
        f.rejects.shrink_to_fit();
        f
    }
}

/// The node-wide inputs a [`Fragment`] depends on besides its Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentCtx {
    pub node_name: String,
    pub cluster_cidr: Ipv4Net,
    pub owned: BTreeSet<Feature>,
}

impl FragmentCtx {
    pub fn of(input: &NodeInput<'_>) -> Self {
        FragmentCtx { node_name: input.node_name.into(), cluster_cidr: input.cluster_cidr, owned: input.owned.clone() }
    }
}

pub fn service_fragment(svc: &Service, ctx: &FragmentCtx) -> Fragment {
    let mut f = Draft::default();
    let owns = |feat: Feature| ctx.owned.contains(&feat);
    let cluster = ctx.cluster_cidr;
    for port in sluice_core::view::ports_of(svc, &ctx.node_name) {
        let (port_name, p, fes) = (port.port_name, port.protocol, &port.frontends);
        let c = port_chains(svc, port_name, p);
        for b in &port.local {
            if let IpAddr::V4(ip) = b.ip {
                f.local_eps.insert(ip);
            }
        }
        let affinity = if owns(Feature::SessionAffinity) { svc.affinity_timeout_s } else { None };
        let target_port = fes[0].target_port;
        let pr = proto(p);
        let mut serves_cluster = false;
        let mut serves_ext = false;
        for fe in fes {
            let (chain, wanted) = match fe.kind {
                // Host processes reach ClusterIPs through OUTPUT when iptables has socket-lb,
                // even when another dataplane (eBPF, at the pod's veth) serves pods.
                FrontendKind::ClusterIp => {
                    (&c.svc, owns(Feature::ClusterIp) || owns(Feature::SocketLbTcp) || owns(Feature::SocketLbUdp))
                }
                FrontendKind::ExternalIp => (&c.ext, owns(Feature::ExternalIps)),
                FrontendKind::LoadBalancer => {
                    (if svc.source_ranges.is_empty() { &c.ext } else { &c.fw }, owns(Feature::LoadBalancer))
                }
                FrontendKind::NodePort => (&c.ext, owns(Feature::NodePort)),
            };
            if !wanted {
                continue;
            }
            // A frontend with nothing to send to is rejected (ClusterIP: by internal policy;
            // outside traffic: by external policy, which a Local Service applies even when
            // pods are sent cluster-wide).
            let empty = if fe.kind == FrontendKind::ClusterIp {
                port.internal().is_empty()
            } else {
                port.external(true).is_empty()
            };
            match (fe.kind, fe.ip) {
                (FrontendKind::NodePort, _) => {
                    if empty {
                        f.rejects.push(format!("-m addrtype --dst-type LOCAL -p {pr} -m {pr} --dport {} -m comment --comment \"{} has no endpoints\" -j REJECT", fe.port, quote(&c.label)));
                    } else {
                        f.nodeports.push(format!(
                            "-p {pr} -m {pr} --dport {} -m comment --comment \"{}\" -j {chain}",
                            fe.port,
                            quote(&c.label)
                        ));
                    }
                    if empty {
                        continue;
                    }
                }
                (_, Some(IpAddr::V4(ip))) => {
                    if empty {
                        f.rejects.push(format!("-d {ip}/32 -p {pr} -m {pr} --dport {} -m comment --comment \"{} has no endpoints\" -j REJECT", fe.port, quote(&c.label)));
                        continue;
                    }
                    let (_, _, leaf) = bucket(ip);
                    f.leaves
                        .entry(leaf)
                        .or_default()
                        .push(format!("-d {ip}/32 -p {pr} -m {pr} --dport {} -j {chain}", fe.port));
                }
                _ => continue,
            }
            if fe.kind == FrontendKind::ClusterIp {
                serves_cluster = true;
            } else {
                serves_ext = true;
            }
        }
        // The service chain (cluster-wide endpoints, or local ones for internalTrafficPolicy Local).
        if serves_cluster || serves_ext {
            let usable = port.internal();
            f.r.chain("nat", &c.svc).push(format!(
                "! -s {cluster} -m comment --comment \"{} from outside the cluster\" -j {MARK_MASQ}",
                quote(&c.label)
            ));
            f.sep_chains.extend(pick(&mut f.r, &c.svc, usable, affinity, target_port));
        }
        if serves_ext {
            let ext = f.r.chain("nat", &c.ext);
            if svc.external_local && owns(Feature::TrafficPolicyLocal) {
                // Pods keep using every endpoint; outside traffic only local ones, unmasqueraded.
                ext.push(format!("-s {cluster} -j {}", c.svc));
                ext.push(format!("-j {}", c.svl));
                f.sep_chains.extend(pick(&mut f.r, &c.svl, &port.local, affinity, target_port));
            } else {
                ext.push(format!("-j {MARK_MASQ}"));
                ext.push(format!("-j {}", c.svc));
            }
            if !svc.source_ranges.is_empty() && owns(Feature::LoadBalancer) {
                let fw = f.r.chain("nat", &c.fw);
                for range in &svc.source_ranges {
                    fw.push(format!("-s {range} -j {}", c.ext));
                }
                fw.push(format!(
                    "-m comment --comment \"{} source not in loadBalancerSourceRanges\" -j {MARK_DROP}",
                    quote(&c.label)
                ));
            }
        }
    }
    f.done()
}

/// Endpoint choice with DNAT (or per-endpoint chains when affinity needs `-m recent`).
fn pick(
    r: &mut Ruleset,
    chain: &str,
    eps: &[&Backend],
    affinity: Option<u32>,
    dport: u16,
) -> Vec<(String, Vec<String>)> {
    let mut extra = Vec::new();
    let rules = r.chain("nat", chain);
    let n = eps.len();
    let sep = |ep: &Backend| format!("SLUICE-SEP-{}", short_hash(&[chain, &ep.ip.to_string(), &ep.port.to_string()]));
    if let Some(t) = affinity {
        for ep in eps {
            rules.push(format!(
                "-m recent --rcheck --seconds {t} --reap --name {} --mask 255.255.255.255 --rsource -j {}",
                sep(ep),
                sep(ep)
            ));
        }
    }
    for (i, ep) in eps.iter().enumerate() {
        let target = match affinity {
            Some(_) => format!("-j {}", sep(ep)),
            None => format!(
                "-p {} -j DNAT --to-destination {}:{}",
                proto(ep.protocol),
                ep.ip,
                if ep.port == 0 { dport } else { ep.port }
            ),
        };
        let stat = if i + 1 < n {
            format!("-m statistic --mode random --probability {:.11} ", 1.0 / (n - i) as f64)
        } else {
            String::new()
        };
        // No per-endpoint comment: in a legacy table every comment match is 256 bytes of blob
        // that each restore copies; the chain's first rule names the service.
        rules.push(format!("{stat}{target}"));
    }
    if affinity.is_some() {
        for ep in eps {
            let name = sep(ep);
            let p = proto(ep.protocol);
            extra.push((
                name.clone(),
                vec![format!(
                    "-p {p} -m recent --set --name {name} --mask 255.255.255.255 --rsource -j DNAT --to-destination {}:{}",
                    ep.ip, ep.port
                )],
            ));
        }
    }
    extra
}

/// Render everything sluice's iptables backend wants on this node.
pub fn render(input: &NodeInput<'_>) -> Ruleset {
    let ctx = FragmentCtx::of(input);
    let fragments: Vec<Fragment> = input.services.iter().map(|s| service_fragment(s, &ctx)).collect();
    assemble(input, fragments.iter())
}

/// The whole ruleset from every Service's fragment (in Service order) plus the node-wide parts.
pub fn assemble<'f>(input: &NodeInput<'_>, fragments: impl Iterator<Item = &'f Fragment>) -> Ruleset {
    let mut r = Ruleset::default();
    let owns = |f: Feature| input.owned.contains(&f);
    let cluster = input.cluster_cidr;
    r.chain("nat", MARK_MASQ).push(format!("-j MARK --or-mark {}", MASQ_MARK.split('/').next().unwrap_or_default()));
    r.chain("nat", MARK_DROP).push(format!("-j MARK --or-mark {}", DROP_MARK.split('/').next().unwrap_or_default()));
    // Pod addresses are never Service frontends: pod-to-pod connections leave the dispatch at
    // once, before the tree and the NodePort `addrtype` match (a route lookup per connection).
    // (NodePorts and hostPorts answer on node addresses, not on a pod gateway address.)
    r.chain("nat", SERVICES)
        .push(format!("-d {cluster} -m comment --comment \"sluice: pod addresses are not Services\" -j RETURN"));
    let mut leaves: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut nodeports: Vec<String> = Vec::new();
    let mut rejects: Vec<String> = Vec::new();
    let mut local_eps: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut sep_chains = Vec::new();

    for f in fragments {
        for (name, rules) in &f.chains {
            r.append_shared("nat", name, rules);
        }
        for (leaf, rules) in &f.leaves {
            leaves.entry(leaf.clone()).or_default().extend(rules.iter().cloned());
        }
        nodeports.extend(f.nodeports.iter().cloned());
        rejects.extend(f.rejects.iter().cloned());
        local_eps.extend(f.local_eps.iter().copied());
        sep_chains.extend(f.sep_chains.iter().cloned());
    }
    for (name, rules) in sep_chains {
        *r.chain("nat", &name) = rules;
    }
    // Two-level dispatch tree.
    let mut level1: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (leaf, rules) in leaves {
        let ip_rule = &rules[0];
        let ip: Ipv4Addr = ip_rule
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.trim_end_matches("/32").parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let (l1, m2, _) = bucket(ip);
        level1.entry(l1).or_default().push(format!("{m2} -j {leaf}"));
        *r.chain("nat", &leaf) = rules;
    }
    for (l1, rules) in level1 {
        let lo = u8::from_str_radix(l1.trim_start_matches("SLUICE-D-"), 16).unwrap_or(0);
        r.chain("nat", SERVICES).push(format!("-d 0.0.0.{lo}/0.0.0.15 -j {l1}"));
        *r.chain("nat", &l1) = rules;
    }
    if !nodeports.is_empty() {
        r.chain("nat", SERVICES).push(format!("-m addrtype --dst-type LOCAL -j {NODEPORTS}"));
        *r.chain("nat", NODEPORTS) = nodeports;
    }
    if owns(Feature::HostPort) {
        let mut hp = Vec::new();
        for h in sluice_core::view::ServiceView::new(input.node_name, input.services, input.host_ports).host_ports() {
            let pr = proto(h.protocol);
            let dst = h.host_ip.map(|ip| format!("-d {ip}/32 ")).unwrap_or_default();
            hp.push(format!(
                "{dst}-p {pr} -m {pr} --dport {} -m comment --comment \"hostPort of {}\" -j DNAT --to-destination {}:{}",
                h.host_port,
                quote(&h.pod),
                h.pod_ip,
                h.container_port
            ));
            local_eps.insert(h.pod_ip);
        }
        if !hp.is_empty() {
            r.chain("nat", SERVICES).push(format!("-m addrtype --dst-type LOCAL -j {HOSTPORTS}"));
            *r.chain("nat", HOSTPORTS) = hp;
        }
    }
    let serves_any = r
        .chains
        .get("nat")
        .is_some_and(|t| t.keys().any(|k| k.starts_with("SLUICE-D-") || k == NODEPORTS || k == HOSTPORTS));
    // POSTROUTING: service masquerade and hairpin (pod masquerade is node plumbing: `crate::node`,
    // chain SLUICE-NODE-MASQ, whoever serves the Services). The chain and its hook stay even
    // when nothing is served: creating them in the same batch as 10k Services' chains made the
    // kernel's commit of that batch ~1.7 s (25%) slower (nft, measured by replaying the batches).
    let post = r.chain("nat", POSTROUTING);
    post.push(format!(
        "-m mark --mark {MASQ_MARK} -m comment --comment \"sluice: service traffic needing SNAT\" -j MASQUERADE"
    ));
    r.hook("nat", "POSTROUTING", POSTROUTING, "");
    if serves_any {
        let post = r.chain("nat", POSTROUTING);
        for ep in &local_eps {
            post.push(format!(
                "-s {ep}/32 -d {ep}/32 -m conntrack --ctstate DNAT -m comment --comment \"sluice: hairpin\" -j MASQUERADE"
            ));
        }
        r.hook("nat", "PREROUTING", SERVICES, "");
        if owns(Feature::SocketLbTcp) || owns(Feature::SocketLbUdp) {
            // Host processes reach Services through per-packet DNAT in OUTPUT.
            r.hook("nat", "OUTPUT", SERVICES, "");
        }
    }
    // filter: drop what nat marked for dropping; reject Services without endpoints. Hooked only
    // when there is something to drop or reject: the filter chains see every packet, not only
    // the first of a connection as nat does.
    let drops = r.chains.get("nat").is_some_and(|t| t.keys().any(|k| k.starts_with("SLUICE-FW-")));
    let log = |prefix: &str| {
        input.log_group.map(|g| format!("-j NFLOG --nflog-group {g} --nflog-prefix \"{prefix}\" --nflog-range 128"))
    };
    if drops {
        let filter = r.chain("filter", FILTER);
        if let Some(nflog) = log(crate::nflog::SOURCE_RANGE_PREFIX) {
            filter.push(format!("-m mark --mark {DROP_MARK} {nflog}"));
        }
        filter
            .push(format!("-m mark --mark {DROP_MARK} -m comment --comment \"sluice: source range refused\" -j DROP"));
    }
    if !rejects.is_empty() {
        r.chain("filter", FILTER).push(format!("-m conntrack --ctstate NEW -j {REJECT}"));
        // Each REJECT preceded by its NFLOG twin (same match), so the flow names the frontend.
        let rejects = match log(crate::nflog::NO_ENDPOINTS_PREFIX) {
            Some(nflog) => rejects
                .into_iter()
                .flat_map(|rule| {
                    let logged = rule.strip_suffix("-j REJECT").map(|m| format!("{m}{nflog}"));
                    logged.into_iter().chain(std::iter::once(rule))
                })
                .collect(),
            None => rejects,
        };
        *r.chain("filter", REJECT) = rejects;
    }
    if drops || r.chains.get("filter").is_some_and(|t| t.contains_key(REJECT)) {
        for builtin in ["INPUT", "FORWARD", "OUTPUT"] {
            r.hook("filter", builtin, FILTER, "");
        }
    }
    r
}

#[cfg(test)]
#[path = "services_tests.rs"]
mod tests;
