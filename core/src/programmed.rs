//! `sluice migrate verify` against the kernel: every frontend a sluice backend serves on this
//! node, as the agent wants it, compared with what that backend's kernel objects hold (read
//! back by the caller: iptables' nat rules, eBPF's service maps). Pure.
//!
//! A frontend is checked in the tables of the backend the plan gives its feature to; one whose
//! feature is kube-proxy's (before a cutover) or that has no endpoints (it refuses; the
//! probes skip it too) is not. NodePorts match the backend's entries on any of this node's
//! addresses (eBPF keeps one per address; iptables one for every local address).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use crate::engine::FeatureState;
use crate::migrate::ProxiedFrontend;
use crate::plan::Owner;
use crate::{BackendId, FrontendKind, Protocol};

/// A frontend as a backend's kernel objects translate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldFrontend {
    /// `None`: every local address (an iptables NodePort).
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub protocol: Protocol,
    pub endpoints: BTreeSet<(IpAddr, u16)>,
}

/// One checked frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgrammedRow {
    /// `IP:port/PROTO`, or `*:port/PROTO` for a NodePort.
    pub frontend: String,
    pub service_port: String,
    /// The backend whose kernel objects were read.
    pub backend: String,
    /// `"verdict": "programmed" | "differs" | "missing"` (differs with `wanted` and `kernel`).
    #[serde(flatten)]
    pub verdict: ProgrammedVerdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "verdict")]
pub enum ProgrammedVerdict {
    /// The kernel translates it to exactly the endpoints the agent wants.
    Programmed,
    /// The kernel translates it, to other endpoints.
    Differs { wanted: Vec<String>, kernel: Vec<String> },
    /// The backend's kernel objects have no such frontend.
    Missing,
}

fn eps(s: &BTreeSet<(IpAddr, u16)>) -> Vec<String> {
    s.iter().map(|(ip, p)| format!("{ip}:{p}")).collect()
}

/// Check `ours` against `held` (per backend), under the plan in `features`; `node_ips` are this
/// node's addresses (where NodePorts answer).
pub fn check(
    ours: &[ProxiedFrontend],
    features: &[FeatureState],
    held: &BTreeMap<BackendId, Vec<HeldFrontend>>,
    node_ips: &[IpAddr],
) -> Vec<ProgrammedRow> {
    let mut out = Vec::new();
    for f in ours.iter().filter(|f| !f.endpoints.is_empty()) {
        let owner = features.iter().find(|s| s.feature == f.kind.feature()).map(|s| s.planned);
        let Some(Owner::Backend(backend)) = owner else { continue };
        let same = |h: &&HeldFrontend| {
            h.port == f.port
                && h.protocol == f.protocol
                && match (f.kind, f.ip, h.ip) {
                    (FrontendKind::NodePort, _, None) => true,
                    (FrontendKind::NodePort, _, Some(ip)) => node_ips.contains(&ip),
                    (_, Some(a), Some(b)) => a == b,
                    _ => false,
                }
        };
        let found: Vec<&HeldFrontend> = held.get(&backend).into_iter().flatten().filter(same).collect();
        let verdict = if found.is_empty() {
            ProgrammedVerdict::Missing
        } else if let Some(h) = found.iter().find(|h| h.endpoints != f.endpoints) {
            ProgrammedVerdict::Differs { wanted: eps(&f.endpoints), kernel: eps(&h.endpoints) }
        } else {
            ProgrammedVerdict::Programmed
        };
        let ip = f.ip.map_or_else(|| "*".to_string(), |ip| ip.to_string());
        out.push(ProgrammedRow {
            frontend: format!("{ip}:{}/{}", f.port, f.protocol),
            service_port: f.service_port.clone(),
            backend: backend.as_str().to_string(),
            verdict,
        });
    }
    out
}

