//! Hubble's flow metrics, as pure logic: the `metrics.enabled` strings operators already write
//! for Hubble (`flow`, `drop:sourceContext=namespace;destinationContext=pod`, ...) parsed into
//! specs, and each flow turned into the samples it adds (metric name and label pairs). The
//! observer crate keeps the counters and serves them; nothing here does I/O.
//!
//! Names, labels and label values are Hubble's, so its Grafana dashboards and alerts work
//! unchanged: `hubble_flows_processed_total{protocol,type,subtype,verdict}`,
//! `hubble_drop_total{reason,protocol}`, `hubble_tcp_flags_total{flag,family}`,
//! `hubble_port_distribution_total{protocol,port}`, `hubble_icmp_total{family,type}`,
//! `hubble_policy_verdicts_total{direction,match,action}`; context options add `source` and
//! `destination` labels.

use std::fmt;

use super::{EventKind, Flow, L4, TrafficDirection, Verdict};
use crate::policy::Identity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricKind {
    Flow,
    Drop,
    Tcp,
    PortDistribution,
    Icmp,
    Policy,
    /// `http`: requests, responses and request durations of L7 flows (three metrics).
    Http,
}

impl MetricKind {
    pub const ALL: [MetricKind; 7] = [
        MetricKind::Flow,
        MetricKind::Drop,
        MetricKind::Tcp,
        MetricKind::PortDistribution,
        MetricKind::Icmp,
        MetricKind::Policy,
        MetricKind::Http,
    ];

    /// The name in `metrics.enabled` (Hubble's).
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Flow => "flow",
            MetricKind::Drop => "drop",
            MetricKind::Tcp => "tcp",
            MetricKind::PortDistribution => "port-distribution",
            MetricKind::Icmp => "icmp",
            MetricKind::Policy => "policy",
            MetricKind::Http => "http",
        }
    }

    /// The Prometheus name without the `hubble_` prefix and the counter's `_total` suffix.
    pub fn metric(self) -> &'static str {
        match self {
            MetricKind::Flow => "flows_processed",
            MetricKind::Drop => "drop",
            MetricKind::Tcp => "tcp_flags",
            MetricKind::PortDistribution => "port_distribution",
            MetricKind::Icmp => "icmp",
            MetricKind::Policy => "policy_verdicts",
            MetricKind::Http => "http_requests",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            MetricKind::Flow => "Total number of flows processed",
            MetricKind::Drop => "Number of drops",
            MetricKind::Tcp => "TCP flag occurrences",
            MetricKind::PortDistribution => "Numbers of packets distributed by destination port",
            MetricKind::Icmp => "Number of ICMP messages",
            MetricKind::Policy => "Number of policy verdicts",
            MetricKind::Http => "Count of HTTP requests",
        }
    }

    /// Label names before the context labels.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            MetricKind::Flow => &["protocol", "type", "subtype", "verdict"],
            MetricKind::Drop => &["reason", "protocol"],
            MetricKind::Tcp => &["flag", "family"],
            MetricKind::PortDistribution => &["protocol", "port"],
            MetricKind::Icmp => &["family", "type"],
            MetricKind::Policy => &["direction", "match", "action"],
            MetricKind::Http => &["method", "protocol", "reporter"],
        }
    }
}

/// What a `source`/`destination` label says about an endpoint (Hubble's context options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    Namespace,
    /// `namespace/pod`.
    Pod,
    PodName,
    Ip,
    /// The identity's labels, comma-separated.
    Identity,
    /// `reserved:world` and friends; empty for cluster identities.
    ReservedIdentity,
    /// `namespace/workload`.
    Workload,
    WorkloadName,
    /// From `app.kubernetes.io/name`, `k8s-app` or `app`.
    App,
}

