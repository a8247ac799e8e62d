//! `sluice migrate apply` and `rollback`: one node off kube-proxy and back, make-before-break.
//!
//! apply: refuse a node that is not ready (source not synced, a Service rejected or failing,
//! a blocker of the plan) -> pin kube_proxy_replacement to strict and wait until sluice serves
//! every Service feature -> write the marker that keeps kube-proxy off the node (and, with the
//! kubernetes source, have the agent label the Node for the DaemonSet) and wait for a
//! running kube-proxy to go -> snapshot kube-proxy's rules into the migration record -> remove
//! them, one atomic batch per table (jumps before chains) -> verify. Conntrack entries are never
//! touched: a connection kube-proxy's NAT set up keeps its translation in the kernel.
//!
//! rollback: remove the marker and the label -> put kube-proxy's rules back from the snapshot (unless kube-proxy
//! already did) behind sluice's own hooks -> pin kube_proxy_replacement to disabled and wait
//! until sluice has handed every Service feature back -> verify.
//!
//! Every step looks at the node before acting, so rerunning either command after a crash or a
//! kill picks up where it stopped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sluice_core::KprMode;
use sluice_core::migrate::{HandOver, pending};
use sluice_iptables::kube_proxy_cutover::{KeptChain, TABLES, TableSnapshot, snapshot};
use sluice_iptables::restore::{Iptables, IptablesError, Variant};

use super::migrate::{Verification, build_with_ours, verify_report};
use crate::Output;
use crate::api::types::AgentStatus;
use crate::api::{Request, Response, call};

/// kube-proxy's rules of one iptables variant, as they were.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantSnapshot {
    pub variant: Variant,
    pub tables: Vec<TableSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub taken_unix: u64,
    pub variants: Vec<VariantSnapshot>,
    /// kube-proxy's nftables-mode table as `nft list table ip kube-proxy` printed it (loadable
    /// again with `nft -f`).
    #[serde(default)]
    pub nftables: Option<String>,
}

