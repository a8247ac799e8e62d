//! The eBPF side of the agent: the tc service datapath on every local pod veth, its maps in step
//! with the Services of the features the plan gives to eBPF.
//!
//! Moving a feature away from eBPF deletes its service entries (new flows go to the new owner)
//! but leaves the programs attached: flows already in the BPF conntrack keep their backend, so
//! established connections survive the switch (make-before-break in the other direction).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sluice_core::{ClusterState, Feature, LocalEndpoint, Owner, Plan, Service};
use sluice_ebpf::datapath::Datapath;

pub struct EbpfManager {
    pin_dir: PathBuf,
    dp: Option<Datapath>,
    /// Interfaces whose links this process attached or took over (swapped its programs into).
    handled: BTreeSet<String>,
    /// (source generation, owned features) of the last map sync: skip when unchanged.
    synced: Option<(u64, BTreeSet<Feature>)>,
}

/// One row of `sluice bpf lb list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LbEntry {
    pub frontend: String,
    pub service_id: u32,
    pub backend_count: u32,
    pub affinity_s: u32,
    pub backends: Vec<(u32, String)>,
}

fn ip(a: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(a.to_ne_bytes())
}

fn port(p: u16) -> u16 {
    u16::from_be_bytes(p.to_ne_bytes())
}

impl EbpfManager {
    pub fn new(pin_dir: PathBuf) -> Self {
        EbpfManager { pin_dir, dp: None, handled: BTreeSet::new(), synced: None }
    }

    pub fn reconcile(
        &mut self,
        generation: u64,
        state: &ClusterState,
        plan: &Plan,
        local: &[LocalEndpoint],
    ) -> Vec<String> {
        let owned: BTreeSet<Feature> =
            plan.entries.iter().filter(|e| e.owner == Owner::Ebpf).map(|e| e.feature).collect();
        if owned.is_empty() && self.dp.is_none() && !self.pin_dir.exists() {
            return Vec::new();
        }
        let mut errors = Vec::new();
        if self.dp.is_none() {
            match Datapath::open(&self.pin_dir) {
                Ok(dp) => {
                    tracing::info!(pin_dir = %self.pin_dir.display(), "eBPF datapath loaded (pinned maps restored)");
                    self.dp = Some(dp);
                }
                Err(e) => return vec![format!("eBPF datapath: {e}")],
            }
        }
        let Some(dp) = self.dp.as_mut() else { return errors };
        let mut keep = BTreeSet::new();
        for ep in local.iter().filter(|e| !e.host_interface.is_empty()) {
            keep.insert(ep.host_interface.clone());
            // Once per interface and process: new links, or this process's programs swapped
            // atomically into links a previous agent pinned.
            if !self.handled.contains(&ep.host_interface) {
                match dp.attach(&ep.host_interface) {
                    Ok(()) => {
                        self.handled.insert(ep.host_interface.clone());
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        for gone in dp.detach_others(&keep) {
            self.handled.remove(&gone);
            tracing::info!(ifname = %gone, "eBPF links of a removed pod released");
        }
        if self.synced.as_ref() == Some(&(generation, owned.clone())) {
            return errors;
        }
        let services: Vec<Service> = if owned.contains(&Feature::ClusterIp) {
            state
                .services
                .iter()
                .map(|s| {
                    let mut s = s.clone();
                    if !owned.contains(&Feature::SessionAffinity) {
                        s.affinity_timeout_s = None;
                    }
                    s
                })
                .collect()
        } else {
            Vec::new()
        };
        match dp.update(&services) {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(changes = n, "eBPF service maps synced");
                }
                self.synced = Some((generation, owned));
            }
            Err(e) => errors.push(e.to_string()),
        }
        errors
    }

    /// One line for `sluice status`.
    pub fn summary(&self) -> String {
        match &self.dp {
            None => "not loaded (no feature is given to eBPF on this node)".into(),
            Some(dp) => format!(
                "loaded, maps and links pinned in {}; programs on {} pod veth(s); {} service frontend(s)",
                self.pin_dir.display(),
                dp.attached().len(),
                dp.entries().services.len()
            ),
        }
    }

    pub fn lb_list(&self) -> Vec<LbEntry> {
        let Some(dp) = &self.dp else { return Vec::new() };
        let e = dp.entries();
        e.services
            .iter()
            .map(|(k, v)| LbEntry {
                frontend: format!(
                    "{}:{}/{}",
                    ip(k.vip),
                    port(k.port),
                    match k.proto {
                        6 => "TCP",
                        17 => "UDP",
                        _ => "SCTP",
                    }
                ),
                service_id: v.service_id,
                backend_count: v.backend_count,
                affinity_s: v.affinity_s,
                backends: e
                    .backends
                    .iter()
                    .filter(|(bk, _)| bk.service_id == v.service_id)
                    .map(|(bk, b)| (bk.slot, format!("{}:{}", ip(b.addr), port(b.port))))
                    .collect(),
            })
            .collect()
    }
}
