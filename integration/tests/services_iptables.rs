//! Tier 3: the Service connectivity suite (modelled on Cilium's connectivity check) on a 2-node
//! lab with real agents: on the iptables backend (`dataplane: iptables`), on the eBPF backend
//! (`dataplane: ebpf`), with `dataplane: auto` (every Service feature on eBPF on this kernel), and
//! on a mixed cluster (node-1 auto, node-2 told it lacks sched_cls programs and so all on
//! iptables), with traffic across the two kinds of node both ways. The iptables, eBPF and mixed
//! variants run under `kube_proxy_replacement: strict`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestLab, eventually, require_root};
use sluice_lab::Lab;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalIPs: [203.0.113.10]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-local, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.11
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.100}]}}
---
apiVersion: v1
kind: Service
metadata: {name: web-ranges, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.12
  loadBalancerSourceRanges: [198.51.100.201/32]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30082}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.101}]}}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default}
spec:
  clusterIP: 10.96.0.13
  sessionAffinity: ClientIP
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: default}
spec:
  clusterIP: 10.96.0.14
  selector: {app: web}
  ports: [{name: udp, port: 53, targetPort: 8080, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: solo, namespace: default}
spec:
  clusterIP: 10.96.0.16
  selector: {app: solo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  clusterIP: 10.96.0.17
  selector: {app: nobody}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-dup, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.15
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
"#;

fn answers(t: &TestLab, from: &str, url: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|i| {
            t.curl(from, url).unwrap_or_else(|e| {
                // A rare timeout (twice in CI, in the 6.1 guest, external -> ExternalIP) was a
                // stale reverse-NAT entry on the backend's node (docs/design/ebpf.md, "A SYN
                // re-picks"); should one come back, print what the nodes held for its peers.
                panic!("{from} -> {url} (request {i} of {n}): {e:#}\n{}", traffic_state(t))
            })
        })
        .collect()
}

/// Conntrack and sluice's eBPF traffic maps (connection, SNAT and reverse-NAT entries) on
/// both nodes, for a failure message.
fn traffic_state(t: &TestLab) -> String {
    let mut out = String::new();
    for node in ["node-1", "node-2"] {
        let ct = t.lab.exec_output(node, &["conntrack", "-L", "-p", "tcp"]).unwrap_or_else(|e| format!("{e:#}"));
        let lines: Vec<&str> = ct.lines().filter(|l| l.contains("198.51.100.20")).collect();
        out += &format!("{node} conntrack (outside hosts, {} entries):\n{}\n", lines.len(), lines.join("\n"));
        for map in ["sluice_ct", "sluice_snat", "sluice_rnat"] {
            let pin = t.lab.bpf_dir().join(node).join(map);
            if !pin.exists() {
                continue;
            }
            let dump = std::process::Command::new("bpftool").args(["map", "dump", "pinned"]).arg(&pin).output();
            let text = dump.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            out += &format!("{node} {map}:\n{text}\n");
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Iptables,
    Ebpf,
    Auto,
    Mixed,
    /// Both backends on each node: no bpf_fib_lookup, so NodePort, ExternalIPs, LoadBalancer and
    /// HostPort stay on iptables while ClusterIP and socket LB run on eBPF.
    Split,
    /// eBPF attached with classic tc (clsact + cls_bpf), as on kernels before 6.6: TCX hidden.
    Classic,
}

fn setup(lab_name: &str, v: Variant) -> TestLab {
    let dir = tempfile::tempdir().expect("tmp");
    let ipt = dir.path().join("iptables.yaml");
    // Strict on the single-backend variants (and `true`, its Cilium-style alias): every Service
    // feature is servable there, so strict must start and behave as probe does.
    std::fs::write(&ipt, "dataplane: iptables\nkube_proxy_replacement: strict\n").expect("write");
    let old = dir.path().join("old-kernel.yaml");
    std::fs::write(&old, "kube_proxy_replacement: strict\nprobes:\n  assume_missing: [prog-sched-cls]\n")
        .expect("write");
    let ebpf = dir.path().join("ebpf.yaml");
    // (With to-stack traces: the eBPF variant checks them.)
    std::fs::write(&ebpf, "dataplane: ebpf\nkube_proxy_replacement: true\nflows: {trace_to_stack: true}\n")
        .expect("write");
    let classic = dir.path().join("classic.yaml");
    std::fs::write(&classic, "dataplane: ebpf\nkube_proxy_replacement: strict\nprobes:\n  assume_missing: [tcx]\n")
        .expect("write");
    let split = dir.path().join("split.yaml");
    // Both backends on one node: the node-device features on iptables, the rest on eBPF.
    std::fs::write(
        &split,
        "dataplane_features: {node-port: iptables, external-ips: iptables, load-balancer: iptables, host-port: iptables}\n",
    )
    .expect("write");
    let configs: Vec<(String, std::path::PathBuf)> = match v {
        Variant::Iptables => vec![("node-1".into(), ipt.clone()), ("node-2".into(), ipt)],
        Variant::Ebpf => vec![("node-1".into(), ebpf.clone()), ("node-2".into(), ebpf)],
        Variant::Split => vec![("node-1".into(), split.clone()), ("node-2".into(), split)],
        Variant::Classic => vec![("node-1".into(), classic.clone()), ("node-2".into(), classic)],
        Variant::Auto => vec![],
        Variant::Mixed => vec![("node-2".into(), old)],
    };
    let t = TestLab::up(lab_name, 2, &configs);
    let lab: &Lab = &t.lab;
    let web = |k: &str| [("app".to_string(), k.to_string())].into_iter().collect();
    lab.pod_add_with("node-1", "a", web("web"), Some(8080), Some(18080)).expect("pod a");
    lab.pod_add("node-2", "b", web("web"), Some(8080)).expect("pod b");
    lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    lab.pod_add("node-2", "client2", Default::default(), None).expect("client2");
    lab.pod_add("node-1", "solo", web("solo"), Some(8080)).expect("solo");
    lab.external_add("ext", None).expect("ext"); // 198.51.100.201
    lab.external_add("ext2", None).expect("ext2"); // 198.51.100.202
    // Outside hosts reach ExternalIPs and LoadBalancer IPs through a node, as a router would send them.
    for ext in ["ext", "ext2"] {
        t.exec(ext, &["ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.11"]);
    }
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("services.yaml");
    std::fs::write(&f, SERVICES).expect("write");
    lab.apply(&f).expect("apply");
    eventually("services programmed on both nodes", Duration::from_secs(15), || {
        ["node-1", "node-2"]
            .iter()
            .all(|n| {
                t.try_status(n)
                    // 8: web-dup is served on its ClusterIP; only its nodePort (web's) is refused.
                    .is_some_and(|s| s["services"] == 8 && s["errors"].as_array().is_some_and(|e| e.is_empty()))
            })
            .then_some(())
    });
    // The attach path the probe chose (TCX only where the kernel has it and the config does
    // not hide it) is the one the plan shows and the agent used.
    let want = if v == Variant::Classic || !sluice_ebpf::probe::tcx().0 { "classic" } else { "tcx" };
    if v != Variant::Iptables {
        let st = t.status("node-1");
        assert_eq!(st["plan"]["tc_attach"], want, "{}", st["plan"]);
    }
    if want == "classic" && v != Variant::Iptables {
        // sluice's filter, recognisable by priority, handle and name, on the node device.
        let f = t.exec("node-1", &["tc", "filter", "show", "dev", "eth0", "ingress"]);
        assert!(f.contains("pref 20736") && f.contains("sluice_from_net") && f.contains("direct-action"), "{f}");
    }
    t
}

#[test]
fn connectivity_suite_on_iptables() {
    if require_root() {
        suite("t-svc", Variant::Iptables);
    }
}

#[test]
fn connectivity_suite_on_ebpf() {
    if require_root() {
        suite("t-svc-bpf", Variant::Ebpf);
    }
}

#[test]
fn connectivity_suite_on_auto() {
    if require_root() {
        suite("t-svc-auto", Variant::Auto);
    }
}

#[test]
fn connectivity_suite_on_classic_tc() {
    if require_root() {
        suite("t-svc-cls", Variant::Classic);
    }
}

#[test]
fn connectivity_suite_with_both_backends_on_each_node() {
    if require_root() {
        suite("t-svc-split", Variant::Split);
    }
}

#[test]
fn connectivity_suite_on_mixed_cluster() {
    if require_root() {
        suite("t-svc-mixed", Variant::Mixed);
    }
}

fn suite(lab_name: &str, v: Variant) {
    let t = setup(lab_name, v);
    let both: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();

    // pod -> ClusterIP, same node and other node; load-balanced over both backends.
    assert_eq!(answers(&t, "client", "http://10.96.0.10/", 30), both, "pod-to-clusterip from node-1");
    assert_eq!(answers(&t, "client2", "http://10.96.0.10/", 30), both, "pod-to-clusterip from node-2");
    {
        // The flows those requests caused, as node-1's Observer shows them, with the Service
        // each connection used (conntrack events on a netfilter node, to-stack; the pod veth's
        // traces on an eBPF node, from-endpoint).
        let out = t.exec(
            "node-1",
            &[
                "sluice",
                "observe",
                "--from-pod",
                "default/client",
                "--to-service",
                "default/web",
                "--last",
                "100",
                "-o",
                "json",
            ],
        );
        let flows: Vec<serde_json::Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert!(flows.len() >= 30, "{} flows for 30 requests:\n{out}", flows.len());
        for f in &flows {
            let f = &f["flow"];
            assert!(f["destination"]["pod_name"] == "a" || f["destination"]["pod_name"] == "b", "{f}");
            assert_eq!(
                (&f["node_name"], &f["verdict"], &f["traffic_direction"]),
                (&"node-1".into(), &"FORWARDED".into(), &"EGRESS".into()),
                "{f}"
            );
            assert_eq!(f["l4"]["TCP"]["destination_port"], 8080, "{f}");
            assert_eq!(f["destination_service"]["name"], "web", "{f}");
        }
        // eBPF with flows.trace_to_stack: each of those connections also entered the stack,
        // translated (to the backend, port 8080); the other eBPF variants trace no to-stack.
        // (An iptables node's conntrack flows are all to-stack.)
        let to_stack = observed(&t, "node-1", &["--from-pod", "default/client", "--to-port", "8080"], |fs| {
            fs.iter().filter(|f| f["trace_observation_point"] == "TO_STACK").count() >= 30
        });
        let n = to_stack.iter().filter(|f| f["trace_observation_point"] == "TO_STACK").count();
        if v != Variant::Iptables {
            assert_eq!(n >= 30, v == Variant::Ebpf, "{n} to-stack traces ({} flows)", to_stack.len());
        }
    }
    // pod -> NodePort through each node's IP.
    for ip in ["198.51.100.11", "198.51.100.12"] {
        assert_eq!(answers(&t, "client", &format!("http://{ip}:30080/"), 30), both, "pod-to-nodeport via {ip}");
    }
    // node host processes -> ClusterIP.
    assert_eq!(answers(&t, "node-2", "http://10.96.0.10/", 30), both, "host-to-clusterip");
    host_flows_check(&t, v);
    // external -> NodePort, ExternalIP, LoadBalancer IP.
    for ip in ["198.51.100.11", "198.51.100.12"] {
        assert_eq!(answers(&t, "ext", &format!("http://{ip}:30080/"), 30), both, "external-to-nodeport via {ip}");
    }
    external_flows_check(&t, v);
    assert_eq!(answers(&t, "ext", "http://203.0.113.10/", 30), both, "external-to-externalip");
    assert_eq!(t.curl("ext", "http://203.0.113.101/").map(|_| ()).ok(), Some(()), "external-to-loadbalancer");

    // HostPort: node-1:18080 -> pod a.
    assert_eq!(t.curl("ext", "http://198.51.100.11:18080/").expect("hostport"), "a");

    // Hairpin: the only backend of a Service reaches itself through it.
    assert_eq!(t.curl("solo", "http://10.96.0.16/").expect("hairpin"), "solo");

    // Affinity sticks.
    let sticky = answers(&t, "client", "http://10.96.0.13/", 20);
    assert_eq!(sticky.len(), 1, "ClientIP affinity: {sticky:?}");

    // Local policy: only the node's own endpoint, client source IP kept.
    assert_eq!(answers(&t, "ext", "http://198.51.100.11:30081/", 10), ["a".to_string()].into());
    assert_eq!(answers(&t, "ext", "http://198.51.100.12:30081/", 10), ["b".to_string()].into());
    assert_eq!(t.curl("ext", "http://198.51.100.11:30081/client").expect("src"), "198.51.100.201");
    // ...and the LoadBalancer IP with Local goes to node-1's endpoint only.
    assert_eq!(answers(&t, "ext", "http://203.0.113.100/", 10), ["a".to_string()].into());
    // Cluster policy: a backend on another node sees the forwarding node's address. iptables
    // masquerades every such connection (as kube-proxy); eBPF SNATs only towards other nodes and
    // keeps the client address for a local backend (as Cilium).
    // (node-2 of the mixed cluster is on iptables, its node-1 on eBPF.)
    for (node, ip) in [("node-1", "198.51.100.11"), ("node-2", "198.51.100.12")] {
        let seen = answers(&t, "ext", &format!("http://{ip}:30080/client"), 30);
        if matches!(v, Variant::Iptables | Variant::Split) || (v == Variant::Mixed && node == "node-2") {
            assert!(!seen.contains("198.51.100.201"), "{node}: {seen:?}");
        } else {
            let want: BTreeSet<String> = [ip.to_string(), "198.51.100.201".to_string()].into();
            assert_eq!(
                seen, want,
                "eBPF on {node}: SNAT to its IP for the other node's backend, client kept for its own"
            );
        }
    }
    // healthCheckNodePort answers with the local endpoint count.
    let hc = t.exec("node-1", &["sluice-lab", "curl", "http://198.51.100.11:32100/healthz"]);
    assert!(hc.contains("\"localEndpoints\":1"), "{hc}");

    // Source ranges: ext (.201) allowed, ext2 (.202) refused.
    assert!(t.curl("ext", "http://203.0.113.101/").is_ok());
    assert!(t.curl("ext2", "http://203.0.113.101/").is_err(), "source range must refuse ext2");
    // A Service without endpoints refuses.
    assert!(t.curl("client", "http://10.96.0.17/").is_err(), "a Service without endpoints must refuse");
    drop_flows_check(&t);

    // UDP Service.
    let udp: BTreeSet<String> =
        (0..20).map(|_| t.exec("client", &["sluice-lab", "udp", "10.96.0.14:53"]).trim().to_string()).collect();
    assert_eq!(udp, both, "udp service");

    // The invalid Service (nodePort taken twice) is reported by name; the rest keeps working.
    let s = t.status("node-1");
    assert!(
        s["rejected"].to_string().contains("default/web-dup") && s["rejected"].to_string().contains("30080"),
        "{s}"
    );
    let list = t.exec("node-1", &["sluice", "service", "list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    let web = list.as_array().expect("list").iter().find(|e| e["frontend"] == "10.96.0.10:80/TCP").expect("web");
    assert_eq!(web["owner"], if v == Variant::Iptables { "iptables" } else { "eBPF" });
    if v == Variant::Split {
        // One node, two backends: the ClusterIP in the eBPF maps, the NodePort in iptables.
        let lb = t.exec("node-1", &["sluice", "bpf", "lb", "list", "-o", "json"]);
        assert!(lb.contains("10.96.0.10:80/TCP") && !lb.contains("198.51.100.11:30080/TCP"), "{lb}");
        let np = list.as_array().expect("list").iter().find(|e| e["type"] == "NodePort").expect("nodeport");
        assert_eq!(np["owner"], "iptables", "{np}");
    } else if v != Variant::Iptables {
        // The eBPF maps hold every kind of frontend (NodePort on the node's IP, ExternalIP,
        // LoadBalancer, HostPort), and node-2 of the mixed cluster no per-packet one.
        let lb = t.exec("node-1", &["sluice", "bpf", "lb", "list", "-o", "json"]);
        for fe in ["10.96.0.10:80/TCP", "198.51.100.11:30080/TCP", "203.0.113.10:80/TCP", "203.0.113.101:80/TCP"] {
            assert!(lb.contains(fe), "{fe} not in {lb}");
        }
        assert!(lb.contains("198.51.100.11:18080/TCP"), "hostPort: {lb}");
        let lb2 = t.exec("node-2", &["sluice", "bpf", "lb", "list", "-o", "json"]);
        // (node-2 of the mixed cluster keeps socket LB on eBPF: it needs no sched_cls programs.)
        assert_eq!(lb2.contains("198.51.100.12:30080/TCP"), v != Variant::Mixed, "{lb2}");
        let plan2 = t.exec("node-2", &["sluice", "plan"]);
        if v == Variant::Mixed {
            assert!(plan2.contains("ClusterIP (iptables: no sched_cls programs)"), "{plan2}");
        }
    }
    assert_eq!(web["backends"].as_array().map(Vec::len), Some(2));

    // iptables: dispatch is a tree, not a linear chain, and the hook is single. eBPF: iptables
    // holds no Service rule at all (node-2 of the mixed cluster does).
    let (ipt_node, ipt_serves) = match v {
        Variant::Iptables => ("node-1", true),
        Variant::Mixed => ("node-2", true),
        _ => ("node-1", false),
    };
    let nat = t.exec(ipt_node, &["iptables-nft-save", "-t", "nat"]);
    if v != Variant::Split {
        // (In the split case the ExternalIP 203.0.113.10 lands in that same bucket.)
        assert_eq!(nat.contains("-A SLUICE-SERVICES -d 0.0.0.10/0.0.0.15 -j SLUICE-D-A"), ipt_serves, "{nat}");
    }
    let hooks = nat.lines().filter(|l| l.starts_with("-A PREROUTING") && l.contains("SLUICE-SERVICES")).count();
    let ipt_hooked = ipt_serves || v == Variant::Split;
    assert_eq!(hooks, usize::from(ipt_hooked), "{nat}");
    if v == Variant::Split {
        assert!(nat.contains("--dport 30080") && !nat.contains("-d 10.96.0.10/32"), "split: {nat}");
    }
}

#[test]
fn backend_removal_mid_traffic_and_udp_conntrack() {
    if require_root() {
        churn("t-svc-churn", Variant::Iptables);
    }
}

#[test]
fn backend_removal_mid_traffic_and_udp_conntrack_on_ebpf() {
    if require_root() {
        churn("t-churn-bpf", Variant::Auto);
    }
}

fn churn(lab_name: &str, v: Variant) {
    let t = setup(lab_name, v);
    // One UDP flow (fixed source port) pinned by conntrack to whichever backend it hit.
    let first = t.exec("client", &["sluice-lab", "udp", "--source-port", "40000", "10.96.0.14:53"]).trim().to_string();
    let (gone, stays) = if first == "b" { ("b", "a") } else { ("a", "b") };
    // TCP traffic keeps flowing while the backend goes away.
    let lab = &t.lab;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut failed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if t.curl("client2", "http://10.96.0.10/").is_err() {
                    failed += 1;
                }
            }
            failed
        });
        lab.pod_del(gone).expect("delete backend");
        eventually("backend gone from the node's rules", Duration::from_secs(15), || {
            let list = t.exec("node-2", &["sluice", "service", "list", "-o", "json"]);
            (!list.contains(&format!("\"{}:8080/TCP\"", if gone == "a" { "10.244.1.2" } else { "10.244.2.2" })))
                .then_some(())
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().expect("client thread")
    });
    // Connections that raced the deletion may fail (the backend died); after it, none may.
    let after = answers(&t, "client2", "http://10.96.0.10/", 20);
    assert_eq!(
        after,
        [stays.to_string()].into(),
        "only the remaining backend answers (failures while removing: {failures})"
    );
    // The same UDP flow now reaches the remaining backend: its conntrack entry was flushed.
    let again = t.exec("client", &["sluice-lab", "udp", "--source-port", "40000", "10.96.0.14:53"]).trim().to_string();
    assert_eq!(again, stays, "UDP flow must not black-hole into the removed backend");
}

/// `sluice observe ... -o json` on `node` until `enough` holds of the flows (the reader takes
/// events in bursts: the last ones may be a moment behind), or 5 s.
fn observed(
    t: &TestLab,
    node: &str,
    args: &[&str],
    enough: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut cmd = vec!["sluice", "observe", "--last", "300", "-o", "json"];
    cmd.extend_from_slice(args);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = t.exec(node, &cmd);
        let flows: Vec<serde_json::Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["flow"].clone())
            .collect();
        if enough(&flows) || std::time::Instant::now() > deadline {
            return flows;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The host's 30 connections to the ClusterIP, on node-2: socket LB's translations (trace-sock)
/// where eBPF serves it, the conntrack flows where netfilter translates them.
fn host_flows_check(t: &TestLab, v: Variant) {
    let sock_lb = !matches!(v, Variant::Iptables | Variant::Mixed);
    let host = |f: &serde_json::Value| f["source"]["identity"] == 1;
    let all = observed(t, "node-2", &["--to-service", "default/web"], |fs| fs.iter().filter(|f| host(f)).count() >= 30);
    let flows: Vec<&serde_json::Value> = all.iter().filter(|f| host(f)).collect();
    assert!(
        flows.len() >= 30,
        "{} host flows to web for 30 requests; node-2's last flows:\n{}",
        flows.len(),
        t.exec("node-2", &["sluice", "observe", "--last", "40"])
    );
    for f in flows {
        assert!(f["destination"]["pod_name"] == "a" || f["destination"]["pod_name"] == "b", "{f}");
        if sock_lb {
            assert_eq!((&f["Type"], &f["verdict"]), (&"SOCK".into(), &"TRANSLATED".into()), "{f}");
            assert_eq!(f["sock_xlate_point"], "SOCK_XLATE_POINT_POST_DIRECTION_FWD", "{f}");
            assert_eq!(f["event_type"]["type"], 7, "trace-sock: {f}");
        } else {
            assert_eq!(
                (&f["verdict"], &f["trace_observation_point"]),
                (&"FORWARDED".into(), &"TO_STACK".into()),
                "{f}"
            );
        }
        assert_eq!(f["l4"]["TCP"]["destination_port"], 8080, "{f}");
    }
}

/// The outside host's 30 connections to web's NodePort on node-1, as node-1 shows them: traced
/// arriving on the device with the backend and the Service (eBPF), or conntrack's (netfilter:
/// the iptables backend, and the split node whose NodePort is on iptables).
fn external_flows_check(t: &TestLab, v: Variant) {
    let ebpf_nodeport = !matches!(v, Variant::Iptables | Variant::Split);
    let flows =
        observed(t, "node-1", &["--from-ip", "198.51.100.201", "--to-service", "default/web"], |fs| fs.len() >= 30);
    assert!(flows.len() >= 30, "{} flows for 30 requests: {flows:#?}", flows.len());
    for f in &flows {
        assert!(f["destination"]["pod_name"] == "a" || f["destination"]["pod_name"] == "b", "{f}");
        let point = if ebpf_nodeport { "FROM_NETWORK" } else { "TO_STACK" };
        assert_eq!((&f["verdict"], &f["trace_observation_point"]), (&"FORWARDED".into(), &point.into()), "{f}");
        assert_eq!((&f["source"]["identity"], &f["node_name"]), (&2.into(), &"node-1".into()), "world: {f}");
        assert_eq!(f["l4"]["TCP"]["destination_port"], 8080, "{f}");
    }
    if ebpf_nodeport {
        // Those that went to node-2's backend also left node-1 SNATed: traced to the network.
        let out = observed(t, "node-1", &["--from-ip", "198.51.100.11", "--to-pod", "default/b"], |fs| !fs.is_empty());
        assert!(
            out.iter().any(|f| f["trace_observation_point"] == "TO_NETWORK" && f["destination_service"].is_null()),
            "no to-network trace towards b: {out:#?}"
        );
    }
}

/// The two refusals above as node-1 shows them: drops with Hubble's reason, naming the Service.
fn drop_flows_check(t: &TestLab) {
    let want = |from: &[&str], reason: &str, service: &str, direction: &str| {
        let mut args = from.to_vec();
        args.extend(["--verdict", "DROPPED"]);
        let flows = observed(t, "node-1", &args, |fs| !fs.is_empty());
        assert!(
            flows.iter().any(|f| f["drop_reason_desc"] == reason
                && f["destination_service"]["name"] == service
                && f["traffic_direction"] == direction),
            "no {reason} {direction} drop from {from:?} naming {service}: {flows:#?}"
        );
    };
    want(&["--from-ip", "198.51.100.202"], "DENIED_BY_LB_SRC_RANGE_CHECK", "web-ranges", "INGRESS");
    want(&["--from-pod", "default/client"], "SERVICE_BACKEND_NOT_FOUND", "empty", "EGRESS");
}
