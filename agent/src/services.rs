//! `sluice service list`: every Service frontend, its type, which dataplane serves it, and its
//! backends with state, in the style of `cilium service list`.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use sluice_core::validate::Rejected;
use sluice_core::{BackendState, DataplaneError, Frontend, ObjectError, ObjectRef, Owner, Plan, Service};

pub use crate::api::types::{BackendEntry, ServiceEntry};

/// Why the planned backend does not serve this frontend, from the last pass's per-object errors.
fn failure(s: &Service, fe: &Frontend, owner: Owner, failed: &[ObjectError]) -> Option<String> {
    let Owner::Backend(id) = owner else { return None };
    failed
        .iter()
        .filter(|e| matches!(&e.object, ObjectRef::Service(n) if *n == s.name))
        .find(|e| match &e.error {
            DataplaneError::UnsupportedProtocol { backend, protocol } => *backend == id && *protocol == fe.protocol,
            DataplaneError::MapFull { backend, .. } | DataplaneError::Kernel { backend, .. } => *backend == id,
            _ => false,
        })
        .map(|e| e.error.to_string())
}

/// Every frontend with its owner, then every refused Service (or refused frontend of one).
/// `failed`: the last pass's per-object errors; a frontend its owner could not program is
/// listed as failed, never as served.
pub fn entries(services: &[Service], rejected: &[Rejected], failed: &[ObjectError], plan: &Plan) -> Vec<ServiceEntry> {
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
            let owner = plan.owner(fe.kind.feature());
            let why = failure(s, fe, owner, failed);
            out.push(ServiceEntry {
                id: out.len() + 1,
                service: s.name.to_string(),
                frontend: format!("{addr}:{}/{}", fe.port, fe.protocol),
                kind: fe.kind.to_string(),
                owner: if why.is_some() { format!("{owner} (failed)") } else { owner.to_string() },
                backends,
                rejected: why,
            });
        }
    }
    for r in rejected.iter().filter(|r| r.object.starts_with("Service ")) {
        out.push(ServiceEntry {
            id: out.len() + 1,
            service: r.object.trim_start_matches("Service ").to_string(),
            frontend: if r.field.starts_with("spec.ports[].") || r.field == "spec.clusterIP" {
                r.value.clone()
            } else {
                "-".into()
            },
            kind: "-".into(),
            owner: "rejected".into(),
            backends: Vec::new(),
            rejected: Some(r.reason.clone()),
        });
    }
    out
}

pub fn render(list: &[ServiceEntry]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "ID",
        "Frontend",
        "Service Type",
        "Owner",
        "Backend (or why refused)",
    ]);
    for e in list {
        let backends: Vec<String> =
            e.backends.iter().enumerate().map(|(i, b)| format!("{} => {} ({})", i + 1, b.address, b.state)).collect();
        let last = match &e.rejected {
            Some(why) => why.clone(),
            None => backends.join("\n"),
        };
        t.add_row([e.id.to_string(), e.frontend.clone(), e.kind.clone(), e.owner.clone(), last]);
    }
    format!("{t}\n")
}
