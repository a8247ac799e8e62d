//! Tier 3: L7 (HTTP) policy through the node-local proxy, modelled on Cilium's connectivity
//! checks: an echo pod whose ingress allows `GET /public` (and `GET /client`, which answers the
//! caller's address as the echo server saw it) from pods labelled app=client; every other
//! request gets 403 naming the policy, other identities are dropped at L3/L4; pod to pod on one
//! node and across nodes, through a ClusterIP from another node, a named-port variant, and an
//! egress rule by method (two proxies in a row: the client's node's, then the echo's). On
//! iptables (TPROXY), eBPF (bpf_sk_assign) and a mixed cluster (the echo's node eBPF, the other
//! iptables).

mod common;

use std::time::Duration;

use common::{TestLab, eventually, require_root, two_node_lab};

const POLICY: &str = r#"
apiVersion: sluice.io/v1
kind: SluiceNetworkPolicy
metadata: {name: echo-l7, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: echo}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /public}
        - {method: GET, path: /client}
    - ports: [{port: serve-81-tcp}]
      rules:
        http: [{method: GET, path: "/named.*", headers: ["X-Team: blue"]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: x}
spec:
  clusterIP: 10.96.0.40
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 80}]
"#;

const EGRESS: &str = r#"
apiVersion: sluice.io/v1
kind: SluiceNetworkPolicy
metadata: {name: client2-get-only, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: client, which: two}}
  egress:
  - toEndpoints: [{matchLabels: {app: echo}}]
    toPorts:
    - ports: [{port: "80"}]
      rules: {http: [{method: GET}]}
"#;

/// From outside the cluster through a NodePort (the client's address kept: Local).
const NODE_PORT: &str = r#"
apiVersion: sluice.io/v1
kind: SluiceNetworkPolicy
metadata: {name: echo-l7-world, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: echo}}
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /public}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-np, namespace: x}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 80, nodePort: 30480}]
"#;

const BAD: &str = r#"
apiVersion: sluice.io/v1
kind: SluiceNetworkPolicy
metadata: {name: bad-regex, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: echo}}
  ingress:
  - toPorts: [{ports: [{port: "80"}], rules: {http: [{path: "/(unclosed"}]}}]
---
apiVersion: sluice.io/v1
kind: SluiceNetworkPolicy
metadata: {name: bad-udp, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: echo}}
  ingress:
  - toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {http: [{method: GET}]}}]
"#;

fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn req(t: &TestLab, from: &str, method: &str, url: &str, headers: &[&str]) -> Result<String, String> {
    let mut argv = vec!["sluice-lab", "curl", "--timeout-ms", "2000", "-X", method];
    for h in headers {
        argv.extend(["-H", h]);
    }
    argv.push(url);
    t.lab.exec_output(from, &argv).map(|s| s.trim().to_string()).map_err(|e| format!("{e:#}"))
}

fn setup(name: &str, node1: &str, node2: &str) -> (TestLab, tempfile::TempDir, String, String, String) {
    let (t, dir) = two_node_lab(name, node1, node2);
    t.lab.namespace_set("x", Default::default(), true).expect("ns");
    let echo = t.lab.pod_add_ports("node-1", "x/echo", labels(&[("app", "echo")]), &[80, 81], None).expect("echo");
    t.lab.pod_add("node-1", "x/client", labels(&[("app", "client")]), None).expect("client");
    let c2 = t.lab.pod_add("node-2", "x/client2", labels(&[("app", "client"), ("which", "two")]), None).expect("c2");
    t.lab.pod_add("node-2", "x/other", labels(&[("app", "other")]), None).expect("other");
    let f = dir.path().join("l7.yaml");
    std::fs::write(&f, POLICY).expect("write");
    t.lab.apply(&f).expect("apply");
    (t, dir, echo.ip.to_string(), c2.ip.to_string(), f.display().to_string())
}

