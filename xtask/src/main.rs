//! `cargo xtask`: the project's own automation. Every command installs the system packages it
//! needs first, so a fresh machine needs nothing but the Rust toolchain.
//!
//!   cargo xtask setup          install system packages (apt) the project needs
//!   cargo xtask demo           2-node lab, pods on both nodes, cross-node traffic, teardown
//!   cargo xtask test           every test tier (unit, privileged, end-to-end)
//!   cargo xtask bench cni      CNI ADD/DEL latency: sluice-cni vs the reference ptp+host-local
//!   cargo xtask bench probe    how long probing the kernel takes
//!   cargo xtask bench services Service programming and connection rates vs kube-proxy's ruleset
//!   cargo xtask bench agent    the whole agent at N Services: time to program, RSS
//!   cargo xtask bench flows    flow visibility: conn/s with flows on vs off, events/s, GetFlows latency

mod bench;
mod bench_policy;
mod demo;
mod demo_migrate;
mod demo_policy;
mod vm;
mod vm_tier;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Debian packages, and the command each provides (checked before installing anything).
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/sbin/ip"),
    ("iptables", "/usr/sbin/iptables-nft-restore"),
    ("containernetworking-plugins", "/usr/lib/cni/ptp"),
    ("busybox-static", "/bin/busybox"),
    ("podman", "/usr/bin/podman"),
    ("runc", "/usr/sbin/runc"),
    ("procps", "/usr/bin/ps"),
    ("conntrack", "/usr/sbin/conntrack"),
    // `sluice migrate` reads and removes kube-proxy's nftables-mode table.
    ("nftables", "/usr/sbin/nft"),
    // Network policy on the iptables backend: one set per peer.
    ("ipset", "/usr/sbin/ipset"),
    ("clang-19", "/usr/bin/clang-19"),
    ("libbpf-dev", "/usr/include/bpf/bpf_helpers.h"),
    ("linux-libc-dev", "/usr/include/linux/bpf.h"),
    // Reads pinned BPF maps in the bad-input suite (kernel state before/after, entry by entry).
    ("bpftool", "/usr/sbin/bpftool"),
    // The older-kernel tier: Debian 12's 6.1 kernel under qemu, an initramfs from busybox.
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("cpio", "/usr/bin/cpio"),
    ("kmod", "/usr/bin/kmod"),
    // Metrics: promtool checks the exposition, a real Prometheus scrapes the lab.
    ("prometheus", "/usr/bin/promtool"),
    // The service-map UI is tested in a real headless browser, driven over WebDriver.
    ("chromium", "/usr/bin/chromium"),
    ("chromium-driver", "/usr/bin/chromedriver"),
    // The Observer's TLS tests make a throwaway CA and certificates with it.
    ("openssl", "/usr/bin/openssl"),
];

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("demo") => setup().and_then(|_| demo::run()),
        Some("test") => setup().and_then(|_| test(&args[1..])),
        // Tier 4 alone (no host results to compare with): for working on the older-kernel tier.
        Some("test-older-kernel") => setup()
            .and_then(|_| run(cargo().args(["build", "--workspace", "--bins"])))
            .and_then(|_| vm_tier::run(&Default::default())),
        Some("bench") => setup().and_then(|_| bench::run(&args[1..])),
        Some("vm") => setup()
            .and_then(|_| run(cargo().args(["build", "--workspace", "--bins"])))
            .and_then(|_| vm::cli(&args[1..])),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  setup        install the system packages sluice needs (apt)\n  demo         bring up a 2-node lab, show cross-node pod and Service traffic, tear down\n  test         run every test tier (needs root): unit, privileged, end-to-end lab, then the\n               older-kernel tier in a 6.1 guest (SLUICE_TEST_VM=0 skips that tier)\n  test-older-kernel
               only the older-kernel tier (tier 4 of `test`)
  vm [--timeout-s N] -- CMD\n               run CMD in a Debian 12 6.1 kernel under qemu, on this machine's files\n  bench cni    CNI ADD/DEL latency vs the reference ptp + host-local plugins\n  bench probe  how long `sluice probe` takes\n  bench services [--backend ebpf|ebpf-classic|iptables|kube-proxy-iptables]... [--services 100,1000,10000] [--variants legacy,nft] [--restore-timeout-s S]\n               eBPF and iptables vs kube-proxy's ruleset: programming, one change, connection rates,\n               then the goal ratios again in alternating (paired) rounds, and the iptables-legacy floor\n  bench agent [--services N] [--dataplane auto|ebpf|iptables]\n               the whole agent at N Services: time to program, RSS\n  bench l7 [--dataplane iptables|ebpf]\n               requests/s and p50/p99 through the L7 proxy vs direct (keep-alive and new connection,\n               1 and 64 clients, alternating rounds), proxy RSS per 1,000 open connections;\n               the node's redirect: TPROXY (iptables, default) or bpf_sk_assign (ebpf)\n  bench flows [--load-secs S]\n               conn/s with flows on vs off (iptables and eBPF nodes, ABBA rounds), flows vs connections,\n               agent CPU/RSS, the flow pipeline's events/s, GetFlows latency"
            );
            return std::process::ExitCode::from(2);
        }
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn setup() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().filter(|(_, f)| !Path::new(f).exists()).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "missing system packages {missing:?}; run as root (or install them: apt-get install {})",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {} (apt-get)...", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

pub fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("the privileged and end-to-end tiers need root (network namespaces, netlink, iptables); run as root");
    }
    // Build every binary first: the privileged and lab tests run the real sluice, sluice-cni
    // and sluice-lab executables.
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    eprintln!("xtask: tier 1+2+3: unit, privileged (fresh namespaces) and end-to-end lab tests");
    let bin_dir = root().join("target/debug");
    // Doc tests are skipped (there are none); the summary line below totals every binary.
    let mut child = cargo()
        // --no-fail-fast: one failing suite must not hide how the others fare.
        .args(["test", "--workspace", "--lib", "--bins", "--tests", "--no-fail-fast"])
        .args(extra)
        .env("SLUICE_BIN_DIR", &bin_dir)
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let mut host = std::collections::BTreeMap::new();
    if let Some(out) = child.stdout.take() {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            vm_tier::results(&line, &mut host);
            if let Some(rest) = line.strip_prefix("test result: ") {
                let num = |key: &str| -> u64 {
                    rest.split(';')
                        .find_map(|part| {
                            part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(key)
                        })
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or(0)
                };
                passed += num(" passed");
                failed += num(" failed");
                ignored += num(" ignored");
            }
        }
    }
    let status = child.wait()?;
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    // Tier 4, the older-kernel tier, runs with the full suite (not when a filter was given) and
    // even after a host failure, so one run shows how both kernels fare. SLUICE_TEST_VM=0 skips
    // it on a developer's machine; CI never sets it.
    let skip_vm = std::env::var("SLUICE_TEST_VM").is_ok_and(|v| v == "0");
    let vm = if extra.is_empty() && !skip_vm {
        vm_tier::run(&host)
    } else {
        eprintln!(
            "xtask: tier 4 (older kernel) not run: {}",
            if skip_vm { "SLUICE_TEST_VM=0" } else { "a test filter was given" }
        );
        Ok(())
    };
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    vm
}
