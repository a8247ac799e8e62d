//! `cargo xtask bench ...`: benchmarks print ratios measured side by side in one run.

use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo, root};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("cni") => cni(&args[1..]),
        Some("probe") => probe(),
        Some("services") => services(&args[1..]),
        Some("agent") => agent(&args[1..]),
        Some("policy") => crate::bench_policy::run(&args[1..]),
        Some("flows") => flows(&args[1..]),
        Some("l7") => l7(&args[1..]),
        other => bail!("unknown benchmark {other:?}; available: cni, probe, services, agent, policy, flows, l7"),
    }
}

/// Build release binaries, bring up a 1-node lab named "bench", run `body` with a command
/// factory for `sluice-lab` and the output directory, and tear the lab down whatever happens.
pub(crate) fn in_bench_lab(
    what: &str,
    body: impl FnOnce(&dyn Fn() -> Command, &std::path::Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if !crate::nix_is_root() {
        bail!("the {what} benchmark creates network namespaces and needs root");
    }
    // Release builds: the benchmark measures the binaries users would run.
    crate::run(cargo().args(["build", "--release", "-p", "sluice", "-p", "sluice-cni", "-p", "sluice-lab"]))?;
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let rel = root().join("target/release");
    let lab = || {
        let mut c = Command::new(rel.join("sluice-lab"));
        c.env("SLUICE_LAB", "bench").env("SLUICE_BIN_DIR", &rel);
        c
    };
    let _ = lab().arg("down").output();
    let res = body(&lab, &out_dir);
    let down = lab().arg("down").output().context("tearing down the bench lab")?;
    res?;
    if !down.status.success() {
        bail!("bench lab teardown failed: {}", String::from_utf8_lossy(&down.stderr));
    }
    println!("results written to {}", out_dir.join(format!("{what}.json")).display());
    Ok(())
}

/// The services and flows benchmarks' node: one node on iptables (`dataplane: iptables`), an
/// echo backend pod on 8080 (with `backend_args`, e.g. labels) and a client pod.
fn bench_node(lab: &dyn Fn() -> Command, out_dir: &std::path::Path, backend_args: &[&str]) -> anyhow::Result<()> {
    bench_node_on(lab, out_dir, backend_args, "iptables")
}

fn bench_node_on(
    lab: &dyn Fn() -> Command,
    out_dir: &std::path::Path,
    backend_args: &[&str],
    dataplane: &str,
) -> anyhow::Result<()> {
    let cfg = out_dir.join("bench-node.yaml");
    std::fs::write(&cfg, format!("dataplane: {dataplane}\n"))?;
    crate::run(lab().args(["up", "--nodes", "1", "--node-config"]).arg(format!("node-1={}", cfg.display())))?;
    crate::run(lab().args(["pod", "add", "node-1", "bench-backend", "--serve", "8080"]).args(backend_args))?;
    crate::run(lab().args(["pod", "add", "node-1", "bench-client"]))
}

fn cni(args: &[String]) -> anyhow::Result<()> {
    in_bench_lab("cni", |lab, out_dir| {
        crate::run(lab().args(["up", "--nodes", "1"]))?;
        crate::run(lab().args(["bench-cni", "--json"]).arg(out_dir.join("cni.json")).args(args))
    })
}

/// How long `sluice probe` takes (every capability, with nothing left behind).
fn probe() -> anyhow::Result<()> {
    if !crate::nix_is_root() {
        bail!("probing BPF needs root");
    }
    crate::run(cargo().args(["build", "--release", "-p", "sluice"]))?;
    let bin = root().join("target/release/sluice");
    let mut probe_ms = Vec::new();
    let mut wall_ms = Vec::new();
    for _ in 0..30 {
        let t = std::time::Instant::now();
        let out = Command::new(&bin).args(["probe", "-o", "json"]).output().context("running sluice probe")?;
        wall_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let text = String::from_utf8_lossy(&out.stdout);
        let ms = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("\"probe_ms\": "))
            .and_then(|v| v.trim_end_matches(',').parse::<f64>().ok())
            .context("no probe_ms in sluice probe output")?;
        probe_ms.push(ms);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (p50, pmax) = med(&mut probe_ms);
    let (w50, wmax) = med(&mut wall_ms);
    println!(
        "sluice probe, 30 runs: probing p50 {p50:.1} ms (max {pmax:.1} ms); whole command p50 {w50:.1} ms (max {wmax:.1} ms)"
    );
    Ok(())
}

/// Service programming and connection rates: sluice's iptables backend vs the kube-proxy
/// reference ruleset, each iptables variant, N services of 10 endpoints (plus N = 0).
/// Options: `--backend B` (ebpf, ebpf-classic, iptables, kube-proxy-iptables; repeatable), `--services 100,1000,10000`,
/// `--variants legacy,nft`, `--restore-timeout-s S`.
fn services(args: &[String]) -> anyhow::Result<()> {
    if !crate::nix_is_root() {
        bail!("the services benchmark creates network namespaces and needs root");
    }
    let mut backends = Vec::new();
    let mut counts = "0,100,1000,10000".to_string();
    let mut variants = "legacy,nft".to_string();
    let mut timeout = "300".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--backend" => backends.push(val()?),
            "--services" => counts = format!("0,{}", val()?),
            "--variants" => variants = val()?,
            "--restore-timeout-s" => timeout = val()?,
            other => bail!(
                "unknown option {other:?}; accepted: --backend B, --services N,N, --variants legacy,nft, --restore-timeout-s S"
            ),
        }
    }
    if backends.is_empty() {
        backends = vec!["ebpf".into(), "iptables".into(), "kube-proxy-iptables".into()];
    }
    const BACKENDS: [&str; 4] = ["ebpf", "ebpf-classic", "iptables", "kube-proxy-iptables"];
    if let Some(b) = backends.iter().find(|b| !BACKENDS.contains(&b.as_str())) {
        bail!(
            "--backend {b:?}: available: {} (ebpf attaches as the node would, TCX where the kernel has it; ebpf-classic always with classic tc; both: also compared in alternation)",
            BACKENDS.join(", ")
        );
    }
    let peer = root().join("../shared/bench/kube-proxy-iptables.py");
    if !peer.is_file() {
        bail!("reference peer {} not found (it ships in ../shared/bench)", peer.display());
    }
    in_bench_lab("services", |lab, out_dir| {
        // The node's own agent stays off eBPF: the benchmark attaches its own datapath.
        bench_node(lab, out_dir, &[])?;
        // The node's agent would resync its own rules in the middle of the measurements.
        let st = String::from_utf8(lab().args(["status", "-o", "json"]).output()?.stdout)?;
        if let Some(pid) =
            st.split("\"agent_pid\": ").nth(1).and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        {
            crate::run(Command::new("kill").arg(pid))?;
        }
        crate::run(
            lab()
                .args([
                    "exec",
                    "node-1",
                    "--",
                    "sluice-lab",
                    "bench-services",
                    "--services",
                    &counts,
                    "--variants",
                    &variants,
                ])
                .args(["--backends", &backends.join(","), "--restore-timeout-s", &timeout, "--peer-script"])
                .arg(&peer)
                .arg("--json")
                .arg(out_dir.join("services.json")),
        )?;
        // The whole agent's memory per sluice backend and N (issue: `agent_rss_mb` per record).
        let path = out_dir.join("services.json");
        let mut records: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        for r in records.as_array_mut().into_iter().flatten() {
            let n = r["services"].as_u64().unwrap_or(0) as usize;
            let cfg = match (r["backend"].as_str(), r["variant"].as_str()) {
                (Some("ebpf"), _) => "dataplane: ebpf\n".to_string(),
                (Some("iptables"), Some(v)) => format!("dataplane: iptables\niptables:\n  variant: {v}\n"),
                _ => continue,
            };
            if n == 0 {
                continue;
            }
            let (_, rss_mb) = measure_agent(lab, out_dir, n, &cfg)?;
            println!("agent RSS, {} {} N={n}: {rss_mb:.1} MB", r["backend"], r["variant"]);
            r["agent_rss_mb"] = serde_json::json!((rss_mb * 10.0).round() / 10.0);
        }
        std::fs::write(&path, serde_json::to_string_pretty(&records)?)?;
        Ok(())
    })
}

