//! Tier 3: a property test of reversibility on real agents. A random sequence (seeded; the seed
//! is printed, `SLUICE_REVERSIBILITY_SEED` replays one) of steps on a running 2-node cluster:
//! apply a good Service (some of them conflict with each other, by creation time), apply a
//! variant of one, apply a malformed object from the bad-input corpus, remove something applied.
//! Then each node's kernel state must equal what a fresh agent programs for the same final set
//! of objects: the agents are stopped, `sluice cleanup` removes their kernel state, fresh agents
//! start with an empty state directory, and the two states are compared (eBPF service IDs are
//! compared by the frontend they name, since IDs depend on history). On iptables, eBPF and a
//! mixed cluster.

mod common;

use std::time::Duration;

use common::kernel::settled;
use common::{eventually, require_root, two_node_web_lab};

const CORPUS: &str = include_str!("data/bad_objects.yaml");
const STEPS: usize = 30;

/// Good Services, each with a creation time (so a conflict has the same winner for any agent,
/// whatever its history): alpha/beta share nodePort 30100, alpha/eta share 10.96.1.1:80.
fn good(i: usize, variant: bool) -> String {
    let port = if variant { 81 } else { 80 };
    let (name, ts, spec) = match i {
        0 => (
            "g-alpha",
            1,
            format!(
                "{{type: NodePort, clusterIP: 10.96.1.1, ports: [{{port: {port}, targetPort: 8080, nodePort: 30100}}]}}"
            ),
        ),
        1 => (
            "g-beta",
            2,
            format!(
                "{{type: NodePort, clusterIP: 10.96.1.2, ports: [{{port: {port}, targetPort: 8080, nodePort: 30100}}]}}"
            ),
        ),
        2 => (
            "g-gamma",
            3,
            format!(
                "{{clusterIP: 10.96.1.3, externalIPs: [203.0.113.20], ports: [{{port: {port}, targetPort: 8080}}]}}"
            ),
        ),
        3 => (
            "g-delta",
            4,
            format!("{{clusterIP: 10.96.1.4, sessionAffinity: ClientIP, ports: [{{port: {port}, targetPort: 8080}}]}}"),
        ),
        4 => (
            "g-eps",
            5,
            format!("{{clusterIP: 10.96.1.5, ports: [{{port: {}, targetPort: 8080, protocol: UDP}}]}}", port - 27),
        ),
        5 => (
            "g-zeta",
            6,
            format!(
                "{{type: LoadBalancer, clusterIP: 10.96.1.6, loadBalancerSourceRanges: [198.51.100.0/24], ports: [{{port: {port}, targetPort: 8080, nodePort: 30101}}]}}\nstatus: {{loadBalancer: {{ingress: [{{ip: 203.0.113.21}}]}}}}"
            ),
        ),
        6 => ("g-eta", 7, "{clusterIP: 10.96.1.1, ports: [{port: 80, targetPort: 8080}]}".to_string()),
        _ => (
            "g-theta",
            8,
            format!(
                "{{clusterIP: 10.96.1.8, ports: [{{name: http, port: {port}, targetPort: 8080}}, {{name: https, port: 443, targetPort: 8080}}]}}"
            ),
        ),
    };
    let spec = spec.replacen('{', "{selector: {app: web}, ", 1);
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, creationTimestamp: '2026-01-01T00:00:0{ts}Z'}}\nspec: {spec}\n"
    )
}

/// xorshift64*: enough for picking steps, and replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

fn property(lab_name: &str, node1: &str, node2: &str) {
    let seed = std::env::var("SLUICE_REVERSIBILITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1
    });
    eprintln!("{lab_name}: SLUICE_REVERSIBILITY_SEED={seed}");
    let mut rng = Rng(seed);
    let (t, dir) = two_node_web_lab(lab_name, &format!("dataplane: {node1}\n"), &format!("dataplane: {node2}\n"));
    let bad: Vec<&str> = CORPUS
        .split("\n---\n")
        .skip(1)
        .filter(|c| !c.contains(":: ") || !c.contains("/aaa-"))
        .filter_map(|c| c.split_once('\n').map(|(_, body)| body))
        .collect();
    let mut applied: Vec<std::path::PathBuf> = Vec::new();
    let mut log = Vec::new();
    for step in 0..STEPS {
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).expect("dir");
        let (name, text) = match rng.below(10) {
            0..=4 => {
                let i = rng.below(8);
                (format!("good-{i}.yaml"), good(i, false))
            }
            5 => {
                let i = rng.below(8);
                (format!("good-{i}.yaml"), good(i, true))
            }
            6 | 7 => {
                let i = rng.below(bad.len());
                (format!("bad-{i}.yaml"), bad[i].to_string())
            }
            _ if !applied.is_empty() => {
                let f = applied.swap_remove(rng.below(applied.len()));
                log.push(format!("{step}: remove {}", f.display()));
                std::fs::remove_file(&f).expect("remove");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            _ => continue,
        };
        let f = src.join(&name);
        std::fs::write(&f, text).expect("write");
        for p in t.lab.apply(&f).expect("apply") {
            if !applied.contains(&p) {
                applied.push(p);
            }
        }
        log.push(format!("{step}: apply {name}"));
        // Sometimes wait for the agents to see a step, sometimes pile the next one on.
        std::thread::sleep(Duration::from_millis(if rng.below(2) == 0 { 50 } else { 700 }));
    }
    let lived: Vec<String> =
        ["node-1", "node-2"].iter().map(|n| settled(&t, n, true, Duration::from_millis(1500))).collect();
    // Fresh agents: kernel state and state directory gone, the same objects in the source.
    for node in ["node-1", "node-2"] {
        t.lab.stop_agent(node).expect("stop");
        let st = t.lab.state().expect("state");
        let rec = st.node(node).expect("node");
        let cfg = rec.dir.join("config.yaml");
        t.exec(node, &["sluice", "cleanup", "--config", &cfg.display().to_string()]);
        let _ = std::fs::remove_dir_all(rec.dir.join("state"));
        t.lab.restart_agent(node, false).expect("start");
    }
    for (n, node) in ["node-1", "node-2"].iter().enumerate() {
        eventually(&format!("{node}: fresh agent synced"), Duration::from_secs(20), || {
            t.try_status(node)?["source"]["synced"].as_bool()?.then_some(())
        });
        let fresh = settled(&t, node, true, Duration::from_millis(1500));
        assert!(
            fresh == lived[n],
            "{node} (seed {seed}): after\n{}\nthe long-lived agent's kernel state\n{}\ndiffers from a fresh agent's\n{fresh}",
            log.join("\n"),
            lived[n]
        );
    }
}

#[test]
fn random_sequences_end_where_a_fresh_agent_starts_on_iptables() {
    if require_root() {
        property("t-rev-ipt", "iptables", "iptables");
    }
}

#[test]
fn random_sequences_end_where_a_fresh_agent_starts_on_ebpf() {
    if require_root() {
        property("t-rev-bpf", "ebpf", "ebpf");
    }
}

#[test]
fn random_sequences_end_where_a_fresh_agent_starts_on_a_mixed_cluster() {
    if require_root() {
        property("t-rev-mix", "ebpf", "iptables");
    }
}
