//! The eBPF side of the agent: the tc service datapath on every local pod veth and on the node's
//! devices, socket LB on the node's cgroup, the maps in step with the Services of the features
//! the plan gives to eBPF.
//!
//! Moving a feature away from eBPF deletes its service entries (new flows go to the new owner)
//! but leaves the programs attached: flows already in the BPF conntrack keep their backend, so
//! established connections survive the switch (make-before-break in the other direction).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sluice_core::{ClusterState, Feature, LocalEndpoint, Owner, Plan};
use sluice_ebpf::datapath::Datapath;
use sluice_ebpf::maps::NodeCtx;

/// What the eBPF side needs to know about this node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    /// Where NodePorts and HostPorts listen; the first is the SNAT address.
    pub ips: Vec<Ipv4Addr>,
    /// Devices that carry traffic from outside the node.
    pub devices: Vec<String>,
    pub cgroup: PathBuf,
    /// Maglev table size when the config says `lb_algorithm: maglev`.
    pub maglev_m: Option<u32>,
    pub map_sizes: sluice_core::MapSizes,
}

/// Features served at the node's devices.
const DEVICE_FEATURES: [Feature; 4] =
    [Feature::NodePort, Feature::ExternalIps, Feature::LoadBalancer, Feature::HostPort];

pub struct EbpfManager {
    pin_dir: PathBuf,
    dp: Option<Datapath>,
    /// Interfaces whose links this process attached or took over (swapped its programs into).
    handled: BTreeSet<String>,
    /// Whether this process attached the socket-LB programs.
    cgroup_handled: bool,
    /// (source generation, node context) of the last map sync: skip when unchanged.
    synced: Option<(u64, NodeCtx)>,
    devices: Vec<String>,
    cgroup: Option<PathBuf>,
}

/// One row of `sluice bpf lb list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LbEntry {
    pub frontend: String,
    pub service_id: u32,
    pub backend_count: u32,
    pub affinity_s: u32,
    /// Who this frontend is served for: pods (tc at the veths), external (node devices),
    /// host TCP/UDP (socket LB), with source ranges.
    #[serde(default)]
    pub serves: Vec<String>,
    /// (slot, backend address; " local" when on this node).
    pub backends: Vec<(u32, String)>,
}

fn serves(flags: u32) -> Vec<String> {
    use sluice_ebpf::maps::*;
    [
        (SVC_F_TC, "pods"),
        (SVC_F_EXTERNAL, "external"),
        (SVC_F_SOCK_TCP, "host-tcp"),
        (SVC_F_SOCK_UDP, "host-udp"),
        (SVC_F_SRC_RANGES, "source-ranges"),
    ]
    .iter()
    .filter(|(f, _)| flags & f != 0)
    .map(|(_, n)| n.to_string())
    .collect()
}

fn ip(a: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(a.to_ne_bytes())
}

fn port(p: u16) -> u16 {
    u16::from_be_bytes(p.to_ne_bytes())
}

impl EbpfManager {
    pub fn new(pin_dir: PathBuf) -> Self {
        EbpfManager {
            pin_dir,
            dp: None,
            handled: BTreeSet::new(),
            cgroup_handled: false,
            synced: None,
            devices: Vec::new(),
            cgroup: None,
        }
    }

