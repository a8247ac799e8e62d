//! Tier 3: kernel probes, the per-feature plan and live mode switching on real agents.

mod common;

use std::time::Duration;

use common::{TestLab, eventually, require_root};

fn owner(status: &serde_json::Value, feature: &str) -> String {
    status["plan"]["entries"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["feature"] == feature))
        .and_then(|e| e["owner"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn assume_missing_moves_features_and_strict_refuses_to_start() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let old_kernel = dir.path().join("old.yaml");
    std::fs::write(&old_kernel, "dataplane: auto\nprobes:\n  assume_missing: [tc-attach]\n").expect("write");
    let t = TestLab::up("t-modes", 2, &[("node-2".into(), old_kernel)]);

    // Under auto every Service feature goes to eBPF where the kernel allows; node-2, told it
    // cannot attach tc programs, keeps the features needing them on iptables and names the
    // capability, and socket LB (cgroup hooks) stays on eBPF.
    let s1 = t.status("node-1");
    assert_eq!(owner(&s1, "cluster-ip"), "ebpf");
    assert_eq!(owner(&s1, "node-port"), "ebpf");
    let s2 = t.status("node-2");
    assert_eq!(owner(&s2, "node-port"), "iptables");
    assert_eq!(owner(&s2, "socket-lb-tcp"), "ebpf");
    let table = t.exec("node-2", &["sluice", "status"]);
    assert!(
        table.contains(
            "KubeProxyReplacement: Probe [ClusterIP (iptables: no tc attach (neither TCX nor clsact with cls_bpf))"
        ),
        "{table}"
    );

    // `sluice probe` sees every capability here; with the config it reports the assumption.
    let probe: serde_json::Value =
        serde_json::from_str(&t.exec("node-1", &["sluice", "probe", "-o", "json"])).expect("json");
    assert!(probe["capabilities"].as_array().expect("caps").iter().all(|c| c["found"] == true), "{probe}");

    // probe + ebpf: the feature goes to kube-proxy (shown, with a warning).
    let probe_ebpf = dir.path().join("probe-ebpf.yaml");
    std::fs::write(&probe_ebpf, "node_name: node-2\ndataplane: ebpf\nprobes:\n  assume_missing: [tc-attach]\n")
        .expect("write");
    let plan: serde_json::Value = serde_json::from_str(
        &t.exec("node-2", &["sluice", "plan", "--config", probe_ebpf.to_str().expect("utf8"), "-o", "json"]),
    )
    .expect("json");
    let np = plan["proposed"]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["feature"] == "node-port")
        .expect("np");
    assert_eq!(np["owner"], "kube-proxy");
    assert!(
        plan["proposed"]["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .any(|w| w.as_str().unwrap_or("").contains("NodePort left to kube-proxy"))
    );

    // strict + ebpf: the agent refuses to start and says which feature lacks which capability.
    let strict = dir.path().join("strict.yaml");
    std::fs::write(
        &strict,
        format!(
            "node_name: node-2\nkube_proxy_replacement: strict\ndataplane: ebpf\nsocket_path: {}\nprobes:\n  assume_missing: [tc-attach]\n",
            dir.path().join("s.sock").display()
        ),
    )
    .expect("write");
    let out = t
        .lab
        .command("node-2", &["sluice".into(), "agent".into(), "--config".into(), strict.display().to_string()])
        .expect("cmd")
        .output()
        .expect("run");
    assert!(!out.status.success(), "strict agent must refuse to start");
    let err = String::from_utf8_lossy(&out.stderr);
    // The refusal names the feature and the capability it lacks (and that eBPF is not built).
    assert!(err.contains("kube_proxy_replacement=strict: feature cluster-ip cannot be served by eBPF"), "{err}");
    assert!(err.contains("no tc attach"), "{err}");
}

#[test]
fn live_config_switch_is_applied_and_broken_config_is_rejected() {
    if !require_root() {
        return;
    }
    let t = TestLab::up("t-reload", 1, &[]);
    let st = t.lab.state().expect("state");
    let node = st.node("node-1").expect("node").clone();
    let cfg_path = node.dir.join("config.yaml");
    let original = std::fs::read_to_string(&cfg_path).expect("config");
    assert_eq!(owner(&t.status("node-1"), "cluster-ip"), "ebpf");

    // `sluice plan --config` previews the move without applying it.
    let new_cfg = t.lab.dir.join("partial.json");
    let mut v: serde_json::Value = serde_json::from_str(&original).expect("json config");
    v["kube_proxy_replacement"] = "partial".into();
    v["kube_proxy_replacement_features"] =
        serde_json::json!(["node-port", "traffic-policy-local", "health-check-node-port"]);
    std::fs::write(&new_cfg, v.to_string()).expect("write");
    let preview = t.exec("node-1", &["sluice", "plan", "--config", new_cfg.to_str().expect("utf8")]);
    assert!(preview.contains("eBPF removes cluster-ip (now kube-proxy)"), "{preview}");
    assert!(!preview.contains("removes node-port"), "{preview}");
    assert_eq!(owner(&t.status("node-1"), "cluster-ip"), "ebpf", "plan --config applies nothing");

    // Edit the running agent's config file: re-planned and applied.
    std::fs::write(&cfg_path, v.to_string()).expect("write");
    let s = eventually("cluster-ip handed to kube-proxy", Duration::from_secs(10), || {
        let s = t.try_status("node-1")?;
        (owner(&s, "cluster-ip") == "kube-proxy").then_some(s)
    });
    assert_eq!(s["config"]["generation"], 2);
    assert_eq!(owner(&s, "node-port"), "ebpf");
    let steps = s["config"]["last_transition"].as_array().expect("steps");
    assert!(steps.iter().any(|x| x["step"]["op"] == "remove" && x["step"]["feature"] == "cluster-ip"), "{steps:?}");

    // A broken file: the agent keeps running with the old plan and says why.
    let pid = node.agent_pid.expect("pid");
    std::fs::write(&cfg_path, original.replace("\"node_name\"", "\"dataplane\": \"warp\", \"node_name\""))
        .expect("write");
    let s = eventually("reload rejected", Duration::from_secs(10), || {
        let s = t.try_status("node-1")?;
        s["config"]["rejected"].as_str().is_some_and(|r| r.contains("warp")).then_some(s)
    });
    assert_eq!(owner(&s, "cluster-ip"), "kube-proxy", "old plan kept");
    assert!(sluice_lab::proc::alive(pid), "agent still running");
    assert!(t.exec("node-1", &["sluice", "status"]).contains("LAST RELOAD REJECTED"));

    // A key that cannot change at runtime is refused by name.
    let mut renamed: serde_json::Value = serde_json::from_str(&original).expect("json");
    renamed["masquerade"] = false.into();
    std::fs::write(&cfg_path, renamed.to_string()).expect("write");
    eventually("immutable key refused", Duration::from_secs(10), || {
        let s = t.try_status("node-1")?;
        s["config"]["rejected"].as_str().is_some_and(|r| r.contains("masquerade cannot change")).then_some(())
    });

    // Back to the original by SIGHUP-triggered reload as well as the file change.
    std::fs::write(&cfg_path, &original).expect("write");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGHUP).expect("sighup");
    eventually("back on eBPF", Duration::from_secs(10), || {
        let s = t.try_status("node-1")?;
        (owner(&s, "cluster-ip") == "ebpf" && s["config"]["rejected"].is_null()).then_some(())
    });
}

