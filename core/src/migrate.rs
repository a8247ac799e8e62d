//! Migration off kube-proxy: kube-proxy's live Service state on a node, as a backend parsed it
//! from the kernel, compared frontend by frontend with what sluice would program there. Pure:
//! the parsers (iptables-save for both iptables variants) live with their backend, the agent
//! reads the kernel and sluice's desired state, and this module only compares.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::engine::{FeatureState, Progress};
use crate::plan::{Feature, Owner};
use crate::service::{FrontendKind, Protocol};
use crate::view::ServiceView;

/// One frontend as a proxy serves it: what a client reaches and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxiedFrontend {
    /// `namespace/name:port-name`, as kube-proxy's comments name a Service port.
    pub service_port: String,
    pub kind: FrontendKind,
    /// `None` for NodePorts (every node address).
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub protocol: Protocol,
    /// Endpoints the frontend load-balances over (cluster-wide set).
    pub endpoints: BTreeSet<(IpAddr, u16)>,
    /// ClientIP affinity timeout, seconds.
    pub affinity_s: Option<u32>,
    /// External traffic policy Local (only this node's endpoints for external traffic).
    pub external_local: bool,
}

impl ProxiedFrontend {
    pub fn key(&self) -> FrontendKey {
        FrontendKey { ip: self.ip, port: self.port, protocol: self.protocol, kind: self.kind }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FrontendKey {
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub protocol: Protocol,
    pub kind: FrontendKind,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{ip}:{}/{}", self.port, self.protocol),
            None => write!(f, "(node addresses):{}/{}", self.port, self.protocol),
        }
    }
}

/// A rule in kube-proxy's chains the parser did not recognise: never guessed at, always shown,
/// and it blocks cutover unless forced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownRule {
    pub table: String,
    pub chain: String,
    pub rule: String,
    pub why: String,
}

/// What a parser read of kube-proxy on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeProxyState {
    /// Where it was read (`iptables-nft`, `iptables-legacy`).
    pub source: String,
    pub frontends: Vec<ProxiedFrontend>,
    pub unknown: Vec<UnknownRule>,
}

