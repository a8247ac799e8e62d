//! Tier 3: pod networking on a virtual cluster (real agents, real sluice-cni, real kernel).

mod common;

use std::time::Duration;

use common::{TestLab, eventually, require_root};
use serde_json::json;
use sluice_lab::{cnirun, proc, topo};

#[test]
fn pods_on_two_nodes_reach_each_other_and_the_world() {
    if !require_root() {
        return;
    }
    let t = TestLab::up("t-net", 2, &[]);
    let lab = &t.lab;
    let a = lab.pod_add("node-1", "a", Default::default(), Some(8080)).expect("pod a");
    let b = lab.pod_add("node-2", "b", Default::default(), Some(8080)).expect("pod b");
    let c = lab.pod_add("node-1", "c", Default::default(), Some(8080)).expect("pod c");
    lab.external_add("world", Some(80)).expect("external");

    // Cross-node both ways, same node, and node host to a remote pod.
    assert_eq!(t.curl("a", &format!("http://{}:8080/", b.ip)).expect("a->b"), "b");
    assert_eq!(t.curl("b", &format!("http://{}:8080/", a.ip)).expect("b->a"), "a");
    assert_eq!(t.curl("a", &format!("http://{}:8080/", c.ip)).expect("a->c"), "c");
    assert_eq!(t.curl("node-1", &format!("http://{}:8080/", b.ip)).expect("node-1->b"), "b");
    assert_eq!(t.curl("b", &format!("http://{}:8080/", a.ip)).expect("udp"), "a");
    assert_eq!(t.exec("b", &["sluice-lab", "udp", &format!("{}:8080", a.ip)]).trim(), "a");

    // Pod-to-pod keeps the pod source; leaving the cluster is masqueraded to the node address.
    assert_eq!(t.curl("a", &format!("http://{}:8080/client", b.ip)).expect("src"), a.ip);
    assert_eq!(t.curl("a", "http://198.51.100.201:80/client").expect("world"), "198.51.100.11");

    // The agent reports what it did.
    let s = eventually("node-1 reports 2 local endpoints", Duration::from_secs(10), || {
        let s = t.status("node-1");
        (s["local_endpoints"].as_array().map(Vec::len) == Some(2)).then_some(s)
    });
    assert_eq!(s["pod_cidr"], "10.244.1.0/24");
    assert_eq!(s["underlay_ip"], "198.51.100.11");
    assert_eq!(s["routes"], json!([{"dst": "10.244.2.0/24", "via": "198.51.100.12"}]));
    assert!(s["errors"].as_array().expect("errors").is_empty(), "{s}");
    let pods: Vec<_> = s["local_endpoints"].as_array().expect("eps").iter().map(|e| e["pod_name"].clone()).collect();
    assert!(pods.contains(&json!("a")) && pods.contains(&json!("c")));
    let table = t.exec("node-1", &["sluice", "status"]);
    assert!(table.contains("10.244.2.0/24 via 198.51.100.12") && table.contains("default/a"), "{table}");

    // Deleting a pod removes its interface, its address and its endpoint.
    let host_if = t.exec("node-1", &["ip", "-o", "link"]).lines().filter(|l| l.contains("slc")).count();
    lab.pod_del("a").expect("pod del");
    let after = t.exec("node-1", &["ip", "-o", "link"]).lines().filter(|l| l.contains("slc")).count();
    assert_eq!(after, host_if - 1);
    eventually("endpoint a gone", Duration::from_secs(10), || {
        (t.status("node-1")["local_endpoints"].as_array().map(Vec::len) == Some(1)).then_some(())
    });
    assert!(t.curl("b", &format!("http://{}:8080/", a.ip)).is_err(), "deleted pod must not answer");
}

