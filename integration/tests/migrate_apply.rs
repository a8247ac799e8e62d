//! Tier 3: a node taken off kube-proxy and given back, under load. node-1 "runs kube-proxy":
//! kube-proxy's iptables layout for the `web` ClusterIP, hooked from PREROUTING and OUTPUT so it
//! carries the traffic, while sluice there is `kube_proxy_replacement: disabled`. A client on
//! node-1 holds one connection through the ClusterIP (opened through kube-proxy's NAT) and opens
//! new ones in a closed loop while `sluice migrate apply`, `rollback` and `apply` again run,
//! the second apply killed once midway and rerun. The held connection must never break, new
//! connections are counted (see the bound below), and the kernel and the records must say what
//! each step claims. On iptables and on eBPF.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{KillOnDrop, eventually, finish, json, kube_proxy, now_ms, require_root, two_node_web_lab};

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]\n";

/// Where "kube-proxy" keeps its rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// iptables mode through iptables-nft (current distributions).
    IptablesNft,
    /// iptables mode through iptables-legacy (older nodes).
    IptablesLegacy,
    /// nftables mode: its own table.
    Nftables,
}

impl Layout {
    /// The iptables-save that shows its rules (sluice's own are in iptables-nft here).
    fn save(self) -> &'static str {
        if self == Layout::IptablesLegacy { "iptables-legacy-save" } else { "iptables-nft-save" }
    }

    fn source(self) -> &'static str {
        match self {
            Layout::IptablesNft => "iptables-nft",
            Layout::IptablesLegacy => "iptables-legacy",
            Layout::Nftables => "nftables",
        }
    }
}

#[test]
fn onto_iptables_apply_rollback_apply_under_load_breaks_no_connection() {
    rehearse("t-mig-ipt", "iptables", Layout::IptablesNft);
}

#[test]
fn onto_ebpf_apply_rollback_apply_under_load_breaks_no_connection() {
    rehearse("t-mig-bpf", "ebpf", Layout::IptablesNft);
}

/// kube-proxy in nftables mode: read from `nft -j`, its table deleted whole and put back.
#[test]
fn from_nftables_mode_onto_iptables_apply_rollback_apply_under_load() {
    rehearse("t-mig-nft", "iptables", Layout::Nftables);
}

/// kube-proxy through iptables-legacy, sluice through iptables-nft.
#[test]
fn from_iptables_legacy_onto_iptables_apply_rollback_apply_under_load() {
    rehearse("t-mig-leg", "iptables", Layout::IptablesLegacy);
}

