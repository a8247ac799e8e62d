//! Network policy in netfilter: per-endpoint chains in the filter table, reached from
//! `FORWARD` (every packet to or from a pod crosses it after Service translation, whichever
//! dataplane translated) and from `INPUT` (a pod's packets to its own node's addresses: its
//! egress policy decides them, as eBPF's does), with one ipset per distinct peer (the addresses
//! of a set of identities, or a CIDR with its exceptions).
//!
//! ```text
//! FORWARD, INPUT -> SLUICE-POL-FWD
//!   ESTABLISHED,RELATED -> RETURN              replies and admitted flows pass
//!   -i <pod veth> -> SLUICE-POL-E-<hash>       the pod's egress, when isolated
//!   -o <pod veth> -> SLUICE-POL-I-<hash>       the pod's ingress, when isolated
//! SLUICE-POL-I-<hash>: deny rules -> DROP, allow rules -> RETURN, then DROP (default deny,
//!   its comment naming the policies that select the pod)
//! ```
//! Allowed packets RETURN, so whatever else hangs off FORWARD still sees them. Traffic from the
//! node itself leaves through OUTPUT and is never policed here (Kubernetes allows it); in INPUT
//! only the `-i <pod veth>` (egress) rules can match.
//! Chains are `SLUICE-POL-*`, owned by their own syncer; sets are `sluice-<hash>`.
//! While the agent records flows (`PolicyView::log_drops`), each DROP is preceded by an NFLOG
//! rule with the same match whose prefix names it (`nflog::PREFIX` + a tag): `drop_tags` says,
//! for each tag, the pod, the direction and the policies that decided the drop.
//! Audit-mode policies get `SLUICE-POL-AI-<hash>` / `-AE-` chains after the enforced one (only
//! while drops are logged): their would-be drops are logged with `nflog::AUDIT_PREFIX` and RETURN.

use sha2::{Digest, Sha256};
use sluice_core::Protocol;
use sluice_core::policy::{
    Action, DirectionPolicy, EndpointRules, LoweredPeer, PolicyView, SetEntry, audit_shadow, lower,
};

use crate::ipset::{SET_PREFIX, Sets};
use crate::nflog;
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
    endpoint_chain_of("", interface, ingress)
}

/// An endpoint's chain of a kind (`""`: its filter rules; `"L7-"`: its proxy redirects).
pub fn endpoint_chain_of(kind: &str, interface: &str, ingress: bool) -> String {
    format!("{POLICY_CHAIN_PREFIX}{kind}{}-{}", if ingress { "I" } else { "E" }, hex(&[interface], 12))
}

/// The ipset name of a lowered set (from its key: what it is for, not what it holds).
pub fn set_name(key: &str) -> String {
    format!("{SET_PREFIX}{}", hex(&[key], 16))
}

fn entry_text(e: &SetEntry) -> String {
    if e.nomatch { format!("{} nomatch", e.net) } else { e.net.to_string() }
}

pub(crate) fn peer_match(r: &sluice_core::policy::LoweredRule, ingress: bool, sets: &mut Sets) -> String {
    let (dir, flag) = if ingress { ("src", "-s") } else { ("dst", "-d") };
    match &r.peer {
        LoweredPeer::Any => String::new(),
        LoweredPeer::Net(net) => format!("{flag} {net} "),
        LoweredPeer::Set { key, entries } => {
            let name = set_name(key);
            sets.insert(name.clone(), entries.iter().map(entry_text).collect());
            format!("-m set --match-set {name} {dir} ")
        }
    }
}