/// An eBPF service-map row (`sluice bpf lb list`: `VIP:port/PROTO`, backends `IP:port` with
/// " local" for this node's) as a held frontend; `None` for a row it cannot read.
pub fn from_lb_row(row: &crate::dataplane::LbRow) -> Option<HeldFrontend> {
    let (addr, proto) = row.frontend.rsplit_once('/')?;
    let (ip, port) = addr.rsplit_once(':')?;
    let protocol = match proto.to_ascii_uppercase().as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => return None,
    };
    let endpoints = row
        .backends
        .iter()
        .filter_map(|(_, b)| {
            let (ip, port) = b.split_whitespace().next()?.rsplit_once(':')?;
            Some((ip.parse().ok()?, port.parse().ok()?))
        })
        .collect();
    Some(HeldFrontend { ip: Some(ip.parse().ok()?), port: port.parse().ok()?, protocol, endpoints })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Progress;
    use crate::feature::Feature;

    fn ours(kind: FrontendKind, ip: Option<&str>, port: u16, eps: &[&str]) -> ProxiedFrontend {
        ProxiedFrontend {
            service_port: "default/web:http".into(),
            kind,
            ip: ip.map(|i| i.parse().expect("ip")),
            port,
            protocol: Protocol::Tcp,
            endpoints: eps.iter().map(|e| (e.parse().expect("ip"), 8080)).collect(),
            affinity_s: None,
            external_local: false,
        }
    }

    fn owned(feature: Feature, owner: Owner) -> FeatureState {
        FeatureState { feature, planned: owner, progress: Progress::Serving, holes: Vec::new() }
    }

    fn held(ip: Option<&str>, port: u16, eps: &[&str]) -> HeldFrontend {
        HeldFrontend {
            ip: ip.map(|i| i.parse().expect("ip")),
            port,
            protocol: Protocol::Tcp,
            endpoints: eps.iter().map(|e| (e.parse().expect("ip"), 8080)).collect(),
        }
    }

    #[test]
    fn each_frontend_is_checked_in_its_owners_kernel_objects() {
        let ours = [
            ours(FrontendKind::ClusterIp, Some("10.96.0.10"), 80, &["10.244.1.2", "10.244.2.2"]),
            ours(FrontendKind::NodePort, None, 30080, &["10.244.1.2", "10.244.2.2"]),
            ours(FrontendKind::ExternalIp, Some("203.0.113.10"), 80, &["10.244.1.2"]),
            ours(FrontendKind::LoadBalancer, Some("192.0.2.1"), 80, &["10.244.1.2"]),
            ours(FrontendKind::ClusterIp, Some("10.96.0.11"), 80, &[]),
        ];
        let features = [
            owned(Feature::ClusterIp, Owner::EBPF),
            owned(Feature::NodePort, Owner::EBPF),
            owned(Feature::ExternalIps, Owner::IPTABLES),
            owned(Feature::LoadBalancer, Owner::KubeProxy),
        ];
        let node_ips: Vec<IpAddr> = vec!["198.51.100.11".parse().expect("ip")];
        let held: BTreeMap<BackendId, Vec<HeldFrontend>> = [
            (
                BackendId::EBPF,
                vec![
                    held(Some("10.96.0.10"), 80, &["10.244.1.2", "10.244.2.2"]),
                    held(Some("198.51.100.11"), 30080, &["10.244.1.2"]),
                    held(Some("198.51.100.99"), 30080, &["10.244.1.2", "10.244.2.2"]),
                ],
            ),
            (BackendId::IPTABLES, vec![held(Some("10.96.0.10"), 80, &["10.244.1.2", "10.244.2.2"])]),
        ]
        .into();
        let rows = check(&ours, &features, &held, &node_ips);
        let v: Vec<(&str, &str, &ProgrammedVerdict)> =
            rows.iter().map(|r| (r.frontend.as_str(), r.backend.as_str(), &r.verdict)).collect();
        assert_eq!(v.len(), 3, "kube-proxy's and empty frontends are not checked: {v:#?}");
        assert_eq!(v[0], ("10.96.0.10:80/TCP", "ebpf", &ProgrammedVerdict::Programmed));
        assert_eq!(
            v[1],
            (
                "*:30080/TCP",
                "ebpf",
                &ProgrammedVerdict::Differs {
                    wanted: vec!["10.244.1.2:8080".into(), "10.244.2.2:8080".into()],
                    kernel: vec!["10.244.1.2:8080".into()]
                }
            ),
            "another node's address does not count"
        );
        assert_eq!(v[2], ("203.0.113.10:80/TCP", "iptables", &ProgrammedVerdict::Missing));
    }

    #[test]
    fn a_row_is_flat_in_json() {
        let row = ProgrammedRow {
            frontend: "*:30080/TCP".into(),
            service_port: "default/web:http".into(),
            backend: "ebpf".into(),
            verdict: ProgrammedVerdict::Differs { wanted: vec!["a".into()], kernel: vec![] },
        };
        let v = serde_json::to_value(&row).expect("json");
        assert_eq!(v["verdict"], "differs");
        assert_eq!(v["wanted"], serde_json::json!(["a"]));
    }

    #[test]
    fn lb_rows_read_as_held_frontends() {
        let row = crate::dataplane::LbRow {
            frontend: "10.96.0.10:80/TCP".into(),
            service_id: 1,
            backend_count: 2,
            affinity_s: 0,
            serves: vec!["pods".into()],
            backends: vec![(1, "10.244.1.2:8080 local".into()), (2, "10.244.2.2:8080".into())],
        };
        let h = from_lb_row(&row).expect("row");
        assert_eq!(h, held(Some("10.96.0.10"), 80, &["10.244.1.2", "10.244.2.2"]));
        let bad = crate::dataplane::LbRow { frontend: "nonsense".into(), ..row };
        assert_eq!(from_lb_row(&bad), None);
    }
}