impl Context {
    const ALL: [(Context, &'static str); 9] = [
        (Context::Namespace, "namespace"),
        (Context::Pod, "pod"),
        (Context::PodName, "pod-name"),
        (Context::Ip, "ip"),
        (Context::Identity, "identity"),
        (Context::ReservedIdentity, "reserved-identity"),
        (Context::Workload, "workload"),
        (Context::WorkloadName, "workload-name"),
        (Context::App, "app"),
    ];
    const ACCEPTED: &'static str = "namespace, pod, pod-name, ip, identity, reserved-identity, workload, workload-name, app (alternatives joined by |)";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsSpecError {
    #[error(
        "metrics.enabled[{index}]: unknown metric {name:?}; accepted: flow, drop, tcp, port-distribution, icmp, policy, http"
    )]
    UnknownMetric { index: usize, name: String },
    #[error(
        "metrics.enabled[{index}]: unknown option {option:?} in {entry:?}; accepted: sourceContext, destinationContext"
    )]
    UnknownOption { index: usize, entry: String, option: String },
    #[error("metrics.enabled[{index}]: {option}={value:?} is not valid; accepted: {accepted}")]
    BadValue { index: usize, option: String, value: String, accepted: &'static str },
    #[error("metrics.enabled[{index}]: {name:?} is enabled twice (entry {first}); give each metric once")]
    Duplicate { index: usize, name: String, first: usize },
}

/// One enabled metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSpec {
    pub kind: MetricKind,
    /// Alternatives: the first that says something about the endpoint is the label's value.
    pub source: Vec<Context>,
    pub destination: Vec<Context>,
}

impl fmt::Display for MetricSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ctx = |c: &[Context]| {
            c.iter()
                .filter_map(|c| Context::ALL.iter().find(|(k, _)| k == c).map(|(_, n)| *n))
                .collect::<Vec<_>>()
                .join("|")
        };
        write!(f, "{}", self.kind.name())?;
        let mut opts = Vec::new();
        if !self.source.is_empty() {
            opts.push(format!("sourceContext={}", ctx(&self.source)));
        }
        if !self.destination.is_empty() {
            opts.push(format!("destinationContext={}", ctx(&self.destination)));
        }
        if !opts.is_empty() {
            write!(f, ":{}", opts.join(";"))?;
        }
        Ok(())
    }
}

/// Parse `metrics.enabled` (Hubble's syntax: `name` or `name:option=value;option=value`).
pub fn parse(entries: &[String]) -> Result<Vec<MetricSpec>, MetricsSpecError> {
    let mut specs: Vec<(usize, MetricSpec)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let (name, opts) = entry.split_once(':').unwrap_or((entry.as_str(), ""));
        let kind = MetricKind::ALL
            .into_iter()
            .find(|k| k.name() == name.trim())
            .ok_or_else(|| MetricsSpecError::UnknownMetric { index, name: name.into() })?;
        if let Some((first, _)) = specs.iter().find(|(_, s)| s.kind == kind) {
            return Err(MetricsSpecError::Duplicate { index, name: kind.name().into(), first: *first });
        }
        let mut spec = MetricSpec { kind, source: Vec::new(), destination: Vec::new() };
        for opt in opts.split(';').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
            let slot = match key {
                "sourceContext" => &mut spec.source,
                "destinationContext" => &mut spec.destination,
                _ => return Err(MetricsSpecError::UnknownOption { index, entry: entry.clone(), option: key.into() }),
            };
            for v in value.split('|') {
                let c = Context::ALL.iter().find(|(_, n)| *n == v).map(|(c, _)| *c).ok_or_else(|| {
                    MetricsSpecError::BadValue {
                        index,
                        option: key.into(),
                        value: value.into(),
                        accepted: Context::ACCEPTED,
                    }
                })?;
                slot.push(c);
            }
        }
        specs.push((index, spec));
    }
    Ok(specs.into_iter().map(|(_, s)| s).collect())
}

/// One increment: the metric and its label pairs, in the order `label_names` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub kind: MetricKind,
    pub labels: Vec<(&'static str, String)>,
}

/// Hubble's protocol label: the L4 protocol (the L7 one for L7 flows).
pub fn protocol(f: &Flow) -> &'static str {
    if f.event == EventKind::L7 {
        return "HTTP";
    }
    f.l4.map_or("Unknown flow", |l| l.protocol())
}

