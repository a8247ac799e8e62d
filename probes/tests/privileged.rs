//! Tier 2: probing the real kernel finds what this machine has and leaves nothing behind.

use std::process::Command;
use std::sync::Mutex;

/// The leak check counts system-wide objects: no other probe may run meanwhile.
static SERIAL: Mutex<()> = Mutex::new(());

fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var_os("SLUICE_SKIP_PRIVILEGED").is_some() {
        return false;
    }
    panic!("privileged test needs root; run `cargo xtask test` as root or set SLUICE_SKIP_PRIVILEGED=1 to skip");
}

/// Count every BPF object of a kind in the system (BPF_PROG_GET_NEXT_ID = 11, MAP = 12,
/// LINK = 31), by walking IDs as bpftool does.
fn count_ids(cmd: libc::c_long) -> usize {
    #[repr(C)]
    struct Attr {
        start_id: u32,
        next_id: u32,
    }
    let mut attr = Attr { start_id: 0, next_id: 0 };
    let mut n = 0;
    loop {
        // SAFETY: attr is a valid prefix of union bpf_attr for *_GET_NEXT_ID.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, &mut attr as *mut Attr, std::mem::size_of::<Attr>()) };
        if r != 0 {
            return n;
        }
        n += 1;
        attr.start_id = attr.next_id;
    }
}

fn snapshot() -> (usize, usize, usize, String, String) {
    let ipt = Command::new("iptables-nft-save")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let cg = std::fs::read_dir("/sys/fs/cgroup/unified").map(|d| d.count().to_string()).unwrap_or_default();
    // Counters in iptables-save comments change; compare the rules only.
    let rules: String = ipt.lines().filter(|l| l.starts_with('-') || l.starts_with(':')).collect::<Vec<_>>().join("\n");
    (count_ids(11), count_ids(12), count_ids(31), rules, cg)
}

#[test]
fn probe_finds_this_machines_capabilities_and_leaves_nothing() {
    if !require_root() {
        return;
    }
    let _serial = SERIAL.lock();
    let before = snapshot();
    let (caps, took) = sluice_probes::probe();
    // Closed BPF objects are freed after an RCU grace period: allow a moment. Objects of earlier
    // tests may be freed meanwhile too, so "nothing left behind" means: no count grew.
    let grew = |a: &(usize, usize, usize, String, String)| a.0 > before.0 || a.1 > before.1 || a.2 > before.2;
    let mut after = snapshot();
    for _ in 0..50 {
        if !grew(&after) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        after = snapshot();
    }
    assert!(!grew(&after), "probing left BPF objects behind: before {before:?}, after {after:?}");
    assert_eq!((&before.3, &before.4), (&after.3, &after.4), "probing left rules or cgroups behind");
    // The machines of this project (kernel 6.18) have every capability sluice probes.
    let missing: Vec<_> =
        caps.results.iter().filter(|(_, r)| !r.found).map(|(c, r)| format!("{c}: {}", r.detail)).collect();
    assert!(missing.is_empty(), "missing on this kernel: {missing:?}");
    eprintln!("probed {} capabilities in {took:?}", caps.results.len());
}

#[test]
fn assume_missing_hides_a_present_capability() {
    if !require_root() {
        return;
    }
    let _serial = SERIAL.lock();
    let (caps, _) = sluice_probes::probe();
    let caps = caps.assume_missing(&[sluice_core::Capability::HelperFibLookup]);
    let r = &caps.results[&sluice_core::Capability::HelperFibLookup];
    assert!(!r.found && r.assumed_missing, "{r:?}");
    assert!(r.detail.contains("assumed missing"));
}
