//! Tier 3: the prune gate on real agents. An agent that restarts while one manifest file is
//! broken must not take that file's Services down: its first read is incomplete, so what the
//! last complete read had stays programmed (and status says which Services are held), on
//! both backends. Fixing the file ends the hold; deleting the Service then prunes it.

mod common;

use std::time::Duration;

use common::{TestLab, eventually, require_root};

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.20\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";
const OTHER: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: default}\nspec:\n  clusterIP: 10.96.0.21\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";

fn gate(lab_name: &str, dataplane: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("node-1.yaml");
    std::fs::write(&cfg, format!("dataplane: {dataplane}\n")).expect("write");
    let t = TestLab::up(lab_name, 1, &[("node-1".into(), cfg)]);
    let web = [("app".to_string(), "web".to_string())].into_iter().collect();
    t.lab.pod_add("node-1", "a", web, Some(8080)).expect("a");
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    let (good, other) = (dir.path().join("web.yaml"), dir.path().join("other.yaml"));
    std::fs::write(&good, WEB).expect("write");
    std::fs::write(&other, OTHER).expect("write");
    t.lab.apply(&good).expect("apply");
    let applied = t.lab.apply(&other).expect("apply");
    for vip in ["10.96.0.20", "10.96.0.21"] {
        eventually(&format!("{vip} answers"), Duration::from_secs(15), || {
            t.curl("client", &format!("http://{vip}/")).ok()
        });
    }
    // The agent stops; the file holding `other` breaks while it is down; the agent starts.
    let pid = t.lab.state().expect("state").nodes[0].agent_pid.expect("pid");
    sluice_lab::proc::stop(pid, Duration::from_secs(5));
    std::fs::write(&applied[0], "kind: Service\nmetadata: [broken").expect("break");
    t.lab.restart_agent("node-1", false).expect("start");
    let s = eventually("agent back with the broken file reported", Duration::from_secs(15), || {
        let s = t.try_status("node-1")?;
        (!s["source"]["errors"].as_array()?.is_empty()).then_some(s)
    });
    assert_eq!(s["held"], serde_json::json!([{"namespace": "default", "name": "other"}]), "{s}");
    for _ in 0..5 {
        let b = t
            .curl("client", "http://10.96.0.21/")
            .unwrap_or_else(|e| panic!("held Service down on {dataplane}: {e:#}"));
        assert_eq!(b, "a");
    }
    assert!(t.curl("client", "http://10.96.0.20/").is_ok());
    // Fixed: complete again, nothing held. Deleted: pruned.
    std::fs::write(&applied[0], OTHER).expect("fix");
    eventually("hold released", Duration::from_secs(15), || {
        let s = t.try_status("node-1")?;
        (s["held"].as_array()?.is_empty() && s["source"]["errors"].as_array()?.is_empty()).then_some(())
    });
    std::fs::remove_file(&applied[0]).expect("delete");
    eventually("deleted Service pruned", Duration::from_secs(15), || {
        t.lab
            .exec_output("client", &["sluice-lab", "curl", "--timeout-ms", "500", "http://10.96.0.21/"])
            .is_err()
            .then_some(())
    });
    assert!(t.curl("client", "http://10.96.0.20/").is_ok(), "the other Service is untouched");
}

#[test]
fn broken_manifest_at_restart_keeps_its_services_on_ebpf() {
    if require_root() {
        gate("t-gate-bpf", "ebpf");
    }
}

#[test]
fn broken_manifest_at_restart_keeps_its_services_on_iptables() {
    if require_root() {
        gate("t-gate-ipt", "iptables");
    }
}
