//! From policies and endpoints to what each endpoint enforces: per direction, whether it is
//! isolated, by which policies, and the list of rules (peer, protocol, port range, allow or
//! deny) that let traffic through. Backends encode these lists; `sluice policy trace` and
//! [`decide`] evaluate them, so the trace and the datapath read the same rules.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::identity::{Allocation, Identity, IdentityLabels, allocate, preferred};
use super::l7::HttpRule;
use super::model::{Direction, Enforcement, Entity, NsScope, Peer, Policy, PolicyName, PortSpec, Rule};
use crate::service::Protocol;

/// A containerPort as the Pod declares it (named ports resolve against these).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod with an address, anywhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEndpoint {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: Option<String>,
    pub labels: IdentityLabels,
    pub ports: Vec<NamedPort>,
}

pub struct PolicyInput<'a> {
    pub endpoints: &'a [PolicyEndpoint],
    pub policies: &'a [Policy],
    pub enforcement: Enforcement,
    /// The node whose view this is: its addresses are `host`, every other node's `remote-node`.
    pub node: &'a str,
    pub node_ips: &'a BTreeMap<String, Vec<Ipv4Addr>>,
    pub cluster_cidr: Ipv4Net,
    /// Addresses of the API server (`default/kubernetes` endpoints), the `kube-apiserver` entity.
    pub apiserver: &'a [Ipv4Addr],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// Allowed at L3/L4 to the node's L7 proxy only, which decides each request by the rule's
    /// `http` rules (a datapath that has no proxy lets nothing through: fails closed).
    Proxy,
}

