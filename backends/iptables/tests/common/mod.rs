//! What the tier-2 tests of this crate share: the root check and a network namespace that
//! goes away when the test ends, also when it fails.

use std::process::Command;

pub fn require_root() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    if !root {
        eprintln!("skipped: needs root (network namespaces, iptables)");
    }
    root
}

pub struct Ns(pub String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn sh(ns: &str, args: &[&str]) {
    let st = Command::new("ip").args(["netns", "exec", ns]).args(args).status().expect("run");
    assert!(st.success(), "{args:?}");
}
