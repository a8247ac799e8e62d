//! Tier 3: bad input on real agents. Every malformed or conflicting object of the corpus
//! (tests/data/bad_objects.yaml, 60+ of them) is applied one by one to a running 2-node cluster
//! with working Services: after each, both agents report it by name with the expected reason,
//! every good Service still answers (ClusterIP, ExternalIP, NodePort through the other node),
//! and after its removal each node's kernel state (sluice's iptables chains, every entry of the
//! eBPF service maps) equals the state before it. No agent restarts anywhere in the suite.
//! Run on iptables, on eBPF and on a mixed cluster (node-1 eBPF, node-2 iptables).

mod common;

use std::time::Duration;

use common::kernel::kernel_state;
use common::{TestLab, eventually, require_root};

const CORPUS: &str = include_str!("data/bad_objects.yaml");

const SERVICES: &str = include_str!("data/bad_input_services.yaml");

fn rejected_has(t: &TestLab, node: &str, object: &str, text: &str) -> Option<bool> {
    let s = t.try_status(node)?;
    let list = s["rejected"].as_array()?;
    Some(list.iter().any(|r| r["object"] == object && r["reason"].as_str().is_some_and(|x| x.contains(text))))
}

fn mentions(t: &TestLab, node: &str, object: &str) -> Option<bool> {
    let s = t.try_status(node)?;
    Some(s["rejected"].as_array()?.iter().any(|r| r["object"] == object))
}

fn good_services_answer(t: &TestLab, during: &str) {
    for url in ["http://10.96.0.10/", "http://10.96.0.11/", "http://203.0.113.10/", "http://198.51.100.12:30080/"] {
        let b = t.curl("client", url).unwrap_or_else(|e| panic!("{url} down while {during}: {e:#}"));
        assert!(b == "a" || b == "b", "{url} answered {b:?} while {during}");
    }
}

fn suite(lab_name: &str, node1: &str, node2: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut configs = Vec::new();
    for (node, dp) in [("node-1", node1), ("node-2", node2)] {
        let cfg = dir.path().join(format!("{node}.yaml"));
        std::fs::write(&cfg, format!("dataplane: {dp}\nkube_proxy_replacement: strict\n")).expect("write");
        configs.push((node.to_string(), cfg));
    }
    let t = TestLab::up(lab_name, 2, &configs);
    let web = || [("app".to_string(), "web".to_string())].into_iter().collect();
    t.lab.pod_add("node-1", "a", web(), Some(8080)).expect("a");
    t.lab.pod_add("node-2", "b", web(), Some(8080)).expect("b");
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    let base = dir.path().join("base.yaml");
    std::fs::write(&base, SERVICES).expect("write");
    t.lab.apply(&base).expect("apply");
    eventually("the good Services answer", Duration::from_secs(30), || {
        std::panic::catch_unwind(|| good_services_answer(&t, "starting")).ok()
    });
    let pids: Vec<Option<u32>> = t.lab.state().expect("state").nodes.iter().map(|n| n.agent_pid).collect();
    // The state every removal must return to (settled: two equal reads a second apart).
    let before: Vec<String> = ["node-1", "node-2"]
        .iter()
        .map(|n| {
            eventually("kernel state settles", Duration::from_secs(20), || {
                let a = kernel_state(&t, n, false);
                std::thread::sleep(Duration::from_secs(1));
                (kernel_state(&t, n, false) == a).then_some(a)
            })
        })
        .collect();
    assert!(before[0].contains("SLUICE") || before[0].contains("sluice_svc"), "{}", before[0]);
    let cases: Vec<&str> = CORPUS.split("\n---\n").skip(1).collect();
    assert!(cases.len() >= 50, "corpus has {} objects", cases.len());
    for (i, case) in cases.iter().enumerate() {
        let (head, body) = case.split_once('\n').expect("expect line");
        let (object, text) = head.trim_start_matches("# expect: ").split_once(" :: ").expect("OBJECT :: TEXT");
        let file = dir.path().join(format!("bad-{i:02}.yaml"));
        std::fs::write(&file, body).expect("write");
        let applied = t.lab.apply(&file).expect("apply");
        for node in ["node-1", "node-2"] {
            eventually(&format!("{node} reports {object} ({text})"), Duration::from_secs(10), || {
                rejected_has(&t, node, object, text)?.then_some(())
            });
        }
        good_services_answer(&t, &format!("{object} is applied"));
        for f in &applied {
            std::fs::remove_file(f).expect("remove");
        }
        for (n, node) in ["node-1", "node-2"].iter().enumerate() {
            eventually(&format!("{node} forgets {object}"), Duration::from_secs(10), || {
                (!mentions(&t, node, object)?).then_some(())
            });
            let mut last = String::new();
            let same = (0..100).any(|_| {
                last = kernel_state(&t, node, false);
                last == before[n] || {
                    std::thread::sleep(Duration::from_millis(100));
                    false
                }
            });
            assert!(
                same,
                "{node}: kernel state after removing {object} differs:\nbefore: {}\nafter: {last}",
                before[n]
            );
        }
    }
    good_services_answer(&t, "the corpus is removed");
    let after: Vec<Option<u32>> = t.lab.state().expect("state").nodes.iter().map(|n| n.agent_pid).collect();
    assert_eq!(pids, after, "no agent restarted");
}

#[test]
fn bad_input_is_isolated_and_reversible_on_iptables() {
    if require_root() {
        suite("t-bad-ipt", "iptables", "iptables");
    }
}

#[test]
fn bad_input_is_isolated_and_reversible_on_ebpf() {
    if require_root() {
        suite("t-bad-bpf", "ebpf", "ebpf");
    }
}

#[test]
fn bad_input_is_isolated_and_reversible_on_a_mixed_cluster() {
    if require_root() {
        suite("t-bad-mix", "ebpf", "iptables");
    }
}
