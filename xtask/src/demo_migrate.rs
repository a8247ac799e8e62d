//! The demo's migration step: node-2 is given kube-proxy's rules for the echo Service (its
//! iptables layout with its jumps from PREROUTING and OUTPUT; sluice's eBPF and socket hooks
//! come first, so they carry no traffic until sluice hands over) plus a Service sluice does not
//! know. `sluice migrate plan` compares
//! them with what sluice programs there; `apply` refuses while a frontend only kube-proxy serves
//! would go dark; once that stale rule is gone, `apply` takes the node off kube-proxy,
//! `rollback` gives it back from the snapshot, and the rollout command (`apply --nodes`) takes
//! it again, verified from node-1.

use anyhow::bail;

use crate::demo::step;

const KUBE_PROXY: &str = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-EXT-ECHO - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-SVC-ECHO - [0:0]\n:KUBE-SEP-A - [0:0]\n:KUBE-SEP-B - [0:0]\n:KUBE-SVC-OLD - [0:0]\n:KUBE-SEP-O - [0:0]\n\
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/echo:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-ECHO\n\
-A KUBE-SERVICES -d 10.96.0.66/32 -p tcp -m comment --comment \"default/old:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-OLD\n\
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
-A KUBE-NODEPORTS -p tcp -m comment --comment \"default/echo:http\" -m tcp --dport 30080 -j KUBE-EXT-ECHO\n\
-A KUBE-EXT-ECHO -j KUBE-MARK-MASQ\n\
-A KUBE-EXT-ECHO -j KUBE-SVC-ECHO\n\
-A KUBE-SVC-ECHO -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A\n\
-A KUBE-SVC-ECHO -j KUBE-SEP-B\n\
-A KUBE-SEP-A -s 10.244.1.2/32 -j KUBE-MARK-MASQ\n\
-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080\n\
-A KUBE-SEP-B -s 10.244.2.2/32 -j KUBE-MARK-MASQ\n\
-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination 10.244.2.2:8080\n\
-A KUBE-SVC-OLD -j KUBE-SEP-O\n\
-A KUBE-SEP-O -p tcp -m tcp -j DNAT --to-destination 10.244.2.9:8080\n\
COMMIT\n";

pub fn migration() -> anyhow::Result<()> {
    println!("\n-- migration: kube-proxy's rules on node-2 compared with sluice's, before any cutover --");
    let rules = std::env::temp_dir().join("sluice-demo-kube-proxy.rules");
    std::fs::write(&rules, KUBE_PROXY)?;
    step(
        "give node-2 kube-proxy's rules (echo, and a Service 'old' sluice does not have)",
        &["exec", "node-2", "--", "sh", "-c", &format!("iptables-restore --noflush < {}", rules.display())],
    )?;
    let _ = std::fs::remove_file(&rules);
    let plan = step("what a cutover would change on node-2", &["exec", "node-2", "--", "sluice", "migrate", "plan"])?;
    if !plan.contains("10.96.0.10:80/TCP") || !plan.contains("only kube-proxy") || !plan.contains("Cutover: blocked") {
        bail!("sluice migrate plan did not compare echo and flag 'old' (got {plan:?})");
    }
    println!("\n$ sluice-lab exec node-2 -- sluice migrate apply   (refused: 'old' would stop answering)");
    let refused = crate::demo::lab().args(["exec", "node-2", "--", "sluice", "migrate", "apply"]).output()?;
    eprint!("{}", String::from_utf8_lossy(&refused.stderr));
    if refused.status.success() {
        bail!("sluice migrate apply went ahead although a frontend only kube-proxy serves would go dark");
    }
    let fix = std::env::temp_dir().join("sluice-demo-kube-proxy-fix.rules");
    std::fs::write(&fix, STALE_REMOVED)?;
    step(
        "the operator removes kube-proxy's stale rule for 'old' (a Service deleted long ago)",
        &["exec", "node-2", "--", "sh", "-c", &format!("iptables-restore --noflush < {}", fix.display())],
    )?;
    let _ = std::fs::remove_file(&fix);
    let applied = step("take node-2 off kube-proxy", &["exec", "node-2", "--", "sluice", "migrate", "apply"])?;
    if !applied.contains("taken off kube-proxy") {
        bail!("sluice migrate apply did not finish (got {applied:?})");
    }
    step("give node-2 back to kube-proxy", &["exec", "node-2", "--", "sluice", "migrate", "rollback"])?;
    // The cluster rollout command, driven from node-1: plan, apply and verify on node-2, then
    // node-2's NodePort probed from node-1.
    let rolled = step(
        "and take it again with the rollout command (from node-1; each node reached through the lab)",
        &[
            "exec",
            "node-1",
            "--",
            "sluice",
            "migrate",
            "apply",
            "--nodes",
            "node-2",
            "--via",
            "sluice-lab exec {node} --",
            "--verify-from",
            "node-1",
        ],
    )?;
    if !rolled.contains("every node migrated and verified") {
        bail!("sluice migrate apply --nodes did not finish (got {rolled:?})");
    }
    Ok(())
}

/// The stale `old` frontend taken out of kube-proxy's rules, as `kube-proxy --cleanup` of one
/// Service would.
const STALE_REMOVED: &str = "*nat\n\
-D KUBE-SERVICES -d 10.96.0.66/32 -p tcp -m comment --comment \"default/old:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-OLD\n\
-F KUBE-SVC-OLD\n-X KUBE-SVC-OLD\n-F KUBE-SEP-O\n-X KUBE-SEP-O\n\
COMMIT\n";
