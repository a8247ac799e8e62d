//! One line per flow, the way `hubble observe` prints them by default:
//! `TIME: SRC:PORT (ID:N) -> DST:PORT (ID:N) POINT VERDICT (TCP Flags: SYN)`, with pods as
//! `namespace/pod`, other addresses as the IP and a reserved identity by name.

use super::{EventKind, Flow, ObservationPoint, Verdict};

/// `namespace/pod:port`, or `ip:port` for what is not a pod; a socket not bound yet (a
/// trace-sock flow's source) by its identity alone.
fn name(ep: &super::Endpoint, ip: std::net::Ipv4Addr, port: Option<u16>) -> String {
    if ip.is_unspecified() && ep.pod_name.is_empty() {
        return crate::policy::Identity(ep.identity).reserved_name().unwrap_or("unbound socket").to_string();
    }
    let who = if ep.pod_name.is_empty() { ip.to_string() } else { format!("{}/{}", ep.namespace, ep.pod_name) };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    format!("{who}{port}")
}

fn peer(ep: &super::Endpoint, ip: std::net::Ipv4Addr, port: Option<u16>) -> String {
    let id = match crate::policy::Identity(ep.identity).reserved_name() {
        Some(n) => n.to_string(),
        None => format!("ID:{}", ep.identity),
    };
    format!("{} ({id})", name(ep, ip, port))
}

/// Why a drop happened, as users need it: the deny rule's policy, or the isolation.
fn attribution(f: &Flow) -> Option<String> {
    if f.policy.denied_by.is_empty() {
        return None;
    }
    let by = f.policy.denied_by.join(", ");
    Some(if f.drop_reason == Some(super::DropReason::PolicyDenied) {
        format!("default deny: {by} select{} this pod", if f.policy.denied_by.len() == 1 { "s" } else { "" })
    } else {
        format!("by {by}")
    })
}

fn tcp_flags(f: &Flow) -> Option<String> {
    match f.l4 {
        Some(super::L4::Tcp { flags, .. }) if !flags.names().is_empty() => {
            Some(format!("TCP Flags: {}", flags.names().join(", ")))
        }
        _ => None,
    }
}

/// The columns of `hubble observe -o table` and `-o dict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub source: String,
    pub destination: String,
    /// The observation point of a trace, `drop`, or `policy-verdict`.
    pub kind: String,
    pub verdict: &'static str,
    /// TCP flags, the drop reason and who decided, the translated Service.
    pub summary: String,
}

/// `http-request` / `http-response` and what Hubble prints in brackets after the verdict.
fn http(f: &Flow) -> Option<(&'static str, String)> {
    let l7 = f.l7.as_ref()?;
    let h = &l7.http;
    Some(match l7.r#type {
        super::l7::L7Type::Request => ("http-request", format!("{} {} {}", h.protocol, h.method, h.url)),
        super::l7::L7Type::Response => (
            "http-response",
            format!("{} {} {}ms ({} {})", h.protocol, h.code, l7.latency_ns / 1_000_000, h.method, h.url),
        ),
    })
}

fn l7_denial(f: &Flow) -> Option<String> {
    (f.verdict == Verdict::Dropped && !f.policy.denied_by.is_empty())
        .then(|| format!("no HTTP rule of {} allows it", f.policy.denied_by.join(", ")))
}

