//! Processes inside lab namespaces: run a command in a netns, start daemons, stop them by PID.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

/// Make `cmd` enter the network namespace at `/run/netns/<ns>` before exec. Only the netns
/// changes (unlike `ip netns exec`, which also remounts /sys and would hide bpffs).
pub fn in_netns(cmd: &mut Command, ns: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("network namespace {ns} does not exist ({path})"))?;
    // SAFETY: setns and the fd are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
    }
    Ok(())
}

/// Make `cmd` join the cgroup v2 directory `dir` before exec (as a node's host process).
pub fn in_cgroup(cmd: &mut Command, dir: &Path) -> anyhow::Result<()> {
    let procs = dir.join("cgroup.procs");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("opening {} (is the lab up?)", procs.display()))?;
    // SAFETY: write(2) is async-signal-safe; "0" moves the writing (child) process.
    unsafe {
        cmd.pre_exec(move || nix::unistd::write(&file, b"0").map(|_| ()).map_err(std::io::Error::from));
    }
    Ok(())
}

/// Run to completion inside `ns`, capturing output; error names the command and its stderr.
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    in_netns(&mut cmd, ns)?;
    let out = cmd.output().with_context(|| format!("running {program} in {ns}"))?;
    if !out.status.success() {
        bail!("`{program} {}` in {ns} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Start a detached daemon inside `ns` with output to `log`; returns its PID.
pub fn spawn_daemon(
    ns: &str,
    cgroup: Option<&Path>,
    program: &Path,
    args: &[String],
    envs: &[(String, String)],
    log: &Path,
) -> anyhow::Result<u32> {
    let out = File::create(log).with_context(|| format!("creating log {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    in_netns(&mut cmd, ns)?;
    if let Some(cg) = cgroup {
        in_cgroup(&mut cmd, cg)?;
    }
    // SAFETY: setsid is async-signal-safe. It detaches the daemon from our session so it
    // outlives this command; `down` stops it by PID.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    let child = cmd.spawn().with_context(|| format!("starting {} in {ns}", program.display()))?;
    Ok(child.id())
}

/// The inode of a netns (to tell whether a process lives in one of ours).
pub fn netns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// PIDs of every process whose network namespace is `ns` (ours by construction).
pub fn pids_in_netns(ns: &str) -> Vec<u32> {
    let Some(ino) = netns_inode(Path::new(&format!("/run/netns/{ns}"))) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if netns_inode(&e.path().join("ns/net")) == Some(ino) {
            out.push(pid);
        }
    }
    out
}

pub fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
}

/// Stop a process we started: SIGTERM, wait up to `grace`, then SIGKILL.
pub fn stop(pid: u32, grace: std::time::Duration) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let p = nix::unistd::Pid::from_raw(raw);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    let start = std::time::Instant::now();
    while alive(pid) && start.elapsed() < grace {
        reap(pid);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    reap(pid);
}

pub fn kill9(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
        std::thread::sleep(std::time::Duration::from_millis(20));
        reap(pid);
    }
}

/// Collect a zombie child if it is ours (harmless otherwise).
fn reap(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(raw), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
}