/// How one frontend compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Both serve it the same way: sluice takes it over as is.
    Matches,
    /// Both serve it, differently: each field that differs, with both sides' values.
    Differs { fields: Vec<FieldDiff> },
    /// Only kube-proxy serves it (sluice rejected the Service, or does not know it): traffic to
    /// it would stop at cutover.
    OnlyKubeProxy,
    /// Only sluice will serve it (kube-proxy lags, or the Service is new): taken over.
    OnlySluice,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDiff {
    pub field: String,
    pub kube_proxy: String,
    pub sluice: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRow {
    pub frontend: String,
    pub kind: FrontendKind,
    pub service_port: String,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl PlanRow {
    /// Whether this row blocks cutover: a frontend only kube-proxy serves would go dark.
    pub fn blocks(&self) -> bool {
        matches!(self.verdict, Verdict::OnlyKubeProxy)
    }
}

/// What sluice serves on this node, in the same terms: every frontend of every Service with the
/// endpoints kube-proxy would balance it over (the ClusterIP's internal set; external frontends'
/// cluster-wide set, their Local policy a flag, as kube-proxy's KUBE-EXT/KUBE-SVL split).
pub fn sluice_frontends(view: &ServiceView<'_>) -> Vec<ProxiedFrontend> {
    let mut out = Vec::new();
    for svc in view.services {
        for port in view.ports(svc) {
            let service_port = if port.port_name.is_empty() {
                svc.name.to_string()
            } else {
                format!("{}:{}", svc.name, port.port_name)
            };
            for fe in &port.frontends {
                let set = if fe.kind == FrontendKind::ClusterIp { port.internal() } else { &port.usable };
                out.push(ProxiedFrontend {
                    service_port: service_port.clone(),
                    kind: fe.kind,
                    ip: if fe.kind == FrontendKind::NodePort { None } else { fe.ip },
                    port: fe.port,
                    protocol: fe.protocol,
                    endpoints: set.iter().map(|b| (b.ip, port.target_port(b))).collect(),
                    affinity_s: svc.affinity_timeout_s,
                    external_local: svc.external_local,
                });
            }
        }
    }
    out
}

fn endpoints_text(e: &BTreeSet<(IpAddr, u16)>) -> String {
    if e.is_empty() {
        return "(none)".into();
    }
    e.iter().map(|(ip, p)| format!("{ip}:{p}")).collect::<Vec<_>>().join(", ")
}

fn opt_text(v: Option<u32>) -> String {
    v.map_or_else(|| "none".into(), |s| format!("{s}s"))
}

/// Compare kube-proxy's frontends with sluice's, one row per frontend either side serves, in
/// address order.
pub fn compare(kube_proxy: &[ProxiedFrontend], sluice: &[ProxiedFrontend]) -> Vec<PlanRow> {
    let kp: BTreeMap<FrontendKey, &ProxiedFrontend> = kube_proxy.iter().map(|f| (f.key(), f)).collect();
    let sl: BTreeMap<FrontendKey, &ProxiedFrontend> = sluice.iter().map(|f| (f.key(), f)).collect();
    let keys: BTreeSet<FrontendKey> = kp.keys().chain(sl.keys()).copied().collect();
    keys.into_iter()
        .map(|k| {
            let (a, b) = (kp.get(&k), sl.get(&k));
            let verdict = match (a, b) {
                (Some(a), Some(b)) => {
                    let mut fields = Vec::new();
                    let mut diff = |field: &str, x: String, y: String| {
                        if x != y {
                            fields.push(FieldDiff { field: field.into(), kube_proxy: x, sluice: y });
                        }
                    };
                    diff("service", a.service_port.clone(), b.service_port.clone());
                    diff("endpoints", endpoints_text(&a.endpoints), endpoints_text(&b.endpoints));
                    diff("sessionAffinity", opt_text(a.affinity_s), opt_text(b.affinity_s));
                    if k.kind != FrontendKind::ClusterIp {
                        let pol = |l: bool| if l { "Local" } else { "Cluster" }.to_string();
                        diff("externalTrafficPolicy", pol(a.external_local), pol(b.external_local));
                    }
                    if fields.is_empty() { Verdict::Matches } else { Verdict::Differs { fields } }
                }
                (Some(_), None) => Verdict::OnlyKubeProxy,
                _ => Verdict::OnlySluice,
            };
            let service_port = a.or(b).map(|f| f.service_port.clone()).unwrap_or_default();
            PlanRow { frontend: k.to_string(), kind: k.kind, service_port, verdict }
        })
        .collect()
}

/// Who should serve the node's Service features at the end of a migration step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOver {
    /// `apply`: every Service feature served by a sluice backend.
    ToSluice,
    /// `rollback`: none left with sluice (kube-proxy serves them).
    ToKubeProxy,
}

/// A Service feature not yet where a migration step wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub feature: Feature,
    pub why: PendingReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum PendingReason {
    /// The plan gives it to someone else (kube-proxy, or off) on this node.
    PlannedTo { owner: Owner },
    /// Planned right, but the backend does not serve it yet; these still do.
    Moving { kept_by: Vec<crate::BackendId> },
    /// The planned backend failed to program it.
    Failed,
    /// Served, except on these interfaces, where nobody of sluice's covers it.
    Holes { interfaces: Vec<String> },
    /// The agent reported nothing for it.
    Unreported,
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.why {
            PendingReason::PlannedTo { owner } => write!(f, "{}: planned to {owner}", self.feature),
            PendingReason::Moving { kept_by } => {
                let k: Vec<String> = kept_by.iter().map(|b| b.to_string()).collect();
                write!(f, "{}: moving (still kept by {})", self.feature, k.join(", "))
            }
            PendingReason::Failed => {
                write!(f, "{}: its backend failed to program it (see `sluice status`)", self.feature)
            }
            PendingReason::Holes { interfaces } => {
                write!(f, "{}: not served on {}", self.feature, interfaces.join(", "))
            }
            PendingReason::Unreported => write!(f, "{}: no state reported yet", self.feature),
        }
    }
}

