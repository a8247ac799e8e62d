//! Tier 3: `sluice migrate plan` on a lab node that "runs kube-proxy": kube-proxy's iptables
//! layout (KUBE-SERVICES -> KUBE-SVC -> KUBE-SEP, KUBE-NODEPORTS -> KUBE-EXT, a no-endpoints
//! REJECT in filter) is restored into node-1's own tables beside a running sluice agent, without
//! jumps from the built-in chains (so it carries no traffic), and the plan read back from the real
//! iptables and the real agent must classify every frontend: a match, a difference with both
//! values, a frontend only kube-proxy serves (blocks cutover), frontends only sluice serves, and
//! a rule of unknown shape (listed, blocks cutover). `sluice migrate verify` passes before the
//! rules (every ClusterIP answers from the node) and fails after (exit status 1).

mod common;

use std::time::Duration;

use common::{eventually, require_root, two_node_web_lab};

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: fresh, namespace: default}\nspec:\n  clusterIP: 10.96.0.20\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";

/// kube-proxy's rules for `web` (ClusterIP over both pods; the NodePort, as a stale kube-proxy
/// would have it, over pod a only), a Service sluice does not have (`gone`), an empty one, and
/// one foreign rule in KUBE-SERVICES.
fn kube_proxy_rules(a: &str, b: &str) -> String {
    format!(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-SVC-WEB - [0:0]\n:KUBE-EXT-WEB - [0:0]\n:KUBE-SVC-WEBNP - [0:0]\n:KUBE-SEP-A - [0:0]\n:KUBE-SEP-B - [0:0]\n:KUBE-SVC-GONE - [0:0]\n:KUBE-SEP-G - [0:0]\n\
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-WEB\n\
-A KUBE-SERVICES -d 10.96.0.77/32 -p tcp -m comment --comment \"default/gone:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-GONE\n\
-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m tcp --dport 99 -j ACCEPT\n\
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
-A KUBE-NODEPORTS -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 30080 -j KUBE-EXT-WEB\n\
-A KUBE-EXT-WEB -j KUBE-MARK-MASQ\n\
-A KUBE-EXT-WEB -j KUBE-SVC-WEBNP\n\
-A KUBE-SVC-WEB -m comment --comment \"default/web:http -> {a}:8080\" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A\n\
-A KUBE-SVC-WEB -m comment --comment \"default/web:http -> {b}:8080\" -j KUBE-SEP-B\n\
-A KUBE-SVC-WEBNP -j KUBE-SEP-A\n\
-A KUBE-SEP-A -s {a}/32 -j KUBE-MARK-MASQ\n\
-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination {a}:8080\n\
-A KUBE-SEP-B -s {b}/32 -j KUBE-MARK-MASQ\n\
-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination {b}:8080\n\
-A KUBE-SVC-GONE -j KUBE-SEP-G\n\
-A KUBE-SEP-G -p tcp -m tcp -j DNAT --to-destination 10.244.9.9:8080\n\
COMMIT\n\
*filter\n:KUBE-SERVICES - [0:0]\n\
-A KUBE-SERVICES -d 10.96.0.30/32 -p tcp -m comment --comment \"default/empty:http has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable\n\
COMMIT\n"
    )
}

fn row<'v>(plan: &'v serde_json::Value, frontend: &str) -> &'v serde_json::Value {
    plan["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["frontend"] == frontend))
        .unwrap_or_else(|| panic!("no row {frontend} in {plan:#}"))
}

