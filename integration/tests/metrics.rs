//! Tier 3: metrics as a real Prometheus server sees them. Two nodes (node-1 on iptables, node-2
//! with eBPF where the kernel allows) serve `sluice_*` and `hubble_*` on their own underlay
//! addresses; Debian's Prometheus runs on an external host of the lab, scrapes both, and answers
//! every query of the Grafana dashboard shipped in deploy/grafana/.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{KillOnDrop, eventually, require_root, two_node_web_lab};
use serde_json::Value;

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n";
/// An L7 policy on node-1's `echo` pod: its requests are counted by `http`.
const ECHO_L7: &str = "apiVersion: sluice.io/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: echo-l7, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: echo}}\n  ingress: [{toPorts: [{ports: [{port: '8080'}], rules: {http: [{method: GET, path: /ok}]}}]}]\n";
const NODE1: &str = "198.51.100.11";
const NODE2: &str = "198.51.100.12";

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn node_config(dataplane: &str, ip: &str) -> String {
    format!(
        "dataplane: {dataplane}\nmetrics:\n  listen_address: {ip}:9962\n  hubble_listen_address: {ip}:9965\n  enabled: [flow, \"drop:sourceContext=namespace;destinationContext=pod\", tcp, port-distribution, icmp, policy, http]\n"
    )
}

