//! Cluster-level objects as sluice sees them after translation from a source.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::service::Service;

/// A node of the cluster: where its pods live and how to reach it on the underlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// The node's address on the underlay (Node.status.addresses InternalIP).
    pub internal_ip: Option<Ipv4Addr>,
    /// Node.spec.podCIDR; `None` while the node has none assigned yet.
    pub pod_cidr: Option<Ipv4Net>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A pod as the sources describe it (any node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub ip: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    /// Named containerPorts (network policy resolves named ports against them).
    #[serde(default)]
    pub ports: Vec<crate::policy::NamedPort>,
    /// The workload that owns the pod (a ReplicaSet's Deployment, a StatefulSet, ...), as
    /// Hubble names it on flows; `None` for a bare pod.
    #[serde(default)]
    pub workload: Option<crate::flow::Workload>,
}

/// A pod interface on *this* node, as wired by the CNI plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEndpoint {
    pub container_id: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub host_interface: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
}

/// Everything the sources say, translated. The agent keeps one and feeds it to backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Shared: a translation reuses the pods that did not change (10,000 pods per change).
    pub pods: Vec<std::sync::Arc<PodInfo>>,
    pub services: Vec<Service>,
    pub host_ports: Vec<crate::service::HostPort>,
    /// Objects the translation refused, each with the reason (shown in status, never fatal).
    pub rejected: Vec<Rejected>,
    /// Namespace -> labels (with `kubernetes.io/metadata.name`); namespaces without an object
    /// have that label only.
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Network policies of every kind, translated and validated.
    #[serde(default)]
    pub policies: Vec<crate::policy::Policy>,
}

pub use crate::validate::Rejected;

impl ClusterState {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }
}
