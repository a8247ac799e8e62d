//! Node plumbing, always sluice's whichever backend serves which feature: ip_forward, routes
//! to other nodes' pod CIDRs, the CNI conflist, this node's pod interfaces and devices. Its
//! output is the [`NodeContext`] every backend receives.
//!
//! Pod masquerade is node plumbing too: its own chain (`SLUICE-NODE-MASQ`, nat POSTROUTING),
//! synced here whichever backend serves the Service features (`sluice_iptables::NodeRules`,
//! which reads and prunes only `SLUICE-NODE-*` chains).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_config::Config;
use sluice_core::{ClusterState, LocalEndpoint, NodeContext, PodRoute, desired_pod_routes};
use sluice_iptables::node::Masquerade;
use sluice_iptables::{Iptables, NodeRules, RouteManager};

pub struct NodeManager {
    routes: RouteManager,
    handle: rtnetlink::Handle,
    /// (node IPs, devices, when looked up): devices are re-read when the IPs change or every 30 s.
    devices: Option<(Vec<Ipv4Addr>, Vec<String>, Instant)>,
    /// The last pod interfaces read from the IPAM store: kept when a read fails, so a store
    /// problem never withdraws the programs of pods that are still there.
    last_endpoints: Vec<LocalEndpoint>,
    rules: NodeRules,
    /// How masquerade is done, for status (variant and chain).
    masq_by: String,
}

/// What one pass of node plumbing found and did.
#[derive(Debug, Default)]
pub struct NodeReport {
    pub ctx: NodeContext,
    pub local_endpoints: Vec<LocalEndpoint>,
    pub routes: BTreeSet<PodRoute>,
    pub conflist: Option<String>,
    pub masquerade: String,
    pub errors: Vec<String>,
}

impl NodeManager {
    pub async fn start(ipt: Iptables) -> anyhow::Result<Self> {
        // Pods route through the node: forwarding is a precondition of pod networking.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling net.ipv4.ip_forward")?;
        let (conn, handle, _) = rtnetlink::new_connection().context("opening netlink socket")?;
        tokio::spawn(conn);
        let masq_by = format!("iptables {}, chain {}", ipt.variant.as_str(), sluice_iptables::node::MASQ_CHAIN);
        Ok(NodeManager {
            routes: RouteManager::new(handle.clone()),
            handle,
            devices: None,
            last_endpoints: Vec::new(),
            rules: NodeRules::new(ipt),
            masq_by,
        })
    }

    /// Converge routes and the conflist; gather the node facts. `synced`: stale routes may go.
    pub async fn reconcile(&mut self, cfg: &Config, state: &ClusterState, synced: bool) -> NodeReport {
        let mut r = NodeReport::default();
        let me = state.node(&cfg.node_name);
        let pod_cidr = cfg.pod_cidr.or(me.and_then(|n| n.pod_cidr));
        let desired = desired_pod_routes(&cfg.node_name, state.nodes.values());
        match self.routes.reconcile(&desired, synced).await {
            Ok((diff, now)) => {
                for x in &diff.add {
                    tracing::info!(dst = %x.dst, via = %x.via, "route added");
                }
                for x in &diff.remove {
                    tracing::info!(dst = %x.dst, via = %x.via, "stale route removed");
                }
                r.routes = now;
            }
            Err(e) => r.errors.push(e.to_string()),
        }
        r.masquerade = match pod_cidr {
            None => "waiting for pod CIDR".into(),
            Some(_) if !cfg.masquerade => "off (masquerade: false)".into(),
            Some(cidr) => format!("{cidr} -> outside {} ({})", cfg.cluster_cidr, self.masq_by),
        };
        let masq =
            pod_cidr.filter(|_| cfg.masquerade).map(|pod_cidr| Masquerade { pod_cidr, cluster_cidr: cfg.cluster_cidr });
        match tokio::task::block_in_place(|| self.rules.sync(masq)) {
            Ok(Some(rep)) if !rep.tables.is_empty() => tracing::info!(lines = rep.lines, "pod masquerade synced"),
            Ok(_) => {}
            Err(e) => r.errors.push(format!("pod masquerade: {e}")),
        }
        if let Some(cidr) = pod_cidr {
            if !cfg.cni.conflist_path.as_os_str().is_empty() {
                match super::cni_conf::write_if_changed(cfg, cidr) {
                    Ok(()) => r.conflist = Some(cfg.cni.conflist_path.display().to_string()),
                    Err(e) => r.errors.push(format!("{e:#}")),
                }
            }
            match local_endpoints(cfg, cidr) {
                Ok((eps, quarantined)) => {
                    for q in quarantined {
                        r.errors.push(format!(
                            "IPAM record quarantined as corrupt: {} (its address stays reserved; delete the file once no pod uses it)",
                            q.display()
                        ));
                    }
                    self.last_endpoints = eps;
                }
                Err(e) => r.errors.push(format!("reading pod interfaces (the last known ones are kept): {e}")),
            }
            r.local_endpoints = self.last_endpoints.clone();
        }
        let ips: Vec<Ipv4Addr> = me.and_then(|n| n.internal_ip).into_iter().collect();
        if self.devices.as_ref().is_none_or(|(i, _, t)| *i != ips || t.elapsed() > Duration::from_secs(30)) {
            let devs = if !cfg.devices.is_empty() {
                cfg.devices.clone()
            } else {
                super::devices::holding(&self.handle, &ips).await.unwrap_or_else(|e| {
                    r.errors.push(format!("listing node devices: {e:#}"));
                    Vec::new()
                })
            };
            self.devices = Some((ips.clone(), devs, Instant::now()));
        }
        r.ctx = NodeContext {
            name: cfg.node_name.clone(),
            cluster_cidr: cfg.cluster_cidr,
            pod_cidr,
            ips,
            devices: self.devices.as_ref().map(|(_, d, _)| d.clone()).unwrap_or_default(),
            cgroup: cfg.cgroup_root(),
            // Filled from the plan by the caller (the probe's attach path), and from the
            // config (flows.trace_to_stack).
            tc_attach: Default::default(),
            trace_to_stack: false,
        };
        r
    }
}

/// This node's pod interfaces, from the CNI plugin's IPAM store (the source of truth for what
/// is wired on this node).
/// Also returns the quarantined (corrupt) records.
fn local_endpoints(
    cfg: &Config,
    cidr: ipnet::Ipv4Net,
) -> Result<(Vec<LocalEndpoint>, Vec<std::path::PathBuf>), sluice_cni::CniError> {
    let gw = sluice_cni::spec::first_host(cidr);
    let store = sluice_cni::ipam::Store::new(&cfg.cni.data_dir, &cfg.cni.network_name, cidr, gw);
    if !store.dir().exists() {
        return Ok((Vec::new(), Vec::new()));
    }
    let lock = store.lock()?;
    let list = lock.list()?;
    let quarantined = lock.quarantined().into_iter().map(|(_, p)| p).collect();
    let eps = list
        .into_iter()
        .filter(|a| a.state == sluice_cni::ipam::AllocState::Ready)
        .map(|a| LocalEndpoint {
            container_id: a.container_id,
            ifname: a.ifname,
            ip: a.ip,
            host_interface: a.host_ifname,
            pod_namespace: a.pod_namespace,
            pod_name: a.pod_name,
        })
        .collect();
    Ok((eps, quarantined))
}