use super::compact::verdict as verdict_name;

fn icmp_type(t: u8, code: u8) -> String {
    match (t, code) {
        (0, _) => "EchoReply".into(),
        (3, 0) => "DestinationUnreachable(Net)".into(),
        (3, 1) => "DestinationUnreachable(Host)".into(),
        (3, 3) => "DestinationUnreachable(Port)".into(),
        (3, _) => "DestinationUnreachable".into(),
        (5, _) => "Redirect".into(),
        (8, _) => "EchoRequest".into(),
        (11, _) => "TimeExceeded".into(),
        (12, _) => "ParameterProblem".into(),
        _ => t.to_string(),
    }
}

fn context_value(ctx: &[Context], ep: &super::Endpoint, ip: std::net::Ipv4Addr) -> String {
    let label = |keys: &[&str]| {
        keys.iter().find_map(|k| {
            let prefix = format!("k8s:{k}=");
            ep.labels.iter().find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
        })
    };
    ctx.iter()
        .map(|c| match c {
            Context::Namespace => ep.namespace.clone(),
            Context::Pod if !ep.pod_name.is_empty() => format!("{}/{}", ep.namespace, ep.pod_name),
            Context::Pod => String::new(),
            Context::PodName => ep.pod_name.clone(),
            Context::Ip => ip.to_string(),
            Context::Identity => ep.labels.join(","),
            Context::ReservedIdentity => {
                Identity(ep.identity).reserved_name().map(|n| format!("reserved:{n}")).unwrap_or_default()
            }
            Context::Workload => {
                ep.workload.as_ref().map(|w| format!("{}/{}", ep.namespace, w.name)).unwrap_or_default()
            }
            Context::WorkloadName => ep.workload.as_ref().map(|w| w.name.clone()).unwrap_or_default(),
            Context::App => label(&["app.kubernetes.io/name", "k8s-app", "app"]).unwrap_or_default(),
        })
        .find(|v| !v.is_empty())
        .unwrap_or_default()
}

impl MetricSpec {
    /// Every label name of this metric, context labels last.
    pub fn label_names(&self) -> Vec<&'static str> {
        let mut names = self.kind.labels().to_vec();
        if !self.source.is_empty() {
            names.push("source");
        }
        if !self.destination.is_empty() {
            names.push("destination");
        }
        names
    }

    /// What `f` adds to this metric (nothing, one sample, or one per TCP flag).
    pub fn samples(&self, f: &Flow) -> Vec<Sample> {
        let forwarded = f.verdict == Verdict::Forwarded;
        let base: Vec<Vec<String>> = match self.kind {
            MetricKind::Flow => {
                let (ty, sub) = match f.event {
                    EventKind::L7 => ("L7", "HTTP".to_string()),
                    EventKind::Drop => ("Drop", String::new()),
                    EventKind::PolicyVerdict => ("PolicyVerdict", String::new()),
                    EventKind::Trace => {
                        ("Trace", f.observation.map(|o| super::compact::point(o).to_string()).unwrap_or_default())
                    }
                    EventKind::TraceSock => ("Unknown", (EventKind::TraceSock as i32).to_string()),
                };
                vec![vec![protocol(f).into(), ty.into(), sub, verdict_name(f.verdict).into()]]
            }
            MetricKind::Drop if f.verdict == Verdict::Dropped => {
                let reason = f.drop_reason.map_or("DROP_REASON_UNKNOWN", |r| r.name());
                vec![vec![reason.into(), protocol(f).into()]]
            }
            MetricKind::Tcp => match f.l4 {
                Some(L4::Tcp { flags, .. }) if forwarded => {
                    let mut names = Vec::new();
                    if flags.syn {
                        names.push(if flags.ack { "SYN-ACK" } else { "SYN" });
                    }
                    if flags.fin {
                        names.push("FIN");
                    }
                    if flags.rst {
                        names.push("RST");
                    }
                    names.into_iter().map(|n| vec![n.to_string(), "IPv4".into()]).collect()
                }
                _ => Vec::new(),
            },
            MetricKind::PortDistribution if forwarded && f.is_reply != Some(true) => match f.l4.and_then(|l| l.ports())
            {
                Some((_, dport)) => vec![vec![protocol(f).into(), dport.to_string()]],
                None => Vec::new(),
            },
            MetricKind::Icmp => match f.l4 {
                Some(L4::Icmpv4 { r#type, code }) => vec![vec!["IPv4".into(), icmp_type(r#type, code)]],
                _ => Vec::new(),
            },
            MetricKind::Policy if f.event == EventKind::PolicyVerdict => {
                let direction = match f.direction {
                    TrafficDirection::Ingress => "ingress",
                    TrafficDirection::Egress => "egress",
                    TrafficDirection::Unknown => "unknown",
                };
                let matched =
                    if f.policy.allowed_by.is_empty() && f.policy.denied_by.is_empty() { "none" } else { "l3-l4" };
                vec![vec![direction.into(), matched.into(), verdict_name(f.verdict).to_lowercase()]]
            }
            MetricKind::Http => match &f.l7 {
                Some(l7) if l7.r#type == super::l7::L7Type::Request => {
                    vec![vec![l7.http.method.clone(), l7.http.protocol.clone(), reporter(f).into()]]
                }
                _ => Vec::new(),
            },
            MetricKind::Drop | MetricKind::PortDistribution | MetricKind::Policy => Vec::new(),
        };
        let names = self.label_names();
        base.into_iter()
            .map(|mut values| {
                if !self.source.is_empty() {
                    values.push(context_value(&self.source, &f.source, f.source_ip));
                }
                if !self.destination.is_empty() {
                    values.push(context_value(&self.destination, &f.destination, f.destination_ip));
                }
                Sample { kind: self.kind, labels: names.iter().copied().zip(values).collect() }
            })
            .collect()
    }
}

