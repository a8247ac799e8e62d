//! The service view: kube-proxy's semantics of a Service on one node, defined once. Which
//! feature each frontend is, which backends take new connections (cluster-wide and this node's
//! only, ready before terminating), which of them traffic policy Local leaves, this node's
//! hostPorts. The iptables renderer, the eBPF map encoder and the health servers all read it;
//! none derives these on its own.
//!
//! The view is evaluated per Service when an encoder asks ([`ServiceView::ports`]), not
//! materialised for every Service per state: both encoders are incremental (one changed Service
//! at 10k is re-encoded alone, in a few ms on eBPF), and a full per-state copy would cost every
//! single change more than the change itself.

use std::net::IpAddr;

use crate::plan::Feature;
use crate::service::{Backend, Frontend, FrontendKind, HostPort, Protocol, Service};

impl FrontendKind {
    /// The plan feature that serves this kind of frontend.
    pub fn feature(self) -> Feature {
        match self {
            FrontendKind::ClusterIp => Feature::ClusterIp,
            FrontendKind::NodePort => Feature::NodePort,
            FrontendKind::ExternalIp => Feature::ExternalIps,
            FrontendKind::LoadBalancer => Feature::LoadBalancer,
        }
    }
}

/// Everything the backends encode for one node: the services, the hostPorts and whose node
/// this is. Cheap to build (borrows only).
#[derive(Debug, Clone, Copy)]
pub struct ServiceView<'a> {
    pub node: &'a str,
    pub services: &'a [Service],
    /// Every hostPort the source knows; [`ServiceView::host_ports`] yields this node's.
    pub all_host_ports: &'a [HostPort],
}

/// One Service port (a port name and protocol) with its frontends and backends.
#[derive(Debug, Clone)]
pub struct PortView<'a> {
    pub port_name: &'a str,
    pub protocol: Protocol,
    /// The frontends of this port (ClusterIP, NodePort, ExternalIPs, LoadBalancer IPs).
    pub frontends: Vec<&'a Frontend>,
    /// IPv4 backends taking new connections (ready ones; terminating ones only when none is ready).
    pub usable: Vec<&'a Backend>,
    /// The subset of `usable` on this node.
    pub local: Vec<&'a Backend>,
    internal_local: bool,
    external_local: bool,
}

impl<'a> PortView<'a> {
    /// Backends for traffic from inside the cluster (ClusterIP): this node's only under
    /// `internalTrafficPolicy: Local`. Whoever serves the ClusterIP applies it: it is part of
    /// the ClusterIP's meaning, not of the NodePort-side traffic-policy-local feature.
    pub fn internal(&self) -> &[&'a Backend] {
        if self.internal_local { &self.local } else { &self.usable }
    }

    /// Backends for traffic from outside (NodePort, ExternalIPs, LoadBalancer): this node's only
    /// under `externalTrafficPolicy: Local` when the serving backend owns traffic-policy-local.
    pub fn external(&self, local_policy_owned: bool) -> &[&'a Backend] {
        if self.external_local && local_policy_owned { &self.local } else { &self.usable }
    }

    /// The backend port for `b` (a numeric targetPort leaves the endpoint port at 0).
    pub fn target_port(&self, b: &Backend) -> u16 {
        if b.port != 0 { b.port } else { self.frontends.first().map(|f| f.target_port).unwrap_or(0) }
    }
}

impl<'a> ServiceView<'a> {
    pub fn new(node: &'a str, services: &'a [Service], all_host_ports: &'a [HostPort]) -> Self {
        ServiceView { node, services, all_host_ports }
    }

    /// A Service's ports in (port name, protocol) order, each with its frontends in the order the
    /// Service lists them.
    pub fn ports(&self, svc: &'a Service) -> Vec<PortView<'a>> {
        ports_of(svc, self.node)
    }

    /// This node's hostPorts.
    pub fn host_ports(&self) -> impl Iterator<Item = &'a HostPort> + 'a {
        let node = self.node;
        self.all_host_ports.iter().filter(move |h| h.node.as_deref() == Some(node))
    }

    /// Backends on this node for a Service's first port (what `/healthz` of a
    /// healthCheckNodePort counts).
    pub fn local_endpoint_count(&self, svc: &'a Service) -> usize {
        self.ports(svc).first().map(|p| p.local.len()).unwrap_or(0)
    }
}

/// [`ServiceView::ports`] without a view (for encoders that keep a node name of their own).
pub fn ports_of<'a>(svc: &'a Service, node: &str) -> Vec<PortView<'a>> {
    let mut out: Vec<PortView<'a>> = Vec::new();
    for fe in &svc.frontends {
        if let Some(p) = out.iter_mut().find(|p| p.port_name == fe.port_name && p.protocol == fe.protocol) {
            p.frontends.push(fe);
            continue;
        }
        let usable: Vec<&Backend> = svc.usable_backends(fe).filter(|b| matches!(b.ip, IpAddr::V4(_))).collect();
        let local = usable.iter().copied().filter(|b| b.node.as_deref() == Some(node)).collect();
        out.push(PortView {
            port_name: &fe.port_name,
            protocol: fe.protocol,
            frontends: vec![fe],
            usable,
            local,
            internal_local: svc.internal_local,
            external_local: svc.external_local,
        });
    }
    out.sort_by(|a, b| (a.port_name, a.protocol).cmp(&(b.port_name, b.protocol)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ServiceBuilder, backend, terminating};

    #[test]
    fn ports_group_frontends_and_split_local_backends() {
        let svc = ServiceBuilder::new("default", "web")
            .cluster_ip("10.96.0.10", 80)
            .node_port(30080)
            .backend(backend("10.244.1.2", 8080, "node-1"))
            .backend(backend("10.244.2.2", 8080, "node-2"))
            .backend(terminating(backend("10.244.1.9", 8080, "node-1")))
            .external_local()
            .build();
        let v = ServiceView::new("node-1", std::slice::from_ref(&svc), &[]);
        let ports = v.ports(&svc);
        assert_eq!(ports.len(), 1);
        let p = &ports[0];
        assert_eq!(
            p.frontends.iter().map(|f| f.kind).collect::<Vec<_>>(),
            [FrontendKind::ClusterIp, FrontendKind::NodePort]
        );
        assert_eq!(p.usable.len(), 2, "terminating backends only when none is ready");
        assert_eq!(p.local.len(), 1);
        assert_eq!(p.internal().len(), 2);
        assert_eq!(p.external(true).len(), 1, "externalTrafficPolicy Local");
        assert_eq!(p.external(false).len(), 2, "Local not owned by this backend: cluster-wide");
        assert_eq!(v.local_endpoint_count(&svc), 1);
    }
}
