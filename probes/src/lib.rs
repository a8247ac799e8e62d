//! sluice-probes: what can this node do? The node-wide probes (kernel, BTF, bpffs, cgroup v2,
//! kube-proxy) are here; each backend's own (BPF program, map, helper, attach types and TCX in
//! `sluice_ebpf::probe`; iptables, conntrack, ipset in `sluice_iptables::probe`) live with it.
//! Every probe loads the smallest possible object,
//! checks the answer and closes it again: nothing (program, map, link, namespace, rule)
//! outlives a probe. Results are typed [`Capabilities`] that config may override with
//! `probes.assume_missing`, so a newer kernel can rehearse an older one.

mod system;

// The backend-specific probes live with their backends.
use sluice_ebpf::probe as bpf;
use sluice_iptables::probe as netfilter;

use std::time::{Duration, Instant};

use sluice_core::{Capabilities, Capability, ProbeResult};

/// Probe everything; also returns how long it took.
pub fn probe() -> (Capabilities, Duration) {
    let start = Instant::now();
    let mut caps = Capabilities { kernel: system::kernel_release(), ..Default::default() };
    for c in Capability::ALL {
        if c == Capability::TcAttach {
            continue; // derived below from tcx and tc-clsact
        }
        let (found, detail) = probe_one(c);
        caps.results.insert(c, ProbeResult { found, detail, assumed_missing: false });
    }
    let mut caps = caps.derive();
    let (active, evidence) = system::kube_proxy();
    caps.kube_proxy_active = active;
    caps.kube_proxy_evidence = evidence;
    (caps, start.elapsed())
}

fn probe_one(c: Capability) -> (bool, String) {
    use Capability::*;
    match c {
        KernelBtf => system::btf(),
        Bpffs => system::bpffs(),
        CgroupV2 => system::cgroup_v2(),
        ProgSchedCls | ProgXdp | ProgCgroupSkb | ProgSockOps => bpf::program(c),
        AttachCgroupConnect4 | AttachCgroupSendmsg4 | AttachCgroupRecvmsg4 | AttachCgroupGetpeername4 => {
            bpf::sock_addr_attach(c)
        }
        MapHash | MapLruHash | MapLpmTrie | MapRingbuf | MapHashOfMaps => bpf::map(c),
        HelperFibLookup | HelperRedirectNeigh | HelperRedirectPeer | HelperGetNetnsCookie | HelperSkLookup
        | HelperSocketCookie => bpf::helper(c),
        Tcx => bpf::tcx(),
        TcClsact => bpf::tc_clsact(),
        TcAttach => (false, "derived from tcx and tc-clsact".into()),
        Iptables => netfilter::iptables(),
        Conntrack => netfilter::conntrack(),
        Ipset => netfilter::ipset(),
    }
}

/// Which features each capability is needed for on any of `backends` (for `sluice probe`).
pub fn enables(c: Capability, backends: &[sluice_core::BackendSpec]) -> Vec<&'static str> {
    let mut v = Vec::new();
    for f in sluice_core::Feature::ALL {
        let needed = backends.iter().any(|b| (b.needs)(f).is_some_and(|n| n.contains(&c)));
        if needed && !v.contains(&f.name()) {
            v.push(f.name());
        }
    }
    v
}
