//! The eBPF backend behind the core `Dataplane` seam: the tc service datapath on every local pod
//! veth and on the node's devices, socket LB on the node's cgroup, the maps in step with the
//! Services of the features the engine gives it.
//!
//! Releasing a feature deletes its service entries (new flows go to the new owner) but leaves
//! the programs attached: flows already in the BPF conntrack keep their backend, so established
//! connections survive the switch.

use std::collections::BTreeSet;
use std::path::PathBuf;

use sluice_core::{
    BackendId, BackendSpec, Capability, CleanupReport, Dataplane, DataplaneError, Desired, Feature, LbRow, MissingFact,
    ObjectError, ObjectRef, Op, Report, Restored,
};

use crate::datapath::{Datapath, DatapathError};
use crate::maps::{DEVICE_FEATURES, NodeCtx};
use std::sync::LazyLock;

/// What loading the objects needs: they are loaded together (`crate::OBJECTS`), which creates
/// every map and loads every tc program, so whatever one of them uses every feature on eBPF
/// needs (else the verifier or map creation would fail at runtime instead of the plan choosing
/// iptables up front).
const OBJECT: [Capability; 9] = [
    Capability::Bpffs,
    Capability::MapHash,
    Capability::MapLruHash,
    Capability::MapLpmTrie,
    Capability::MapRingbuf,
    Capability::ProgSchedCls,
    Capability::HelperFibLookup,
    Capability::HelperRedirectNeigh,
    Capability::HelperSkLookup,
];

fn object_and(extra: &[Capability]) -> Vec<Capability> {
    OBJECT.iter().chain(extra).copied().collect()
}

/// The tc programs also need an attach path (TCX or classic tc); socket LB its cgroup hooks.
static TC: LazyLock<Vec<Capability>> = LazyLock::new(|| object_and(&[Capability::TcAttach]));
static SOCK_TCP: LazyLock<Vec<Capability>> = LazyLock::new(|| {
    use Capability::*;
    object_and(&[CgroupV2, AttachCgroupConnect4, AttachCgroupGetpeername4, HelperSocketCookie, HelperGetNetnsCookie])
});
static SOCK_UDP: LazyLock<Vec<Capability>> = LazyLock::new(|| {
    use Capability::*;
    object_and(&[CgroupV2, AttachCgroupSendmsg4, AttachCgroupRecvmsg4, HelperSocketCookie, HelperGetNetnsCookie])
});

/// Kernel capabilities each feature needs on this backend; `None`: not built yet.
fn needs(f: Feature) -> Option<&'static [Capability]> {
    Some(match f {
        // The pod-veth programs (ClusterIP, affinity, source ranges, policy) and the device
        // programs (NodePort and friends) share the object's needs and one attach path.
        Feature::ClusterIp
        | Feature::SessionAffinity
        | Feature::NodePort
        | Feature::ExternalIps
        | Feature::LoadBalancer
        | Feature::HostPort
        | Feature::TrafficPolicyLocal
        | Feature::HealthCheckNodePort
        | Feature::SourceRanges
        | Feature::Policy
        // Traces from the pod-veth programs into the ring buffer (MapRingbuf is in OBJECT).
        | Feature::Flows => TC.as_slice(),
        Feature::SocketLbTcp => SOCK_TCP.as_slice(),
        Feature::SocketLbUdp => SOCK_UDP.as_slice(),
    })
}

/// Policy at the pod veths runs before netfilter: it sees Service backends only when eBPF
/// translates the ClusterIPs too.
pub const SPEC: BackendSpec = BackendSpec { id: BackendId::EBPF, needs, policy_needs_own_translation: true };

/// What a device whose attach failed leaves unserved (with the modifiers of those frontends).
const DEVICE_HOLE: [Feature; 6] = [
    Feature::NodePort,
    Feature::ExternalIps,
    Feature::LoadBalancer,
    Feature::HostPort,
    Feature::TrafficPolicyLocal,
    Feature::SourceRanges,
];