/// The whole agent with N Services (10 endpoints each, EndpointSlices as a cluster serves them)
/// from its manifest source: time until everything is programmed, and the agent's RSS.
/// Options: `--services N` (default 10000), `--dataplane auto|ebpf|iptables` (default auto).
fn agent(args: &[String]) -> anyhow::Result<()> {
    let mut n: usize = 10_000;
    let mut dataplane = "auto".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--services" => {
                let v = val()?;
                n = v.parse().with_context(|| format!("--services {v:?} is not a number"))?;
            }
            "--dataplane" => dataplane = val()?,
            other => bail!("unknown option {other:?}; accepted: --services N, --dataplane auto|ebpf|iptables"),
        }
    }
    if !["auto", "ebpf", "iptables"].contains(&dataplane.as_str()) {
        bail!("--dataplane {dataplane:?}: accepted: auto, ebpf, iptables");
    }
    in_bench_lab("agent", |lab, out_dir| {
        let (programmed, rss_mb) = measure_agent(lab, out_dir, n, &format!("dataplane: {dataplane}\n"))?;
        let report = format!(
            "{{\"services\": {n}, \"dataplane\": \"{dataplane}\", \"apply_to_programmed_ms\": {:.0}, \"agent_rss_mb\": {rss_mb:.1}}}",
            programmed.as_secs_f64() * 1000.0
        );
        println!(
            "agent ({dataplane}) with {n} Services (10 endpoints each): programmed {:.1} s after apply, RSS {rss_mb:.1} MB",
            programmed.as_secs_f64()
        );
        std::fs::write(out_dir.join("agent.json"), report)?;
        Ok(())
    })
}

