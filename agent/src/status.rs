//! What `sluice status` shows: the agent's view of its node, source and kernel objects.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use sluice_core::Plan;

pub use crate::api::types::AgentStatus;

pub fn render(s: &AgentStatus) -> String {
    let mut out = String::new();
    let line = |k: &str, v: &str| format!("{k:<16}{v}\n");
    out += &line("Node:", &s.node);
    out += &line("Underlay IP:", s.underlay_ip.as_deref().unwrap_or("unknown (no InternalIP in Node object)"));
    out += &line(
        "Pod CIDR:",
        s.pod_cidr.as_deref().unwrap_or("waiting: no pod_cidr in config and none in the Node object"),
    );
    out += &line("Cluster CIDR:", &s.cluster_cidr);
    let src = &s.source;
    out += &line(
        "Source:",
        &format!(
            "{} {} ({}, {} objects{})",
            src.kind,
            src.location,
            match (src.synced, src.stale_secs) {
                (_, Some(s)) => format!("STALE for {s}s: API unreachable, dataplane unchanged"),
                (true, None) => "synced".into(),
                (false, None) => "NOT synced".into(),
            },
            src.objects,
            if src.errors.is_empty() { String::new() } else { format!(", {} errors", src.errors.len()) }
        ),
    );
    out += &line("CNI conflist:", s.conflist.as_deref().unwrap_or("not written"));
    out += &line("Masquerade:", &s.masquerade);
    for b in &s.backends {
        out += &line(&format!("{}:", b.id), &b.summary);
    }
    if s.backends.is_empty() {
        out += &line("eBPF:", if s.ebpf.is_empty() { "not loaded" } else { &s.ebpf });
    }
    out += &line("Kernel:", &format!("{} (probed in {} ms)", s.kernel, s.probe_ms));
    out += &line(
        "Config:",
        &format!(
            "{} (generation {}{})",
            s.config.path.as_deref().unwrap_or("flags/env only"),
            s.config.generation,
            s.config.rejected.as_ref().map(|r| format!(", LAST RELOAD REJECTED: {r}")).unwrap_or_default()
        ),
    );
    if let Some(m) = &s.config.migration {
        out += &line(
            "Migration:",
            &format!(
                "kube_proxy_replacement pinned to {} by `{}` (over the config file; `sluice migrate release` unpins)",
                m.kube_proxy_replacement.title().to_lowercase(),
                m.set_by
            ),
        );
    }
    out += &line("Services:", &s.services.to_string());
    let p = &s.policy;
    out += &line(
        "Policy:",
        &format!(
            "enforcement={} by {}; {} policies; {} endpoints isolated on ingress, {} on egress; {} identities",
            p.enforcement,
            if p.owner.is_empty() { "nobody" } else { &p.owner },
            p.policies.len(),
            p.ingress_isolated,
            p.egress_isolated,
            p.identities
        ),
    );
    let f = &s.flows;
    out += &line(
        "Flows:",
        &if f.running {
            format!(
                "{}; Observer on {}{}; {}/{} flows held, {} seen, {} overwritten, {} kernel overruns",
                f.source,
                f.socket.as_deref().unwrap_or("-"),
                f.listen_address
                    .as_deref()
                    .map(|a| format!(
                        " and {a}{}",
                        f.tls.as_deref().map(|t| format!(" (TLS: {t})")).unwrap_or_default()
                    ))
                    .unwrap_or_default(),
                f.flows,
                f.capacity,
                f.seen,
                f.overwritten,
                f.lost_in_kernel
            )
        } else {
            format!("off{}", f.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())
        },
    );
    if let Some(p) = &s.l7_proxy {
        out += &line(
            "L7 proxy:",
            &format!("pid {} on 127.0.0.1:{} (control socket {}; outlives the agent)", p.pid, p.port, p.control),
        );
    }
    let m = &s.metrics;
    out += &line(
        "Metrics:",
        &match (&m.agent, &m.hubble) {
            (None, None) => "not served (set metrics.listen_address / metrics.hubble_listen_address)".to_string(),
            (a, h) => format!(
                "sluice_* on {}; hubble_* on {} [{}]",
                a.as_deref().unwrap_or("-"),
                h.as_deref().unwrap_or("-"),
                m.enabled.join(", ")
            ),
        },
    );
    if !s.held.is_empty() {
        let names: Vec<String> = s.held.iter().map(|n| n.to_string()).collect();
        out += &line(
            "Held:",
            &format!("{} (missing from an incomplete source read; kept until a complete one)", names.join(", ")),
        );
    }
    for f in &s.features {
        if let sluice_core::Progress::Moving { kept_by } = &f.progress {
            let by: Vec<String> = kept_by.iter().map(|b| b.to_string()).collect();
            out += &line(
                "Moving:",
                &format!("{} to {}: still served by {} until it does", f.feature, f.planned, by.join(", ")),
            );
        } else if f.progress == sluice_core::Progress::Failed {
            out += &line(
                "FAILED:",
                &format!("{} is served by nobody: {} failed to program it (see errors)", f.feature, f.planned),
            );
        }
        for h in &f.holes {
            let cover = match h.covered_by {
                Some(b) => format!("served there by {b} until it does"),
                None => "NOT SERVED there: no other backend can".into(),
            };
            out += &line(
                "Hole:",
                &format!("{} on {}: {} could not attach (see errors); {cover}", f.feature, h.interface, f.planned),
            );
        }
    }
    out += &line("Routes:", &format!("{} to other nodes' pod CIDRs", s.routes.len()));
    for r in &s.routes {
        out += &format!("  {} via {}\n", r.dst, r.via);
    }
    if let Some(p) = &s.plan {
        out += &render_plan(p);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["POD", "IP", "INTERFACE", "CONTAINER"]);
    for e in &s.local_endpoints {
        let pod = match (&e.pod_namespace, &e.pod_name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            _ => "-".into(),
        };
        let short: String = e.container_id.chars().take(12).collect();
        t.add_row([pod, e.ip.to_string(), e.host_interface.clone(), short]);
    }
    out += &format!("Local endpoints: {}\n{t}\n", s.local_endpoints.len());
    for e in &src.errors {
        out += &format!("source error: {e}\n");
    }
    for r in &s.rejected {
        out += &format!("rejected: {}: {}\n", r.object, r.reason);
    }
    for e in &s.errors {
        out += &format!("error: {e}\n");
    }
    out
}