#[test]
fn agent_crash_keeps_forwarding_and_restart_prunes_only_after_sync() {
    if !require_root() {
        return;
    }
    let t = TestLab::up("t-restart", 3, &[]);
    let lab = &t.lab;
    lab.pod_add("node-1", "a", Default::default(), Some(8080)).expect("pod a");
    let b = lab.pod_add("node-2", "b", Default::default(), Some(8080)).expect("pod b");
    let st = lab.state().expect("state");
    let pid = st.node("node-1").expect("node").agent_pid.expect("pid");

    // kill -9: routes and rules are kernel state and stay; traffic keeps flowing.
    proc::kill9(pid);
    assert!(!proc::alive(pid));
    assert_eq!(t.curl("a", &format!("http://{}:8080/", b.ip)).expect("while agent down"), "b");

    // While it is down: a stale sluice route appears and node-3 leaves the cluster.
    t.exec("node-1", &["ip", "route", "add", "10.244.99.0/24", "via", "198.51.100.99", "proto", "0x54"]);
    std::fs::remove_file(lab.manifests_dir().join("nodes/node-3.yaml")).expect("remove node-3");
    lab.restart_agent("node-1", false).expect("restart");
    let routes = eventually("stale routes pruned after sync", Duration::from_secs(15), || {
        let r = t.exec("node-1", &["ip", "route", "show", "proto", "0x54"]);
        (!r.contains("10.244.99.0") && !r.contains("10.244.3.0")).then_some(r)
    });
    assert!(routes.contains("10.244.2.0/24 via 198.51.100.12"), "{routes}");
    assert_eq!(t.curl("a", &format!("http://{}:8080/", b.ip)).expect("after restart"), "b");

    // Restarts never duplicate the masquerade hook.
    lab.restart_agent("node-1", true).expect("restart after kill");
    eventually("agent ready", Duration::from_secs(15), || {
        (t.try_status("node-1")?["source"]["synced"] == true).then_some(())
    });
    let nat = t.exec("node-1", &["iptables-nft-save", "-t", "nat"]);
    assert_eq!(
        nat.lines().filter(|l| l.starts_with("-A POSTROUTING") && l.contains("SLUICE-NODE-MASQ")).count(),
        1,
        "{nat}"
    );
}

