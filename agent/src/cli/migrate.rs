//! `sluice migrate plan`: kube-proxy's live Service state on this node (both iptables variants'
//! `KUBE-*` chains, read with iptables-save) compared frontend by frontend with what sluice
//! programs here (asked of the agent): what sluice takes over as is, what differs (both
//! values), what only one side serves, kube-proxy rules of unknown shape, and what blocks
//! cutover. Runs on the node, as root, beside its agent.

use std::path::Path;
use std::process::Command;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use sluice_core::migrate::{KubeProxyState, PlanRow, ProxiedFrontend, UnknownRule, Verdict, compare, sluice_frontends};
use sluice_core::view::ServiceView;
use sluice_iptables::restore::{Iptables, IptablesError, Variant};

use crate::Output;
use crate::api::{Request, Response, call};

#[derive(Debug, Serialize)]
pub struct MigratePlan {
    pub node: String,
    /// Where kube-proxy's state was found (`iptables-nft`, `iptables-legacy`), empty if nowhere.
    pub kube_proxy_sources: Vec<String>,
    pub rows: Vec<PlanRow>,
    pub unknown: Vec<UnknownRule>,
    /// Why cutover cannot happen now (empty: it can).
    pub blockers: Vec<Blocker>,
}

/// What stops `sluice migrate apply` (shown as its sentence in `-o json`).
#[derive(Debug, Clone, Serialize)]
#[serde(into = "String")]
pub enum Blocker {
    /// kube-proxy state in more than one mode or iptables variant.
    SeveralModes { sources: Vec<String> },
    /// kube-proxy's nftables-mode table could not be read as nft's JSON.
    NftablesUnreadable { why: String },
    /// Frontends only kube-proxy serves.
    OnlyKubeProxy { count: usize },
    /// Rules of a shape the parser does not know (`apply --force` keeps them and goes on).
    UnknownRules { count: usize },
}

impl Blocker {
    /// Whether `apply --force` may go past it.
    pub fn forceable(&self) -> bool {
        matches!(self, Blocker::UnknownRules { .. })
    }
}

impl From<Blocker> for String {
    fn from(b: Blocker) -> String {
        match b {
            Blocker::SeveralModes { sources } => format!(
                "kube-proxy state exists in more than one place ({}): a leftover of an earlier mode; clean the stale one (`kube-proxy --cleanup` in that mode) first",
                sources.join(", ")
            ),
            Blocker::NftablesUnreadable { why } => {
                format!("kube-proxy's nftables table `ip kube-proxy` could not be read ({why}); compare by hand")
            }
            Blocker::OnlyKubeProxy { count } => format!(
                "{count} frontend(s) only kube-proxy serves would stop answering at cutover (a Service sluice rejected or does not know: see `sluice service list`)"
            ),
            Blocker::UnknownRules { count } => format!(
                "{count} rule(s) in kube-proxy's chains of a shape sluice does not recognise (listed); they are kept, and block cutover unless `sluice migrate apply --force`"
            ),
        }
    }
}

/// kube-proxy's state in one iptables variant, if it has any `KUBE-*` chain there.
fn read_variant(variant: Variant) -> anyhow::Result<Option<KubeProxyState>> {
    let ipt = Iptables { variant };
    let nat = match ipt.save("nat") {
        Ok(t) => t,
        Err(IptablesError::Spawn { .. }) => return Ok(None), // this variant is not installed
        Err(e) => return Err(anyhow::anyhow!("reading kube-proxy's rules: {e}")),
    };
    if !nat.chains.iter().any(|c| c.starts_with("KUBE-")) {
        return Ok(None);
    }
    let filter = ipt.save("filter").map_err(|e| anyhow::anyhow!("reading kube-proxy's rules: {e}"))?;
    Ok(Some(sluice_iptables::kube_proxy::parse(&nat, Some(&filter), &format!("iptables-{}", variant.as_str()))))
}