/// Who a rule is about, as the datapath matches it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerMatch {
    Any,
    /// The addresses whose identity is one of these (the IP-to-identity map says which).
    Identities(BTreeSet<Identity>),
    Cidr {
        net: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
    /// Pods picked one by one (an egress named port resolved per destination pod).
    Ips(BTreeSet<Ipv4Addr>),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CompiledRule {
    pub action: Action,
    pub peer: PeerMatch,
    /// `None`: every protocol (and then every port).
    pub protocol: Option<Protocol>,
    /// Inclusive; `None`: every port.
    pub ports: Option<(u16, u16)>,
    pub policy: PolicyName,
    /// From a policy in audit mode: reported, never enforced.
    pub audit: bool,
    /// The requests a [`Action::Proxy`] rule lets through (empty for the other actions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionPolicy {
    /// Traffic not allowed by a rule is dropped.
    pub enforced: bool,
    /// The enforcing policies that isolate the endpoint in this direction (attribution of
    /// default-deny drops).
    pub selected_by: Vec<PolicyName>,
    /// Policies in audit mode that would isolate it.
    pub audited_by: Vec<PolicyName>,
    /// Deny rules first, then allows.
    pub rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    pub identity: Identity,
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

impl EndpointPolicy {
    pub fn direction(&self, d: Direction) -> &DirectionPolicy {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Peers already resolved to identities, per (peer, the policy's namespace).
type PeerCache = RefCell<HashMap<(Peer, Option<String>), BTreeSet<Identity>>>;

/// The cluster's identities and the label index over them. They depend only on the set of label
/// sets, so a caller keeps them between compiles: a policy change (or any change that moves no
/// label) reuses them instead of renumbering 10,000 label sets.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    pub allocation: Arc<Allocation>,
    /// Pod label (key, value) -> the identities carrying it: a selector with matchLabels looks
    /// at the identities of its rarest label only, not at every identity of the cluster.
    pub(crate) by_label: Arc<HashMap<(String, String), Vec<Identity>>>,
}

impl Identities {
    pub fn new(endpoints: &[PolicyEndpoint]) -> Self {
        let allocation = allocate(endpoints.iter().map(|e| e.labels.clone()));
        let mut by_label: HashMap<(String, String), Vec<Identity>> = HashMap::new();
        for (id, l) in &allocation.labels {
            for (k, v) in &l.pod {
                by_label.entry((k.clone(), v.clone())).or_default().push(*id);
            }
        }
        Identities { allocation: Arc::new(allocation), by_label: Arc::new(by_label) }
    }

    /// Which numbered identities these endpoints use, and the label sets not numbered here
    /// (each once): one lookup per endpoint.
    fn diff<'e>(&self, endpoints: &'e [PolicyEndpoint]) -> (HashSet<Identity>, Vec<&'e IdentityLabels>) {
        let mut seen = HashSet::new();
        let mut unknown: BTreeSet<&IdentityLabels> = BTreeSet::new();
        for e in endpoints {
            match self.allocation.get(&e.labels) {
                Some(id) => {
                    seen.insert(id);
                }
                None => {
                    unknown.insert(&e.labels);
                }
            }
        }
        (seen, unknown.into_iter().collect())
    }

    /// Are these exactly the label sets numbered here? Every endpoint's set is known, and as
    /// many distinct sets are seen as are numbered (a subset of the same size is the set).
    /// ([`Identities::update`] reaches the same answer through `renumbered`.)
    #[cfg(test)]
    pub(crate) fn covers(&self, endpoints: &[PolicyEndpoint]) -> bool {
        let (seen, unknown) = self.diff(endpoints);
        unknown.is_empty() && seen.len() == self.allocation.labels.len()
    }

    /// The numbering for `endpoints`, from `previous` where that gives the same numbers as a
    /// fresh start: `previous` itself when no label set came or went; `previous` with the sets
    /// that went removed and those that came added at their preferred numbers when that cannot
    /// disturb a collision; else numbered afresh.
    pub fn update(previous: Option<Identities>, endpoints: &[PolicyEndpoint]) -> Self {
        match previous {
            Some(p) => p.renumbered(endpoints).unwrap_or_else(|| Identities::new(endpoints)),
            None => Identities::new(endpoints),
        }
    }

    /// In place: the sets that went are removed and those that came get their preferred
    /// numbers, which is what [`allocate`] would give as long as no set that moved off its
    /// preferred number (a collision) is touched: a set that goes must not lie on a moved set's
    /// probe path (that set would move back), nor be a moved set; a set that comes must find its
    /// preferred number free and off every probe path. `None` otherwise (the caller numbers
    /// afresh); collisions are rare (~3 among 10,000 sets in a 2^24 space).
    pub(crate) fn renumbered(self, endpoints: &[PolicyEndpoint]) -> Option<Self> {
        let on_a_path = |id: Identity| {
            self.allocation.collisions.iter().any(|c| {
                let (p, g) = (c.preferred.0, c.given.0);
                // Probing wraps from MAX_CLUSTER to MIN_CLUSTER.
                if p <= g { (p..=g).contains(&id.0) } else { id.0 >= p || id.0 <= g }
            })
        };
        let (seen, unknown) = self.diff(endpoints);
        let gone: Vec<Identity> = self.allocation.labels.keys().filter(|id| !seen.contains(id)).copied().collect();
        if gone.is_empty() && unknown.is_empty() {
            return Some(self);
        }
        let mut came: Vec<(Identity, String, &IdentityLabels)> =
            unknown.into_iter().map(|l| (preferred(l), l.canonical(), l)).collect();
        came.sort();
        if gone.iter().any(|id| on_a_path(*id)) || came.iter().any(|(id, _, _)| on_a_path(*id)) {
            return None;
        }
        // Unshared after a pass (the compile context is dropped), so nothing is copied.
        let mut alloc = Arc::try_unwrap(self.allocation).unwrap_or_else(|a| (*a).clone());
        let mut by_label = Arc::try_unwrap(self.by_label).unwrap_or_else(|m| (*m).clone());
        for id in gone {
            let Some(l) = alloc.labels.remove(&id) else { continue };
            alloc.by_labels.remove(&l);
            for (k, v) in l.pod {
                let key = (k, v);
                if let Some(ids) = by_label.get_mut(&key) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        by_label.remove(&key);
                    }
                }
            }
        }
        for (id, _, l) in came {
            if alloc.labels.contains_key(&id) {
                return None;
            }
            alloc.labels.insert(id, l.clone());
            alloc.by_labels.insert(l.clone(), id);
            for (k, v) in &l.pod {
                let ids = by_label.entry((k.clone(), v.clone())).or_default();
                // Ascending, as a fresh index lists them.
                let at = ids.binary_search(&id).unwrap_or_else(|at| at);
                ids.insert(at, id);
            }
        }
        Some(Identities { allocation: Arc::new(alloc), by_label: Arc::new(by_label) })
    }
}

/// Everything the compiler derived once per state: identities and the IP-to-identity map.
pub struct PolicyContext<'a> {
    pub input: PolicyInput<'a>,
    pub identities: Arc<Allocation>,
    pub ipcache: BTreeMap<Ipv4Addr, Identity>,
    /// Identities a pod peer selects, per (peer, policy namespace): shared by every endpoint.
    peer_cache: PeerCache,
    by_label: Arc<HashMap<(String, String), Vec<Identity>>>,
}

impl<'a> PolicyContext<'a> {
    pub fn new(input: PolicyInput<'a>) -> Self {
        let ids = Identities::new(input.endpoints);
        Self::with_identities(input, &ids)
    }

