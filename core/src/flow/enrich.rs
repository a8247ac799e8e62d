//! From what a datapath observed (addresses, ports, a translation) to a [`Flow`] with names:
//! the pods, their identities and labels, the Service whose frontend was translated, the
//! direction relative to this node's pods. Pure: the agent builds a [`Directory`] from each
//! source read and hands the datapath's observations through it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::{
    Endpoint, EventKind, Flow, L4, ObservationPoint, PolicyMatch, ServiceRef, SockXlate, SockXlatePoint, TcpFlags,
    TrafficDirection, Verdict,
};
use crate::model::PodInfo;
use crate::policy::Identity;
use crate::service::{Protocol, Service};

/// One connection as a datapath saw it (conntrack NEW, a BPF trace), before names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub time_ns: u64,
    /// IP protocol number: 6 TCP, 17 UDP, 1 ICMP.
    pub proto: u8,
    pub src: Ipv4Addr,
    pub sport: u16,
    /// The destination the client used (a Service frontend when translated).
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// Where the destination was translated to.
    pub translated_to: Option<(Ipv4Addr, u16)>,
    pub observation: ObservationPoint,
}

/// Who is who, from one source read.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    node_name: String,
    pods: HashMap<Ipv4Addr, (Arc<Endpoint>, bool)>,
    /// The translation each pod's entry was built from ([`Directory::renew`]).
    built_from: HashMap<Ipv4Addr, Arc<PodInfo>>,
    frontends: HashMap<(Ipv4Addr, u16, u8), ServiceRef>,
    /// NodePort frontends (every node address): by port and protocol.
    node_ports: HashMap<(u16, u8), ServiceRef>,
    nodes: HashMap<Ipv4Addr, bool>,
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