/// Who reported an L7 flow, as Hubble labels it: the client's side (egress rules) or the
/// server's (ingress rules).
fn reporter(f: &Flow) -> &'static str {
    match f.direction {
        TrafficDirection::Egress => "client",
        TrafficDirection::Ingress => "server",
        TrafficDirection::Unknown => "unknown",
    }
}

/// What an `http` response flow adds to `hubble_http_responses_total{method,status,reporter}`
/// and to `hubble_http_request_duration_seconds{method,reporter}` (label pairs, seconds).
pub struct HttpResponse {
    pub responses: Vec<(&'static str, String)>,
    pub duration: Vec<(&'static str, String)>,
    pub seconds: f64,
}

impl MetricSpec {
    pub fn http_response(&self, f: &Flow) -> Option<HttpResponse> {
        let l7 = f.l7.as_ref().filter(|l| self.kind == MetricKind::Http && l.r#type == super::l7::L7Type::Response)?;
        let mut ctx = Vec::new();
        if !self.source.is_empty() {
            ctx.push(("source", context_value(&self.source, &f.source, f.source_ip)));
        }
        if !self.destination.is_empty() {
            ctx.push(("destination", context_value(&self.destination, &f.destination, f.destination_ip)));
        }
        let method = ("method", l7.http.method.clone());
        let reporter = ("reporter", reporter(f).to_string());
        let mut responses = vec![method.clone(), ("status", l7.http.code.to_string()), reporter.clone()];
        responses.extend(ctx.iter().cloned());
        let mut duration = vec![method, reporter];
        duration.extend(ctx);
        Some(HttpResponse { responses, duration, seconds: l7.latency_ns as f64 / 1e9 })
    }
}

/// Hubble's `lost_events_total{source}` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LostSource {
    /// The kernel's queue towards the agent overran (perf/ring buffer, netlink).
    Kernel,
    /// A reader of the flow ring fell behind and missed flows.
    HubbleRingBuffer,
}

impl LostSource {
    pub fn label(self) -> &'static str {
        match self {
            LostSource::Kernel => "perf_event_ring_buffer",
            LostSource::HubbleRingBuffer => "hubble_ring_buffer",
        }
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