pub(crate) fn proto_match(protocol: Option<Protocol>, ports: Option<(u16, u16)>) -> String {
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

pub use sluice_core::flow::drop::DropTag;

fn drop_prefix(chain: &str, rule: &str, audit: bool) -> String {
    format!("{}{}", if audit { nflog::AUDIT_PREFIX } else { nflog::PREFIX }, hex(&[chain, rule], 12))
}

/// The audit chain of an endpoint direction: what audit-mode policies would have dropped among
/// the new flows the enforced chain let through.
pub fn audit_chain(interface: &str, ingress: bool) -> String {
    format!("{POLICY_CHAIN_PREFIX}A{}-{}", if ingress { "I" } else { "E" }, hex(&[interface], 12))
}

/// The rules of one direction's chain (the shared lowering, `core::policy::lower`); the sets
/// they name are added to `sets`, the drops' tags to `tags`. `audit`: the audit list
/// (`core::policy::audit_shadow`): a would-be drop is logged and RETURNs, nothing is dropped.
#[allow(clippy::too_many_arguments)]
fn direction_rules(
    chain: &str,
    d: &DirectionPolicy,
    ingress: bool,
    pod: &str,
    view: &PolicyView,
    sets: &mut Sets,
    tags: &mut Vec<(String, DropTag)>,
    audit: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    // Log, then drop (or, auditing, return): the same match twice (NFLOG does not end the chain).
    let drop = |out: &mut Vec<String>,
                tags: &mut Vec<(String, DropTag)>,
                matches: String,
                comment: String,
                rule: &str,
                tag: DropTag| {
        let prefix = drop_prefix(chain, rule, audit);
        if let Some(group) = view.log_drops {
            out.push(format!("{matches}-j NFLOG --nflog-group {group} --nflog-prefix {prefix}"));
        }
        tags.push((prefix, tag));
        let verdict = if audit { "RETURN" } else { "DROP" };
        out.push(format!("{matches}-m comment --comment \"{comment}\" -j {verdict}"));
    };
    let would = if audit { "audit: would " } else { "" };
    for (i, r) in lower(chain, d, view).into_iter().enumerate() {
        let peer = peer_match(&r, ingress, sets);
        let by = if r.policies.len() > 3 {
            format!("{} and {} more", r.policies[..3].join(", "), r.policies.len() - 3)
        } else {
            r.policies.join(", ")
        };
        let matches = format!("{peer}{}", proto_match(r.protocol, r.ports));
        match r.action {
            Action::Allow => {
                // The policy verdict of a new flow (only new flows get here): logged while
                // flows are recorded and `flows.allowed_verdicts` asks for them.
                if let (Some(group), true, false) = (view.log_drops, view.log_allows, audit) {
                    let prefix = format!("{}{}", nflog::ALLOW_PREFIX, hex(&[chain, &i.to_string()], 12));
                    out.push(format!("{matches}-j NFLOG --nflog-group {group} --nflog-prefix {prefix}"));
                    let policies = r.policies.clone();
                    tags.push((
                        prefix,
                        DropTag { pod: pod.into(), ingress, policies, default_deny: false, audit, allow: true },
                    ));
                }
                out.push(format!("{matches}-m comment --comment \"sluice: {would}allow by {}\" -j RETURN", quote(&by)))
            }
            // Not here: what the L7 redirect (mangle, `l7::render`) did not take to the proxy
            // falls through to the default deny (fails closed).
            Action::Proxy => {}
            Action::Deny => {
                let tag = DropTag {
                    pod: pod.into(),
                    ingress,
                    policies: r.policies.clone(),
                    default_deny: false,
                    audit,
                    allow: false,
                };
                drop(&mut out, tags, matches, format!("sluice: {would}deny by {}", quote(&by)), &i.to_string(), tag);
            }
        }
    }
    if !d.enforced {
        return out; // an audit list of deny rules only: no would-be isolation
    }
    let mut tag = DropTag::default_deny(pod, ingress, d);
    tag.audit = audit;
    let why = if tag.policies.is_empty() {
        "policy_enforcement=always".to_string()
    } else {
        format!("selected by {}", tag.policies.join(", "))
    };
    let comment = format!("sluice: {would}default deny for {}: {}", quote(pod), quote(&why));
    drop(&mut out, tags, String::new(), comment, "default", tag);
    out
}

/// The policy chains and sets for this node's endpoints; empty when nothing is isolated.
pub fn render(view: &PolicyView) -> (Ruleset, Sets) {
    let (r, sets, _) = render_tagged(view);
    (r, sets)
}

/// What decided the drops each NFLOG prefix stands for, under `view` (the agent names logged
/// drops with it).
pub fn drop_tags(view: &PolicyView) -> std::collections::HashMap<String, DropTag> {
    render_tagged(view).2.into_iter().collect()
}

fn render_tagged(view: &PolicyView) -> (Ruleset, Sets, Vec<(String, DropTag)>) {
    let mut r = Ruleset::default();
    let mut sets = Sets::new();
    let mut tags = Vec::new();
    let mut dispatch = vec![
        "-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"sluice: replies and admitted flows\" -j RETURN"
            .to_string(),
    ];
    if view.l7_proxy.is_some() {
        // Redirected to the proxy by a Proxy rule (the mangle chains evaluated the list in
        // order up to it): the packet is delivered locally, through INPUT, where the pod's
        // egress chain has no Proxy rule and would drop it.
        let mark = crate::l7::PROXY_MARK;
        dispatch.push(format!(
            "-m mark --mark {mark:#x}/{mark:#x} -m comment --comment \"sluice: to the L7 proxy\" -j RETURN"
        ));
    }
    let mut eps: Vec<&EndpointRules> = view.endpoints.iter().collect();
    eps.sort_by(|a, b| a.interface.cmp(&b.interface));
    for ep in eps {
        for ingress in [false, true] {
            let d = if ingress { &ep.policy.ingress } else { &ep.policy.egress };
            let dev = if ingress { "-o" } else { "-i" };
            let what = if ingress { "ingress of" } else { "egress of" };
            if d.enforced {
                let chain = endpoint_chain(&ep.interface, ingress);
                let rules = direction_rules(&chain, d, ingress, &ep.pod, view, &mut sets, &mut tags, false);
                *r.chain("filter", &chain) = rules;
                dispatch.push(format!(
                    "{dev} {} -m comment --comment \"sluice: {what} {}\" -j {chain}",
                    ep.interface,
                    quote(&ep.pod)
                ));
            }
            // Audit: after the enforced chain (what it dropped never gets here), and only
            // while drops are logged (a would-be drop nobody reads changes nothing).
            if let (Some(shadow), Some(_)) = (audit_shadow(d), view.log_drops) {
                let chain = audit_chain(&ep.interface, ingress);
                let rules = direction_rules(&chain, &shadow, ingress, &ep.pod, view, &mut sets, &mut tags, true);
                *r.chain("filter", &chain) = rules;
                dispatch.push(format!(
                    "{dev} {} -m comment --comment \"sluice: audit of {what} {}\" -j {chain}",
                    ep.interface,
                    quote(&ep.pod)
                ));
            }
        }
    }
    if dispatch.len() > 1 + usize::from(view.l7_proxy.is_some()) {
        *r.chain("filter", FWD_CHAIN) = dispatch;
        r.hook("filter", "FORWARD", FWD_CHAIN, "");
        r.hook("filter", "INPUT", FWD_CHAIN, "");
    }
    crate::l7::render(view, &mut r, &mut sets);
    (r, sets, tags)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
