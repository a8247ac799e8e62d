//! Shared helpers for the end-to-end suites: a lab that is torn down on drop, even when the
//! test fails, and polling with a deadline instead of sleeps.

#![allow(dead_code)]

pub mod kernel;
pub mod kube_proxy;

use std::time::{Duration, Instant};

use sluice_lab::Lab;

pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var_os("SLUICE_SKIP_PRIVILEGED").is_some() {
        eprintln!("skipped: needs root (SLUICE_SKIP_PRIVILEGED set)");
        return false;
    }
    panic!("end-to-end test needs root; run `cargo xtask test` as root or set SLUICE_SKIP_PRIVILEGED=1 to skip");
}

pub struct TestLab {
    pub lab: Lab,
}

impl TestLab {
    /// A fresh lab; a leftover of the same name from an earlier crashed run is removed first.
    pub fn up(name: &str, nodes: u32, configs: &[(String, std::path::PathBuf)]) -> Self {
        let lab = Lab::new(name).expect("lab name");
        let _ = lab.down();
        let t = TestLab { lab };
        t.lab.up(nodes, configs).unwrap_or_else(|e| panic!("lab up: {e:#}"));
        t
    }

    pub fn exec(&self, target: &str, argv: &[&str]) -> String {
        self.lab.exec_output(target, argv).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn curl(&self, from: &str, url: &str) -> anyhow::Result<String> {
        self.lab.exec_output(from, &["sluice-lab", "curl", "--timeout-ms", "2000", url]).map(|s| s.trim().to_string())
    }

    /// The agent's status, or `None` while it is (re)starting.
    pub fn try_status(&self, node: &str) -> Option<serde_json::Value> {
        let st = self.lab.state().ok()?;
        self.lab.agent_status(st.node(node).ok()?).ok()
    }

    pub fn status(&self, node: &str) -> serde_json::Value {
        let st = self.lab.state().expect("state");
        self.lab.agent_status(st.node(node).expect("node")).expect("agent status")
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        // A failed test shows what the agents said last (the lab's directory goes below).
        if std::thread::panicking()
            && let Ok(st) = self.lab.state()
        {
            for n in &st.nodes {
                let log = std::fs::read_to_string(n.dir.join("agent.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("--- {} agent.log (last 40 lines) ---\n{tail}", n.name);
            }
        }
        if let Err(e) = self.lab.down() {
            eprintln!("lab down: {e:#}");
        }
    }
}

/// A 2-node lab whose nodes get these config lines (the temp dir holds them: keep it alive).
pub fn two_node_lab(name: &str, node1: &str, node2: &str) -> (TestLab, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut configs = Vec::new();
    for (node, text) in [("node-1", node1), ("node-2", node2)] {
        let cfg = dir.path().join(format!("{node}.yaml"));
        std::fs::write(&cfg, text).expect("write");
        configs.push((node.to_string(), cfg));
    }
    (TestLab::up(name, 2, &configs), dir)
}

/// A 2-node lab whose nodes get these config lines, with echo pods `a` (node-1) and `b`
/// (node-2) labelled app=web serving 8080. The temp dir holds the configs (keep it alive).
pub fn two_node_web_lab(name: &str, node1: &str, node2: &str) -> (TestLab, tempfile::TempDir) {
    let (t, dir) = two_node_lab(name, node1, node2);
    let web = || [("app".to_string(), "web".to_string())].into_iter().collect();
    t.lab.pod_add("node-1", "a", web(), Some(8080)).expect("pod a");
    t.lab.pod_add("node-2", "b", web(), Some(8080)).expect("pod b");
    (t, dir)
}

/// Poll `f` until it returns Some, or panic with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process a test started, stopped by its PID when the test ends (also when it fails).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait for a process the test started: (success, stdout, stderr).
pub fn finish(mut p: KillOnDrop) -> (bool, String, String) {
    use std::io::Read;
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = p.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = p.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let ok = p.0.wait().is_ok_and(|s| s.success());
    (ok, out, err)
}

/// Unix time in ms, to line a load's timeline up with the steps a test took.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A command's JSON output, or a panic that shows what it printed instead.
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}
