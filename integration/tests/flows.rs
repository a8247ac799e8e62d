//! Tier 3: flows on the lab (netfilter nodes: the conntrack source). Traffic through a Service shows up in the node's Observer API
//! (Hubble's wire format, read with the client generated from the protos) with the right pods,
//! Service, node and verdict; filters and health answer as Hubble's clients expect; the socket
//! is root-only.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{eventually, require_root, two_node_web_lab};
use sluice_observer::pb::flow::{FlowFilter, Verdict};
use sluice_observer::pb::observer::observer_client::ObserverClient;
use sluice_observer::pb::observer::{GetFlowsRequest, ServerStatusRequest, get_flows_response::ResponseTypes};
use tokio_stream::StreamExt;

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n";

async fn client(path: String) -> tonic::transport::Channel {
    sluice_observer::client::connect_unix(path.into()).await.expect("connect to the Observer socket")
}

async fn flows(ch: tonic::transport::Channel, req: GetFlowsRequest) -> Vec<sluice_observer::pb::flow::Flow> {
    let mut s = ObserverClient::new(ch).get_flows(req).await.expect("GetFlows").into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.next().await {
        if let Some(ResponseTypes::Flow(f)) = r.expect("item").response_types {
            out.push(f);
        }
    }
    out
}

#[test]
fn service_traffic_is_observed_with_pods_service_node_and_verdict() {
    service_traffic_case("t-flows", "dataplane: iptables\n", "to-stack");
}

/// The same on eBPF nodes: the flows come from the pod-veth programs' traces (the client's
/// from-endpoint trace carries the Service and the backend it was translated to).
#[test]
fn service_traffic_is_observed_on_ebpf_from_the_pod_veths() {
    service_traffic_case("t-flows-bpf", "dataplane: ebpf\n", "from-endpoint");
}

