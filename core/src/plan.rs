//! The feature plan: for each feature, who serves it on this node and why. A pure function of
//! the probed capabilities and the configuration, so every mode x dataplane x missing
//! capability combination is tested without a kernel.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::caps::{Capabilities, Capability};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    ClusterIp,
    NodePort,
    ExternalIps,
    LoadBalancer,
    HostPort,
    SocketLbTcp,
    SocketLbUdp,
    SessionAffinity,
    SourceRanges,
    TrafficPolicyLocal,
    HealthCheckNodePort,
    Policy,
    Flows,
}

impl Feature {
    /// Every feature: the Service features, then policy and flows.
    pub const ALL: [Feature; 13] = {
        let mut all = [Feature::Policy; 13];
        let mut i = 0;
        while i < Feature::SERVICES.len() {
            all[i] = Feature::SERVICES[i];
            i += 1;
        }
        all[11] = Feature::Policy;
        all[12] = Feature::Flows;
        all
    };

    /// The Service features (kube-proxy's job): every feature but policy and flows.
    pub const SERVICES: [Feature; 11] = [
        Feature::ClusterIp,
        Feature::NodePort,
        Feature::ExternalIps,
        Feature::LoadBalancer,
        Feature::HostPort,
        Feature::SocketLbTcp,
        Feature::SocketLbUdp,
        Feature::SessionAffinity,
        Feature::SourceRanges,
        Feature::TrafficPolicyLocal,
        Feature::HealthCheckNodePort,
    ];

