//! `cargo xtask demo`: the main job on a local virtual cluster, narrated.

use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo, root};

const LAB: &str = "demo";

pub(crate) fn lab() -> Command {
    let mut c = Command::new(root().join("target/debug/sluice-lab"));
    c.env("SLUICE_LAB", LAB).env("SLUICE_BIN_DIR", root().join("target/debug"));
    c
}

/// `sluice-lab curl` from `from` (a pod, node or outside host), quietly: the demo's own traffic.
pub(crate) fn curl(from: &str, url: &str, timeout_ms: u32) -> anyhow::Result<std::process::Output> {
    let t = timeout_ms.to_string();
    Ok(lab().args(["exec", from, "--", "sluice-lab", "curl", "--timeout-ms", &t, url]).output()?)
}

pub(crate) fn step(title: &str, args: &[&str]) -> anyhow::Result<String> {
    println!("\n$ sluice-lab {}", args.join(" "));
    let out = lab().args(args).output().with_context(|| format!("running sluice-lab {args:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{title} failed");
    }
    Ok(text)
}

pub fn run_demo() -> anyhow::Result<()> {
    println!("== sluice demo: pod networking on a 2-node virtual cluster ==");
    println!(
        "Nodes, pods and the outside host are network namespaces (sl-demo--*); the machine's own network is untouched."
    );
    step("bring up the lab", &["up", "--nodes", "2"])?;
    step("pod a on node-1", &["pod", "add", "node-1", "a", "--serve", "8080", "--labels", "app=echo"])?;
    step("pod b on node-2", &["pod", "add", "node-2", "b", "--serve", "8080", "--labels", "app=echo"])?;
    step("an outside host", &["external", "add", "world", "--serve", "80"])?;
    step("lab status", &["status"])?;
    println!("\n-- cross-node pod-to-pod: each pod asks the other for its name --");
    let ab = step("a -> b", &["exec", "a", "--", "sluice-lab", "curl", "http://10.244.2.2:8080/"])?;
    let ba = step("b -> a", &["exec", "b", "--", "sluice-lab", "curl", "http://10.244.1.2:8080/"])?;
    if ab.trim() != "b" || ba.trim() != "a" {
        bail!("cross-node answers were {ab:?} and {ba:?}, expected \"b\" and \"a\"");
    }
    println!("\n-- source addresses: pod-to-pod keeps the pod IP; traffic leaving the cluster is masqueraded --");
    let src = step("b sees a as", &["exec", "a", "--", "sluice-lab", "curl", "http://10.244.2.2:8080/client"])?;
    let ext = step("world sees a as", &["exec", "a", "--", "sluice-lab", "curl", "http://198.51.100.201:80/client"])?;
    if src.trim() != "10.244.1.2" || ext.trim() != "198.51.100.11" {
        bail!(
            "unexpected source addresses: pod-to-pod {src:?} (want 10.244.1.2), to world {ext:?} (want node-1's 198.51.100.11)"
        );
    }
    println!("\n-- a Service: ClusterIP 10.96.0.10 and NodePort 30080 over both pods (eBPF on this kernel) --");
    let svc = std::env::temp_dir().join("sluice-demo-service.yaml");
    std::fs::write(
        &svc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  selector: {app: echo}\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]\n",
    )?;
    step("apply the Service", &["apply", &svc.display().to_string()])?;
    step("a client pod on node-1", &["pod", "add", "node-1", "client"])?;
    let _ = std::fs::remove_file(&svc);
    let mut answers = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let out = curl("client", "http://10.96.0.10/", 500)?;
        if out.status.success() {
            answers.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        if answers.len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("pod client -> http://10.96.0.10/ answered by: {answers:?}");
    if answers.len() != 2 {
        bail!("the ClusterIP did not balance over both pods: {answers:?}");
    }
    // node-2's agent picks the Service up on its own poll: give it a moment.
    let mut np = String::new();
    for _ in 0..100 {
        let out = curl("world", "http://198.51.100.12:30080/", 500)?;
        if out.status.success() {
            np = String::from_utf8_lossy(&out.stdout).trim().to_string();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("world -> http://198.51.100.12:30080/ (NodePort on node-2, eBPF at its eth0) answered by: {np:?}");
    if np != "a" && np != "b" {
        bail!("the NodePort did not answer (got {np:?})");
    }
    let host = step(
        "a host process on node-1 -> the ClusterIP (socket LB: connect() goes straight to a pod)",
        &["exec", "node-1", "--", "sluice-lab", "curl", "http://10.96.0.10/"],
    )?;
    if host.trim() != "a" && host.trim() != "b" {
        bail!("the host process did not reach the ClusterIP (got {host:?})");
    }
    step("who serves what on node-1", &["exec", "node-1", "--", "sluice", "service", "list"])?;
    step("the eBPF service map on node-1", &["exec", "node-1", "--", "sluice", "bpf", "lb", "list"])?;

    bad_input()?;
    crate::demo_policy::policy()?;
    live_switch()?;
    flows()?;
    crate::demo_policy::l7()?;
    crate::demo_migrate::migration()?;

    println!("\n-- what the agent on node-1 reports --");
    step("node-1 status", &["exec", "node-1", "--", "sluice", "status"])?;
    println!("\n== demo done: pods on two nodes reached each other through sluice-cni and the agents' routes,");
    println!("   a Service balanced over them on eBPF, hostile Services were refused by name beside it,");
    println!("   a NetworkPolicy let only the client through (also via the Service) and named itself in the trace,");
    println!("   then node-1 moved to iptables live without a failed connection, showed its flows Hubble-style,");
    println!(
        "   let the client GET /public and nothing else through its L7 proxy (which outlived a crash of the agent),"
    );
    println!("   and node-2 compared kube-proxy's rules with its own before a cutover ==");
    Ok(())
}

/// Flows on node-1 (now on iptables: conntrack events name the Service each connection used)
/// and node-2 (eBPF: its programs' traces), read from their Observer APIs as `hubble observe`
/// prints them.
fn flows() -> anyhow::Result<()> {
    println!(
        "\n-- flows: node-1's Observer API (Hubble's wire format, root-only socket), read with `sluice observe` --"
    );
    for _ in 0..3 {
        let _ = curl("client", "http://10.96.0.10/", 1000)?;
    }
    let out = step(
        "the client's connections to the Service",
        &["exec", "node-1", "--", "sluice", "observe", "--to-service", "default/echo", "--last", "3"],
    )?;
    if !out.contains("(service default/echo)") || !out.contains("FORWARDED") {
        bail!("node-1 showed no forwarded flow to default/echo: {out:?}");
    }
    step(
        "the same as JSON, one GetFlowsResponse a line",
        &["exec", "node-1", "--", "sluice", "observe", "--to-service", "default/echo", "--last", "1", "-o", "json"],
    )?;
    // node-2 stayed on eBPF: its programs trace the world's NodePort connections on eth0.
    for _ in 0..3 {
        let _ = curl("world", "http://198.51.100.12:30080/", 1000)?;
    }
    let out = step(
        "node-2 (eBPF): the world's NodePort connections, traced arriving on its eth0 with the backend chosen",
        &[
            "exec",
            "node-2",
            "--",
            "sluice",
            "observe",
            "--to-service",
            "default/echo",
            "--from-identity",
            "2",
            "--last",
            "2",
        ],
    )?;
    if !out.contains("from-network") {
        bail!("node-2 showed no from-network trace of the NodePort connections: {out:?}");
    }
    println!("\n-- metrics: what Prometheus scrapes from node-1 (Hubble's on :9965, the agent's on :9962) --");
    let mut shown = 0;
    for (url, prefixes) in [
        ("http://198.51.100.11:9965/metrics", &["hubble_flows_processed_total", "hubble_port_distribution_total"][..]),
        (
            "http://198.51.100.11:9962/metrics",
            &["sluice_reconcile_duration_seconds_count", "sluice_feature_served{feature=\"cluster-ip\""][..],
        ),
    ] {
        let out = lab().args(["exec", "world", "--", "sluice-lab", "curl", url]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        for l in text.lines().filter(|l| prefixes.iter().any(|p| l.starts_with(p))) {
            println!("  {l}");
            shown += 1;
        }
    }
    if shown == 0 {
        bail!("node-1 served no flow or agent metrics");
    }
    Ok(())
}

/// Hostile objects next to a working Service: refused by name, nothing else disturbed.
fn bad_input() -> anyhow::Result<()> {
    println!("\n-- bad input: an intruder on web's ClusterIP and a Service on loopback, next to web --");
    let bad = std::env::temp_dir().join("sluice-demo-bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: aaa-intruder, namespace: default}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: loopy, namespace: default}\nspec: {clusterIP: 127.0.0.1, ports: [{port: 80}]}\n",
    )?;
    step("apply them", &["apply", &bad.display().to_string()])?;
    let mut rejected = String::new();
    for _ in 0..50 {
        let out = lab().args(["exec", "node-1", "--", "sluice", "status"]).output()?;
        rejected = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("rejected:"))
            .collect::<Vec<_>>()
            .join("\n");
        if rejected.contains("loopy") && rejected.contains("aaa-intruder") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!("$ sluice-lab exec node-1 -- sluice status | grep rejected\n{rejected}");
    if !(rejected.contains("loopy") && rejected.contains("aaa-intruder")) {
        bail!("the agent did not report the bad Services: {rejected:?}");
    }
    let web = step(
        "web still answers on its ClusterIP",
        &["exec", "client", "--", "sluice-lab", "curl", "http://10.96.0.10/"],
    )?;
    if web.trim() != "a" && web.trim() != "b" {
        bail!("web stopped answering next to bad input (got {web:?})");
    }
    step("remove them", &["delete", &bad.display().to_string()])?;
    let _ = std::fs::remove_file(&bad);
    Ok(())
}

/// node-1 moves every Service feature from eBPF to iptables by an edit of its config file,
/// while a client keeps opening new connections: the engine programs iptables before eBPF lets go.
fn live_switch() -> anyhow::Result<()> {
    println!("\n-- a live dataplane switch on node-1 (eBPF -> iptables), under load, make before break --");
    let cfg = step("node-1's config file", &["exec", "node-1", "--", "sh", "-c", "echo $SLUICE_CONFIG"])?;
    let cfg = std::path::PathBuf::from(cfg.trim());
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg)?)?;
    let load = lab()
        .args(["exec", "client", "--", "sluice-lab", "load", "10.96.0.10:80", "--connections", "4", "--secs", "5"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    v["dataplane"] = "iptables".into();
    println!("(writing dataplane: iptables into {})", cfg.display());
    std::fs::write(&cfg, v.to_string())?;
    let out = load.wait_with_output()?;
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    println!(
        "client -> 10.96.0.10 during the switch: {} connections, {} failed ({:.0} conn/s)",
        r["ok"],
        r["failed"],
        r["conn_per_s"].as_f64().unwrap_or(0.0)
    );
    let status = || -> anyhow::Result<serde_json::Value> {
        let out = lab().args(["exec", "node-1", "--", "sluice", "status", "-o", "json"]).output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let owner = |st: &serde_json::Value| {
        st["plan"]["entries"]
            .as_array()
            .and_then(|es| es.iter().find(|e| e["feature"] == "cluster-ip"))
            .map(|e| e["owner"].to_string())
    };
    let mut st = status()?;
    for _ in 0..50 {
        if owner(&st).as_deref() == Some("\"iptables\"") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        st = status()?;
    }
    println!("$ sluice-lab exec node-1 -- sluice status -o json   (the last transition's first steps)");
    for s in st["config"]["last_transition"].as_array().into_iter().flatten().take(4) {
        let f = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
        println!(
            "  {} {} by {}: {}",
            f(&s["step"]["op"]),
            f(&s["step"]["feature"]),
            f(&s["step"]["owner"]),
            f(&s["result"])
        );
    }
    step("the plan now", &["exec", "node-1", "--", "sluice", "plan"])?;
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    crate::run(cargo().args(["build", "--workspace", "--bins"]))?;
    if !crate::nix_is_root() {
        bail!("the demo creates network namespaces and needs root");
    }
    let _ = lab().arg("down").output(); // a previous demo that was interrupted
    let res = run_demo();
    println!("\n$ sluice-lab down");
    let down = lab().arg("down").status();
    res?;
    if !down.map(|s| s.success()).unwrap_or(false) {
        bail!("tearing down the demo lab failed");
    }
    Ok(())
}