#[test]
fn migrate_plan_compares_kube_proxys_live_rules_with_sluice() {
    if !require_root() {
        return;
    }
    let cfg = "dataplane: iptables\n";
    let (t, dir) = two_node_web_lab("t-migrate", cfg, cfg);
    let f = dir.path().join("web.yaml");
    std::fs::write(&f, WEB).expect("write");
    t.lab.apply(&f).expect("apply");
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    eventually("web answers", Duration::from_secs(20), || t.curl("client", "http://10.96.0.10/").ok());
    let st = t.lab.state().expect("state");
    let ip = |pod: &str| st.pods.iter().find(|p| p.name == pod).map(|p| p.ip.clone()).expect("pod");
    let (a, b) = (ip("a"), ip("b"));

    // Before kube-proxy: nothing found, everything is sluice's to take.
    let plan: serde_json::Value =
        serde_json::from_str(&t.exec("node-1", &["sluice", "migrate", "plan", "-o", "json"])).expect("json");
    assert_eq!(plan["kube_proxy_sources"], serde_json::json!([]), "{plan:#}");
    assert_eq!(row(&plan, "10.96.0.10:80/TCP")["verdict"], "only-sluice");
    // Verify from the node: every ClusterIP answers, and the NodePort on both nodes' addresses
    // (node-2's once its agent has programmed it), nothing differs: exit 0.
    let n2 = st.node("node-2").expect("node-2").underlay_ip.clone();
    eventually("node-2's NodePort answers", Duration::from_secs(20), || {
        t.curl("client", &format!("http://{n2}:30080/")).ok()
    });
    let v: serde_json::Value =
        serde_json::from_str(&t.exec("node-1", &["sluice", "migrate", "verify", "-o", "json"])).expect("json");
    assert_eq!(v["passed"], true, "{v:#}");
    let mut answered: Vec<&str> = v["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .filter(|p| p["ok"] == true)
        .filter_map(|p| p["frontend"].as_str())
        .collect();
    answered.sort();
    let n1 = st.node("node-1").expect("node-1").underlay_ip.clone();
    let mut want = vec![
        "10.96.0.10:80/TCP".to_string(),
        "10.96.0.20:80/TCP".into(),
        format!("node-1 {n1}:30080/TCP"),
        format!("node-2 {n2}:30080/TCP"),
    ];
    want.sort();
    assert_eq!(answered, want, "{v:#}");

    let rules = dir.path().join("kube-proxy.rules");
    std::fs::write(&rules, kube_proxy_rules(&a, &b)).expect("write");
    t.exec("node-1", &["sh", "-c", &format!("iptables-restore --noflush < {}", rules.display())]);
    let plan: serde_json::Value =
        serde_json::from_str(&t.exec("node-1", &["sluice", "migrate", "plan", "-o", "json"])).expect("json");
    assert_eq!(plan["node"], "node-1");
    assert_eq!(plan["kube_proxy_sources"], serde_json::json!(["iptables-nft"]), "{plan:#}");
    assert_eq!(row(&plan, "10.96.0.10:80/TCP")["verdict"], "matches", "{plan:#}");
    let np = row(&plan, "(node addresses):30080/TCP");
    assert_eq!(np["verdict"], "differs", "{plan:#}");
    assert_eq!(np["fields"][0]["field"], "endpoints");
    assert_eq!(np["fields"][0]["kube_proxy"], format!("{a}:8080"));
    let both = [a.clone(), b.clone()].map(|ip| format!("{ip}:8080"));
    let mut both = both.to_vec();
    both.sort();
    assert_eq!(np["fields"][0]["sluice"], both.join(", "));
    assert_eq!(row(&plan, "10.96.0.77:80/TCP")["verdict"], "only-kube-proxy");
    assert_eq!(row(&plan, "10.96.0.30:80/TCP")["verdict"], "only-kube-proxy", "an empty Service kube-proxy rejects");
    assert_eq!(row(&plan, "10.96.0.20:80/TCP")["verdict"], "only-sluice");
    let unknown = plan["unknown"].as_array().expect("unknown");
    assert_eq!(unknown.len(), 1, "{plan:#}");
    assert!(unknown[0]["rule"].as_str().is_some_and(|r| r.contains("--dport 99")), "{plan:#}");
    let blockers = plan["blockers"].to_string();
    assert!(blockers.contains("2 frontend(s) only kube-proxy serves") && blockers.contains("1 rule(s)"), "{blockers}");

    // Verify now fails (exit status 1), naming the difference.
    let failed = t.lab.exec_output("node-1", &["sluice", "migrate", "verify"]);
    let err = format!("{:#}", failed.expect_err("verify must fail with differences and blockers"));
    assert!(err.contains("exit status: 1"), "{err}");

    // The table says the same in words.
    let text = t.exec("node-1", &["sluice", "migrate", "plan"]);
    for want in [
        "kube-proxy's rules read from iptables-nft",
        "differs",
        "endpoints: kube-proxy",
        "Unknown rule",
        "Cutover: blocked",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}
