//! Frontend conflicts between Services: one deterministic winner per address, port and protocol
//! on every node. The older Service wins (creation time), then the one that already held the
//! frontend in the previous translation (a served frontend never loses to a newcomer of the
//! same age, which is every manifest without a timestamp), then the name. The loser is refused
//! only in the conflicting frontend; its other frontends are served, and removing it never
//! touches the winner.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_core::validate::{Problem, Rejected};
use sluice_core::{Frontend, FrontendKind, Protocol, Service, ServiceName};

/// What two frontends cannot share: NodePorts share the node's addresses (ip `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    ip: Option<IpAddr>,
    port: u16,
    protocol: Protocol,
}

fn claim(f: &Frontend) -> Claim {
    Claim { ip: if f.kind == FrontendKind::NodePort { None } else { f.ip }, port: f.port, protocol: f.protocol }
}

/// `address:port/PROTO` as a rejection shows it.
fn shown(f: &Frontend) -> String {
    let ip = f.ip.map(|ip| ip.to_string()).unwrap_or_else(|| "(node addresses)".into());
    format!("{ip}:{}/{}", f.port, f.protocol)
}

fn field(k: FrontendKind) -> &'static str {
    match k {
        FrontendKind::ClusterIp => "spec.clusterIP",
        FrontendKind::NodePort => "spec.ports[].nodePort",
        FrontendKind::ExternalIp => "spec.externalIPs",
        FrontendKind::LoadBalancer => "status.loadBalancer.ingress",
    }
}

/// Remove the losing frontends from `services` (each with its creation time); returns one
/// rejection per removed frontend.
pub fn resolve(services: &mut [(Service, Option<Time>)], prior: &[Service]) -> Vec<Rejected> {
    let held: BTreeSet<(Claim, &ServiceName)> =
        prior.iter().flat_map(|s| s.frontends.iter().map(move |f| (claim(f), &s.name))).collect();
    type Rank<'a> = (bool, Option<&'a Time>, bool, &'a ServiceName);
    let mut best: BTreeMap<Claim, (usize, Rank<'_>)> = BTreeMap::new();
    for (i, (s, ts)) in services.iter().enumerate() {
        for f in &s.frontends {
            let c = claim(f);
            let rank = (ts.is_none(), ts.as_ref(), !held.contains(&(c, &s.name)), &s.name);
            let e = best.entry(c).or_insert((i, rank));
            if rank < e.1 {
                *e = (i, rank);
            }
        }
    }
    let winner: BTreeMap<Claim, (usize, ServiceName)> =
        best.into_iter().map(|(c, (i, r))| (c, (i, r.3.clone()))).collect();
    let mut rejected = Vec::new();
    for (i, (s, _)) in services.iter_mut().enumerate() {
        let name = s.name.clone();
        // One Service naming one address and port twice (a clusterIP repeated in externalIPs):
        // the first frontend stands, the repeat is refused.
        let mut own: BTreeMap<Claim, FrontendKind> = BTreeMap::new();
        s.frontends.retain(|f| {
            if let Some(first) = own.get(&claim(f)) {
                let first = format!("this Service's {}", field(*first));
                rejected.push(Rejected::new(
                    format!("Service {name}"),
                    field(f.kind),
                    shown(f),
                    Problem::Duplicate { first },
                ));
                return false;
            }
            own.insert(claim(f), f.kind);
            true
        });
        s.frontends.retain(|f| match winner.get(&claim(f)) {
            Some((w, wname)) if *w != i => {
                let winner = format!("Service {wname}");
                rejected.push(Rejected::new(
                    format!("Service {name}"),
                    field(f.kind),
                    shown(f),
                    Problem::Conflict { winner },
                ));
                false
            }
            _ => true,
        });
    }
    rejected
}