    /// With identities numbered before ([`Identities::update`]); they must be those of
    /// `input.endpoints`.
    pub fn with_identities(input: PolicyInput<'a>, ids: &Identities) -> Self {
        let identities = ids.allocation.clone();
        let mut ipcache = BTreeMap::new();
        for (node, ips) in input.node_ips {
            let id = if node == input.node { Identity::HOST } else { Identity::REMOTE_NODE };
            for ip in ips {
                ipcache.insert(*ip, id);
            }
        }
        for ip in input.apiserver {
            ipcache.entry(*ip).or_insert(Identity::KUBE_APISERVER);
        }
        for e in input.endpoints {
            if let Some(id) = identities.get(&e.labels) {
                ipcache.insert(e.ip, id);
            }
        }
        PolicyContext {
            input,
            identities,
            ipcache,
            peer_cache: RefCell::new(HashMap::new()),
            by_label: ids.by_label.clone(),
        }
    }

    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<&'a PolicyEndpoint> {
        self.input.endpoints.iter().find(|e| e.ip == ip)
    }

    /// The identity of an address: a pod's, a node's, or `world`.
    pub fn identity_of(&self, ip: Ipv4Addr) -> Identity {
        match self.ipcache.get(&ip) {
            Some(id) => *id,
            None if self.input.cluster_cidr.contains(&ip) => Identity::UNMANAGED,
            None => Identity::WORLD,
        }
    }

    fn selects(p: &Policy, e: &PolicyEndpoint) -> bool {
        if p.subject.namespace.as_ref().is_some_and(|ns| *ns != e.namespace) {
            return false;
        }
        if p.subject.extended {
            p.subject.selector.matches(&e.labels.extended())
        } else {
            p.subject.selector.matches(&e.labels.pod)
        }
    }

    /// The policies that select `e` (any direction).
    pub fn selecting(&self, e: &PolicyEndpoint) -> Vec<&'a Policy> {
        self.input.policies.iter().filter(|p| Self::selects(p, e)).collect()
    }

    pub fn compile(&self, e: &PolicyEndpoint) -> EndpointPolicy {
        let selecting = self.selecting(e);
        EndpointPolicy {
            identity: self.identities.get(&e.labels).unwrap_or(Identity::UNMANAGED),
            ingress: self.direction(e, &selecting, Direction::Ingress),
            egress: self.direction(e, &selecting, Direction::Egress),
        }
    }

    fn direction(&self, e: &PolicyEndpoint, selecting: &[&Policy], d: Direction) -> DirectionPolicy {
        let isolating: Vec<&&Policy> = selecting.iter().filter(|p| p.isolates(d)).collect();
        let mut out = DirectionPolicy {
            enforced: match self.input.enforcement {
                Enforcement::Never => false,
                Enforcement::Always => true,
                Enforcement::Default => isolating.iter().any(|p| !p.audit),
            },
            selected_by: isolating.iter().filter(|p| !p.audit).map(|p| p.name.clone()).collect(),
            audited_by: isolating.iter().filter(|p| p.audit).map(|p| p.name.clone()).collect(),
            rules: Vec::new(),
        };
        if self.input.enforcement == Enforcement::Never {
            return out;
        }
        let mut rules = BTreeSet::new();
        for p in &isolating {
            let (allow, deny) = p.rules(d);
            for r in deny {
                self.rule(e, p, d, r, Action::Deny, &mut rules);
            }
            for r in allow.into_iter().flatten() {
                self.rule(e, p, d, r, Action::Allow, &mut rules);
            }
        }
        // Deny first (BTreeSet order puts Allow before Deny: sort by action reversed).
        let (deny, allow): (Vec<_>, Vec<_>) = rules.into_iter().partition(|r: &CompiledRule| r.action == Action::Deny);
        out.rules = deny.into_iter().chain(allow).collect();
        out
    }

    fn rule(
        &self,
        e: &PolicyEndpoint,
        p: &Policy,
        d: Direction,
        r: &Rule,
        action: Action,
        out: &mut BTreeSet<CompiledRule>,
    ) {
        let mk_http =
            |peer: PeerMatch, protocol: Option<Protocol>, ports: Option<(u16, u16)>, http: &Option<Vec<HttpRule>>| {
                // HTTP rules turn an allow into a redirect to the proxy (deny rules carry none:
                // the source refuses them there).
                let (action, http) = match (action, http) {
                    (Action::Allow, Some(h)) => (Action::Proxy, h.clone()),
                    _ => (action, Vec::new()),
                };
                CompiledRule { action, peer, protocol, ports, policy: p.name.clone(), audit: p.audit, http }
            };
        let mk = |peer, protocol, ports| mk_http(peer, protocol, ports, &None);
        let peers: Vec<PeerMatch> = match &r.peers {
            None => vec![PeerMatch::Any],
            Some(ps) => ps.iter().flat_map(|peer| self.peer(peer, p.name.namespace.as_deref())).collect(),
        };
        let Some(ports) = &r.ports else {
            for m in peers {
                out.insert(mk(m, None, None));
            }
            return;
        };
        for pr in ports {
            match &pr.port {
                None => peers.iter().for_each(|m| {
                    out.insert(mk_http(m.clone(), Some(pr.protocol), None, &pr.http));
                }),
                Some(PortSpec::Range { port, end }) => peers.iter().for_each(|m| {
                    out.insert(mk_http(m.clone(), Some(pr.protocol), Some((*port, *end)), &pr.http));
                }),
                Some(PortSpec::Named(name)) => match d {
                    // Ingress: the name is this pod's own containerPort.
                    Direction::Ingress => {
                        if let Some(n) = resolve(e, name, pr.protocol) {
                            peers.iter().for_each(|m| {
                                out.insert(mk_http(m.clone(), Some(pr.protocol), Some((n, n)), &pr.http));
                            });
                        }
                    }
                    // Egress: per destination pod, grouped by the number the name has there.
                    Direction::Egress => {
                        let mut by_port: BTreeMap<u16, BTreeSet<Ipv4Addr>> = BTreeMap::new();
                        for dst in self.input.endpoints {
                            let Some(n) = resolve(dst, name, pr.protocol) else { continue };
                            let id = self.identity_of(dst.ip);
                            if peers.iter().any(|m| peer_matches(m, dst.ip, id)) {
                                by_port.entry(n).or_default().insert(dst.ip);
                            }
                        }
                        for (n, ips) in by_port {
                            out.insert(mk_http(PeerMatch::Ips(ips), Some(pr.protocol), Some((n, n)), &pr.http));
                        }
                    }
                },
            }
        }
    }

    /// What a peer matches in the datapath.
    fn peer(&self, peer: &Peer, policy_ns: Option<&str>) -> Vec<PeerMatch> {
        match peer {
            Peer::Cidr { net, except } => vec![PeerMatch::Cidr { net: *net, except: except.clone() }],
            Peer::Entity(en) => self.entity(*en),
            Peer::Pods { .. } => {
                let key = (peer.clone(), policy_ns.map(str::to_string));
                if let Some(ids) = self.peer_cache.borrow().get(&key) {
                    return vec![PeerMatch::Identities(ids.clone())];
                }
                let ids: BTreeSet<Identity> = match self.candidates(peer) {
                    Some(c) => c
                        .iter()
                        .filter(|id| self.identities.labels.get(id).is_some_and(|l| pod_peer_matches(peer, l)))
                        .copied()
                        .collect(),
                    None => self
                        .identities
                        .labels
                        .iter()
                        .filter(|(_, l)| pod_peer_matches(peer, l))
                        .map(|(id, _)| *id)
                        .collect(),
                };
                self.peer_cache.borrow_mut().insert(key, ids.clone());
                vec![PeerMatch::Identities(ids)]
            }
        }
    }

    /// The identities that can match a pod peer at all: those with its rarest matchLabels pair
    /// (`None`: it pins no pod label, look at every identity).
    fn candidates(&self, peer: &Peer) -> Option<&Vec<Identity>> {
        let Peer::Pods { pods, .. } = peer else { return None };
        let empty: &Vec<Identity> = {
            static EMPTY: Vec<Identity> = Vec::new();
            &EMPTY
        };
        pods.match_labels
            .iter()
            .filter(|(k, _)| {
                !k.starts_with(super::identity::NAMESPACE_LABELS_PREFIX) && *k != super::identity::NAMESPACE_KEY
            })
            .map(|(k, v)| self.by_label.get(&(k.clone(), v.clone())).unwrap_or(empty))
            .min_by_key(|c| c.len())
    }

    fn entity(&self, en: Entity) -> Vec<PeerMatch> {
        let ids = |v: &[Identity]| PeerMatch::Identities(v.iter().copied().collect());
        match en {
            Entity::All => vec![PeerMatch::Any],
            Entity::Host => vec![ids(&[Identity::HOST])],
            Entity::RemoteNode => vec![ids(&[Identity::REMOTE_NODE])],
            Entity::KubeApiserver => vec![ids(&[Identity::KUBE_APISERVER])],
            Entity::Cluster => {
                let mut all: BTreeSet<Identity> = self.identities.labels.keys().copied().collect();
                all.extend([Identity::HOST, Identity::REMOTE_NODE, Identity::HEALTH, Identity::INIT]);
                vec![PeerMatch::Identities(all), PeerMatch::Cidr { net: self.input.cluster_cidr, except: vec![] }]
            }
            Entity::World => {
                let mut except = vec![self.input.cluster_cidr];
                for ip in self.input.node_ips.values().flatten() {
                    except.push(Ipv4Net::from(*ip));
                }
                except.sort();
                except.dedup();
                vec![PeerMatch::Cidr { net: Ipv4Net::default(), except }]
            }
        }
    }
}

