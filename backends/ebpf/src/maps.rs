//! Rust mirrors of bpf/lib/layout.h and the pure encoding of services into map entries.
//! Addresses and ports are stored in network byte order, exactly as the programs read packets.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr};

use sluice_core::{Feature, FrontendKind, HostPort, Protocol, Service};

// SVC_F_*, BE_F_*, NAT_F_* of bpf/lib/layout.h.
pub const SVC_F_TC: u32 = 1;
pub const SVC_F_EXTERNAL: u32 = 2;
pub const SVC_F_SOCK_TCP: u32 = 4;
pub const SVC_F_SOCK_UDP: u32 = 8;
pub const SVC_F_SRC_RANGES: u32 = 16;
pub const SVC_F_MAGLEV: u32 = 32;
pub const BE_F_LOCAL: u16 = 1;
pub const NAT_F_EXTERNAL: u32 = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    pub vip: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvcVal {
    pub service_id: u32,
    pub backend_count: u32,
    pub affinity_s: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub service_id: u32,
    pub slot: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendVal {
    pub addr: u32,
    pub port: u16,
    pub flags: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatVal {
    pub addr: u32,
    pub port: u16,
    pub snat_port: u16,
    pub flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnatVal {
    pub client: u32,
    pub front: u32,
    pub client_port: u16,
    pub front_port: u16,
    pub last_s: u32,
    pub flags: u32,
}

/// LPM trie key: `prefixlen` counts the service id's 32 bits plus the source prefix length.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct SrcRangeKey {
    pub prefixlen: u32,
    pub service_id: u32,
    pub addr: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeCfg {
    pub node_ip: u32,
    pub maglev_m: u32,
    /// NODE_F_*.
    pub flags: u32,
    pub pad: u32,
}

/// The device frontends are another dataplane's: the device program only carries the flows it
/// translated before the hand-over.
pub const NODE_F_DEVICES_DRAIN: u32 = 1;
/// The plan gives `flows` to eBPF: the pod-veth programs trace new connections.
pub const NODE_F_TRACE: u32 = 2;
/// With `NODE_F_TRACE`: allow rules' verdicts on new flows too (`flows.allowed_verdicts`).
pub const NODE_F_ALLOWS: u32 = 4;
/// With `NODE_F_TRACE`: a to-stack trace too where a pod's new connection enters the stack
/// (`flows.trace_to_stack`).
pub const NODE_F_TO_STACK: u32 = 8;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub service_id: u32,
    pub index: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SockKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

// SAFETY: plain #[repr(C)] integer structs with explicit padding fields; any bit pattern is valid.
unsafe impl aya::Pod for SvcKey {}
unsafe impl aya::Pod for SvcVal {}
unsafe impl aya::Pod for BackendKey {}
unsafe impl aya::Pod for BackendVal {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for NatVal {}
unsafe impl aya::Pod for SnatVal {}
unsafe impl aya::Pod for SrcRangeKey {}
unsafe impl aya::Pod for NodeCfg {}
unsafe impl aya::Pod for SockKey {}
unsafe impl aya::Pod for MaglevKey {}

// The C side's layout, checked at compile time: a mismatch would silently corrupt lookups.
const _: () = {
    assert!(size_of::<SvcKey>() == 8 && offset_of!(SvcKey, port) == 4 && offset_of!(SvcKey, proto) == 6);
    assert!(size_of::<SvcVal>() == 16 && offset_of!(SvcVal, affinity_s) == 8);
    assert!(size_of::<BackendKey>() == 8 && offset_of!(BackendKey, slot) == 4);
    assert!(size_of::<BackendVal>() == 8 && offset_of!(BackendVal, port) == 4);
    assert!(size_of::<FlowKey>() == 16 && offset_of!(FlowKey, sport) == 8 && offset_of!(FlowKey, proto) == 12);
    assert!(size_of::<NatVal>() == 12 && offset_of!(NatVal, snat_port) == 6 && offset_of!(NatVal, flags) == 8);
    assert!(size_of::<SnatVal>() == 20 && offset_of!(SnatVal, client_port) == 8 && offset_of!(SnatVal, last_s) == 12);
    assert!(size_of::<SrcRangeKey>() == 12 && offset_of!(SrcRangeKey, addr) == 8);
    assert!(size_of::<NodeCfg>() == 16 && offset_of!(NodeCfg, maglev_m) == 4 && offset_of!(NodeCfg, flags) == 8);
    assert!(size_of::<MaglevKey>() == 8);
    assert!(size_of::<SockKey>() == 16 && offset_of!(SockKey, addr) == 8 && offset_of!(SockKey, port) == 12);
};

/// IPv4 address as the program reads it from a packet.
pub fn addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Port as the program reads it from a packet.
pub fn port(p: u16) -> u16 {
    u16::from_ne_bytes(p.to_be_bytes())
}

pub fn proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// Map contents for a set of services. Service IDs here are positional (1..); the datapath
/// remaps them to its stable IDs.
#[derive(Debug, Default, PartialEq)]
pub struct Entries {
    pub services: BTreeMap<SvcKey, SvcVal>,
    pub backends: BTreeMap<BackendKey, BackendVal>,
    pub ranges: BTreeSet<SrcRangeKey>,
    /// Maglev tables by service id: bucket -> backend slot.
    pub maglev: BTreeMap<u32, Vec<u32>>,
}

/// What encoding needs to know about the node: which features the plan gives to eBPF, this
/// node's name (which backends are local) and addresses (where NodePorts and HostPorts listen).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeCtx {
    pub node_name: String,
    pub node_ips: Vec<Ipv4Addr>,
    pub owned: BTreeSet<Feature>,
    /// Maglev table size when `lb_algorithm: maglev`; `None`: random.
    pub maglev_m: Option<u32>,
    /// Report allow rules' verdicts on new flows (with `flows` owned).
    pub allowed_verdicts: bool,
    /// Trace where pods' new connections enter the stack too (with `flows` owned).
    pub trace_to_stack: bool,
}

/// The features served at the node's devices (the device program's frontends).
pub const DEVICE_FEATURES: [Feature; 4] =
    [Feature::NodePort, Feature::ExternalIps, Feature::LoadBalancer, Feature::HostPort];

impl NodeCtx {
    fn owns(&self, f: Feature) -> bool {
        self.owned.contains(&f)
    }

    /// `NODE_F_*` for the datapath's node entry.
    pub fn flags(&self) -> u32 {
        let mut f = if self.serves_devices() { 0 } else { NODE_F_DEVICES_DRAIN };
        if self.owns(Feature::Flows) {
            f |= NODE_F_TRACE;
            if self.allowed_verdicts {
                f |= NODE_F_ALLOWS;
            }
            if self.trace_to_stack {
                f |= NODE_F_TO_STACK;
            }
        }
        f
    }

    /// Whether eBPF serves any device frontend on this node.
    pub fn serves_devices(&self) -> bool {
        DEVICE_FEATURES.iter().any(|f| self.owns(*f))
    }

    /// Socket-LB flags for a protocol, when the plan gives socket LB to eBPF.
    fn sock_flags(&self, p: Protocol) -> u32 {
        match p {
            Protocol::Tcp if self.owns(Feature::SocketLbTcp) => SVC_F_SOCK_TCP,
            Protocol::Udp if self.owns(Feature::SocketLbUdp) => SVC_F_SOCK_UDP,
            _ => 0,
        }
    }
}

/// One frontend's map entries: key, flags, the backends it balances over.
struct Front {
    key: SvcKey,
    flags: u32,
    affinity_s: u32,
    backends: Vec<BackendVal>,
    ranges: Vec<ipnet::Ipv4Net>,
}

fn service_fronts(s: &Service, ctx: &NodeCtx, out: &mut Vec<Front>) {
    let affinity_s = if ctx.owns(Feature::SessionAffinity) { s.affinity_timeout_s.unwrap_or(0) } else { 0 };
    let ports = sluice_core::view::ports_of(s, &ctx.node_name);
    let tpl = ctx.owns(Feature::TrafficPolicyLocal);
    for fe in &s.frontends {
        let Some(pv) = ports.iter().find(|p| p.port_name == fe.port_name && p.protocol == fe.protocol) else {
            continue;
        };
        let encode = |set: &[&sluice_core::Backend]| -> Vec<BackendVal> {
            set.iter()
                .filter_map(|b| match b.ip {
                    IpAddr::V4(ip) => {
                        let local = b.node.as_deref() == Some(ctx.node_name.as_str());
                        let p = if b.port == 0 { fe.target_port } else { b.port };
                        let flags = if local { BE_F_LOCAL } else { 0 };
                        Some(BackendVal { addr: addr(ip), port: port(p), flags })
                    }
                    IpAddr::V6(_) => None,
                })
                .collect()
        };
        let sock = ctx.sock_flags(fe.protocol);
        let (flags, ips, backends): (u32, Vec<Ipv4Addr>, Vec<BackendVal>) = match (fe.kind, fe.ip) {
            (FrontendKind::ClusterIp, Some(IpAddr::V4(ip))) => {
                let tc = if ctx.owns(Feature::ClusterIp) { SVC_F_TC } else { 0 };
                (tc | sock, vec![ip], encode(pv.internal()))
            }
            (FrontendKind::NodePort, None) if ctx.owns(Feature::NodePort) => {
                (SVC_F_TC | SVC_F_EXTERNAL | sock, ctx.node_ips.clone(), encode(pv.external(tpl)))
            }
            (FrontendKind::ExternalIp, Some(IpAddr::V4(ip))) if ctx.owns(Feature::ExternalIps) => {
                (SVC_F_TC | SVC_F_EXTERNAL | sock, vec![ip], encode(pv.external(tpl)))
            }
            (FrontendKind::LoadBalancer, Some(IpAddr::V4(ip))) if ctx.owns(Feature::LoadBalancer) => {
                let ranges = if s.source_ranges.is_empty() { 0 } else { SVC_F_SRC_RANGES };
                (SVC_F_TC | SVC_F_EXTERNAL | sock | ranges, vec![ip], encode(pv.external(tpl)))
            }
            _ => continue,
        };
        if flags == 0 {
            continue;
        }
        let flags = if ctx.maglev_m.is_some() && flags & (SVC_F_TC | SVC_F_EXTERNAL) != 0 {
            flags | SVC_F_MAGLEV
        } else {
            flags
        };
        let ranges = if flags & SVC_F_SRC_RANGES != 0 { s.source_ranges.clone() } else { Vec::new() };
        for ip in ips {
            out.push(Front {
                key: SvcKey { vip: addr(ip), port: port(fe.port), proto: proto(fe.protocol), pad: 0 },
                flags,
                affinity_s,
                backends: backends.clone(),
                ranges: ranges.clone(),
            });
        }
    }
}

/// One of this node's hostPorts (the caller filters them through the service view).
fn host_port_fronts(h: &HostPort, ctx: &NodeCtx, out: &mut Vec<Front>) {
    if !ctx.owns(Feature::HostPort) {
        return;
    }
    let ips = match h.host_ip {
        Some(ip) if !ip.is_unspecified() => vec![ip],
        _ => ctx.node_ips.clone(),
    };
    for ip in ips {
        out.push(Front {
            key: SvcKey { vip: addr(ip), port: port(h.host_port), proto: proto(h.protocol), pad: 0 },
            flags: SVC_F_TC | SVC_F_EXTERNAL | ctx.sock_flags(h.protocol),
            affinity_s: 0,
            backends: vec![BackendVal { addr: addr(h.pod_ip), port: port(h.container_port), flags: BE_F_LOCAL }],
            ranges: Vec::new(),
        });
    }
}

/// Encode services (and this node's hostPorts) into map entries, with positional service IDs.
pub fn encode(services: &[Service], host_ports: &[HostPort], ctx: &NodeCtx) -> Entries {
    encode_with_keys(services, host_ports, ctx).0
}

/// `encode`, plus the frontend keys of each Service (in input order): what an incremental sync
/// must remove when that Service changes or goes.
/// Map entries one Service or the hostPorts take, per map (see [`sluice_core::MapSizes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub services: u64,
    pub backends: u64,
    pub source_ranges: u64,
    pub maglev: u64,
}

impl Footprint {
    fn of(fronts: &[Front], ctx: &NodeCtx) -> Self {
        let mut f = Footprint::default();
        for x in fronts {
            f.services += 1;
            f.backends += x.backends.len() as u64;
            f.source_ranges += x.ranges.len() as u64;
            if x.flags & SVC_F_MAGLEV != 0 && !x.backends.is_empty() {
                f.maglev += u64::from(ctx.maglev_m.unwrap_or(0));
            }
        }
        f
    }

    pub fn add(&mut self, o: Footprint) {
        self.services += o.services;
        self.backends += o.backends;
        self.source_ranges += o.source_ranges;
        self.maglev += o.maglev;
    }

    /// The first map (by its `bpf_map_sizes` key) that `self` overflows, with its size.
    pub fn overflow(&self, sizes: &sluice_core::MapSizes) -> Option<(&'static str, u32)> {
        [
            ("services", self.services, sizes.services),
            ("backends", self.backends, sizes.backends),
            ("source_ranges", self.source_ranges, sizes.source_ranges),
            ("maglev", self.maglev, sizes.maglev),
        ]
        .into_iter()
        .find(|(_, used, size)| *used > u64::from(*size))
        .map(|(name, _, size)| (name, size))
    }
}

/// An upper bound of what `s` takes, computed without encoding it (a frontend's entries at most one per
/// node address): when the bounds of all Services fit, the exact footprints are not needed, and a
/// single change at 10k Services costs no encode of the others.
pub fn footprint_bound(s: &Service, ctx: &NodeCtx) -> Footprint {
    let per = ctx.node_ips.len().max(1) as u64;
    let svc = s.frontends.len() as u64 * per;
    Footprint {
        services: svc,
        backends: svc * s.backends.len() as u64,
        source_ranges: svc * s.source_ranges.len() as u64,
        maglev: if ctx.maglev_m.is_some() { svc * u64::from(ctx.maglev_m.unwrap_or(0)) } else { 0 },
    }
}

/// What `s` takes in the maps on this node.
pub fn footprint(s: &Service, ctx: &NodeCtx) -> Footprint {
    let mut fronts = Vec::new();
    service_fronts(s, ctx, &mut fronts);
    Footprint::of(&fronts, ctx)
}

/// What this node's hostPorts take.
pub fn host_ports_footprint(services: &[Service], host_ports: &[HostPort], ctx: &NodeCtx) -> Footprint {
    let mut fronts = Vec::new();
    for h in sluice_core::view::ServiceView::new(&ctx.node_name, services, host_ports).host_ports() {
        host_port_fronts(h, ctx, &mut fronts);
    }
    Footprint::of(&fronts, ctx)
}

pub fn encode_with_keys(services: &[Service], host_ports: &[HostPort], ctx: &NodeCtx) -> (Entries, Vec<Vec<SvcKey>>) {
    let mut fronts = Vec::new();
    let mut keys = Vec::with_capacity(services.len());
    for s in services {
        let before = fronts.len();
        service_fronts(s, ctx, &mut fronts);
        keys.push(fronts[before..].iter().map(|f| f.key).collect());
    }
    for h in sluice_core::view::ServiceView::new(&ctx.node_name, services, host_ports).host_ports() {
        host_port_fronts(h, ctx, &mut fronts);
    }
    let mut e = Entries::default();
    for (i, f) in fronts.into_iter().enumerate() {
        let id = i as u32 + 1;
        // The first writer of a key wins (a NodePort clash is rejected upstream; a hostPort on a
        // port a Service uses is the operator's to fix): IDs stay positional either way.
        if e.services.contains_key(&f.key) {
            continue;
        }
        for (slot, b) in f.backends.iter().enumerate() {
            e.backends.insert(BackendKey { service_id: id, slot: slot as u32 + 1 }, *b);
        }
        for r in &f.ranges {
            e.ranges.insert(SrcRangeKey {
                prefixlen: 32 + u32::from(r.prefix_len()),
                service_id: id,
                addr: addr(r.network()),
            });
        }
        if let (Some(m), true) = (ctx.maglev_m, f.flags & SVC_F_MAGLEV != 0) {
            // Buckets name backends by address, so every node fills them alike; slots are 1-based.
            let names: Vec<String> = f.backends.iter().map(|b| format!("{:08x}:{:04x}", b.addr, b.port)).collect();
            let table = sluice_core::maglev_table(&names, m).into_iter().map(|i| i + 1).collect::<Vec<_>>();
            if !table.is_empty() {
                e.maglev.insert(id, table);
            }
        }
        e.services.insert(
            f.key,
            SvcVal { service_id: id, backend_count: f.backends.len() as u32, affinity_s: f.affinity_s, flags: f.flags },
        );
    }
    (e, keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::testing::{ServiceBuilder, backend};

    #[test]
    fn network_byte_order() {
        let k = addr(Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(k.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(port(80).to_ne_bytes(), [0, 80]);
    }

    fn svc(name: &str, eps: &[(&str, &str)]) -> Service {
        let b = ServiceBuilder::new("default", name)
            .cluster_ip("10.96.0.10", 80)
            .node_port(30080)
            .load_balancer("203.0.113.100", 80)
            .affinity(60);
        eps.iter().fold(b, |b, (ip, node)| b.backend(backend(ip, 8080, node))).build()
    }

    fn ctx(owned: &[Feature]) -> NodeCtx {
        NodeCtx {
            node_name: "node-1".into(),
            node_ips: vec!["198.51.100.11".parse().expect("ip"), "198.51.100.50".parse().expect("ip")],
            owned: owned.iter().copied().collect(),
            maglev_m: None,
            allowed_verdicts: false,
            trace_to_stack: false,
        }
    }

    fn key(ip: &str, p: u16) -> SvcKey {
        SvcKey { vip: addr(ip.parse().expect("ip")), port: port(p), proto: 6, pad: 0 }
    }

    #[test]
    fn the_node_entry_asks_for_traces_only_while_flows_are_owned() {
        let mut c = ctx(&[Feature::ClusterIp]);
        c.allowed_verdicts = true;
        c.trace_to_stack = true;
        assert_eq!(c.flags() & (NODE_F_TRACE | NODE_F_ALLOWS | NODE_F_TO_STACK), 0, "flows not eBPF's");
        c.owned.insert(Feature::Flows);
        assert_eq!(
            c.flags() & (NODE_F_TRACE | NODE_F_ALLOWS | NODE_F_TO_STACK),
            NODE_F_TRACE | NODE_F_ALLOWS | NODE_F_TO_STACK
        );
        c.trace_to_stack = false;
        assert_eq!(c.flags() & NODE_F_TO_STACK, 0);
    }

    #[test]
    fn only_owned_frontends_with_their_flags() {
        let s = svc("web", &[("10.244.1.2", "node-1"), ("10.244.2.2", "node-2")]);
        let e = encode(std::slice::from_ref(&s), &[], &ctx(&[Feature::ClusterIp]));
        assert_eq!(e.services.keys().copied().collect::<Vec<_>>(), [key("10.96.0.10", 80)]);
        let v = e.services[&key("10.96.0.10", 80)];
        assert_eq!((v.flags, v.backend_count, v.affinity_s), (SVC_F_TC, 2, 0), "affinity not owned");
        let b1 = e.backends[&BackendKey { service_id: v.service_id, slot: 1 }];
        let b2 = e.backends[&BackendKey { service_id: v.service_id, slot: 2 }];
        assert_eq!((b1.flags, b2.flags), (BE_F_LOCAL, 0), "node-1's endpoint is local");

        // Socket LB alone: the ClusterIP entry exists for host processes only.
        let e = encode(std::slice::from_ref(&s), &[], &ctx(&[Feature::SocketLbTcp]));
        assert_eq!(e.services[&key("10.96.0.10", 80)].flags, SVC_F_SOCK_TCP);

        // NodePort listens on every node address; LoadBalancer with source ranges gets its LPM entries.
        let mut s2 = s.clone();
        s2.source_ranges = vec!["198.51.100.0/25".parse().expect("net")];
        let all = [Feature::ClusterIp, Feature::NodePort, Feature::LoadBalancer, Feature::SessionAffinity];
        let e = encode(&[s2], &[], &ctx(&all));
        assert_eq!(e.services.len(), 4);
        for ip in ["198.51.100.11", "198.51.100.50"] {
            assert_eq!(e.services[&key(ip, 30080)].flags, SVC_F_TC | SVC_F_EXTERNAL);
        }
        let lb = e.services[&key("203.0.113.100", 80)];
        assert_eq!(lb.flags, SVC_F_TC | SVC_F_EXTERNAL | SVC_F_SRC_RANGES);
        assert_eq!(lb.affinity_s, 60);
        assert_eq!(
            e.ranges.iter().copied().collect::<Vec<_>>(),
            [SrcRangeKey { prefixlen: 57, service_id: lb.service_id, addr: addr("198.51.100.0".parse().expect("ip")) }]
        );
    }

    #[test]
    fn local_policies_keep_only_local_backends() {
        let mut s = svc("web", &[("10.244.1.2", "node-1"), ("10.244.2.2", "node-2")]);
        s.external_local = true;
        let owned = [Feature::ClusterIp, Feature::NodePort, Feature::LoadBalancer, Feature::TrafficPolicyLocal];
        let e = encode(std::slice::from_ref(&s), &[], &ctx(&owned));
        assert_eq!(e.services[&key("10.96.0.10", 80)].backend_count, 2, "ClusterIP keeps every endpoint");
        assert_eq!(e.services[&key("198.51.100.11", 30080)].backend_count, 1);
        assert_eq!(e.services[&key("203.0.113.100", 80)].backend_count, 1);
        s.external_local = false;
        s.internal_local = true;
        let e = encode(&[s], &[], &ctx(&owned));
        assert_eq!(e.services[&key("10.96.0.10", 80)].backend_count, 1);
        assert_eq!(e.services[&key("198.51.100.11", 30080)].backend_count, 2);
    }

    #[test]
    fn host_ports_of_this_node_only() {
        let hp = |node: &str, host_ip: Option<&str>| HostPort {
            pod: "default/a".into(),
            node: Some(node.into()),
            host_ip: host_ip.map(|i| i.parse().expect("ip")),
            host_port: 18080,
            protocol: Protocol::Tcp,
            pod_ip: "10.244.1.2".parse().expect("ip"),
            container_port: 8080,
        };
        let c = ctx(&[Feature::HostPort]);
        let e = encode(&[], &[hp("node-1", None), hp("node-2", None)], &c);
        assert_eq!(e.services.len(), 2, "one per node address, none for node-2's pod");
        let v = e.services[&key("198.51.100.11", 18080)];
        assert_eq!(v.flags, SVC_F_TC | SVC_F_EXTERNAL);
        assert_eq!(e.backends[&BackendKey { service_id: v.service_id, slot: 1 }].flags, BE_F_LOCAL);
        let e = encode(&[], &[hp("node-1", Some("198.51.100.50"))], &c);
        assert_eq!(e.services.keys().copied().collect::<Vec<_>>(), [key("198.51.100.50", 18080)]);
        assert!(encode(&[], &[hp("node-1", None)], &ctx(&[])).services.is_empty(), "not owned");
    }

    #[test]
    fn maglev_tables_for_per_packet_frontends_only() {
        let s = svc("web", &[("10.244.1.2", "node-1"), ("10.244.2.2", "node-2")]);
        let mut c = ctx(&[Feature::ClusterIp, Feature::SocketLbTcp]);
        assert!(encode(std::slice::from_ref(&s), &[], &c).maglev.is_empty(), "random by default");
        c.maglev_m = Some(251);
        let e = encode(std::slice::from_ref(&s), &[], &c);
        let v = e.services[&key("10.96.0.10", 80)];
        assert_eq!(v.flags, SVC_F_TC | SVC_F_SOCK_TCP | SVC_F_MAGLEV);
        let t = &e.maglev[&v.service_id];
        assert_eq!(t.len(), 251);
        assert!(t.iter().all(|s| (1..=2).contains(s)) && t.contains(&1) && t.contains(&2));
        // The same endpoints listed in another order give the same backend per bucket.
        let mut s2 = s.clone();
        s2.backends.reverse();
        let e2 = encode(&[s2], &[], &c);
        let backend_of = |e: &Entries, slot: u32| e.backends[&BackendKey { service_id: v.service_id, slot }].addr;
        for (a, b) in t.iter().zip(&e2.maglev[&v.service_id]) {
            assert_eq!(backend_of(&e, *a), backend_of(&e2, *b));
        }
        // Socket LB alone has no flow to hash: no table.
        let sock = NodeCtx { maglev_m: Some(251), ..ctx(&[Feature::SocketLbTcp]) };
        assert!(encode(&[s], &[], &sock).maglev.is_empty());
    }
}