#[test]
fn http_rules_allow_get_public_and_refuse_the_rest_on_iptables() {
    suite("t-l7", "dataplane: iptables\n", "dataplane: iptables\n");
}

#[test]
fn http_rules_allow_get_public_and_refuse_the_rest_on_ebpf() {
    suite("t-l7-ebpf", "dataplane: ebpf\n", "dataplane: ebpf\n");
}

#[test]
fn http_rules_allow_get_public_and_refuse_the_rest_on_a_mixed_cluster() {
    suite("t-l7-mixed", "dataplane: ebpf\n", "dataplane: iptables\n");
}

/// The suite; node-1 runs the echo and `x/client`, node-2 `x/client2` and `x/other`.
fn suite(name: &str, node1: &str, node2: &str) {
    if !require_root() {
        return;
    }
    let ebpf1 = node1.contains("ebpf");
    // The header rule's header is recorded in the L7 flows; nothing else is.
    let headers = "l7: {flow_headers: [X-Team]}\n";
    let (t, dir, echo, c2ip, _) = setup(name, &format!("{node1}{headers}"), &format!("{node2}{headers}"));
    let public = format!("http://{echo}/public");
    // In force once the proxy refuses /private (before the agents read the policy, everything
    // passes straight to the pod).
    eventually("the proxy refusing GET /private", Duration::from_secs(20), || {
        req(&t, "x/client", "GET", &format!("http://{echo}/private"), &[]).err()?.contains("403").then_some(())
    });
    assert_eq!(req(&t, "x/client", "GET", &public, &[]).as_deref(), Ok("x/echo"), "on one node");
    // Pod to pod on one node and across nodes; through the ClusterIP from the other node.
    assert_eq!(req(&t, "x/client2", "GET", &public, &[]).as_deref(), Ok("x/echo"), "across nodes");
    assert_eq!(req(&t, "x/client2", "GET", "http://10.96.0.40/public", &[]).as_deref(), Ok("x/echo"), "ClusterIP");
    // Through the ClusterIP on one node: eBPF translates it before the redirect; on iptables
    // Services the proxy takes the ClusterIP as it is and picks the backend itself.
    let e = req(&t, "x/client", "GET", "http://10.96.0.40/private", &[]).expect_err("refused");
    assert!(e.contains("403"), "ClusterIP on one node: {e}");
    assert_eq!(req(&t, "x/client", "GET", "http://10.96.0.40/public", &[]).as_deref(), Ok("x/echo"));
    // One client port through the ClusterIP, then straight to the pod while conntrack still
    // holds the first connection, whose reply tuple (echo:80 -> client:port after the DNAT) is
    // the second's: conntrack gives the second another source port after the redirect, and its
    // packets after the SYN must still find the proxy's connection (they were reset).
    let from_port = |url: &str| {
        let argv = ["sluice-lab", "curl", "--timeout-ms", "2000", "--local-port", "40123", url];
        t.lab.exec_output("x/client", &argv).map(|s| s.trim().to_string()).map_err(|e| format!("{e:#}"))
    };
    assert_eq!(from_port("http://10.96.0.40/public").as_deref(), Ok("x/echo"), "ClusterIP from port 40123");
    assert_eq!(from_port(&public).as_deref(), Ok("x/echo"), "the pod from port 40123 again");
    // The upstream connection keeps the client's address (the echo answers what it saw).
    assert_eq!(req(&t, "x/client2", "GET", &format!("http://{echo}/client"), &[]), Ok(c2ip.clone()));
    // Requests no rule matches: 403 naming the policy; the connection was accepted.
    for (from, method, path) in
        [("x/client", "GET", "/private"), ("x/client2", "POST", "/public"), ("x/client", "GET", "/public/x")]
    {
        let e = req(&t, from, method, &format!("http://{echo}{path}"), &[]).expect_err("refused");
        assert!(e.contains("403") && e.contains("SluiceNetworkPolicy x/echo-l7"), "{from} {method} {path}: {e}");
    }
    // Each request is an L7 flow on the echo's node: the request (FORWARDED, or DROPPED when
    // refused) and the response with its status and latency, filtered as hubble observe does.
    let observe = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut argv = vec!["sluice", "observe", "--type", "l7", "--last", "1000", "-o", "json"];
        argv.extend(args);
        t.exec("node-1", &argv)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["flow"].clone())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ok = loop {
        let f = observe(&["--http-path", "^/public$", "--http-status", "2+"]);
        if !f.is_empty() {
            break f;
        }
        let all = t.exec("node-1", &["sluice", "observe", "--last", "50"]);
        assert!(std::time::Instant::now() < deadline, "no response flow of GET /public; the last flows:\n{all}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let r = &ok[0];
    assert_eq!((r["l7"]["type"].as_str(), r["l7"]["http"]["code"].as_u64()), (Some("RESPONSE"), Some(200)), "{r}");
    assert_eq!(r["l7"]["http"]["method"], "GET", "{r}");
    assert!(r["l7"]["latency_ns"].as_u64().is_some_and(|n| n > 0), "{r}");
    assert_eq!((r["Type"].as_str(), r["verdict"].as_str()), (Some("L7"), Some("FORWARDED")), "{r}");
    let refused = observe(&["--http-method", "POST", "--verdict", "DROPPED"]);
    let p = refused.first().unwrap_or_else(|| panic!("a DROPPED request flow for POST /public: {refused:?}"));
    assert_eq!(p["l7"]["type"], "REQUEST", "{p}");
    assert!(p["ingress_denied_by"].to_string().contains("echo-l7"), "{p}");
    assert_eq!(p["source"]["pod_name"], "client2", "{p}");
    let line = t.exec("node-1", &["sluice", "observe", "--type", "l7", "--http-path", "^/private", "--last", "5"]);
    assert!(line.contains("http-request DROPPED (HTTP/1.1 GET http://") && line.contains("/private"), "{line}");

    // Another identity is dropped at L3/L4, never reaching the proxy.
    let e = req(&t, "x/other", "GET", &public, &[]).expect_err("dropped");
    assert!(e.contains("timed out") || e.contains("connecting"), "{e}");
    // The named port (the echo's containerPort serve-81-tcp) with a header rule.
    let named = format!("http://{echo}:81/named/1");
    assert_eq!(req(&t, "x/client2", "GET", &named, &["X-Team: blue"]).as_deref(), Ok("x/echo"));
    let e = req(&t, "x/client2", "GET", &named, &["X-Team: red"]).expect_err("wrong header value");
    assert!(e.contains("403"), "{e}");
    let named_flows = observe(&["--http-path", "^/named", "--http-method", "GET"]);
    let blue = named_flows.iter().find(|f| f["l7"]["type"] == "REQUEST" && f["verdict"] == "FORWARDED");
    let blue = blue.unwrap_or_else(|| panic!("the forwarded /named request: {named_flows:?}"));
    assert_eq!(blue["l7"]["http"]["headers"], serde_json::json!([{"key": "x-team", "value": "blue"}]), "{blue}");

    // Egress by method on client2: its node's proxy refuses POST (any path); GET passes both.
    let f = dir.path().join("egress.yaml");
    std::fs::write(&f, EGRESS).expect("write");
    t.lab.apply(&f).expect("apply");
    eventually("client2's egress rule refuses POST", Duration::from_secs(20), || {
        let e = req(&t, "x/client2", "POST", &format!("http://{echo}/anything"), &[]).err()?;
        e.contains("SluiceNetworkPolicy x/client2-get-only").then_some(())
    });
    assert_eq!(req(&t, "x/client2", "GET", &public, &[]).as_deref(), Ok("x/echo"), "egress then ingress proxy");
    // The egress rule through the ClusterIP too.
    let e = req(&t, "x/client2", "POST", "http://10.96.0.40/anything", &[]).expect_err("egress rule");
    assert!(e.contains("SluiceNetworkPolicy x/client2-get-only"), "ClusterIP, egress: {e}");
    let got = req(&t, "x/client2", "GET", "http://10.96.0.40/public", &[]);
    assert_eq!(got.as_deref(), Ok("x/echo"), "ClusterIP, egress then ingress");
    let e = req(&t, "x/client2", "GET", &format!("http://{echo}/private"), &[]).expect_err("ingress rule");
    assert!(e.contains("SluiceNetworkPolicy x/echo-l7"), "the echo's node decides /private: {e}");

    // From outside through a NodePort on the echo's node: GET /public passes, /private is
    // refused by the proxy (on eBPF the device program hands the connection over untranslated).
    t.lab.external_add("ext", None).expect("ext");
    let np = dir.path().join("nodeport.yaml");
    std::fs::write(&np, NODE_PORT).expect("write");
    t.lab.apply(&np).expect("apply");
    let ext_url = |path: &str| format!("http://198.51.100.11:30480{path}");
    eventually("GET /public from outside through the NodePort", Duration::from_secs(20), || {
        (req(&t, "ext", "GET", &ext_url("/public"), &[]).ok()? == "x/echo").then_some(())
    });
    let e = req(&t, "ext", "GET", &ext_url("/private"), &[]).expect_err("refused through the NodePort");
    assert!(e.contains("403") && e.contains("SluiceNetworkPolicy x/echo-l7-world"), "NodePort: {e}");
    t.lab.delete(&np).expect("delete");

    // An agent killed (-9) and restarted: its proxy is its own process and outlives it. A
    // keep-alive connection through node-1's proxy is served all along; /private is refused
    // by the last view meanwhile (the L7 port never opens); the new agent connects to the
    // same proxy.
    let proxy_pid = |t: &TestLab| -> Option<u64> { t.try_status("node-1")?["l7_proxy"]["pid"].as_u64() };
    let before = eventually("node-1's proxy in status", Duration::from_secs(10), || proxy_pid(&t));
    let held_cmd = ["sluice-lab", "hold", &echo, "--http", "/public", "--secs", "8", "--interval-ms", "100"];
    let mut held = t.lab.command("x/client2", &held_cmd.map(String::from)).expect("cmd");
    let held = held.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("hold");
    std::thread::sleep(Duration::from_millis(500));
    t.lab.restart_agent("node-1", true).expect("restart");
    let private = format!("http://{echo}/private");
    eventually("the new agent connected to the same proxy", Duration::from_secs(30), || {
        let p = req(&t, "x/client2", "GET", &private, &[]);
        assert!(p.is_err(), "the L7 port opened during the restart: /private answered {p:?}");
        (proxy_pid(&t)? == before).then_some(())
    });
    assert_eq!(req(&t, "x/client2", "GET", &public, &[]).as_deref(), Ok("x/echo"));
    let out = held.wait_with_output().expect("hold");
    assert!(
        out.status.success(),
        "the keep-alive connection through the proxy broke across the agent's kill -9: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The proxy stopped (SIGTERM: it drains): the agent starts the next one; the L7 port never
    // opens meanwhile and serves again once it runs.
    sluice_lab::proc::stop(before as u32, Duration::from_secs(15));
    eventually("a new proxy serves GET /public", Duration::from_secs(30), || {
        let p = req(&t, "x/client2", "GET", &private, &[]);
        assert!(p.is_err(), "the L7 port opened while the proxy restarted: /private answered {p:?}");
        let now = proxy_pid(&t)?;
        let r = req(&t, "x/client2", "GET", &public, &[]);
        (now != before && r.ok()? == "x/echo").then_some(())
    });
    let e = req(&t, "x/client2", "GET", &private, &[]).expect_err("refused by the new proxy");
    assert!(e.contains("403"), "{e}");

    // Bad rules: refused by name with the field and value; the good policies stay in force.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, BAD).expect("write");
    t.lab.apply(&bad).expect("apply");
    let rejected = eventually("both bad policies refused", Duration::from_secs(15), || {
        let out = t.lab.exec_output("node-1", &["sluice", "policy", "get", "-o", "json"]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let r = v["rejected"].as_array()?;
        (r.len() == 2).then(|| v["rejected"].to_string())
    });
    assert!(
        rejected.contains("x/bad-regex") && rejected.contains("spec.ingress[0].toPorts[0].rules.http[0].path"),
        "{rejected}"
    );
    assert!(rejected.contains("x/bad-udp") && rejected.contains("HTTP rules need TCP"), "{rejected}");
    assert_eq!(req(&t, "x/client", "GET", &public, &[]).as_deref(), Ok("x/echo"));
    t.lab.delete(&bad).expect("delete");

    // The kernel objects: the redirect (TPROXY chains on iptables, the proxy port in the eBPF
    // policy maps) while L7 rules exist; gone with the policies.
    let rules = t.exec("node-1", &["ip", "rule", "show"]);
    assert!(rules.contains("fwmark 0x40000/0x40000 lookup 2004"), "{rules}");
    if ebpf1 {
        let st = t.exec("node-1", &["sluice", "status"]);
        assert!(st.contains("L7 rules redirected to the proxy on 127.0.0.1:15001 (sk_lookup, bpf_sk_assign)"), "{st}");
    } else {
        let mangle = t.exec("node-1", &["iptables-save", "-t", "mangle"]);
        assert!(mangle.contains("-j TPROXY") && mangle.contains("SLUICE-POL-L7"), "{mangle}");
    }
    t.lab.delete(std::path::Path::new(&f)).expect("delete egress");
    let all = dir.path().join("l7.yaml");
    t.lab.delete(&all).expect("delete policy");
    if !ebpf1 {
        eventually("redirect chains removed with the policy", Duration::from_secs(15), || {
            (!t.exec("node-1", &["iptables-save", "-t", "mangle"]).contains("SLUICE-POL-L7")).then_some(())
        });
    }
    eventually("no policy: open again", Duration::from_secs(15), || {
        (req(&t, "x/other", "GET", &public, &[]).ok()? == "x/echo").then_some(())
    });

    // `sluice cleanup` with the agent stopped: the proxy process (which outlives the agent)
    // drains and exits, its control socket goes, and so do the pinned sk_lookup link and the
    // policy routing.
    let proxy = proxy_pid(&t).expect("the proxy still runs after its rules went") as u32;
    let node1 = t.lab.state().expect("state").node("node-1").expect("node").clone();
    t.lab.stop_agent("node-1").expect("stop agent");
    assert!(sluice_lab::proc::alive(proxy), "the proxy outlives the agent's stop");
    let link = t.lab.bpf_dir().join("node-1").join("l7_lookup");
    assert_eq!(link.exists(), ebpf1, "the sk_lookup link is pinned on eBPF (it outlives the agent too)");
    let cfg = node1.dir.join("config.yaml").display().to_string();
    let out = t.exec("node-1", &["sluice", "cleanup", "--config", &cfg, "-o", "json"]);
    let removed: serde_json::Value = serde_json::from_str(&out).expect("cleanup json");
    assert_eq!(removed["l7_proxies"], 1, "{out}");
    eventually("the proxy exited", Duration::from_secs(15), || (!sluice_lab::proc::alive(proxy)).then_some(()));
    assert!(!node1.dir.join("l7-proxy.sock").exists(), "the control socket is gone");
    assert!(!link.exists(), "the pinned sk_lookup link is gone: {}", link.display());
    let rules = t.exec("node-1", &["ip", "rule", "show"]);
    assert!(!rules.contains("lookup 2004"), "{rules}");
}