/// What a pod veth whose attach failed leaves unserved: that pod's ClusterIP traffic and its
/// policy.
const POD_HOLE: [Feature; 3] = [Feature::ClusterIp, Feature::SessionAffinity, Feature::Policy];

/// The hole an attach failure leaves: the owned features the interface carries.
pub(crate) fn hole(ifname: &str, device: bool, owned: &BTreeSet<Feature>) -> Option<sluice_core::dataplane::Hole> {
    let kinds: &[Feature] = if device { &DEVICE_HOLE } else { &POD_HOLE };
    let features: BTreeSet<Feature> = kinds.iter().copied().filter(|f| owned.contains(f)).collect();
    (!features.is_empty()).then(|| sluice_core::dataplane::Hole { interface: ifname.to_string(), features })
}

pub struct EbpfDataplane {
    pin_dir: PathBuf,
    map_sizes: sluice_core::MapSizes,
    /// Maglev table size when the config says `lb_algorithm: maglev`.
    maglev_m: Option<u32>,
    dp: Option<Datapath>,
    /// Interfaces whose links this process attached or took over (swapped its programs into).
    handled: BTreeSet<String>,
    /// Devices kept attached after their frontends went to another dataplane.
    draining: BTreeSet<String>,
    /// The tc attach path `handled` was attached on: a new path re-attaches every interface.
    path: sluice_core::TcAttach,
    /// Whether this process attached the socket-LB programs.
    cgroup_handled: bool,
    /// (source generation, node context) of the last map sync: skip when unchanged.
    synced: Option<(u64, NodeCtx)>,
    devices: Vec<String>,
    cgroup: Option<PathBuf>,
    /// Services the maps hold (admitted in the last sync): they keep their place when full.
    admitted: BTreeSet<sluice_core::ServiceName>,
    /// Services (or frontends) the last sync refused; reported on every pass while it lasts.
    refused: Vec<ObjectError>,
    policy: PolicyState,
}

/// (view generation, L7 proxy port, its listener's inode): what a policy sync wrote.
type PolicyKey = (u64, Option<u16>, Option<u64>);

/// The policy maps as this process last wrote them.
#[derive(Default)]
struct PolicyState {
    /// ((view generation, L7 proxy port, its listener's inode), owned) of the last successful sync.
    last: Option<Option<PolicyKey>>,
    written: Option<crate::policy::Written>,
    ids: std::collections::BTreeMap<String, u32>,
    programmed: bool,
    errors: Vec<ObjectError>,
    endpoints: usize,
    /// Why L7 rules drop although a proxy runs (its connections cannot be steered to it).
    l7_unsteered: Option<String>,
}

fn err(object: ObjectRef, op: Op, e: impl std::fmt::Display) -> ObjectError {
    ObjectError { object, error: DataplaneError::Kernel { backend: BackendId::EBPF, op, detail: e.to_string() } }
}

fn datapath_err(op: Op, e: &DatapathError) -> ObjectError {
    match e {
        DatapathError::Map { map, .. } => err(ObjectRef::Map((*map).into()), op, e),
        DatapathError::Attach { target, .. } => err(ObjectRef::Interface(target.clone()), Op::Attach, e),
        _ => err(ObjectRef::Backend, op, e),
    }
}

impl EbpfDataplane {
    pub fn new(pin_dir: PathBuf, map_sizes: sluice_core::MapSizes, maglev_m: Option<u32>) -> Self {
        EbpfDataplane {
            pin_dir,
            map_sizes,
            maglev_m,
            dp: None,
            handled: BTreeSet::new(),
            draining: BTreeSet::new(),
            path: sluice_core::TcAttach::None,
            cgroup_handled: false,
            synced: None,
            devices: Vec::new(),
            cgroup: None,
            admitted: BTreeSet::new(),
            refused: Vec::new(),
            policy: PolicyState::default(),
        }
    }