/// `nft` with `args`, `input` on stdin; stdout, or the error naming the command.
fn nft(args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running nft {} (install the nftables package)", args.join(" ")))?;
    if let (Some(mut stdin), Some(text)) = (child.stdin.take(), input) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Chains in `nft list table` text (one tab-indented `chain NAME {` each).
fn nft_chains(table: &str) -> usize {
    table.matches("\n\tchain ").count()
}

/// kube-proxy's nftables-mode table as text, if there is one.
fn nftables_table() -> Option<String> {
    nft(&["list", "table", "ip", "kube-proxy"], None).ok()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at_unix: u64,
    pub step: String,
    pub detail: String,
}

/// What `apply` removed and from which snapshot: what `rollback` puts back. Kept in the
/// agent's state directory (`migration/record.json`), written whole and renamed into place.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub node: String,
    pub snapshot: Option<Snapshot>,
    pub events: Vec<Event>,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

struct Paths {
    record: PathBuf,
    marker: PathBuf,
}

fn paths(st: &AgentStatus) -> anyhow::Result<Paths> {
    if st.config.state_dir.is_empty() {
        bail!("the agent does not report its state directory (an older agent?): upgrade it before migrating");
    }
    let dir = Path::new(&st.config.state_dir);
    Ok(Paths { record: dir.join("migration").join("record.json"), marker: dir.join(MARKER) })
}

/// The file whose presence tells a kube-proxy start (a systemd unit's
/// `ConditionPathExists=!`) that sluice has this node.
pub const MARKER: &str = "kube-proxy-replaced";

fn load(path: &Path) -> anyhow::Result<Record> {
    let Some(b) = crate::files::read_if_exists(path).context("reading the migration record")? else {
        return Ok(Record::default());
    };
    serde_json::from_slice(&b).with_context(|| {
        format!("the migration record {} is not readable; it holds kube-proxy's snapshot: repair it from a backup, never delete it blindly", path.display())
    })
}

fn save(path: &Path, r: &Record) -> anyhow::Result<()> {
    crate::files::write_atomic(path, &serde_json::to_vec_pretty(r)?).context("saving the migration record")
}

pub(crate) fn status(socket: &Path) -> anyhow::Result<AgentStatus> {
    match super::block_on(call(socket, &Request::Status))?? {
        Response::Status(st) => Ok(*st),
        Response::Error(e) => bail!("agent refused the request: {e}"),
        _ => bail!("agent sent an unexpected answer"),
    }
}

fn pin(socket: &Path, mode: Option<KprMode>, by: &str) -> anyhow::Result<()> {
    let req = Request::Migration { kube_proxy_replacement: mode, set_by: by.into() };
    match super::block_on(call(socket, &req))?? {
        Response::Ok => Ok(()),
        Response::Error(e) => bail!("the agent cannot plan this node that way: {e}"),
        _ => bail!("agent sent an unexpected answer"),
    }
}

/// Ask the agent to set (or remove) the node label that keeps kube-proxy's DaemonSet away;
/// what happened, in a line. Never fatal: the marker and the wait for kube-proxy to stop are
/// what apply relies on, and the line says what the operator must do instead.
fn mark_node(socket: &Path, replaced: bool) -> String {
    match super::block_on(call(socket, &Request::MarkNode { replaced })) {
        Ok(Ok(Response::NodeLabel { detail, .. })) => detail,
        Ok(Ok(Response::Error(e))) => format!("the node label was not set: {e}"),
        Ok(Ok(_)) => "the node label was not set: the agent sent an unexpected answer (an older agent?)".into(),
        Ok(Err(e)) | Err(e) => format!("the node label was not set: {e}"),
    }
}

/// Wait until the agent has run a pass under `mode` and every Service feature is where `to`
/// wants it; print what is pending every few seconds.
fn wait_hand_over(socket: &Path, mode: Option<KprMode>, to: HandOver, wait: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut said = Instant::now() - Duration::from_secs(60);
    loop {
        let st = status(socket)?;
        let pinned = st.config.migration.as_ref().map(|m| m.kube_proxy_replacement) == mode;
        let left = pending(&st.features, to);
        let moving = st.config.last_transition.iter().any(|s| s.state != sluice_core::StepState::Done);
        if pinned && left.is_empty() && !moving {
            return Ok(());
        }
        let what: Vec<String> = left.iter().map(ToString::to_string).collect();
        if start.elapsed() > wait {
            bail!(
                "after {}s: {} (the pin stays; rerun when `sluice status` shows the features served, or `sluice migrate rollback`)",
                wait.as_secs(),
                if what.is_empty() { "the agent has not finished the switch".into() } else { what.join("; ") }
            );
        }
        if said.elapsed() >= Duration::from_secs(3) {
            eprintln!(
                "  waiting ({}s): {}",
                start.elapsed().as_secs(),
                if what.is_empty() { "the next pass".into() } else { what.join("; ") }
            );
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Signs of a running kube-proxy: processes of that name visible here, and a listener on its
/// healthz port (10256), which a host-network agent sees even without the host's PIDs.
fn kube_proxy_running() -> Vec<String> {
    let mut signs: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "kube-proxy"))
        .map(|pid| format!("process kube-proxy (pid {pid})"))
        .collect();
    let listening = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|t| t.lines().skip(1).any(healthz_listener)));
    if listening {
        signs.push("a listener on kube-proxy's healthz port 10256".into());
    }
    signs
}

/// A `/proc/net/tcp` line of a socket listening (state 0A) on port 10256 (0x2810).
fn healthz_listener(line: &str) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    f.len() > 3 && f[1].rsplit(':').next() == Some("2810") && f[3] == "0A"
}

