//! Policy drops as flows, for every datapath's drop source (NFLOG on iptables nodes, the ring
//! buffer on eBPF nodes): what decided a drop ([`DropTag`]), derived from the same lowering
//! both backends enforce, and the flow that reports it. A drop is always attributed: the deny
//! rule's policies, or "default deny" with the policies that select the pod.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::enrich::{Directory, Observed};
use super::{DropReason, EventKind, Flow, L4, ObservationPoint, TcpFlags, TrafficDirection, Verdict};
use crate::policy::{Action, DirectionPolicy, PolicyView, audit_shadow, lower};

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
    /// An audit-mode policy's would-be drop: the packet passed.
    pub audit: bool,
    /// An allow rule's verdict (a new flow it let through), not a drop: `policies` allowed it.
    pub allow: bool,
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
            audit: false,
            allow: false,
        }
    }
}

/// Which rule list a datapath reports a rule index of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    /// The endpoint's host interface.
    pub interface: String,
    pub ingress: bool,
    /// The audit list ([`crate::policy::audit_shadow`]), not the enforced one.
    pub audit: bool,
}

/// One endpoint direction's tags: by index in its lowered rule list (deny and proxy rules), and
/// its default deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTags {
    pub rules: Vec<Option<DropTag>>,
    pub default: DropTag,
}

/// Tags of every endpoint direction's enforced list and audit list of `view`: the index a
/// datapath reports is the index in `lower`'s list, the list it was encoded from. Audit lists
/// are lowered with the scope [`audit_scope`] (their sets must not share keys with the
/// enforced list's).
pub fn tags_by_rule(view: &PolicyView) -> HashMap<TagKey, RuleTags> {
    let mut out = HashMap::new();
    for ep in &view.endpoints {
        for (ingress, d) in [(true, &ep.policy.ingress), (false, &ep.policy.egress)] {
            let shadow = audit_shadow(d);
            let lists = [(false, d.enforced.then_some(d)), (true, shadow.as_ref())];
            for (audit, list) in lists {
                let Some(list) = list else { continue };
                let scope = if audit { audit_scope(&ep.interface, ingress) } else { ep.interface.clone() };
                let rules = lower(&scope, list, view)
                    .into_iter()
                    .map(|r| {
                        // Deny rules drop, and so does a proxy rule where its connection is not
                        // redirected (no proxy); an allow rule's index comes with the verdict of
                        // a new flow it admitted (`flows.allowed_verdicts`).
                        Some(DropTag {
                            pod: ep.pod.clone(),
                            ingress,
                            policies: r.policies,
                            default_deny: false,
                            audit,
                            allow: r.action == Action::Allow && !audit,
                        })
                    })
                    .collect();
                let mut default = DropTag::default_deny(&ep.pod, ingress, list);
                default.audit = audit;
                let key = TagKey { interface: ep.interface.clone(), ingress, audit };
                out.insert(key, RuleTags { rules, default });
            }
        }
    }
    out
}

/// The lowering scope of an endpoint direction's audit list (set keys derive from it).
pub fn audit_scope(interface: &str, ingress: bool) -> String {
    format!("{interface}:{}:audit", if ingress { "ingress" } else { "egress" })
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

/// The flow of a dropped packet `p`: verdict DROPPED, event type drop with the reason as
/// sub-type, the direction, and the policies (`tag`). A tag of an allow rule makes it the
/// policy verdict of the new flow that rule let through (FORWARDED, `allowed_by`). `audit`: the datapath reported an audit
/// list's would-be drop (the packet passed): a policy verdict AUDIT instead, `denied_by` naming
/// what would have dropped it. Without a tag (the rule changed before the report was read) the
/// flow says so rather than guessing.
pub fn policy_drop_flow(
    dir: &Directory,
    p: &DroppedPacket,
    ingress: bool,
    audit: bool,
    tag: Option<&DropTag>,
    time_ns: u64,
) -> Flow {
    let point = if ingress { ObservationPoint::ToEndpoint } else { ObservationPoint::FromEndpoint };
    let mut f = dropped(dir, p, point, time_ns);
    f.direction = if ingress { TrafficDirection::Ingress } else { TrafficDirection::Egress };
    if let Some(t) = tag.filter(|t| t.allow) {
        // A policy verdict for a new flow an allow rule let through (Hubble's type 5,
        // FORWARDED, with the policies in `*_allowed_by`).
        f.verdict = Verdict::Forwarded;
        f.event = EventKind::PolicyVerdict;
        f.policy.allowed_by = t.policies.clone();
        return f;
    }
    if audit {
        f.verdict = Verdict::Audit;
        f.event = EventKind::PolicyVerdict;
        f.policy.denied_by =
            tag.map_or_else(|| vec!["(an audit rule changed since this packet)".into()], |t| t.policies.clone());
        return f;
    }
    match tag {
        Some(t) => {
            f.drop_reason = Some(if t.default_deny { DropReason::PolicyDenied } else { DropReason::PolicyDeny });
            f.policy.denied_by = t.policies.clone();
        }
        None => {
            f.drop_reason = Some(DropReason::PolicyDenied);
            f.policy.denied_by = vec!["(a policy rule changed since this packet)".into()];
        }
    }
    f
}

/// The flow of a packet a Service frontend dropped (no backend: SERVICE_BACKEND_NOT_FOUND; a
/// LoadBalancer's source ranges: DENIED_BY_LB_SRC_RANGE_CHECK), attributed to the Service whose
/// frontend `p.dst:p.dport` is. Sent by one of this node's pods: EGRESS; otherwise (from outside,
/// from the host) INGRESS, traffic coming in to the Service (Hubble's clients expect a direction
/// on every drop).
pub fn service_drop_flow(dir: &Directory, p: &DroppedPacket, reason: DropReason, time_ns: u64) -> Flow {
    let mut f = dropped(dir, p, ObservationPoint::FromEndpoint, time_ns);
    f.drop_reason = Some(reason);
    // (The trace's direction: egress when a local pod sent it.)
    if f.direction != TrafficDirection::Egress {
        f.direction = TrafficDirection::Ingress;
    }
    f.destination_service = dir.service_at(p.dst, p.dport, p.proto);
    f
}

/// `p` named through `dir` (the direction as a trace at `point` would have it), as a drop:
/// DROPPED, event type drop, no observation point, the packet's TCP flags.
fn dropped(dir: &Directory, p: &DroppedPacket, point: ObservationPoint, time_ns: u64) -> Flow {
    let mut f = dir.trace(&Observed {
        time_ns,
        proto: p.proto,
        src: p.src,
        sport: p.sport,
        dst: p.dst,
        dport: p.dport,
        translated_to: None,
        observation: point,
    });
    f.verdict = Verdict::Dropped;
    f.event = EventKind::Drop;
    f.observation = None;
    if let Some(L4::Tcp { flags, .. }) = &mut f.l4 {
        *flags = TcpFlags::from_byte(p.tcp_flags);
    }
    f
}
