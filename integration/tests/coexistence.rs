//! Tier 3: sluice beside a live kube-proxy ruleset. kube-proxy keeps the features the plan leaves
//! to it, sluice serves the ones it takes, restarts rewrite nothing that is right, and cleanup
//! removes only sluice's chains.

mod common;

use std::time::Duration;

use common::{TestLab, eventually, require_root};

#[test]
fn partial_mode_beside_kube_proxy() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("partial.yaml");
    std::fs::write(
        &cfg,
        "kube_proxy_replacement: partial\nkube_proxy_replacement_features: [node-port, traffic-policy-local, health-check-node-port]\n",
    )
    .expect("write");
    let t = TestLab::up("t-coexist", 1, &[("node-1".into(), cfg)]);
    let lab = &t.lab;
    let web = [("app".to_string(), "web".to_string())].into_iter().collect();
    let a = lab.pod_add("node-1", "a", web, Some(8080)).expect("pod a");
    lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    lab.external_add("ext", None).expect("ext");

    // kube-proxy's ruleset for 50 services, one of them (10.96.0.35) real, linked as kube-proxy links it.
    let peer = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/kube-proxy-iptables.py");
    let rules = std::process::Command::new("python3")
        .arg(&peer)
        .args(["--services", "50", "--no-nodeports", "--target", &format!("10.96.0.35:80={}:8080", a.ip)])
        .output()
        .expect("peer script");
    assert!(rules.status.success(), "{}", String::from_utf8_lossy(&rules.stderr));
    let rules_file = dir.path().join("kube-proxy.rules");
    std::fs::write(&rules_file, &rules.stdout).expect("write");
    let jumps = "*nat\n-I PREROUTING -j KUBE-SERVICES\n-I OUTPUT -j KUBE-SERVICES\n-I POSTROUTING -j KUBE-POSTROUTING\nCOMMIT\n";
    let jumps_file = dir.path().join("jumps.rules");
    std::fs::write(&jumps_file, jumps).expect("write");
    for f in [&rules_file, &jumps_file] {
        t.exec("node-1", &["sh", "-c", &format!("iptables-nft-restore --noflush < {}", f.display())]);
    }
    // The node's kube-proxy is visible to sluice's probe.
    let probe: serde_json::Value =
        serde_json::from_str(&t.exec("node-1", &["sluice", "probe", "-o", "json"])).expect("json");
    assert_eq!(probe["kube_proxy"]["active"], true, "{probe}");

    // A Service sluice takes the NodePort of, kube-proxy keeps the ClusterIP of.
    let svc = dir.path().join("svc.yaml");
    std::fs::write(
        &svc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.200\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30090}]\n",
    )
    .expect("write");
    lab.apply(&svc).expect("apply");
    eventually("nodeport programmed by sluice", Duration::from_secs(15), || {
        t.exec("node-1", &["iptables-nft-save", "-t", "nat"]).contains("--dport 30090").then_some(())
    });
    let nat = t.exec("node-1", &["iptables-nft-save", "-t", "nat"]);
    assert!(!nat.contains("-d 10.96.0.200/32"), "ClusterIP is kube-proxy's in partial mode: {nat}");
    // kube-proxy's ClusterIP works, sluice's NodePort works.
    assert_eq!(t.curl("client", "http://10.96.0.35/").expect("kube-proxy clusterip"), "a");
    assert_eq!(t.curl("ext", "http://198.51.100.11:30090/").expect("sluice nodeport"), "a");
    let list: serde_json::Value =
        serde_json::from_str(&t.exec("node-1", &["sluice", "service", "list", "-o", "json"])).expect("json");
    let owners: Vec<(String, String)> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or("").to_string(), e["owner"].as_str().unwrap_or("").to_string()))
        .collect();
    assert!(
        owners.contains(&("ClusterIP".into(), "kube-proxy".into()))
            && owners.contains(&("NodePort".into(), "iptables".into())),
        "{owners:?}"
    );

    // A restart reads what is there and rewrites nothing that is right.
    let before = t.exec("node-1", &["iptables-nft-save", "-t", "nat"]);
    t.lab.restart_agent("node-1", true).expect("restart");
    eventually("agent back", Duration::from_secs(15), || t.try_status("node-1").map(|_| ()));
    std::thread::sleep(Duration::from_millis(800));
    let log = std::fs::read_to_string(t.lab.dir.join("nodes/node-1/agent.log")).expect("log");
    let after_restart = log.rsplit("sluice agent started").next().unwrap_or("");
    assert!(!after_restart.contains("iptables synced"), "restart rewrote rules that were right:\n{after_restart}");
    let strip = |s: &str| s.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(strip(&before), strip(&t.exec("node-1", &["iptables-nft-save", "-t", "nat"])));
    assert_eq!(t.curl("client", "http://10.96.0.35/").expect("still"), "a");

    // cleanup takes sluice's chains away and leaves kube-proxy's working.
    let pid = t.lab.state().expect("state").nodes[0].agent_pid.expect("pid");
    sluice_lab::proc::stop(pid, Duration::from_secs(5));
    t.exec("node-1", &["sluice", "cleanup"]);
    let nat = t.exec("node-1", &["iptables-nft-save", "-t", "nat"]);
    assert!(!nat.contains("SLUICE-") && nat.contains("KUBE-SERVICES"), "{nat}");
    assert_eq!(t.curl("client", "http://10.96.0.35/").expect("kube-proxy after cleanup"), "a");
}
