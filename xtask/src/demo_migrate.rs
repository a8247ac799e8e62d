//! The demo's migration step: node-2 is given kube-proxy's rules for the echo Service (its
//! iptables layout, restored into node-2's tables without jumps from the built-in chains, so
//! they carry no traffic) plus a Service sluice does not know, and `sluice migrate plan` compares
//! them with what sluice programs there.

use anyhow::bail;

use crate::demo::step;

const KUBE_PROXY: &str = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-SVC-ECHO - [0:0]\n:KUBE-SEP-A - [0:0]\n:KUBE-SEP-B - [0:0]\n:KUBE-SVC-OLD - [0:0]\n:KUBE-SEP-O - [0:0]\n\
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/echo:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-ECHO\n\
-A KUBE-SERVICES -d 10.96.0.66/32 -p tcp -m comment --comment \"default/old:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-OLD\n\
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
    Ok(())
}
