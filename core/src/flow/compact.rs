//! One line per flow, the way `hubble observe` prints them by default:
//! `TIME: SRC:PORT (ID:N) -> DST:PORT (ID:N) POINT VERDICT (TCP Flags: SYN)`, with pods as
//! `namespace/pod`, other addresses as the IP and a reserved identity by name.

use super::{EventKind, Flow, ObservationPoint, Verdict};

fn peer(ep: &super::Endpoint, ip: std::net::Ipv4Addr, port: Option<u16>) -> String {
    let who = if ep.pod_name.is_empty() { ip.to_string() } else { format!("{}/{}", ep.namespace, ep.pod_name) };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    let id = match crate::policy::Identity(ep.identity).reserved_name() {
        Some(n) => n.to_string(),
        None => format!("ID:{}", ep.identity),
    };
    format!("{who}{port} ({id})")
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
    match f.event {
        EventKind::Drop => {
            s += &format!(" {} ({})", verdict(f.verdict), f.drop_reason.map_or("unknown reason", |r| r.name()));
            if !f.policy.denied_by.is_empty() {
                let by = f.policy.denied_by.join(", ");
                // Attribution as users need it: the deny rule's policy, or the isolation.
                s += &if f.drop_reason == Some(super::DropReason::PolicyDenied) {
                    format!(
                        " (default deny: {by} select{} this pod)",
                        if f.policy.denied_by.len() == 1 { "s" } else { "" }
                    )
                } else {
                    format!(" by {by}")
                };
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
            s += &format!(" {}", verdict(f.verdict));
        }
    }
    if let Some(super::L4::Tcp { flags, .. }) = f.l4 {
        let names = flags.names();
        if !names.is_empty() {
            s += &format!(" (TCP Flags: {})", names.join(", "));
        }
    }
    s
}
