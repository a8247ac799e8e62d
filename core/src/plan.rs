//! The feature plan: for each feature, who serves it on this node and why. A pure function of
//! the probed capabilities, the configuration and the registered backends' specs, so every
//! mode x dataplane x missing capability combination is tested without a kernel.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::caps::{Capabilities, Capability};
pub use crate::feature::{Feature, UnknownFeature};
use crate::registry::{BackendId, BackendSpec, KNOWN_BACKENDS};

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

/// `dataplane`: `auto` (per feature, the first registered backend that can serve it) or one
/// backend by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataplaneMode {
    Auto,
    Only(BackendId),
}

impl DataplaneMode {
    pub const EBPF: DataplaneMode = DataplaneMode::Only(BackendId::EBPF);
    pub const IPTABLES: DataplaneMode = DataplaneMode::Only(BackendId::IPTABLES);

    pub fn name(&self) -> &str {
        match self {
            DataplaneMode::Auto => "auto",
            DataplaneMode::Only(b) => b.as_str(),
        }
    }

    /// Every accepted value, for error messages.
    pub fn accepted() -> String {
        std::iter::once("auto").chain(KNOWN_BACKENDS.iter().map(|k| k.id.as_str())).collect::<Vec<_>>().join(", ")
    }
}

impl std::str::FromStr for DataplaneMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(DataplaneMode::Auto);
        }
        match BackendId::parse(s) {
            Ok(b) if b.is_known() => Ok(DataplaneMode::Only(b)),
            _ => Err(format!("unknown dataplane {s:?}; accepted: {}", DataplaneMode::accepted())),
        }
    }
}

impl Serialize for DataplaneMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for DataplaneMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Who serves a feature: a registered backend, kube-proxy, or nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    Backend(BackendId),
    KubeProxy,
    Off,
}

impl Owner {
    pub const EBPF: Owner = Owner::Backend(BackendId::EBPF);
    pub const IPTABLES: Owner = Owner::Backend(BackendId::IPTABLES);

    pub fn backend(self) -> Option<BackendId> {
        match self {
            Owner::Backend(b) => Some(b),
            _ => None,
        }
    }

    fn wire(&self) -> &str {
        match self {
            Owner::Backend(b) => b.as_str(),
            Owner::KubeProxy => "kube-proxy",
            Owner::Off => "off",
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Backend(b) => f.write_str(b.title()),
            o => f.write_str(o.wire()),
        }
    }
}

impl Serialize for Owner {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.wire())
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "kube-proxy" => Owner::KubeProxy,
            "off" => Owner::Off,
            b => Owner::Backend(BackendId::parse(b).map_err(serde::de::Error::custom)?),
        })
    }
}

/// What one backend lacks for a feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lack {
    pub backend: BackendId,
    /// This build does not implement the feature on that backend.
    pub not_built: bool,
    pub missing: Vec<Capability>,
}

impl Lack {
    /// The short form for the status line: `no bpf_fib_lookup`, `eBPF not built`.
    fn short(&self) -> String {
        if self.not_built { format!("{} not built", self.backend) } else { describe(&self.missing) }
    }
}

impl fmt::Display for Lack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.not_built, self.missing.is_empty()) {
            (true, true) => write!(f, "{}: not implemented in this build", self.backend),
            (true, false) => write!(f, "{}: not implemented in this build, {}", self.backend, describe(&self.missing)),
            (false, _) => write!(f, "{}: {}", self.backend, describe(&self.missing)),
        }
    }
}

fn join_lacks(l: &[Lack]) -> String {
    l.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("; ")
}

