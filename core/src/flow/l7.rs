//! HTTP exchanges seen by the L7 proxy, as Hubble's L7 flows: a `REQUEST` flow when the request
//! is decided (FORWARDED, or DROPPED when no HTTP rule allows it: the proxy answered 403) and a
//! `RESPONSE` flow with the status code and the time to the response head.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::enrich::Directory;
use super::{DropReason, EventKind, Flow, L4, PolicyMatch, TcpFlags, TrafficDirection, Verdict};

/// Hubble's `L7FlowType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(i32)]
pub enum L7Type {
    Request = 1,
    Response = 2,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http {
    /// 0 on requests.
    pub code: u16,
    pub method: String,
    pub url: String,
    pub protocol: String,
    /// Only headers the config lets through (none by default: they may carry secrets).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7 {
    pub r#type: L7Type,
    pub latency_ns: u64,
    pub http: Http,
}

/// One request as the proxy handled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedHttp {
    /// When the request arrived.
    pub time_ns: u64,
    /// Decided by the server's ingress rules (else the client's egress rules).
    pub ingress: bool,
    pub client: (Ipv4Addr, u16),
    pub server: (Ipv4Addr, u16),
    pub method: String,
    pub url: String,
    pub protocol: String,
    /// The status sent back (403 when refused, 502 when the upstream failed).
    pub code: u16,
    pub latency_ns: u64,
    /// Refused by these policies' HTTP rules (nothing was forwarded).
    pub denied_by: Option<Vec<String>>,
    /// Allowed through these policies' HTTP rules.
    pub allowed_by: Vec<String>,
    /// The headers `l7.flow_headers` names, of the request and of the response.
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
}

impl Directory {
    /// The request flow and, unless refused, the response flow.
    pub fn http(&self, o: &ObservedHttp) -> Vec<Flow> {
        let direction = if o.ingress { TrafficDirection::Ingress } else { TrafficDirection::Egress };
        let flow = |time_ns, verdict, l7: L7, reply: bool| {
            let (src, dst) = if reply { (o.server, o.client) } else { (o.client, o.server) };
            let flags = TcpFlags { psh: true, ack: true, ..Default::default() };
            Flow {
                time_ns,
                verdict,
                drop_reason: (verdict == Verdict::Dropped).then_some(DropReason::PolicyDenied),
                event: EventKind::L7,
                observation: None,
                source_ip: src.0,
                destination_ip: dst.0,
                l4: Some(L4::Tcp { source_port: src.1, destination_port: dst.1, flags }),
                source: self.endpoint(src.0),
                destination: self.endpoint(dst.0),
                node_name: self.node_name().to_string(),
                direction,
                is_reply: Some(reply),
                source_service: None,
                destination_service: None,
                policy: PolicyMatch {
                    allowed_by: o.allowed_by.clone(),
                    denied_by: o.denied_by.clone().unwrap_or_default(),
                },
                l7: Some(l7),
                sock: None,
            }
        };
        let http = |code, headers: &Vec<(String, String)>| Http {
            code,
            method: o.method.clone(),
            url: o.url.clone(),
            protocol: o.protocol.clone(),
            headers: headers.clone(),
        };
        let verdict = if o.denied_by.is_some() { Verdict::Dropped } else { Verdict::Forwarded };
        let mut out = vec![flow(
            o.time_ns,
            verdict,
            L7 { r#type: L7Type::Request, latency_ns: 0, http: http(0, &o.request_headers) },
            false,
        )];
        if o.denied_by.is_none() {
            let l7 = L7 { r#type: L7Type::Response, latency_ns: o.latency_ns, http: http(o.code, &o.response_headers) };
            out.push(flow(o.time_ns + o.latency_ns, Verdict::Forwarded, l7, true));
        }
        out
    }
}