#[test]
fn bad_manifest_is_reported_and_changes_nothing() {
    if !require_root() {
        return;
    }
    let t = TestLab::up("t-bad", 2, &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("broken.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: not-a-number}]}\n")
        .expect("write");
    t.lab.apply(&bad).expect("apply (valid YAML, invalid Service)");
    // The file parses; the object in it does not decode: it alone is refused, by name.
    let s = eventually("bad object reported", Duration::from_secs(10), || {
        let s = t.status("node-1");
        (!s["rejected"].as_array()?.is_empty()).then_some(s)
    });
    let r = &s["rejected"][0];
    assert_eq!(r["object"], "Service default/s", "{r}");
    assert!(r["reason"].as_str().is_some_and(|x| x.contains("does not decode")), "{r}");
    assert!(s["source"]["errors"].as_array().is_some_and(|e| e.is_empty()), "the file itself is fine: {s}");
    assert_eq!(s["routes"].as_array().map(Vec::len), Some(1), "routes untouched");
    // Unparseable YAML is refused by `apply` itself.
    std::fs::write(&bad, "kind: [").expect("write");
    assert!(t.lab.apply(&bad).is_err());
}

#[test]
fn down_cleans_up_after_a_crashed_lab() {
    if !require_root() {
        return;
    }
    let t = TestLab::up("t-crash", 1, &[]);
    t.lab.pod_add("node-1", "a", Default::default(), Some(8080)).expect("pod");
    let pid = t.lab.state().expect("state").nodes[0].agent_pid.expect("pid");
    // The lab's own record is lost, as after a crash of the lab process itself.
    std::fs::remove_file(t.lab.dir.join("lab.json")).expect("remove state");
    t.lab.down().expect("down");
    assert!(topo::list_netns(&t.lab.prefix()).is_empty());
    assert!(!proc::alive(pid), "agent stopped (found through its namespace)");
    assert!(!t.lab.dir.exists());
}

#[test]
fn sluice_cleanup_removes_only_what_sluice_owns() {
    if !require_root() {
        return;
    }
    let t = TestLab::up("t-clean", 2, &[]);
    // A kube-proxy-style chain that must survive.
    t.exec("node-1", &["iptables-nft", "-t", "nat", "-N", "KUBE-POSTROUTING"]);
    t.exec("node-1", &["iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-j", "KUBE-POSTROUTING"]);
    // The agent pinned its eBPF objects: the node device's tc link, socket LB on the node's cgroup.
    let pins = t.lab.bpf_dir().join("node-1");
    for p in ["links/eth0-ingress", "cgroup/sluice_sock_connect4", "sluice_svc", "sluice_ct"] {
        assert!(pins.join(p).exists(), "{p} not pinned under {}", pins.display());
    }
    let pid = t.lab.state().expect("state").nodes[0].agent_pid.expect("pid");
    proc::stop(pid, Duration::from_secs(5));
    let out = t.exec("node-1", &["sluice", "cleanup", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["routes"], 1, "{out}");
    assert!(v["backends"]["ebpf"].as_u64().is_some_and(|n| n >= 10), "{out}");
    assert!(!pins.exists(), "every pinned map and link is gone");
    let nat = t.exec("node-1", &["iptables-nft-save", "-t", "nat"]);
    assert!(!nat.contains("SLUICE-"), "{nat}");
    assert!(nat.contains("-A POSTROUTING -j KUBE-POSTROUTING"), "{nat}");
    assert!(t.exec("node-1", &["ip", "route", "show", "proto", "0x54"]).trim().is_empty());
    // Idempotent.
    let again: serde_json::Value =
        serde_json::from_str(&t.exec("node-1", &["sluice", "cleanup", "-o", "json"])).expect("json");
    assert_eq!(again["routes"], 0);
}

/// sluice-cni first in a conflist, Debian's reference portmap and bandwidth chained after it
/// (configured through the agent's `cni.chain`), driven exactly as libcni drives a chain.
#[test]
fn chained_with_reference_portmap_and_bandwidth() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("chain.yaml");
    std::fs::write(
        &cfg,
        "cni:\n  chain:\n  - {type: portmap, capabilities: {portMappings: true}, snat: true}\n  - {type: bandwidth, capabilities: {bandwidth: true}}\n",
    )
    .expect("write");
    let t = TestLab::up("t-chain", 1, &[("node-1".into(), cfg)]);
    let lab = &t.lab;
    lab.external_add("client", None).expect("external");
    let st = lab.state().expect("state");
    let node = st.node("node-1").expect("node").clone();
    let ns = format!("{}pod-hp", lab.prefix());
    topo::add_netns(&ns).expect("netns");
    let mut inv = lab
        .invocation(&node, "hp-ctr", &format!("/run/netns/{ns}"), "K8S_POD_NAMESPACE=default;K8S_POD_NAME=hp".into())
        .expect("inv");
    inv.runtime_config = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 10_000_000},
    });
    assert_eq!(inv.conflist["plugins"].as_array().map(Vec::len), Some(3), "{}", inv.conflist);
    let result = cnirun::add(&inv).unwrap_or_else(|e| panic!("chained ADD: {e:#}"));
    let host_if = result["interfaces"][0]["name"].as_str().expect("host if").to_string();
    let server = proc::spawn_daemon(
        &ns,
        None,
        &lab.bin_dir.join("sluice-lab"),
        &["serve".into(), "--name".into(), "hp".into(), "--port".into(), "8080".into()],
        &[],
        &dir.path().join("s.log"),
    )
    .expect("server");
    std::thread::sleep(Duration::from_millis(300));

    // portmap: the host port on the node's address reaches the pod.
    assert_eq!(t.curl("client", "http://198.51.100.11:18080/").expect("hostPort"), "hp");
    // bandwidth: a tbf qdisc shapes the host-side veth.
    let qd = t.exec("node-1", &["tc", "qdisc", "show", "dev", &host_if]);
    assert!(qd.contains("tbf"), "{qd}");
    // CHECK of sluice-cni with the chain's final result as prevResult. (Debian's portmap 1.1
    // fails its own CHECK on IPv4-only results: "could not check ipv6 dnat", so the whole-chain
    // CHECK is not asserted here.)
    let mut check_conf = inv.conflist["plugins"][0].clone();
    check_conf["name"] = inv.conflist["name"].clone();
    check_conf["cniVersion"] = inv.conflist["cniVersion"].clone();
    check_conf["prevResult"] = result.clone();
    cnirun::exec(&inv, "CHECK", &check_conf).unwrap_or_else(|e| panic!("CHECK after chain: {e}"));
    proc::stop(server, Duration::from_secs(2));
    cnirun::del(&inv, Some(&result)).expect("chained DEL");
    let nat = t.exec("node-1", &["iptables-save", "-t", "nat"]);
    assert!(!nat.contains("18080"), "portmap rules removed: {nat}");
    assert!(!t.exec("node-1", &["ip", "-o", "link"]).contains(&host_if));
    topo::del_netns(&ns);
}
