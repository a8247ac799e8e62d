//! `cargo xtask vm`: a real older kernel on this machine. Debian 12's own kernel package (6.1 LTS,
//! no TCX) is downloaded and unpacked (never installed), booted under qemu's software emulation
//! (this machine's KVM cannot boot a stock kernel), with the host's root file system shared
//! read-only over 9p under a tmpfs overlay, so the guest runs the freshly built binaries in
//! place. `-nic none`: the guest's own network namespaces are the whole topology. A second 9p
//! share carries the command in and its output and exit code out.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{root, run};

/// Modules the initramfs loads to reach the host's file system (dependencies first).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// A kernel ready to boot.
pub struct Guest {
    pub kver: String,
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

fn vm_dir() -> PathBuf {
    root().join("target/vm")
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let o = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("running {shown}"))?;
    if !o.status.success() {
        bail!("{shown} failed: {}", o.status);
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The newest Debian 6.1 kernel image package the apt sources offer.
fn kernel_package() -> anyhow::Result<String> {
    let list =
        output(Command::new("apt-cache").args(["search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64$"]))?;
    let abi = |name: &str| name.split('-').nth(4).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|n| abi(n))
        .map(str::to_string)
        .context("no linux-image-6.1.0-*-amd64 package in the apt sources (Debian 12's kernel); run `apt-get update`")
}

/// Download, unpack and prepare the 6.1 kernel and an initramfs (cached under target/vm).
pub fn prepare() -> anyhow::Result<Guest> {
    let dir = vm_dir();
    std::fs::create_dir_all(&dir)?;
    let pkg = kernel_package()?;
    let kver = pkg.trim_start_matches("linux-image-").to_string();
    let unpacked = dir.join(&pkg);
    let vmlinuz = unpacked.join(format!("boot/vmlinuz-{kver}"));
    let modules = unpacked.join(format!("lib/modules/{kver}"));
    if !vmlinuz.exists() || !modules.join("modules.dep").exists() {
        eprintln!("xtask vm: fetching {pkg} (Debian 12's own kernel; unpacked, not installed)...");
        let _ = std::fs::remove_dir_all(&unpacked);
        run(Command::new("apt-get").args(["download", &pkg]).current_dir(&dir).stderr(Stdio::null()))?;
        let deb = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&pkg) && n.ends_with(".deb"))
            })
            .context("apt-get download left no .deb")?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        let _ = std::fs::remove_file(&deb);
        run(Command::new("depmod").arg("-b").arg(&unpacked).arg(&kver))?;
    }
    let initrd = dir.join(format!("initrd-{kver}.cpio.gz"));
    build_initrd(&unpacked, &kver, &modules, &initrd)?;
    Ok(Guest { kver, vmlinuz, initrd })
}

fn build_initrd(unpacked: &Path, kver: &str, modules: &Path, out: &Path) -> anyhow::Result<()> {
    let tree = vm_dir().join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("bin"))?;
    std::fs::create_dir_all(tree.join("mods"))?;
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).context("copying /bin/busybox (busybox-static)")?;
    // One module per call: modprobe reads any further words as that module's parameters.
    let mut deps = String::new();
    for m in BOOT_MODULES {
        deps +=
            &output(Command::new("modprobe").arg("--show-depends").arg("-d").arg(unpacked).arg("-S").arg(kver).arg(m))?;
    }
    let mut order = Vec::new();
    for line in deps.lines() {
        let Some(path) = line.strip_prefix("insmod ").map(|p| p.trim()) else { continue };
        let name = Path::new(path).file_name().and_then(|n| n.to_str()).context("module name")?.to_string();
        if !order.contains(&name) {
            std::fs::copy(path, tree.join("mods").join(&name)).with_context(|| format!("copying {path}"))?;
            order.push(name);
        }
    }
    std::fs::write(tree.join("mods/order"), order.join("\n") + "\n")?;
    let init = format!(
        r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /host /upper /newroot
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in $($B cat /mods/order); do $B insmod /mods/$m || echo "init: insmod $m failed"; done
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 host /host || $B poweroff -f
$B mount -t tmpfs -o size=75% tmpfs /upper
$B mkdir -p /upper/u /upper/w
$B mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /newroot || $B poweroff -f
$B mkdir -p /newroot/mnt/sluice-vm /newroot/lib/modules/{kver}
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /newroot/mnt/sluice-vm
$B mount --bind /newroot{modules} /newroot/lib/modules/{kver}
$B umount /proc /sys /dev
exec $B switch_root /newroot /bin/sh /mnt/sluice-vm/guest.sh
"#,
        modules = modules.display()
    );
    std::fs::write(tree.join("init"), init)?;
    run(Command::new("chmod").arg("+x").arg(tree.join("init")))?;
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("find . | cpio -o -H newc --quiet | gzip -1 > '{}'", out.display()))
        .current_dir(&tree))?;
    Ok(())
}

