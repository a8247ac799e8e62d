//! Tier 3: sluice (iptables backend) beside a live kube-proxy ruleset. kube-proxy keeps the features the plan leaves
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
        "dataplane: iptables\nkube_proxy_replacement: partial\nkube_proxy_replacement_features: [node-port, traffic-policy-local, health-check-node-port]\n",
    )
    .expect("write");
    let t = TestLab::up("t-coexist", 1, &[("node-1".into(), cfg)]);
    let lab = &t.lab;
    let web = [("app".to_string(), "web".to_string())].into_iter().collect();
    let a = lab.pod_add("node-1", "a", web, Some(8080)).expect("pod a");
    lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    lab.external_add("ext", None).expect("ext");

    // A kube-proxy iptables-mode ruleset (its layout: KUBE-SERVICES -> KUBE-SVC -> KUBE-SEP
    // with hairpin mark and DNAT, KUBE-MARK-MASQ, KUBE-POSTROUTING) for one real Service
    // 10.96.0.35 -> pod a, linked as kube-proxy links it.
    let rules = format!(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-SVC-WEB35 - [0:0]\n:KUBE-SEP-WEB35A - [0:0]\n\
         -A KUBE-SERVICES -d 10.96.0.35/32 -p tcp -m tcp --dport 80 -m comment --comment \"default/web35:http cluster IP\" -j KUBE-SVC-WEB35\n\
         -A KUBE-SVC-WEB35 ! -s 10.244.0.0/16 -d 10.96.0.35/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ\n\
         -A KUBE-SVC-WEB35 -j KUBE-SEP-WEB35A\n\
         -A KUBE-SEP-WEB35A -s {ip}/32 -j KUBE-MARK-MASQ\n\
         -A KUBE-SEP-WEB35A -p tcp -m tcp -j DNAT --to-destination {ip}:8080\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -j MASQUERADE\n\
         -I PREROUTING -j KUBE-SERVICES\n-I OUTPUT -j KUBE-SERVICES\n-I POSTROUTING -j KUBE-POSTROUTING\nCOMMIT\n",
        ip = a.ip
    );
    let rules_file = dir.path().join("kube-proxy.rules");
    std::fs::write(&rules_file, rules).expect("write");
    t.exec("node-1", &["sh", "-c", &format!("iptables-nft-restore --noflush < {}", rules_file.display())]);
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