fn resolve(e: &PolicyEndpoint, name: &str, proto: Protocol) -> Option<u16> {
    e.ports.iter().find(|p| p.name == name && p.protocol == proto).map(|p| p.port)
}

fn pod_peer_matches(peer: &Peer, l: &IdentityLabels) -> bool {
    let Peer::Pods { namespaces, pods, extended } = peer else { return false };
    let ns_ok = match namespaces {
        NsScope::Any => true,
        NsScope::Named(n) => *n == l.namespace,
        NsScope::Selector(s) => s.matches(&l.namespace_labels),
    };
    ns_ok && if *extended { pods.matches(&l.extended()) } else { pods.matches(&l.pod) }
}

/// Whether an address (with its identity) is one a rule's peer names.
pub fn peer_matches(m: &PeerMatch, ip: Ipv4Addr, id: Identity) -> bool {
    match m {
        PeerMatch::Any => true,
        PeerMatch::Identities(ids) => ids.contains(&id),
        PeerMatch::Cidr { net, except } => net.contains(&ip) && !except.iter().any(|x| x.contains(&ip)),
        PeerMatch::Ips(ips) => ips.contains(&ip),
    }
}

pub fn rule_matches(r: &CompiledRule, ip: Ipv4Addr, id: Identity, proto: Protocol, port: u16) -> bool {
    peer_matches(&r.peer, ip, id)
        && r.protocol.is_none_or(|p| p == proto)
        && r.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Decision {
    /// No policy isolates the endpoint in this direction.
    NotIsolated,
    /// Traffic to a pod from its own node is always allowed (kubelet probes, as Kubernetes asks).
    FromOwnNode,
    Allowed {
        policy: PolicyName,
    },
    Denied {
        policy: PolicyName,
    },
    /// Allowed at L3/L4 to the node's L7 proxy, which decides each HTTP request.
    ToProxy {
        policy: PolicyName,
    },
    /// Isolated and no rule allows it: "default deny because these policies select the pod".
    DefaultDeny {
        selected_by: Vec<PolicyName>,
    },
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(
            self,
            Decision::NotIsolated | Decision::FromOwnNode | Decision::Allowed { .. } | Decision::ToProxy { .. }
        )
    }
}