    fn open(&mut self) -> Result<&mut Datapath, Box<ObjectError>> {
        if self.dp.is_none() {
            let dp =
                Datapath::open(&self.pin_dir, &self.map_sizes).map_err(|e| Box::new(datapath_err(Op::Load, &e)))?;
            tracing::info!(pin_dir = %self.pin_dir.display(), "eBPF datapath loaded (pinned maps restored)");
            self.dp = Some(dp);
        }
        self.dp.as_mut().ok_or_else(|| Box::new(err(ObjectRef::Backend, Op::Load, "not loaded")))
    }

    fn programmed(&self) -> BTreeSet<Feature> {
        let mut p: BTreeSet<Feature> = self
            .synced
            .as_ref()
            .map(|(_, c)| c.owned.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| *f != Feature::Policy)
            .collect();
        if self.policy.programmed {
            p.insert(Feature::Policy);
        }
        p
    }

    /// Policy maps: the view's rules while `policy` is owned, nothing when it is not. A pass
    /// that cannot write everything writes nothing (the last complete policy stays).
    fn reconcile_policy(&mut self, dp: &mut Datapath, desired: &Desired<'_>, owned: &BTreeSet<Feature>) {
        let want_policy = owned.contains(&Feature::Policy);
        // The listener's inode too: a new proxy process (same port) must be steered to.
        let listener = desired.l7_listener.and_then(|fd| nix::sys::stat::fstat(fd).ok()).map(|st| st.st_ino);
        let key = want_policy.then_some((desired.policy.generation, desired.policy.l7_proxy, listener));
        if self.policy.last == Some(key) {
            return;
        }
        let have = match self.policy.written.take() {
            Some(h) => h,
            None => match crate::policy::read(dp) {
                Ok(h) => h,
                Err(e) => {
                    self.policy.errors = vec![datapath_err(Op::Restore, &e)];
                    return;
                }
            },
        };
        let (mut want, errs) = if want_policy {
            let taken: BTreeSet<u32> = have.sets.iter().map(|r| r.0).collect();
            let ifindex = |name: &str| nix::net::if_::if_nametoindex(name).ok();
            crate::policy::encode(desired.policy, &ifindex, &self.policy.ids, &taken)
        } else {
            (crate::policy::Encoded::default(), Vec::new())
        };
        self.policy.errors =
            errs.iter().map(|e| err(ObjectRef::Map("sluice_pol_ep".into()), Op::MapUpdate, e)).collect();
        // A proxy port is written only once its connections reach the listener; until then
        // (or on a kernel without the socket-lookup hook) proxy rules drop.
        self.policy.l7_unsteered = None;
        if want.l7_port != 0 {
            let steered = match desired.l7_listener {
                Some(fd) => crate::policy_l7::steer(dp, fd).map_err(|e| e.to_string()),
                None => Err("the agent passed no listening socket for the proxy".into()),
            };
            if let Err(e) = steered {
                tracing::warn!(error = %e, "L7 redirects off: proxy rules drop");
                self.policy.errors.push(err(ObjectRef::Map("sluice_l7_sock".into()), Op::Attach, &e));
                self.policy.l7_unsteered = Some(e);
                want.l7_port = 0;
            }
        }
        crate::policy::keep_held(&mut want, &have);
        match crate::policy::sync(dp, &have, &want) {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(writes = n, endpoints = want.endpoints.len() / 2, "eBPF policy maps synced");
                }
                self.policy.endpoints = want.endpoints.len() / 2;
                self.policy.written = Some(crate::policy::Written::from(&want));
                self.policy.ids = want.ids;
                self.policy.programmed = want_policy;
                self.policy.last = Some(key);
            }
            Err(e) => {
                // Re-read the maps next pass: what was written is not known exactly.
                self.policy.errors.push(datapath_err(Op::MapUpdate, &e));
                self.policy.last = None;
            }
        }
    }
}

