//! The iptables side of the agent: render the node's whole ruleset (pod masquerade plus the
//! Service features the plan gives to iptables), sync it incrementally, re-read the kernel for
//! a full resync periodically and after failures, and flush UDP conntrack entries of removed
//! backends.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sluice_core::{ClusterState, Feature, Owner, Plan};
use sluice_iptables::Iptables;
use sluice_iptables::incremental::Renderer;
use sluice_iptables::services::{Masquerade, NodeInput};
use sluice_iptables::sync::{RuleSyncer, SyncReport, flush_udp_conntrack, udp_backends};

/// How often the kernel state is re-read and repaired even when nothing changed.
pub const FULL_RESYNC: Duration = Duration::from_secs(30);

pub struct RulesManager {
    syncer: RuleSyncer,
    /// Formats only Services that changed since the last render.
    renderer: Renderer,
    /// What the last successful sync was made from: (source generation, owned features, masquerade).
    last_inputs: Option<Inputs>,
    /// UDP backend addresses of the last successful sync (their conntrack entries are flushed
    /// when they go; the addresses alone, not a copy of every Service).
    last_udp: BTreeSet<std::net::IpAddr>,
    last_full: Option<Instant>,
}

#[derive(Clone, PartialEq)]
struct Inputs {
    generation: u64,
    owned: BTreeSet<Feature>,
    masquerade: Option<Masquerade>,
}

pub fn owned(plan: &Plan) -> BTreeSet<Feature> {
    plan.entries.iter().filter(|e| e.owner == Owner::Iptables).map(|e| e.feature).collect()
}

impl RulesManager {
    /// The features the last successful sync programmed.
    pub fn programmed(&self) -> BTreeSet<Feature> {
        self.last_inputs.as_ref().map(|i| i.owned.clone()).unwrap_or_default()
    }

    pub fn new(ipt: Iptables) -> Self {
        RulesManager {
            syncer: RuleSyncer::new(ipt),
            renderer: Renderer::default(),
            last_inputs: None,
            last_udp: BTreeSet::new(),
            last_full: None,
        }
    }

    /// Converge; returns problems (never fatal: other features keep working).
    pub async fn reconcile(
        &mut self,
        node: &str,
        cluster_cidr: ipnet::Ipv4Net,
        masquerade: Option<Masquerade>,
        generation: u64,
        state: &ClusterState,
        owned: BTreeSet<Feature>,
    ) -> Vec<String> {
        let inputs = Inputs { generation, owned, masquerade };
        let full_due = self.last_full.is_none_or(|t| t.elapsed() > FULL_RESYNC);
        if self.last_inputs.as_ref() == Some(&inputs) && !full_due {
            return Vec::new();
        }
        let mut errors = Vec::new();
        let (desired, stats) = self.renderer.render(&NodeInput {
            node_name: node,
            cluster_cidr,
            masquerade: inputs.masquerade.clone(),
            services: &state.services,
            host_ports: &state.host_ports,
            owned: &inputs.owned,
        });
        tracing::debug!(reused = stats.reused, rendered = stats.rendered, "iptables rules rendered");
        // iptables-restore blocks: run it off the async workers, then take the syncer back.
        let ipt = self.syncer.ipt;
        let mut syncer = std::mem::replace(&mut self.syncer, RuleSyncer::new(ipt));
        let (syncer, result) = tokio::task::spawn_blocking(move || {
            let r = syncer.sync(&desired, full_due);
            (syncer, r)
        })
        .await
        .unwrap_or_else(|_| (RuleSyncer::new(ipt), Ok(SyncReport::default())));
        self.syncer = syncer;
        match result {
            Ok(report) => {
                if !report.tables.is_empty() {
                    tracing::info!(full = report.full, lines = report.lines, tables = ?report.tables, "iptables synced");
                }
                if full_due {
                    self.last_full = Some(Instant::now());
                }
                // Only after the new rules are in: stale UDP flows would otherwise re-appear.
                let udp_now = udp_backends(&state.services);
                for ip in self.last_udp.difference(&udp_now).copied() {
                    match tokio::task::spawn_blocking(move || flush_udp_conntrack(ip)).await {
                        Ok(Ok(n)) => {
                            tracing::info!(%ip, deleted = n, "UDP conntrack entries of a removed backend flushed")
                        }
                        Ok(Err(e)) => errors.push(e.to_string()),
                        Err(_) => {}
                    }
                }
                self.last_inputs = Some(inputs);
                self.last_udp = udp_now;
            }
            Err(e) => errors.push(format!("iptables sync failed (will retry with a full resync): {e}")),
        }
        errors
    }
}