fn service_traffic_case(lab: &str, cfg: &str, point: &str) {
    if !require_root() {
        return;
    }
    let (t, dir) = two_node_web_lab(lab, cfg, cfg);
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    let f = dir.path().join("web.yaml");
    std::fs::write(&f, WEB).expect("write");
    t.lab.apply(&f).expect("apply");
    eventually("service programmed", Duration::from_secs(15), || {
        t.curl("client", "http://10.96.0.10/").ok().filter(|b| b == "a" || b == "b")
    });
    let s = t.status("node-1");
    assert_eq!(s["flows"]["running"], true, "{}", s["flows"]);
    let socket = s["flows"]["socket"].as_str().expect("socket path").to_string();
    let mode = std::fs::metadata(&socket).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the Observer socket is root-only");
    // Requests that were answered (each is a connection the node must record).
    let answered = (0..5).filter(|_| t.curl("client", "http://10.96.0.10/").is_ok()).count();
    assert!(answered >= 1, "the Service stopped answering");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let ch = client(socket.clone()).await;
        // The client's connections to the Service, as Hubble shows them.
        let want = FlowFilter {
            source_pod: vec!["default/client".into()],
            destination_service: vec!["default/web".into()],
            ..Default::default()
        };
        // The reader takes events in bursts: the last requests' flows may be a moment behind
        // (seen locally: 2 of 5 when asked at once, on a busy machine).
        let mut got = Vec::new();
        for _ in 0..50 {
            got =
                flows(ch.clone(), GetFlowsRequest { number: 20, whitelist: vec![want.clone()], ..Default::default() })
                    .await;
            if got.len() >= answered {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            got.len() >= answered,
            "{} flows for {answered} answered requests; node-1's last flows:\n{}\nconntrack:\n{}",
            got.len(),
            t.exec("node-1", &["sluice", "observe", "--last", "30"]),
            t.lab.exec_output("node-1", &["conntrack", "-L"]).unwrap_or_default()
        );
        let f = &got[got.len() - 1];
        assert_eq!(f.node_name, "node-1");
        assert_eq!(f.verdict, Verdict::Forwarded as i32);
        assert_eq!(f.r#type, 1, "L3_L4");
        assert_eq!(f.event_type.as_ref().map(|e| e.r#type), Some(4), "trace");
        assert_eq!(f.is_reply, Some(false));
        let src = f.source.as_ref().expect("source");
        assert_eq!((src.namespace.as_str(), src.pod_name.as_str()), ("default", "client"));
        assert!(src.identity != 0 && src.labels.iter().all(|l| l.starts_with("k8s:")), "{src:?}");
        let dst = f.destination.as_ref().expect("destination");
        assert!(dst.pod_name == "a" || dst.pod_name == "b", "the backend reached: {dst:?}");
        assert_eq!(f.destination_service.as_ref().map(|s| s.name.as_str()), Some("web"));
        let port = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
            Some(sluice_observer::pb::flow::layer4::Protocol::Tcp(t)) => t.destination_port,
            other => panic!("{other:?}"),
        };
        assert_eq!(port, 8080, "the backend's port after translation");
        // A blacklist removes them all; a filter on another namespace finds none.
        let none = flows(
            ch.clone(),
            GetFlowsRequest { number: 20, whitelist: vec![want.clone()], blacklist: vec![want], ..Default::default() },
        )
        .await;
        assert!(none.is_empty());
        let other = FlowFilter { source_pod: vec!["kube-system/".into()], ..Default::default() };
        assert!(
            flows(ch.clone(), GetFlowsRequest { number: 20, whitelist: vec![other], ..Default::default() })
                .await
                .is_empty()
        );
        let st =
            ObserverClient::new(ch.clone()).server_status(ServerStatusRequest {}).await.expect("status").into_inner();
        assert!(st.seen_flows >= 5 && st.max_flows == 4095, "{st:?}");
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        let r = h
            .check(tonic_health::pb::HealthCheckRequest { service: "hubble.server.Observer".into() })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    });
    // `sluice observe`: Hubble's compact lines and JSON, against the same socket.
    let lines = t.exec("node-1", &["sluice", "observe", "--to-service", "default/web", "--last", "3"]);
    assert_eq!(lines.lines().count(), 3, "{lines}");
    assert!(
        lines.lines().all(|l| l.contains(": default/client:")
            && l.contains(&format!("(service default/web) {point} FORWARDED (TCP Flags: SYN)"))),
        "{lines}"
    );
    let json = t.exec(
        "node-1",
        &[
            "sluice",
            "observe",
            "--from-pod",
            "default/client",
            "--to-service",
            "default/web",
            "--protocol",
            "tcp",
            "--last",
            "1",
            "-o",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(v["node_name"], "node-1");
    assert_eq!(v["flow"]["verdict"], "FORWARDED");
    assert_eq!(v["flow"]["Type"], "L3_L4");
    assert_eq!(v["flow"]["traffic_direction"], "EGRESS");
    assert_eq!(v["flow"]["source"]["pod_name"], "client");
    assert_eq!(v["flow"]["l4"]["TCP"]["destination_port"], 8080);
    // Hubble's table and dict formats.
    let table = t.exec("node-1", &["sluice", "observe", "--to-service", "default/web", "--last", "2", "-o", "table"]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].starts_with("TIMESTAMP") && rows[0].contains("DESTINATION") && rows[0].ends_with("SUMMARY"));
    assert!(
        rows[1..].iter().all(|r| r.contains("default/client:") && r.contains(point) && r.contains("FORWARDED")),
        "{table}"
    );
    let dict = t.exec("node-1", &["sluice", "observe", "--to-service", "default/web", "--last", "2", "-o", "dict"]);
    assert_eq!(dict.matches("    VERDICT: FORWARDED").count(), 2, "{dict}");
    assert_eq!(dict.matches("------------").count(), 1, "{dict}");
    assert!(dict.contains("    SUMMARY: service default/web; TCP Flags: SYN"), "{dict}");
    let other = t.lab.exec_output("node-1", &["sluice", "status", "-o", "dict"]).expect_err("dict is observe's");
    assert!(format!("{other:#}").contains("sluice observe"), "{other:#}");
    let bad = t.lab.exec_output("node-1", &["sluice", "observe", "--verdict", "ALLOWED"]).expect_err("bad verdict");
    assert!(format!("{bad:#}").contains("ALLOWED") && format!("{bad:#}").contains("FORWARDED"), "{bad:#}");
    // The plan says who serves flows, and status where they come from.
    let plan = t.exec("node-1", &["sluice", "plan", "-o", "json"]);
    assert!(plan.contains("\"flows\""), "{plan}");
    let source = t.status("node-1")["flows"]["source"].as_str().unwrap_or_default().to_string();
    let want = if point == "to-stack" { "conntrack events" } else { "eBPF ring buffer" };
    assert!(source.starts_with(want), "{source}");
}

/// `sluice relay` beside the nodes (an external host of the lab), finding them through node-1's
/// peer service on 4244: one `sluice observe --server` shows both nodes' flows, and a node whose
/// agent stops is named unavailable while the other's flows still come.
#[test]
fn the_relay_serves_the_whole_cluster_and_names_a_node_that_is_gone() {
    if !require_root() {
        return;
    }
    let (t, dir) = two_node_web_lab("t-relay", "dataplane: iptables\n", "dataplane: iptables\n");
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    let ext = t.lab.external_add("relay", None).expect("external host for the relay");
    let f = dir.path().join("web.yaml");
    std::fs::write(&f, WEB).expect("write");
    t.lab.apply(&f).expect("apply");
    eventually("service programmed", Duration::from_secs(15), || {
        t.curl("client", "http://10.96.0.10/").ok().filter(|b| b == "a" || b == "b")
    });
    let listen = format!("{}:4245", ext.ip);
    let argv: Vec<String> = ["sluice", "relay", "--listen-address", &listen, "--peer-service", "198.51.100.11:4244"]
        .map(String::from)
        .to_vec();
    let log = std::fs::File::create(dir.path().join("relay.log")).expect("log");
    let child = t.lab.command("relay", &argv).expect("command").stderr(log).spawn().expect("sluice relay");
    let _relay = common::KillOnDrop(child);
    // Cross-node requests: node-1 sees the client's connections, node-2 the forwarded ones to b.
    let nodes_seen = |out: &str| -> std::collections::BTreeSet<String> {
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("flow").is_some())
            .filter_map(|v| v["node_name"].as_str().map(String::from))
            .collect()
    };
    let observe = |extra: &[&str]| -> String {
        let mut argv = vec!["sluice", "observe", "--server", &listen, "-o", "json"];
        argv.extend_from_slice(extra);
        t.lab.exec_output("node-1", &argv).unwrap_or_default()
    };
    eventually("flows of both nodes through the relay", Duration::from_secs(30), || {
        let _ = t.curl("client", "http://10.96.0.10/");
        let seen = nodes_seen(&observe(&["--last", "100", "--from-pod", "default/client"]));
        (seen.len() == 2).then_some(())
    });
    // A time range without a count: every flow in it, from both nodes, oldest first.
    let ranged = observe(&["--since", "5m", "--from-pod", "default/client"]);
    let times: Vec<String> = ranged
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["time"].as_str().map(String::from))
        .collect();
    assert!(times.len() >= 2 && times.windows(2).all(|w| w[0] <= w[1]), "{ranged}");
    assert!(observe(&["--until", "2000-01-01T00:00:00Z"]).lines().all(|l| !l.contains("\"flow\"")));
    // node-2's agent stops: the relay names it, node-1's flows still come.
    t.lab.stop_agent("node-2").expect("stop node-2");
    let out = eventually("node-2 named unavailable", Duration::from_secs(30), || {
        let out = observe(&["--last", "5"]);
        out.contains("NODE_UNAVAILABLE").then_some(out)
    });
    let status = out.lines().find(|l| l.contains("node_status")).expect("a node_status line");
    assert!(status.contains("node-2"), "{status}");
    assert_eq!(nodes_seen(&out), ["node-1".to_string()].into_iter().collect(), "{out}");
}

