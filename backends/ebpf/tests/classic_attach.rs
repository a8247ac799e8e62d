//! Tier 2: the classic tc attach path (clsact + cls_bpf, for kernels without TCX) on real
//! devices in a fresh network namespace: what it creates, replacing programs in place on a
//! restart, refusing a foreign filter in its slot, keeping other tc users' qdiscs, and leaving
//! nothing after release.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::require_root;
use sluice_core::TcAttach;
use sluice_ebpf::datapath::Datapath;

/// A named netns with veth devices, deleted on drop (also when the test fails).
struct Ns {
    name: String,
    pin: PathBuf,
}

impl Ns {
    fn new(tag: &str, devices: &[&str]) -> Self {
        let name = format!("sl-{tag}-{}", std::process::id());
        let ns = Ns { name: name.clone(), pin: PathBuf::from(format!("/sys/fs/bpf/sluice-test-{name}")) };
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(std::process::Stdio::null()).status();
        ns.ip(&["netns", "add", &name]);
        for d in devices {
            // veth pairs: this kernel may lack the dummy driver.
            let peer = format!("{d}p");
            ns.ip(&["-n", &name, "link", "add", d, "type", "veth", "peer", "name", &peer]);
            ns.ip(&["-n", &name, "link", "set", d, "up"]);
        }
        ns
    }

    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip").args(args).status().expect("ip");
        assert!(st.success(), "ip {args:?}");
    }

    fn tc(&self, args: &[&str]) -> String {
        let o = Command::new("tc").arg("-n").arg(&self.name).args(args).output().expect("tc");
        assert!(o.status.success(), "tc {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Run `f` on a thread inside the namespace (netlink and if_nametoindex follow the thread).
    fn within<T: Send + 'static>(&self, f: impl FnOnce(PathBuf) -> T + Send + 'static) -> T {
        common::in_netns(&self.name, self.pin.clone(), f)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        // Inside the namespace: the record names its devices, not the host's.
        let path = format!("/run/netns/{}", self.name);
        let pin = self.pin.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(fd) = std::fs::File::open(&path)
                && nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
            {
                let _ = sluice_ebpf::datapath::remove_all(&pin);
            }
        })
        .join();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Another tc user's `cls_bpf` filter (named like Cilium's), at the given priority and handle.
fn foreign_bpf_filter(ns: &Ns, dev: &'static str, priority: u16, handle: u32) {
    ns.within(move |pin| {
        use std::os::fd::AsFd;
        let dir = pin.with_file_name(format!("{}-foreign", pin.file_name().and_then(|n| n.to_str()).unwrap_or("x")));
        let mut bpf = sluice_ebpf::loader::load(&dir).expect("load");
        let prog: &mut aya::programs::SchedClassifier =
            bpf.program_mut("sluice_from_pod").expect("prog").try_into().expect("sched_cls");
        let fd = prog.fd().expect("fd");
        let ifindex = nix::net::if_::if_nametoindex(dev).expect("dev");
        let hook = sluice_ebpf::tc_netlink::Hook::Ingress;
        sluice_ebpf::tc_netlink::replace_filter(ifindex, hook, priority, handle, fd.as_fd(), "cil_from_container")
            .expect("foreign filter");
        drop(bpf);
        let _ = sluice_ebpf::datapath::remove_all(&dir);
    });
}

fn prog_ids(filters: &str) -> Vec<String> {
    filters
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "id")
        .map(|w| w[1].to_string())
        .collect()
}

