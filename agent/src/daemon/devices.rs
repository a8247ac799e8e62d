//! The node's devices and addresses for the eBPF backend: where NodePorts listen (the node's
//! InternalIP) and which devices carry traffic from outside the node (the ones holding it,
//! unless `devices` names them).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;

/// Names of the devices holding any of `ips`.
pub async fn holding(handle: &Handle, ips: &[Ipv4Addr]) -> anyhow::Result<Vec<String>> {
    let mut indexes = Vec::new();
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await? {
        let has = msg.attributes.iter().any(|a| match a {
            AddressAttribute::Address(IpAddr::V4(a)) | AddressAttribute::Local(IpAddr::V4(a)) => ips.contains(a),
            _ => false,
        });
        if has && !indexes.contains(&msg.header.index) {
            indexes.push(msg.header.index);
        }
    }
    let mut names = Vec::new();
    for index in indexes {
        let mut links = handle.link().get().match_index(index).execute();
        while let Some(msg) = links.try_next().await? {
            for a in msg.attributes {
                if let LinkAttribute::IfName(n) = a {
                    names.push(n);
                }
            }
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}