    /// The config name (`kube_proxy_replacement_features`).
    pub fn name(self) -> &'static str {
        match self {
            Feature::ClusterIp => "cluster-ip",
            Feature::NodePort => "node-port",
            Feature::ExternalIps => "external-ips",
            Feature::LoadBalancer => "load-balancer",
            Feature::HostPort => "host-port",
            Feature::SocketLbTcp => "socket-lb-tcp",
            Feature::SocketLbUdp => "socket-lb-udp",
            Feature::SessionAffinity => "session-affinity",
            Feature::SourceRanges => "source-ranges",
            Feature::TrafficPolicyLocal => "traffic-policy-local",
            Feature::HealthCheckNodePort => "health-check-node-port",
            Feature::Policy => "policy",
            Feature::Flows => "flows",
        }
    }

    /// The name in the status line, as Cilium users read it.
    pub fn title(self) -> &'static str {
        match self {
            Feature::ClusterIp => "ClusterIP",
            Feature::NodePort => "NodePort",
            Feature::ExternalIps => "ExternalIPs",
            Feature::LoadBalancer => "LoadBalancer",
            Feature::HostPort => "HostPort",
            Feature::SocketLbTcp => "SocketLB-TCP",
            Feature::SocketLbUdp => "SocketLB-UDP",
            Feature::SessionAffinity => "SessionAffinity",
            Feature::SourceRanges => "SourceRanges",
            Feature::TrafficPolicyLocal => "TrafficPolicyLocal",
            Feature::HealthCheckNodePort => "HealthCheckNodePort",
            Feature::Policy => "Policy",
            Feature::Flows => "Flows",
        }
    }

    /// Features kube-proxy could serve instead (policy and flows are sluice's alone).
    pub fn is_kube_proxy_feature(self) -> bool {
        !matches!(self, Feature::Policy | Feature::Flows)
    }

    /// A feature that only makes sense with the same owner as its base feature.
    pub fn base(self) -> Option<Feature> {
        match self {
            Feature::SessionAffinity => Some(Feature::ClusterIp),
            Feature::TrafficPolicyLocal | Feature::HealthCheckNodePort => Some(Feature::NodePort),
            Feature::SourceRanges => Some(Feature::LoadBalancer),
            _ => None,
        }
    }

    /// Kernel capabilities the eBPF backend needs for this feature.
    pub fn ebpf_needs(self) -> &'static [Capability] {
        use Capability::*;
        match self {
            // Attached through pinned TCX links (kernel >= 6.6), which survive agent restarts.
            Feature::ClusterIp | Feature::SessionAffinity => &[Bpffs, ProgSchedCls, MapHash, MapLruHash, Tcx],
            Feature::NodePort
            | Feature::ExternalIps
            | Feature::LoadBalancer
            | Feature::HostPort
            | Feature::TrafficPolicyLocal
            | Feature::HealthCheckNodePort => &[Bpffs, ProgSchedCls, MapHash, MapLruHash, Tcx, HelperFibLookup],
            Feature::SocketLbTcp => &[Bpffs, CgroupV2, MapHash, AttachCgroupConnect4, AttachCgroupGetpeername4],
            Feature::SocketLbUdp => &[Bpffs, CgroupV2, MapHash, MapLruHash, AttachCgroupSendmsg4, AttachCgroupRecvmsg4],
            Feature::SourceRanges => &[Bpffs, ProgSchedCls, MapHash, MapLruHash, Tcx, MapLpmTrie],
            Feature::Policy => &[Bpffs, ProgSchedCls, MapHash, MapLruHash, MapLpmTrie],
            Feature::Flows => &[Bpffs, ProgSchedCls, MapRingbuf],
        }
    }

    /// What the iptables/netlink backend needs for this feature.
    pub fn iptables_needs(self) -> &'static [Capability] {
        use Capability::*;
        match self {
            Feature::Policy => &[Iptables, Conntrack, Ipset],
            Feature::Flows => &[Iptables],
            _ => &[Iptables, Conntrack],
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown feature {given:?}; known: {known}")]
pub struct UnknownFeature {
    pub given: String,
    pub known: String,
}

impl FromStr for Feature {
    type Err = UnknownFeature;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Feature::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFeature { given: s.into(), known: Feature::ALL.map(|f| f.name()).join(", ") })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KprMode {
    Disabled,
    Partial,
    Probe,
    Strict,
}

impl KprMode {
    pub fn title(self) -> &'static str {
        match self {
            KprMode::Disabled => "Disabled",
            KprMode::Partial => "Partial",
            KprMode::Probe => "Probe",
            KprMode::Strict => "Strict",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneMode {
    Auto,
    Ebpf,
    Iptables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Owner {
    Ebpf,
    Iptables,
    KubeProxy,
    Off,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Owner::Ebpf => "eBPF",
            Owner::Iptables => "iptables",
            Owner::KubeProxy => "kube-proxy",
            Owner::Off => "off",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEntry {
    pub feature: Feature,
    pub owner: Owner,
    /// Why this owner: the mode, or the missing capabilities of the backends passed over.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub mode: KprMode,
    pub dataplane: DataplaneMode,
    pub entries: Vec<PlanEntry>,
    /// Things an operator must know (features left to kube-proxy without kube-proxy running...).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "kube_proxy_replacement=strict: feature {feature} cannot be served by {backends}: {missing}; run `sluice probe` to see the node's capabilities, or use kube_proxy_replacement=probe to leave it to kube-proxy"
    )]
    Strict { feature: Feature, backends: String, missing: String },
    #[error(
        "kube_proxy_replacement=partial: listed feature {feature} cannot be served by {backends}: {missing}; remove it from kube_proxy_replacement_features or change dataplane"
    )]
    PartialUnservable { feature: Feature, backends: String, missing: String },
    #[error(
        "kube_proxy_replacement=partial: feature {feature} needs {base} in kube_proxy_replacement_features too (they must have one owner)"
    )]
    PartialMissingBase { feature: Feature, base: Feature },
}

pub struct PlanInput<'a> {
    pub caps: &'a Capabilities,
    pub mode: KprMode,
    pub partial_features: &'a [Feature],
    pub dataplane: DataplaneMode,
    /// What each backend of this build can program. A feature a backend does not implement is
    /// never given to it, and the plan says so.
    pub implemented: Implemented,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Implemented {
    pub ebpf: &'static [Feature],
    pub iptables: &'static [Feature],
}

impl Implemented {
    /// Every feature on both backends (what the design promises; used to test the plan itself).
    pub const ALL: Implemented = Implemented { ebpf: &Feature::ALL, iptables: &Feature::ALL };

    fn has(&self, o: Owner, f: Feature) -> bool {
        match o {
            Owner::Ebpf => self.ebpf.contains(&f),
            Owner::Iptables => self.iptables.contains(&f),
            Owner::KubeProxy | Owner::Off => true,
        }
    }
}

fn missing(caps: &Capabilities, needs: &[Capability]) -> Vec<Capability> {
    needs.iter().copied().filter(|c| !caps.has(*c)).collect()
}

fn describe(m: &[Capability]) -> String {
    m.iter().map(|c| c.describe()).collect::<Vec<_>>().join(", ")
}

