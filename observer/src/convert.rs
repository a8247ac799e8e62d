//! core flow records <-> wire messages. Requests are checked here: an unknown enum value, a bad
//! filter or a `since` after `until` is an error naming the field and the value.

use sluice_core::flow::filter::{FilterError, FlowFilter};
use sluice_core::flow::ring::{Query, QueryError};
use sluice_core::flow::{self as core, L4, TrafficDirection, Verdict};

use crate::pb::flow as pb;
use crate::pb::observer::GetFlowsRequest;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Filter(#[from] FilterError),
    #[error("{0}")]
    Query(#[from] QueryError),
    #[error("{field}: {value} is not a known value; accepted: {accepted}")]
    Enum { field: &'static str, value: i32, accepted: &'static str },
    #[error("{field}: {detail}")]
    Time { field: &'static str, detail: String },
}

pub fn timestamp(ns: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (ns / 1_000_000_000) as i64, nanos: (ns % 1_000_000_000) as i32 }
}

fn ns(field: &'static str, t: &prost_types::Timestamp) -> Result<u64, RequestError> {
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(RequestError::Time {
            field,
            detail: format!(
                "{}s {}ns is before 1970 or not normalized; accepted: a time after 1970",
                t.seconds, t.nanos
            ),
        });
    }
    Ok(t.seconds as u64 * 1_000_000_000 + t.nanos as u64)
}

fn verdict(v: i32) -> Result<Verdict, RequestError> {
    Verdict::from_number(v).ok_or(RequestError::Enum {
        field: "verdict",
        value: v,
        accepted: "FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED, TRANSLATED",
    })
}

fn direction(v: i32) -> Result<TrafficDirection, RequestError> {
    TrafficDirection::from_number(v).ok_or(RequestError::Enum {
        field: "traffic_direction",
        value: v,
        accepted: "TRAFFIC_DIRECTION_UNKNOWN, INGRESS, EGRESS",
    })
}

fn flag_names(f: &pb::TcpFlags) -> Vec<String> {
    [(f.fin, "FIN"), (f.syn, "SYN"), (f.rst, "RST"), (f.psh, "PSH"), (f.ack, "ACK"), (f.urg, "URG")]
        .into_iter()
        .filter(|&(set, _n)| set)
        .map(|(_set, n)| n.to_string())
        .collect()
}

pub fn filter(f: &pb::FlowFilter) -> Result<FlowFilter, RequestError> {
    Ok(FlowFilter {
        source_ip: f.source_ip.clone(),
        source_pod: f.source_pod.clone(),
        source_label: f.source_label.clone(),
        source_service: f.source_service.clone(),
        source_identity: f.source_identity.clone(),
        destination_ip: f.destination_ip.clone(),
        destination_pod: f.destination_pod.clone(),
        destination_label: f.destination_label.clone(),
        destination_service: f.destination_service.clone(),
        destination_identity: f.destination_identity.clone(),
        verdict: f.verdict.iter().map(|v| verdict(*v)).collect::<Result<_, _>>()?,
        event_type: f.event_type.iter().map(|e| (e.r#type, e.match_sub_type.then_some(e.sub_type))).collect(),
        protocol: f.protocol.clone(),
        source_port: f.source_port.clone(),
        destination_port: f.destination_port.clone(),
        reply: f.reply.clone(),
        tcp_flags: f.tcp_flags.iter().map(flag_names).collect(),
        node_name: f.node_name.clone(),
        traffic_direction: f.traffic_direction.iter().map(|d| direction(*d)).collect::<Result<_, _>>()?,
        http_status_code: f.http_status_code.clone(),
        http_method: f.http_method.clone(),
        http_path: f.http_path.clone(),
    })
}

/// A request's query (number, first, since, until), checked.
pub fn query(r: &GetFlowsRequest) -> Result<Query, RequestError> {
    let q = Query {
        number: (r.number > 0).then_some(r.number),
        first: r.first,
        since_ns: r.since.as_ref().map(|t| ns("since", t)).transpose()?,
        until_ns: r.until.as_ref().map(|t| ns("until", t)).transpose()?,
    };
    q.validate()?;
    Ok(q)
}

fn endpoint(e: &core::Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        id: e.id,
        identity: e.identity,
        namespace: e.namespace.clone(),
        labels: e.labels.clone(),
        pod_name: e.pod_name.clone(),
        workloads: e.workload.iter().map(|w| pb::Workload { name: w.name.clone(), kind: w.kind.clone() }).collect(),
    }
}

fn service(s: &core::ServiceRef) -> pb::Service {
    pb::Service { name: s.name.clone(), namespace: s.namespace.clone() }
}

/// Policies as core names them (`PolicyName`'s display: `Kind ns/name`, `Kind name` for a
/// cluster-wide one; a bare `ns/name` is a NetworkPolicy) in Hubble's fields.
fn policies(names: &[String]) -> Vec<pb::Policy> {
    names.iter().map(|n| policy(n)).collect()
}

fn policy(n: &str) -> pb::Policy {
    let (kind, rest) = match n.split_once(' ') {
        Some((k, rest)) if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphabetic()) => (k, rest),
        // A bare `ns/name` is a NetworkPolicy; anything else (a note such as "(a policy rule
        // changed since this packet)") is passed on as the name alone.
        _ => (if n.contains('/') { "NetworkPolicy" } else { "" }, n),
    };
    let (namespace, name) = rest.split_once('/').unwrap_or(("", rest));
    pb::Policy { name: name.into(), namespace: namespace.into(), kind: kind.into(), ..Default::default() }
}

