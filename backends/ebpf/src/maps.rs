//! Rust mirrors of bpf/lb.h and the pure encoding of services into map entries.
//! Addresses and ports are stored in network byte order, exactly as the programs read packets.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr};

use sluice_core::{FrontendKind, Protocol, Service, ServiceName};

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
    pub pad: u16,
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
    pub pad: u16,
}

// SAFETY: plain #[repr(C)] integer structs with explicit padding fields; any bit pattern is valid.
unsafe impl aya::Pod for SvcKey {}
unsafe impl aya::Pod for SvcVal {}
unsafe impl aya::Pod for BackendKey {}
unsafe impl aya::Pod for BackendVal {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for NatVal {}

// The C side's layout, checked at compile time: a mismatch would silently corrupt lookups.
const _: () = {
    assert!(size_of::<SvcKey>() == 8 && offset_of!(SvcKey, port) == 4 && offset_of!(SvcKey, proto) == 6);
    assert!(size_of::<SvcVal>() == 16 && offset_of!(SvcVal, affinity_s) == 8);
    assert!(size_of::<BackendKey>() == 8 && offset_of!(BackendKey, slot) == 4);
    assert!(size_of::<BackendVal>() == 8 && offset_of!(BackendVal, port) == 4);
    assert!(size_of::<FlowKey>() == 16 && offset_of!(FlowKey, sport) == 8 && offset_of!(FlowKey, proto) == 12);
    assert!(size_of::<NatVal>() == 8);
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

/// Map contents for a set of services (ClusterIP frontends). `ids` keeps service IDs stable
/// across calls (and restarts, when restored from the pinned map).
#[derive(Debug, Default, PartialEq)]
pub struct Entries {
    pub services: BTreeMap<SvcKey, SvcVal>,
    pub backends: BTreeMap<BackendKey, BackendVal>,
}

pub fn encode(services: &[Service], ids: &mut BTreeMap<(ServiceName, String, Protocol), u32>) -> Entries {
    let mut e = Entries::default();
    // Computed once: taking the max per frontend made encoding quadratic in services.
    let mut next = ids.values().max().copied().unwrap_or(0);
    for s in services {
        for fe in s.frontends.iter().filter(|f| f.kind == FrontendKind::ClusterIp) {
            let Some(IpAddr::V4(vip)) = fe.ip else { continue };
            let id = *ids.entry((s.name.clone(), fe.port_name.clone(), fe.protocol)).or_insert_with(|| {
                next += 1;
                next
            });
            let backends: Vec<_> = s
                .usable_backends(fe)
                .filter_map(|b| match b.ip {
                    IpAddr::V4(ip) => Some((ip, if b.port == 0 { fe.target_port } else { b.port })),
                    IpAddr::V6(_) => None,
                })
                .collect();
            for (i, (ip, p)) in backends.iter().enumerate() {
                e.backends.insert(
                    BackendKey { service_id: id, slot: i as u32 + 1 },
                    BackendVal { addr: addr(*ip), port: port(*p), pad: 0 },
                );
            }
            e.services.insert(
                SvcKey { vip: addr(vip), port: port(fe.port), proto: proto(fe.protocol), pad: 0 },
                SvcVal {
                    service_id: id,
                    backend_count: backends.len() as u32,
                    affinity_s: s.affinity_timeout_s.unwrap_or(0),
                    flags: 0,
                },
            );
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{Backend, BackendState, Frontend};

    #[test]
    fn network_byte_order() {
        let k = addr(Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(k.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(port(80).to_ne_bytes(), [0, 80]);
    }

    #[test]
    fn encodes_cluster_ips_with_stable_ids() {
        let svc = |name: &str, vip: &str, eps: &[&str]| Service {
            name: ServiceName { namespace: "default".into(), name: name.into() },
            frontends: vec![Frontend {
                kind: FrontendKind::ClusterIp,
                ip: Some(vip.parse().expect("ip")),
                port: 80,
                protocol: Protocol::Tcp,
                port_name: "http".into(),
                target_port: 8080,
            }],
            backends: eps
                .iter()
                .map(|ip| Backend {
                    ip: ip.parse().expect("ip"),
                    port: 8080,
                    port_name: "http".into(),
                    protocol: Protocol::Tcp,
                    state: BackendState::Active,
                    node: None,
                })
                .collect(),
            affinity_timeout_s: Some(60),
            external_local: false,
            internal_local: false,
            source_ranges: vec![],
            health_check_node_port: None,
        };
        let mut ids = BTreeMap::new();
        let e = encode(&[svc("a", "10.96.0.10", &["10.244.1.2", "10.244.2.2"])], &mut ids);
        let (k, v) = e.services.iter().next().expect("svc");
        assert_eq!(k.port, port(80));
        assert_eq!((v.backend_count, v.affinity_s), (2, 60));
        assert_eq!(
            e.backends[&BackendKey { service_id: v.service_id, slot: 2 }].addr,
            addr("10.244.2.2".parse().expect("ip"))
        );
        // Adding a service keeps the first one's id.
        let e2 = encode(&[svc("a", "10.96.0.10", &["10.244.1.2"]), svc("b", "10.96.0.11", &[])], &mut ids);
        assert_eq!(e2.services.values().map(|v| v.service_id).collect::<Vec<_>>(), [1, 2]);
    }
}
