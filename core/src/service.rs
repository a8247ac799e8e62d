//! Services as frontends and backends. Sources translate Kubernetes Services and
//! EndpointSlices into these; backends (iptables, eBPF) program them.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// How traffic reaches a frontend; one Service yields several frontends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    pub kind: FrontendKind,
    /// `None` for NodePort: it listens on every node address.
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub protocol: Protocol,
    /// The Service port's name; backends are matched to frontends by it.
    pub port_name: String,
    /// The backend port the Service port maps to (resolved per backend for named ports).
    pub target_port: u16,
}

/// EndpointSlice conditions, kept as Kubernetes defines them so the backends can apply
/// kube-proxy's rules (serving-but-terminating endpoints are used only when nothing is ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    Active,
    Terminating,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    pub port_name: String,
    pub protocol: Protocol,
    pub state: BackendState,
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: ServiceName,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    /// sessionAffinity: ClientIP, with its timeout in seconds.
    #[serde(default)]
    pub affinity_timeout_s: Option<u32>,
    /// externalTrafficPolicy: Local (NodePort, ExternalIPs, LoadBalancer use only this node's endpoints).
    #[serde(default)]
    pub external_local: bool,
    /// internalTrafficPolicy: Local (ClusterIP uses only this node's endpoints).
    #[serde(default)]
    pub internal_local: bool,
    /// loadBalancerSourceRanges: who may reach the LoadBalancer IPs (empty: everyone).
    #[serde(default)]
    pub source_ranges: Vec<ipnet::Ipv4Net>,
    #[serde(default)]
    pub health_check_node_port: Option<u16>,
}

/// A pod's hostPort: traffic to a node address on `host_port` goes to the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    pub pod: String,
    pub node: Option<String>,
    pub host_ip: Option<std::net::Ipv4Addr>,
    pub host_port: u16,
    pub protocol: Protocol,
    pub pod_ip: std::net::Ipv4Addr,
    pub container_port: u16,
}

impl Service {
    /// Backends that should receive new connections for a frontend's port.
    pub fn usable_backends<'a>(&'a self, fe: &'a Frontend) -> impl Iterator<Item = &'a Backend> + 'a {
        let ready = self
            .backends
            .iter()
            .any(|b| b.port_name == fe.port_name && b.protocol == fe.protocol && b.state == BackendState::Active);
        self.backends.iter().filter(move |b| {
            b.port_name == fe.port_name
                && b.protocol == fe.protocol
                && match b.state {
                    BackendState::Active => true,
                    // kube-proxy falls back to serving terminating endpoints only when none is ready.
                    BackendState::Terminating => !ready,
                    BackendState::NotReady => false,
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{ServiceBuilder, backend, terminating};

    #[test]
    fn terminating_used_only_without_ready() {
        let mut not_ready = backend("10.244.1.4", 8080, "");
        not_ready.state = super::BackendState::NotReady;
        let mut svc = ServiceBuilder::new("default", "web")
            .cluster_ip("10.96.0.10", 80)
            .backend(backend("10.244.1.2", 8080, ""))
            .backend(terminating(backend("10.244.1.3", 8080, "")))
            .backend(not_ready)
            .build();
        let fe = svc.frontends[0].clone();
        let ips: Vec<_> = svc.usable_backends(&fe).map(|b| b.ip.to_string()).collect();
        assert_eq!(ips, ["10.244.1.2"]);
        svc.backends.remove(0);
        let ips: Vec<_> = svc.usable_backends(&fe).map(|b| b.ip.to_string()).collect();
        assert_eq!(ips, ["10.244.1.3"]);
    }
}
