//! Tier 3: bad input on real agents. Every malformed or conflicting object of the corpus
//! (tests/data/bad_objects.yaml, 70+ of them: Services, EndpointSlices, Nodes, Pods, Namespaces,
//! NetworkPolicies and sluice's policy CRDs) is applied one by one to a running 2-node cluster
//! with working Services: after each, both agents report it by name with the expected reason,
//! every good Service still answers (ClusterIP, ExternalIP, NodePort through the other node),
//! and after its removal each node's kernel state (sluice's iptables chains, every entry of the
//! eBPF service maps) equals the state before it. No agent restarts anywhere in the suite.
//! Run on iptables, on eBPF and on a mixed cluster (node-1 eBPF, node-2 iptables).

mod common;

use std::time::Duration;

use common::kernel::{kernel_state, settled};
use common::{TestLab, eventually, require_root, two_node_web_lab};

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
    let cfg = |dp: &str| format!("dataplane: {dp}\nkube_proxy_replacement: strict\n");
    let (t, dir) = two_node_web_lab(lab_name, &cfg(node1), &cfg(node2));
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    let base = dir.path().join("base.yaml");
    std::fs::write(&base, SERVICES).expect("write");
    t.lab.apply(&base).expect("apply");
    eventually("the good Services answer", Duration::from_secs(30), || {
        std::panic::catch_unwind(|| good_services_answer(&t, "starting")).ok()
    });
    let pids: Vec<Option<u32>> = t.lab.state().expect("state").nodes.iter().map(|n| n.agent_pid).collect();
    // The state every removal must return to (settled: two equal reads a second apart).
    let before: Vec<String> =
        ["node-1", "node-2"].iter().map(|n| settled(&t, n, false, Duration::from_secs(1))).collect();
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

/// One node with this config, an echo pod `a` (app=web, 8080) and a `client` pod. The temp dir
/// holds the config (keep it alive).
fn one_node_lab(name: &str, config: &str) -> (TestLab, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("node-1.yaml");
    std::fs::write(&cfg, config).expect("write");
    let t = TestLab::up(name, 1, &[("node-1".into(), cfg)]);
    let web = [("app".to_string(), "web".to_string())].into_iter().collect();
    t.lab.pod_add("node-1", "a", web, Some(8080)).expect("a");
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    (t, dir)
}

/// A map too small for every Service: what fits is programmed and answers, the rest is refused
/// by name with the map and the key to raise (status and `sluice service list`, never listed as
/// served); when room frees up, the next Service by name gets it.
#[test]
fn a_full_ebpf_map_programs_what_fits_and_names_the_rest() {
    if !require_root() {
        return;
    }
    let (t, dir) = one_node_lab("t-bad-full", "dataplane: ebpf\nbpf_map_sizes: {services: 3}\n");
    let svc = |i: u32| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\nspec: {{clusterIP: 10.96.3.{i}, selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
        )
    };
    let mut files = Vec::new();
    for i in 1..=5 {
        let f = dir.path().join(format!("s{i}.yaml"));
        std::fs::write(&f, svc(i)).expect("write");
        files.push(f);
    }
    for f in &files {
        t.lab.apply(f).expect("apply");
    }
    let full = |name: &str| {
        format!("Service default/{name}: eBPF: map services is full (3 entries; raise bpf_map_sizes.services)")
    };
    eventually("s4 and s5 refused by name", Duration::from_secs(15), || {
        let errs = t.try_status("node-1")?["errors"].to_string();
        (errs.contains(&full("s4")) && errs.contains(&full("s5"))).then_some(())
    });
    for i in 1..=3 {
        assert_eq!(t.curl("client", &format!("http://10.96.3.{i}/")).expect("fits"), "a");
    }
    for i in 4..=5 {
        assert!(t.curl("client", &format!("http://10.96.3.{i}/")).is_err(), "s{i} does not fit but answers");
    }
    let list: serde_json::Value =
        serde_json::from_str(&t.exec("node-1", &["sluice", "service", "list", "-o", "json"])).expect("json");
    let owner =
        |fe: &str| list.as_array().and_then(|l| l.iter().find(|e| e["frontend"] == fe)).map(|e| e["owner"].clone());
    assert_eq!(owner("10.96.3.1:80/TCP"), Some("eBPF".into()), "{list}");
    assert_eq!(owner("10.96.3.4:80/TCP"), Some("eBPF (failed)".into()), "never listed as served: {list}");
    // Room frees up: the next by name (s4) gets it, s5 stays refused; nothing stale remains.
    t.lab.delete(&files[0]).expect("delete s1");
    eventually("s4 admitted", Duration::from_secs(15), || t.curl("client", "http://10.96.3.4/").ok());
    // The status is published at the end of the pass that wrote s4's entries: a moment after
    // s4 answers (CI once read it in between).
    let errs = eventually("the status catches up", Duration::from_secs(5), || {
        let errs = t.try_status("node-1")?["errors"].to_string();
        (!errs.contains(&full("s4"))).then_some(errs)
    });
    assert!(errs.contains(&full("s5")) && !errs.contains(&full("s4")), "{errs}");
    assert!(t.curl("client", "http://10.96.3.1/").is_err(), "s1 deleted");
}

