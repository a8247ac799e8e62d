//! Policy under stress: a bad policy is refused by name while the others stay enforced; an
//! agent stopped, restarted or killed (-9) never opens a selected pod nor drops allowed
//! traffic; `policy_enforcement` changes at runtime from the config file.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestLab, eventually, require_root};

const GOOD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-from-a-80, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80}]}]\n";

const BAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad-range, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 81, endPort: 80}]}]\n---\napiVersion: sluice.io/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: bad-entity, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEntities: [moon]}]\n";

fn answered(t: &TestLab, target: &str) -> bool {
    t.lab.probe("x/a", &[target.to_string()], 800).expect("probe")[0].answered
}

#[test]
fn bad_policies_are_isolated_and_restarts_never_open_or_drop() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let t = TestLab::up("t-pol-safe", 2, &[]);
    t.lab.namespace_set("x", Default::default(), true).expect("ns");
    let pod = |node, name: &str, l: &str| {
        t.lab.pod_add_ports(node, name, [("pod".to_string(), l.to_string())].into(), &[80, 81], None).expect("pod")
    };
    pod("node-1", "x/a", "a");
    let b = pod("node-2", "x/b", "b");
    let (b80, b81) = (format!("{}:80/tcp", b.ip), format!("{}:81/tcp", b.ip));
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, GOOD).expect("write");
    t.lab.apply(&good).expect("apply");
    eventually("b isolated: 81 denied, 80 allowed", Duration::from_secs(15), || {
        (!answered(&t, &b81) && answered(&t, &b80)).then_some(())
    });

    // Bad policies: refused by name with the field; the good one stays enforced.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, BAD).expect("write");
    t.lab.apply(&bad).expect("apply");
    let report = eventually("both bad policies refused", Duration::from_secs(15), || {
        let out = t.lab.exec_output("node-2", &["sluice", "policy", "get", "-o", "json"]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v["rejected"].as_array()?.len() == 2).then_some(v)
    });
    let rejected = report["rejected"].to_string();
    assert!(
        rejected.contains("NetworkPolicy x/bad-range") && rejected.contains("spec.ingress[0].ports[0].endPort"),
        "{rejected}"
    );
    assert!(rejected.contains("SluiceNetworkPolicy x/bad-entity") && rejected.contains("moon"), "{rejected}");
    assert_eq!(report["policies"].as_array().map(Vec::len), Some(1), "only the good policy is in force");
    assert!(!answered(&t, &b81) && answered(&t, &b80), "the bad policies changed nothing");
    t.lab.delete(&bad).expect("delete bad");

    // Restarts: probe all along; the denied port never answers, the allowed one always does.
    let stop = AtomicBool::new(false);
    let (denied_answers, allowed_misses, rounds) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let (mut leaks, mut misses, mut rounds) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                let r = t.lab.probe("x/a", &[b80.clone(), b81.clone()], 800).expect("probe");
                misses += usize::from(!r[0].answered);
                leaks += usize::from(r[1].answered);
                rounds += 1;
            }
            (leaks, misses, rounds)
        });
        t.lab.stop_agent("node-2").expect("stop");
        std::thread::sleep(Duration::from_secs(2));
        t.lab.restart_agent("node-2", false).expect("start");
        std::thread::sleep(Duration::from_secs(2));
        t.lab.restart_agent("node-2", true).expect("kill -9 and start");
        eventually("node-2's agent back", Duration::from_secs(20), || t.try_status("node-2"));
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        prober.join().expect("prober")
    });
    assert!(rounds >= 5, "only {rounds} probe rounds");
    assert_eq!(
        denied_answers, 0,
        "x/b:81 answered {denied_answers} times in {rounds} rounds while the agent restarted"
    );
    assert_eq!(allowed_misses, 0, "x/b:80 missed {allowed_misses} of {rounds} rounds while the agent restarted");

    // policy_enforcement at runtime, from the config file.
    let cfg = t.lab.state().expect("state").node("node-2").expect("node").dir.join("config.yaml");
    let set = |mode: &str| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).expect("read")).expect("json");
        v["policy_enforcement"] = mode.into();
        std::fs::write(&cfg, serde_json::to_string_pretty(&v).expect("json")).expect("write");
    };
    set("never");
    eventually("never: 81 answers", Duration::from_secs(15), || answered(&t, &b81).then_some(()));
    set("always");
    // Always: x/b only takes what a policy allows (80 from a); x/a is not on node-2 and keeps its default.
    eventually("always: 81 denied again, 80 allowed", Duration::from_secs(15), || {
        (!answered(&t, &b81) && answered(&t, &b80)).then_some(())
    });
    set("default");
    t.lab.delete(&good).expect("delete good");
    eventually("no policy: 81 answers", Duration::from_secs(15), || answered(&t, &b81).then_some(()));
}

