//! BPF probes (called by sluice-probes). Program, map and helper support come from aya's feature probes (which follow
//! libbpf's). Attach types of cgroup/sock_addr programs and TCX links need raw syscalls: each
//! loads a two-instruction program and closes it at once; the tc attach paths (TCX, classic
//! clsact + cls_bpf) are tried in a throwaway network namespace.

use std::os::fd::{FromRawFd, OwnedFd};

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported};
use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_prog_type};
use sluice_core::Capability;

pub fn program(c: Capability) -> (bool, String) {
    let (t, name) = match c {
        Capability::ProgSchedCls => (ProgramType::SchedClassifier, "BPF_PROG_TYPE_SCHED_CLS"),
        Capability::ProgXdp => (ProgramType::Xdp, "BPF_PROG_TYPE_XDP"),
        Capability::ProgCgroupSkb => (ProgramType::CgroupSkb, "BPF_PROG_TYPE_CGROUP_SKB"),
        _ => (ProgramType::SockOps, "BPF_PROG_TYPE_SOCK_OPS"),
    };
    match is_program_supported(t) {
        Ok(true) => (true, format!("{name} loads")),
        Ok(false) => (false, format!("{name} rejected by the kernel")),
        Err(e) => (false, format!("{name}: probe failed: {e}")),
    }
}

pub fn map(c: Capability) -> (bool, String) {
    let (t, name) = match c {
        Capability::MapHash => (MapType::Hash, "BPF_MAP_TYPE_HASH"),
        Capability::MapLruHash => (MapType::LruHash, "BPF_MAP_TYPE_LRU_HASH"),
        Capability::MapLpmTrie => (MapType::LpmTrie, "BPF_MAP_TYPE_LPM_TRIE"),
        Capability::MapRingbuf => (MapType::RingBuf, "BPF_MAP_TYPE_RINGBUF"),
        _ => (MapType::HashOfMaps, "BPF_MAP_TYPE_HASH_OF_MAPS"),
    };
    match is_map_supported(t) {
        Ok(true) => (true, format!("{name} creates")),
        Ok(false) => (false, format!("{name} rejected by the kernel")),
        Err(e) => (false, format!("{name}: probe failed: {e}")),
    }
}

pub fn helper(c: Capability) -> (bool, String) {
    use aya_obj::generated::bpf_func_id::*;
    let (pt, helpers, name): (_, &[BpfHelper], _) = match c {
        Capability::HelperFibLookup => {
            (ProgramType::SchedClassifier, &[BPF_FUNC_fib_lookup], "bpf_fib_lookup from sched_cls")
        }
        Capability::HelperRedirectNeigh => {
            (ProgramType::SchedClassifier, &[BPF_FUNC_redirect_neigh], "bpf_redirect_neigh from sched_cls")
        }
        Capability::HelperRedirectPeer => {
            (ProgramType::SchedClassifier, &[BPF_FUNC_redirect_peer], "bpf_redirect_peer from sched_cls")
        }
        Capability::HelperSkLookup => (
            ProgramType::SchedClassifier,
            &[BPF_FUNC_skc_lookup_tcp, BPF_FUNC_sk_lookup_udp, BPF_FUNC_sk_release, BPF_FUNC_sk_assign],
            "bpf_skc_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release and bpf_sk_assign from sched_cls",
        ),
        Capability::HelperSocketCookie => {
            (ProgramType::CgroupSockAddr, &[BPF_FUNC_get_socket_cookie], "bpf_get_socket_cookie from cgroup/sock_addr")
        }
        _ => (ProgramType::CgroupSockAddr, &[BPF_FUNC_get_netns_cookie], "bpf_get_netns_cookie from cgroup/sock_addr"),
    };
    for h in helpers {
        match is_helper_supported(pt, *h) {
            Ok(true) => {}
            Ok(false) => return (false, format!("{name}: {h:?} unknown to the verifier")),
            Err(e) => return (false, format!("{name}: probe failed: {e}")),
        }
    }
    (true, format!("{name} accepted by the verifier"))
}

