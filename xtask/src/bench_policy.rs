//! `cargo xtask bench policy`: what network policy costs, per dataplane, side by side in one
//! run: the new-connection rate between two pods with no policy, with N policies selecting the
//! server and M identities installed, and with the policies removed again; the time from a
//! policy change (and from a pod label change) to enforcement; the agent's RSS at that scale.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::Value;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn json(cmd: &mut Command) -> anyhow::Result<Value> {
    let out = cmd.output().context("running sluice-lab")?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{:?}: not JSON", cmd))
}

struct Opts {
    dataplanes: Vec<String>,
    policies: usize,
    identities: usize,
    secs: u64,
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let mut o =
        Opts { dataplanes: vec!["iptables".into(), "ebpf".into()], policies: 1000, identities: 10_000, secs: 5 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        let num = || v.parse::<usize>().with_context(|| format!("{a} {v:?} is not a number"));
        match a.as_str() {
            "--dataplane" => o.dataplanes = v.split(',').map(str::to_string).collect(),
            "--policies" => o.policies = num()?,
            "--identities" => o.identities = num()?,
            "--secs" => o.secs = num()? as u64,
            other => bail!(
                "unknown option {other:?}; accepted: --dataplane iptables,ebpf --policies N --identities N --secs S"
            ),
        }
    }
    for d in &o.dataplanes {
        if !["iptables", "ebpf", "auto"].contains(&d.as_str()) {
            bail!("--dataplane {d:?}: accepted: iptables, ebpf, auto");
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    crate::bench::in_bench_lab("policy", |lab, out_dir| {
        let mut results = Vec::new();
        for dp in &o.dataplanes {
            eprintln!("bench policy: dataplane {dp}");
            results.push(one(lab, out_dir, dp, &o)?);
        }
        println!(
            "\npolicy benchmark: {} policies selecting the server, {} identities; new connections/s client -> server (one node)",
            o.policies, o.identities
        );
        println!(
            "dataplane  no-policy  with-policies  ratio  policies-removed  ratio  policy-change->enforced  label-change->enforced  agent-RSS"
        );
        for r in &results {
            println!(
                "{:<9}  {:>9.0}  {:>13.0}  {:>5.3}  {:>16.0}  {:>5.3}  {:>10} ms / {:>5} ms  {:>10} ms / {:>5} ms  {:>6.1} MB",
                r["dataplane"].as_str().unwrap_or(""),
                r["rate_none"].as_f64().unwrap_or(0.0),
                r["rate_policies"].as_f64().unwrap_or(0.0),
                r["ratio"].as_f64().unwrap_or(0.0),
                r["rate_removed"].as_f64().unwrap_or(0.0),
                r["ratio_removed"].as_f64().unwrap_or(0.0),
                r["policy_deny_ms"]["median"],
                r["policy_allow_ms"]["median"],
                r["label_deny_ms"]["median"],
                r["label_allow_ms"]["median"],
                r["agent_rss_mb"].as_f64().unwrap_or(0.0),
            );
        }
        for r in &results {
            let max = |k: &str| r[k]["max"].as_u64().unwrap_or(0);
            println!(
                "{:<9}  change -> enforced, worst of {FLIP_ROUNDS}: policy {} / {} ms, label {} / {} ms",
                r["dataplane"].as_str().unwrap_or(""),
                max("policy_deny_ms"),
                max("policy_allow_ms"),
                max("label_deny_ms"),
                max("label_allow_ms")
            );
        }
        for r in &results {
            let a = &r["agent_pass_ms"];
            let f = |k: &str, m: &str| a[k][m].as_f64().map_or("?".into(), |v| format!("{v:.1}"));
            println!(
                "{:<9}  agent's pass per change ({} passes), median / worst: read {} / {} ms (source {} / {}, translate {} / {}), policy {} / {} ms (compile {} / {}: inputs {}, identities {}, context {}), flows' directory {} / {} ms, kernel {} / {} ms",
                r["dataplane"].as_str().unwrap_or(""),
                a["read_ms"]["passes"],
                f("read_ms", "median"),
                f("read_ms", "max"),
                f("source_ms", "median"),
                f("source_ms", "max"),
                f("translate_ms", "median"),
                f("translate_ms", "max"),
                f("policy_ms", "median"),
                f("policy_ms", "max"),
                f("compile_ms", "median"),
                f("compile_ms", "max"),
                f("inputs_ms", "median"),
                f("identities_ms", "median"),
                f("context_ms", "median"),
                f("flows_ms", "median"),
                f("flows_ms", "max"),
                f("kernel_ms", "median"),
                f("kernel_ms", "max")
            );
        }
        println!(
            "(change -> enforced: median of {FLIP_ROUNDS} rounds, deny / allow; from the start of the `sluice-lab delete|apply|pod label` that writes the manifest until the first probe (one starts every 5 ms) with the new verdict; the agent is woken by inotify, its 100 ms poll is the fallback)"
        );
        std::fs::write(out_dir.join("policy.json"), serde_json::to_string_pretty(&results)?)?;
        Ok(())
    })
}

/// Rounds of the change-to-enforcement flips.
const FLIP_ROUNDS: usize = 5;

fn rate(lab: &dyn Fn() -> Command, server: &str, secs: u64) -> anyhow::Result<f64> {
    let v = json(lab().args(["exec", "client", "--", "sluice-lab", "load", &format!("{server}:80")]).args([
        "--secs",
        &secs.to_string(),
        "--connections",
        "16",
    ]))?;
    if v["failed"].as_u64().unwrap_or(0) > 0 {
        bail!("load to {server}:80 had {} failed connections", v["failed"]);
    }
    v["conn_per_s"].as_f64().context("conn_per_s")
}

/// ms from `act` until the client sees the server turn `until` (silent or answer).
fn flip(
    lab: &dyn Fn() -> Command,
    server: &str,
    until: &str,
    act: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let child = lab()
        .args(["exec", "client", "--", "sluice-lab", "flip-watch", &format!("{server}:80"), "--until", until])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let t0 = now_ms();
    act()?;
    let out = child.wait_with_output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("flip-watch output")?;
    Ok(v["flipped_unix_ms"].as_u64().context("flipped_unix_ms")?.saturating_sub(t0))
}

fn wait_policy(lab: &dyn Fn() -> Command, policies: usize, identities: usize) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        let st = json(lab().args(["exec", "node-1", "--", "sluice", "status", "-o", "json"]))?;
        let p = &st["policy"];
        if p["policies"].as_array().map(Vec::len) == Some(policies)
            && p["identities"].as_u64() >= Some(identities as u64)
            && st["errors"].as_array().is_some_and(|e| e.is_empty())
        {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("the agent did not report {policies} policies and {identities} identities within 300 s: {p}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn one(lab: &dyn Fn() -> Command, out_dir: &std::path::Path, dp: &str, o: &Opts) -> anyhow::Result<Value> {
    let cfg = out_dir.join("policy-node.yaml");
    std::fs::write(&cfg, format!("dataplane: {dp}\nsource: {{poll_interval_ms: 100}}\n"))?;
    let _ = lab().arg("down").output();
    // The agent logs where each change's pass spends its time (read, policy, kernel).
    crate::run(
        lab()
            .env("SLUICE_LOG", "info,sluice::daemon=debug")
            .args(["up", "--nodes", "1", "--node-config"])
            .arg(format!("node-1={}", cfg.display())),
    )?;
    crate::run(lab().args(["pod", "add", "node-1", "server", "--labels", "role=server", "--serve", "80"]))?;
    crate::run(lab().args(["pod", "add", "node-1", "client", "--labels", "role=client"]))?;
    let st = json(lab().args(["-o", "json", "status"]))?;
    let server = st["pods"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "server"))
        .and_then(|p| p["ip"].as_str())
        .context("server ip")?
        .to_string();
    let rate_none = rate(lab, &server, o.secs)?;

    // Identities: pods elsewhere in the cluster, each with its own label set.
    let mut ids = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n");
    for i in 0..o.identities {
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 244, 128, 0)) + i as u32);
        ids += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: bench, labels: {{id: \"{i}\"}}}}\nspec: {{nodeName: node-9, containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}}}\n"
        );
    }
    let ids_file = out_dir.join("policy-identities.yaml");
    std::fs::write(&ids_file, ids)?;
    // Policies: each selects the server and allows one of those identities; one allows the client.
    let mut pols = String::new();
    for i in 0..o.policies {
        pols += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{role: server}}}}\n  ingress: [{{from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{id: \"{}\"}}}}}}], ports: [{{port: 80}}]}}]\n",
            i % o.identities.max(1)
        );
    }
    let pol_file = out_dir.join("policy-many.yaml");
    std::fs::write(&pol_file, pols)?;
    let client_file = out_dir.join("policy-client.yaml");
    std::fs::write(
        &client_file,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-client, namespace: default}\nspec:\n  podSelector: {matchLabels: {role: server}}\n  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: 80}]}]\n",
    )?;
    crate::run(lab().arg("apply").arg(&ids_file))?;
    crate::run(lab().arg("apply").arg(&pol_file))?;
    crate::run(lab().arg("apply").arg(&client_file))?;
    wait_policy(lab, o.policies + 1, o.identities)?;
    let rate_policies = rate(lab, &server, o.secs)?;

    // Rounds of the four flips: one figure would be one sample of a noisy machine.
    let log = lab_dir().join("nodes/node-1/agent.log");
    let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let mut samples: [Vec<u64>; 4] = Default::default();
    for _ in 0..FLIP_ROUNDS {
        samples[0].push(flip(lab, &server, "silent", || crate::run(lab().arg("delete").arg(&client_file)))?);
        samples[1].push(flip(lab, &server, "answer", || crate::run(lab().arg("apply").arg(&client_file)))?);
        samples[2]
            .push(flip(lab, &server, "silent", || crate::run(lab().args(["pod", "label", "client", "role=other"])))?);
        samples[3]
            .push(flip(lab, &server, "answer", || crate::run(lab().args(["pod", "label", "client", "role=client"])))?);
    }
    let [policy_deny_ms, policy_allow_ms, label_deny_ms, label_allow_ms] = samples.map(|mut v| {
        v.sort_unstable();
        serde_json::json!({"median": v[v.len() / 2], "max": v[v.len() - 1], "samples": v})
    });

    let agent_ms = pass_times(&log, log_start);

    let st = json(lab().args(["-o", "json", "status"]))?;
    let pid = st["nodes"][0]["agent_pid"].as_u64().context("agent pid")?;
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("VmRSS")?;

    crate::run(lab().arg("delete").arg(&pol_file))?;
    crate::run(lab().arg("delete").arg(&client_file))?;
    wait_policy(lab, 0, o.identities)?;
    let rate_removed = rate(lab, &server, o.secs)?;
    crate::run(lab().arg("down"))?;
    Ok(serde_json::json!({
        "dataplane": dp,
        "policies": o.policies,
        "identities": o.identities,
        "rate_none": rate_none,
        "rate_policies": rate_policies,
        "rate_removed": rate_removed,
        "ratio": rate_policies / rate_none,
        "ratio_removed": rate_policies / rate_removed,
        "policy_deny_ms": policy_deny_ms,
        "policy_allow_ms": policy_allow_ms,
        "label_deny_ms": label_deny_ms,
        "label_allow_ms": label_allow_ms,
        "agent_rss_mb": rss_kb as f64 / 1024.0,
        "agent_pass_ms": agent_ms,
    }))
}

