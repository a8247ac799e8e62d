//! Network policy in the eBPF datapath: the lowered rules (`core::policy::lower`, the same
//! lists the iptables backend renders) encoded per endpoint and direction into `sluice_pol_ep`,
//! their peer sets into the LPM trie `sluice_pol_set`. The programs (bpf/lib/policy.h) walk the
//! list, first match decides, and record admitted flows in `sluice_pol_ct`.
//!
//! Writes never open a gap: new sets get ids not in use, their entries go in first, then each
//! endpoint's entry is replaced in one update, then what no entry names any more is removed.
//! After a restart the pinned maps are read back and the same diff applies.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::{offset_of, size_of};

use aya::maps::HashMap;
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use sluice_core::Protocol;
use sluice_core::flow::drop::audit_scope;
use sluice_core::policy::{Action, LoweredPeer, PolicyView, audit_shadow, lower};

use crate::datapath::{Datapath, DatapathError, map_err};

pub const POL_INGRESS: u32 = 0;
pub const POL_EGRESS: u32 = 1;
pub const POL_MAX_RULES: usize = 32;
const PEER_ANY: u8 = 0;
const PEER_NET: u8 = 1;
const PEER_SET: u8 = 2;
const ALLOW: u8 = 1;
const DENY: u8 = 2;
const PROXY: u8 = 3;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct PolEpKey {
    pub ifindex: u32,
    pub dir: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolRule {
    pub action: u8,
    pub proto: u8,
    pub peer: u8,
    pub pad: u8,
    pub lo: u16,
    pub hi: u16,
    pub arg: u32,
    pub arg2: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolEpVal {
    pub enforced: u32,
    pub count: u32,
    pub rules: [PolRule; POL_MAX_RULES],
}

impl Default for PolEpVal {
    fn default() -> Self {
        PolEpVal { enforced: 0, count: 0, rules: [PolRule::default(); POL_MAX_RULES] }
    }
}

// SAFETY: plain #[repr(C)] integer structs with explicit padding; any bit pattern is valid.
unsafe impl aya::Pod for PolEpKey {}
unsafe impl aya::Pod for PolRule {}
unsafe impl aya::Pod for PolEpVal {}

const _: () = {
    assert!(size_of::<PolEpKey>() == 8);
    assert!(size_of::<PolRule>() == 16 && offset_of!(PolRule, lo) == 4 && offset_of!(PolRule, arg) == 8);
    assert!(size_of::<PolEpVal>() == 8 + 16 * POL_MAX_RULES && offset_of!(PolEpVal, rules) == 8);
};

/// One set entry: (set id, network address in packet order, prefix length, match).
pub type SetRow = (u32, u32, u32, bool);

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "endpoint {pod} ({dir}) needs {rules} policy rules, more than the {max} an eBPF endpoint holds; it keeps its last complete policy, other endpoints are updated (rules on the same ports and protocol share one entry: merge ports, or set dataplane: iptables on this node, which has no such limit)"
    )]
    TooManyRules { pod: String, dir: String, rules: usize, max: usize },
    #[error("interface {ifname} of {pod} has no index (gone?)")]
    NoInterface { pod: String, ifname: String },
}

/// What the maps should hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    pub endpoints: BTreeMap<PolEpKey, PolEpVal>,
    /// Audit lists (`core::policy::audit_shadow`), only for endpoint directions an audit-mode
    /// policy concerns: evaluated for new flows the enforced list passed, to report would-be drops.
    pub audit: BTreeMap<PolEpKey, PolEpVal>,
    pub sets: BTreeSet<SetRow>,
    /// Set key -> id (stable across passes while the key lives).
    pub ids: BTreeMap<String, u32>,
    /// Endpoint directions with a list over the rule limit: `true` when the enforced list is
    /// (the direction keeps what the maps hold), `false` when only the audit list is (the
    /// enforced list is written, the audit list kept). See [`keep_held`].
    pub held: BTreeMap<PolEpKey, bool>,
    /// Local endpoint addresses (packet order) -> host veth ifindex (`sluice_pol_addr`): whose
    /// ingress rules a destination names.
    pub addrs: BTreeMap<u32, u32>,
    /// The L7 proxy's port, 0 while none runs (`sluice_l7_port`): proxy rules then drop.
    pub l7_port: u32,
}