/// The verdict of one direction for a peer (address and identity) on `proto`/`port`, and what an
/// audit-mode policy would have decided (`Some` only when that differs and would drop).
pub fn decide(
    d: &DirectionPolicy,
    ip: Ipv4Addr,
    id: Identity,
    proto: Protocol,
    port: u16,
) -> (Decision, Option<Decision>) {
    let hit = |audit: bool, action: Action| {
        d.rules.iter().find(|r| r.audit == audit && r.action == action && rule_matches(r, ip, id, proto, port))
    };
    let enforced = if let Some(r) = hit(false, Action::Deny) {
        Decision::Denied { policy: r.policy.clone() }
    } else if let Some(r) = hit(false, Action::Allow) {
        Decision::Allowed { policy: r.policy.clone() }
    } else if let Some(r) = hit(false, Action::Proxy) {
        Decision::ToProxy { policy: r.policy.clone() }
    } else if d.enforced {
        Decision::DefaultDeny { selected_by: d.selected_by.clone() }
    } else {
        Decision::NotIsolated
    };
    let audit = if !enforced.allowed() {
        None
    } else if let Some(r) = hit(true, Action::Deny) {
        Some(Decision::Denied { policy: r.policy.clone() })
    } else if !d.audited_by.is_empty()
        && !matches!(enforced, Decision::Allowed { .. } | Decision::ToProxy { .. })
        && hit(true, Action::Allow).is_none()
        && hit(true, Action::Proxy).is_none()
    {
        Some(Decision::DefaultDeny { selected_by: d.audited_by.clone() })
    } else {
        None
    };
    (enforced, audit)
}
