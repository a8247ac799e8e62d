//! `GetFlows` filters with Hubble's semantics: inside one filter every set field must match
//! (AND); inside one field any listed value may match (OR); a flow passes when it matches any
//! whitelist filter (or there is none) and no blacklist filter. Filters are compiled once, and
//! compiling names the field and value it cannot read (the API answers InvalidArgument with it).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{EventKind, Flow, TrafficDirection, Verdict};

/// A filter as a client sends it (strings as on the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    pub source_ip: Vec<String>,
    pub source_pod: Vec<String>,
    pub source_label: Vec<String>,
    pub source_service: Vec<String>,
    pub source_identity: Vec<u32>,
    pub destination_ip: Vec<String>,
    pub destination_pod: Vec<String>,
    pub destination_label: Vec<String>,
    pub destination_service: Vec<String>,
    pub destination_identity: Vec<u32>,
    pub verdict: Vec<Verdict>,
    /// (type, sub_type): a sub_type of None matches every sub_type.
    pub event_type: Vec<(i32, Option<i32>)>,
    pub protocol: Vec<String>,
    pub source_port: Vec<String>,
    pub destination_port: Vec<String>,
    pub reply: Vec<bool>,
    /// Each entry: flags that must all be set (`SYN`, `SYN,ACK`).
    pub tcp_flags: Vec<Vec<String>>,
    /// Patterns with `*` (any run of characters).
    pub node_name: Vec<String>,
    pub traffic_direction: Vec<TrafficDirection>,
    /// `404`, or a class: `4+` (any 4xx), `5+`. Responses only.
    pub http_status_code: Vec<String>,
    pub http_method: Vec<String>,
    /// Regular expressions over the URL's path.
    pub http_path: Vec<String>,
}

/// A compiled `http_path` (compared by its pattern).
#[derive(Debug, Clone)]
struct PathRe(regex::Regex);

impl PartialEq for PathRe {
    fn eq(&self, o: &Self) -> bool {
        self.0.as_str() == o.0.as_str()
    }
}

impl Eq for PathRe {}

/// An `http_status_code`: exact, or a class (`4+`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Code(u16),
    Class(u16),
}

fn status(s: &str) -> Option<Status> {
    match s.strip_suffix('+') {
        Some(c) => c.parse::<u16>().ok().filter(|c| (1..=5).contains(c)).map(Status::Class),
        None => s.parse::<u16>().ok().filter(|c| (100..=599).contains(c)).map(Status::Code),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {index}: {field} {value:?} is not valid; accepted: {accepted}")]
pub struct FilterError {
    /// Which filter of the list (whitelist or blacklist, in order).
    pub index: usize,
    pub field: &'static str,
    pub value: String,
    pub accepted: &'static str,
}

/// `ns/`, `ns/prefix` or `prefix` (any namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodPattern {
    namespace: Option<String>,
    prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Side {
    nets: Vec<Ipv4Net>,
    pods: Vec<PodPattern>,
    /// Selectors (OR across), each a list of requirements (AND within).
    labels: Vec<Vec<LabelReq>>,
    services: Vec<PodPattern>,
    identities: Vec<u32>,
    ports: Vec<u16>,
}

/// A filter ready to match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    source: Side,
    destination: Side,
    verdicts: Vec<Verdict>,
    events: Vec<(i32, Option<i32>)>,
    protocols: Vec<String>,
    reply: Vec<bool>,
    tcp_flags: Vec<Vec<String>>,
    nodes: Vec<String>,
    directions: Vec<TrafficDirection>,
    statuses: Vec<Status>,
    methods: Vec<String>,
    paths: Vec<PathRe>,
}

const PROTOCOLS: [&str; 3] = ["tcp", "udp", "icmpv4"];
const FLAGS: [&str; 6] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG"];

fn pod_pattern(s: &str) -> PodPattern {
    match s.split_once('/') {
        Some((ns, prefix)) => PodPattern { namespace: Some(ns.to_string()), prefix: prefix.to_string() },
        None => PodPattern { namespace: None, prefix: s.to_string() },
    }
}

fn net(s: &str) -> Option<Ipv4Net> {
    if let Ok(n) = s.parse::<Ipv4Net>() {
        return Some(n);
    }
    s.parse::<Ipv4Addr>().ok().map(Ipv4Net::from)
}

fn label_key(k: &str) -> Option<String> {
    let k = k.trim();
    let bare = k.strip_prefix("k8s:").unwrap_or(k);
    let ok = !bare.is_empty()
        && bare.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && bare.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    ok.then(|| bare.to_string())
}

fn values(v: &str) -> Option<Vec<String>> {
    let inner = v.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect())
}

