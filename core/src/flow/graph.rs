//! The service map: recent flows folded into who talks to whom. Workloads (pods grouped by
//! their workload, else their `app` label, else their name), Services, and the reserved peers
//! (world, host, remote-node) are the nodes; an edge is one (from, to, port, protocol) with its
//! counts per verdict and the policies that decided it. A flow through a Service is two edges:
//! client to Service, Service to the backend reached (Hubble UI's empty maps come from
//! dropping one of them). L7 flows add HTTP status counts to the client -> server edge: a
//! response's code (the response flow runs server -> client and is folded back onto the
//! request's edge), 403 for a request the proxy refused.

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
    /// HTTP status -> responses on this edge (from L7 flows); empty without an L7 policy.
    pub http: BTreeMap<u16, u64>,
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

/// An L7 response flow (server -> client): counted on its request's edge.
fn l7_response(f: &Flow) -> bool {
    f.l7.as_ref().is_some_and(|l| l.r#type == super::l7::L7Type::Response)
}

/// The edges one flow is on, as (from, to): one, or two through the Service it used.
fn hops(f: &Flow) -> Vec<(MapNode, MapNode)> {
    let mut src = node_of(&f.source, f.source_ip);
    let mut dst = node_of(&f.destination, f.destination_ip);
    if l7_response(f) {
        std::mem::swap(&mut src, &mut dst);
    }
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

/// The edge's port: the destination port (the server's, for an L7 response).
fn dport(f: &Flow) -> u16 {
    f.l4.and_then(|l| l.ports()).map_or(0, |p| if l7_response(f) { p.0 } else { p.1 })
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
                http: BTreeMap::new(),
            });
            e.last_seen_ns = e.last_seen_ns.max(f.time_ns);
            nodes.entry(a.id.clone()).or_insert(a);
            nodes.entry(b.id.clone()).or_insert(b);
            if let Some(l7) = &f.l7 {
                // A response is the status of a request already counted; a refused request
                // was answered 403 by the proxy.
                if l7_response(f) {
                    *e.http.entry(l7.http.code).or_default() += 1;
                    continue;
                }
                if f.verdict == Verdict::Dropped {
                    *e.http.entry(403).or_default() += 1;
                }
            }
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
    fn l7_flows_put_http_statuses_on_the_request_edge() {
        use crate::flow::l7::ObservedHttp;
        let ip = |d| std::net::Ipv4Addr::new(10, 244, 1, d);
        let p = |name: &str, d| crate::flow::tests::pod("x", name, &ip(d).to_string(), "node-1", name);
        let dir = crate::flow::enrich::Directory::new("node-1", &[p("client", 2), p("echo", 3)], &[], |_| None, &[]);
        let exchange = |port, code, denied: bool| ObservedHttp {
            time_ns: 1,
            ingress: true,
            client: (ip(2), port),
            server: (ip(3), 80),
            method: "GET".into(),
            url: "http://echo/".into(),
            protocol: "HTTP/1.1".into(),
            code,
            latency_ns: 1,
            denied_by: denied.then(|| vec!["SluiceNetworkPolicy x/l7".into()]),
            allowed_by: vec![],
            request_headers: vec![],
            response_headers: vec![],
        };
        let mut flows = dir.http(&exchange(40000, 200, false));
        flows.extend(dir.http(&exchange(40001, 200, false)));
        flows.extend(dir.http(&exchange(40002, 403, true)));
        let m = build(&flows, None);
        assert_eq!(m.edges.len(), 1, "responses fold onto the request's edge: {:?}", m.edges);
        let e = &m.edges[0];
        assert_eq!((e.from.as_str(), e.to.as_str(), e.port), ("workload:x/client", "workload:x/echo", 80));
        assert_eq!(e.http, [(200, 2), (403, 1)].into());
        assert_eq!((e.forwarded, e.dropped, e.verdict), (2, 1, "mixed"), "requests are counted, responses not");
        assert!(flows.iter().all(|f| edge_keys(f) == vec!["workload:x/client|workload:x/echo|80".to_string()]));
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
