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