/// Why a feature has its owner. Rendered in words for status; matched on, never parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    /// `kube_proxy_replacement=disabled` leaves the feature to kube-proxy.
    Mode { mode: KprMode },
    /// Partial mode, and the feature is not listed.
    NotListed,
    /// The first backend the dataplane setting allows serves it.
    Dataplane { dataplane: DataplaneMode },
    /// A later backend serves it because the earlier ones lack something.
    FellBack { passed_over: Vec<Lack> },
    /// No allowed backend can serve it.
    Unservable { lacks: Vec<Lack> },
    /// A dependent feature follows its base feature's owner.
    Follows { base: Feature, owner: Owner },
    /// The base feature moved to where its dependent can be served.
    MovedWith { dependent: Feature, owner: Owner, because: Box<Reason> },
    /// Policy must see Service backends: `passed` polices before translation, and ClusterIPs
    /// are translated by `translator`.
    AfterTranslation { passed: BackendId, translator: Owner },
    /// Turned off in the config (`key` names the setting).
    Disabled { key: String },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Mode { mode } => write!(f, "kube_proxy_replacement={}", mode.title().to_lowercase()),
            Reason::NotListed => f.write_str("not in kube_proxy_replacement_features"),
            Reason::Dataplane { dataplane } => write!(f, "dataplane={}", dataplane.name()),
            Reason::FellBack { passed_over: l } | Reason::Unservable { lacks: l } => f.write_str(&join_lacks(l)),
            Reason::Follows { base, owner } => write!(f, "follows {base} ({owner})"),
            Reason::MovedWith { dependent, owner, because } => {
                write!(f, "moved to {owner} with {dependent}: {because}")
            }
            Reason::AfterTranslation { passed, translator } => write!(
                f,
                "{passed} polices before Service translation and ClusterIPs are translated by {translator}: enforced after it"
            ),
            Reason::Disabled { key } => write!(f, "turned off by {key}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEntry {
    pub feature: Feature,
    pub owner: Owner,
    pub reason: Reason,
    /// Another backend that can serve the feature on the interfaces where the owner cannot
    /// (an attach that failed on one device): any registered backend with what it needs, even
    /// one `dataplane` does not name, since a hole in the datapath is worse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<BackendId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub mode: KprMode,
    pub dataplane: DataplaneMode,
    pub entries: Vec<PlanEntry>,
    /// How the eBPF backend attaches its tc programs on this node (from the probe).
    #[serde(default)]
    pub tc_attach: crate::TcAttach,
    /// Things an operator must know (features left to kube-proxy without kube-proxy running...).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "kube_proxy_replacement=strict: feature {feature} cannot be served by {backends}: {}; run `sluice probe` to see the node's capabilities, or use kube_proxy_replacement=probe to leave it to kube-proxy",
        join_lacks(.lacks)
    )]
    Strict { feature: Feature, backends: String, lacks: Vec<Lack> },
    #[error(
        "kube_proxy_replacement=partial: listed feature {feature} cannot be served by {backends}: {}; remove it from kube_proxy_replacement_features or change dataplane",
        join_lacks(.lacks)
    )]
    PartialUnservable { feature: Feature, backends: String, lacks: Vec<Lack> },
    #[error(
        "kube_proxy_replacement=partial: feature {feature} needs {base} in kube_proxy_replacement_features too (they must have one owner)"
    )]
    PartialMissingBase { feature: Feature, base: Feature },
    #[error("dataplane={given}: no such backend in this build; accepted: {accepted}")]
    UnknownDataplane { given: String, accepted: String },
}

pub struct PlanInput<'a> {
    pub caps: &'a Capabilities,
    pub mode: KprMode,
    pub partial_features: &'a [Feature],
    pub dataplane: DataplaneMode,
    /// Per-feature dataplanes over `dataplane` (a follower without its own takes its base's).
    pub dataplane_features: &'a std::collections::BTreeMap<Feature, DataplaneMode>,
    /// The registered backends, best first. A feature a backend does not implement is never
    /// given to it, and the plan says so.
    pub backends: &'a [BackendSpec],
    /// sluice features the config turns off (`flows.enabled: false`), with the key that does.
    pub disabled: &'a [(Feature, &'static str)],
}

fn missing(caps: &Capabilities, needs: &[Capability]) -> Vec<Capability> {
    needs.iter().copied().filter(|c| !caps.has(*c)).collect()
}

fn describe(m: &[Capability]) -> String {
    m.iter().map(|c| c.describe()).collect::<Vec<_>>().join(", ")
}

/// The backends a dataplane setting allows, best first.
fn candidates(d: DataplaneMode, backends: &[BackendSpec]) -> Vec<&BackendSpec> {
    backends.iter().filter(|b| d == DataplaneMode::Auto || d == DataplaneMode::Only(b.id)).collect()
}

/// What `spec` lacks to serve `f` (`None`: nothing, it can serve it).
pub fn lack(caps: &Capabilities, spec: &BackendSpec, f: Feature) -> Option<Lack> {
    match (spec.needs)(f) {
        Some(needs) => {
            let m = missing(caps, needs);
            (!m.is_empty()).then_some(Lack { backend: spec.id, not_built: false, missing: m })
        }
        None => Some(Lack { backend: spec.id, not_built: true, missing: Vec::new() }),
    }
}

/// The best allowed backend for `f`, or what each allowed backend lacks.
fn choose(caps: &Capabilities, cands: &[&BackendSpec], f: Feature, d: DataplaneMode) -> Result<PlanEntry, Vec<Lack>> {
    let mut lacks = Vec::new();
    for spec in cands {
        match lack(caps, spec, f) {
            None => {
                let reason = if lacks.is_empty() {
                    Reason::Dataplane { dataplane: d }
                } else {
                    Reason::FellBack { passed_over: lacks }
                };
                return Ok(PlanEntry { feature: f, owner: Owner::Backend(spec.id), reason, fallback: None });
            }
            Some(l) => lacks.push(l),
        }
    }
    Err(lacks)
}