/// A policy drop on an iptables node is a flow: DROPPED with the drop reason, the direction, the
/// pod it was for and the policy that isolates it (default deny) or the deny rule's policy;
/// counted in `hubble_drop_total` too.
#[test]
fn policy_drops_are_flows_attributed_to_the_policy() {
    policy_drops_case("t-drops", "dataplane: iptables\nflows: {allowed_verdicts: true}\n", "NFLOG");
}

/// The same on a node where eBPF enforces policy (auto: eBPF takes Services and policy, the
/// conntrack events give the traces): the pod-veth program's drops come through the ring
/// buffer, attributed the same way.
#[test]
fn ebpf_policy_drops_are_flows_attributed_to_the_policy() {
    policy_drops_case("t-drops-bpf", "dataplane: auto\n", "eBPF ring buffer");
}

fn policy_drops_case(lab: &str, node2: &str, source: &str) {
    if !require_root() {
        return;
    }
    let (t, dir) = two_node_web_lab(lab, "dataplane: iptables\n", node2);
    if source.starts_with("eBPF") {
        let st = t.status("node-2");
        let policy = st["plan"]["entries"].as_array().and_then(|fs| {
            fs.iter().find(|f| f["feature"] == "policy").map(|f| f["owner"].as_str().unwrap_or("").to_string())
        });
        assert_eq!(policy.as_deref(), Some("ebpf"), "eBPF enforces policy on node-2: {}", st["plan"]);
    }
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    eventually("b answers before any policy", Duration::from_secs(15), || {
        t.curl("client", "http://10.244.2.2:8080/").ok().filter(|b| b == "b")
    });
    let f = dir.path().join("deny.yaml");
    std::fs::write(
        &f,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-isolated, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
    )
    .expect("write");
    t.lab.apply(&f).expect("apply");
    eventually("b isolated", Duration::from_secs(15), || {
        t.curl("client", "http://10.244.2.2:8080/").is_err().then_some(())
    });
    // node-2 dropped the client's SYNs on their way into b.
    let line = eventually("the drop on node-2", Duration::from_secs(15), || {
        let _ = t.curl("client", "http://10.244.2.2:8080/");
        let out = t.lab.exec_output("node-2", &["sluice", "observe", "--verdict", "DROPPED", "--last", "1"]).ok()?;
        out.lines().next().map(String::from)
    });
    assert!(
        line.contains("default/client")
            && line.contains("-> default/b:8080")
            && line.contains("DROPPED (POLICY_DENIED)"),
        "{line}"
    );
    assert!(
        line.contains("(default deny: ") && line.contains("web-isolated") && line.contains("selects this pod"),
        "{line}"
    );
    let json = t.exec("node-2", &["sluice", "observe", "--verdict", "DROPPED", "--last", "1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(v["flow"]["verdict"], "DROPPED");
    assert_eq!(v["flow"]["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(v["flow"]["traffic_direction"], "INGRESS");
    assert_eq!(v["flow"]["event_type"]["type"], 1, "drop event");
    assert_eq!(v["flow"]["event_type"]["sub_type"], 133);
    assert_eq!(v["flow"]["destination"]["pod_name"], "b");
    assert_eq!(v["flow"]["ingress_denied_by"][0]["name"], "web-isolated", "{v}");
    // Counted where Prometheus reads it.
    let m = t.lab.exec_output("node-1", &["sluice-lab", "curl", "http://198.51.100.12:9965/metrics"]).expect("metrics");
    assert!(m.lines().any(|l| l.starts_with("hubble_drop_total{reason=\"POLICY_DENIED\",protocol=\"TCP\"")), "{m}");
    if source == "NFLOG" {
        // A policy that allows the client: each new flow it lets through is a policy verdict
        // (type 5, FORWARDED) naming it. (eBPF reports drops and audits only.)
        let allow = dir.path().join("allow.yaml");
        std::fs::write(
            &allow,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-pods, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {}}], ports: [{port: 8080}]}]\n",
        )
        .expect("write");
        t.lab.apply(&allow).expect("apply");
        let json = eventually("an allowed policy verdict on node-2", Duration::from_secs(15), || {
            t.curl("client", "http://10.244.2.2:8080/").ok().filter(|b| b == "b")?;
            let argv = [
                "sluice",
                "observe",
                "--type",
                "policy-verdict",
                "--verdict",
                "FORWARDED",
                "--last",
                "1",
                "-o",
                "json",
            ];
            let out = t.lab.exec_output("node-2", &argv).ok()?;
            (!out.trim().is_empty()).then_some(out)
        });
        let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
        assert_eq!(v["flow"]["event_type"]["type"], 5, "{v}");
        assert_eq!(v["flow"]["traffic_direction"], "INGRESS", "{v}");
        assert!(v["flow"]["ingress_allowed_by"].to_string().contains("web-from-pods"), "{v}");
        assert_eq!(v["flow"]["destination"]["pod_name"], "b");
        let m =
            t.lab.exec_output("node-1", &["sluice-lab", "curl", "http://198.51.100.12:9965/metrics"]).expect("metrics");
        assert!(
            m.lines().any(|l| l.starts_with("hubble_policy_verdicts_total{")
                && l.contains("direction=\"ingress\"")
                && l.contains("action=\"forwarded\"")),
            "{m}"
        );
        t.lab.delete(&allow).expect("delete");
    }
    // Removing the policy ends the drops.
    t.lab.delete(&f).expect("delete");
    eventually("b answers again", Duration::from_secs(15), || {
        t.curl("client", "http://10.244.2.2:8080/").ok().filter(|b| b == "b")
    });
    let st = t.status("node-2");
    assert!(st["flows"]["source"].as_str().unwrap_or("").contains(source), "{}", st["flows"]);
}

