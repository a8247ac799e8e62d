//! Compiled rules lowered to what a datapath matches, shared by every backend (one rule model,
//! as Calico's generic tables): per endpoint and direction, an ordered list (denies first, then
//! allows; the first rule that matches decides) whose peers are "anyone", one network, or a set
//! of networks with exceptions (`nomatch`: the most specific entry decides, as ipset `hash:net`
//! and an LPM trie both do).
//!
//! Rules whose peers are the addresses of identities (or single pods) and that share action,
//! protocol and ports become one rule over one set holding all their addresses: a thousand
//! policies allowing a thousand identities on one port cost a packet one set lookup. Such a set
//! is keyed by the endpoint scope and the (action, protocol, ports) group, so a policy or label
//! change only adds and removes members.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::compile::{Action, DirectionPolicy, PeerMatch};
use super::identity::Identity;
use super::view::PolicyView;
use crate::service::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetEntry {
    pub net: Ipv4Net,
    /// An exception: addresses under it do not match (unless a longer entry says they do).
    pub nomatch: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoweredPeer {
    Any,
    Net(Ipv4Net),
    /// `key` names the set stably (what it is for, not what it holds now).
    Set {
        key: String,
        entries: BTreeSet<SetEntry>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoweredRule {
    pub action: Action,
    pub protocol: Option<Protocol>,
    /// Inclusive; `None`: every port.
    pub ports: Option<(u16, u16)>,
    pub peer: LoweredPeer,
    /// The policies behind the rule, `Kind ns/name` (attribution in comments and traces).
    pub policies: Vec<String>,
}

fn host(ip: Ipv4Addr) -> SetEntry {
    SetEntry { net: Ipv4Net::from(ip), nomatch: false }
}

/// Lower one direction of one endpoint. `scope` names the endpoint and direction (set keys of
/// grouped rules derive from it). Audit rules are left out: they never decide.
pub fn lower(scope: &str, d: &DirectionPolicy, view: &PolicyView) -> Vec<LoweredRule> {
    type Group = ((Action, Option<Protocol>, Option<(u16, u16)>), BTreeSet<SetEntry>, BTreeSet<String>);
    let mut groups: Vec<Group> = Vec::new();
    let mut others: Vec<LoweredRule> = Vec::new();
    // Identity -> addresses, built once per call: a scan of the whole IP-to-identity map per
    // rule costs a thousand scans of ten thousand entries at a thousand policies.
    let mut by_identity: Option<std::collections::HashMap<Identity, Vec<Ipv4Addr>>> = None;
    for r in d.rules.iter().filter(|r| !r.audit) {
        let policy = r.policy.to_string();
        let addresses: Option<Vec<Ipv4Addr>> = match &r.peer {
            PeerMatch::Identities(ids) => {
                let index = by_identity.get_or_insert_with(|| {
                    let mut m: std::collections::HashMap<Identity, Vec<Ipv4Addr>> = std::collections::HashMap::new();
                    for (ip, id) in &view.ipcache {
                        m.entry(*id).or_default().push(*ip);
                    }
                    m
                });
                Some(ids.iter().filter_map(|id| index.get(id)).flatten().copied().collect())
            }
            PeerMatch::Ips(ips) => Some(ips.iter().copied().collect()),
            _ => None,
        };
        if let Some(addrs) = addresses {
            let key = (r.action, r.protocol, r.ports);
            let i = match groups.iter().position(|g| g.0 == key) {
                Some(i) => i,
                None => {
                    groups.push((key, BTreeSet::new(), BTreeSet::new()));
                    groups.len() - 1
                }
            };
            groups[i].1.extend(addrs.into_iter().map(host));
            groups[i].2.insert(policy);
            continue;
        }
        let peer = match &r.peer {
            PeerMatch::Cidr { net, except } if except.is_empty() => {
                if net.prefix_len() == 0 {
                    LoweredPeer::Any
                } else {
                    LoweredPeer::Net(*net)
                }
            }
            PeerMatch::Cidr { net, except } => {
                // Prefixes 1-32 only (ipset hash:net has no /0): /0 is its two halves.
                let halves = [Ipv4Net::new(Ipv4Addr::new(0, 0, 0, 0), 1), Ipv4Net::new(Ipv4Addr::new(128, 0, 0, 0), 1)];
                let nets: Vec<Ipv4Net> =
                    if net.prefix_len() == 0 { halves.into_iter().flatten().collect() } else { vec![*net] };
                let mut entries: BTreeSet<SetEntry> =
                    nets.into_iter().map(|n| SetEntry { net: n, nomatch: false }).collect();
                entries.extend(except.iter().map(|x| SetEntry { net: *x, nomatch: true }));
                let key = format!("cidr:{net}-{}", except.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","));
                LoweredPeer::Set { key, entries }
            }
            _ => LoweredPeer::Any,
        };
        others.push(LoweredRule {
            action: r.action,
            protocol: r.protocol,
            ports: r.ports,
            peer,
            policies: vec![policy],
        });
    }
    for ((action, protocol, ports), entries, policies) in groups {
        if entries.is_empty() {
            continue; // no address has these identities now: nothing can match
        }
        let key = format!("{scope}:{action:?}:{protocol:?}:{ports:?}");
        others.push(LoweredRule {
            action,
            protocol,
            ports,
            peer: LoweredPeer::Set { key, entries },
            policies: policies.into_iter().collect(),
        });
    }
    let (deny, allow): (Vec<_>, Vec<_>) = others.into_iter().partition(|r| r.action == Action::Deny);
    deny.into_iter().chain(allow).collect()
}

/// What audit-mode policies add to one direction, as a list a datapath evaluates for a new flow
/// the enforced list let through (`None` when no audit policy concerns it): the audit deny rules,
/// then every allow rule (a flow an enforcing policy allows is not an audited drop), and a
/// default deny when an audit policy isolates the endpoint (`enforced`, attributed through
/// `selected_by` to those policies). The same verdicts as [`super::compile::decide`]'s audit
/// half, for flows its enforced half allows.
pub fn audit_shadow(d: &DirectionPolicy) -> Option<DirectionPolicy> {
    let audit_denies: Vec<_> = d.rules.iter().filter(|r| r.audit && r.action == Action::Deny).cloned().collect();
    if d.audited_by.is_empty() && audit_denies.is_empty() {
        return None;
    }
    let allows = d.rules.iter().filter(|r| r.action != Action::Deny).cloned();
    let rules = audit_denies
        .into_iter()
        .chain(allows)
        .map(|mut r| {
            r.audit = false;
            r
        })
        .collect();
    Some(DirectionPolicy {
        enforced: !d.audited_by.is_empty(),
        selected_by: d.audited_by.clone(),
        audited_by: Vec::new(),
        rules,
    })
}
