//! Network policy in netfilter: per-endpoint chains in the filter table, reached from
//! `FORWARD` (every packet to or from a pod crosses it after Service translation, whichever
//! dataplane translated), with one ipset per distinct peer (the addresses of a set of
//! identities, or a CIDR with its exceptions).
//!
//! ```text
//! FORWARD -> SLUICE-POL-FWD
//!   ESTABLISHED,RELATED -> RETURN              replies and admitted flows pass
//!   -i <pod veth> -> SLUICE-POL-E-<hash>       the pod's egress, when isolated
//!   -o <pod veth> -> SLUICE-POL-I-<hash>       the pod's ingress, when isolated
//! SLUICE-POL-I-<hash>: deny rules -> DROP, allow rules -> RETURN, then DROP (default deny,
//!   its comment naming the policies that select the pod)
//! ```
//! Allowed packets RETURN, so whatever else hangs off FORWARD still sees them. Traffic from the
//! node itself leaves through OUTPUT and is never policed here (Kubernetes allows it).
//! Chains are `SLUICE-POL-*`, owned by their own syncer; sets are `sluice-<hash>`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};
use sluice_core::Protocol;
use sluice_core::policy::{Action, DirectionPolicy, EndpointRules, PeerMatch, PolicyView};

use crate::ipset::{SET_PREFIX, Sets};
use crate::ruleset::Ruleset;
use crate::services::quote;

pub const POLICY_CHAIN_PREFIX: &str = "SLUICE-POL-";
pub const FWD_CHAIN: &str = "SLUICE-POL-FWD";

fn hex(parts: &[&str], n: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(n / 2).map(|b| format!("{b:02x}")).collect()
}

pub fn endpoint_chain(interface: &str, ingress: bool) -> String {
    format!("{POLICY_CHAIN_PREFIX}{}-{}", if ingress { "I" } else { "E" }, hex(&[interface], 12))
}

/// A set's entries for a peer, or `None` when the peer needs no set (`Any`, a plain CIDR).
fn set_entries(peer: &PeerMatch, view: &PolicyView) -> Option<BTreeSet<String>> {
    let host = |ip: Ipv4Addr| format!("{ip}/32");
    match peer {
        PeerMatch::Any => None,
        PeerMatch::Cidr { except, .. } if except.is_empty() => None,
        PeerMatch::Identities(ids) => Some(view.addresses_of(ids).map(host).collect()),
        PeerMatch::Ips(ips) => Some(ips.iter().copied().map(host).collect()),
        PeerMatch::Cidr { net, except } => {
            // hash:net takes prefixes 1-32: /0 is its two halves.
            let nets: Vec<Ipv4Net> = if net.prefix_len() == 0 {
                vec![
                    Ipv4Net::new(Ipv4Addr::new(0, 0, 0, 0), 1).unwrap_or(*net),
                    Ipv4Net::new(Ipv4Addr::new(128, 0, 0, 0), 1).unwrap_or(*net),
                ]
            } else {
                vec![*net]
            };
            let mut s: BTreeSet<String> = nets.iter().map(|n| n.to_string()).collect();
            s.extend(except.iter().map(|x| format!("{x} nomatch")));
            Some(s)
        }
    }
}

fn set_name(peer: &PeerMatch) -> String {
    let key = serde_json_key(peer);
    format!("{SET_PREFIX}{}", hex(&[&key], 16))
}

