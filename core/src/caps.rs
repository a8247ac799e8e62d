//! What the running kernel and node offer. Filled by sluice-probes; consumed by the plan.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Every capability sluice probes. Names (kebab-case) are what `probes.assume_missing` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    KernelBtf,
    Bpffs,
    CgroupV2,
    ProgSchedCls,
    ProgXdp,
    ProgCgroupSkb,
    ProgSockOps,
    AttachCgroupConnect4,
    AttachCgroupSendmsg4,
    AttachCgroupRecvmsg4,
    AttachCgroupGetpeername4,
    MapHash,
    MapLruHash,
    MapLpmTrie,
    MapRingbuf,
    MapHashOfMaps,
    HelperFibLookup,
    HelperRedirectNeigh,
    HelperRedirectPeer,
    HelperGetNetnsCookie,
    /// `bpf_skc_lookup_tcp` and `bpf_sk_lookup_udp` from tc (5.2): the SNAT port check.
    HelperSkLookup,
    /// `bpf_get_socket_cookie` from cgroup/sock_addr (5.7): socket-LB reverse translation.
    HelperSocketCookie,
    Tcx,
    /// A clsact qdisc with a `cls_bpf` direct-action filter (classic tc, every kernel here).
    TcClsact,
    /// Derived: tc programs can attach at all (TCX, else classic tc). The eBPF pod and device
    /// programs need this, not TCX itself.
    TcAttach,
    Iptables,
    Conntrack,
    Ipset,
}

impl Capability {
    pub const ALL: [Capability; 28] = [
        Capability::KernelBtf,
        Capability::Bpffs,
        Capability::CgroupV2,
        Capability::ProgSchedCls,
        Capability::ProgXdp,
        Capability::ProgCgroupSkb,
        Capability::ProgSockOps,
        Capability::AttachCgroupConnect4,
        Capability::AttachCgroupSendmsg4,
        Capability::AttachCgroupRecvmsg4,
        Capability::AttachCgroupGetpeername4,
        Capability::MapHash,
        Capability::MapLruHash,
        Capability::MapLpmTrie,
        Capability::MapRingbuf,
        Capability::MapHashOfMaps,
        Capability::HelperFibLookup,
        Capability::HelperRedirectNeigh,
        Capability::HelperRedirectPeer,
        Capability::HelperGetNetnsCookie,
        Capability::HelperSkLookup,
        Capability::HelperSocketCookie,
        Capability::Tcx,
        Capability::TcClsact,
        Capability::TcAttach,
        Capability::Iptables,
        Capability::Conntrack,
        Capability::Ipset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::KernelBtf => "kernel-btf",
            Capability::Bpffs => "bpffs",
            Capability::CgroupV2 => "cgroup-v2",
            Capability::ProgSchedCls => "prog-sched-cls",
            Capability::ProgXdp => "prog-xdp",
            Capability::ProgCgroupSkb => "prog-cgroup-skb",
            Capability::ProgSockOps => "prog-sock-ops",
            Capability::AttachCgroupConnect4 => "attach-cgroup-connect4",
            Capability::AttachCgroupSendmsg4 => "attach-cgroup-sendmsg4",
            Capability::AttachCgroupRecvmsg4 => "attach-cgroup-recvmsg4",
            Capability::AttachCgroupGetpeername4 => "attach-cgroup-getpeername4",
            Capability::MapHash => "map-hash",
            Capability::MapLruHash => "map-lru-hash",
            Capability::MapLpmTrie => "map-lpm-trie",
            Capability::MapRingbuf => "map-ringbuf",
            Capability::MapHashOfMaps => "map-hash-of-maps",
            Capability::HelperFibLookup => "helper-fib-lookup",
            Capability::HelperRedirectNeigh => "helper-redirect-neigh",
            Capability::HelperRedirectPeer => "helper-redirect-peer",
            Capability::HelperGetNetnsCookie => "helper-get-netns-cookie",
            Capability::HelperSkLookup => "helper-sk-lookup",
            Capability::HelperSocketCookie => "helper-socket-cookie",
            Capability::Tcx => "tcx",
            Capability::TcClsact => "tc-clsact",
            Capability::TcAttach => "tc-attach",
            Capability::Iptables => "iptables",
            Capability::Conntrack => "conntrack",
            Capability::Ipset => "ipset",
        }
    }

    /// How a human would name what is missing (used in plan reasons).
    pub fn describe(self) -> &'static str {
        match self {
            Capability::KernelBtf => "no kernel BTF",
            Capability::Bpffs => "no bpffs at /sys/fs/bpf",
            Capability::CgroupV2 => "no cgroup v2 mount",
            Capability::ProgSchedCls => "no sched_cls programs",
            Capability::ProgXdp => "no XDP programs",
            Capability::ProgCgroupSkb => "no cgroup_skb programs",
            Capability::ProgSockOps => "no sock_ops programs",
            Capability::AttachCgroupConnect4 => "no cgroup/connect4",
            Capability::AttachCgroupSendmsg4 => "no cgroup/sendmsg4",
            Capability::AttachCgroupRecvmsg4 => "no cgroup/recvmsg4",
            Capability::AttachCgroupGetpeername4 => "no cgroup/getpeername4",
            Capability::MapHash => "no hash maps",
            Capability::MapLruHash => "no LRU hash maps",
            Capability::MapLpmTrie => "no LPM trie maps",
            Capability::MapRingbuf => "no ringbuf maps",
            Capability::MapHashOfMaps => "no hash-of-maps",
            Capability::HelperFibLookup => "no bpf_fib_lookup",
            Capability::HelperRedirectNeigh => "no bpf_redirect_neigh",
            Capability::HelperRedirectPeer => "no bpf_redirect_peer",
            Capability::HelperGetNetnsCookie => "no bpf_get_netns_cookie",
            Capability::HelperSkLookup => "no bpf_skc_lookup_tcp/bpf_sk_lookup_udp/bpf_sk_assign",
            Capability::HelperSocketCookie => "no bpf_get_socket_cookie for socket hooks",
            Capability::Tcx => "no TCX links",
            Capability::TcClsact => "no clsact qdisc with cls_bpf",
            Capability::TcAttach => "no tc attach (neither TCX nor clsact with cls_bpf)",
            Capability::Iptables => "no iptables binaries",
            Capability::Conntrack => "no conntrack",
            Capability::Ipset => "no ipset",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability {given:?}; known: {known}")]
pub struct UnknownCapability {
    pub given: String,
    pub known: String,
}

impl FromStr for Capability {
    type Err = UnknownCapability;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownCapability { given: s.into(), known: Capability::ALL.map(|c| c.name()).join(", ") })
    }
}

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub found: bool,
    /// What was tried, and the error when it failed.
    pub detail: String,
    /// True when `probes.assume_missing` hid a capability the kernel has.
    #[serde(default)]
    pub assumed_missing: bool,
}