/// The bench lab's directory (as `sluice-lab` finds it).
fn lab_dir() -> std::path::PathBuf {
    std::env::var_os("SLUICE_LAB_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run/sluice-lab".into())
        .join("bench")
}

/// The agent's share of the flips: its "pass after a source change" debug lines written after
/// `from` (read, policy, kernel; median and worst of each), so a slow figure says whether the
/// agent or the rest (the lab command, the probes) grew.
fn pass_times(log: &std::path::Path, from: u64) -> Value {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
    let field = |line: &str, key: &str| -> Option<f64> {
        // " key=": `ms=` must not match the end of `read_ms=`.
        let at = line.find(&format!(" {key}="))? + key.len() + 2;
        let rest = &line[at..];
        rest.split(|c: char| c.is_whitespace() || c == ',').next()?.parse().ok()
    };
    let mut out = serde_json::Map::new();
    // Within read: the source's own read, and the translation of its objects.
    let keys = [
        ("read_ms", "pass after a source change", "read_ms"),
        ("policy_ms", "pass after a source change", "policy_ms"),
        ("flows_ms", "pass after a source change", "flows_ms"),
        ("kernel_ms", "pass after a source change", "kernel_ms"),
        ("source_ms", "source read", "ms"),
        ("translate_ms", "translated", "ms"),
        // Within policy: the compile (inputs, identities, context, endpoints).
        ("compile_ms", "policy compiled", "ms"),
        ("inputs_ms", "policy compiled", "inputs_ms"),
        ("identities_ms", "policy compiled", "identities_ms"),
        ("context_ms", "policy compiled", "context_ms"),
    ];
    for (key, line, name) in keys {
        let mut v: Vec<f64> =
            text.lines().filter(|l| l.contains(&format!(": {line} "))).filter_map(|l| field(l, name)).collect();
        v.sort_by(f64::total_cmp);
        if let (Some(median), Some(max)) = (v.get(v.len() / 2), v.last()) {
            out.insert(key.into(), serde_json::json!({"median": median, "max": max, "passes": v.len()}));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    /// The agent's debug lines as tracing writes them: `ms=` is read as its own field, never as
    /// the end of `read_ms=` or `inputs_ms=`.
    #[test]
    fn pass_times_reads_each_field_by_its_own_name() {
        let log = std::env::temp_dir().join(format!("sluice-pass-times-{}.log", std::process::id()));
        let lines = [
            "2026-12-06T23:00:00Z  INFO sluice::daemon: started",
            "2026-12-06T23:00:01Z DEBUG sluice::daemon::state: source read ms=1.5",
            "2026-12-06T23:00:01Z DEBUG sluice::daemon::state: translated ms=11.25 services=1 rejected=0",
            "2026-12-06T23:00:01Z DEBUG sluice::daemon::policy: policy compiled inputs_ms=7.5 identities_ms=8 context_ms=6 ms=26.5 endpoints=2",
            "2026-12-06T23:00:01Z DEBUG sluice::daemon: pass after a source change generation=3 read_ms=14 policy_ms=28 flows_ms=5.5 kernel_ms=1.5",
        ];
        std::fs::write(&log, format!("skipped ms=99\n{}\n", lines.join("\n"))).expect("write");
        let v = super::pass_times(&log, "skipped ms=99\n".len() as u64);
        let _ = std::fs::remove_file(&log);
        let m = |k: &str| v[k]["median"].as_f64();
        assert_eq!(
            [m("source_ms"), m("translate_ms"), m("compile_ms"), m("inputs_ms"), m("read_ms"), m("kernel_ms")],
            [Some(1.5), Some(11.25), Some(26.5), Some(7.5), Some(14.0), Some(1.5)],
            "{v}"
        );
        assert_eq!(v["read_ms"]["passes"], 1);
    }
}