/// The prefix of `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`. The kernel
/// takes a shorter attr and treats the rest as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_LINK_CREATE, up to `flags`.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// `r0 = ret; exit`, encoded as two `struct bpf_insn`.
fn return_insns(ret: i32) -> [u64; 2] {
    // mov64 r0, imm: opcode 0xb7, dst r0; exit: opcode 0x95.
    let mov = 0xb7u64 | ((ret as u32 as u64) << 32);
    [mov, 0x95]
}

fn sys_bpf<T>(cmd: bpf_cmd, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a live, properly sized #[repr(C)] prefix of union bpf_attr.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success BPF_PROG_LOAD and BPF_LINK_CREATE return a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn load(prog_type: bpf_prog_type, expected: u32, ret: i32) -> std::io::Result<OwnedFd> {
    let insns = return_insns(ret);
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: prog_type as u32,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: expected,
        ..Default::default()
    };
    sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
}

pub fn sock_addr_attach(c: Capability) -> (bool, String) {
    let (at, name) = match c {
        Capability::AttachCgroupConnect4 => (bpf_attach_type::BPF_CGROUP_INET4_CONNECT, "cgroup/connect4"),
        Capability::AttachCgroupSendmsg4 => (bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG, "cgroup/sendmsg4"),
        Capability::AttachCgroupRecvmsg4 => (bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG, "cgroup/recvmsg4"),
        _ => (bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME, "cgroup/getpeername4"),
    };
    // The fd is dropped (and the program freed) at the end of this statement.
    match load(bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR, at as u32, 1) {
        Ok(_fd) => (true, format!("{name} program loads")),
        Err(e) => (false, format!("{name} program rejected: {e}")),
    }
}

/// Run `attach` with a no-op sched_cls program (-1: TCX_NEXT / TC_ACT_UNSPEC, a no-op if a
/// packet ever met it) on a short-lived thread in a throwaway network namespace, so no existing
/// namespace is touched: whatever it attaches to `lo` (ifindex 1) dies with the thread.
fn in_scratch_netns(what: &'static str, attach: fn(&OwnedFd) -> (bool, String)) -> (bool, String) {
    let probe = std::thread::spawn(move || -> (bool, String) {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            return (false, format!("cannot create a scratch netns for the probe: {e}"));
        }
        match load(bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS, 0, -1) {
            Ok(prog) => attach(&prog),
            Err(e) => (false, format!("sched_cls program rejected: {e}")),
        }
    });
    probe.join().unwrap_or_else(|_| (false, format!("{what} probe thread panicked")))
}

/// TCX: a tcx ingress link on `lo` of a scratch netns (closing the fds detaches it).
pub fn tcx() -> (bool, String) {
    in_scratch_netns("tcx", |prog| {
        let mut attr = LinkCreateAttr {
            prog_fd: std::os::fd::AsRawFd::as_raw_fd(prog) as u32,
            target_ifindex: 1, // lo is always ifindex 1 in a new netns
            attach_type: bpf_attach_type::BPF_TCX_INGRESS as u32,
            flags: 0,
        };
        match sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr) {
            Ok(_link) => (true, "tcx ingress link created (in a scratch netns) and released".into()),
            Err(e) => (false, format!("tcx link rejected: {e}")),
        }
    })
}

/// Classic tc: a clsact qdisc and a `cls_bpf` direct-action filter on `lo` of a scratch netns.
pub fn tc_clsact() -> (bool, String) {
    use crate::tc_netlink as nl;
    in_scratch_netns("tc-clsact", |prog| {
        if let Err(e) = nl::add_clsact(1) {
            return (false, format!("clsact qdisc rejected (sch_ingress missing?): {e}"));
        }
        let (prio, handle) = (crate::attach_classic::PRIORITY, crate::attach_classic::HANDLE);
        match nl::replace_filter(1, nl::Hook::Ingress, prio, handle, std::os::fd::AsFd::as_fd(prog), "sluice_probe") {
            Ok(()) => {
                (true, "clsact qdisc and cls_bpf direct-action filter created (in a scratch netns) and released".into())
            }
            Err(e) => (false, format!("cls_bpf filter rejected (cls_bpf missing?): {e}")),
        }
    })
}