/// The paths beside pod-to-pod: NodePort from outside the cluster (the backend sees the client,
/// `externalTrafficPolicy: Local`) and host to pod, on an eBPF and an iptables node.
fn outside_and_host_paths(lab: &str, cfg: &str) {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let c = dir.path().join("node.yaml");
    std::fs::write(&c, cfg).expect("write");
    let t = TestLab::up(lab, 2, &[("node-1".into(), c.clone()), ("node-2".into(), c)]);
    t.lab.namespace_set("x", Default::default(), true).expect("ns");
    t.lab.pod_add_ports("node-1", "x/a", [("pod".to_string(), "a".to_string())].into(), &[80], None).expect("pod a");
    let b = t
        .lab
        .pod_add_ports("node-2", "x/b", [("pod".to_string(), "b".to_string())].into(), &[80], None)
        .expect("pod b");
    t.lab.external_add("ext", None).expect("ext");
    let svc = dir.path().join("svc.yaml");
    std::fs::write(
        &svc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.20.2\n  selector: {pod: b}\n  ports: [{port: 80, targetPort: 80, nodePort: 30090}]\n",
    )
    .expect("write");
    t.lab.apply(&svc).expect("apply");
    let ok = |from: &str, target: &str| t.lab.probe(from, &[target.to_string()], 800).expect("probe")[0].answered;
    let nodeport = "198.51.100.12:30090/tcp";
    let pod = format!("{}:80/tcp", b.ip);
    eventually("NodePort answers before any policy", Duration::from_secs(15), || ok("ext", nodeport).then_some(()));

    // Only pods of x may reach b: the outside client is refused at the NodePort, the node b
    // runs on still reaches it, another node does not.
    let np = dir.path().join("np.yaml");
    std::fs::write(&np, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-from-x, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{podSelector: {}}]}]\n").expect("write");
    t.lab.apply(&np).expect("apply");
    eventually("outside refused through the NodePort", Duration::from_secs(15), || {
        (!ok("ext", nodeport)).then_some(())
    });
    assert!(ok("x/a", &pod), "a pod of x still reaches b");
    assert!(ok("node-2", &pod), "b's own node reaches it");
    assert!(!ok("node-1", &pod), "another node is not allowed");
    t.lab.delete(&np).expect("delete");

    // Only the world may reach b (a Sluice policy with an entity): the outside client passes,
    // pods do not.
    std::fs::write(&np, "apiVersion: sluice.io/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: b-from-world, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {pod: b}}\n  ingress: [{fromEntities: [world]}]\n").expect("write");
    t.lab.apply(&np).expect("apply");
    eventually("pods refused, the world admitted", Duration::from_secs(15), || {
        (!ok("x/a", &pod) && ok("ext", nodeport)).then_some(())
    });
    assert!(!ok("x/a", "10.96.20.2:80/tcp"), "nor through the ClusterIP");
    t.lab.delete(&np).expect("delete");

    // Egress to the pod's own node is policed too (on iptables it enters INPUT, not FORWARD):
    // a's egress limited to pods of x stops it reaching a server on its node; the `host`
    // entity lets it through again.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let argv: Vec<String> = ["sluice-lab", "serve", "--name", "node-1", "--port", "7777"].map(String::from).into();
    let _server = Server(t.lab.command("node-1", &argv).expect("command").spawn().expect("serve on node-1"));
    let own_node = "198.51.100.11:7777/tcp";
    eventually("a reaches its own node with no policy", Duration::from_secs(15), || ok("x/a", own_node).then_some(()));
    std::fs::write(&np, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-to-x, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {}}]}]\n").expect("write");
    t.lab.apply(&np).expect("apply");
    eventually("a's own node refused by a's egress policy", Duration::from_secs(15), || {
        (!ok("x/a", own_node)).then_some(())
    });
    assert!(ok("x/a", &pod), "a still reaches b (a pod of x)");
    let host = dir.path().join("host.yaml");
    std::fs::write(&host, "apiVersion: sluice.io/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: a-to-host, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {pod: a}}\n  egress: [{toEntities: [host]}]\n").expect("write");
    t.lab.apply(&host).expect("apply");
    eventually("the host entity admits a's own node", Duration::from_secs(15), || ok("x/a", own_node).then_some(()));
}

#[test]
fn outside_and_host_paths_on_ebpf() {
    outside_and_host_paths("t-pol-oute", "dataplane: ebpf\n");
}

#[test]
fn outside_and_host_paths_on_iptables() {
    outside_and_host_paths("t-pol-outi", "dataplane: iptables\n");
}
