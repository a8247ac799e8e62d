//! One pass's outcome into the status the socket serves. Typed errors are kept typed
//! (`dataplane_errors`) and rendered in words (`errors`); rejected objects are logged once,
//! when first refused, and shown for as long as they last.

use sluice_core::{Engine, PassReport};

use super::features::Planner;
use super::node::NodeReport;
use super::state::Current;
use crate::api::types::{AgentStatus, BackendStatus, SourceStatus};

pub struct Pass<'a> {
    pub planner: &'a Planner,
    pub engine: &'a Engine,
    pub pass: PassReport,
    pub source: SourceStatus,
    pub current: &'a Current,
    pub plumbing: NodeReport,
    pub other_errors: Vec<String>,
    pub iptables_variant: &'static str,
}

/// What status says before the first pass.
pub fn initial(cfg: &sluice_config::Config, planner: &Planner, probe_took: std::time::Duration) -> AgentStatus {
    AgentStatus {
        node: cfg.node_name.clone(),
        cluster_cidr: cfg.cluster_cidr.to_string(),
        started_unix: super::now_unix(),
        kernel: planner.probed.kernel.clone(),
        probe_ms: probe_took.as_millis() as u64,
        plan: Some(planner.plan.clone()),
        config: planner.status.clone(),
        ..Default::default()
    }
}

pub fn status(st: &mut AgentStatus, p: Pass<'_>) {
    st.plan = Some(p.planner.plan.clone());
    st.config = p.planner.status.clone();
    st.backends = p
        .engine
        .backends()
        .map(|b| BackendStatus {
            id: b.id(),
            serving: p.engine.serving(b.id()).into_iter().collect(),
            summary: b.summary(),
        })
        .collect();
    st.ebpf = st
        .backends
        .iter()
        .find(|b| b.id == sluice_core::BackendId::EBPF)
        .map(|b| b.summary.clone())
        .unwrap_or_default();
    st.features = p.pass.features;
    st.source = p.source;
    let me = p.current.state.node(&p.planner.config.node_name);
    st.pod_cidr = p.plumbing.ctx.pod_cidr.map(|c| c.to_string());
    st.underlay_ip = me.and_then(|n| n.internal_ip).map(|i| i.to_string());
    st.conflist = p.plumbing.conflist;
    st.routes = p.plumbing.routes.into_iter().collect();
    st.masquerade = p.plumbing.masquerade;
    st.iptables_variant = p.iptables_variant.into();
    st.local_endpoints = p.plumbing.local_endpoints;
    st.services = p.current.state.services.len();
    st.held = p.current.held.clone();
    let rejected = &p.current.state.rejected;
    for r in rejected.iter().filter(|r| !st.rejected.contains(r)) {
        tracing::warn!(object = %r.object, reason = %r.reason, "object rejected; everything else keeps working");
    }
    st.rejected = rejected.clone();
    let errors: Vec<String> = p
        .plumbing
        .errors
        .into_iter()
        .chain(p.pass.errors.iter().map(|e| e.to_string()))
        .chain(p.other_errors)
        .collect();
    for e in &errors {
        if !st.errors.contains(e) {
            tracing::warn!(error = %e, "reconcile problem");
        }
    }
    st.errors = errors;
    st.dataplane_errors = p.pass.errors;
}