/// The name core gives a policy back (the inverse of [`policy`] for what it produced).
fn policy_name(p: &pb::Policy) -> String {
    match (p.kind.as_str(), p.namespace.as_str()) {
        ("", "") => p.name.clone(),
        ("", ns) => format!("{ns}/{}", p.name),
        (kind, "") => format!("{kind} {}", p.name),
        (kind, ns) => format!("{kind} {ns}/{}", p.name),
    }
}

pub fn flow(f: &core::Flow) -> pb::Flow {
    let l4 = f.l4.map(|l| pb::Layer4 {
        protocol: Some(match l {
            L4::Tcp { source_port, destination_port, flags } => pb::layer4::Protocol::Tcp(pb::Tcp {
                source_port: source_port.into(),
                destination_port: destination_port.into(),
                flags: Some(pb::TcpFlags {
                    fin: flags.fin,
                    syn: flags.syn,
                    rst: flags.rst,
                    psh: flags.psh,
                    ack: flags.ack,
                    urg: flags.urg,
                    ..Default::default()
                }),
            }),
            L4::Udp { source_port, destination_port } => pb::layer4::Protocol::Udp(pb::Udp {
                source_port: source_port.into(),
                destination_port: destination_port.into(),
            }),
            L4::Icmpv4 { r#type, code } => {
                pb::layer4::Protocol::IcmPv4(pb::IcmPv4 { r#type: r#type.into(), code: code.into() })
            }
        }),
    });
    let ingress = f.direction == TrafficDirection::Ingress;
    let (allowed, denied) = (policies(&f.policy.allowed_by), policies(&f.policy.denied_by));
    pb::Flow {
        time: Some(timestamp(f.time_ns)),
        verdict: f.verdict as i32,
        drop_reason: f.drop_reason.map_or(0, |r| r as u32),
        ip: Some(pb::Ip {
            // A trace-sock flow's socket has no source address yet: unset, as Hubble's.
            source: if f.sock.is_some() && f.source_ip.is_unspecified() {
                String::new()
            } else {
                f.source_ip.to_string()
            },
            destination: f.destination_ip.to_string(),
            ip_version: pb::IpVersion::IPv4 as i32,
            encrypted: false,
        }),
        l4,
        source: Some(endpoint(&f.source)),
        destination: Some(endpoint(&f.destination)),
        r#type: f.flow_type(),
        node_name: f.node_name.clone(),
        reply: f.is_reply.unwrap_or(false),
        event_type: Some(pb::CiliumEventType { r#type: f.event as i32, sub_type: f.sub_type() }),
        source_service: f.source_service.as_ref().map(service),
        destination_service: f.destination_service.as_ref().map(service),
        traffic_direction: f.direction as i32,
        trace_observation_point: f.observation.map_or(0, |o| o as i32),
        drop_reason_desc: f.drop_reason.map_or(0, |r| r as i32),
        is_reply: f.is_reply,
        ingress_allowed_by: if ingress { allowed.clone() } else { Vec::new() },
        egress_allowed_by: if ingress { Vec::new() } else { allowed },
        ingress_denied_by: if ingress { denied.clone() } else { Vec::new() },
        egress_denied_by: if ingress { Vec::new() } else { denied },
        policy_match_type: 0,
        sock_xlate_point: f.sock.map_or(0, |x| x.point as i32),
        socket_cookie: f.sock.map_or(0, |x| x.socket_cookie),
        l7: f.l7.as_ref().map(|l| pb::Layer7 {
            r#type: l.r#type as i32,
            latency_ns: l.latency_ns,
            record: Some(pb::layer7::Record::Http(pb::Http {
                code: l.http.code.into(),
                method: l.http.method.clone(),
                url: l.http.url.clone(),
                protocol: l.http.protocol.clone(),
                headers: l
                    .http
                    .headers
                    .iter()
                    .map(|(k, v)| pb::HttpHeader { key: k.clone(), value: v.clone() })
                    .collect(),
            })),
        }),
        ..Default::default()
    }
}

fn l7_back(l: &pb::Layer7) -> Option<core::l7::L7> {
    let r#type = match l.r#type {
        1 => core::l7::L7Type::Request,
        2 => core::l7::L7Type::Response,
        _ => return None,
    };
    let Some(pb::layer7::Record::Http(h)) = &l.record else { return None };
    Some(core::l7::L7 {
        r#type,
        latency_ns: l.latency_ns,
        http: core::l7::Http {
            code: h.code as u16,
            method: h.method.clone(),
            url: h.url.clone(),
            protocol: h.protocol.clone(),
            headers: h.headers.iter().map(|x| (x.key.clone(), x.value.clone())).collect(),
        },
    })
}

fn endpoint_back(e: Option<&pb::Endpoint>) -> core::Endpoint {
    e.map(|e| core::Endpoint {
        id: e.id,
        identity: e.identity,
        namespace: e.namespace.clone(),
        pod_name: e.pod_name.clone(),
        labels: e.labels.clone(),
        workload: e.workloads.first().map(|w| core::Workload { name: w.name.clone(), kind: w.kind.clone() }),
    })
    .unwrap_or_default()
}

/// A wire flow back into core's record (for the CLI's lines); None when it lacks addresses or
/// carries values this build does not know.
pub fn flow_back(f: &pb::Flow) -> Option<core::Flow> {
    use core::{DropReason, EventKind, ObservationPoint};
    let ip = f.ip.as_ref()?;
    let l4 = f.l4.as_ref().and_then(|l| l.protocol.as_ref()).map(|p| match p {
        pb::layer4::Protocol::Tcp(t) => L4::Tcp {
            source_port: t.source_port as u16,
            destination_port: t.destination_port as u16,
            flags: t
                .flags
                .as_ref()
                .map(|x| core::TcpFlags { fin: x.fin, syn: x.syn, rst: x.rst, psh: x.psh, ack: x.ack, urg: x.urg })
                .unwrap_or_default(),
        },
        pb::layer4::Protocol::Udp(u) => {
            L4::Udp { source_port: u.source_port as u16, destination_port: u.destination_port as u16 }
        }
        pb::layer4::Protocol::IcmPv4(i) => L4::Icmpv4 { r#type: i.r#type as u8, code: i.code as u8 },
    });
    let event = f.event_type.as_ref().and_then(|e| EventKind::from_number(e.r#type)).unwrap_or(EventKind::Trace);
    let observation = ObservationPoint::from_number(f.trace_observation_point);
    let drop_reason = DropReason::from_number(f.drop_reason_desc);
    let sock = core::SockXlatePoint::from_number(f.sock_xlate_point)
        .map(|point| core::SockXlate { point, socket_cookie: f.socket_cookie });
    let names = |ps: &[pb::Policy]| -> Vec<String> { ps.iter().map(policy_name).collect() };
    Some(core::Flow {
        time_ns: f.time.as_ref().map_or(0, |t| t.seconds.max(0) as u64 * 1_000_000_000 + t.nanos.max(0) as u64),
        verdict: verdict(f.verdict).ok()?,
        drop_reason,
        event,
        observation,
        source_ip: if ip.source.is_empty() && sock.is_some() {
            std::net::Ipv4Addr::UNSPECIFIED
        } else {
            ip.source.parse().ok()?
        },
        destination_ip: ip.destination.parse().ok()?,
        l4,
        source: endpoint_back(f.source.as_ref()),
        destination: endpoint_back(f.destination.as_ref()),
        node_name: f.node_name.clone(),
        direction: direction(f.traffic_direction).unwrap_or_default(),
        is_reply: f.is_reply,
        source_service: f
            .source_service
            .as_ref()
            .map(|s| core::ServiceRef { namespace: s.namespace.clone(), name: s.name.clone() }),
        destination_service: f
            .destination_service
            .as_ref()
            .map(|s| core::ServiceRef { namespace: s.namespace.clone(), name: s.name.clone() }),
        policy: core::PolicyMatch {
            allowed_by: [names(&f.ingress_allowed_by), names(&f.egress_allowed_by)].concat(),
            denied_by: [names(&f.ingress_denied_by), names(&f.egress_denied_by)].concat(),
        },
        l7: f.l7.as_ref().and_then(l7_back),
        sock,
    })
}

#[cfg(test)]
mod policy_names {
    use super::*;

    #[test]
    fn policy_names_become_hubbles_fields_and_come_back() {
        let p = policy("NetworkPolicy default/web-isolated");
        assert_eq!(
            (p.kind.as_str(), p.namespace.as_str(), p.name.as_str()),
            ("NetworkPolicy", "default", "web-isolated")
        );
        let c = policy("SluiceClusterwideNetworkPolicy no-egress");
        assert_eq!(
            (c.kind.as_str(), c.namespace.as_str(), c.name.as_str()),
            ("SluiceClusterwideNetworkPolicy", "", "no-egress")
        );
        let bare = policy("team-a/deny-all");
        assert_eq!((bare.kind.as_str(), bare.namespace.as_str()), ("NetworkPolicy", "team-a"));
        let note = policy("(a policy rule changed since this packet)");
        assert_eq!((note.kind.as_str(), note.name.as_str()), ("", "(a policy rule changed since this packet)"));
        for n in [
            "NetworkPolicy default/web-isolated",
            "SluiceClusterwideNetworkPolicy no-egress",
            "(a policy rule changed since this packet)",
        ] {
            assert_eq!(policy_name(&policy(n)), n);
        }
    }
}