pub fn columns(f: &Flow) -> Columns {
    let ports = f.l4.and_then(|l| l.ports());
    if let Some((kind, what)) = http(f) {
        let mut summary = vec![what];
        summary.extend(l7_denial(f));
        return Columns {
            source: name(&f.source, f.source_ip, ports.map(|p| p.0)),
            destination: name(&f.destination, f.destination_ip, ports.map(|p| p.1)),
            kind: kind.to_string(),
            verdict: verdict(f.verdict),
            summary: summary.join("; "),
        };
    }
    let kind = match f.event {
        EventKind::Drop => "drop".to_string(),
        EventKind::PolicyVerdict => "policy-verdict".to_string(),
        EventKind::TraceSock => f.sock.map_or("trace-sock", |x| x.point.name()).to_string(),
        _ => f.observation.map_or("trace", point).to_string(),
    };
    let mut summary: Vec<String> = Vec::new();
    if f.event == EventKind::Drop {
        summary.push(f.drop_reason.map_or("unknown reason", |r| r.name()).to_string());
    }
    if f.event == EventKind::PolicyVerdict && f.verdict == Verdict::Audit && !f.policy.denied_by.is_empty() {
        summary.push(format!("would be denied: {}", f.policy.denied_by.join(", ")));
    } else if f.event == EventKind::Drop {
        summary.extend(attribution(f));
    }
    if let Some(svc) = &f.destination_service {
        summary.push(format!("service {}/{}", svc.namespace, svc.name));
    }
    summary.extend(tcp_flags(f));
    let arrow_src = name(&f.source, f.source_ip, ports.map(|p| p.0));
    let arrow_dst = name(&f.destination, f.destination_ip, ports.map(|p| p.1));
    Columns {
        source: arrow_src,
        destination: arrow_dst,
        kind,
        verdict: verdict(f.verdict),
        summary: summary.join("; "),
    }
}

pub(crate) fn point(o: ObservationPoint) -> &'static str {
    match o {
        ObservationPoint::ToHost => "to-host",
        ObservationPoint::ToStack => "to-stack",
        ObservationPoint::FromEndpoint => "from-endpoint",
        ObservationPoint::FromHost => "from-host",
        ObservationPoint::FromStack => "from-stack",
        ObservationPoint::FromNetwork => "from-network",
        ObservationPoint::ToNetwork => "to-network",
        ObservationPoint::ToEndpoint => "to-endpoint",
    }
}

pub(crate) fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Forwarded => "FORWARDED",
        Verdict::Dropped => "DROPPED",
        Verdict::Error => "ERROR",
        Verdict::Audit => "AUDIT",
        Verdict::Redirected => "REDIRECTED",
        Verdict::Traced => "TRACED",
        Verdict::Translated => "TRANSLATED",
    }
}

/// `time` is rendered by the caller (local time zones are the CLI's business).
pub fn line(time: &str, f: &Flow) -> String {
    let ports = f.l4.and_then(|l| l.ports());
    let mut s = format!(
        "{time}: {} {} {}",
        peer(&f.source, f.source_ip, ports.map(|p| p.0)),
        if f.is_reply == Some(true) { "<-" } else { "->" },
        peer(&f.destination, f.destination_ip, ports.map(|p| p.1)),
    );
    if let Some(svc) = &f.destination_service {
        s += &format!(" (service {}/{})", svc.namespace, svc.name);
    }
    if let Some((kind, what)) = http(f) {
        s += &format!(" {kind} {} ({what})", verdict(f.verdict));
        if let Some(a) = l7_denial(f) {
            s += &format!(" ({a})");
        }
        return s;
    }
    match f.event {
        EventKind::Drop => {
            s += &format!(" {} ({})", verdict(f.verdict), f.drop_reason.map_or("unknown reason", |r| r.name()));
            match attribution(f) {
                Some(a) if f.drop_reason == Some(super::DropReason::PolicyDenied) => s += &format!(" ({a})"),
                Some(a) => s += &format!(" {a}"),
                None => {}
            }
        }
        EventKind::PolicyVerdict => {
            s += &format!(" policy-verdict {}", verdict(f.verdict));
            if f.verdict == Verdict::Audit && !f.policy.denied_by.is_empty() {
                s += &format!(" (would be denied: {})", f.policy.denied_by.join(", "));
            }
        }
        _ => {
            if let Some(o) = f.observation {
                s += &format!(" {}", point(o));
            }
            if let Some(x) = f.sock {
                s += &format!(" {}", x.point.name());
            }
            s += &format!(" {}", verdict(f.verdict));
        }
    }
    if let Some(t) = tcp_flags(f) {
        s += &format!(" ({t})");
    }
    s
}
