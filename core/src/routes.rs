//! Native routing between nodes: every other node's pod CIDR is routed via its underlay IP.
//! Computing and diffing the routes is pure; the netlink side lives in the iptables/netlink
//! backend.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::NodeInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodRoute {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
}

/// Routes this node needs: one per *other* node that has both a pod CIDR and an underlay IP.
/// Nodes lacking either are skipped: a route without a gateway would black-hole traffic.
pub fn desired_pod_routes<'a>(local_node: &str, nodes: impl IntoIterator<Item = &'a NodeInfo>) -> BTreeSet<PodRoute> {
    nodes
        .into_iter()
        .filter(|n| n.name != local_node)
        .filter_map(|n| Some(PodRoute { dst: n.pod_cidr?, via: n.internal_ip? }))
        .collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteDiff {
    pub add: Vec<PodRoute>,
    pub remove: Vec<PodRoute>,
}

/// Compare what should be with what sluice-owned routes exist. A destination whose gateway
/// changed appears in both lists (replace = add new, remove old). `prune` is false until the
/// sources are in sync, so a half-loaded source never removes routes.
pub fn diff_routes(desired: &BTreeSet<PodRoute>, observed: &BTreeSet<PodRoute>, prune: bool) -> RouteDiff {
    RouteDiff {
        add: desired.difference(observed).copied().collect(),
        remove: if prune { observed.difference(desired).copied().collect() } else { Vec::new() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: Option<&str>, cidr: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            internal_ip: ip.map(|s| s.parse().expect("ip")),
            pod_cidr: cidr.map(|s| s.parse().expect("cidr")),
            labels: Default::default(),
        }
    }

    #[test]
    fn routes_skip_self_and_incomplete_nodes() {
        let nodes = [
            node("a", Some("198.51.100.11"), Some("10.244.1.0/24")),
            node("b", Some("198.51.100.12"), Some("10.244.2.0/24")),
            node("c", None, Some("10.244.3.0/24")),
            node("d", Some("198.51.100.14"), None),
        ];
        let r = desired_pod_routes("a", &nodes);
        assert_eq!(r.len(), 1);
        let only = r.iter().next().expect("one route");
        assert_eq!(only.dst.to_string(), "10.244.2.0/24");
        assert_eq!(only.via.to_string(), "198.51.100.12");
    }

    #[test]
    fn diff_does_not_prune_before_sync() {
        let a = PodRoute { dst: "10.244.2.0/24".parse().expect("net"), via: "198.51.100.12".parse().expect("ip") };
        let b = PodRoute { dst: "10.244.3.0/24".parse().expect("net"), via: "198.51.100.13".parse().expect("ip") };
        let desired: BTreeSet<_> = [a].into();
        let observed: BTreeSet<_> = [b].into();
        assert_eq!(diff_routes(&desired, &observed, false), RouteDiff { add: vec![a], remove: vec![] });
        assert_eq!(diff_routes(&desired, &observed, true), RouteDiff { add: vec![a], remove: vec![b] });
    }

    #[test]
    fn gateway_change_is_add_and_remove() {
        let old = PodRoute { dst: "10.244.2.0/24".parse().expect("net"), via: "198.51.100.12".parse().expect("ip") };
        let new = PodRoute { via: "198.51.100.22".parse().expect("ip"), ..old };
        let d = diff_routes(&[new].into(), &[old].into(), true);
        assert_eq!(d.add, vec![new]);
        assert_eq!(d.remove, vec![old]);
    }
}