/// Bring up a 1-node lab whose agent runs with `node_cfg`, apply N Services, wait until the
/// agent reports them programmed; returns that time and the RSS 10 s later. Tears the lab down.
fn measure_agent(
    lab: &dyn Fn() -> Command,
    out_dir: &std::path::Path,
    n: usize,
    node_cfg: &str,
) -> anyhow::Result<(std::time::Duration, f64)> {
    let cfg = out_dir.join("agent-node.yaml");
    std::fs::write(&cfg, node_cfg)?;
    let _ = lab().arg("down").output();
    crate::run(lab().args(["up", "--nodes", "1", "--node-config"]).arg(format!("node-1={}", cfg.display())))?;
    let mut y = String::new();
    for i in 0..n {
        let vip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 10)) + i as u32);
        y += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\nspec: {{clusterIP: {vip}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
        );
        y += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}-x, namespace: default, labels: {{kubernetes.io/service-name: svc-{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
        );
        for j in 0..10 {
            let ep = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 245, 0, 2)) + (i * 10 + j) as u32);
            y += &format!("- {{addresses: [{ep}], conditions: {{ready: true}}, nodeName: node-9}}\n");
        }
    }
    let file = out_dir.join(format!("agent-{n}-services.yaml"));
    std::fs::write(&file, y)?;
    let status = || -> anyhow::Result<String> {
        Ok(String::from_utf8(lab().args(["exec", "node-1", "--", "sluice", "status", "-o", "json"]).output()?.stdout)?)
    };
    let start = std::time::Instant::now();
    crate::run(lab().arg("apply").arg(&file))?;
    let want = format!("\"services\": {n},");
    loop {
        if status().is_ok_and(|s| s.contains(&want) && s.contains("\"errors\": []")) {
            break;
        }
        if start.elapsed() > std::time::Duration::from_secs(600) {
            bail!("the agent did not report {n} services programmed within 600 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let programmed = start.elapsed();
    let st = String::from_utf8(lab().args(["status", "-o", "json"]).output()?.stdout)?;
    let pid = st
        .split("\"agent_pid\": ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .context("agent pid")?
        .to_string();
    // Steady state: after a few more reconcile loops with nothing changing.
    std::thread::sleep(std::time::Duration::from_secs(10));
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("VmRSS")?;
    let _ = std::fs::remove_file(&file);
    crate::run(lab().arg("down"))?;
    Ok((programmed, rss_kb as f64 / 1024.0))
}

/// Flow visibility's cost and capacity (integration/src/bench_flows.rs): one node with its
/// agent, a ClusterIP over a backend pod, a client pod.
fn flows(args: &[String]) -> anyhow::Result<()> {
    let mut load_secs = "3".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--load-secs" => load_secs = it.next().cloned().context("--load-secs needs a value")?,
            other => bail!("unknown option {other:?}; accepted: --load-secs S"),
        }
    }
    in_bench_lab("flows", |lab, out_dir| {
        bench_node(lab, out_dir, &["--labels", "app=bench"])?;
        let svc = out_dir.join("flows-service.yaml");
        std::fs::write(
            &svc,
            "apiVersion: v1\nkind: Service\nmetadata: {name: bench, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: bench}\n  ports: [{port: 80, targetPort: 8080}]\n",
        )?;
        crate::run(lab().arg("apply").arg(&svc))?;
        let mut ready = false;
        for _ in 0..100 {
            let out = lab()
                .args([
                    "exec",
                    "bench-client",
                    "--",
                    "sluice-lab",
                    "curl",
                    "--timeout-ms",
                    "1000",
                    "http://10.96.0.10/",
                ])
                .output()?;
            if out.status.success() {
                ready = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if !ready {
            bail!("the bench Service 10.96.0.10:80 never answered");
        }
        crate::run(
            lab()
                .args([
                    "exec",
                    "node-1",
                    "--",
                    "sluice-lab",
                    "bench-flows",
                    "--target",
                    "10.96.0.10:80",
                    "--load-secs",
                    &load_secs,
                    "--json",
                ])
                .arg(out_dir.join("flows.json")),
        )
    })
}

/// Requests through the L7 proxy vs straight to the pod (keep-alive and new connections, 1 and
/// 64 clients, alternating rounds), and the proxy's memory per 1,000 open connections.
fn l7(args: &[String]) -> anyhow::Result<()> {
    let dataplane = match args {
        [] => "iptables",
        [flag, d] if flag == "--dataplane" && (d == "iptables" || d == "ebpf") => d.as_str(),
        _ => bail!(
            "unknown options {args:?}; `cargo xtask bench l7` takes `--dataplane iptables|ebpf` (the redirect: TPROXY or bpf_sk_assign; default iptables)"
        ),
    };
    in_bench_lab("l7", |lab, out_dir| {
        bench_node_on(lab, out_dir, &["--labels", "app=bench-backend"], dataplane)?;
        crate::run(lab().args(["bench-l7", "--json"]).arg(out_dir.join("l7.json")))
    })
}
