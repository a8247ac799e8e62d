//! Policy drops as flows, for every datapath's drop source (NFLOG on iptables nodes, the ring
//! buffer on eBPF nodes): what decided a drop ([`DropTag`]), derived from the same lowering
//! both backends enforce, and the flow that reports it. A drop is always attributed: the deny
//! rule's policies, or "default deny" with the policies that select the pod.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::enrich::{Directory, Observed};
use super::{DropReason, EventKind, Flow, L4, ObservationPoint, TcpFlags, TrafficDirection, Verdict};
use crate::policy::{Action, DirectionPolicy, PolicyView, lower};

/// What decided the drops of one rule (or of one endpoint's default deny).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropTag {
    /// `NS/NAME` of the pod whose rules dropped the packet.
    pub pod: String,
    pub ingress: bool,
    /// The deny rule's policies, or (default deny) the policies that select the pod.
    pub policies: Vec<String>,
    /// No rule matched: the pod is isolated in this direction (`policies` select it).
    pub default_deny: bool,
}

impl DropTag {
    /// The default deny of `pod` in one direction: attributed to the policies that isolate it
    /// (none under `policy_enforcement: always`).
    pub fn default_deny(pod: &str, ingress: bool, d: &DirectionPolicy) -> Self {
        DropTag {
            pod: pod.into(),
            ingress,
            policies: d.selected_by.iter().map(|p| p.to_string()).collect(),
            default_deny: true,
        }
    }
}

/// One endpoint direction's tags: by index in its lowered rule list (deny rules only), and
/// its default deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTags {
    pub rules: Vec<Option<DropTag>>,
    pub default: DropTag,
}

/// Tags of every enforced endpoint direction of `view`, keyed by (host interface, ingress):
/// the index a datapath reports is the index in `lower`'s list, the list it was encoded from.
pub fn tags_by_rule(view: &PolicyView) -> HashMap<(String, bool), RuleTags> {
    let mut out = HashMap::new();
    for ep in &view.endpoints {
        for (ingress, d) in [(true, &ep.policy.ingress), (false, &ep.policy.egress)] {
            if !d.enforced {
                continue;
            }
            let rules = lower(&ep.interface, d, view)
                .into_iter()
                .map(|r| {
                    (r.action == Action::Deny).then(|| DropTag {
                        pod: ep.pod.clone(),
                        ingress,
                        policies: r.policies,
                        default_deny: false,
                    })
                })
                .collect();
            out.insert(
                (ep.interface.clone(), ingress),
                RuleTags { rules, default: DropTag::default_deny(&ep.pod, ingress, d) },
            );
        }
    }
    out
}

/// The headers of a dropped IPv4 packet, as the endpoint saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DroppedPacket {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub tcp_flags: u8,
}

/// The drop flow of `p`: verdict DROPPED, event type drop with the reason as sub-type,
/// the direction, and the policies (`tag`; `None`: the rule changed before the drop was read,
/// said so rather than guessed).
pub fn policy_drop_flow(
    dir: &Directory,
    p: &DroppedPacket,
    ingress: bool,
    tag: Option<&DropTag>,
    time_ns: u64,
) -> Flow {
    let mut f = dir.trace(&Observed {
        time_ns,
        proto: p.proto,
        src: p.src,
        sport: p.sport,
        dst: p.dst,
        dport: p.dport,
        translated_to: None,
        observation: if ingress { ObservationPoint::ToEndpoint } else { ObservationPoint::FromEndpoint },
    });
    f.verdict = Verdict::Dropped;
    f.event = EventKind::Drop;
    f.observation = None;
    f.direction = if ingress { TrafficDirection::Ingress } else { TrafficDirection::Egress };
    if let Some(L4::Tcp { flags, .. }) = &mut f.l4 {
        *flags = TcpFlags::from_byte(p.tcp_flags);
    }
    match tag {
        Some(t) => {
            f.drop_reason = Some(if t.default_deny { DropReason::PolicyDenied } else { DropReason::PolicyDeny });
            f.policy.denied_by = t.policies.clone();
        }
        None => {
            f.drop_reason = Some(DropReason::PolicyDenied);
            f.policy.denied_by = vec!["(a policy rule changed since this drop)".into()];
        }
    }
    f
}
