//! The part of `sluice migrate verify` that reads the kernel: sluice's own nat rules (both
//! iptables variants) and eBPF's service maps (through the agent, which holds them), compared
//! with the frontends the agent wants (`core::programmed`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;
use sluice_core::BackendId;
use sluice_core::programmed::{HeldFrontend, ProgrammedRow, ProgrammedVerdict, check, from_lb_row};
use sluice_iptables::restore::{Iptables, IptablesError, Variant};

use super::migrate::Ours;
use crate::api::{Request, Response, call};

#[derive(Debug, Default, Serialize)]
pub struct Programmed {
    /// One row per frontend a sluice backend serves here (with endpoints).
    pub rows: Vec<ProgrammedRow>,
    /// Why part of the kernel could not be read (the rows then say missing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Programmed {
    /// Frontends the kernel does not translate as the agent wants.
    pub fn wrong(&self) -> usize {
        self.rows.iter().filter(|r| r.verdict != ProgrammedVerdict::Programmed).count()
    }
}

/// Sluice's nat rules in every installed iptables variant, as held frontends.
fn iptables_held(errors: &mut Vec<String>) -> Vec<HeldFrontend> {
    let mut out = Vec::new();
    for variant in [Variant::Nft, Variant::Legacy] {
        match (Iptables { variant }).save("nat") {
            Ok(dump) => out.extend(sluice_iptables::programmed::frontends(&dump)),
            Err(IptablesError::Spawn { .. }) => {} // this variant is not installed
            Err(e) => errors.push(format!("reading sluice's nat rules ({}): {e}", variant.as_str())),
        }
    }
    out
}

fn ebpf_held(socket: &Path, errors: &mut Vec<String>) -> Vec<HeldFrontend> {
    match super::block_on(call(socket, &Request::BpfLb)) {
        Ok(Ok(Response::BpfLb(rows))) => rows.iter().filter_map(from_lb_row).collect(),
        Ok(Ok(other)) => {
            errors.push(format!("the agent answered the eBPF map read with {other:?}"));
            Vec::new()
        }
        Ok(Err(e)) | Err(e) => {
            errors.push(format!("reading eBPF's service maps through the agent: {e}"));
            Vec::new()
        }
    }
}

/// Every frontend a sluice backend serves on this node, checked in that backend's kernel
/// objects.
pub(crate) fn read(socket: &Path, ours: &Ours) -> anyhow::Result<Programmed> {
    let st = match super::block_on(call(socket, &Request::Status))?? {
        Response::Status(s) => s,
        _ => anyhow::bail!("agent sent an unexpected answer to a status request"),
    };
    let mut errors = Vec::new();
    let held: BTreeMap<BackendId, Vec<HeldFrontend>> =
        [(BackendId::IPTABLES, iptables_held(&mut errors)), (BackendId::EBPF, ebpf_held(socket, &mut errors))].into();
    let node_ips: Vec<IpAddr> =
        ours.nodes.iter().filter(|n| n.name == ours.node).filter_map(|n| n.internal_ip).map(IpAddr::from).collect();
    let rows = check(&ours.frontends, &st.features, &held, &node_ips);
    Ok(Programmed { rows, errors })
}