/// An endpoint direction whose list could not be encoded keeps its last complete policy: the
/// entries the maps hold for it and the set rows its rules name, so one endpoint over the limit
/// holds back no other endpoint's change. One that never had an entry denies every new flow
/// (fails closed) rather than going unpoliced. (Kept set ids cannot clash with new ones: new ids
/// avoid every id the pinned map holds.)
pub fn keep_held(want: &mut Encoded, have: &Written) {
    let mut kept = Vec::new();
    for (key, enforced) in &want.held {
        if *enforced {
            let v = have.endpoints.get(key).copied().unwrap_or(PolEpVal { enforced: 1, ..Default::default() });
            want.endpoints.insert(*key, v);
            kept.push(v);
        }
        if let Some(v) = have.audit.get(key) {
            want.audit.insert(*key, *v);
            kept.push(*v);
        }
    }
    let named: BTreeSet<u32> = kept
        .iter()
        .flat_map(|v| v.rules.iter().take(usize::try_from(v.count).unwrap_or(0).min(POL_MAX_RULES)))
        .filter(|r| r.peer == PEER_SET)
        .map(|r| r.arg)
        .collect();
    want.sets.extend(have.sets.iter().filter(|r| named.contains(&r.0)).copied());
}

/// What the pinned maps hold (read back, or as this process last wrote them).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    pub endpoints: BTreeMap<PolEpKey, PolEpVal>,
    pub audit: BTreeMap<PolEpKey, PolEpVal>,
    pub sets: BTreeSet<SetRow>,
    pub addrs: BTreeMap<u32, u32>,
    pub l7_port: u32,
}

impl Written {
    /// What `want` holds once synced.
    pub fn from(want: &Encoded) -> Written {
        Written {
            endpoints: want.endpoints.clone(),
            audit: want.audit.clone(),
            sets: want.sets.clone(),
            addrs: want.addrs.clone(),
            l7_port: want.l7_port,
        }
    }
}

fn proto_num(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn net_be(n: &ipnet::Ipv4Net) -> (u32, u32) {
    (u32::from_ne_bytes(n.network().octets()), u32::from_ne_bytes(n.netmask().octets()))
}

/// Set ids: a key keeps its id from the last pass; a new key takes one neither the last pass nor
/// the pinned map uses.
struct Ids<'a> {
    prev: &'a BTreeMap<String, u32>,
    used: BTreeSet<u32>,
    next: u32,
}

impl Ids<'_> {
    fn id(&mut self, out: &mut Encoded, key: &str) -> u32 {
        let id = match out.ids.get(key).or_else(|| self.prev.get(key)) {
            Some(id) => *id,
            None => {
                while self.used.contains(&self.next) {
                    self.next += 1;
                }
                self.used.insert(self.next);
                self.next
            }
        };
        out.ids.insert(key.to_string(), id);
        id
    }
}

/// One lowered list as a map value (its sets added to `out`). Proxy rules (allowed to the L7
/// proxy) keep their place: the programs redirect where they can and drop elsewhere; in an
/// audit list they count as allows (audit reports would-be drops only).
fn encode_list(
    rules: &[sluice_core::policy::LoweredRule],
    enforced: bool,
    audit: bool,
    out: &mut Encoded,
    ids: &mut Ids,
) -> PolEpVal {
    let mut val = PolEpVal { enforced: u32::from(enforced), count: rules.len() as u32, ..Default::default() };
    for (i, r) in rules.iter().enumerate() {
        let (peer, arg, arg2) = match &r.peer {
            LoweredPeer::Any => (PEER_ANY, 0, 0),
            LoweredPeer::Net(n) => {
                let (a, m) = net_be(n);
                (PEER_NET, a, m)
            }
            LoweredPeer::Set { key, entries } => {
                let id = ids.id(out, key);
                for e in entries {
                    out.sets.insert((id, net_be(&e.net).0, u32::from(e.net.prefix_len()), !e.nomatch));
                }
                (PEER_SET, id, 0)
            }
        };
        let (lo, hi) = r.ports.unwrap_or((0, 0));
        val.rules[i] = PolRule {
            action: match r.action {
                Action::Allow => ALLOW,
                Action::Proxy if audit => ALLOW,
                Action::Proxy => PROXY,
                Action::Deny => DENY,
            },
            proto: r.protocol.map(proto_num).unwrap_or(0),
            peer,
            pad: 0,
            lo,
            hi,
            arg,
            arg2,
        };
    }
    val
}

