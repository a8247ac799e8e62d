//! Probes of what this backend needs from the node: the iptables variants (and which one the
//! node uses), conntrack and ipset. Called by sluice-probes, which owns the node-wide probes.

use std::path::Path;

/// A binary on PATH (or in the sbin directories), as a path.
pub fn which(bin: &str) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').chain(["/usr/sbin", "/sbin"]).map(|d| format!("{d}/{bin}")).find(|p| Path::new(p).is_file())
}

pub fn iptables() -> (bool, String) {
    let nft = which("iptables-nft-restore");
    let legacy = which("iptables-legacy-restore");
    match (nft, legacy) {
        (None, None) => (false, "neither iptables-nft-restore nor iptables-legacy-restore found".into()),
        (n, l) => {
            let mut have = Vec::new();
            if n.is_some() {
                have.push("nft");
            }
            if l.is_some() {
                have.push("legacy");
            }
            // Which one the node already uses: the same decision the iptables backend makes.
            let (n, l) = crate::restore::rule_counts();
            let in_use = crate::Variant::in_use(n, l).as_str();
            (
                true,
                format!("iptables variants: {}; in use: {in_use} ({n} nft rules, {l} legacy rules)", have.join(", ")),
            )
        }
    }
}

/// Make sure a kernel module is there, as kube-proxy does: loaded already, built in, or loaded
/// now with `modprobe` (a freshly booted node has none of netfilter's modules loaded until the
/// first rule needs them). `Err` says what was tried.
pub fn ensure_module(name: &str) -> Result<String, String> {
    if Path::new("/sys/module").join(name).exists() {
        return Ok(format!("{name} loaded"));
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let builtin =
        std::fs::read_to_string(format!("/lib/modules/{}/modules.builtin", release.trim())).unwrap_or_default();
    if builtin.lines().any(|l| l.rsplit('/').next().is_some_and(|f| f == format!("{name}.ko"))) {
        return Ok(format!("{name} built into the kernel"));
    }
    let Some(modprobe) = which("modprobe") else {
        return Err(format!("{name} not loaded and no modprobe to load it (install kmod)"));
    };
    match std::process::Command::new(&modprobe).arg(name).output() {
        Ok(o) if o.status.success() && Path::new("/sys/module").join(name).exists() => {
            Ok(format!("{name} loaded now by modprobe"))
        }
        Ok(o) => {
            Err(format!("{name} not loaded; `modprobe {name}` failed: {}", String::from_utf8_lossy(&o.stderr).trim()))
        }
        Err(e) => Err(format!("{name} not loaded; running {modprobe}: {e}")),
    }
}

/// Whether netfilter conntrack is present (loading it if it is only installed).
pub fn conntrack() -> (bool, String) {
    if Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() {
        return (true, "nf_conntrack present".into());
    }
    match ensure_module("nf_conntrack") {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    }
}

pub fn ipset() -> (bool, String) {
    // The binary drives the sets; the kernel module loads on first use (asking the kernel
    // through it is the probe, so a node booted without ip_set loaded still passes).
    let Some(bin) = which("ipset") else {
        return (false, "ipset binary not found (install the ipset package)".into());
    };
    if let Err(d) = ensure_module("ip_set") {
        return (false, d);
    }
    match std::process::Command::new(&bin).args(["list", "-n"]).output() {
        Ok(o) if o.status.success() => (true, format!("{bin} works; ip_set present")),
        Ok(o) => (false, format!("{bin} list failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => (false, format!("running {bin}: {e}")),
    }
}
