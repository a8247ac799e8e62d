//! `sluice migrate apply --nodes A,B,C --via TEMPLATE`: the cluster rollout, one node at a time.
//!
//! For each node, in the order given: `sluice migrate plan` there (a blocker stops the rollout
//! before anything changes on that node), `sluice migrate apply` there (its own verification
//! must pass), then `sluice migrate verify` on a neighbour, which probes the migrated node's
//! NodePorts as a client outside it does. The first failure stops the rollout, naming the node,
//! the step and the ways out; nodes after it are not touched. Every step is the per-node command
//! itself, so a rerun of the same rollout rechecks migrated nodes (apply is idempotent) and goes
//! on where it stopped.
//!
//! How a node is reached is the operator's: `--via` is a shell command prefix with `{node}`
//! (`ssh root@{node}`, `kubectl exec` into the node's agent pod, `sluice-lab exec {node} --`),
//! after which `sluice migrate ... -o json` runs on that node. Node names are checked to be DNS
//! names before they are put into the shell command.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::bail;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::Output;

/// One per-node command's outcome.
#[derive(Debug, Serialize)]
pub struct StepResult {
    /// `plan`, `apply` or `verify`.
    pub step: &'static str,
    /// The node it ran on (verify runs on a neighbour).
    pub on: String,
    pub ok: bool,
    pub seconds: f64,
    /// Why it failed (the command's error, or the report's reason), empty when ok.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The command's own `-o json` report, when it printed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct NodeResult {
    pub node: String,
    pub steps: Vec<StepResult>,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct Rollout {
    pub nodes: Vec<NodeResult>,
    /// Nodes the rollout did not reach (it stopped before them).
    pub not_started: Vec<String>,
    pub passed: bool,
}

/// What `--nodes` and `--via` were given; checked before anything runs.
pub struct Targets {
    pub nodes: Vec<String>,
    pub via: String,
    pub verify_from: Option<String>,
    pub force: bool,
    pub wait: u64,
}

/// A node name as Kubernetes accepts it (RFC 1123 subdomain), the only thing put into `--via`.
fn valid_node(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// Check the targets: every error names the value and what is accepted.
pub fn check(t: &Targets) -> anyhow::Result<()> {
    if t.nodes.is_empty() {
        bail!("--nodes is empty: give the nodes to migrate, in order, comma-separated (--nodes node-1,node-2)");
    }
    for n in t.nodes.iter().chain(t.verify_from.iter()) {
        if !valid_node(n) {
            bail!(
                "node name {n:?} is not a Kubernetes node name (lower-case letters, digits, '-' and '.'; it is put into the --via command)"
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(d) = t.nodes.iter().find(|n| !seen.insert(n.as_str())) {
        bail!("node {d} is listed twice in --nodes: each node is migrated once, in the order given");
    }
    if !t.via.contains("{node}") {
        bail!(
            "--via {:?} does not contain {{node}}: it is the command prefix that runs `sluice` on each node, e.g. --via 'ssh root@{{node}}' or --via 'sluice-lab exec {{node}} --'",
            t.via
        );
    }
    Ok(())
}

/// Where the migrated node's NodePorts are probed from: `--verify-from`, else the next node of
/// the list (the one before it for the last); none for a single node without `--verify-from`.
fn neighbour(t: &Targets, i: usize) -> Option<String> {
    if let Some(v) = &t.verify_from {
        return (v != &t.nodes[i]).then(|| v.clone());
    }
    match t.nodes.len() {
        1 => None,
        n if i + 1 < n => Some(t.nodes[i + 1].clone()),
        _ => Some(t.nodes[i - 1].clone()),
    }
}

/// Run `sluice migrate <args> -o json` on `node`; its progress (stderr) is shown indented as it
/// comes. (exit success, stdout, last stderr lines).
fn remote(via: &str, node: &str, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let script = format!("{} sluice migrate {} -o json", via.replace("{node}", node), args.join(" "));
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running `sh -c {script:?}` for node {node}: {e}"))?;
    let mut stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut tail: Vec<String> = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("    {node}: {line}");
            tail.push(line);
            if tail.len() > 6 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait()?;
    let out = reader.join().unwrap_or_default();
    Ok((status.success(), out, tail.join("\n")))
}

/// One step on one node: its result, with the reason when it failed.
fn run_step(t: &Targets, step: &'static str, on: &str, args: &[&str]) -> StepResult {
    let start = Instant::now();
    let (ok, out, err) = match remote(&t.via, on, args) {
        Ok(r) => r,
        Err(e) => (false, String::new(), e.to_string()),
    };
    let report: Option<serde_json::Value> = serde_json::from_str(&out).ok();
    let mut detail = String::new();
    let mut passed = ok;
    if step == "plan" && !t.force {
        // The plan exits 0 with blockers listed: those stop the rollout before apply. With
        // --force, apply is the one that knows which blockers it may go past (it refuses the
        // others with the reason), so nothing is read back from the blockers' text here.
        let blockers: Vec<String> = report
            .as_ref()
            .and_then(|r| r["blockers"].as_array())
            .map(|b| b.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if !blockers.is_empty() {
            passed = false;
            detail = blockers.join("; ");
        }
    }
    if !ok {
        detail = if err.is_empty() { "failed (no message)".into() } else { err };
        if let Some(r) = &report
            && r["passed"] == false
        {
            detail = format!("its verification failed: {}", summarize_verification(r));
        }
    } else if passed && report.is_none() {
        passed = false;
        detail = format!("printed no JSON report (is `sluice` on node {on} this version?)");
    }
    StepResult { step, on: on.to_string(), ok: passed, seconds: start.elapsed().as_secs_f64(), detail, report }
}

/// The reasons in a verification report (`verify`, or apply's `verify` field), in a line.
fn summarize_verification(r: &serde_json::Value) -> String {
    let v = if r["verify"].is_object() { &r["verify"] } else { r };
    let mut why: Vec<String> = Vec::new();
    if let Some(b) = v["blockers"].as_array() {
        why.extend(b.iter().filter_map(|x| x.as_str().map(str::to_string)));
    }
    let failed: Vec<String> = v["probes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["ok"] == false)
        .map(|p| {
            format!("{} did not answer ({})", p["frontend"].as_str().unwrap_or("?"), p["detail"].as_str().unwrap_or(""))
        })
        .collect();
    why.extend(failed);
    let differ = v["rows"].as_array().into_iter().flatten().filter(|r| r["verdict"] == "differs").count();
    if differ > 0 {
        why.push(format!("{differ} frontend(s) differ between kube-proxy's rules and sluice's"));
    }
    if why.is_empty() { "see the report".into() } else { why.join("; ") }
}

/// The rollout. `Ok(false)`: it stopped at a failure (reported).
pub fn run(t: &Targets, out: Output) -> anyhow::Result<bool> {
    let result = rollout(t)?;
    print(&result, t, out)?;
    Ok(result.passed)
}

/// Every node in turn, stopping at the first failure.
fn rollout(t: &Targets) -> anyhow::Result<Rollout> {
    check(t)?;
    let wait = t.wait.to_string();
    let mut apply_args = vec!["apply", "--wait", &wait];
    if t.force {
        apply_args.push("--force");
    }
    let total = t.nodes.len();
    let mut result = Rollout { nodes: Vec::new(), not_started: Vec::new(), passed: true };
    for (i, node) in t.nodes.iter().enumerate() {
        let mut nr = NodeResult { node: node.clone(), steps: Vec::new(), passed: true };
        let mut steps: Vec<(&'static str, String, Vec<&str>)> =
            vec![("plan", node.clone(), vec!["plan"]), ("apply", node.clone(), apply_args.clone())];
        match neighbour(t, i) {
            Some(n) => steps.push(("verify", n, vec!["verify"])),
            None => eprintln!(
                "[node {}/{total}] {node}: no neighbour to verify from (one node, no --verify-from): its NodePorts are checked only from itself",
                i + 1
            ),
        }
        for (step, on, args) in steps {
            let place = if on == *node { String::new() } else { format!(" (from {on})") };
            eprintln!("[node {}/{total}] {node}: {step}{place}", i + 1);
            let r = run_step(t, step, &on, &args);
            let ok = r.ok;
            if !ok {
                eprintln!("[node {}/{total}] {node}: {step} failed: {}", i + 1, r.detail);
            }
            nr.steps.push(r);
            if !ok {
                nr.passed = false;
                break;
            }
        }
        let passed = nr.passed;
        result.nodes.push(nr);
        if !passed {
            result.passed = false;
            result.not_started = t.nodes[i + 1..].to_vec();
            break;
        }
    }
    Ok(result)
}

fn print(r: &Rollout, t: &Targets, out: Output) -> anyhow::Result<()> {
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(["NODE", "PLAN", "APPLY", "VERIFY", "SECONDS"]);
    let cell = |n: &NodeResult, step: &str| match n.steps.iter().find(|s| s.step == step) {
        Some(s) if s.ok && step == "verify" => format!("ok (from {})", s.on),
        Some(s) if s.ok => "ok".to_string(),
        Some(_) => "FAILED".to_string(),
        None => "-".to_string(),
    };
    for n in &r.nodes {
        let secs: f64 = n.steps.iter().map(|s| s.seconds).sum();
        table.add_row([n.node.clone(), cell(n, "plan"), cell(n, "apply"), cell(n, "verify"), format!("{secs:.1}")]);
    }
    for n in &r.not_started {
        table.add_row([n.clone(), "not started".into(), "-".into(), "-".into(), "-".into()]);
    }
    println!("{table}");
    if let Some((n, s)) = r.nodes.iter().find_map(|n| n.steps.iter().find(|s| !s.ok).map(|s| (n, s))) {
        let on_node = t.via.replace("{node}", &n.node);
        println!("stopped: {} failed on {}: {}", s.step, s.on, s.detail);
        println!(
            "ways out: fix the cause and rerun this command (migrated nodes are rechecked, nothing is redone), or give {} back to kube-proxy with `{on_node} sluice migrate rollback`",
            n.node
        );
    } else {
        println!("every node migrated and verified");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(nodes: &[&str], via: &str) -> Targets {
        Targets {
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            via: via.into(),
            verify_from: None,
            force: false,
            wait: 60,
        }
    }

    #[test]
    fn bad_targets_are_refused_by_value() {
        let e = check(&targets(&["node-1", "a;rm"], "ssh {node}")).expect_err("refused").to_string();
        assert!(e.contains("\"a;rm\"") && e.contains("lower-case"), "{e}");
        let e = check(&targets(&["n1", "n1"], "ssh {node}")).expect_err("refused").to_string();
        assert!(e.contains("n1 is listed twice"), "{e}");
        let e = check(&targets(&["n1"], "ssh root@host")).expect_err("refused").to_string();
        assert!(e.contains("does not contain {node}"), "{e}");
        assert!(check(&targets(&[], "ssh {node}")).is_err());
        assert!(check(&targets(&["Node1"], "ssh {node}")).is_err());
        assert!(check(&targets(&["-n"], "ssh {node}")).is_err());
        assert!(check(&targets(&["ip-10-0-0-1.ec2.internal", "n2"], "ssh {node}")).is_ok());
    }

    #[test]
    fn the_neighbour_is_the_next_node_the_previous_for_the_last_or_the_one_given() {
        let t = targets(&["a", "b", "c"], "x {node}");
        assert_eq!(
            [neighbour(&t, 0), neighbour(&t, 1), neighbour(&t, 2)],
            [Some("b".into()), Some("c".into()), Some("b".into())]
        );
        assert_eq!(neighbour(&targets(&["a"], "x {node}"), 0), None);
        let t = Targets { verify_from: Some("z".into()), ..targets(&["a", "z"], "x {node}") };
        assert_eq!((neighbour(&t, 0), neighbour(&t, 1)), (Some("z".into()), None));
    }

    #[test]
    fn a_failed_step_stops_the_rollout_before_the_next_node() {
        // `false` as the transport: the first step fails; nothing after it runs.
        let r = rollout(&targets(&["a", "b"], "false {node}")).expect("runs");
        assert!(!r.passed);
        assert_eq!(r.nodes.len(), 1);
        assert_eq!(r.nodes[0].steps.iter().map(|s| s.step).collect::<Vec<_>>(), ["plan"]);
        assert_eq!(r.not_started, ["b"]);
    }

    #[test]
    fn every_node_is_planned_applied_and_verified_from_a_neighbour() {
        // A transport that answers every command with a passing report, and records the calls.
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("calls");
        let via = format!("printf '{{\"blockers\":[],\"passed\":true}}'; echo {{node}} >> {}; true", log.display());
        let r = rollout(&targets(&["a", "b"], &via)).expect("runs");
        assert!(r.passed, "{r:?}");
        let got: Vec<(&str, &str)> =
            r.nodes.iter().flat_map(|n| n.steps.iter().map(|s| (s.step, s.on.as_str()))).collect();
        assert_eq!(
            got,
            [("plan", "a"), ("apply", "a"), ("verify", "b"), ("plan", "b"), ("apply", "b"), ("verify", "a")]
        );
        assert_eq!(std::fs::read_to_string(&log).expect("log"), "a\na\nb\nb\nb\na\n");
    }

    #[test]
    fn a_plan_with_a_blocker_stops_before_apply() {
        let via = "printf '{\"blockers\":[\"2 frontend(s) only kube-proxy serves\"]}'; true {node}";
        let r = rollout(&targets(&["a", "b"], via)).expect("runs");
        assert!(!r.passed);
        let plan = &r.nodes[0].steps[0];
        assert_eq!((plan.step, plan.ok), ("plan", false));
        assert!(plan.detail.contains("only kube-proxy"), "{}", plan.detail);
        assert_eq!(r.nodes[0].steps.len(), 1);
    }
}
