//! Lab topology from iproute2: namespaces, the underlay bridge, veths. Everything lives in
//! namespaces named `sl-<lab>--*`; nothing is ever added to the root network namespace.

use std::process::Command;

use anyhow::{Context, bail};

pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn netns_exists(ns: &str) -> bool {
    std::path::Path::new(&format!("/run/netns/{ns}")).exists()
}

pub fn add_netns(ns: &str) -> anyhow::Result<()> {
    if netns_exists(ns) {
        bail!("network namespace {ns} already exists (a lab of this name is up; run `sluice-lab down` first)");
    }
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    // TCP timestamps without a random offset per connection. With the default (1), Linux 6.x
    // gives each connection its own offset, so a client reusing a port meets the server's
    // TIME_WAIT for that port with an older timestamp half the time: PAWS rejects the SYN and
    // the connect stalls a second (twice in a row, it times out). Measured here with no sluice
    // in the path at all: 6,893 of 79,008 connections from one lab pod straight to another
    // stalled; none with 2. The lab measures the dataplane, not that.
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.tcp_timestamps=2"])
        .output()
        .with_context(|| format!("running sysctl in {ns}"))?;
    if !out.status.success() {
        bail!("setting net.ipv4.tcp_timestamps=2 in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub fn del_netns(ns: &str) {
    let _ = ip(&["netns", "del", ns]);
}

/// Every netns whose name starts with `prefix` (for `down` after a crashed run).
pub fn list_netns(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

pub fn make_bridge(ns: &str, br: &str) -> anyhow::Result<()> {
    ip(&["-n", ns, "link", "add", br, "type", "bridge"])?;
    ip(&["-n", ns, "link", "set", br, "up"])?;
    Ok(())
}

/// Plug host namespace `ns` into the underlay bridge as `eth0` with `addr` (CIDR notation).
pub fn plug(underlay: &str, br: &str, port: &str, ns: &str, addr: &str) -> anyhow::Result<()> {
    // Both ends are created directly inside our namespaces; the root netns never holds them.
    ip(&["link", "add", port, "netns", underlay, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
    ip(&["-n", underlay, "link", "set", port, "master", br, "up"])?;
    ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    Ok(())
}
