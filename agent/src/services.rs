//! `sluice service list`: every Service frontend, its type, which dataplane serves it, and its
//! backends with state, in the style of `cilium service list`.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::{Deserialize, Serialize};
use sluice_core::{BackendState, Feature, FrontendKind, Plan, Service};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendEntry {
    pub address: String,
    pub state: String,
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Position in the sorted list of frontends (stable while the Service set is unchanged).
    pub id: usize,
    pub service: String,
    pub frontend: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Who serves this frontend on this node (eBPF, iptables, kube-proxy, off).
    pub owner: String,
    pub backends: Vec<BackendEntry>,
}

fn feature_of(k: FrontendKind) -> Feature {
    match k {
        FrontendKind::ClusterIp => Feature::ClusterIp,
        FrontendKind::NodePort => Feature::NodePort,
        FrontendKind::ExternalIp => Feature::ExternalIps,
        FrontendKind::LoadBalancer => Feature::LoadBalancer,
    }
}

pub fn entries(services: &[Service], plan: &Plan) -> Vec<ServiceEntry> {
    let mut out = Vec::new();
    for s in services {
        for fe in &s.frontends {
            let addr = fe.ip.map(|ip| ip.to_string()).unwrap_or_else(|| "0.0.0.0".into());
            let backends = s
                .backends
                .iter()
                .filter(|b| b.port_name == fe.port_name && b.protocol == fe.protocol)
                .map(|b| BackendEntry {
                    address: format!("{}:{}/{}", b.ip, b.port, b.protocol),
                    state: match b.state {
                        BackendState::Active => "active",
                        BackendState::Terminating => "terminating",
                        BackendState::NotReady => "not-ready",
                    }
                    .into(),
                    node: b.node.clone(),
                })
                .collect();
            out.push(ServiceEntry {
                id: out.len() + 1,
                service: s.name.to_string(),
                frontend: format!("{addr}:{}/{}", fe.port, fe.protocol),
                kind: fe.kind.to_string(),
                owner: plan.owner(feature_of(fe.kind)).to_string(),
                backends,
            });
        }
    }
    out
}

pub fn render(list: &[ServiceEntry]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["ID", "Frontend", "Service Type", "Owner", "Backend"]);
    for e in list {
        let backends: Vec<String> =
            e.backends.iter().enumerate().map(|(i, b)| format!("{} => {} ({})", i + 1, b.address, b.state)).collect();
        t.add_row([e.id.to_string(), e.frontend.clone(), e.kind.clone(), e.owner.clone(), backends.join("\n")]);
    }
    format!("{t}\n")
}
