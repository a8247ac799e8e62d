//! The policy side of a pass: the cluster's pods as policy endpoints, this node's view of
//! who is `host` and `remote-node`, and the compiled rules of this node's endpoints, recompiled
//! only when something they depend on changed (source, enforcement mode, local endpoints).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};

use sluice_core::policy::{
    EndpointRules, Enforcement, Identities, IdentityLabels, PolicyContext, PolicyEndpoint, PolicyInput, PolicyView,
};
use sluice_core::{ClusterState, LocalEndpoint, NodeContext};

/// Every pod with an IPv4 address, with its identity labels.
pub fn endpoints(state: &ClusterState) -> Vec<PolicyEndpoint> {
    state
        .pods
        .iter()
        .filter_map(|p| {
            let Some(IpAddr::V4(ip)) = p.ip else { return None };
            Some(PolicyEndpoint {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                ip,
                node: p.node.clone(),
                labels: IdentityLabels {
                    namespace: p.namespace.clone(),
                    pod: p.labels.clone(),
                    namespace_labels: state.namespaces.get(&p.namespace).cloned().unwrap_or_default(),
                },
                ports: p.ports.clone(),
            })
        })
        .collect()
}

/// Node name -> its addresses (this node's as the node manager found them).
pub fn node_ips(state: &ClusterState, ctx: &NodeContext) -> BTreeMap<String, Vec<Ipv4Addr>> {
    let mut m: BTreeMap<String, Vec<Ipv4Addr>> =
        state.nodes.values().map(|n| (n.name.clone(), n.internal_ip.into_iter().collect())).collect();
    let own = m.entry(ctx.name.clone()).or_default();
    for ip in &ctx.ips {
        if !own.contains(ip) {
            own.push(*ip);
        }
    }
    m
}

/// The `kube-apiserver` entity: the endpoints of `default/kubernetes`.
pub fn apiserver(state: &ClusterState) -> Vec<Ipv4Addr> {
    state
        .services
        .iter()
        .filter(|s| s.name.namespace == "default" && s.name.name == "kubernetes")
        .flat_map(|s| s.backends.iter())
        .filter_map(|b| match b.ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// Everything a compile needs, owned (the context borrows it).
pub struct Inputs {
    pub endpoints: Vec<PolicyEndpoint>,
    pub node_ips: BTreeMap<String, Vec<Ipv4Addr>>,
    pub apiserver: Vec<Ipv4Addr>,
}

impl Inputs {
    pub fn new(state: &ClusterState, ctx: &NodeContext) -> Self {
        Inputs { endpoints: endpoints(state), node_ips: node_ips(state, ctx), apiserver: apiserver(state) }
    }

    /// The compile context, with the identities of these endpoints ([`Inputs::identities`]).
    pub fn context<'a>(
        &'a self,
        state: &'a ClusterState,
        ctx: &'a NodeContext,
        enforcement: Enforcement,
        ids: &Identities,
    ) -> PolicyContext<'a> {
        PolicyContext::with_identities(
            PolicyInput {
                endpoints: &self.endpoints,
                policies: &state.policies,
                enforcement,
                node: &ctx.name,
                node_ips: &self.node_ips,
                cluster_cidr: ctx.cluster_cidr,
                apiserver: &self.apiserver,
            },
            ids,
        )
    }

    /// Identities for these endpoints, carried on from `previous` where that is exact.
    pub fn identities(&self, previous: Option<Identities>) -> Identities {
        Identities::update(previous, &self.endpoints)
    }
}

/// The compiled view of this node's endpoints, kept between passes.
#[derive(Default)]
pub struct PolicyCache {
    key: Option<u64>,
    pub view: PolicyView,
    /// What the view was compiled for (the CLI's questions are answered against it).
    pub ctx: NodeContext,
    pub identities: usize,
    /// The numbering the view was compiled with, carried into the next compile.
    pub numbered: Option<Identities>,
}

/// What the netfilter policy rules log while flows are recorded, and where L7 rules redirect.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logging {
    /// The NFLOG group drops go to (`None`: not recorded).
    pub drops: Option<u16>,
    /// Allowed verdicts too (`flows.allowed_verdicts`).
    pub allows: bool,
    /// The running L7 proxy's port (where `Proxy` rules redirect; `None`: they allow nothing).
    pub l7_proxy: Option<u16>,
}

impl PolicyCache {
    pub fn update(
        &mut self,
        generation: u64,
        enforcement: Enforcement,
        state: &ClusterState,
        local: &[LocalEndpoint],
        ctx: &NodeContext,
        log: Logging,
    ) -> &PolicyView {
        let log_drops = log.drops;
        let log_allows = log.allows && log_drops.is_some();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (generation, enforcement, &ctx.name, &ctx.ips, ctx.cluster_cidr, log_drops, log_allows, log.l7_proxy)
            .hash(&mut h);
        for e in local {
            (&e.ip, &e.host_interface).hash(&mut h);
        }
        let key = h.finish();
        if self.key == Some(key) {
            return &self.view;
        }
        let t = std::time::Instant::now();
        let inputs = Inputs::new(state, ctx);
        let t_inputs = t.elapsed();
        let ids = inputs.identities(self.numbered.take());
        let t_ids = t.elapsed();
        let cx = inputs.context(state, ctx, enforcement, &ids);
        let t_cx = t.elapsed();
        let mut eps = Vec::new();
        for l in local {
            let compiled = match cx.endpoint(l.ip) {
                Some(e) => cx.compile(e),
                // A pod the source does not know (yet): no labels, no identity; only
                // `policy_enforcement: always` isolates it.
                None => cx.compile(&PolicyEndpoint {
                    namespace: l.pod_namespace.clone().unwrap_or_default(),
                    name: l.pod_name.clone().unwrap_or_default(),
                    ip: l.ip,
                    node: Some(ctx.name.clone()),
                    labels: IdentityLabels {
                        namespace: String::new(),
                        pod: BTreeMap::new(),
                        namespace_labels: BTreeMap::new(),
                    },
                    ports: Vec::new(),
                }),
            };
            let pod = match (&l.pod_namespace, &l.pod_name) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                _ => l.container_id.chars().take(12).collect(),
            };
            eps.push(EndpointRules { ip: l.ip, interface: l.host_interface.clone(), pod, policy: compiled });
        }
        self.view = PolicyView {
            generation: key,
            enforcement,
            endpoints: eps,
            ipcache: cx.ipcache.clone(),
            log_drops,
            log_allows,
            l7_proxy: log.l7_proxy,
            l7_frontends: Vec::new(),
        };
        if log.l7_proxy.is_some() {
            self.view.l7_frontends =
                sluice_core::policy::l7_frontends::frontends(&self.view, &ctx.name, &ctx.ips, &state.services);
        }
        self.ctx = ctx.clone();
        self.identities = cx.identities.labels.len();
        drop(cx);
        self.numbered = Some(ids);
        self.key = Some(key);
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        tracing::debug!(
            ms = ms(t.elapsed()),
            inputs_ms = ms(t_inputs),
            identities_ms = ms(t_ids - t_inputs),
            context_ms = ms(t_cx - t_ids),
            endpoints = local.len(),
            "policy compiled"
        );
        &self.view
    }
}
