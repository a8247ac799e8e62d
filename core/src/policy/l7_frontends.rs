//! Service frontends the L7 redirect takes before they are translated. Where Services are
//! translated by netfilter (iptables Services, kube-proxy), the translation comes after the
//! point where connections are redirected to the proxy (mangle PREROUTING comes before nat): a
//! connection to a ClusterIP would meet the redirect with the ClusterIP as its destination,
//! match no pod's rule, and be dropped. So the ClusterIPs whose backends have HTTP rules on this
//! node are redirected as they are; nat still translates the redirected SYN, so the proxy's
//! socket holds the backend nat chose. (Should a redirected connection reach the proxy
//! untranslated, the proxy picks a backend itself: [`L7Frontend::pick`].) eBPF Services
//! translate before the redirect and do not need this.

use std::net::{IpAddr, Ipv4Addr};

use super::compile::{Action, CompiledRule, rule_matches};
use super::identity::Identity;
use super::view::PolicyView;
use crate::service::{FrontendKind, Protocol, Service};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct L7Frontend {
    pub vip: Ipv4Addr,
    pub port: u16,
    /// `namespace/name` of the Service.
    pub service: String,
    /// The backends traffic from inside the cluster may reach: (address, port); for an
    /// `external` frontend, the local backends whose ingress rules have HTTP rules on the port.
    pub backends: Vec<(Ipv4Addr, u16)>,
    /// A node frontend (NodePort on a node address, ExternalIP, LoadBalancer IP): the eBPF
    /// device program hands a connection from outside to a local L7-policed backend to the
    /// proxy untranslated (its replies then leave from the frontend's address with no reverse
    /// NAT); netfilter translates these before its redirect and skips them.
    #[serde(default)]
    pub external: bool,
    /// An external frontend whose traffic can only reach `backends` (all local and L7-policed,
    /// e.g. `externalTrafficPolicy: Local`): netfilter may redirect it before nat, as it does a
    /// ClusterIP, since nat cannot pick a backend the proxy would not serve.
    #[serde(default)]
    pub only_local: bool,
}

impl L7Frontend {
    /// The backend for a connection from client port `sport` (spread over the backends; no
    /// session affinity).
    pub fn pick(&self, sport: u16) -> Option<(Ipv4Addr, u16)> {
        let n = self.backends.len();
        (n > 0).then(|| self.backends[usize::from(sport) % n])
    }
}

fn proxy(r: &CompiledRule) -> bool {
    r.action == Action::Proxy && !r.audit
}

/// The TCP ClusterIP frontends (of `node`'s view of `services`) with a backend this node's HTTP
/// rules apply to: a local endpoint's ingress proxy rule on the backend's port, or a local
/// endpoint's egress proxy rule to the backend.
pub fn frontends(view: &PolicyView, node: &str, node_ips: &[Ipv4Addr], services: &[Service]) -> Vec<L7Frontend> {
    let id = |ip| view.ipcache.get(&ip).copied().unwrap_or(Identity::WORLD);
    let egress: Vec<&CompiledRule> = view
        .endpoints
        .iter()
        .filter(|e| e.policy.egress.enforced)
        .flat_map(|e| e.policy.egress.rules.iter().filter(|r| proxy(r)))
        .collect();
    let ingress_on = |ip: Ipv4Addr, port: u16| {
        view.endpoint(ip).is_some_and(|e| {
            e.policy.ingress.enforced
                && e.policy.ingress.rules.iter().any(|r| {
                    proxy(r)
                        && r.protocol.is_none_or(|p| p == Protocol::Tcp)
                        && r.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
                })
        })
    };
    let proxied = |ip: Ipv4Addr, port: u16| {
        ingress_on(ip, port) || egress.iter().any(|r| rule_matches(r, ip, id(ip), Protocol::Tcp, port))
    };
    let mut out = Vec::new();
    if egress.is_empty() && !view.endpoints.iter().any(|e| e.policy.ingress.rules.iter().any(proxy)) {
        return out;
    }
    for svc in services {
        for pv in crate::view::ports_of(svc, node) {
            if pv.protocol != Protocol::Tcp {
                continue;
            }
            let backends: Vec<(Ipv4Addr, u16)> = pv
                .internal()
                .iter()
                .filter_map(|b| match b.ip {
                    IpAddr::V4(ip) => Some((ip, pv.target_port(b))),
                    IpAddr::V6(_) => None,
                })
                .collect();
            let service = format!("{}/{}", svc.name.namespace, svc.name.name);
            // From outside: the local backends with HTTP ingress rules on their port.
            let local: Vec<(Ipv4Addr, u16)> = pv
                .local
                .iter()
                .filter_map(|b| match b.ip {
                    IpAddr::V4(ip) if ingress_on(ip, pv.target_port(b)) => Some((ip, pv.target_port(b))),
                    _ => None,
                })
                .collect();
            let only_local = pv.external(true).iter().all(|b| match b.ip {
                IpAddr::V4(ip) => local.contains(&(ip, pv.target_port(b))),
                IpAddr::V6(_) => false,
            });
            if !local.is_empty() {
                for fe in &pv.frontends {
                    let vips: Vec<Ipv4Addr> = match (fe.kind, fe.ip) {
                        (FrontendKind::NodePort, _) => node_ips.to_vec(),
                        (FrontendKind::ExternalIp | FrontendKind::LoadBalancer, Some(IpAddr::V4(ip))) => vec![ip],
                        _ => Vec::new(),
                    };
                    for vip in vips {
                        let (service, backends) = (service.clone(), local.clone());
                        out.push(L7Frontend { vip, port: fe.port, service, backends, external: true, only_local });
                    }
                }
            }
            if !backends.iter().any(|(ip, port)| proxied(*ip, *port)) {
                continue;
            }
            for fe in pv.frontends.iter().filter(|f| f.kind == FrontendKind::ClusterIp) {
                if let Some(IpAddr::V4(vip)) = fe.ip {
                    let (service, backends) = (service.clone(), backends.clone());
                    out.push(L7Frontend { vip, port: fe.port, service, backends, external: false, only_local: false });
                }
            }
        }
    }
    out.sort_by_key(|f| (f.vip, f.port));
    out
}