/// The status line, a FEATURE | OWNER | REASON table and the warnings.
pub fn render_plan(p: &Plan) -> String {
    let mut out = format!("{}\ntc attach: {}\n", p.status_line(), p.tc_attach.describe());
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["FEATURE", "OWNER", "REASON"]);
    for e in &p.entries {
        t.add_row([e.feature.name().to_string(), e.owner.to_string(), e.reason.to_string()]);
    }
    out += &format!("{t}\n");
    for w in &p.warnings {
        out += &format!("warning: {w}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use sluice_core::{BackendId, Feature, FeatureState, Owner, Progress, ServiceName};

    use super::*;

    #[test]
    fn held_services_and_moving_features_are_shown() {
        let s = AgentStatus {
            held: vec![ServiceName { namespace: "default".into(), name: "other".into() }],
            features: vec![FeatureState {
                feature: Feature::NodePort,
                planned: Owner::EBPF,
                progress: Progress::Moving { kept_by: vec![BackendId::IPTABLES] },
                holes: Vec::new(),
            }],
            ..Default::default()
        };
        let text = render(&s);
        assert!(text.contains("Held:           default/other (missing from an incomplete source read"), "{text}");
        assert!(text.contains("Moving:         node-port to eBPF: still served by iptables"), "{text}");
    }

    #[test]
    fn holes_name_the_interface_and_who_covers_it() {
        let s = AgentStatus {
            features: vec![FeatureState {
                feature: Feature::ClusterIp,
                planned: Owner::EBPF,
                progress: Progress::Serving,
                holes: vec![sluice_core::HoleState {
                    interface: "veth1".into(),
                    covered_by: Some(BackendId::IPTABLES),
                }],
            }],
            ..Default::default()
        };
        let text = render(&s);
        assert!(
            text.contains(
                "Hole:           cluster-ip on veth1: eBPF could not attach (see errors); served there by iptables"
            ),
            "{text}"
        );
    }
}