/// kube-proxy's nftables-mode table, if it exists here (`nft` missing: no table): its state,
/// or why it could not be read.
fn read_nftables() -> Option<Result<KubeProxyState, String>> {
    let out = Command::new("nft").args(["-j", "list", "table", "ip", "kube-proxy"]).output().ok()?;
    if !out.status.success() {
        return None; // no such table
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(sluice_iptables::kube_proxy_nft::parse(&text).ok_or_else(|| "not nft's JSON".to_string()))
}

/// The plan, and sluice's own frontends (what `verify` probes).
pub fn build(socket: &Path) -> anyhow::Result<MigratePlan> {
    build_with_ours(socket).map(|(p, _)| p)
}

/// What sluice serves here, and where: the frontends and every node's address.
pub(crate) struct Ours {
    pub frontends: Vec<ProxiedFrontend>,
    pub node: String,
    pub nodes: Vec<sluice_core::NodeInfo>,
}

pub(crate) fn build_with_ours(socket: &Path) -> anyhow::Result<(MigratePlan, Ours)> {
    let (node, services, nodes) = match super::block_on(call(socket, &Request::DesiredServices))?? {
        Response::DesiredServices { node, services, nodes } => (node, services, nodes),
        Response::Error(e) => anyhow::bail!("agent refused the request: {e}"),
        _ => anyhow::bail!("agent sent an unexpected answer"),
    };
    let view = ServiceView::new(&node, &services, &[]);
    let ours = sluice_frontends(&view);
    let mut found = Vec::new();
    for variant in [Variant::Nft, Variant::Legacy] {
        if let Some(s) = read_variant(variant)? {
            found.push(s);
        }
    }
    let mut blockers = Vec::new();
    match read_nftables() {
        Some(Ok(state)) => found.push(state),
        Some(Err(why)) => blockers.push(Blocker::NftablesUnreadable { why }),
        None => {}
    }
    if found.len() > 1 {
        blockers.push(Blocker::SeveralModes { sources: found.iter().map(|s| s.source.clone()).collect() });
    }
    let theirs: Vec<_> = found.iter().flat_map(|s| s.frontends.iter().cloned()).collect();
    let unknown: Vec<UnknownRule> = found.iter().flat_map(|s| s.unknown.iter().cloned()).collect();
    let rows = compare(&theirs, &ours);
    let dark = rows.iter().filter(|r| r.blocks()).count();
    if dark > 0 {
        blockers.push(Blocker::OnlyKubeProxy { count: dark });
    }
    if !unknown.is_empty() {
        blockers.push(Blocker::UnknownRules { count: unknown.len() });
    }
    let plan = MigratePlan {
        node: node.clone(),
        kube_proxy_sources: found.iter().map(|s| s.source.clone()).collect(),
        rows,
        unknown,
        blockers,
    };
    Ok((plan, Ours { frontends: ours, node, nodes }))
}

#[derive(Debug, Serialize)]
pub struct Probe {
    pub frontend: String,
    pub service_port: String,
    /// `Some(true)` answered, `Some(false)` did not, `None` not probed (`result` says why).
    pub ok: Option<bool>,
    pub result: String,
}

/// Kernel conntrack entries to the frontends sluice serves here: connections the cutover must
/// keep. `translated` ones were NATed in netfilter (kube-proxy's rules or sluice's iptables
/// backend); flows eBPF translated are tracked to their backend and not counted.
#[derive(Debug, Default, Serialize)]
pub struct ConntrackCounts {
    pub entries: usize,
    pub translated: usize,
    pub frontends: Vec<FrontendCount>,
    /// Why nothing could be counted (conntrack missing, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FrontendCount {
    pub frontend: String,
    pub entries: usize,
    pub translated: usize,
}

pub(crate) fn conntrack_counts(ours: &Ours) -> ConntrackCounts {
    let entries = match sluice_iptables::conntrack_list::list() {
        Ok(e) => e,
        Err(e) => return ConntrackCounts { error: Some(e.to_string()), ..Default::default() },
    };
    let me = ours.nodes.iter().find(|n| n.name == ours.node).and_then(|n| n.internal_ip).map(std::net::IpAddr::from);
    let mut out = ConntrackCounts::default();
    for f in &ours.frontends {
        let Some(dst) = f.ip.or(me) else { continue };
        let proto = f.protocol.to_string().to_lowercase();
        let hits: Vec<_> = entries
            .iter()
            .filter(|e| e.orig_dst == dst && e.orig_dport == Some(f.port) && e.protocol == proto)
            .collect();
        if hits.is_empty() {
            continue;
        }
        let translated = hits.iter().filter(|e| e.translated()).count();
        out.entries += hits.len();
        out.translated += translated;
        out.frontends.push(FrontendCount { frontend: f.key().to_string(), entries: hits.len(), translated });
    }
    out
}

#[derive(Debug, Serialize)]
pub struct Verification {
    #[serde(flatten)]
    pub plan: MigratePlan,
    pub probes: Vec<Probe>,
    pub conntrack: ConntrackCounts,
    /// Every frontend a sluice backend serves here, checked in that backend's kernel objects
    /// (its nat rules, or its service maps).
    pub programmed: super::migrate_programmed::Programmed,
    /// No blocker, no difference, every probed frontend answered, every frontend sluice serves
    /// programmed in the kernel as wanted.
    pub passed: bool,
}

/// TCP connects from this node to a frontend sluice serves: its address, or for a NodePort every
/// node's address (this node's through its own stack, every other node's as a client outside
/// that node would reach it).
pub(crate) fn probe(f: &ProxiedFrontend, ours: &Ours) -> Vec<Probe> {
    let service_port = f.service_port.clone();
    let row = |frontend: String, ok: Option<bool>, result: String| Probe {
        frontend,
        service_port: service_port.clone(),
        ok,
        result,
    };
    let connect = |frontend: String, addr: std::net::SocketAddr, from: &str| match std::net::TcpStream::connect_timeout(
        &addr,
        std::time::Duration::from_secs(1),
    ) {
        Ok(_) => row(frontend, Some(true), format!("answered{from}")),
        Err(e) => row(frontend, Some(false), format!("failed{from}: {e}")),
    };
    let skip = |why: &str| vec![row(f.key().to_string(), None, format!("not probed: {why}"))];
    if f.protocol != sluice_core::Protocol::Tcp {
        return skip("only TCP frontends are probed (a handshake proves an answer)");
    }
    if f.endpoints.is_empty() {
        return skip("no endpoints (refused by design)");
    }
    if let Some(ip) = f.ip {
        return vec![connect(f.key().to_string(), std::net::SocketAddr::new(ip, f.port), "")];
    }
    if f.external_local {
        return skip("externalTrafficPolicy Local answers only on nodes with a local endpoint");
    }
    let mut out = Vec::new();
    for n in &ours.nodes {
        let Some(ip) = n.internal_ip else { continue };
        let frontend = format!("{} {ip}:{}/{}", n.name, f.port, f.protocol);
        let from = if n.name == ours.node { " (from this node)".to_string() } else { format!(" (from {})", ours.node) };
        out.push(connect(frontend, std::net::SocketAddr::new(ip.into(), f.port), &from));
    }
    if out.is_empty() {
        return skip("no node with an address is known");
    }
    out
}

/// The plan's comparison again plus a probe of every frontend sluice serves here.
/// Wait (at most `max`) until the agent has read its source: one that has just (re)started
/// knows no Service yet, and every frontend would look like kube-proxy's alone.
fn wait_synced(socket: &Path, max: std::time::Duration) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let mut said = false;
    loop {
        let st = super::migrate_apply::status(socket)?;
        if st.source.synced {
            return Ok(());
        }
        if t0.elapsed() > max {
            anyhow::bail!(
                "node {} is not ready: sluice has not synced its source ({}) within {} s; rerun when `sluice status` shows it synced",
                st.node,
                st.source.location,
                max.as_secs()
            );
        }
        if !said {
            eprintln!("waiting for the agent on {} to sync its source ({})", st.node, st.source.location);
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

pub(crate) fn verify_report(socket: &Path) -> anyhow::Result<Verification> {
    wait_synced(socket, std::time::Duration::from_secs(30))?;
    let (plan, ours) = build_with_ours(socket)?;
    let probes: Vec<Probe> = ours.frontends.iter().flat_map(|f| probe(f, &ours)).collect();
    let differs = plan.rows.iter().filter(|r| matches!(r.verdict, Verdict::Differs { .. })).count();
    let programmed = super::migrate_programmed::read(socket, &ours)?;
    let passed = plan.blockers.is_empty()
        && differs == 0
        && probes.iter().all(|p| p.ok != Some(false))
        && programmed.wrong() == 0;
    let conntrack = conntrack_counts(&ours);
    Ok(Verification { plan, probes, conntrack, programmed, passed })
}

pub(crate) fn print_verification(v: &Verification) {
    print_plan(&v.plan);
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["FRONTEND", "SERVICE PORT", "PROBE"]);
    for p in &v.probes {
        t.add_row([p.frontend.clone(), p.service_port.clone(), p.result.clone()]);
    }
    println!("{t}");
    let mut k = Table::new();
    k.load_preset(UTF8_FULL_CONDENSED);
    k.set_header(["FRONTEND", "SERVICE PORT", "BACKEND", "IN THE KERNEL"]);
    for r in &v.programmed.rows {
        let what = match &r.verdict {
            sluice_core::programmed::ProgrammedVerdict::Programmed => "programmed as wanted".to_string(),
            sluice_core::programmed::ProgrammedVerdict::Missing => "MISSING".to_string(),
            sluice_core::programmed::ProgrammedVerdict::Differs { wanted, kernel } => {
                format!("DIFFERS: wanted {} / kernel {}", wanted.join(", "), kernel.join(", "))
            }
        };
        k.add_row([r.frontend.clone(), r.service_port.clone(), r.backend.clone(), what]);
    }
    if !v.programmed.rows.is_empty() {
        println!("{k}");
    }
    for e in &v.programmed.errors {
        println!("Kernel read: {e}");
    }
    let failed = v.probes.iter().filter(|p| p.ok == Some(false)).count();
    let differs = v.plan.rows.iter().filter(|r| matches!(r.verdict, Verdict::Differs { .. })).count();
    match &v.conntrack.error {
        Some(e) => println!("Conntrack: not counted ({e})"),
        None => println!(
            "Conntrack: {} entries to these frontends, {} translated in netfilter (kept across a cutover)",
            v.conntrack.entries, v.conntrack.translated
        ),
    }
    println!(
        "Verify: {} ({} probed, {failed} failed; {differs} difference(s); {} blocker(s); {} of {} frontend(s) not programmed as wanted)",
        if v.passed { "passed" } else { "FAILED" },
        v.probes.iter().filter(|p| p.ok.is_some()).count(),
        v.plan.blockers.len(),
        v.programmed.wrong(),
        v.programmed.rows.len()
    );
}

/// `sluice migrate verify`: `Ok(false)` (exit status 1) on any blocker, difference or failed
/// probe.
pub fn verify(socket: &Path, out: Output) -> anyhow::Result<bool> {
    let v = verify_report(socket)?;
    if let Output::Json = out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_verification(&v);
    }
    Ok(v.passed)
}

fn verdict_text(v: &Verdict) -> (&'static str, String) {
    match v {
        Verdict::Matches => ("matches", String::new()),
        Verdict::Differs { fields } => (
            "differs",
            fields
                .iter()
                .map(|f| format!("{}: kube-proxy {} / sluice {}", f.field, f.kube_proxy, f.sluice))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Verdict::OnlyKubeProxy => ("only kube-proxy", "sluice does not serve it: it would stop answering".into()),
        Verdict::OnlySluice => ("only sluice", "taken over (kube-proxy does not serve it)".into()),
    }
}

pub fn plan(socket: &Path, out: Output) -> anyhow::Result<()> {
    let p = build(socket)?;
    if let Output::Json = out {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    print_plan(&p);
    Ok(())
}

pub(crate) fn print_plan(p: &MigratePlan) {
    match p.kube_proxy_sources.as_slice() {
        [] => println!(
            "Node {}: no kube-proxy rules found (no KUBE-* chains in either iptables variant, no nftables table `ip kube-proxy`)",
            p.node
        ),
        s => println!("Node {}: kube-proxy's rules read from {}", p.node, s.join(", ")),
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["FRONTEND", "KIND", "SERVICE PORT", "VERDICT", "DETAIL"]);
    for r in &p.rows {
        let (v, detail) = verdict_text(&r.verdict);
        t.add_row([r.frontend.clone(), r.kind.to_string(), r.service_port.clone(), v.into(), detail]);
    }
    println!("{t}");
    for u in &p.unknown {
        println!("Unknown rule ({} {}): {} [{}]", u.table, u.chain, u.rule, u.why);
    }
    let count = |f: fn(&Verdict) -> bool| p.rows.iter().filter(|r| f(&r.verdict)).count();
    println!(
        "{} match, {} differ, {} only kube-proxy, {} only sluice",
        count(|v| matches!(v, Verdict::Matches)),
        count(|v| matches!(v, Verdict::Differs { .. })),
        count(|v| matches!(v, Verdict::OnlyKubeProxy)),
        count(|v| matches!(v, Verdict::OnlySluice)),
    );
    if p.blockers.is_empty() {
        println!("Cutover: ready (`sluice migrate apply` takes this node off kube-proxy)");
    } else {
        println!("Cutover: blocked");
        for b in &p.blockers {
            println!("  - {}", String::from(b.clone()));
        }
    }
}