#[test]
fn prometheus_scrapes_both_nodes_and_answers_every_dashboard_query() {
    if !require_root() {
        return;
    }
    let (t, dir) = two_node_web_lab("t-metrics", &node_config("iptables", NODE1), &node_config("auto", NODE2));
    t.lab.pod_add("node-1", "client", Default::default(), None).expect("client");
    let echo =
        t.lab.pod_add("node-1", "echo", [("app".to_string(), "echo".to_string())].into(), Some(8080)).expect("echo");
    t.lab.external_add("prom", None).expect("external host for Prometheus");
    let f = dir.path().join("web.yaml");
    std::fs::write(&f, format!("{WEB}---\n{ECHO_L7}")).expect("write");
    t.lab.apply(&f).expect("apply");
    eventually("service programmed", Duration::from_secs(15), || {
        t.curl("client", "http://10.96.0.10/").ok().filter(|b| b == "a" || b == "b")
    });
    let s = t.status("node-1");
    assert_eq!(s["metrics"]["agent"], format!("{NODE1}:9962"), "{} {}", s["metrics"], s["errors"]);
    assert_eq!(s["metrics"]["hubble"], format!("{NODE1}:9965"));
    // Plain GET (no OpenMetrics Accept): the classic format, from the node's address only.
    let text = t.curl("prom", &format!("http://{NODE1}:9962/metrics")).expect("agent metrics");
    assert!(text.contains("# TYPE sluice_reconcile_duration_seconds histogram"), "{text}");
    assert!(
        t.curl("prom", &format!("http://{NODE2}:9962/metrics")).expect("node-2").contains("sluice_bpf_map_entries")
    );

    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: hubble\n  static_configs: [{{targets: ['{NODE1}:9965', '{NODE2}:9965']}}]\n- job_name: sluice\n  static_configs: [{{targets: ['{NODE1}:9962', '{NODE2}:9962']}}]\n"
        ),
    )
    .expect("write");
    let data = dir.path().join("tsdb");
    let argv: Vec<String> = [
        "prometheus",
        &format!("--config.file={}", cfg.display()),
        &format!("--storage.tsdb.path={}", data.display()),
        "--web.listen-address=127.0.0.1:9090",
    ]
    .map(String::from)
    .to_vec();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let _prom = KillOnDrop(
        t.lab.command("prom", &argv).expect("command").stdout(Stdio::null()).stderr(log).spawn().expect("prometheus"),
    );
    let api = |path: &str| -> Option<Value> {
        let body = t.curl("prom", &format!("http://127.0.0.1:9090{path}")).ok()?;
        serde_json::from_str(&body).ok()
    };
    eventually("Prometheus scrapes all four targets", Duration::from_secs(30), || {
        let v = api("/api/v1/targets")?;
        let up = v["data"]["activeTargets"].as_array()?.iter().filter(|t| t["health"] == "up").count();
        (up == 4).then_some(())
    });
    // Traffic while Prometheus watches, so rates over the window have something to show;
    // HTTP requests through node-1's L7 proxy: 5 allowed, 5 refused.
    for i in 0..10 {
        let _ = t.curl("client", "http://10.96.0.10/");
        let path = if i % 2 == 0 { "ok" } else { "no" };
        let _ = t.curl("client", &format!("http://{}:8080/{path}", echo.ip));
        std::thread::sleep(Duration::from_millis(300));
    }
    let query = |q: &str| -> Option<Value> { api(&format!("/api/v1/query?query={}", encode(q))) };
    let series =
        |q: &str| -> usize { query(q).and_then(|v| v["data"]["result"].as_array().map(Vec::len)).unwrap_or(0) };
    eventually("the client's flows counted on node-1", Duration::from_secs(20), || {
        let q = format!(
            "hubble_flows_processed_total{{instance=\"{NODE1}:9965\",type=\"Trace\",subtype=\"to-stack\",verdict=\"FORWARDED\",protocol=\"TCP\"}} >= 10"
        );
        (series(&q) == 1).then_some(())
    });
    assert_eq!(
        series(&format!("hubble_port_distribution_total{{instance=\"{NODE1}:9965\",protocol=\"TCP\",port=\"8080\"}}")),
        1
    );
    // Hubble's http metrics: every request, the responses by status, their durations.
    eventually("the proxied requests counted", Duration::from_secs(20), || {
        let q = format!(
            "hubble_http_requests_total{{instance=\"{NODE1}:9965\",method=\"GET\",protocol=\"HTTP/1.1\",reporter=\"server\"}} >= 10"
        );
        (series(&q) == 1).then_some(())
    });
    assert_eq!(series("hubble_http_responses_total{method=\"GET\",status=\"200\",reporter=\"server\"} >= 5"), 1);
    assert_eq!(series("hubble_http_request_duration_seconds_count{method=\"GET\",reporter=\"server\"} >= 5"), 1);
    assert_eq!(
        series("histogram_quantile(0.99, rate(hubble_http_request_duration_seconds_bucket[1m])) > 0"),
        1,
        "durations land in buckets"
    );
    assert!(series("sluice_kernel_objects{backend=\"iptables\",kind=\"rules\"} > 0") >= 1);
    assert_eq!(
        series(&format!(
            "sluice_feature_served{{instance=\"{NODE1}:9962\",feature=\"flows\",backend=\"iptables\"}} == 1"
        )),
        1
    );
    assert_eq!(series("sluice_services == 1"), 2, "both nodes read the one Service");

    // Every dashboard query is valid PromQL over these metrics; the ones about what the lab
    // does (flows, programming, kernel objects, features) return data.
    let dash: Value = serde_json::from_str(include_str!("../../deploy/grafana/sluice-dashboard.json")).expect("json");
    let mut checked = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr").replace("$instance", ".*");
            let v = eventually(&format!("answer to {expr}"), Duration::from_secs(10), || query(&expr));
            assert_eq!(v["status"], "success", "{}: {expr}: {v}", panel["title"]);
            let must_have_data = [
                "hubble_flows_processed_total",
                "sluice_reconcile_duration_seconds_bucket",
                "sluice_kernel_objects",
                "sluice_feature_served",
                "hubble_tcp_flags_total",
                "hubble_port_distribution_total",
            ];
            if must_have_data.iter().any(|m| expr.contains(m)) {
                eventually(&format!("data for {expr}"), Duration::from_secs(15), || (series(&expr) > 0).then_some(()));
            }
            checked += 1;
        }
    }
    assert!(checked >= 14, "{checked} queries");
    let ebpf_maps = series(&format!("sluice_bpf_map_capacity{{instance=\"{NODE2}:9962\",map=\"sluice_svc\"}} > 0"));
    let ebpf = t.status("node-2")["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|b| b["id"] == "ebpf" && !b["serving"].as_array().is_none_or(Vec::is_empty));
    // This machine's kernel runs eBPF (the eBPF suites need it too): node-2 reports its maps.
    assert!(ebpf, "eBPF serves on node-2: {}", t.status("node-2")["backends"]);
    assert_eq!(ebpf_maps, 1, "the Service map's fill is reported on node-2");
    assert_eq!(series(&format!("sluice_bpf_map_entries{{instance=\"{NODE2}:9962\",map=\"sluice_svc\"}} > 0")), 1);
}