impl Dataplane for EbpfDataplane {
    fn spec(&self) -> BackendSpec {
        SPEC
    }

    /// Pinned maps from a previous agent: their entries keep serving until rewritten. Which
    /// features they served is not recorded, so any entry counts as every Service feature.
    fn restore(&mut self) -> Restored {
        let mut r = Restored::default();
        if !self.pin_dir.exists() {
            return r;
        }
        match self.open() {
            Ok(dp) => {
                r.objects = dp.entries().services.len() + dp.entries().backends.len();
                if !dp.entries().services.is_empty() {
                    r.features = Feature::SERVICES.into_iter().filter(|f| needs(*f).is_some()).collect();
                }
                // Pinned policy entries keep enforcing until the new agent's plan says otherwise.
                if crate::policy::read(dp).is_ok_and(|w| w.endpoints.values().any(|v| v.enforced != 0)) {
                    r.features.insert(Feature::Policy);
                }
            }
            Err(e) => r.errors.push(*e),
        }
        r
    }

    fn reconcile(&mut self, desired: &Desired<'_>, owned: &BTreeSet<Feature>, _prune: bool) -> Report {
        let mut report = Report { programmed: self.programmed(), ..Default::default() };
        if owned.is_empty() && self.dp.is_none() && !self.pin_dir.exists() {
            return report;
        }
        if let Err(e) = self.open() {
            report.errors.push(*e);
            return report;
        }
        // Taken out for the pass (the attach bookkeeping below borrows self), always put back.
        let Some(mut dp) = self.dp.take() else { return report };
        self.reconcile_with(&mut dp, desired, owned, &mut report);
        self.dp = Some(dp);
        report
    }

    fn cleanup(&mut self) -> CleanupReport {
        // Unpinning the links detaches the programs from the pod veths.
        self.dp = None;
        self.synced = None;
        self.handled.clear();
        self.draining.clear();
        self.policy = PolicyState::default();
        match crate::datapath::remove_all(&self.pin_dir) {
            Ok(removed) => CleanupReport { removed, errors: Vec::new() },
            Err(e) => CleanupReport { removed: 0, errors: vec![err(ObjectRef::Backend, Op::Cleanup, e)] },
        }
    }

    fn summary(&self) -> String {
        match &self.dp {
            None => "not loaded (no feature is given to eBPF on this node)".into(),
            Some(dp) => format!(
                "loaded, maps and links pinned in {}; tc attach {}; programs on {} pod veth(s) and device(s) [{}]{}; socket LB {}; {} service frontend(s); policy {}{}",
                self.pin_dir.display(),
                self.path.describe(),
                dp.attached().len().saturating_sub(self.devices.len() + self.draining.len()),
                self.devices.join(", "),
                if self.draining.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", draining on [{}] (flows eBPF translated before the device frontends moved)",
                        self.draining.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                },
                self.cgroup.as_ref().map(|c| format!("on {}", c.display())).unwrap_or_else(|| "off".into()),
                dp.entries().services.len(),
                if self.policy.programmed { format!("on {} endpoint(s)", self.policy.endpoints) } else { "off".into() },
                match (self.policy.written.as_ref().map_or(0, |w| w.l7_port), &self.policy.l7_unsteered) {
                    (0, None) => String::new(),
                    (0, Some(why)) => format!("; L7 rules drop: {why}"),
                    (p, _) => format!("; L7 rules redirected to the proxy on 127.0.0.1:{p} (sk_lookup, bpf_sk_assign)"),
                }
            ),
        }
    }

    /// Read back from the kernel's maps; what this process wrote if they cannot be read.
    fn lb_rows(&self) -> Vec<LbRow> {
        let Some(dp) = self.dp.as_ref() else { return Vec::new() };
        match dp.kernel_entries() {
            Ok(e) => crate::lb_list::rows(&e),
            Err(e) => {
                tracing::warn!(error = %e, "the service maps could not be read back; listing what was written");
                crate::lb_list::rows(dp.entries())
            }
        }
    }

    /// The maps whose entries this process writes (conntrack, NAT and affinity are LRU maps the
    /// datapath fills: counting them means walking them, so they are not reported).
    fn usage(&self) -> Vec<sluice_core::dataplane::Usage> {
        use sluice_core::dataplane::Usage;
        let Some(dp) = &self.dp else { return Vec::new() };
        let e = dp.entries();
        let written = |map: &str| -> Option<u64> {
            Some(match map {
                "sluice_svc" => e.services.len() as u64,
                "sluice_backends" => e.backends.len() as u64,
                "sluice_src_ranges" => e.ranges.len() as u64,
                "sluice_maglev" => e.maglev.values().map(|t| t.len() as u64).sum(),
                _ => return None,
            })
        };
        let mut out: Vec<Usage> = crate::loader::map_sizes(&self.map_sizes)
            .into_iter()
            .filter_map(|(map, capacity)| {
                written(map).map(|entries| Usage::MapFill { map: map.into(), entries, capacity: capacity.into() })
            })
            .collect();
        out.push(Usage::Objects { kind: "attached-interfaces".into(), count: dp.attached().len() as u64 });
        out
    }
}

