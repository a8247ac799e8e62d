//! `cargo xtask bench ...`: benchmarks print ratios measured side by side in one run.

use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo, root};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("cni") => cni(&args[1..]),
        other => bail!("unknown benchmark {other:?}; available: cni"),
    }
}

fn cni(args: &[String]) -> anyhow::Result<()> {
    if !crate::nix_is_root() {
        bail!("the CNI benchmark creates network namespaces and needs root");
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
    let res = (|| {
        crate::run(lab().args(["up", "--nodes", "1"]))?;
        crate::run(lab().args(["bench-cni", "--json"]).arg(out_dir.join("cni.json")).args(args))
    })();
    let down = lab().arg("down").output().context("tearing down the bench lab")?;
    res?;
    if !down.status.success() {
        bail!("bench lab teardown failed: {}", String::from_utf8_lossy(&down.stderr));
    }
    println!("results written to {}", out_dir.join("cni.json").display());
    Ok(())
}
