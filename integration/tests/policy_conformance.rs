//! Network policy conformance, modelled on the upstream Kubernetes network-policy e2e suite:
//! namespaces x, y, z with pods a, b, c spread over two nodes, each serving ports 80 and 81 on
//! TCP and UDP behind its own Service; every case compares the whole 9x9 matrix (both ports,
//! both protocols, to the pod IP and to its Service IP) with the expected one. The same cases
//! run on the iptables, eBPF, auto and a mixed (eBPF + iptables) cluster.
//!
//! A cell that differs is probed again (policies take a pass or two to reach every node); a
//! case fails if the matrix does not match within its deadline, with the wrong cells listed.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{TestLab, require_root};

#[path = "policy/cases.rs"]
mod cases;

use cases::{Case, P, Proto};

/// Labs of this file run one at a time: probe timeouts are the measure of a drop, and two
/// labs at once on a 2-core machine would slow answers towards those timeouts.
static SERIAL: Mutex<()> = Mutex::new(());

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PROBE_TIMEOUT_MS: u64 = 1500;

struct Cluster {
    t: TestLab,
    pods: Vec<P>,
    dir: tempfile::TempDir,
}

fn setup(name: &str, node1: &str, node2: &str) -> Cluster {
    let (t, dir) = common::two_node_lab(name, node1, node2);
    let mut pods = Vec::new();
    let mut svcs = String::new();
    for (i, ns) in NS.iter().enumerate() {
        t.lab.namespace_set(ns, [("ns".to_string(), ns.to_string())].into(), true).expect("namespace");
        for (j, pod) in PODS.iter().enumerate() {
            // Spread: x/a node-1, x/b node-2, x/c node-1, y/a node-2, ...
            let node = if (i * 3 + j) % 2 == 0 { "node-1" } else { "node-2" };
            let rec = t
                .lab
                .pod_add_ports(
                    node,
                    &format!("{ns}/{pod}"),
                    [("pod".to_string(), pod.to_string())].into(),
                    &[80, 81],
                    None,
                )
                .unwrap_or_else(|e| panic!("pod {ns}/{pod}: {e:#}"));
            let svc_ip = format!("10.96.10.{}", 10 * (i + 1) + j + 1);
            svcs.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s-{pod}, namespace: \"{ns}\"}}\nspec:\n  clusterIP: {svc_ip}\n  selector: {{pod: {pod}}}\n  ports:\n  - {{name: t80, port: 80, targetPort: 80, protocol: TCP}}\n  - {{name: u80, port: 80, targetPort: 80, protocol: UDP}}\n  - {{name: t81, port: 81, targetPort: 81, protocol: TCP}}\n  - {{name: u81, port: 81, targetPort: 81, protocol: UDP}}\n---\n"
            ));
            pods.push(P { ns: ns.to_string(), name: pod.to_string(), node: node.into(), ip: rec.ip.clone(), svc_ip });
        }
    }
    let f = dir.path().join("services.yaml");
    std::fs::write(&f, svcs).expect("write");
    t.lab.apply(&f).expect("apply services");
    Cluster { t, pods, dir }
}

type Cell = (usize, usize, u16, Proto, bool);

fn cell_name(c: &Cluster, (f, t, port, proto, via_svc): &Cell) -> String {
    let to = &c.pods[*t];
    format!(
        "{} -> {}{}:{port}/{proto:?}",
        c.pods[*f].key(),
        to.key(),
        if *via_svc { format!(" (Service {})", to.svc_ip) } else { String::new() }
    )
}