/// The Service features not yet where `to` wants them, from the agent's per-feature state.
/// Empty: the hand-over is complete on this node.
pub fn pending(features: &[FeatureState], to: HandOver) -> Vec<Pending> {
    let mut out = Vec::new();
    for feature in Feature::SERVICES {
        let Some(st) = features.iter().find(|s| s.feature == feature) else {
            out.push(Pending { feature, why: PendingReason::Unreported });
            continue;
        };
        let why = match (to, st.planned, &st.progress) {
            (HandOver::ToSluice, Owner::Backend(_), Progress::Serving) => {
                let open: Vec<String> =
                    st.holes.iter().filter(|h| h.covered_by.is_none()).map(|h| h.interface.clone()).collect();
                (!open.is_empty()).then_some(PendingReason::Holes { interfaces: open })
            }
            (HandOver::ToSluice, Owner::Backend(_), Progress::Moving { kept_by }) => {
                Some(PendingReason::Moving { kept_by: kept_by.clone() })
            }
            (HandOver::ToSluice, Owner::Backend(_), _) => Some(PendingReason::Failed),
            (HandOver::ToSluice, owner, _) => Some(PendingReason::PlannedTo { owner }),
            (HandOver::ToKubeProxy, Owner::KubeProxy, Progress::NotSluice) => None,
            (HandOver::ToKubeProxy, Owner::KubeProxy, Progress::Moving { kept_by }) => {
                Some(PendingReason::Moving { kept_by: kept_by.clone() })
            }
            (HandOver::ToKubeProxy, Owner::KubeProxy, _) => Some(PendingReason::Failed),
            (HandOver::ToKubeProxy, owner, _) => Some(PendingReason::PlannedTo { owner }),
        };
        if let Some(why) = why {
            out.push(Pending { feature, why });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe(svc: &str, ip: &str, port: u16, eps: &[&str]) -> ProxiedFrontend {
        ProxiedFrontend {
            service_port: svc.into(),
            kind: FrontendKind::ClusterIp,
            ip: Some(ip.parse().expect("ip")),
            port,
            protocol: Protocol::Tcp,
            endpoints: eps
                .iter()
                .map(|e| {
                    let (ip, p) = e.split_once(':').expect("ip:port");
                    (ip.parse().expect("ip"), p.parse().expect("port"))
                })
                .collect(),
            affinity_s: None,
            external_local: false,
        }
    }

    #[test]
    fn every_frontend_of_either_side_is_one_row_with_both_values_where_they_differ() {
        let kp = [
            fe("default/a:http", "10.96.0.1", 80, &["10.244.1.2:8080"]),
            fe("default/b:http", "10.96.0.2", 80, &["10.244.1.3:8080", "10.244.2.3:8080"]),
            fe("default/old:http", "10.96.0.9", 80, &["10.244.1.9:8080"]),
        ];
        let mut b2 = fe("default/b:http", "10.96.0.2", 80, &["10.244.1.3:8080"]);
        b2.affinity_s = Some(10800);
        let sl = [
            fe("default/a:http", "10.96.0.1", 80, &["10.244.1.2:8080"]),
            b2,
            fe("default/new:http", "10.96.0.5", 80, &[]),
        ];
        let rows = compare(&kp, &sl);
        let verdicts: Vec<(&str, &Verdict)> = rows.iter().map(|r| (r.frontend.as_str(), &r.verdict)).collect();
        assert_eq!(verdicts[0], ("10.96.0.1:80/TCP", &Verdict::Matches));
        let Verdict::Differs { fields } = verdicts[1].1 else { panic!("{rows:?}") };
        assert_eq!(fields.len(), 2, "{fields:?}");
        assert_eq!(fields[0].kube_proxy, "10.244.1.3:8080, 10.244.2.3:8080");
        assert_eq!(fields[0].sluice, "10.244.1.3:8080");
        assert_eq!((fields[1].kube_proxy.as_str(), fields[1].sluice.as_str()), ("none", "10800s"));
        assert_eq!(verdicts[2], ("10.96.0.5:80/TCP", &Verdict::OnlySluice));
        assert_eq!(verdicts[3], ("10.96.0.9:80/TCP", &Verdict::OnlyKubeProxy));
        assert_eq!(rows.iter().filter(|r| r.blocks()).count(), 1);
    }

    fn states(owner: Owner, progress: Progress) -> Vec<FeatureState> {
        Feature::SERVICES
            .iter()
            .map(|&feature| FeatureState { feature, planned: owner, progress: progress.clone(), holes: Vec::new() })
            .collect()
    }

    #[test]
    fn a_hand_over_is_complete_only_when_every_service_feature_is_where_it_goes() {
        let served = states(Owner::IPTABLES, Progress::Serving);
        assert_eq!(pending(&served, HandOver::ToSluice), []);
        let p = pending(&served, HandOver::ToKubeProxy);
        assert_eq!(p.len(), Feature::SERVICES.len());
        assert!(matches!(p[0].why, PendingReason::PlannedTo { owner: Owner::IPTABLES }));

        let mut moving = served.clone();
        moving[1].progress = Progress::Moving { kept_by: vec![crate::BackendId::EBPF] };
        moving[2].holes = vec![crate::HoleState { interface: "eth1".into(), covered_by: None }];
        moving.pop();
        let p = pending(&moving, HandOver::ToSluice);
        let text: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert_eq!(p.len(), 3, "{text:?}");
        assert!(text[0].contains("moving (still kept by eBPF)"), "{text:?}");
        assert!(text[1].contains("not served on eth1"), "{text:?}");
        assert!(text[2].contains("no state reported"), "{text:?}");

        let back = states(Owner::KubeProxy, Progress::NotSluice);
        assert_eq!(pending(&back, HandOver::ToKubeProxy), []);
        assert!(
            pending(&back, HandOver::ToSluice)
                .iter()
                .all(|p| p.why == PendingReason::PlannedTo { owner: Owner::KubeProxy })
        );
    }
}
