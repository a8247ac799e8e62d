//! Inter-node pod routes over netlink. Every route sluice adds carries [`NODE_RTPROTO`], so
//! at startup the manager reads back exactly what it owns (restore), adds what is missing and
//! removes stale ones only when the caller says the sources are in sync (prune).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};
use sluice_core::{PodRoute, RouteDiff, diff_routes};

/// `proto 0x54` ('T'): sluice's inter-node routes. Pod host routes made by sluice-cni use 0x53.
pub const NODE_RTPROTO: u8 = 0x54;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("netlink {op} for route {route} failed: {detail}")]
    Netlink { op: &'static str, route: String, detail: String },
}

pub struct RouteManager {
    handle: Handle,
}

fn route_of(msg: &RouteMessage) -> Option<PodRoute> {
    let mut dst = None;
    let mut via = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => via = Some(*ip),
            _ => {}
        }
    }
    let dst = Ipv4Net::new(dst?, msg.header.destination_prefix_length).ok()?;
    Some(PodRoute { dst, via: via? })
}

fn message(r: &PodRoute) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .gateway(r.via)
        .protocol(RouteProtocol::Other(NODE_RTPROTO))
        .build()
}

impl RouteManager {
    pub fn new(handle: Handle) -> Self {
        RouteManager { handle }
    }

    /// The routes sluice owns right now (main table, our protocol).
    pub async fn observed(&self) -> Result<BTreeSet<PodRoute>, RouteError> {
        let mut out = BTreeSet::new();
        let mut s = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(m) = s.try_next().await.map_err(|e| RouteError::Netlink {
            op: "dump",
            route: "all".into(),
            detail: e.to_string(),
        })? {
            if m.header.address_family == AddressFamily::Inet
                && m.header.protocol == RouteProtocol::Other(NODE_RTPROTO)
                && let Some(r) = route_of(&m)
            {
                out.insert(r);
            }
        }
        Ok(out)
    }

    /// Converge towards `desired`; returns what changed and the routes sluice owns afterwards
    /// (derived from the one dump taken here, so callers need not dump again).
    pub async fn reconcile(
        &self,
        desired: &BTreeSet<PodRoute>,
        prune: bool,
    ) -> Result<(RouteDiff, BTreeSet<PodRoute>), RouteError> {
        let observed = self.observed().await?;
        let diff = diff_routes(desired, &observed, prune);
        for r in &diff.remove {
            self.handle.route().del(message(r)).execute().await.map_err(|e| RouteError::Netlink {
                op: "delete",
                route: format!("{} via {}", r.dst, r.via),
                detail: e.to_string(),
            })?;
        }
        for r in &diff.add {
            // replace: a route to the same CIDR via another gateway is superseded atomically.
            self.handle.route().add(message(r)).replace().execute().await.map_err(|e| RouteError::Netlink {
                op: "add",
                route: format!("{} via {}", r.dst, r.via),
                detail: e.to_string(),
            })?;
        }
        // An added route replaced any route to the same destination.
        let mut now: BTreeSet<PodRoute> = observed
            .into_iter()
            .filter(|o| !diff.remove.contains(o) && !diff.add.iter().any(|a| a.dst == o.dst))
            .collect();
        now.extend(diff.add.iter().copied());
        Ok((diff, now))
    }

    /// Remove every route sluice owns (for `sluice cleanup`).
    pub async fn remove_all(&self) -> Result<usize, RouteError> {
        Ok(self.reconcile(&BTreeSet::new(), true).await?.0.remove.len())
    }
}