/// The backends a dataplane setting allows, best first.
fn candidates(d: DataplaneMode) -> &'static [Owner] {
    match d {
        DataplaneMode::Auto => &[Owner::Ebpf, Owner::Iptables],
        DataplaneMode::Ebpf => &[Owner::Ebpf],
        DataplaneMode::Iptables => &[Owner::Iptables],
    }
}

fn needs(f: Feature, o: Owner) -> &'static [Capability] {
    match o {
        Owner::Ebpf => f.ebpf_needs(),
        _ => f.iptables_needs(),
    }
}

/// The best allowed backend for `f`, or what each allowed backend lacks.
fn choose(
    caps: &Capabilities,
    imp: Implemented,
    f: Feature,
    d: DataplaneMode,
) -> Result<(Owner, String), (String, String)> {
    let mut lacks = Vec::new();
    for &o in candidates(d) {
        if !imp.has(o, f) {
            let m = missing(caps, needs(f, o));
            let also = if m.is_empty() { String::new() } else { format!(", {}", describe(&m)) };
            lacks.push(format!("{o}: not implemented in this build{also}"));
            continue;
        }
        let m = missing(caps, needs(f, o));
        if m.is_empty() {
            let reason = if lacks.is_empty() { format!("dataplane={}", dataplane_name(d)) } else { lacks.join("; ") };
            return Ok((o, reason));
        }
        lacks.push(format!("{o}: {}", describe(&m)));
    }
    let backends = candidates(d).iter().map(|o| o.to_string()).collect::<Vec<_>>().join(" or ");
    Err((backends, lacks.join("; ")))
}

fn dataplane_name(d: DataplaneMode) -> &'static str {
    match d {
        DataplaneMode::Auto => "auto",
        DataplaneMode::Ebpf => "ebpf",
        DataplaneMode::Iptables => "iptables",
    }
}