/// What a command in the guest printed, and how it ended.
pub struct GuestRun {
    pub rc: i32,
    pub log: String,
}

/// Boot the guest, run `cmd` (a shell command) in the project directory, power off.
pub fn run_in_guest(g: &Guest, cmd: &str, timeout: Duration) -> anyhow::Result<GuestRun> {
    let out = vm_dir().join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let guest_sh = format!(
        r#"#!/bin/sh
# Runs as the guest's init after switch_root: mount what a node has, run the command, power off.
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run; {tmp}
mount -t bpf bpf /sys/fs/bpf; mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root SLUICE_GUEST_KERNEL=$(uname -r)
export SLUICE_BIN_DIR='{bin}' RUST_BACKTRACE=1
cd '{root}'
echo "guest: $(uname -r) up; running the command"
( sh -c '{cmd}'; echo $? > /mnt/sluice-vm/rc ) 2>&1 | tee /mnt/sluice-vm/log
sync
/bin/busybox poweroff -f
"#,
        bin = root().join("target/debug").display(),
        // A fresh /tmp, unless the checkout itself is under /tmp (a tmpfs there would hide it;
        // the root is an overlay on tmpfs anyway, so nothing written reaches the host).
        tmp = if root().starts_with("/tmp") {
            ": keep the host /tmp, seen through the overlay"
        } else {
            "mount -t tmpfs tmpfs /tmp"
        },
        root = root().display(),
        cmd = cmd.replace('\'', r"'\''"),
    );
    std::fs::write(out.join("guest.sh"), guest_sh)?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "4096", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&g.vmlinuz)
        .arg("-initrd")
        .arg(&g.initrd)
        .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1"])
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=out,security_model=none", out.display()))
        .stdin(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > timeout {
            // Only the qemu this process started, by its PID.
            let _ = child.kill();
            let _ = child.wait();
            bail!("the guest did not finish within {timeout:?} (output so far in {})", out.join("log").display());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(out.join("log")).unwrap_or_default();
    let rc = std::fs::read_to_string(out.join("rc"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("the guest wrote no exit code (qemu: {status}); its console is above"))?;
    let _ = std::fs::remove_dir_all(&out);
    Ok(GuestRun { rc, log })
}

/// `cargo xtask vm [--timeout-s N] [--] CMD...`
pub fn cli(args: &[String]) -> anyhow::Result<()> {
    let mut timeout = Duration::from_secs(1800);
    let mut rest = args;
    while let Some(a) = rest.first() {
        match a.as_str() {
            "--timeout-s" => {
                let v = rest.get(1).context("--timeout-s needs a number of seconds")?;
                timeout =
                    Duration::from_secs(v.parse().with_context(|| format!("--timeout-s {v:?}: a number of seconds"))?);
                rest = &rest[2..];
            }
            "--" => {
                rest = &rest[1..];
                break;
            }
            _ => break,
        }
    }
    if rest.is_empty() {
        bail!(
            "usage: cargo xtask vm [--timeout-s N] [--] COMMAND...  (e.g. `cargo xtask vm -- target/debug/sluice probe`)"
        );
    }
    let g = prepare()?;
    eprintln!("xtask vm: booting {} under qemu (software emulation, ~15 s)...", g.kver);
    let r = run_in_guest(&g, &rest.join(" "), timeout)?;
    if r.rc != 0 {
        bail!("the command exited with {} in the guest", r.rc);
    }
    Ok(())
}