/// A Service whose rules the kernel refuses (here: someone else's chain jumps into its chain,
/// so the chain cannot be deleted when the Service goes) is held at the rules it has; every
/// other Service still changes (before: the whole batch failed, on every pass, and nothing
/// changed on the node until the foreign rule went). Status names the held Service; once the
/// kernel takes its change (the foreign rule removed), it is retried alone and its chains go.
#[test]
fn a_service_the_kernel_refuses_is_held_and_every_other_service_still_changes() {
    if !require_root() {
        return;
    }
    let (t, dir) = one_node_lab("t-bad-held", "dataplane: iptables\n");
    let write = |i: u32| {
        let f = dir.path().join(format!("s{i}.yaml"));
        std::fs::write(
            &f,
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\nspec: {{clusterIP: 10.96.4.{i}, selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
            ),
        )
        .expect("write");
        f
    };
    let (s1, s2, s3) = (write(1), write(2), write(3));
    t.lab.apply(&s1).expect("apply s1");
    t.lab.apply(&s2).expect("apply s2");
    for i in 1..=2 {
        eventually(&format!("s{i} answers"), Duration::from_secs(20), || {
            t.curl("client", &format!("http://10.96.4.{i}/")).ok()
        });
    }
    // s1's own chain: the one its ClusterIP's dispatch rule jumps to.
    let save = t.exec("node-1", &["iptables-save", "-t", "nat"]);
    let chain = save
        .lines()
        .find(|l| l.contains("-d 10.96.4.1/32") && l.contains("-j SLUICE-SVC-"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no chain of s1 in:\n{save}"))
        .to_string();
    // Someone else's chain (not sluice's, not a built-in one) with a rule jumping into it.
    let ipt = |op: &str, chain_args: &[&str]| {
        let mut argv = vec!["iptables", "-t", "nat", op];
        argv.extend_from_slice(chain_args);
        t.exec("node-1", &argv);
    };
    ipt("-N", &["FOREIGN"]);
    ipt("-A", &["FOREIGN", "-p", "udp", "--dport", "9", "-j", &chain]);
    t.lab.delete(&s1).expect("delete s1");
    t.lab.apply(&s3).expect("apply s3");
    eventually("s3 answers while s1's removal is refused", Duration::from_secs(20), || {
        t.curl("client", "http://10.96.4.3/").ok()
    });
    assert_eq!(t.curl("client", "http://10.96.4.2/").expect("s2 still answers"), "a");
    let held = eventually("status names s1", Duration::from_secs(10), || {
        let errs = t.try_status("node-1")?["errors"].to_string();
        errs.contains("Service default/s1").then_some(errs)
    });
    assert!(held.contains("its rules as they were stay in place"), "{held}");
    assert!(!held.contains("Service default/s3") && !held.contains("Service default/s2"), "{held}");
    // sluice leaves the foreign rule alone (it is not its own to remove).
    assert!(
        t.exec("node-1", &["iptables-save", "-t", "nat"])
            .contains(&format!("-A FOREIGN -p udp -m udp --dport 9 -j {chain}"))
    );
    // The foreign rule goes: s1 is retried alone and its chains go; nothing is reported.
    ipt("-F", &["FOREIGN"]);
    ipt("-X", &["FOREIGN"]);
    eventually("s1's chain removed", Duration::from_secs(20), || {
        (!t.exec("node-1", &["iptables-save", "-t", "nat"]).contains(&chain)).then_some(())
    });
    eventually("s1 no longer reported", Duration::from_secs(10), || {
        (!t.try_status("node-1")?["errors"].to_string().contains("Service default/s1")).then_some(())
    });
    assert!(t.curl("client", "http://10.96.4.1/").is_err(), "s1 was deleted");
    for i in 2..=3 {
        assert_eq!(t.curl("client", &format!("http://10.96.4.{i}/")).expect("answers"), "a");
    }
}