pub fn compute(input: &PlanInput<'_>) -> Result<Plan, PlanError> {
    let PlanInput { caps, mode, partial_features, dataplane, implemented } = *input;
    if mode == KprMode::Partial {
        for f in partial_features {
            if let Some(base) = f.base()
                && !partial_features.contains(&base)
            {
                return Err(PlanError::PartialMissingBase { feature: *f, base });
            }
        }
    }
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    let mut first_error: Option<PlanError> = None;
    for f in Feature::ALL {
        let taken = match mode {
            KprMode::Disabled => !f.is_kube_proxy_feature(),
            KprMode::Partial => !f.is_kube_proxy_feature() || partial_features.contains(&f),
            KprMode::Probe | KprMode::Strict => true,
        };
        if !taken {
            let why = match mode {
                KprMode::Disabled => "kube_proxy_replacement=disabled".to_string(),
                _ => "not in kube_proxy_replacement_features".to_string(),
            };
            entries.push(PlanEntry { feature: f, owner: Owner::KubeProxy, reason: why });
            continue;
        }
        let entry = match choose(caps, implemented, f, dataplane) {
            Ok((owner, reason)) => PlanEntry { feature: f, owner, reason },
            Err((backends, missing)) => {
                let required = mode == KprMode::Strict || (mode == KprMode::Partial && f.is_kube_proxy_feature());
                if required {
                    let e = match mode {
                        KprMode::Strict => PlanError::Strict { feature: f, backends, missing },
                        _ => PlanError::PartialUnservable { feature: f, backends, missing },
                    };
                    // Report the most telling failure: one that names a missing kernel capability
                    // beats one that only says a backend is not built.
                    let names_capability = |e: &PlanError| match e {
                        PlanError::Strict { missing, .. } | PlanError::PartialUnservable { missing, .. } => {
                            missing.split("; ").any(|m| !m.ends_with("not implemented in this build"))
                        }
                        PlanError::PartialMissingBase { .. } => false,
                    };
                    if first_error.as_ref().is_none_or(|f: &PlanError| !names_capability(f) && names_capability(&e)) {
                        first_error = Some(e);
                    }
                    continue;
                }
                let owner = if f.is_kube_proxy_feature() { Owner::KubeProxy } else { Owner::Off };
                warnings.push(format!("{} left to {owner}: {missing}", f.title()));
                PlanEntry { feature: f, owner, reason: missing }
            }
        };
        entries.push(entry);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    align_groups(&mut entries, caps, implemented);
    if !caps.kube_proxy_active {
        let left: Vec<_> = entries.iter().filter(|e| e.owner == Owner::KubeProxy).map(|e| e.feature.title()).collect();
        if !left.is_empty() {
            warnings.push(format!(
                "kube-proxy is not running on this node, but {} are left to it: those Services will not work",
                left.join(", ")
            ));
        }
    }
    Ok(Plan { mode, dataplane, entries, warnings })
}

/// A feature and its dependents (affinity, source ranges, Local policies, health checks) must
/// have one owner: a packet's service path is handled by one dataplane. A dependent that the
/// base's backend cannot serve drags the base to the dependent's owner (iptables, or kube-proxy
/// in probe mode) rather than being dropped: source ranges are a security boundary, and two
/// owners of a health check port is a known outage. Repeats until stable.
fn align_groups(entries: &mut [PlanEntry], caps: &Capabilities, imp: Implemented) {
    for _ in 0..Feature::ALL.len() {
        let mut changed = false;
        for i in 0..entries.len() {
            let Some(base) = entries[i].feature.base() else { continue };
            let Some(b) = entries.iter().position(|e| e.feature == base) else { continue };
            let (base_owner, dep_owner) = (entries[b].owner, entries[i].owner);
            if base_owner == dep_owner {
                continue;
            }
            let dep = entries[i].feature;
            let serves = |o: Owner, f: Feature| match o {
                Owner::Ebpf | Owner::Iptables => imp.has(o, f) && missing(caps, needs(f, o)).is_empty(),
                Owner::KubeProxy | Owner::Off => true,
            };
            if matches!(base_owner, Owner::KubeProxy | Owner::Off) || serves(base_owner, dep) {
                entries[i].owner = base_owner;
                entries[i].reason = format!("follows {} ({base_owner})", base.name());
            } else if serves(dep_owner, base) {
                entries[b].owner = dep_owner;
                entries[b].reason = format!("moved to {dep_owner} with {}: {}", dep.name(), entries[i].reason);
            } else {
                entries[i].owner = base_owner;
                entries[i].reason = format!("follows {} ({base_owner})", base.name());
            }
            changed = true;
        }
        if !changed {
            break;
        }
    }
}

impl Plan {
    pub fn owner(&self, f: Feature) -> Owner {
        self.entries.iter().find(|e| e.feature == f).map(|e| e.owner).unwrap_or(Owner::Off)
    }

    /// `KubeProxyReplacement: Probe [ClusterIP (eBPF), NodePort (iptables: no bpf_fib_lookup), ...]`
    pub fn status_line(&self) -> String {
        let items: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.feature.is_kube_proxy_feature() && e.owner != Owner::KubeProxy)
            .map(|e| match (e.owner, e.reason.starts_with("dataplane=")) {
                (Owner::Ebpf, _) | (Owner::Iptables, true) => format!("{} ({})", e.feature.title(), e.owner),
                // `NodePort (iptables: no bpf_fib_lookup)`: the eBPF prefix is implied, and the
                // table below the line carries the full reason.
                (o, _) => format!(
                    "{} ({o}: {})",
                    e.feature.title(),
                    e.reason.trim_start_matches("eBPF: ").replace("not implemented in this build", "eBPF not built")
                ),
            })
            .collect();
        format!("KubeProxyReplacement: {} [{}]", self.mode.title(), items.join(", "))
    }
}

/// One step of moving features between owners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Step {
    /// The new owner programs the feature (first: make).
    Program { feature: Feature, owner: Owner },
    /// The old owner removes what it programmed (after every Program: break).
    Remove { feature: Feature, owner: Owner },
}

/// Make-before-break: every new owner programs before any old owner removes, so a packet always
/// finds a dataplane serving it. Owners kube-proxy and off program nothing of sluice's.
pub fn transition(old: &Plan, new: &Plan) -> Vec<Step> {
    let mut program = Vec::new();
    let mut remove = Vec::new();
    for e in &new.entries {
        let before = old.owner(e.feature);
        if before == e.owner {
            continue;
        }
        if matches!(e.owner, Owner::Ebpf | Owner::Iptables) {
            program.push(Step::Program { feature: e.feature, owner: e.owner });
        }
        if matches!(before, Owner::Ebpf | Owner::Iptables) {
            remove.push(Step::Remove { feature: e.feature, owner: before });
        }
    }
    program.extend(remove);
    program
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