/// A stable text form of a peer (what its set is named after, not what it holds now).
fn serde_json_key(peer: &PeerMatch) -> String {
    match peer {
        PeerMatch::Any => "any".into(),
        PeerMatch::Identities(ids) => {
            format!("ids:{}", ids.iter().map(|i| i.0.to_string()).collect::<Vec<_>>().join(","))
        }
        PeerMatch::Ips(ips) => format!("ips:{}", ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")),
        PeerMatch::Cidr { net, except } => {
            format!("cidr:{net}-{}", except.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
        }
    }
}

fn proto_match(protocol: Option<Protocol>, ports: Option<(u16, u16)>) -> String {
    let Some(p) = protocol else { return String::new() };
    let p = match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    match ports {
        None => format!("-p {p} "),
        Some((lo, hi)) if lo == hi => format!("-p {p} -m {p} --dport {lo} "),
        Some((lo, hi)) => format!("-p {p} -m {p} --dport {lo}:{hi} "),
    }
}

/// The match of one peer, and the set it needs (added to `sets`); `None` when it can match
/// nothing (no address has its identities now).
fn peer_match(peer: &PeerMatch, ingress: bool, view: &PolicyView, sets: &mut Sets) -> Option<String> {
    let dir = if ingress { "src" } else { "dst" };
    let flag = if ingress { "-s" } else { "-d" };
    match set_entries(peer, view) {
        None => Some(match peer {
            PeerMatch::Cidr { net, .. } if net.prefix_len() > 0 => format!("{flag} {net} "),
            _ => String::new(),
        }),
        Some(entries) if entries.is_empty() => None,
        Some(entries) => {
            let name = set_name(peer);
            sets.insert(name.clone(), entries);
            Some(format!("-m set --match-set {name} {dir} "))
        }
    }
}

/// The rules of one direction's chain; sets it needs are added to `sets`.
///
/// Rules whose peers are addresses of identities (or single pods) and that share action,
/// protocol and ports become one rule over one set holding all their addresses: a thousand
/// policies allowing a thousand identities on one port cost the packet one set lookup, not a
/// thousand rules. That set is named after the chain and the (action, protocol, ports) group,
/// so a policy or label change only adds and removes members.
fn direction_rules(
    chain: &str,
    d: &DirectionPolicy,
    ingress: bool,
    pod: &str,
    view: &PolicyView,
    sets: &mut Sets,
) -> Vec<String> {
    let dir = if ingress { "src" } else { "dst" };
    // (action, protocol, ports) -> (addresses, policies), in first-seen order.
    let mut groups: Vec<((Action, Option<Protocol>, Option<(u16, u16)>), BTreeSet<String>, BTreeSet<String>)> =
        Vec::new();
    let mut others: Vec<(Action, String)> = Vec::new();
    for r in d.rules.iter().filter(|r| !r.audit) {
        let addresses: Option<Vec<Ipv4Addr>> = match &r.peer {
            PeerMatch::Identities(ids) => Some(view.addresses_of(ids).collect()),
            PeerMatch::Ips(ips) => Some(ips.iter().copied().collect()),
            _ => None,
        };
        let (target, what) = match r.action {
            Action::Allow => ("RETURN", "allow"),
            Action::Deny => ("DROP", "deny"),
        };
        match addresses {
            Some(addrs) => {
                let key = (r.action, r.protocol, r.ports);
                let i = match groups.iter().position(|g| g.0 == key) {
                    Some(i) => i,
                    None => {
                        groups.push((key, BTreeSet::new(), BTreeSet::new()));
                        groups.len() - 1
                    }
                };
                groups[i].1.extend(addrs.iter().map(|a| format!("{a}/32")));
                groups[i].2.insert(r.policy.to_string());
            }
            None => {
                let Some(peer) = peer_match(&r.peer, ingress, view, sets) else { continue };
                others.push((
                    r.action,
                    format!(
                        "{peer}{}-m comment --comment \"sluice: {what} by {}\" -j {target}",
                        proto_match(r.protocol, r.ports),
                        quote(&r.policy.to_string())
                    ),
                ));
            }
        }
    }
    for ((action, protocol, ports), addrs, policies) in groups {
        if addrs.is_empty() {
            continue; // no address has these identities now: nothing to match
        }
        let key = format!("{chain}:{action:?}:{protocol:?}:{ports:?}");
        let name = format!("{SET_PREFIX}{}", hex(&[&key], 16));
        sets.insert(name.clone(), addrs);
        let (target, what) = match action {
            Action::Allow => ("RETURN", "allow"),
            Action::Deny => ("DROP", "deny"),
        };
        let by: Vec<String> = policies.into_iter().collect();
        let by = if by.len() > 3 { format!("{} and {} more", by[..3].join(", "), by.len() - 3) } else { by.join(", ") };
        others.push((
            action,
            format!(
                "-m set --match-set {name} {dir} {}-m comment --comment \"sluice: {what} by {}\" -j {target}",
                proto_match(protocol, ports),
                quote(&by)
            ),
        ));
    }
    // Deny before allow.
    let mut out: Vec<String> = others.iter().filter(|(a, _)| *a == Action::Deny).map(|(_, r)| r.clone()).collect();
    out.extend(others.iter().filter(|(a, _)| *a == Action::Allow).map(|(_, r)| r.clone()));
    let by: Vec<String> = d.selected_by.iter().map(|p| p.to_string()).collect();
    let why =
        if by.is_empty() { "policy_enforcement=always".to_string() } else { format!("selected by {}", by.join(", ")) };
    out.push(format!("-m comment --comment \"sluice: default deny for {}: {}\" -j DROP", quote(pod), quote(&why)));
    out
}

/// The policy chains and sets for this node's endpoints; empty when nothing is isolated.
pub fn render(view: &PolicyView) -> (Ruleset, Sets) {
    let mut r = Ruleset::default();
    let mut sets = Sets::new();
    let mut dispatch = vec![
        "-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"sluice: replies and admitted flows\" -j RETURN"
            .to_string(),
    ];
    let mut eps: Vec<&EndpointRules> = view.endpoints.iter().collect();
    eps.sort_by(|a, b| a.interface.cmp(&b.interface));
    for ep in eps {
        for ingress in [false, true] {
            let d = if ingress { &ep.policy.ingress } else { &ep.policy.egress };
            if !d.enforced {
                continue;
            }
            let chain = endpoint_chain(&ep.interface, ingress);
            let rules = direction_rules(&chain, d, ingress, &ep.pod, view, &mut sets);
            *r.chain("filter", &chain) = rules;
            let dev = if ingress { "-o" } else { "-i" };
            dispatch.push(format!(
                "{dev} {} -m comment --comment \"sluice: {} {}\" -j {chain}",
                ep.interface,
                if ingress { "ingress of" } else { "egress of" },
                quote(&ep.pod)
            ));
        }
    }
    if dispatch.len() > 1 {
        *r.chain("filter", FWD_CHAIN) = dispatch;
        r.hook("filter", "FORWARD", FWD_CHAIN, "");
    }
    (r, sets)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