/// An audit-mode policy changes nothing that passes, and its would-be drops are flows: policy
/// verdict AUDIT naming the policy, on the iptables dataplane (NFLOG) and on eBPF (ring buffer).
#[test]
fn audited_policies_report_would_be_drops_on_iptables() {
    audit_case("t-audit", "dataplane: iptables\n");
}

#[test]
fn audited_policies_report_would_be_drops_on_ebpf() {
    audit_case("t-audit-bpf", "dataplane: auto\n");
}

fn audit_case(lab: &str, node2: &str) {
    if !require_root() {
        return;
    }
    let (t, dir) = two_node_web_lab(lab, "dataplane: iptables\n", node2);
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    let f = dir.path().join("audit.yaml");
    std::fs::write(
        &f,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web-audit\n  namespace: default\n  labels: {policy.sluice.io/audit: \"true\"}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n",
    )
    .expect("write");
    t.lab.apply(&f).expect("apply");
    // Every request keeps being answered, and the would-be drop shows up on node-2.
    let line = eventually("an AUDIT flow on node-2", Duration::from_secs(20), || {
        let body = t.curl("client", "http://10.244.2.2:8080/").expect("an audit policy never drops");
        assert_eq!(body, "b");
        let out = t.lab.exec_output("node-2", &["sluice", "observe", "--verdict", "AUDIT", "--last", "1"]).ok()?;
        out.lines().next().map(String::from)
    });
    assert!(
        line.contains("default/client") && line.contains("-> default/b:8080") && line.contains("policy-verdict AUDIT"),
        "{line}"
    );
    assert!(line.contains("would be denied") && line.contains("web-audit"), "{line}");
    let json = t.exec("node-2", &["sluice", "observe", "--verdict", "AUDIT", "--last", "1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(v["flow"]["verdict"], "AUDIT");
    assert_eq!(v["flow"]["event_type"]["type"], 5, "policy verdict event");
    assert_eq!(v["flow"]["traffic_direction"], "INGRESS");
    // No real drop was reported for it.
    let drops = t.exec("node-2", &["sluice", "observe", "--verdict", "DROPPED", "--last", "5"]);
    assert!(drops.trim().is_empty(), "{drops}");
    // `--not` as hubble observe's: everything but the forwarded traces leaves the audits.
    let not_fwd = t.exec("node-2", &["sluice", "observe", "--last", "50", "--not", "--verdict", "FORWARDED"]);
    assert!(not_fwd.lines().any(|l| l.contains("AUDIT")), "{not_fwd}");
    assert!(!not_fwd.contains("FORWARDED"), "{not_fwd}");
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A throwaway CA in `dir` (ca.pem) and a certificate `who`.pem/.key it signed, with `ext`.
fn signed(dir: &std::path::Path, who: &str, ext: &str) {
    if !dir.join("ca.pem").exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
            ]
            .into_iter()
            .chain(["-out", "ca.pem", "-subj", "/CN=sluice lab CA", "-days", "1"])
            .collect::<Vec<_>>(),
        );
    }
    let (key, csr, pem, extf) =
        (format!("{who}.key"), format!("{who}.csr"), format!("{who}.pem"), format!("{who}.ext"));
    openssl(
        dir,
        &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", &key, "-out", &csr]
            .into_iter()
            .chain(["-subj", &format!("/CN={who}")])
            .collect::<Vec<_>>(),
    );
    std::fs::write(dir.join(&extf), format!("{ext}\n")).expect("ext");
    openssl(
        dir,
        &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &pem]
            .into_iter()
            .chain(["-days", "1", "-extfile", &extf])
            .collect::<Vec<_>>(),
    );
}

