//! `sluice observe`: flows from this node's Observer API (Hubble's wire format), printed as
//! `hubble observe` prints them: one compact line a flow, or one `GetFlowsResponse` a line as
//! JSON with proto field names and enum names.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};
use sluice_observer::pb::flow as pb;
use sluice_observer::pb::observer::observer_client::ObserverClient;
use sluice_observer::pb::observer::{GetFlowsRequest, GetFlowsResponse, get_flows_response::ResponseTypes};
use tokio_stream::StreamExt;

use crate::Output;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ObserveArgs {
    /// The Observer's unix socket (default: hubble.sock beside the agent's socket).
    #[arg(long, env = "SLUICE_HUBBLE_SOCKET")]
    pub server: Option<PathBuf>,
    /// The last N flows (oldest first).
    #[arg(long, default_value_t = 20)]
    pub last: u64,
    /// The first N flows in the buffer instead.
    #[arg(long)]
    pub first: Option<u64>,
    /// Every flow in the buffer.
    #[arg(long)]
    pub all: bool,
    /// Keep streaming new flows (after the last N; with --last 0 only new ones).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Source pod: POD-PREFIX, NS/ or NS/POD-PREFIX (repeatable: any of them).
    #[arg(long)]
    pub from_pod: Vec<String>,
    #[arg(long)]
    pub to_pod: Vec<String>,
    #[arg(long)]
    pub from_namespace: Vec<String>,
    #[arg(long)]
    pub to_namespace: Vec<String>,
    /// Source IP or CIDR.
    #[arg(long)]
    pub from_ip: Vec<String>,
    #[arg(long)]
    pub to_ip: Vec<String>,
    /// Source label selector, e.g. app=web.
    #[arg(long)]
    pub from_label: Vec<String>,
    #[arg(long)]
    pub to_label: Vec<String>,
    /// Destination Service: NS/NAME.
    #[arg(long)]
    pub to_service: Vec<String>,
    /// Destination port.
    #[arg(long)]
    pub port: Vec<String>,
    /// FORWARDED, DROPPED, ... (case-insensitive).
    #[arg(long)]
    pub verdict: Vec<String>,
    /// tcp, udp, icmpv4.
    #[arg(long)]
    pub protocol: Vec<String>,
    /// trace, drop, policy-verdict, l7.
    #[arg(long = "type")]
    pub kind: Vec<String>,
}

const VERDICTS: [&str; 7] = ["FORWARDED", "DROPPED", "ERROR", "AUDIT", "REDIRECTED", "TRACED", "TRANSLATED"];

fn filter(a: &ObserveArgs) -> anyhow::Result<pb::FlowFilter> {
    let verdict = a
        .verdict
        .iter()
        .map(|v| {
            VERDICTS
                .iter()
                .position(|n| n.eq_ignore_ascii_case(v))
                .map(|i| i as i32 + 1)
                .with_context(|| format!("--verdict {v:?} is not a verdict; accepted: {}", VERDICTS.join(", ")))
        })
        .collect::<anyhow::Result<_>>()?;
    let event_type = a
        .kind
        .iter()
        .map(|t| {
            sluice_core::flow::filter::event_kind(t)
                .map(|k| pb::EventTypeFilter { r#type: k as i32, match_sub_type: false, sub_type: 0 })
                .with_context(|| {
                    format!("--type {t:?} is not an event type; accepted: trace, drop, policy-verdict, l7")
                })
        })
        .collect::<anyhow::Result<_>>()?;
    let ns = |v: &[String]| v.iter().map(|n| format!("{n}/")).collect::<Vec<_>>();
    Ok(pb::FlowFilter {
        source_pod: [a.from_pod.clone(), ns(&a.from_namespace)].concat(),
        destination_pod: [a.to_pod.clone(), ns(&a.to_namespace)].concat(),
        source_ip: a.from_ip.clone(),
        destination_ip: a.to_ip.clone(),
        source_label: a.from_label.clone(),
        destination_label: a.to_label.clone(),
        destination_service: a.to_service.clone(),
        destination_port: a.port.clone(),
        verdict,
        protocol: a.protocol.clone(),
        event_type,
        ..Default::default()
    })
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC).
fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return String::new() };
    let days = t.seconds.div_euclid(86_400);
    let secs = t.seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z", secs / 3600, secs / 60 % 60, secs % 60, t.nanos)
}

fn endpoint(e: Option<&pb::Endpoint>) -> Value {
    e.map(|e| json!({"ID": e.id, "identity": e.identity, "namespace": e.namespace, "labels": e.labels, "pod_name": e.pod_name}))
        .unwrap_or(Value::Null)
}

