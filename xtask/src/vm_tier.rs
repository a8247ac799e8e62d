//! Tier 4 of `cargo xtask test`: the older-kernel tier. The same test binaries the host just ran
//! run again inside a Debian 12 6.1 guest (no TCX: the eBPF backend attaches with classic tc),
//! starting from a fresh boot with no netfilter module loaded; the cases both ran are compared
//! side by side, host kernel against 6.1.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cargo;

/// (test binary, libtest arguments): what runs in the guest, in this order. The fresh-boot
/// probe goes first: nothing may have loaded a module before it.
const GUEST_RUNS: &[(&str, &[&str])] = &[
    ("older_kernel", &["--ignored", "--test-threads", "1"]),
    ("test_run", &["--test-threads", "1"]),
    // Traces and policy events through the ring buffer (the verifier of 6.1 takes the programs).
    ("events", &["--test-threads", "1"]),
    ("l7_lookup", &["--test-threads", "1"]),
    (
        "services_iptables",
        &[
            "connectivity_suite_on_ebpf",
            "connectivity_suite_on_auto",
            "connectivity_suite_on_mixed_cluster",
            "--test-threads",
            "1",
        ],
    ),
    (
        "ebpf_dataplane",
        &[
            "agent_kill_9_under_load_fails_no_connection",
            "an_attach_failure_on_one_pod_veth_falls_back",
            "--test-threads",
            "1",
        ],
    ),
    // The L7 redirect on classic tc: the mark from a cls_bpf program, the sk_lookup steering.
    ("l7_policy", &["on_ebpf", "on_a_mixed_cluster", "--test-threads", "1"]),
];

/// Test executables by target name, built (not run) by cargo.
fn test_binaries() -> anyhow::Result<BTreeMap<String, String>> {
    let out = cargo()
        .args(["test", "--workspace", "--tests", "--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::null())
        .output()
        .context("cargo test --no-run")?;
    let mut bins = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
            && v["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"))
        {
            bins.insert(name.to_string(), exe.to_string());
        }
    }
    Ok(bins)
}

/// `test NAME ... ok` lines, by NAME (the cases compared are unique across the binaries).
pub fn results(log: &str, into: &mut BTreeMap<String, String>) {
    for line in log.lines() {
        let Some(rest) = line.trim().strip_prefix("test ") else { continue };
        if let Some((name, verdict)) = rest.rsplit_once(" ... ") {
            let v = verdict.trim();
            if matches!(v, "ok" | "FAILED" | "ignored") {
                into.insert(name.to_string(), v.to_string());
            }
        }
    }
}

pub fn run(host: &BTreeMap<String, String>) -> anyhow::Result<()> {
    eprintln!("xtask: tier 4: the older-kernel tier (Debian 12's 6.1 kernel under qemu; classic tc)");
    let bins = test_binaries()?;
    let mut script = String::from("rc=0\n");
    for (bin, args) in GUEST_RUNS {
        let exe = bins.get(*bin).with_context(|| format!("test binary {bin} not built"))?;
        script += &format!("echo 'guest: running {bin}'\n'{exe}' {} || rc=1\n", args.join(" "));
    }
    script += "exit $rc\n";
    let g = crate::vm::prepare()?;
    let r = crate::vm::run_in_guest(&g, &script, Duration::from_secs(45 * 60))?;
    let mut guest = BTreeMap::new();
    results(&r.log, &mut guest);
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "\nolder-kernel tier: the same cases on this host ({}) and in the guest ({}):",
        host_kernel.trim(),
        g.kver
    );
    println!("  {:<64} {:<8} {:<8}", "CASE", "HOST", "GUEST");
    let mut differ = 0;
    for (case, v) in &guest {
        let h = host.get(case).map(String::as_str).unwrap_or("-");
        let mark = if h != "-" && h != "ignored" && h != v { " <- differs" } else { "" };
        if !mark.is_empty() {
            differ += 1;
        }
        println!("  {case:<64} {h:<8} {v:<8}{mark}");
    }
    let failed = guest.values().filter(|v| *v == "FAILED").count();
    println!("guest: {} cases, {failed} failed, {differ} differ from the host\n", guest.len());
    if guest.is_empty() {
        bail!("no test ran in the guest (see its console above)");
    }
    if r.rc != 0 || failed > 0 {
        bail!("the older-kernel tier failed ({failed} case(s) failed in the 6.1 guest, exit {})", r.rc);
    }
    Ok(())
}
