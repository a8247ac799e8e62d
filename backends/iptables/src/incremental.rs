//! Rendering that reuses each unchanged Service's fragment from the last render. At 10k
//! Services, formatting every rule again costs ~80 ms per endpoint change, more than a tenth
//! of a whole legacy sync; a Service whose fingerprint (`Service::fingerprint`, shared with the
//! eBPF backend) equals the one rendered last time is not formatted again. The output is
//! identical to [`render`](crate::services::render) (tested).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::ServiceName;

use crate::ruleset::Ruleset;
use crate::services::{Fragment, FragmentCtx, NodeInput, assemble, service_fragment};

#[derive(Debug, Default)]
pub struct Renderer {
    ctx: Option<FragmentCtx>,
    /// Per Service: the fingerprint of the Service as last rendered (not a copy: at 10k Services
    /// a copy of each would cost the agent ~15 MB), and what it rendered to.
    cache: HashMap<ServiceName, (u64, Arc<Fragment>)>,
}

/// What the last [`Renderer::render`] did (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderStats {
    pub reused: usize,
    pub rendered: usize,
}

impl Renderer {
    pub fn render(&mut self, input: &NodeInput<'_>) -> (Ruleset, RenderStats) {
        let ctx = FragmentCtx::of(input);
        if self.ctx.as_ref() != Some(&ctx) {
            // Node name, cluster CIDR or owned features changed: every fragment may differ.
            self.cache.clear();
            self.ctx = Some(ctx.clone());
        }
        let mut stats = RenderStats::default();
        let mut next = HashMap::with_capacity(input.services.len());
        let mut fragments = Vec::with_capacity(input.services.len());
        for svc in input.services {
            let fp = svc.fingerprint();
            let frag = match self.cache.remove(&svc.name) {
                Some((old, frag)) if old == fp => {
                    stats.reused += 1;
                    frag
                }
                _ => {
                    stats.rendered += 1;
                    Arc::new(service_fragment(svc, &ctx))
                }
            };
            next.insert(svc.name.clone(), (fp, frag.clone()));
            fragments.push(frag);
        }
        // Services gone since the last render leave the cache with this swap.
        self.cache = next;
        (assemble(input, fragments.iter().map(|f| f.as_ref())), stats)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr};

    use sluice_core::{Backend, BackendState, Feature, Frontend, FrontendKind, Protocol, Service};

    use super::*;
    use crate::services::render;

    fn svc(i: u32, eps: u32) -> Service {
        let fe = Frontend {
            kind: FrontendKind::ClusterIp,
            ip: Some(IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i))),
            port: 80,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            target_port: 8080,
        };
        let np = Frontend { kind: FrontendKind::NodePort, ip: None, port: 30000 + i as u16, ..fe.clone() };
        Service {
            name: ServiceName { namespace: "default".into(), name: format!("svc-{i}") },
            frontends: vec![fe, np],
            backends: (0..eps)
                .map(|j| Backend {
                    ip: IpAddr::V4(Ipv4Addr::new(10, 244, (i % 2) as u8, (10 * i + j) as u8)),
                    port: 8080,
                    port_name: "http".into(),
                    protocol: Protocol::Tcp,
                    state: BackendState::Active,
                    node: Some(if j % 2 == 0 { "node-1" } else { "node-2" }.into()),
                })
                .collect(),
            affinity_timeout_s: i.is_multiple_of(3).then_some(60),
            external_local: i.is_multiple_of(4),
            internal_local: false,
            source_ranges: vec![],
            health_check_node_port: None,
        }
    }

    fn node_input<'a>(s: &'a [Service], owned: &'a BTreeSet<Feature>, node: &'a str) -> NodeInput<'a> {
        NodeInput {
            node_name: node,
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            services: s,
            host_ports: &[],
            owned,
        }
    }

    #[test]
    fn incremental_output_equals_a_fresh_render_through_changes() {
        let owned: BTreeSet<Feature> = crate::SPEC.implemented();
        let mut fewer = owned.clone();
        fewer.remove(&Feature::NodePort);
        let mut r = Renderer::default();
        let mut svcs: Vec<Service> = (0..12).map(|i| svc(i, 4)).collect();
        let step = |r: &mut Renderer, s: &[Service], owned: &BTreeSet<Feature>, node: &str| {
            let (got, stats) = r.render(&node_input(s, owned, node));
            assert_eq!(got, render(&node_input(s, owned, node)), "incremental render differs from a fresh one");
            stats
        };
        assert_eq!(step(&mut r, &svcs, &owned, "node-1"), RenderStats { reused: 0, rendered: 12 });
        assert_eq!(step(&mut r, &svcs, &owned, "node-1"), RenderStats { reused: 12, rendered: 0 });
        // One endpoint gone: only that Service is formatted again.
        svcs[3].backends.pop();
        assert_eq!(step(&mut r, &svcs, &owned, "node-1"), RenderStats { reused: 11, rendered: 1 });
        // A Service removed and one added.
        svcs.remove(5);
        svcs.push(svc(40, 2));
        assert_eq!(step(&mut r, &svcs, &owned, "node-1"), RenderStats { reused: 11, rendered: 1 });
        // Node context changes render everything again.
        assert_eq!(step(&mut r, &svcs, &fewer, "node-1"), RenderStats { reused: 0, rendered: 12 });
        assert_eq!(step(&mut r, &svcs, &fewer, "node-2"), RenderStats { reused: 0, rendered: 12 });
    }
}