fn rehearse(lab: &str, dataplane: &str, layout: Layout) {
    let nftables = layout == Layout::Nftables;
    if !require_root() {
        return;
    }
    let (t, dir) = two_node_web_lab(
        lab,
        &format!("dataplane: {dataplane}\nkube_proxy_replacement: disabled\n"),
        "dataplane: iptables\n",
    );
    let f = dir.path().join("web.yaml");
    std::fs::write(&f, WEB).expect("write");
    t.lab.apply(&f).expect("apply");
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    let st = t.lab.state().expect("state");
    let ip = |pod: &str| st.pods.iter().find(|p| p.name == pod).map(|p| p.ip.clone()).expect("pod");
    let rules = dir.path().join("kube-proxy.rules");
    if nftables {
        let node_ip = st.node("node-1").expect("node-1").underlay_ip.clone();
        std::fs::write(&rules, kube_proxy::nftables(&[&ip("a"), &ip("b")], &node_ip)).expect("write");
        t.exec("node-1", &["nft", "-f", rules.to_str().expect("utf8")]);
    } else {
        std::fs::write(&rules, kube_proxy::iptables(&[&ip("a"), &ip("b")])).expect("write");
        let restore = if layout == Layout::IptablesLegacy { "iptables-legacy-restore" } else { "iptables-nft-restore" };
        t.exec("node-1", &["sh", "-c", &format!("{restore} --noflush < {}", rules.display())]);
    }
    eventually("web answers through kube-proxy", Duration::from_secs(20), || {
        t.curl("client", "http://10.96.0.10/").ok()
    });
    // node-2's agent serves the NodePort there (verify probes it from node-1).
    let n2 = st.node("node-2").expect("node-2").underlay_ip.clone();
    eventually("node-2's NodePort answers", Duration::from_secs(20), || {
        t.curl("client", &format!("http://{n2}:30080/")).ok()
    });
    if nftables {
        // sluice reads kube-proxy's nftables layout and finds it equal to its own.
        let plan = json(&t.exec("node-1", &["sluice", "migrate", "plan", "-o", "json"]));
        assert_eq!(plan["kube_proxy_sources"], serde_json::json!(["nftables"]), "{plan:#}");
        assert_eq!(plan["unknown"], serde_json::json!([]), "{plan:#}");
        assert!(plan["rows"].as_array().expect("rows").iter().all(|r| r["verdict"] == "matches"), "{plan:#}");
    } else {
        // kube-proxy serves the ClusterIP: its rule counts the packets.
        let counted = t.exec("node-1", &[layout.save(), "-c", "-t", "nat"]);
        let line = counted.lines().find(|l| l.contains("default/web:http cluster IP")).expect("kube-proxy's rule");
        assert!(!line.starts_with("[0:"), "kube-proxy's rule carried no packet: {line}");
    }
    let before = t.status("node-1");
    assert_eq!(before["config"]["migration"], serde_json::Value::Null);

    // The load: one held connection (opened now, through kube-proxy's NAT) and new ones.
    let spawn = |argv: &[&str]| {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut c = t.lab.command("client", &argv).expect("command");
        KillOnDrop(c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn"))
    };
    let hold = spawn(&["sluice-lab", "hold", "10.96.0.10:80", "--secs", "40", "--interval-ms", "50"]);
    let load =
        spawn(&["sluice-lab", "load", "10.96.0.10:80", "--connections", "4", "--secs", "40", "--bucket-ms", "250"]);
    let mut phases: Vec<(&str, u64)> = Vec::new();
    let mut mark = |what: &'static str| phases.push((what, now_ms()));
    std::thread::sleep(Duration::from_secs(2));

    // apply: sluice takes every Service feature, then kube-proxy's rules go.
    mark("apply");
    let out = json(&t.exec("node-1", &["sluice", "migrate", "apply", "-o", "json"]));
    assert_eq!(out["verify"]["passed"], true, "{out:#}");
    assert_eq!(out["verify"]["kube_proxy_sources"], serde_json::json!([]), "{out:#}");
    let table = if nftables { "ip kube-proxy" } else { "nat" };
    // The kernel holds what the agent wants: the ClusterIP and the NodePort, read back from
    // sluice's nat rules or eBPF's maps.
    let programmed = out["verify"]["programmed"]["rows"].as_array().expect("programmed rows");
    assert_eq!(programmed.len(), 2, "{out:#}");
    assert!(programmed.iter().all(|r| r["verdict"] == "programmed" && r["backend"] == dataplane), "{out:#}");
    // The manifest source has no Node object: apply says so instead of labelling.
    assert!(out["node_label"].as_str().is_some_and(|l| l.contains("manifest source")), "{out:#}");
    let removed =
        out["removed"].as_array().expect("removed").iter().find(|r| r["table"] == table).cloned().expect("removed");
    assert_eq!(removed["chains"], if nftables { 10 } else { 8 }, "{out:#}");
    assert_eq!(removed["hooks"], 3, "{out:#}");
    let saved = t.exec("node-1", &[layout.save(), "-t", "nat"]);
    assert!(!saved.contains("KUBE-"), "kube-proxy's rules are gone:\n{saved}");
    assert!(!t.exec("node-1", &["nft", "list", "tables"]).contains("kube-proxy"), "kube-proxy's table is gone");
    let st = t.status("node-1");
    assert_eq!(st["config"]["migration"]["kube_proxy_replacement"], "strict", "{:#}", st["config"]);
    let state_dir = std::path::PathBuf::from(st["config"]["state_dir"].as_str().expect("state_dir"));
    assert!(state_dir.join("kube-proxy-replaced").exists(), "the marker");
    let record = json(&std::fs::read_to_string(state_dir.join("migration/record.json")).expect("record"));
    if nftables {
        assert!(
            record["snapshot"]["nftables"].as_str().is_some_and(|t| t.contains("table ip kube-proxy")),
            "{record:#}"
        );
    } else {
        assert_eq!(record["snapshot"]["variants"][0]["tables"][0]["chains"].as_array().map(Vec::len), Some(8));
    }
    // The held connection's entry, translated by kube-proxy's DNAT, is there before and after.
    assert!(out["conntrack_before"].as_u64() >= Some(1), "{out:#}");
    assert!(out["conntrack_after"].as_u64() >= Some(1), "{out:#}");
    // The NodePort answered on both nodes' addresses, from node-1.
    let probes = out["verify"]["probes"].as_array().expect("probes");
    let nodeports: Vec<&serde_json::Value> =
        probes.iter().filter(|p| p["frontend"].as_str().is_some_and(|f| f.ends_with(":30080/TCP"))).collect();
    assert_eq!(nodeports.len(), 2, "{probes:#?}");
    assert!(nodeports.iter().all(|p| p["ok"] == true), "{probes:#?}");
    // A rerun changes nothing and still passes.
    mark("apply again");
    let again = json(&t.exec("node-1", &["sluice", "migrate", "apply", "-o", "json"]));
    assert_eq!(again["removed"], serde_json::json!([]), "{again:#}");
    assert_eq!(again["snapshot_unix"], out["snapshot_unix"], "the snapshot rollback uses stays");

    // rollback: kube-proxy's rules back first, then sluice hands over.
    mark("rollback");
    let back = json(&t.exec("node-1", &["sluice", "migrate", "rollback", "-o", "json"]));
    assert_eq!(back["passed"], true, "{back:#}");
    assert_eq!(back["kube_proxy_sources"], serde_json::json!([layout.source()]), "{back:#}");
    let saved = t.exec("node-1", &[layout.save(), "-t", "nat"]);
    if nftables {
        let table = t.exec("node-1", &["nft", "list", "table", "ip", "kube-proxy"]);
        assert!(table.contains("hook prerouting") && table.contains("dnat to"), "{table}");
    } else {
        assert!(
            saved.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
            "{saved}"
        );
    }
    let ours = t.exec("node-1", &["iptables-nft-save", "-t", "nat"]);
    assert!(
        !ours.contains("-j SLUICE-SERVICES")
            && !ours.lines().any(|l| l.starts_with("-A SLUICE") && l.contains("10.96.0.10")),
        "sluice handed its Service rules over:\n{ours}"
    );
    assert!(!state_dir.join("kube-proxy-replaced").exists(), "the marker is gone");
    assert_eq!(t.status("node-1")["config"]["migration"]["kube_proxy_replacement"], "disabled");

    // apply again, killed midway once (by its PID), then rerun: it converges.
    mark("apply, killed");
    let mut c = t.lab.command("node-1", &["sluice".into(), "migrate".into(), "apply".into()]).expect("command");
    let mut first = KillOnDrop(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn"));
    std::thread::sleep(Duration::from_millis(700));
    let _ = first.0.kill();
    let _ = first.0.wait();
    mark("apply, rerun");
    let out = json(&t.exec("node-1", &["sluice", "migrate", "apply", "-o", "json"]));
    assert_eq!(out["verify"]["passed"], true, "{out:#}");
    mark("done");
    let saved = t.exec("node-1", &[layout.save(), "-t", "nat"]);
    assert!(!saved.contains("KUBE-"), "{saved}");
    assert_eq!(t.status("node-1")["config"]["migration"]["kube_proxy_replacement"], "strict");

    // The load ran across all of it.
    let (ok, out, err) = finish(hold);
    assert!(ok, "the held connection broke: {out}{err}");
    let (_, out, err) = finish(load);
    let v = json(&format!("{out}{}", if out.is_empty() { err } else { String::new() }));
    eprintln!("across apply, rollback, apply: {} new connections ok, {} failed {}", v["ok"], v["failed"], v["errors"]);
    let t0 = v["start_unix_ms"].as_u64().unwrap_or(0);
    let timeline: Vec<(u64, u64)> = serde_json::from_value(v["timeline"].clone()).unwrap_or_default();
    let failed_at: Vec<u64> =
        timeline.iter().enumerate().filter(|(_, (_, f))| *f > 0).map(|(i, _)| i as u64 * 250).collect();
    let phases: Vec<String> = phases.iter().map(|(w, at)| format!("{w} at {} ms", at.saturating_sub(t0))).collect();
    eprintln!("failures in the 250 ms buckets at {failed_at:?} ms; {}", phases.join(", "));
    // The goal is 0 failed, and 0 is what runs measure (docs/benchmarks.md). Before conntrack
    // settles stopped for kube-proxy <-> iptables moves (nothing to settle: both translate in
    // netfilter), each switch cost 1-3 connections in ~600k. Asserted is the bound a timing-
    // free test can hold on a loaded 2-core machine: at most one in ten thousand.
    let (ok, failed) = (v["ok"].as_u64().unwrap_or(0), v["failed"].as_u64().unwrap_or(u64::MAX));
    assert!(ok > 0, "{v}");
    assert!(failed * 10_000 <= ok, "{failed} of {ok} new connections failed: {}", v["errors"]);
}