impl EbpfDataplane {
    fn reconcile_with(
        &mut self,
        dp: &mut Datapath,
        desired: &Desired<'_>,
        owned: &BTreeSet<Feature>,
        report: &mut Report,
    ) {
        let node = desired.node;
        for m in &dp.size_mismatches {
            report.errors.push(ObjectError {
                object: ObjectRef::Map(m.map.into()),
                error: DataplaneError::MapSize {
                    backend: BackendId::EBPF,
                    map: m.map.into(),
                    pinned: m.pinned,
                    configured: m.configured,
                    hint: "it keeps its size until `sluice cleanup` (which interrupts forwarding) and a restart".into(),
                },
            });
        }
        let mut keep = BTreeSet::new();
        let device_features: Vec<&str> =
            DEVICE_FEATURES.iter().filter(|f| owned.contains(f)).map(|f| f.name()).collect();
        let serves_devices = !device_features.is_empty();
        let devices: &[String] = if serves_devices { &node.devices } else { &[] };
        let fact = if !serves_devices {
            None
        } else if node.ips.is_empty() {
            Some(MissingFact::NodeIp)
        } else if devices.is_empty() {
            Some(MissingFact::Device)
        } else {
            None
        };
        if let Some(fact) = fact {
            report.errors.push(ObjectError {
                object: ObjectRef::Backend,
                error: DataplaneError::NodeFact {
                    backend: BackendId::EBPF,
                    features: device_features.join(", "),
                    fact,
                },
            });
        }
        if node.tc_attach != self.path {
            if !self.handled.is_empty() {
                tracing::info!(from = ?self.path, to = ?node.tc_attach, "tc attach path changed: re-attaching every interface");
            }
            self.handled.clear();
            self.path = node.tc_attach;
        }
        // Devices whose frontends went to another dataplane keep the program while eBPF is
        // loaded: it carries the flows it translated (their NAT state is in its maps, not the
        // kernel's conntrack, so netfilter could not take them over) and passes new ones
        // (NODE_F_DEVICES_DRAIN). Detaching would reset every established NodePort flow.
        if !serves_devices {
            let attached = dp.attached();
            for d in node.devices.iter().filter(|d| attached.contains(*d)) {
                if keep.insert(d.clone()) && !self.draining.contains(d) {
                    tracing::info!(device = %d, "eBPF keeps its program on the device for the flows it translated; new flows go to the dataplane that serves the device frontends now");
                }
            }
            self.draining = node.devices.iter().filter(|d| keep.contains(*d)).cloned().collect();
        } else {
            self.draining.clear();
        }
        let pods = desired.local_endpoints.iter().filter(|e| !e.host_interface.is_empty()).map(|e| &e.host_interface);
        for (ifname, device) in devices.iter().map(|d| (d, true)).chain(pods.map(|p| (p, false))) {
            keep.insert(ifname.clone());
            // Once per interface and process: new links, or this process's programs swapped
            // atomically into links a previous agent pinned.
            if self.handled.contains(ifname) {
                continue;
            }
            let res = if device { dp.attach_device(ifname, node.tc_attach) } else { dp.attach(ifname, node.tc_attach) };
            match res {
                Ok(()) => {
                    if device {
                        tracing::info!(device = %ifname, "eBPF program attached to node device");
                    }
                    self.handled.insert(ifname.clone());
                }
                Err(e) => {
                    report.errors.push(datapath_err(Op::Attach, &e));
                    report.holes.extend(hole(ifname, device, owned));
                }
            }
        }
        for gone in dp.detach_others(&keep) {
            self.handled.remove(&gone);
            tracing::info!(ifname = %gone, "eBPF links released (pod removed or device no longer served)");
        }
        self.devices = devices.to_vec();
        if owned.contains(&Feature::SocketLbTcp) || owned.contains(&Feature::SocketLbUdp) {
            if !self.cgroup_handled {
                match dp.attach_cgroup(&node.cgroup) {
                    Ok(()) => {
                        tracing::info!(cgroup = %node.cgroup.display(), "socket LB attached");
                        self.cgroup_handled = true;
                        self.cgroup = Some(node.cgroup.clone());
                    }
                    Err(e) => report.errors.push(err(ObjectRef::Cgroup(node.cgroup.clone()), Op::Attach, e)),
                }
            }
        } else if dp.cgroup_attached() || self.cgroup_handled {
            dp.detach_cgroup();
            self.cgroup_handled = false;
            self.cgroup = None;
            tracing::info!("socket LB released (the plan no longer gives it to eBPF)");
        }
        self.reconcile_policy(dp, desired, owned);
        report.errors.extend(self.policy.errors.iter().cloned());
        report.programmed = self.programmed();
        let ctx = NodeCtx {
            node_name: node.name.clone(),
            node_ips: node.ips.clone(),
            owned: owned.clone(),
            maglev_m: self.maglev_m,
            allowed_verdicts: desired.policy.log_allows,
            trace_to_stack: node.trace_to_stack,
        };
        if self.synced.as_ref().is_some_and(|(g, c)| *g == desired.generation && *c == ctx) {
            report.errors.extend(self.refused.iter().cloned());
            return;
        }
        let adm = crate::admit::admit(
            desired.view.services,
            desired.view.all_host_ports,
            &ctx,
            &self.map_sizes,
            &self.admitted,
        );
        for r in adm.refused.iter().filter(|r| !self.refused.contains(r)) {
            tracing::warn!(error = %r, "refused by the eBPF dataplane; everything else is programmed");
        }
        self.refused = adm.refused;
        report.errors.extend(self.refused.iter().cloned());
        match dp.update(&adm.services, desired.view.all_host_ports, &ctx) {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(changes = n, "eBPF service maps synced");
                }
                report.changes = n;
                self.admitted = adm.services.iter().map(|s| s.name.clone()).collect();
                // Services the kernel refused keep what they had and are retried on the next
                // pass (not marked synced); every other Service is written.
                let refused = dp.refused();
                for (name, e) in refused {
                    let object = name.clone().map_or(ObjectRef::Backend, ObjectRef::Service);
                    tracing::warn!(%object, error = %e, "the kernel refused one Service's entries; the others are written");
                    report.errors.push(err(
                        object,
                        Op::MapUpdate,
                        format!("{e} (what it had stays; retried every pass)"),
                    ));
                }
                if refused.is_empty() {
                    self.synced = Some((desired.generation, ctx));
                }
                report.programmed = self.programmed();
            }
            Err(e) => report.errors.push(datapath_err(Op::MapUpdate, &e)),
        }
    }
}