/// Probe `cells` (all at once, one probing process per source pod).
fn probe(c: &Cluster, cells: &[Cell]) -> BTreeMap<Cell, bool> {
    let mut by_src: BTreeMap<usize, Vec<(Cell, String)>> = BTreeMap::new();
    for cell in cells {
        let (f, t, port, proto, via_svc) = *cell;
        let to = &c.pods[t];
        let ip = if via_svc { &to.svc_ip } else { &to.ip };
        by_src.entry(f).or_default().push((*cell, format!("{ip}:{port}/{}", proto.name())));
    }
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = by_src
            .iter()
            .map(|(f, list)| {
                s.spawn(move || {
                    let targets: Vec<String> = list.iter().map(|(_, t)| t.clone()).collect();
                    let res = c.t.lab.probe(&c.pods[*f].key(), &targets, PROBE_TIMEOUT_MS).expect("probe");
                    list.iter().zip(res).map(|((cell, _), r)| (*cell, r.answered)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("probe thread")).collect::<Vec<_>>()
    });
    results.into_iter().collect()
}

fn all_cells(n: usize) -> Vec<Cell> {
    let mut v = Vec::new();
    for f in 0..n {
        for t in 0..n {
            if f == t {
                continue; // as upstream: a pod to itself is not policed
            }
            for port in [80, 81] {
                for proto in [Proto::Tcp, Proto::Udp] {
                    for via_svc in [false, true] {
                        v.push((f, t, port, proto, via_svc));
                    }
                }
            }
        }
    }
    v
}

/// Compare the matrix with `expect` until it matches or the deadline passes.
fn check(c: &Cluster, case: &str, expect: &dyn Fn(&P, &P, u16, Proto) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pending = all_cells(c.pods.len());
    loop {
        let got = probe(c, &pending);
        pending = got
            .into_iter()
            .filter(|(cell, answered)| {
                let (f, t, port, proto, _) = *cell;
                expect(&c.pods[f], &c.pods[t], port, proto) != *answered
            })
            .map(|(cell, _)| cell)
            .collect();
        if pending.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let wrong: Vec<String> = pending
                .iter()
                .take(40)
                .map(|cell| {
                    let (f, t, port, proto, _) = *cell;
                    let want = expect(&c.pods[f], &c.pods[t], port, proto);
                    format!("  {}: expected {}", cell_name(c, cell), if want { "allowed" } else { "denied" })
                })
                .collect();
            panic!("case {case}: {} cells differ from the expected matrix:\n{}", pending.len(), wrong.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn run_cases(c: &Cluster) {
    check(c, "baseline (no policy)", &|_, _, _, _| true);
    for case in cases::all(&c.pods) {
        run_case(c, &case);
    }
    check(c, "every policy deleted", &|_, _, _, _| true);
}

fn run_case(c: &Cluster, case: &Case) {
    let started = Instant::now();
    let file = c.dir.path().join(format!("{}.yaml", case.name));
    std::fs::write(&file, &case.yaml).expect("write");
    c.t.lab.apply(&file).unwrap_or_else(|e| panic!("apply {}: {e:#}", case.name));
    let n = case.yaml.lines().filter(|l| l.starts_with("kind: ") && l.ends_with("Policy")).count();
    wait_policies(c, case.name, n);
    check(c, case.name, &*case.expect);
    for (i, step) in case.steps.iter().enumerate() {
        (step.act)(&c.t.lab);
        check(c, &format!("{} step {} ({})", case.name, i + 1, step.what), &*step.expect);
    }
    c.t.lab.delete(&file).unwrap_or_else(|e| panic!("delete {}: {e:#}", case.name));
    wait_policies(c, case.name, 0);
    for undo in &case.undo {
        undo(&c.t.lab);
    }
    check(c, &format!("{} deleted", case.name), &|_, _, _, _| true);
    eprintln!("case {}: ok ({:.1}s)", case.name, started.elapsed().as_secs_f64());
}

/// Until every agent has read `n` policies (so a case expecting everything allowed is not
/// checked before its policies are in force).
fn wait_policies(c: &Cluster, case: &str, n: usize) {
    for node in ["node-1", "node-2"] {
        common::eventually(&format!("{node} to read the {n} policies of case {case}"), Duration::from_secs(15), || {
            let st = c.t.try_status(node)?;
            let listed = st["policy"]["policies"].as_array()?.len();
            let rejected = st["rejected"].as_array().map(|r| r.len()).unwrap_or(0);
            assert_eq!(rejected, 0, "case {case}: policies refused: {}", st["rejected"]);
            (listed == n).then_some(())
        });
    }
}

/// `owners`: which backend each node's plan gives `policy` to (the suite proves that one).
fn suite(name: &str, node1: &str, node2: &str, owners: [&str; 2]) {
    if !require_root() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = setup(name, node1, node2);
    for (node, want) in ["node-1", "node-2"].into_iter().zip(owners) {
        let st = c.t.status(node);
        let owner = st["plan"]["entries"]
            .as_array()
            .and_then(|es| es.iter().find(|e| e["feature"] == "policy"))
            .map(|e| e["owner"].clone());
        assert_eq!(owner, Some(serde_json::json!(want)), "{node}: policy owner");
    }
    run_cases(&c);
}

#[test]
fn conformance_iptables() {
    suite("t-pol-ipt", "dataplane: iptables\n", "dataplane: iptables\n", ["iptables", "iptables"]);
}

#[test]
fn conformance_ebpf() {
    suite("t-pol-ebpf", "dataplane: ebpf\n", "dataplane: ebpf\n", ["ebpf", "ebpf"]);
}

#[test]
fn conformance_auto() {
    suite("t-pol-auto", "dataplane: auto\n", "dataplane: auto\n", ["ebpf", "ebpf"]);
}

#[test]
fn conformance_mixed() {
    suite("t-pol-mixed", "dataplane: ebpf\n", "dataplane: iptables\n", ["ebpf", "iptables"]);
}
