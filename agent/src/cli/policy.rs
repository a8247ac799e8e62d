//! `sluice endpoint list`, `sluice identity list`, `sluice policy get`, `sluice policy trace`.

use std::path::Path;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use sluice_core::Protocol;
use sluice_core::policy::trace::{Step, Trace};

use crate::Output;
use crate::api::policy::decision_text;
use crate::api::{Request, Response, call};

fn ask(socket: &Path, req: Request) -> anyhow::Result<Response> {
    match super::block_on(call(socket, &req))?? {
        Response::Error(e) => bail!("the agent refused: {e}"),
        r => Ok(r),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    t
}

pub fn endpoints(socket: &Path, out: Output) -> anyhow::Result<()> {
    let Response::Endpoints(list) = ask(socket, Request::Endpoints)? else { bail!("agent sent an unexpected answer") };
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut t = table(&["ENDPOINT", "IPv4", "IDENTITY", "POLICY (ingress)", "POLICY (egress)", "LABELS"]);
    for e in &list {
        let dir = |state: &str, n: usize, by: &[String]| {
            if by.is_empty() { state.to_string() } else { format!("{state} ({n} rules)\n{}", by.join("\n")) }
        };
        let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.add_row([
            e.pod.clone(),
            e.ip.clone(),
            e.identity.to_string(),
            dir(&e.ingress, e.ingress_rules, &e.ingress_policies),
            dir(&e.egress, e.egress_rules, &e.egress_policies),
            labels.join("\n"),
        ]);
    }
    println!("{t}");
    if list.is_empty() {
        println!("(no pod on this node)");
    }
    Ok(())
}

pub fn identities(socket: &Path, out: Output) -> anyhow::Result<()> {
    let Response::Identities(list) = ask(socket, Request::Identities)? else {
        bail!("agent sent an unexpected answer")
    };
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut t = table(&["ID", "LABELS", "PODS"]);
    for i in &list {
        let id = match i.moved_from {
            Some(p) => format!("{} (hash collision: {p} was taken)", i.identity),
            None => i.identity.to_string(),
        };
        t.add_row([id, i.labels.join("\n"), i.pods.to_string()]);
    }
    println!("{t}");
    Ok(())
}

pub fn get(socket: &Path, out: Output) -> anyhow::Result<()> {
    let Response::Policies(r) = ask(socket, Request::Policies)? else { bail!("agent sent an unexpected answer") };
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("policy_enforcement: {}", r.enforcement);
    let mut t = table(&["POLICY", "MODE", "INGRESS", "EGRESS", "SELECTS ON THIS NODE"]);
    for p in &r.policies {
        let dir = |allow: Option<usize>, deny: usize| match (allow, deny) {
            (None, 0) => "-".to_string(),
            (a, d) => {
                let mut s = format!("{} allow rules", a.unwrap_or(0));
                if d > 0 {
                    s.push_str(&format!(", {d} deny"));
                }
                s
            }
        };
        t.add_row([
            p.name.clone(),
            if p.audit { "audit".into() } else { "enforce".into() },
            dir(p.policy.ingress.as_ref().map(Vec::len), p.policy.ingress_deny.len()),
            dir(p.policy.egress.as_ref().map(Vec::len), p.policy.egress_deny.len()),
            if p.selects.is_empty() { "(none)".into() } else { p.selects.join("\n") },
        ]);
    }
    println!("{t}");
    if r.policies.is_empty() {
        println!("(no policy in force)");
    }
    for rej in &r.rejected {
        println!("refused: {rej}");
    }
    Ok(())
}

/// `80`, `80/TCP`, `53/udp`.
pub fn parse_port(s: &str) -> anyhow::Result<(u16, Protocol)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("port {port:?} is not 1-65535 (give PORT or PORT/PROTO, e.g. 80/TCP)"))?;
    let proto = match proto.to_ascii_uppercase().as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => bail!("protocol {other:?} is not one of TCP, UDP, SCTP"),
    };
    Ok((port, proto))
}

fn step_line(what: &str, s: &Option<Step>) -> String {
    match s {
        None => format!("{what}: not policed (not a pod)"),
        Some(s) => {
            let mut l = format!("{what}: {}", decision_text(&s.decision));
            if let Some(a) = &s.audit {
                l.push_str(&format!("\n  audit: would be {}", decision_text(a)));
            }
            l
        }
    }
}

pub fn trace(socket: &Path, from: &str, to: &str, port: &str, out: Output) -> anyhow::Result<bool> {
    let (port, protocol) = parse_port(port)?;
    let req = Request::Trace { from: from.into(), to: to.into(), port, protocol };
    let Response::Trace(t) = ask(socket, req)? else { bail!("agent sent an unexpected answer") };
    let t: Trace = *t;
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&t)?);
        return Ok(t.allowed);
    }
    let who = |p: &sluice_core::policy::trace::Party| match &p.pod {
        Some(pod) => format!("{pod} ({}, identity {})", p.ip, p.identity),
        None => format!("{} (identity {})", p.ip, p.identity),
    };
    println!("{} -> {} on {port}/{protocol}", who(&t.from), who(&t.to));
    println!("{}", step_line("egress of the source", &t.egress));
    println!("{}", step_line("ingress of the destination", &t.ingress));
    println!("verdict: {}", if t.allowed { "ALLOWED" } else { "DENIED" });
    Ok(t.allowed)
}
