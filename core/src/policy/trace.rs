//! A whole connection through policy: the source pod's egress, then the destination pod's
//! ingress, each decided by [`super::decide`] on the same compiled rules the datapath encodes.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::compile::{Decision, PolicyContext, decide};
use super::identity::Identity;
use super::model::Direction;
use crate::service::Protocol;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    pub ip: Ipv4Addr,
    pub identity: Identity,
    /// `NS/POD` for pods; `None` for nodes and addresses outside the cluster.
    pub pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub direction: Direction,
    pub decision: Decision,
    /// What a policy in audit mode would have done instead (a reported would-be drop).
    pub audit: Option<Decision>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    pub from: Party,
    pub to: Party,
    pub protocol: Protocol,
    pub port: u16,
    /// `None`: the source is not a pod (its egress is not policed).
    pub egress: Option<Step>,
    pub ingress: Option<Step>,
    pub allowed: bool,
}

impl PolicyContext<'_> {
    fn party(&self, ip: Ipv4Addr) -> Party {
        Party {
            ip,
            identity: self.identity_of(ip),
            pod: self.endpoint(ip).map(|e| format!("{}/{}", e.namespace, e.name)),
        }
    }

    /// Would a new connection from `src` to `dst` on `proto`/`port` pass?
    pub fn trace(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: Protocol, port: u16) -> Trace {
        let (from, to) = (self.party(src), self.party(dst));
        let egress = self.endpoint(src).map(|e| {
            let (decision, audit) = decide(&self.compile(e).egress, dst, to.identity, proto, port);
            Step { direction: Direction::Egress, decision, audit }
        });
        let ingress = self.endpoint(dst).map(|e| {
            let own_node =
                e.node.as_ref().and_then(|n| self.input.node_ips.get(n)).is_some_and(|ips| ips.contains(&src));
            if own_node {
                return Step { direction: Direction::Ingress, decision: Decision::FromOwnNode, audit: None };
            }
            let (decision, audit) = decide(&self.compile(e).ingress, src, from.identity, proto, port);
            Step { direction: Direction::Ingress, decision, audit }
        });
        let allowed = [&egress, &ingress].iter().all(|s| s.as_ref().is_none_or(|s| s.decision.allowed()));
        Trace { from, to, protocol: proto, port, egress, ingress, allowed }
    }
}