pub fn compute(input: &PlanInput<'_>) -> Result<Plan, PlanError> {
    let PlanInput { caps, mode, partial_features, dataplane, dataplane_features, backends, disabled } = *input;
    let cands = candidates(dataplane, backends);
    if cands.is_empty() {
        let accepted = std::iter::once("auto".to_string())
            .chain(backends.iter().map(|b| b.id.as_str().to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(PlanError::UnknownDataplane { given: dataplane.name().into(), accepted });
    }
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
            let reason = if mode == KprMode::Disabled { Reason::Mode { mode } } else { Reason::NotListed };
            entries.push(PlanEntry { feature: f, owner: Owner::KubeProxy, reason, fallback: None });
            continue;
        }
        if let Some((_, key)) = disabled.iter().find(|(d, _)| *d == f) {
            entries.push(PlanEntry {
                feature: f,
                owner: Owner::Off,
                reason: Reason::Disabled { key: key.to_string() },
                fallback: None,
            });
            continue;
        }
        // The feature's own dataplane (`dataplane_features`), else its base's, else the node's.
        let d = dataplane_features
            .get(&f)
            .or_else(|| f.base().and_then(|b| dataplane_features.get(&b)))
            .copied()
            .unwrap_or(dataplane);
        let cands = candidates(d, backends);
        if cands.is_empty() {
            let accepted = std::iter::once("auto".to_string())
                .chain(backends.iter().map(|b| b.id.as_str().to_string()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(PlanError::UnknownDataplane { given: d.name().into(), accepted });
        }
        let names = cands.iter().map(|b| b.id.to_string()).collect::<Vec<_>>().join(" or ");
        // sluice's own features a chosen dataplane does not implement in this build fall back
        // to a backend that does (the node runs netfilter whatever serves its Services); the
        // plan says which was passed over and why.
        let chosen = choose(caps, &cands, f, d).or_else(|lacks| {
            let others: Vec<&BackendSpec> = backends.iter().filter(|b| !cands.iter().any(|c| c.id == b.id)).collect();
            if f.is_kube_proxy_feature() || !lacks.iter().all(|l| l.not_built) || others.is_empty() {
                return Err(lacks);
            }
            match choose(caps, &others, f, d) {
                Ok(mut e) => {
                    let mut passed = lacks;
                    if let Reason::FellBack { passed_over } = e.reason {
                        passed.extend(passed_over);
                    }
                    e.reason = Reason::FellBack { passed_over: passed };
                    Ok(e)
                }
                Err(more) => Err(lacks.into_iter().chain(more).collect()),
            }
        });
        let entry = match chosen {
            Ok(entry) => entry,
            Err(lacks) => {
                // Strict and partial promise the kube-proxy features only: sluice's own
                // features (policy, flows) never make a mode unusable, built or not.
                let required = f.is_kube_proxy_feature() && matches!(mode, KprMode::Strict | KprMode::Partial);
                if required {
                    let e = match mode {
                        KprMode::Strict => PlanError::Strict { feature: f, backends: names.clone(), lacks },
                        _ => PlanError::PartialUnservable { feature: f, backends: names.clone(), lacks },
                    };
                    // Report the most telling failure: one that names a missing kernel capability
                    // beats one that only says a backend is not built.
                    if first_error.as_ref().is_none_or(|old| !names_capability(old) && names_capability(&e)) {
                        first_error = Some(e);
                    }
                    continue;
                }
                let owner = if f.is_kube_proxy_feature() { Owner::KubeProxy } else { Owner::Off };
                warnings.push(format!("{} left to {owner}: {}", f.title(), join_lacks(&lacks)));
                PlanEntry { feature: f, owner, reason: Reason::Unservable { lacks }, fallback: None }
            }
        };
        entries.push(entry);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    align_groups(&mut entries, caps, backends);
    place_policy(&mut entries, caps, backends);
    for e in &mut entries {
        if let Owner::Backend(owner) = e.owner {
            e.fallback = backends.iter().find(|b| b.id != owner && lack(caps, b, e.feature).is_none()).map(|b| b.id);
        }
    }
    if !caps.kube_proxy_active {
        let left: Vec<_> = entries.iter().filter(|e| e.owner == Owner::KubeProxy).map(|e| e.feature.title()).collect();
        if !left.is_empty() {
            warnings.push(format!(
                "kube-proxy is not running on this node, but {} are left to it: those Services will not work",
                left.join(", ")
            ));
        }
    }
    Ok(Plan { mode, dataplane, entries, tc_attach: caps.tc_attach(), warnings })
}

fn names_capability(e: &PlanError) -> bool {
    match e {
        PlanError::Strict { lacks, .. } | PlanError::PartialUnservable { lacks, .. } => {
            lacks.iter().any(|l| !l.not_built)
        }
        _ => false,
    }
}

/// A feature and its dependents (affinity, source ranges, Local policies, health checks) must
/// have one owner: a packet's service path is handled by one dataplane. A dependent that the
/// base's backend cannot serve drags the base to the dependent's owner (iptables, or kube-proxy
/// in probe mode) rather than being dropped: source ranges are a security boundary, and two
/// owners of a health check port is a known outage. Repeats until stable.
fn align_groups(entries: &mut [PlanEntry], caps: &Capabilities, backends: &[BackendSpec]) {
    let serves = |o: Owner, f: Feature| match o {
        Owner::Backend(id) => backends.iter().find(|b| b.id == id).is_some_and(|b| lack(caps, b, f).is_none()),
        Owner::KubeProxy | Owner::Off => true,
    };
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
            if matches!(base_owner, Owner::KubeProxy | Owner::Off)
                || serves(base_owner, dep)
                || !serves(dep_owner, base)
            {
                entries[i].owner = base_owner;
                entries[i].reason = Reason::Follows { base, owner: base_owner };
            } else {
                entries[b].owner = dep_owner;
                let because = Box::new(entries[i].reason.clone());
                entries[b].reason = Reason::MovedWith { dependent: dep, owner: dep_owner, because };
            }
            changed = true;
        }
        if !changed {
            break;
        }
    }
}

/// A backend that polices before netfilter's DNAT sees Service backends only when it translates
/// the ClusterIPs itself: otherwise `policy` goes to the first backend that polices after
/// translation (or stays, with the reason, when there is none).
fn place_policy(entries: &mut [PlanEntry], caps: &Capabilities, backends: &[BackendSpec]) {
    let owner = |f: Feature, e: &[PlanEntry]| e.iter().find(|x| x.feature == f).map(|x| x.owner).unwrap_or(Owner::Off);
    let Owner::Backend(pol) = owner(Feature::Policy, entries) else { return };
    let translator = owner(Feature::ClusterIp, entries);
    let needs_own = backends.iter().find(|b| b.id == pol).is_some_and(|b| b.policy_needs_own_translation);
    if !needs_own || translator == Owner::Backend(pol) {
        return;
    }
    let alt = backends
        .iter()
        .find(|b| b.id != pol && !b.policy_needs_own_translation && lack(caps, b, Feature::Policy).is_none());
    if let (Some(alt), Some(e)) = (alt, entries.iter_mut().find(|e| e.feature == Feature::Policy)) {
        e.owner = Owner::Backend(alt.id);
        e.reason = Reason::AfterTranslation { passed: pol, translator };
    }
}

impl Plan {
    pub fn owner(&self, f: Feature) -> Owner {
        self.entries.iter().find(|e| e.feature == f).map(|e| e.owner).unwrap_or(Owner::Off)
    }

    /// The backend that covers `f` where its owner has a hole (see [`PlanEntry::fallback`]).
    pub fn fallback(&self, f: Feature) -> Option<BackendId> {
        self.entries.iter().find(|e| e.feature == f).and_then(|e| e.fallback)
    }

    /// The features the plan gives to one backend.
    pub fn owned_by(&self, b: BackendId) -> std::collections::BTreeSet<Feature> {
        self.entries.iter().filter(|e| e.owner == Owner::Backend(b)).map(|e| e.feature).collect()
    }

    /// `KubeProxyReplacement: Probe [ClusterIP (eBPF), NodePort (iptables: no bpf_fib_lookup), ...]`
    pub fn status_line(&self) -> String {
        let items: Vec<String> = self
            .entries
            .iter()
            .filter(|e| e.feature.is_kube_proxy_feature() && e.owner != Owner::KubeProxy)
            .map(|e| match &e.reason {
                Reason::Dataplane { .. } => format!("{} ({})", e.feature.title(), e.owner),
                // `NodePort (iptables: no bpf_fib_lookup)`: the backend passed over is implied,
                // and the table below the line carries the full reason.
                Reason::FellBack { passed_over: l } | Reason::Unservable { lacks: l } => format!(
                    "{} ({}: {})",
                    e.feature.title(),
                    e.owner,
                    l.iter().map(Lack::short).collect::<Vec<_>>().join("; ")
                ),
                r => format!("{} ({}: {r})", e.feature.title(), e.owner),
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
/// [`crate::engine::Engine`] executes these steps against the backends.
pub fn transition(old: &Plan, new: &Plan) -> Vec<Step> {
    let mut program = Vec::new();
    let mut remove = Vec::new();
    for e in &new.entries {
        let before = old.owner(e.feature);
        if before == e.owner {
            continue;
        }
        if matches!(e.owner, Owner::Backend(_)) {
            program.push(Step::Program { feature: e.feature, owner: e.owner });
        }
        if matches!(before, Owner::Backend(_)) {
            remove.push(Step::Remove { feature: e.feature, owner: before });
        }
    }
    program.extend(remove);
    program
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
