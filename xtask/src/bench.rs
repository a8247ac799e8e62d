//! `cargo xtask bench ...`: benchmarks print ratios measured side by side in one run.

use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo, root};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("cni") => cni(&args[1..]),
        Some("probe") => probe(),
        other => bail!("unknown benchmark {other:?}; available: cni, probe"),
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