/// The probed node: every capability with its outcome, plus facts that are not capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub kernel: String,
    pub results: BTreeMap<Capability, ProbeResult>,
    /// kube-proxy's rules (iptables chains or nft table) are present on this node.
    pub kube_proxy_active: bool,
    pub kube_proxy_evidence: String,
}

impl Capabilities {
    pub fn has(&self, c: Capability) -> bool {
        self.results.get(&c).is_some_and(|r| r.found)
    }

    /// Every capability present (for tests and for rehearsing a newer kernel's plan).
    pub fn all_present() -> Self {
        Capabilities {
            kernel: "test".into(),
            results: Capability::ALL
                .into_iter()
                .map(|c| (c, ProbeResult { found: true, detail: "assumed".into(), assumed_missing: false }))
                .collect(),
            kube_proxy_active: false,
            kube_proxy_evidence: String::new(),
        }
    }

    /// How tc programs attach here: TCX links where the kernel has them (6.6+), else a clsact
    /// qdisc with `cls_bpf` filters (every kernel sluice runs on).
    pub fn tc_attach(&self) -> TcAttach {
        if self.results.get(&Capability::TcAttach).is_some_and(|r| r.assumed_missing) {
            return TcAttach::None;
        }
        self.raw_tc_attach()
    }

    fn raw_tc_attach(&self) -> TcAttach {
        if self.has(Capability::Tcx) {
            TcAttach::Tcx
        } else if self.has(Capability::TcClsact) {
            TcAttach::Classic
        } else {
            TcAttach::None
        }
    }

    /// Fill the derived `tc-attach` from `tcx` and `tc-clsact` (after probing, and again after
    /// `assume_missing`, so hiding `tcx` rehearses a pre-6.6 kernel on the classic path).
    /// Hiding `tc-attach` itself hides both paths.
    pub fn derive(mut self) -> Self {
        let hidden = self.results.get(&Capability::TcAttach).is_some_and(|r| r.assumed_missing);
        if !hidden {
            let path = self.raw_tc_attach();
            let detail = match path {
                TcAttach::Tcx => "via TCX links".to_string(),
                TcAttach::Classic => "via clsact + cls_bpf (classic tc): this kernel has no TCX".to_string(),
                TcAttach::None => "neither TCX nor clsact + cls_bpf works here".to_string(),
            };
            self.results.insert(
                Capability::TcAttach,
                ProbeResult { found: path != TcAttach::None, detail, assumed_missing: false },
            );
        }
        self
    }

    /// Hide capabilities, as `probes.assume_missing` asks, so a newer kernel rehearses an older one.
    pub fn assume_missing(mut self, missing: &[Capability]) -> Self {
        for c in missing {
            let r = self.results.entry(*c).or_insert(ProbeResult {
                found: false,
                detail: String::new(),
                assumed_missing: false,
            });
            if r.found {
                r.found = false;
                r.assumed_missing = true;
                r.detail = format!("present, but assumed missing by probes.assume_missing ({})", r.detail);
            }
        }
        self.derive()
    }
}

/// The tc attach path of a node (what `sluice probe`, `sluice plan` and status show).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcAttach {
    /// BPF links on the device's TCX hook (Linux 6.6+), pinned so they outlive the agent.
    Tcx,
    /// A clsact qdisc plus `cls_bpf` direct-action filters at sluice's own priority and handle.
    Classic,
    /// No way to attach tc programs: the pod and device features go to another backend.
    #[default]
    None,
}

impl TcAttach {
    pub fn describe(self) -> &'static str {
        match self {
            TcAttach::Tcx => "tcx (BPF links, Linux 6.6+)",
            TcAttach::Classic => "classic tc (clsact qdisc + cls_bpf direct-action; no TCX on this kernel)",
            TcAttach::None => "none (neither TCX nor clsact + cls_bpf)",
        }
    }
}
