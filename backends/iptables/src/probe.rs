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

/// Whether netfilter conntrack is present.
pub fn conntrack() -> (bool, String) {
    if Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() || Path::new("/sys/module/nf_conntrack").exists()
    {
        (true, "nf_conntrack present".into())
    } else {
        (false, "nf_conntrack not loaded (no /sys/module/nf_conntrack)".into())
    }
}

pub fn ipset() -> (bool, String) {
    // The binary drives the sets; the kernel module loads on first use (asking the kernel
    // through it is the probe, so a node booted without ip_set loaded still passes).
    let Some(bin) = which("ipset") else {
        return (false, "ipset binary not found (install the ipset package)".into());
    };
    match std::process::Command::new(&bin).args(["list", "-n"]).output() {
        Ok(o) if o.status.success() => (true, format!("{bin} works; ip_set present")),
        Ok(o) => (false, format!("{bin} list failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => (false, format!("running {bin}: {e}")),
    }
}