/// Encode the view. `ifindex` resolves an endpoint's interface; `prev_ids` keeps set ids of
/// keys that stay, and new keys take ids in neither `prev_ids` nor `taken` (ids the pinned map
/// still holds), so a set never changes meaning while an endpoint entry names it.
pub fn encode(
    view: &PolicyView,
    ifindex: &dyn Fn(&str) -> Option<u32>,
    prev_ids: &BTreeMap<String, u32>,
    taken: &BTreeSet<u32>,
) -> (Encoded, Vec<PolicyError>) {
    let mut out = Encoded { l7_port: view.l7_proxy.map_or(0, u32::from), ..Default::default() };
    let mut errors = Vec::new();
    let mut ids =
        Ids { prev: prev_ids, used: taken.iter().copied().chain(prev_ids.values().copied()).collect(), next: 1 };
    for ep in &view.endpoints {
        // Every endpoint gets entries, isolated or not: its admitted flows are recorded, so an
        // isolation added later never cuts the replies of a connection it already has.
        let p = &ep.policy;
        let Some(idx) = ifindex(&ep.interface) else {
            errors.push(PolicyError::NoInterface { pod: ep.pod.clone(), ifname: ep.interface.clone() });
            continue;
        };
        out.addrs.insert(u32::from_ne_bytes(ep.ip.octets()), idx);
        for (dir, d, name) in [(POL_INGRESS, &p.ingress, "ingress"), (POL_EGRESS, &p.egress, "egress")] {
            let key = PolEpKey { ifindex: idx, dir };
            let shadow = audit_shadow(d);
            let lists = [
                (false, format!("{}:{name}", ep.interface), d.enforced.then_some(d)),
                (true, audit_scope(&ep.interface, dir == POL_INGRESS), shadow.as_ref()),
            ];
            let mut val = PolEpVal::default();
            let mut over = None;
            for (audit, scope, list) in lists {
                let Some(list) = list else { continue };
                let rules = lower(&scope, list, view);
                if rules.len() > POL_MAX_RULES {
                    let dir = if audit { format!("{name}, audit") } else { name.to_string() };
                    errors.push(PolicyError::TooManyRules {
                        pod: ep.pod.clone(),
                        dir,
                        rules: rules.len(),
                        max: POL_MAX_RULES,
                    });
                    // The enforced list first: over it, the direction is held whole (its audit
                    // list too), so the audit list is not encoded for nothing.
                    over = Some(!audit);
                    if audit {
                        continue;
                    }
                    break;
                }
                let v = encode_list(&rules, list.enforced, audit, &mut out, &mut ids);
                if audit {
                    out.audit.insert(key, v);
                } else {
                    val = v;
                }
            }
            match over {
                None => {
                    out.endpoints.insert(key, val);
                }
                Some(enforced) => {
                    if !enforced {
                        out.endpoints.insert(key, val);
                    }
                    out.audit.remove(&key);
                    out.held.insert(key, enforced);
                }
            }
        }
    }
    (out, errors)
}

fn lpm(row: &SetRow) -> LpmKey<[u32; 2]> {
    LpmKey::new(32 + row.2, [row.0, row.1])
}

fn read_eps(dp: &mut Datapath, map: &'static str) -> Result<BTreeMap<PolEpKey, PolEpVal>, DatapathError> {
    let m = dp.bpf.map_mut(map).ok_or(DatapathError::Map { map, detail: "missing".into() })?;
    let h: HashMap<_, PolEpKey, PolEpVal> = HashMap::try_from(m).map_err(map_err(map))?;
    Ok(h.iter().flatten().collect())
}

/// What the pinned maps hold now.
pub fn read(dp: &mut Datapath) -> Result<Written, DatapathError> {
    let endpoints = read_eps(dp, "sluice_pol_ep")?;
    let audit = read_eps(dp, "sluice_pol_audit")?;
    let mut sets = BTreeSet::new();
    {
        let m = dp
            .bpf
            .map_mut("sluice_pol_set")
            .ok_or(DatapathError::Map { map: "sluice_pol_set", detail: "missing".into() })?;
        let t: LpmTrie<_, [u32; 2], u8> = LpmTrie::try_from(m).map_err(map_err("sluice_pol_set"))?;
        for (k, v) in t.iter().flatten() {
            let [id, addr] = k.data();
            sets.insert((id, addr, k.prefix_len().saturating_sub(32), v != 0));
        }
    }
    let (addrs, l7_port) = crate::policy_l7::read(dp)?;
    Ok(Written { endpoints, audit, sets, addrs, l7_port })
}