/// Per-node configuration: a node label selects a `node_configs` entry, so kube-proxy
/// replacement rolls out node by node; removing the label returns the node to the base config.
#[test]
fn node_label_selects_per_node_config() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("rollout.yaml");
    std::fs::write(
        &cfg,
        "kube_proxy_replacement: disabled\nnode_configs:\n  replace-kube-proxy:\n    kube_proxy_replacement: probe\n",
    )
    .expect("write");
    let t = TestLab::up("t-nodecfg", 2, &[("node-1".into(), cfg.clone()), ("node-2".into(), cfg)]);
    assert_eq!(owner(&t.status("node-2"), "cluster-ip"), "kube-proxy");
    let manifest = t.lab.manifests_dir().join("nodes/node-2.yaml");
    let original = std::fs::read_to_string(&manifest).expect("node manifest");
    let labelled = original.replace(
        "    kubernetes.io/hostname: node-2\n",
        "    kubernetes.io/hostname: node-2\n    sluice.io/node-config: replace-kube-proxy\n",
    );
    assert_ne!(labelled, original);
    std::fs::write(&manifest, &labelled).expect("write");
    let s = eventually("node-2 takes over Services", Duration::from_secs(10), || {
        let s = t.try_status("node-2")?;
        (owner(&s, "cluster-ip") == "ebpf").then_some(s)
    });
    assert_eq!(s["config"]["node_config"], "replace-kube-proxy");
    assert_eq!(owner(&t.status("node-1"), "cluster-ip"), "kube-proxy", "node-1 is not labelled");
    // A label naming no entry is refused by name; the node keeps its plan.
    std::fs::write(
        &manifest,
        original.replace(
            "    kubernetes.io/hostname: node-2\n",
            "    kubernetes.io/hostname: node-2\n    sluice.io/node-config: typo\n",
        ),
    )
    .expect("write");
    let s = eventually("unknown node config rejected", Duration::from_secs(10), || {
        let s = t.try_status("node-2")?;
        s["config"]["rejected"]
            .as_str()
            .is_some_and(|r| r.contains("typo") && r.contains("replace-kube-proxy"))
            .then_some(s)
    });
    assert_eq!(owner(&s, "cluster-ip"), "ebpf");
    // Label removed: back to the base config.
    std::fs::write(&manifest, &original).expect("write");
    eventually("node-2 back to disabled", Duration::from_secs(10), || {
        let s = t.try_status("node-2")?;
        (owner(&s, "cluster-ip") == "kube-proxy").then_some(())
    });
}