    pub fn reconcile(
        &mut self,
        generation: u64,
        state: &ClusterState,
        plan: &Plan,
        local: &[LocalEndpoint],
        node: &NodeFacts,
    ) -> Vec<String> {
        let owned: BTreeSet<Feature> =
            plan.entries.iter().filter(|e| e.owner == Owner::Ebpf).map(|e| e.feature).collect();
        if owned.is_empty() && self.dp.is_none() && !self.pin_dir.exists() {
            return Vec::new();
        }
        let mut errors = Vec::new();
        if self.dp.is_none() {
            match Datapath::open(&self.pin_dir, &node.map_sizes) {
                Ok(dp) => {
                    tracing::info!(pin_dir = %self.pin_dir.display(), "eBPF datapath loaded (pinned maps restored)");
                    self.dp = Some(dp);
                }
                Err(e) => return vec![format!("eBPF datapath: {e}")],
            }
        }
        let Some(dp) = self.dp.as_mut() else { return errors };
        errors.extend(dp.size_mismatches.iter().cloned());
        let mut keep = BTreeSet::new();
        let serves_devices = DEVICE_FEATURES.iter().any(|f| owned.contains(f));
        let devices: &[String] = if serves_devices { &node.devices } else { &[] };
        if serves_devices && node.ips.is_empty() {
            errors.push(format!(
                "eBPF NodePort/HostPort: node {} has no InternalIP yet (Node status.addresses); nothing listens on node addresses until it has one",
                node.name
            ));
        } else if serves_devices && devices.is_empty() {
            errors.push(format!(
                "eBPF NodePort/ExternalIPs/LoadBalancer/HostPort: no device holds the node's InternalIP {}; set `devices` in the config",
                node.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        for dev in devices {
            keep.insert(dev.clone());
            if !self.handled.contains(dev) {
                match dp.attach_device(dev) {
                    Ok(()) => {
                        tracing::info!(device = %dev, "eBPF program attached to node device");
                        self.handled.insert(dev.clone());
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
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
            tracing::info!(ifname = %gone, "eBPF links released (pod removed or device no longer served)");
        }
        self.devices = devices.to_vec();
        if owned.contains(&Feature::SocketLbTcp) || owned.contains(&Feature::SocketLbUdp) {
            if !self.cgroup_handled {
                match dp.attach_cgroup(&node.cgroup) {
                    Ok(()) => {
                        tracing::info!(cgroup = %node.cgroup.display(), "socket LB attached");
                        self.cgroup_handled = true;
                        self.cgroup = Some(node.cgroup.clone());
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
        } else if dp.cgroup_attached() || self.cgroup_handled {
            dp.detach_cgroup();
            self.cgroup_handled = false;
            self.cgroup = None;
            tracing::info!("socket LB released (the plan no longer gives it to eBPF)");
        }
        let ctx = NodeCtx { node_name: node.name.clone(), node_ips: node.ips.clone(), owned, maglev_m: node.maglev_m };
        if self.synced.as_ref().is_some_and(|(g, c)| *g == generation && *c == ctx) {
            return errors;
        }
        match dp.update(&state.services, &state.host_ports, &ctx) {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(changes = n, "eBPF service maps synced");
                }
                self.synced = Some((generation, ctx));
            }
            Err(e) => errors.push(e.to_string()),
        }
        errors
    }

    /// The features the last successful map sync programmed.
    pub fn programmed(&self) -> BTreeSet<Feature> {
        self.synced.as_ref().map(|(_, c)| c.owned.clone()).unwrap_or_default()
    }

    /// One line for `sluice status`.
    pub fn summary(&self) -> String {
        match &self.dp {
            None => "not loaded (no feature is given to eBPF on this node)".into(),
            Some(dp) => format!(
                "loaded, maps and links pinned in {}; programs on {} pod veth(s) and device(s) [{}]; socket LB {}; {} service frontend(s)",
                self.pin_dir.display(),
                dp.attached().len().saturating_sub(self.devices.len()),
                self.devices.join(", "),
                self.cgroup.as_ref().map(|c| format!("on {}", c.display())).unwrap_or_else(|| "off".into()),
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
                serves: serves(v.flags),
                backends: e
                    .backends
                    .range(
                        sluice_ebpf::maps::BackendKey { service_id: v.service_id, slot: 0 }
                            ..=sluice_ebpf::maps::BackendKey { service_id: v.service_id, slot: u32::MAX },
                    )
                    .map(|(bk, b)| {
                        let local = if b.flags & sluice_ebpf::maps::BE_F_LOCAL != 0 { " local" } else { "" };
                        (bk.slot, format!("{}:{}{local}", ip(b.addr), port(b.port)))
                    })
                    .collect(),
            })
            .collect()
    }
}
