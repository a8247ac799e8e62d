//! `sluice bpf lb list`: the service maps as rows, in the style of `cilium bpf lb list`.

use sluice_core::LbRow;

use crate::maps::{
    BE_F_LOCAL, BackendKey, Entries, SVC_F_EXTERNAL, SVC_F_SOCK_TCP, SVC_F_SOCK_UDP, SVC_F_SRC_RANGES, SVC_F_TC,
};

fn serves(flags: u32) -> Vec<String> {
    [
        (SVC_F_TC, "pods"),
        (SVC_F_EXTERNAL, "external"),
        (SVC_F_SOCK_TCP, "host-tcp"),
        (SVC_F_SOCK_UDP, "host-udp"),
        (SVC_F_SRC_RANGES, "source-ranges"),
    ]
    .iter()
    .filter(|(f, _)| flags & f != 0)
    .map(|(_, n)| n.to_string())
    .collect()
}

/// Map keys hold addresses and ports in network order.
fn ip(a: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(a.to_ne_bytes())
}

fn port(p: u16) -> u16 {
    u16::from_be_bytes(p.to_ne_bytes())
}

pub fn rows(e: &Entries) -> Vec<LbRow> {
    e.services
        .iter()
        .map(|(k, v)| LbRow {
            frontend: format!(
                "{}:{}/{}",
                ip(k.vip),
                port(k.port),
                match k.proto {
                    6 => "TCP",
                    17 => "UDP",
                    _ => "SCTP",
                }
            ),
            service_id: v.service_id,
            backend_count: v.backend_count,
            affinity_s: v.affinity_s,
            serves: serves(v.flags),
            backends: e
                .backends
                .range(
                    BackendKey { service_id: v.service_id, slot: 0 }..=BackendKey {
                        service_id: v.service_id,
                        slot: u32::MAX,
                    },
                )
                .map(|(bk, b)| {
                    let local = if b.flags & BE_F_LOCAL != 0 { " local" } else { "" };
                    (bk.slot, format!("{}:{}{local}", ip(b.addr), port(b.port)))
                })
                .collect(),
        })
        .collect()
}