/// `flows.tls` on both nodes with client certificates required; the relay reaches them over
/// TLS with its own client certificate and serves TLS itself; `sluice observe` reads through it
/// and from a node directly; plaintext and certificate-less clients are refused.
#[test]
fn the_nodes_and_the_relay_speak_mutual_tls() {
    if !require_root() {
        return;
    }
    let pki = tempfile::tempdir().expect("tmp");
    let p = pki.path();
    signed(p, "node", "subjectAltName=IP:198.51.100.11,IP:198.51.100.12");
    signed(p, "client", "extendedKeyUsage=clientAuth");
    let cfg = format!(
        "dataplane: iptables\nflows: {{tls: {{cert_file: {0}/node.pem, key_file: {0}/node.key, client_ca_file: {0}/ca.pem}}}}\n",
        p.display()
    );
    let (t, dir) = two_node_web_lab("t-tls", &cfg, &cfg);
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    let ext = t.lab.external_add("relay", None).expect("external host for the relay");
    signed(p, "relay", &format!("subjectAltName=IP:{}", ext.ip));
    let f = dir.path().join("web.yaml");
    std::fs::write(&f, WEB).expect("write");
    t.lab.apply(&f).expect("apply");
    eventually("service programmed", Duration::from_secs(15), || {
        t.curl("client", "http://10.96.0.10/").ok().filter(|b| b == "a" || b == "b")
    });
    assert_eq!(t.status("node-1")["flows"]["tls"], "mutual (client certificates required)");
    let file = |n: &str| p.join(n).display().to_string();
    let listen = format!("{}:4245", ext.ip);
    let argv: Vec<String> = [
        "sluice",
        "relay",
        "--listen-address",
        &listen,
        "--peer-service",
        "198.51.100.11:4244",
        "--tls-hubble-server-ca-file",
        &file("ca.pem"),
        "--tls-hubble-client-cert-file",
        &file("client.pem"),
        "--tls-hubble-client-key-file",
        &file("client.key"),
        "--tls-server-cert-file",
        &file("relay.pem"),
        "--tls-server-key-file",
        &file("relay.key"),
    ]
    .map(String::from)
    .to_vec();
    let log = std::fs::File::create(dir.path().join("relay.log")).expect("log");
    let child = t.lab.command("relay", &argv).expect("command").stderr(log).spawn().expect("sluice relay");
    let _relay = common::KillOnDrop(child);
    let ca = file("ca.pem");
    let nodes_seen = |out: &str| -> std::collections::BTreeSet<String> {
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("flow").is_some())
            .filter_map(|v| v["node_name"].as_str().map(String::from))
            .collect()
    };
    eventually("flows of both nodes through the relay, over TLS", Duration::from_secs(30), || {
        let _ = t.curl("client", "http://10.96.0.10/");
        let out = t
            .lab
            .exec_output(
                "node-1",
                &["sluice", "observe", "--server", &listen, "--tls-ca-cert-file", &ca, "--last", "100", "-o", "json"],
            )
            .unwrap_or_default();
        (nodes_seen(&out).len() == 2).then_some(())
    });
    // A node directly: with the client certificate served, without it (or in plaintext) refused.
    let node = "198.51.100.11:4244";
    let (cert, key) = (file("client.pem"), file("client.key"));
    let direct = t.exec(
        "node-1",
        &[
            "sluice",
            "observe",
            "--server",
            node,
            "--tls-ca-cert-file",
            &ca,
            "--tls-client-cert-file",
            &cert,
            "--tls-client-key-file",
            &key,
            "--last",
            "3",
            "-o",
            "json",
        ],
    );
    assert_eq!(nodes_seen(&direct), ["node-1".to_string()].into_iter().collect(), "{direct}");
    let no_cert = t.lab.exec_output("node-1", &["sluice", "observe", "--server", node, "--tls-ca-cert-file", &ca]);
    assert!(no_cert.is_err(), "no client certificate: {no_cert:?}");
    let plain = t.lab.exec_output("node-1", &["sluice", "observe", "--server", node]).expect_err("plaintext");
    assert!(format!("{plain:#}").contains("--tls-ca-cert-file"), "the error names the way out: {plain:#}");
}