impl Directory {
    /// `identity`: a pod's security identity (the policy cache's numbering); `node_ips`: every
    /// node's addresses, with whether it is this node.
    pub fn new<'p>(
        node_name: &str,
        pods: impl IntoIterator<Item = &'p PodInfo>,
        services: &[Service],
        identity: impl Fn(Ipv4Addr) -> Option<u32>,
        node_ips: &[(Ipv4Addr, bool)],
    ) -> Self {
        Self::build(None, node_name, pods.into_iter().map(|p| (p, None)), services, identity, node_ips)
    }

    /// [`Directory::new`] after a change: a pod whose translation is the one `prev` was built
    /// from (the same `Arc`) and whose identity did not change keeps its entry (10,000 pods'
    /// labels are not formatted again for one pod's change).
    pub fn renew(
        prev: &Directory,
        node_name: &str,
        pods: &[Arc<PodInfo>],
        services: &[Service],
        identity: impl Fn(Ipv4Addr) -> Option<u32>,
        node_ips: &[(Ipv4Addr, bool)],
    ) -> Self {
        Self::build(Some(prev), node_name, pods.iter().map(|p| (&**p, Some(p))), services, identity, node_ips)
    }

    fn build<'p>(
        prev: Option<&Directory>,
        node_name: &str,
        pods: impl Iterator<Item = (&'p PodInfo, Option<&'p Arc<PodInfo>>)>,
        services: &[Service],
        identity: impl Fn(Ipv4Addr) -> Option<u32>,
        node_ips: &[(Ipv4Addr, bool)],
    ) -> Self {
        let mut d = Directory { node_name: node_name.into(), ..Default::default() };
        for (p, src) in pods {
            let Some(IpAddr::V4(ip)) = p.ip else { continue };
            let id = identity(ip).unwrap_or(Identity::UNMANAGED.0);
            let kept = src.zip(prev).and_then(|(src, prev)| {
                let (ep, _) = prev.pods.get(&ip)?;
                let same = prev.built_from.get(&ip).is_some_and(|b| Arc::ptr_eq(b, src)) && ep.identity == id;
                same.then(|| ep.clone())
            });
            let ep = kept.unwrap_or_else(|| {
                let mut labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("k8s:{k}={v}")).collect();
                labels.push(format!("k8s:io.kubernetes.pod.namespace={}", p.namespace));
                labels.sort();
                Arc::new(Endpoint {
                    id: 0,
                    identity: id,
                    namespace: p.namespace.clone(),
                    pod_name: p.name.clone(),
                    labels,
                    workload: p.workload.clone(),
                })
            });
            d.pods.insert(ip, (ep, p.node.as_deref() == Some(node_name)));
            if let Some(src) = src {
                d.built_from.insert(ip, src.clone());
            }
        }
        for s in services {
            for f in &s.frontends {
                let r = ServiceRef { namespace: s.name.namespace.clone(), name: s.name.name.clone() };
                // Services come in name order; a frontend two claim is the first one's (the
                // service view refuses it to the later one).
                match f.ip {
                    Some(IpAddr::V4(ip)) => {
                        d.frontends.entry((ip, f.port, proto_number(f.protocol))).or_insert(r);
                    }
                    None => {
                        d.node_ports.entry((f.port, proto_number(f.protocol))).or_insert(r);
                    }
                    Some(IpAddr::V6(_)) => {}
                }
            }
        }
        d.nodes = node_ips.iter().copied().collect();
        d
    }

    /// A pod, this node (`reserved:host`), another node (`reserved:remote-node`) or the world.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Endpoint {
        if let Some((ep, _)) = self.pods.get(&ip) {
            return (**ep).clone();
        }
        let id = match self.nodes.get(&ip) {
            Some(true) => Identity::HOST,
            Some(false) => Identity::REMOTE_NODE,
            None => Identity::WORLD,
        };
        Endpoint {
            identity: id.0,
            labels: id.reserved_name().map(|n| vec![format!("reserved:{n}")]).unwrap_or_default(),
            ..Default::default()
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    fn local_pod(&self, ip: Ipv4Addr) -> bool {
        self.pods.get(&ip).is_some_and(|(_, local)| *local)
    }

    /// The Service whose frontend `ip:port` is: an address of its own, or a NodePort on a node
    /// address.
    pub fn service_at(&self, ip: Ipv4Addr, port: u16, proto: u8) -> Option<ServiceRef> {
        if let Some(s) = self.frontends.get(&(ip, port, proto)) {
            return Some(s.clone());
        }
        self.nodes.contains_key(&ip).then(|| self.node_ports.get(&(port, proto)).cloned()).flatten()
    }

    /// A host process's socket that socket LB gave a backend (`backend`) for a frontend
    /// (`front`), as Hubble shows trace-sock: from this node's host (the socket is not bound
    /// yet: no source address or port), to the backend, TRANSLATED, with the Service.
    pub fn sock_translation(
        &self,
        time_ns: u64,
        proto: u8,
        front: (Ipv4Addr, u16),
        backend: (Ipv4Addr, u16),
        socket_cookie: u64,
    ) -> Flow {
        let l4 = match proto {
            6 => Some(L4::Tcp { source_port: 0, destination_port: backend.1, flags: TcpFlags::default() }),
            17 => Some(L4::Udp { source_port: 0, destination_port: backend.1 }),
            _ => None,
        };
        let host = Endpoint {
            identity: Identity::HOST.0,
            labels: Identity::HOST.reserved_name().map(|n| vec![format!("reserved:{n}")]).unwrap_or_default(),
            ..Default::default()
        };
        Flow {
            time_ns,
            verdict: Verdict::Translated,
            drop_reason: None,
            event: EventKind::TraceSock,
            observation: None,
            source_ip: Ipv4Addr::UNSPECIFIED,
            destination_ip: backend.0,
            l4,
            source: host,
            destination: self.endpoint(backend.0),
            node_name: self.node_name.clone(),
            direction: TrafficDirection::Egress,
            is_reply: Some(false),
            source_service: None,
            destination_service: self.service_at(front.0, front.1, proto),
            policy: PolicyMatch::default(),
            l7: None,
            sock: Some(SockXlate { point: SockXlatePoint::PostDirectionFwd, socket_cookie }),
        }
    }

    /// A forwarded connection as Hubble shows it: the destination is the backend it reached,
    /// the Service the one whose frontend it used; the direction is egress when it leaves one of
    /// this node's pods, ingress when it enters one.
    pub fn trace(&self, o: &Observed) -> Flow {
        let (dst, dport) = o.translated_to.unwrap_or((o.dst, o.dport));
        let l4 = match o.proto {
            6 => Some(L4::Tcp {
                source_port: o.sport,
                destination_port: dport,
                flags: TcpFlags { syn: true, ..Default::default() },
            }),
            17 => Some(L4::Udp { source_port: o.sport, destination_port: dport }),
            1 => Some(L4::Icmpv4 { r#type: o.sport as u8, code: o.dport as u8 }),
            _ => None,
        };
        let direction = if self.local_pod(o.src) {
            TrafficDirection::Egress
        } else if self.local_pod(dst) {
            TrafficDirection::Ingress
        } else {
            TrafficDirection::Unknown
        };
        Flow {
            time_ns: o.time_ns,
            verdict: Verdict::Forwarded,
            drop_reason: None,
            event: EventKind::Trace,
            observation: Some(o.observation),
            source_ip: o.src,
            destination_ip: dst,
            l4,
            source: self.endpoint(o.src),
            destination: self.endpoint(dst),
            node_name: self.node_name.clone(),
            direction,
            is_reply: Some(false),
            source_service: None,
            destination_service: o.translated_to.and_then(|_| self.service_at(o.dst, o.dport, o.proto)),
            policy: PolicyMatch::default(),
            l7: None,
            sock: None,
        }
    }
}