/// kube-proxy's part of every table of every installed variant.
fn take_snapshot() -> anyhow::Result<Vec<VariantSnapshot>> {
    let mut out = Vec::new();
    for variant in [Variant::Nft, Variant::Legacy] {
        let ipt = Iptables { variant };
        let mut tables = Vec::new();
        for table in TABLES {
            match ipt.save(table) {
                Ok(dump) => tables.extend(snapshot(&dump)),
                Err(IptablesError::Spawn { .. }) => break, // this variant is not installed
                Err(e) => return Err(anyhow::anyhow!("reading kube-proxy's rules: {e}")),
            }
        }
        if !tables.is_empty() {
            out.push(VariantSnapshot { variant, tables });
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct Removed {
    /// `nft` or `legacy` (iptables variants), or `nftables` (kube-proxy's nftables mode).
    pub variant: String,
    pub table: String,
    pub chains: usize,
    pub hooks: usize,
}

#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub node: String,
    /// The snapshot rollback would use (taken now, or kept from an earlier apply).
    pub snapshot_unix: Option<u64>,
    pub removed: Vec<Removed>,
    pub kept: Vec<KeptChain>,
    /// Conntrack entries to sluice's frontends just before and just after the removal: the
    /// removal itself drops none (connections may still end on their own in between).
    pub conntrack_before: usize,
    pub conntrack_after: usize,
    /// What happened to the node label `sluice.io/kube-proxy=replaced` (the kubernetes source
    /// sets it through the agent; the manifest source has no Node object).
    pub node_label: String,
    pub verify: Verification,
}

fn step(n: u8, what: &str) {
    eprintln!("[{n}/6] {what}");
}

/// `sluice migrate apply`. `Ok(false)`: done, but the verification after it failed.
pub fn apply(socket: &Path, force: bool, wait: Duration, out: Output) -> anyhow::Result<bool> {
    step(1, "checking that this node is ready for cutover");
    let st = status(socket)?;
    let paths = paths(&st)?;
    if !st.source.synced {
        bail!(
            "node {} is not ready: sluice has not synced its source yet ({}); rerun when `sluice status` shows it synced",
            st.node,
            st.source.location
        );
    }
    let rejected: Vec<_> = st.rejected.iter().filter(|r| r.object.starts_with("Service ")).collect();
    if let Some(r) = rejected.first() {
        bail!(
            "node {} is not ready: {} Service(s) rejected, e.g. {r} (kube-proxy may serve them; fix or delete them, see `sluice service list`)",
            st.node,
            rejected.len(),
        );
    }
    if let Some(e) = st.dataplane_errors.first() {
        bail!(
            "node {} is not ready: the dataplane reports {} error(s), e.g. {e} (see `sluice status`)",
            st.node,
            st.dataplane_errors.len()
        );
    }
    let (plan, _) = build_with_ours(socket)?;
    let hard: Vec<String> =
        plan.blockers.iter().filter(|b| !(force && b.forceable())).map(|b| String::from(b.clone())).collect();
    if !hard.is_empty() {
        bail!(
            "node {} is not ready for cutover:\n  - {}\n(`sluice migrate plan` shows the detail)",
            plan.node,
            hard.join("\n  - ")
        );
    }

    step(2, "pinning kube_proxy_replacement: strict; waiting until sluice serves every Service feature");
    pin(socket, Some(KprMode::Strict), "sluice migrate apply")?;
    wait_hand_over(socket, Some(KprMode::Strict), HandOver::ToSluice, wait)?;

    step(3, "marking the node as kube-proxy-free; waiting for a running kube-proxy to stop");
    if let Some(dir) = paths.marker.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&paths.marker, format!("sluice migrate apply at {}\n", now()))
        .with_context(|| format!("writing the marker {}", paths.marker.display()))?;
    let node_label = mark_node(socket, true);
    eprintln!("  {node_label}");
    let start = Instant::now();
    loop {
        let signs = kube_proxy_running();
        if signs.is_empty() {
            break;
        }
        if start.elapsed() > wait {
            bail!(
                "kube-proxy still runs on this node after {}s ({}): it would put its rules back. Keep its DaemonSet off the node (label the node sluice.io/kube-proxy=replaced; the nodeAffinity is in docs/design/migration.md) or stop its unit, then rerun; sluice serves every Service already",
                wait.as_secs(),
                signs.join(", ")
            );
        }
        if start.elapsed() < Duration::from_millis(600) {
            eprintln!(
                "  kube-proxy still runs ({}); waiting up to {}s for it to stop",
                signs.join(", "),
                wait.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    step(4, "snapshotting kube-proxy's rules into the migration record");
    let mut record = load(&paths.record)?;
    record.node = st.node.clone();
    let taken = take_snapshot()?;
    let nftables = nftables_table();
    if !taken.is_empty() || nftables.is_some() {
        let chains: usize = taken.iter().flat_map(|v| &v.tables).map(|t| t.chains.len()).sum::<usize>()
            + nftables.as_deref().map(nft_chains).unwrap_or(0);
        record.snapshot = Some(Snapshot { taken_unix: now(), variants: taken, nftables });
        record.events.push(Event {
            at_unix: now(),
            step: "apply".into(),
            detail: format!("snapshot of {chains} kube-proxy chains"),
        });
        save(&paths.record, &record)?;
    }

    step(5, "removing kube-proxy's rules: one batch per table, jumps before chains; conntrack kept");
    let (_, ours) = build_with_ours(socket)?;
    let conntrack_before = super::migrate::conntrack_counts(&ours).entries;
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for v in record.snapshot.iter().flat_map(|s| &s.variants) {
        let ipt = Iptables { variant: v.variant };
        for t in &v.tables {
            let now_t = ipt.save(&t.table).map_err(|e| anyhow::anyhow!("reading table {}: {e}", t.table))?;
            kept.extend(t.kept.iter().cloned());
            let Some(batch) = t.removal_batch(&now_t) else { continue };
            ipt.restore(&t.table, &batch).map_err(|e| {
                anyhow::anyhow!(
                    "removing kube-proxy's rules from {} ({}): {e}; nothing of that table was changed",
                    t.table,
                    v.variant.as_str()
                )
            })?;
            let count = |p: &str| batch.lines().filter(|l| l.starts_with(p)).count();
            removed.push(Removed {
                variant: v.variant.as_str().into(),
                table: t.table.clone(),
                chains: count("-X "),
                hooks: count("-D "),
            });
        }
    }
    // nftables mode: one table, deleted as one (its base chains are its hooks).
    if let Some(table) = nftables_table() {
        nft(&["delete", "table", "ip", "kube-proxy"], None)
            .context("removing kube-proxy's nftables table; nothing of it was changed")?;
        removed.push(Removed {
            variant: "nftables".into(),
            table: "ip kube-proxy".into(),
            chains: nft_chains(&table),
            hooks: table.matches(" hook ").count(),
        });
    }
    if !removed.is_empty() {
        let n: usize = removed.iter().map(|r| r.chains).sum();
        record.events.push(Event {
            at_unix: now(),
            step: "apply".into(),
            detail: format!("removed {n} kube-proxy chains"),
        });
        save(&paths.record, &record)?;
    }

    let conntrack_after = super::migrate::conntrack_counts(&ours).entries;

    step(6, "verifying");
    let verify = verify_report(socket)?;
    let report = ApplyReport {
        node: st.node,
        snapshot_unix: record.snapshot.as_ref().map(|s| s.taken_unix),
        removed,
        kept,
        conntrack_before,
        conntrack_after,
        node_label,
        verify,
    };
    let passed = report.verify.passed;
    if let Output::Json = out {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(passed);
    }
    super::migrate::print_verification(&report.verify);
    for r in &report.removed {
        println!("Removed from {} ({}): {} chains, {} jumps", r.table, r.variant, r.chains, r.hooks);
    }
    println!(
        "Conntrack entries to sluice's frontends: {} before the removal, {} after",
        report.conntrack_before, report.conntrack_after
    );
    for k in &report.kept {
        println!("Kept {}: {} jumps to it (not kube-proxy's)", k.chain, k.referenced_by);
    }
    println!(
        "Node {}: {} (`sluice migrate rollback` gives it back to kube-proxy{})",
        report.node,
        if passed { "taken off kube-proxy" } else { "off kube-proxy, but the verification FAILED" },
        report.snapshot_unix.map(|t| format!(", from the snapshot taken at unix time {t}")).unwrap_or_default()
    );
    Ok(passed)
}

/// `sluice migrate rollback`. `Ok(false)`: done, but the verification after it failed.
pub fn rollback(socket: &Path, force: bool, wait: Duration, out: Output) -> anyhow::Result<bool> {
    let st = status(socket)?;
    let paths = paths(&st)?;
    let mut record = load(&paths.record)?;
    eprintln!("[1/4] removing the kube-proxy-free marker");
    match std::fs::remove_file(&paths.marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", paths.marker.display()));
        }
        _ => {}
    }
    eprintln!("  {}", mark_node(socket, false));
    eprintln!("[2/4] putting kube-proxy's rules back (behind sluice's, which serve until step 3)");
    let (before, _) = build_with_ours(socket)?;
    if !before.kube_proxy_sources.is_empty() {
        eprintln!(
            "  kube-proxy's rules are here already ({}): the snapshot is not needed",
            before.kube_proxy_sources.join(", ")
        );
    } else {
        let Some(snap) = &record.snapshot else {
            bail!(
                "no kube-proxy rules on node {} and no snapshot in {}: start kube-proxy on this node (it programs its own rules), then rerun rollback; sluice keeps serving meanwhile",
                st.node,
                paths.record.display()
            );
        };
        for v in &snap.variants {
            let ipt = Iptables { variant: v.variant };
            for t in &v.tables {
                let now_t = ipt.save(&t.table).map_err(|e| anyhow::anyhow!("reading table {}: {e}", t.table))?;
                ipt.restore(&t.table, &t.restore_batch(&now_t)).map_err(|e| {
                    anyhow::anyhow!(
                        "restoring kube-proxy's rules into {} ({}): {e}; sluice still serves every Service",
                        t.table,
                        v.variant.as_str()
                    )
                })?;
            }
        }
        if let Some(table) = &snap.nftables {
            nft(&["-f", "/dev/stdin"], Some(table))
                .context("restoring kube-proxy's nftables table; sluice still serves every Service")?;
        }
        record.events.push(Event {
            at_unix: now(),
            step: "rollback".into(),
            detail: format!("restored the snapshot of {}", snap.taken_unix),
        });
        save(&paths.record, &record)?;
    }
    // kube-proxy must cover every frontend sluice serves before sluice lets go of any.
    let (covered, _) = build_with_ours(socket)?;
    let dark: Vec<String> = covered
        .rows
        .iter()
        .filter(|r| matches!(r.verdict, sluice_core::migrate::Verdict::OnlySluice))
        .map(|r| format!("{} ({})", r.frontend, r.service_port))
        .collect();
    if !dark.is_empty() && !force {
        bail!(
            "kube-proxy's rules do not serve {} frontend(s) sluice serves now: {}. They would stop answering; sluice keeps serving them. Let kube-proxy run on the node (it programs every Service at its first sync) and rerun, or `--force`",
            dark.len(),
            dark.join(", ")
        );
    }
    eprintln!("[3/4] pinning kube_proxy_replacement: disabled; waiting until sluice hands every Service feature back");
    pin(socket, Some(KprMode::Disabled), "sluice migrate rollback")?;
    wait_hand_over(socket, Some(KprMode::Disabled), HandOver::ToKubeProxy, wait)?;
    record.events.push(Event {
        at_unix: now(),
        step: "rollback".into(),
        detail: "kube-proxy serves every Service feature".into(),
    });
    save(&paths.record, &record)?;
    eprintln!("[4/4] verifying");
    let v = verify_report(socket)?;
    let passed = v.passed;
    if let Output::Json = out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(passed);
    }
    super::migrate::print_verification(&v);
    println!("Node {}: back on kube-proxy{}", st.node, if passed { "" } else { ", but the verification FAILED" });
    Ok(passed)
}

/// `sluice migrate release`: stop pinning; the config file's kube_proxy_replacement decides.
pub fn release(socket: &Path) -> anyhow::Result<()> {
    pin(socket, None, "sluice migrate release")?;
    println!("kube_proxy_replacement is the config file's again (the agent re-planned; see `sluice status`)");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_listener_on_10256_counts_as_kube_proxys_healthz() {
        let listen = "   0: 00000000:2810 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1";
        let connected =
            "   1: 0100007F:2810 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1";
        let other = "   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1";
        let v6 = "   0: 00000000000000000000000000000000:2810 00000000000000000000000000000000:0000 0A 0 0 0 0 0 4 1";
        assert!(super::healthz_listener(listen));
        assert!(super::healthz_listener(v6));
        assert!(!super::healthz_listener(connected));
        assert!(!super::healthz_listener(other));
        assert!(!super::healthz_listener(""));
    }
}
