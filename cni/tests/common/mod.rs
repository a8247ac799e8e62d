//! Privileged test harness: fresh network namespaces per test, the real plugin binary called
//! as a runtime calls it, and cleanup on drop (also when the test fails).

#![allow(dead_code)]

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_sluice-cni");

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var_os("SLUICE_SKIP_PRIVILEGED").is_some() {
        eprintln!("skipped: needs root (SLUICE_SKIP_PRIVILEGED set)");
        return false;
    }
    panic!("privileged test needs root; run `cargo xtask test` as root or set SLUICE_SKIP_PRIVILEGED=1 to skip");
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// A network namespace that is deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("slt-{}-{}-{tag}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().expect("spawn");
        assert!(out.status.success(), "{program} {args:?} in {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn command(&self, program: &str) -> Command {
        let f = std::fs::File::open(self.path()).expect("open netns");
        let mut c = Command::new(program);
        // SAFETY: only setns between fork and exec.
        unsafe {
            c.pre_exec(move || {
                nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        c
    }

    /// Names of sluice host veths in this namespace.
    pub fn slc_links(&self) -> Vec<String> {
        self.run("ip", &["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("slc"))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A node namespace plus an IPAM directory, both removed on drop.
pub struct Node {
    pub ns: Netns,
    pub data: tempfile::TempDir,
    pub subnet: String,
}

impl Node {
    pub fn new(subnet: &str) -> Self {
        Node { ns: Netns::new("node"), data: tempfile::tempdir().expect("tmp"), subnet: subnet.into() }
    }

    pub fn conf(&self, version: &str) -> Value {
        serde_json::json!({
            "cniVersion": version, "name": "t", "type": "sluice-cni",
            "subnet": self.subnet, "dataDir": self.data.path(),
        })
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data.path().join("t")
    }

    /// Allocation records on disk.
    pub fn allocations(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.store_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// Call the plugin from this node's netns; returns (exit ok, parsed stdout).
    pub fn call(&self, env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
        let mut c = self.ns.command(PLUGIN);
        c.env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn plugin");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write");
        let out = child.wait_with_output().expect("wait");
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout {text:?}: {e}"))
        };
        (out.status.success(), v)
    }

    /// Start an ADD and return at once (stdin written): the caller may kill it mid-way.
    pub fn spawn_add(&self, id: &str, pod: &Netns, conf: &Value) -> std::process::Child {
        let mut c = self.ns.command(PLUGIN);
        c.env_clear().stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
        let path = pod.path();
        for (k, v) in [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", path.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
        ] {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn plugin");
        child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("write");
        child
    }

    pub fn add(&self, id: &str, pod: &Netns, conf: &Value) -> (bool, Value) {
        self.call(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &pod.path()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/nonexistent"),
            ],
            &conf.to_string(),
        )
    }

    pub fn del(&self, id: &str, netns: &str) -> (bool, Value) {
        self.call(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/nonexistent"),
            ],
            &self.conf("1.0.0").to_string(),
        )
    }
}