/// One response as `hubble observe -o json` prints it.
pub fn json_line(r: &GetFlowsResponse) -> Value {
    let mut out = json!({"node_name": r.node_name, "time": rfc3339(r.time.as_ref())});
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => {
            let l4 = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
                Some(pb::layer4::Protocol::Tcp(t)) => {
                    let flags: serde_json::Map<String, Value> = t
                        .flags
                        .as_ref()
                        .map(|x| {
                            [
                                ("FIN", x.fin),
                                ("SYN", x.syn),
                                ("RST", x.rst),
                                ("PSH", x.psh),
                                ("ACK", x.ack),
                                ("URG", x.urg),
                            ]
                            .into_iter()
                            .filter(|(_, set)| *set)
                            .map(|(n, _)| (n.to_string(), Value::Bool(true)))
                            .collect()
                        })
                        .unwrap_or_default();
                    json!({"TCP": {"source_port": t.source_port, "destination_port": t.destination_port, "flags": flags}})
                }
                Some(pb::layer4::Protocol::Udp(u)) => {
                    json!({"UDP": {"source_port": u.source_port, "destination_port": u.destination_port}})
                }
                Some(pb::layer4::Protocol::IcmPv4(i)) => json!({"ICMPv4": {"type": i.r#type, "code": i.code}}),
                None => Value::Null,
            };
            let name = |n: Option<&str>| n.unwrap_or("").to_string();
            let mut flow = json!({
                "time": rfc3339(f.time.as_ref()),
                "verdict": name(pb::Verdict::try_from(f.verdict).ok().map(|v| v.as_str_name())),
                "IP": f.ip.as_ref().map(|ip| json!({"source": ip.source, "destination": ip.destination, "ipVersion": "IPv4"})),
                "l4": l4,
                "source": endpoint(f.source.as_ref()),
                "destination": endpoint(f.destination.as_ref()),
                "Type": name(pb::FlowType::try_from(f.r#type).ok().map(|v| v.as_str_name())),
                "node_name": f.node_name,
                "event_type": f.event_type.as_ref().map(|e| json!({"type": e.r#type, "sub_type": e.sub_type})),
                "traffic_direction": name(pb::TrafficDirection::try_from(f.traffic_direction).ok().map(|v| v.as_str_name())),
                "is_reply": f.is_reply,
            });
            if f.trace_observation_point != 0 {
                flow["trace_observation_point"] = json!(name(
                    pb::TraceObservationPoint::try_from(f.trace_observation_point).ok().map(|v| v.as_str_name())
                ));
            }
            if f.drop_reason_desc != 0 {
                flow["drop_reason_desc"] =
                    json!(name(pb::DropReason::try_from(f.drop_reason_desc).ok().map(|v| v.as_str_name())));
            }
            if let Some(s) = &f.destination_service {
                flow["destination_service"] = json!({"name": s.name, "namespace": s.namespace});
            }
            out["flow"] = flow;
        }
        Some(ResponseTypes::LostEvents(l)) => {
            out["lost_events"] = json!({
                "source": pb::LostEventSource::try_from(l.source).map(|s| s.as_str_name()).unwrap_or(""),
                "num_events_lost": l.num_events_lost
            });
        }
        _ => {}
    }
    out
}

fn compact(r: &GetFlowsResponse) -> Option<String> {
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => {
            let time = rfc3339(f.time.as_ref());
            Some(match sluice_observer::convert::flow_back(f) {
                Some(core) => sluice_core::flow::compact::line(&time, &core),
                None => format!("{time}: (a flow this build cannot print: {f:?})"),
            })
        }
        Some(ResponseTypes::LostEvents(l)) => {
            Some(format!("EVENTS LOST: {} flows this reader did not get in time", l.num_events_lost))
        }
        _ => None,
    }
}

pub fn run(agent_socket: &Path, a: &ObserveArgs, output: Output) -> anyhow::Result<()> {
    let socket = a.server.clone().unwrap_or_else(|| agent_socket.with_file_name("hubble.sock"));
    let req = GetFlowsRequest {
        number: if a.all { u64::MAX } else { a.first.unwrap_or(a.last) },
        first: a.first.is_some(),
        follow: a.follow,
        whitelist: {
            let f = filter(a)?;
            if f == pb::FlowFilter::default() { Vec::new() } else { vec![f] }
        },
        ..Default::default()
    };
    super::block_on(async move {
        let channel = sluice_observer::client::connect_unix(socket.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot reach the Observer at {} (is the agent running with flows on? `sluice status` shows the Flows line; --server picks another socket)",
                    socket.display()
                )
            })?;
        let mut stream = ObserverClient::new(channel)
            .get_flows(req)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        while let Some(item) = stream.next().await {
            let r = item.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            match output {
                Output::Json => println!("{}", json_line(&r)),
                Output::Table => {
                    if let Some(l) = compact(&r) {
                        println!("{l}");
                    }
                }
            }
        }
        anyhow::Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let t = prost_types::Timestamp { seconds: 1_796_461_200, nanos: 5 };
        assert_eq!(rfc3339(Some(&t)), "2026-12-05T09:00:00.000000005Z");
        assert_eq!(rfc3339(Some(&prost_types::Timestamp { seconds: 0, nanos: 0 })), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn bad_flags_name_the_value_and_what_is_accepted() {
        let a = ObserveArgs { verdict: vec!["ALLOWED".into()], ..Default::default() };
        let e = filter(&a).expect_err("bad verdict").to_string();
        assert!(e.contains("ALLOWED") && e.contains("FORWARDED"), "{e}");
        let a = ObserveArgs { kind: vec!["flow".into()], ..Default::default() };
        assert!(filter(&a).expect_err("bad type").to_string().contains("trace, drop"));
        let a = ObserveArgs { from_namespace: vec!["x".into()], verdict: vec!["dropped".into()], ..Default::default() };
        let f = filter(&a).expect("ok");
        assert_eq!((f.source_pod, f.verdict), (vec!["x/".to_string()], vec![2]));
    }
}
