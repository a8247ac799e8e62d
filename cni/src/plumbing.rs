//! The netlink operations ADD, DEL and CHECK are made of.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use crate::error::CniError;
use crate::netns::errno;

/// Route protocol number that marks routes sluice made (`ip route ... proto 0x53`), so they can
/// be told apart from anyone else's, restored and pruned. 0x53 = 'S'; unassigned in rt_protos.
pub const SLUICE_RTPROTO: u8 = 0x53;

/// Host-side veth names: `slc` + 12 hex digits of sha256(container id, ifname). Deterministic
/// so DEL finds the interface without the netns or a prevResult; 15 chars, the kernel's limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0]);
    h.update(ifname.as_bytes());
    let d = h.finalize();
    let hex: String = d.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("slc{hex}")
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn link_mac(msg: &LinkMessage) -> String {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => Some(format_mac(b)),
            _ => None,
        })
        .unwrap_or_default()
}

/// Look a link up by name; `None` when it does not exist.
pub async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    let res = h.link().get().match_name(name.to_string()).execute().try_next().await;
    match res {
        Ok(m) => Ok(m),
        Err(e) if matches!(errno(&e), Some(libc::ENODEV)) => Ok(None),
        Err(e) => Err(CniError::netlink("get link", name, e)),
    }
}

/// Delete a link by name; absent is fine (DEL must be idempotent).
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, CniError> {
    let Some(link) = get_link(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if matches!(errno(&e), Some(libc::ENODEV)) => Ok(false),
        Err(e) => Err(CniError::netlink("delete link", name, e)),
    }
}

/// Create `host` in this netns with its peer created directly inside `netns` as `peer`.
pub async fn create_veth(
    h: &Handle,
    host: &str,
    peer: &str,
    netns: &std::fs::File,
    mtu: Option<u32>,
) -> Result<(), CniError> {
    let mut peer_b = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string()).setns_by_fd(netns.as_raw_fd());
    if let Some(m) = mtu {
        peer_b = peer_b.mtu(m);
    }
    let mut b = LinkVeth::new(host, peer).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_b.build())));
    if let Some(m) = mtu {
        b = b.mtu(m);
    }
    h.link().add(b.build()).execute().await.map_err(|e| {
        let detail = match errno(&e) {
            Some(libc::EEXIST) => {
                format!("{e} (an interface named {host} or {peer} already exists)")
            }
            _ => e.to_string(),
        };
        CniError::Netlink { op: "create veth", target: format!("{host} <-> {peer}"), detail }
    })
}

async fn set_up(h: &Handle, index: u32, name: &str) -> Result<(), CniError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| CniError::netlink("set link up", name, e))
}

async fn add_addr(h: &Handle, index: u32, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), CniError> {
    match h.address().add(index, IpAddr::V4(ip), prefix).execute().await {
        Err(e) if !matches!(errno(&e), Some(libc::EEXIST)) => {
            Err(CniError::netlink("add address", format!("{ip}/{prefix} on {name}"), e))
        }
        _ => Ok(()),
    }
}

async fn add_route(h: &Handle, msg: RouteMessage, what: String) -> Result<(), CniError> {
    h.route().add(msg).replace().execute().await.map_err(|e| CniError::netlink("add route", what, e))
}

/// Inside the pod: bring `ifname` up with `ip/32`, a link route to the gateway and a default
/// route via it. Returns the interface's MAC.
pub async fn configure_container(h: &Handle, ifname: &str, ip: Ipv4Addr, gw: Ipv4Addr) -> Result<String, CniError> {
    let link = get_link(h, ifname)
        .await?
        .ok_or_else(|| CniError::netlink("find pod interface", ifname, "missing after veth creation"))?;
    let idx = link.header.index;
    if let Some(lo) = get_link(h, "lo").await? {
        set_up(h, lo.header.index, "lo").await?;
    }
    add_addr(h, idx, ifname, ip, 32).await?;
    set_up(h, idx, ifname).await?;
    let to_gw = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(gw, 32)
        .output_interface(idx)
        .scope(RouteScope::Link)
        .build();
    add_route(h, to_gw, format!("{gw}/32 dev {ifname}")).await?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(idx).build();
    add_route(h, default, format!("default via {gw} dev {ifname}")).await?;
    Ok(link_mac(&link))
}

/// On the node: bring the host veth up with the gateway address (so it answers the pod's ARP)
/// and route the pod's /32 to it. Returns the host veth's MAC.
pub async fn configure_host(h: &Handle, host: &str, ip: Ipv4Addr, gw: Ipv4Addr) -> Result<String, CniError> {
    let link = get_link(h, host)
        .await?
        .ok_or_else(|| CniError::netlink("find host veth", host, "missing after veth creation"))?;
    let idx = link.header.index;
    add_addr(h, idx, host, gw, 32).await?;
    set_up(h, idx, host).await?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .output_interface(idx)
        .scope(RouteScope::Link)
        .pref_source(gw)
        .protocol(RouteProtocol::Other(SLUICE_RTPROTO))
        .build();
    add_route(h, route, format!("{ip}/32 dev {host}")).await?;
    // Pods route everything through the node; forwarding must be on in the node's netns.
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    Ok(link_mac(&link))
}

fn route_dst(r: &RouteMessage) -> Option<(Ipv4Addr, u8)> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some((*ip, r.header.destination_prefix_length)),
        _ => None,
    })
}

fn route_gw(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

/// Inside the pod: does `ifname` exist, is it up, with `ip`, and a default route via `gw`?
/// Returns the first problem found.
pub async fn check_container(h: &Handle, ifname: &str, ip: Ipv4Addr, gw: Ipv4Addr) -> Result<Option<String>, CniError> {
    let Some(link) = get_link(h, ifname).await? else {
        return Ok(Some(format!("interface {ifname} does not exist in the pod netns")));
    };
    if !link.header.flags.contains(LinkFlags::Up) {
        return Ok(Some(format!("interface {ifname} is down")));
    }
    let idx = link.header.index;
    let mut addrs = h.address().get().set_link_index_filter(idx).execute();
    let mut has_ip = false;
    while let Some(a) = addrs.try_next().await.map_err(|e| CniError::netlink("list addresses", ifname, e))? {
        use rtnetlink::packet_route::address::AddressAttribute;
        has_ip |= a.attributes.iter().any(|at| matches!(at, AddressAttribute::Address(IpAddr::V4(x)) if *x == ip));
    }
    if !has_ip {
        return Ok(Some(format!("address {ip} missing on {ifname}")));
    }
    let mut routes = h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    let mut has_default = false;
    while let Some(r) = routes.try_next().await.map_err(|e| CniError::netlink("list routes", ifname, e))? {
        if r.header.address_family == AddressFamily::Inet && route_dst(&r).is_none() && route_gw(&r) == Some(gw) {
            has_default = true;
        }
    }
    if !has_default {
        return Ok(Some(format!("default route via {gw} missing")));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_and_short() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("slc"));
    }

    #[test]
    fn mac_format() {
        assert_eq!(format_mac(&[0xaa, 0, 1, 0xff, 0x10, 2]), "aa:00:01:ff:10:02");
    }
}
