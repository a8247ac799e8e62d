//! Tier 4: cases that only mean something on a real older kernel, freshly booted. `cargo xtask
//! test` runs them first inside Debian 12's 6.1 kernel under qemu (`--ignored`); on the host they
//! are skipped (this kernel has TCX, and its modules were loaded long ago).
//!
//! The rest of the tier is the host's own suites run again in the guest (connectivity on eBPF,
//! auto and a mixed cluster, kill -9 under load, the BPF program tests): see xtask/src/vm_tier.rs.

mod common;

use std::path::Path;
use std::process::Command;

fn probe() -> serde_json::Value {
    let bin = sluice_lab::lab::default_bin_dir().join("sluice");
    let out = Command::new(&bin).args(["probe", "-o", "json"]).output().expect("sluice probe");
    assert!(out.status.success(), "sluice probe: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("probe json")
}

fn found(p: &serde_json::Value, cap: &str) -> (bool, String) {
    let c = p["capabilities"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["capability"] == cap))
        .unwrap_or_else(|| panic!("{cap} not probed: {p}"));
    (c["found"].as_bool().unwrap_or(false), c["detail"].as_str().unwrap_or_default().to_string())
}

/// The defect this guards: on a fresh boot the probe ran before anything loaded nf_conntrack,
/// concluded iptables cannot serve, and never probed again. Now the probe loads what the
/// backends need (as kube-proxy does), and a kernel without TCX gets classic tc.
#[test]
#[ignore = "older-kernel tier: runs first in a freshly booted 6.1 guest (cargo xtask test)"]
fn fresh_boot_probe_loads_netfilter_modules_and_chooses_classic_tc() {
    assert!(
        !Path::new("/sys/module/nf_conntrack").exists(),
        "nf_conntrack is already loaded: this case must run first on a freshly booted node"
    );
    let p = probe();
    for cap in ["conntrack", "ipset", "iptables", "tc-clsact", "tc-attach", "prog-sched-cls", "helper-fib-lookup"] {
        let (ok, detail) = found(&p, cap);
        assert!(ok, "{cap} should be found on 6.1: {detail}");
    }
    assert!(Path::new("/sys/module/nf_conntrack").exists(), "the probe did not load nf_conntrack");
    let (tcx, detail) = found(&p, "tcx");
    assert!(!tcx, "6.1 has no TCX, yet the probe found it: {detail}");
    assert_eq!(p["tc_attach"], "classic", "{p}");
    // The plan on this kernel: every Service feature on eBPF through classic tc.
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "node_name: node-1\nkube_proxy_replacement: strict\n").expect("write");
    let bin = sluice_lab::lab::default_bin_dir().join("sluice");
    let out = Command::new(&bin)
        .args(["--socket", "/nonexistent/sluice.sock", "-o", "json", "plan", "--config"])
        .arg(&cfg)
        .output()
        .expect("sluice plan");
    assert!(out.status.success(), "sluice plan: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan json");
    let plan = &v["proposed"];
    assert_eq!(plan["tc_attach"], "classic", "{plan}");
    for e in plan["entries"].as_array().expect("entries") {
        if e["feature"] == "cluster-ip" || e["feature"] == "node-port" || e["feature"] == "policy" {
            assert_eq!(e["owner"], "ebpf", "{e}");
        }
    }
}