#[test]
fn classic_attach_creates_replaces_in_place_and_releases() {
    if !require_root() {
        return;
    }
    let ns = Ns::new("cls", &["d0"]);
    ns.within(|pin| {
        let mut dp = Datapath::open(&pin, &Default::default()).expect("open");
        dp.attach("d0", TcAttach::Classic).expect("attach");
    });
    let ingress = ns.tc(&["filter", "show", "dev", "d0", "ingress"]);
    let egress = ns.tc(&["filter", "show", "dev", "d0", "egress"]);
    for (f, prog) in [(&ingress, "sluice_from_pod"), (&egress, "sluice_to_pod")] {
        assert!(f.contains("pref 20736") && f.contains("handle 0x5100") && f.contains(prog), "{f}");
        assert!(f.contains("direct-action"), "{f}");
    }
    assert!(ns.tc(&["qdisc", "show", "dev", "d0"]).contains("clsact"));
    let before = prog_ids(&ingress);

    // A new agent (new programs, the same pinned maps): its programs replace the old ones in the
    // same filters: one filter per hook, same priority and handle, another program id.
    ns.within(|pin| {
        let mut dp = Datapath::open(&pin, &Default::default()).expect("open again");
        assert!(dp.attached().contains("d0"), "the record in bpffs names d0");
        dp.attach("d0", TcAttach::Classic).expect("attach again");
    });
    let ingress = ns.tc(&["filter", "show", "dev", "d0", "ingress"]);
    assert_eq!(ingress.lines().filter(|l| l.contains("name sluice_from_pod")).count(), 1, "{ingress}");
    assert!(ingress.contains("handle 0x5100"), "{ingress}");
    assert_ne!(prog_ids(&ingress), before, "the program was not replaced: {ingress}");

    // Released: filters and the qdisc sluice created are gone, and so is the record.
    ns.within(|pin| {
        let mut dp = Datapath::open(&pin, &Default::default()).expect("open");
        let gone = dp.detach_others(&Default::default());
        assert_eq!(gone, vec!["d0".to_string()]);
        assert!(dp.attached().is_empty());
    });
    assert!(ns.tc(&["filter", "show", "dev", "d0", "ingress"]).trim().is_empty());
    assert!(!ns.tc(&["qdisc", "show", "dev", "d0"]).contains("clsact"));
}

#[test]
fn a_foreign_filter_in_sluices_slot_is_reported_and_left_alone() {
    if !require_root() {
        return;
    }
    let ns = Ns::new("clsf", &["d1"]);
    ns.tc(&["qdisc", "add", "dev", "d1", "clsact"]);
    foreign_bpf_filter(&ns, "d1", 20736, 0x5100);
    let err = ns.within(|pin| {
        let mut dp = Datapath::open(&pin, &Default::default()).expect("open");
        dp.attach("d1", TcAttach::Classic).expect_err("a foreign filter holds the slot").to_string()
    });
    assert!(err.contains("cil_from_container") && err.contains("not sluice's") && err.contains("d1"), "{err}");
    let f = ns.tc(&["filter", "show", "dev", "d1", "ingress"]);
    assert!(f.contains("cil_from_container") && !f.contains("sluice_from_pod direct-action"), "{f}");
    // Releasing leaves the other user's filter and qdisc alone.
    ns.within(|pin| sluice_ebpf::attach_classic::release(&pin, "d1"));
    assert!(ns.tc(&["filter", "show", "dev", "d1", "ingress"]).contains("cil_from_container"));
    assert!(ns.tc(&["qdisc", "show", "dev", "d1"]).contains("clsact"));
}

#[test]
fn other_tc_users_qdiscs_keep_working() {
    if !require_root() {
        return;
    }
    // d2: an egress shaper; d3: a clsact qdisc someone else created, with their own filter.
    let ns = Ns::new("clso", &["d2", "d3"]);
    ns.tc(&["qdisc", "add", "dev", "d2", "root", "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms"]);
    ns.tc(&["qdisc", "add", "dev", "d3", "clsact"]);
    foreign_bpf_filter(&ns, "d3", 1, 1);
    ns.within(|pin| {
        let mut dp = Datapath::open(&pin, &Default::default()).expect("open");
        dp.attach("d2", TcAttach::Classic).expect("beside a shaper");
        dp.attach("d3", TcAttach::Classic).expect("on someone's clsact");
    });
    assert!(ns.tc(&["qdisc", "show", "dev", "d2"]).contains("tbf"));
    let f3 = ns.tc(&["filter", "show", "dev", "d3", "ingress"]);
    assert!(f3.contains("cil_from_container") && f3.contains("sluice_from_pod direct-action"), "{f3}");
    // `sluice cleanup`: sluice's filters and the qdisc it created go; the others stay.
    ns.within(|pin| sluice_ebpf::datapath::remove_all(&pin).expect("remove_all"));
    let q2 = ns.tc(&["qdisc", "show", "dev", "d2"]);
    assert!(q2.contains("tbf") && !q2.contains("clsact"), "{q2}");
    let f3 = ns.tc(&["filter", "show", "dev", "d3", "ingress"]);
    assert!(f3.contains("cil_from_container") && !f3.contains("sluice_from_pod direct-action"), "{f3}");
    assert!(ns.tc(&["qdisc", "show", "dev", "d3"]).contains("clsact"));
}