/// Write `want`'s entries of one endpoint map that differ from `have`'s, then remove the stale.
fn sync_eps(
    dp: &mut Datapath,
    map: &'static str,
    have: &BTreeMap<PolEpKey, PolEpVal>,
    want: &BTreeMap<PolEpKey, PolEpVal>,
) -> Result<usize, DatapathError> {
    let mut n = 0;
    let m = dp.bpf.map_mut(map).ok_or(DatapathError::Map { map, detail: "missing".into() })?;
    let mut h: HashMap<_, PolEpKey, PolEpVal> = HashMap::try_from(m).map_err(map_err(map))?;
    for (k, v) in want {
        if have.get(k) != Some(v) {
            h.insert(*k, *v, 0).map_err(map_err(map))?;
            n += 1;
        }
    }
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        let _ = h.remove(k);
        n += 1;
    }
    Ok(n)
}

/// Bring the maps from `have` to `want` without a gap: set entries first, endpoint and audit
/// entries, then stale set entries. Returns the writes made.
pub fn sync(dp: &mut Datapath, have: &Written, want: &Encoded) -> Result<usize, DatapathError> {
    let mut n = 0;
    let key_of = |r: &SetRow| (r.0, r.1, r.2);
    let want_keys: BTreeSet<(u32, u32, u32)> = want.sets.iter().map(key_of).collect();
    {
        let m = dp
            .bpf
            .map_mut("sluice_pol_set")
            .ok_or(DatapathError::Map { map: "sluice_pol_set", detail: "missing".into() })?;
        let mut t: LpmTrie<_, [u32; 2], u8> = LpmTrie::try_from(m).map_err(map_err("sluice_pol_set"))?;
        for row in want.sets.difference(&have.sets) {
            t.insert(&lpm(row), u8::from(row.3), 0).map_err(map_err("sluice_pol_set"))?;
            n += 1;
        }
    }
    n += crate::policy_l7::add_addrs(dp, &have.addrs, &want.addrs)?;
    n += sync_eps(dp, "sluice_pol_ep", &have.endpoints, &want.endpoints)?;
    n += sync_eps(dp, "sluice_pol_audit", &have.audit, &want.audit)?;
    n += crate::policy_l7::prune_addrs(dp, &have.addrs, &want.addrs)?;
    n += crate::policy_l7::set_port(dp, have.l7_port, want.l7_port)?;
    {
        let m = dp
            .bpf
            .map_mut("sluice_pol_set")
            .ok_or(DatapathError::Map { map: "sluice_pol_set", detail: "missing".into() })?;
        let mut t: LpmTrie<_, [u32; 2], u8> = LpmTrie::try_from(m).map_err(map_err("sluice_pol_set"))?;
        for row in have.sets.iter().filter(|r| !want_keys.contains(&key_of(r))) {
            let _ = t.remove(&lpm(row));
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use sluice_core::policy::{
        CompiledRule, DirectionPolicy, EndpointPolicy, EndpointRules, Enforcement, Identity, PeerMatch, PolicyKind,
        PolicyName,
    };

    use sluice_core::flow::drop::TagKey;

    use super::*;

    fn rule(peer: PeerMatch, port: u16) -> CompiledRule {
        CompiledRule {
            action: Action::Allow,
            peer,
            protocol: Some(Protocol::Tcp),
            ports: Some((port, port)),
            policy: PolicyName { kind: PolicyKind::NetworkPolicy, namespace: Some("x".into()), name: "p".into() },
            audit: false,
            http: vec![],
        }
    }

    fn view(rules: Vec<CompiledRule>) -> PolicyView {
        let ep = |iface: &str, ip: [u8; 4], enforced: bool| EndpointRules {
            ip: Ipv4Addr::from(ip),
            interface: iface.into(),
            pod: format!("x/{iface}"),
            policy: EndpointPolicy {
                identity: Identity(300),
                ingress: DirectionPolicy {
                    enforced,
                    selected_by: vec![],
                    audited_by: vec![],
                    rules: if enforced { rules.clone() } else { vec![] },
                },
                egress: DirectionPolicy::default(),
            },
        };
        PolicyView {
            generation: 1,
            enforcement: Enforcement::Default,
            endpoints: vec![ep("a", [10, 244, 1, 2], true), ep("b", [10, 244, 1, 3], false)],
            ipcache: [(Ipv4Addr::new(10, 244, 2, 2), Identity(400))].into(),
            log_drops: None,
            log_allows: false,
            l7_proxy: None,
            l7_frontends: vec![],
        }
    }

    fn idx(name: &str) -> Option<u32> {
        Some(if name == "a" { 7 } else { 8 })
    }

    #[test]
    fn every_endpoint_gets_entries_and_set_ids_stay_put() {
        let v = view(vec![rule(PeerMatch::Identities([Identity(400)].into()), 80), rule(PeerMatch::Any, 81)]);
        let (e, errs) = encode(&v, &idx, &BTreeMap::new(), &BTreeSet::new());
        assert!(errs.is_empty());
        assert_eq!(e.endpoints.len(), 4, "both directions of both endpoints (flows of unisolated ones are recorded)");
        let a = e.endpoints[&PolEpKey { ifindex: 7, dir: POL_INGRESS }];
        assert_eq!((a.enforced, a.count), (1, 2));
        assert_eq!(e.endpoints[&PolEpKey { ifindex: 8, dir: POL_INGRESS }].enforced, 0);
        let set = a.rules.iter().find(|r| r.peer == PEER_SET).expect("set rule");
        assert_eq!((set.lo, set.hi, set.proto, set.action), (80, 80, 6, ALLOW));
        assert_eq!(e.sets.len(), 1);
        // Again, with a set id taken by the pinned map: the key keeps its id from the last pass.
        let (again, _) = encode(&v, &idx, &e.ids, &[1, 2].into());
        assert_eq!(again.ids, e.ids);
        // A fresh key avoids ids still in the pinned map.
        let (fresh, _) = encode(&v, &idx, &BTreeMap::new(), &[1].into());
        assert!(fresh.ids.values().all(|id| *id != 1));
    }

    /// A drop event names a rule by its index in the encoded list: the attribution the agent
    /// builds (`tags_by_rule`) must hold a deny tag at every deny index, and nothing else.
    #[test]
    fn drop_attribution_indexes_the_encoded_rules() {
        let mut deny = rule(PeerMatch::Any, 22);
        deny.action = Action::Deny;
        deny.policy.name = "no-ssh".into();
        let mut proxy = rule(PeerMatch::Any, 8080);
        proxy.action = Action::Proxy;
        let v = view(vec![deny, proxy, rule(PeerMatch::Any, 80)]);
        let (e, _) = encode(&v, &idx, &BTreeMap::new(), &BTreeSet::new());
        let tags = sluice_core::flow::drop::tags_by_rule(&v);
        let a = e.endpoints[&PolEpKey { ifindex: 7, dir: POL_INGRESS }];
        let key = |iface: &str, audit| TagKey { interface: iface.into(), ingress: true, audit };
        let t = &tags[&key("a", false)];
        assert_eq!(t.rules.len(), a.count as usize);
        for (i, r) in a.rules[..a.count as usize].iter().enumerate() {
            let tag = t.rules[i].as_ref().expect("every rule is attributable");
            // A proxy rule drops where it is not redirected: attributed as a deny is; an allow
            // rule's tag names the verdict of a flow it admitted.
            assert_eq!(tag.allow, r.action != DENY && r.action != PROXY, "rule {i}");
        }
        let denied = t.rules.iter().flatten().find(|t| !t.allow).expect("a deny tag");
        assert_eq!((denied.pod.as_str(), denied.default_deny), ("x/a", false));
        assert!(denied.policies.iter().any(|p| p.contains("no-ssh")), "{:?}", denied.policies);
        assert!(t.default.default_deny);
        assert!(!tags.contains_key(&key("b", false)), "b is not isolated");
        assert!(e.audit.is_empty() && !tags.contains_key(&key("a", true)), "no audit policy, no audit list");
    }

    /// Proxy rules keep their place in the enforced list (redirected or dropped by the
    /// programs), count as allows in an audit list; the proxy port and the endpoint addresses
    /// go with them.
    #[test]
    fn proxy_rules_keep_their_place_with_the_port_and_addresses() {
        let mut proxy = rule(PeerMatch::Any, 80);
        proxy.action = Action::Proxy;
        let mut audit_deny = rule(PeerMatch::Any, 22);
        audit_deny.action = Action::Deny;
        audit_deny.audit = true;
        let mut v = view(vec![audit_deny, proxy, rule(PeerMatch::Any, 81)]);
        let (e, errs) = encode(&v, &idx, &BTreeMap::new(), &BTreeSet::new());
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(e.l7_port, 0, "no proxy runs: proxy rules drop");
        let key = PolEpKey { ifindex: 7, dir: POL_INGRESS };
        let actions = |v: &PolEpVal| v.rules[..v.count as usize].iter().map(|r| (r.action, r.lo)).collect::<Vec<_>>();
        assert_eq!(actions(&e.endpoints[&key]), vec![(PROXY, 80), (ALLOW, 81)]);
        assert!(actions(&e.audit[&key]).contains(&(ALLOW, 80)), "{:?}", actions(&e.audit[&key]));
        let addr = |a: [u8; 4]| u32::from_ne_bytes(a);
        assert_eq!(e.addrs, [(addr([10, 244, 1, 2]), 7), (addr([10, 244, 1, 3]), 8)].into());
        v.l7_proxy = Some(15001);
        assert_eq!(encode(&v, &idx, &BTreeMap::new(), &BTreeSet::new()).0.l7_port, 15001);
    }

    /// An audit policy gets its own list, and its tags index it the same way.
    #[test]
    fn audit_lists_are_encoded_apart_and_attributed_by_index() {
        let mut audit_deny = rule(PeerMatch::Any, 22);
        audit_deny.action = Action::Deny;
        audit_deny.audit = true;
        audit_deny.policy.name = "audit-no-ssh".into();
        let v = view(vec![audit_deny, rule(PeerMatch::Any, 80)]);
        let (e, errs) = encode(&v, &idx, &BTreeMap::new(), &BTreeSet::new());
        assert!(errs.is_empty(), "{errs:?}");
        let k = PolEpKey { ifindex: 7, dir: POL_INGRESS };
        let (enforced, audit) = (e.endpoints[&k], e.audit[&k]);
        assert_eq!(enforced.count, 1, "the audit deny never reaches the enforced list");
        assert_eq!((audit.count, audit.enforced), (2, 0), "audit deny, then the allow; no audit isolation");
        assert_eq!((audit.rules[0].action, audit.rules[0].lo), (DENY, 22));
        let tags = sluice_core::flow::drop::tags_by_rule(&v);
        let t = &tags[&TagKey { interface: "a".into(), ingress: true, audit: true }];
        let tag = t.rules[0].as_ref().expect("the audit deny's tag");
        assert!(tag.audit && tag.policies.iter().any(|p| p.contains("audit-no-ssh")), "{tag:?}");
        let allow = t.rules[1].as_ref().expect("the allow's tag");
        assert!(!allow.allow, "an audit list reports would-be drops only, never verdicts: {allow:?}");
    }

    #[test]
    fn too_many_rules_is_an_error_naming_the_endpoint_and_holds_back_no_other() {
        let a = PolEpKey { ifindex: 7, dir: POL_INGRESS };
        let b = PolEpKey { ifindex: 8, dir: POL_INGRESS };
        let rules: Vec<CompiledRule> = (0..40).map(|p| rule(PeerMatch::Any, 1000 + p)).collect();
        let (mut want, errs) = encode(&view(rules), &idx, &BTreeMap::new(), &BTreeSet::new());
        assert!(matches!(&errs[..], [PolicyError::TooManyRules { pod, rules: 40, .. }] if pod == "x/a"), "{errs:?}");
        assert_eq!(want.held, [(a, true)].into());
        assert!(want.endpoints.contains_key(&b) && !want.endpoints.contains_key(&a), "b is written, a is held");
        // a's last complete policy (a set rule) stays, with its set rows; b's change goes ahead.
        let (before, _) = encode(
            &view(vec![rule(PeerMatch::Identities([Identity(400)].into()), 80)]),
            &idx,
            &BTreeMap::new(),
            &BTreeSet::new(),
        );
        let have = Written::from(&before);
        keep_held(&mut want, &have);
        assert_eq!(want.endpoints[&a], before.endpoints[&a]);
        assert_eq!(want.sets, before.sets, "the set a's kept rule names");
        // An endpoint that never had an entry is not left unpoliced: it denies new flows.
        let (mut fresh, _) = encode(
            &view((0..40).map(|p| rule(PeerMatch::Any, 1000 + p)).collect()),
            &idx,
            &BTreeMap::new(),
            &BTreeSet::new(),
        );
        keep_held(&mut fresh, &Written::default());
        assert_eq!((fresh.endpoints[&a].enforced, fresh.endpoints[&a].count), (1, 0));
    }
}
