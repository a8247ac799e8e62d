//! Probes that read the system rather than load BPF objects.

use sluice_iptables::probe::which;
use std::process::{Command, Stdio};

pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
}

pub fn btf() -> (bool, String) {
    let p = "/sys/kernel/btf/vmlinux";
    match std::fs::metadata(p) {
        Ok(m) => (true, format!("{p} ({} bytes)", m.len())),
        Err(e) => (false, format!("{p}: {e}")),
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// bpffs mounted at /sys/fs/bpf, or at least supported by the kernel (the agent mounts it when
/// it pins objects, as Cilium does).
pub fn bpffs() -> (bool, String) {
    let mounted = nix::sys::statfs::statfs("/sys/fs/bpf").map(|s| {
        #[allow(clippy::unnecessary_cast)]
        let t = s.filesystem_type().0 as i64;
        t == BPF_FS_MAGIC
    });
    if mounted == Ok(true) {
        return (true, "mounted at /sys/fs/bpf".into());
    }
    let supported = std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.split_whitespace().last() == Some("bpf")));
    match supported {
        Ok(true) => (true, "kernel supports bpffs; not mounted at /sys/fs/bpf yet (mounted on demand)".into()),
        Ok(false) => (false, "bpf filesystem not in /proc/filesystems".into()),
        Err(e) => (false, format!("/proc/filesystems: {e}")),
    }
}

/// The cgroup v2 mount point (hybrid layouts mount it at /sys/fs/cgroup/unified).
pub fn cgroup_v2_mount() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2").then(|| pre.split_whitespace().nth(4).map(str::to_string))?
    })
}

pub fn cgroup_v2() -> (bool, String) {
    match cgroup_v2_mount() {
        Some(m) => (true, format!("cgroup2 mounted at {m}")),
        None => (false, "no cgroup2 mount in /proc/self/mountinfo".into()),
    }
}

/// kube-proxy leaves its marks: KUBE-* chains (iptables mode, either variant) or the
/// `kube-proxy` nft table (nftables mode).
pub fn kube_proxy() -> (bool, String) {
    for variant in ["nft", "legacy"] {
        let Some(bin) = which(&format!("iptables-{variant}-save")) else { continue };
        let Ok(out) = Command::new(&bin).args(["-t", "nat"]).stderr(Stdio::null()).output() else { continue };
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(chain) =
            ["KUBE-SERVICES", "KUBE-PROXY-CANARY", "KUBE-NODEPORTS"].iter().find(|c| text.contains(&format!(":{c} ")))
        {
            return (true, format!("chain {chain} in iptables-{variant} nat table"));
        }
    }
    if let Some(nft) = which("nft")
        && let Ok(out) = Command::new(nft).args(["list", "tables"]).stderr(Stdio::null()).output()
        && String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "table ip kube-proxy")
    {
        return (true, "nft table ip kube-proxy".into());
    }
    (false, "no KUBE-* chains and no kube-proxy nft table".into())
}
