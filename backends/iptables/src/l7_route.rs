//! The policy routing TPROXY needs: packets marked [`PROXY_MARK`] (redirected to the L7 proxy,
//! or replies to its transparent upstream sockets) are routed locally by rule
//! `fwmark 0x40000/0x40000 lookup 2004` (priority 9000) and table 2004's
//! `local 0.0.0.0/0 dev lo`. Both carry sluice's route protocol, so they are found, kept and
//! removed (`sluice cleanup`) as sluice's.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAttribute, RouteProtocol, RouteScope, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::l7::{PROXY_MARK, PROXY_TABLE};
use crate::routes::{NODE_RTPROTO, RouteError};

const RULE_PRIORITY: u32 = 9000;

fn err(op: &'static str, what: &str, e: impl std::fmt::Display) -> RouteError {
    RouteError::Netlink { op, route: what.into(), detail: e.to_string() }
}

fn ours(m: &RuleMessage) -> bool {
    m.attributes.contains(&RuleAttribute::Protocol(RouteProtocol::Other(NODE_RTPROTO)))
        && m.attributes.contains(&RuleAttribute::FwMark(PROXY_MARK))
}

async fn rules(handle: &Handle) -> Result<Vec<RuleMessage>, RouteError> {
    let s = handle.rule().get(IpVersion::V4).execute();
    let all: Vec<RuleMessage> = s.try_collect().await.map_err(|e| err("dump", "rules", e))?;
    Ok(all.into_iter().filter(ours).collect())
}

fn local_route() -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .output_interface(1) // lo
        .table_id(PROXY_TABLE)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .protocol(RouteProtocol::Other(NODE_RTPROTO))
        .build()
}

/// Make sure the rule and the route exist (idempotent).
pub async fn ensure(handle: &Handle) -> Result<(), RouteError> {
    handle
        .route()
        .add(local_route())
        .replace()
        .execute()
        .await
        .map_err(|e| err("add", "local 0.0.0.0/0 dev lo table 2004", e))?;
    if rules(handle).await?.is_empty() {
        let mut req = handle
            .rule()
            .add()
            .v4()
            .table_id(PROXY_TABLE)
            .priority(RULE_PRIORITY)
            .fw_mark(PROXY_MARK)
            .action(RuleAction::ToTable);
        req.message_mut().attributes.push(RuleAttribute::FwMask(PROXY_MARK));
        req.message_mut().attributes.push(RuleAttribute::Protocol(RouteProtocol::Other(NODE_RTPROTO)));
        req.execute().await.map_err(|e| err("add", "rule fwmark 0x40000 lookup 2004", e))?;
    }
    Ok(())
}

/// Remove the rule and the route; returns how many objects went.
pub async fn remove(handle: &Handle) -> Result<usize, RouteError> {
    let mut n = 0;
    for r in rules(handle).await? {
        handle.rule().del(r).execute().await.map_err(|e| err("delete", "rule fwmark 0x40000", e))?;
        n += 1;
    }
    let dump = handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().table_id(PROXY_TABLE).build()).execute();
    let routes: Vec<_> = dump.try_collect().await.map_err(|e| err("dump", "table 2004", e))?;
    for m in routes {
        let table = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        });
        if table == Some(PROXY_TABLE) && m.header.protocol == RouteProtocol::Other(NODE_RTPROTO) {
            handle.route().del(m).execute().await.map_err(|e| err("delete", "table 2004 route", e))?;
            n += 1;
        }
    }
    Ok(n)
}
