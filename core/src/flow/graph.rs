//! The service map: recent flows folded into who talks to whom. Workloads (pods grouped by
//! their workload, else their `app` label, else their name), Services, and the reserved peers
//! (world, host, remote-node) are the nodes; an edge is one (from, to, port, protocol) with its
//! counts per verdict and the policies that decided it. A flow through a Service is two edges:
//! client to Service, Service to the backend reached (Hubble UI's empty maps come from
//! dropping one of them).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Endpoint, Flow, Verdict};
use crate::policy::Identity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    Workload,
    Service,
    World,
    Host,
    RemoteNode,
    /// An address sluice cannot name (no pod, no reserved identity).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapNode {
    /// `kind:namespace/name` (unique).
    pub id: String,
    pub kind: NodeKind,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapEdge {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    pub forwarded: u64,
    pub dropped: u64,
    /// `forwarded`, `dropped` or `mixed`: what the UI colours the edge by.
    pub verdict: &'static str,
    /// Policies that allowed or denied flows on this edge.
    pub allowed_by: Vec<String>,
    pub denied_by: Vec<String>,
    /// When the last flow on this edge was seen (ns since the epoch).
    pub last_seen_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceMap {
    pub nodes: Vec<MapNode>,
    pub edges: Vec<MapEdge>,
    /// Every namespace seen (for the picker).
    pub namespaces: Vec<String>,
}

fn workload_name(ep: &Endpoint) -> String {
    if let Some(w) = &ep.workload {
        return w.name.clone();
    }
    for key in ["app.kubernetes.io/name", "k8s-app", "app"] {
        let prefix = format!("k8s:{key}=");
        if let Some(v) = ep.labels.iter().find_map(|l| l.strip_prefix(prefix.as_str())) {
            return v.to_string();
        }
    }
    ep.pod_name.clone()
}

fn node_of(ep: &Endpoint, ip: std::net::Ipv4Addr) -> MapNode {
    if !ep.pod_name.is_empty() {
        let name = workload_name(ep);
        return MapNode {
            id: format!("workload:{}/{name}", ep.namespace),
            kind: NodeKind::Workload,
            namespace: ep.namespace.clone(),
            name,
        };
    }
    // Reserved peers are one node each (every world address is "world"); an address sluice
    // cannot name stays one node per address.
    let (kind, id) = match Identity(ep.identity) {
        Identity::WORLD => (NodeKind::World, "world".to_string()),
        Identity::HOST => (NodeKind::Host, "host".to_string()),
        Identity::REMOTE_NODE => (NodeKind::RemoteNode, "remote-node".to_string()),
        _ => (NodeKind::Unknown, format!("ip:{ip}")),
    };
    let name = if kind == NodeKind::Unknown { ip.to_string() } else { id.clone() };
    MapNode { id, kind, namespace: String::new(), name }
}

/// The edges one flow is on, as (from, to): one, or two through the Service it used.
fn hops(f: &Flow) -> Vec<(MapNode, MapNode)> {
    let src = node_of(&f.source, f.source_ip);
    let dst = node_of(&f.destination, f.destination_ip);
    match &f.destination_service {
        Some(s) => {
            let svc = MapNode {
                id: format!("service:{}/{}", s.namespace, s.name),
                kind: NodeKind::Service,
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            };
            vec![(src, svc.clone()), (svc, dst)]
        }
        None => vec![(src, dst)],
    }
}

fn dport(f: &Flow) -> u16 {
    f.l4.and_then(|l| l.ports()).map_or(0, |p| p.1)
}

/// The keys (`from|to|port`) of the edges `f` is on, as the UI matches flows to a clicked edge.
pub fn edge_keys(f: &Flow) -> Vec<String> {
    hops(f).into_iter().map(|(a, b)| format!("{}|{}|{}", a.id, b.id, dport(f))).collect()
}

/// Fold `flows` (oldest first) into a map, keeping only what touches `namespace` when given.
pub fn build(flows: &[Flow], namespace: Option<&str>) -> ServiceMap {
    let mut nodes: BTreeMap<String, MapNode> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String, u16, String), MapEdge> = BTreeMap::new();
    let mut namespaces: Vec<String> = Vec::new();
    for f in flows {
        for ns in [&f.source.namespace, &f.destination.namespace] {
            if !ns.is_empty() && !namespaces.contains(ns) {
                namespaces.push(ns.clone());
            }
        }
        if let Some(ns) = namespace {
            let touches = f.source.namespace == ns
                || f.destination.namespace == ns
                || f.destination_service.as_ref().is_some_and(|s| s.namespace == ns);
            if !touches {
                continue;
            }
        }
        let protocol = f.l4.map_or("IP", |l| l.protocol()).to_string();
        let port = dport(f);
        for (a, b) in hops(f) {
            let key = (a.id.clone(), b.id.clone(), port, protocol.clone());
            let e = edges.entry(key).or_insert_with(|| MapEdge {
                from: a.id.clone(),
                to: b.id.clone(),
                port,
                protocol: protocol.clone(),
                forwarded: 0,
                dropped: 0,
                verdict: "forwarded",
                allowed_by: Vec::new(),
                denied_by: Vec::new(),
                last_seen_ns: 0,
            });
            match f.verdict {
                Verdict::Dropped => e.dropped += 1,
                _ => e.forwarded += 1,
            }
            e.verdict = match (e.forwarded, e.dropped) {
                (_, 0) => "forwarded",
                (0, _) => "dropped",
                _ => "mixed",
            };
            for p in &f.policy.allowed_by {
                if !e.allowed_by.contains(p) {
                    e.allowed_by.push(p.clone());
                }
            }
            for p in &f.policy.denied_by {
                if !e.denied_by.contains(p) {
                    e.denied_by.push(p.clone());
                }
            }
            e.last_seen_ns = e.last_seen_ns.max(f.time_ns);
            nodes.entry(a.id.clone()).or_insert(a);
            nodes.entry(b.id.clone()).or_insert(b);
        }
    }
    namespaces.sort();
    ServiceMap { nodes: nodes.into_values().collect(), edges: edges.into_values().collect(), namespaces }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::tests::flow;

    #[test]
    fn a_service_flow_is_two_edges_and_workloads_group_pods() {
        let mut a = flow(1, Verdict::Forwarded);
        let mut b = flow(2, Verdict::Dropped);
        b.source.pod_name = "client-9x2k".into();
        b.policy.denied_by = vec!["default/deny-all".into()];
        a.source.pod_name = "client-7d4f".into();
        let keys = edge_keys(&a);
        let m = build(&[a, b], None);
        let built: Vec<String> = m.edges.iter().map(|e| format!("{}|{}|{}", e.from, e.to, e.port)).collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| built.contains(k)), "{keys:?} in {built:?}");
        let ids: Vec<&str> = m.nodes.iter().map(|n| n.id.as_str()).collect();
        // Both client pods carry app=client: one workload.
        assert_eq!(ids, ["service:default/web", "workload:default/client", "workload:default/web"]);
        assert_eq!(m.edges.len(), 2);
        let e = &m.edges.iter().find(|e| e.to == "service:default/web").expect("client -> service");
        assert_eq!((e.forwarded, e.dropped, e.verdict, e.port), (1, 1, "mixed", 80));
        assert_eq!(e.denied_by, vec!["default/deny-all".to_string()]);
        assert_eq!(m.namespaces, vec!["default".to_string()]);
    }

    #[test]
    fn reserved_peers_are_one_node_each_and_namespaces_filter() {
        let mut w = flow(1, Verdict::Forwarded);
        w.source = Endpoint { identity: 2, ..Default::default() };
        w.destination_service = None;
        let mut w2 = w.clone();
        w2.source_ip = std::net::Ipv4Addr::new(8, 8, 8, 8);
        let mut other = flow(3, Verdict::Forwarded);
        other.source.namespace = "x".into();
        other.destination.namespace = "x".into();
        other.destination_service = None;
        let m = build(&[w, w2, other.clone()], None);
        assert_eq!(m.nodes.iter().filter(|n| n.kind == NodeKind::World).count(), 1);
        assert_eq!(m.namespaces, vec!["default".to_string(), "x".to_string()]);
        let only_x = build(&[other], Some("default"));
        assert!(only_x.edges.is_empty());
    }
}