/// One Kubernetes label selector: requirements separated by commas outside parentheses.
fn selector(s: &str) -> Option<Vec<LabelReq>> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    let mut reqs = Vec::new();
    for p in parts.iter().map(|p| p.trim()) {
        let req = if let Some((k, v)) = p.split_once("!=") {
            LabelReq::NotEq(label_key(k)?, v.trim().to_string())
        } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            LabelReq::Eq(label_key(k)?, v.trim().to_string())
        } else if let Some((k, v)) = p.split_once(" notin ") {
            LabelReq::NotIn(label_key(k)?, values(v)?)
        } else if let Some((k, v)) = p.split_once(" in ") {
            LabelReq::In(label_key(k)?, values(v)?)
        } else if let Some(k) = p.strip_prefix('!') {
            LabelReq::Absent(label_key(k)?)
        } else {
            LabelReq::Exists(label_key(p)?)
        };
        reqs.push(req);
    }
    Some(reqs)
}

impl FlowFilter {
    /// `index`: the filter's place in its list, for the error.
    pub fn compile(&self, index: usize) -> Result<Compiled, FilterError> {
        let err = |field: &'static str, value: &str, accepted: &'static str| FilterError {
            index,
            field,
            value: value.to_string(),
            accepted,
        };
        let side = |ips: &[String],
                    pods: &[String],
                    labels: &[String],
                    services: &[String],
                    identities: &[u32],
                    ports: &[String],
                    names: [&'static str; 5]|
         -> Result<Side, FilterError> {
            let nets = ips
                .iter()
                .map(|s| net(s).ok_or_else(|| err(names[0], s, "an IPv4 address or CIDR (10.0.0.1, 10.0.0.0/8)")))
                .collect::<Result<_, _>>()?;
            let pods = pods
                .iter()
                .map(|s| {
                    if s.is_empty() || s.matches('/').count() > 1 {
                        Err(err(names[1], s, "POD-PREFIX, NAMESPACE/ or NAMESPACE/POD-PREFIX"))
                    } else {
                        Ok(pod_pattern(s))
                    }
                })
                .collect::<Result<_, _>>()?;
            let labels = labels
                .iter()
                .map(|s| {
                    selector(s).ok_or_else(|| {
                        err(
                            names[2],
                            s,
                            "a label selector: key=value, key!=value, key, !key, key in (a,b), key notin (a,b)",
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            let services = services
                .iter()
                .map(|s| {
                    if s.is_empty() || s.matches('/').count() > 1 {
                        Err(err(names[3], s, "NAME-PREFIX, NAMESPACE/ or NAMESPACE/NAME-PREFIX"))
                    } else {
                        Ok(pod_pattern(s))
                    }
                })
                .collect::<Result<_, _>>()?;
            let ports = ports
                .iter()
                .map(|s| s.parse::<u16>().map_err(|_| err(names[4], s, "a port number 0-65535")))
                .collect::<Result<_, _>>()?;
            Ok(Side { nets, pods, labels, services, identities: identities.to_vec(), ports })
        };
        let source = side(
            &self.source_ip,
            &self.source_pod,
            &self.source_label,
            &self.source_service,
            &self.source_identity,
            &self.source_port,
            ["source_ip", "source_pod", "source_label", "source_service", "source_port"],
        )?;
        let destination = side(
            &self.destination_ip,
            &self.destination_pod,
            &self.destination_label,
            &self.destination_service,
            &self.destination_identity,
            &self.destination_port,
            ["destination_ip", "destination_pod", "destination_label", "destination_service", "destination_port"],
        )?;
        let protocols = self
            .protocol
            .iter()
            .map(|p| {
                let l = p.to_ascii_lowercase();
                if PROTOCOLS.contains(&l.as_str()) { Ok(l) } else { Err(err("protocol", p, "tcp, udp, icmpv4")) }
            })
            .collect::<Result<_, _>>()?;
        for set in &self.tcp_flags {
            if let Some(f) = set.iter().find(|f| !FLAGS.contains(&f.to_ascii_uppercase().as_str())) {
                return Err(err("tcp_flags", f, "FIN, SYN, RST, PSH, ACK, URG"));
            }
        }
        for (t, _) in &self.event_type {
            if ![1, 4, 5, 7, 129].contains(t) {
                return Err(err(
                    "event_type",
                    &t.to_string(),
                    "1 (drop), 4 (trace), 5 (policy verdict), 7 (sock), 129 (l7)",
                ));
            }
        }
        for n in &self.node_name {
            if n.is_empty() {
                return Err(err("node_name", n, "a node name pattern, `*` for any run of characters"));
            }
        }
        let statuses = self
            .http_status_code
            .iter()
            .map(|s| status(s).ok_or_else(|| err("http_status_code", s, "a status code (404) or a class (4+)")))
            .collect::<Result<_, _>>()?;
        let paths = self
            .http_path
            .iter()
            .map(|p| regex::Regex::new(p).map(PathRe).map_err(|_| err("http_path", p, "a regular expression")))
            .collect::<Result<_, _>>()?;
        Ok(Compiled {
            statuses,
            methods: self.http_method.clone(),
            paths,
            source,
            destination,
            verdicts: self.verdict.clone(),
            events: self.event_type.clone(),
            protocols,
            reply: self.reply.clone(),
            tcp_flags: self.tcp_flags.iter().map(|s| s.iter().map(|f| f.to_ascii_uppercase()).collect()).collect(),
            nodes: self.node_name.clone(),
            directions: self.traffic_direction.clone(),
        })
    }
}

fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let mut rest = s;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else if let Some(at) = rest.find(p) {
            rest = &rest[at + p.len()..];
        } else {
            return false;
        }
    }
    true
}

fn label_value<'a>(labels: &'a [String], key: &str) -> Option<&'a str> {
    labels.iter().find_map(|l| {
        let l = l.split_once(':').map_or(l.as_str(), |(_, rest)| rest);
        let (k, v) = l.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn req_matches(r: &LabelReq, labels: &[String]) -> bool {
    match r {
        LabelReq::Eq(k, v) => label_value(labels, k) == Some(v.as_str()),
        LabelReq::NotEq(k, v) => label_value(labels, k) != Some(v.as_str()),
        LabelReq::In(k, vs) => label_value(labels, k).is_some_and(|x| vs.iter().any(|v| v == x)),
        LabelReq::NotIn(k, vs) => label_value(labels, k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        LabelReq::Exists(k) => label_value(labels, k).is_some(),
        LabelReq::Absent(k) => label_value(labels, k).is_none(),
    }
}

fn pattern_matches(p: &PodPattern, namespace: &str, name: &str) -> bool {
    !name.is_empty() && p.namespace.as_deref().is_none_or(|ns| ns == namespace) && name.starts_with(&p.prefix)
}

impl Side {
    fn matches(&self, ip: Ipv4Addr, ep: &super::Endpoint, svc: Option<&super::ServiceRef>, port: Option<u16>) -> bool {
        (self.nets.is_empty() || self.nets.iter().any(|n| n.contains(&ip)))
            && (self.pods.is_empty() || self.pods.iter().any(|p| pattern_matches(p, &ep.namespace, &ep.pod_name)))
            && (self.labels.is_empty() || self.labels.iter().any(|sel| sel.iter().all(|r| req_matches(r, &ep.labels))))
            && (self.services.is_empty()
                || svc.is_some_and(|s| self.services.iter().any(|p| pattern_matches(p, &s.namespace, &s.name))))
            && (self.identities.is_empty() || self.identities.contains(&ep.identity))
            && (self.ports.is_empty() || port.is_some_and(|p| self.ports.contains(&p)))
    }
}

impl Compiled {
    pub fn matches(&self, f: &Flow) -> bool {
        let ports = f.l4.as_ref().and_then(|l| l.ports());
        let flags = match f.l4 {
            Some(super::L4::Tcp { flags, .. }) => Some(flags.names()),
            _ => None,
        };
        self.source.matches(f.source_ip, &f.source, f.source_service.as_ref(), ports.map(|p| p.0))
            && self.destination.matches(
                f.destination_ip,
                &f.destination,
                f.destination_service.as_ref(),
                ports.map(|p| p.1),
            )
            && (self.verdicts.is_empty() || self.verdicts.contains(&f.verdict))
            && (self.events.is_empty()
                || self.events.iter().any(|(t, st)| *t == f.event as i32 && st.is_none_or(|st| st == f.sub_type())))
            && (self.protocols.is_empty()
                || f.l4.as_ref().is_some_and(|l| self.protocols.iter().any(|p| p.eq_ignore_ascii_case(l.protocol()))))
            && (self.reply.is_empty() || f.is_reply.is_some_and(|r| self.reply.contains(&r)))
            && (self.tcp_flags.is_empty()
                || flags.is_some_and(|set| {
                    self.tcp_flags.iter().any(|want| want.iter().all(|w| set.contains(&w.as_str())))
                }))
            && (self.nodes.is_empty() || self.nodes.iter().any(|n| glob(n, &f.node_name)))
            && (self.directions.is_empty() || self.directions.contains(&f.direction))
            && self.http_matches(f)
    }

    fn http_matches(&self, f: &Flow) -> bool {
        if self.statuses.is_empty() && self.methods.is_empty() && self.paths.is_empty() {
            return true;
        }
        let Some(l7) = &f.l7 else { return false };
        let h = &l7.http;
        let path =
            h.url.split_once("://").map_or(h.url.as_str(), |(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]));
        let path = path.split(['?', '#']).next().unwrap_or(path);
        (self.statuses.is_empty()
            || (h.code != 0
                && self.statuses.iter().any(|s| match *s {
                    Status::Code(c) => c == h.code,
                    Status::Class(c) => h.code / 100 == c,
                })))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(&h.method)))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.0.is_match(path)))
    }
}

/// A request's whitelist and blacklist.
#[derive(Debug, Clone, Default)]
pub struct FilterSet {
    whitelist: Vec<Compiled>,
    blacklist: Vec<Compiled>,
}

impl FilterSet {
    pub fn compile(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Result<Self, FilterError> {
        Ok(FilterSet {
            whitelist: whitelist.iter().enumerate().map(|(i, f)| f.compile(i)).collect::<Result<_, _>>()?,
            blacklist: blacklist.iter().enumerate().map(|(i, f)| f.compile(i)).collect::<Result<_, _>>()?,
        })
    }

    pub fn admits(&self, f: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|c| c.matches(f)))
            && !self.blacklist.iter().any(|c| c.matches(f))
    }
}

/// Event kinds by the names `sluice observe --type` takes.
pub fn event_kind(name: &str) -> Option<EventKind> {
    Some(match name {
        "trace" => EventKind::Trace,
        "drop" => EventKind::Drop,
        "policy-verdict" => EventKind::PolicyVerdict,
        "l7" => EventKind::L7,
        "trace-sock" => EventKind::TraceSock,
        _ => return None,
    })
}
