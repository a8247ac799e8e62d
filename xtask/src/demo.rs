//! `cargo xtask demo`: the main job on a local virtual cluster, narrated.

use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo, root};

const LAB: &str = "demo";

fn lab() -> Command {
    let mut c = Command::new(root().join("target/debug/sluice-lab"));
    c.env("SLUICE_LAB", LAB).env("SLUICE_BIN_DIR", root().join("target/debug"));
    c
}

fn step(title: &str, args: &[&str]) -> anyhow::Result<String> {
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
    println!("\n-- what the agent on node-1 reports --");
    step("node-1 status", &["exec", "node-1", "--", "sluice", "status"])?;
    println!("\n== demo done: pods on two nodes reached each other through sluice-cni and the agents' routes ==");
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
