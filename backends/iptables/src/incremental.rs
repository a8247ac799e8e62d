//! Rendering that reuses each unchanged Service's fragment from the last render. At 10k
//! Services, formatting every rule again costs ~80 ms per endpoint change, more than a tenth
//! of a whole legacy sync; a Service whose fingerprint (`Service::fingerprint`, shared with the
//! eBPF backend) equals the one rendered last time is not formatted again. The output is
//! identical to [`render`](crate::services::render) (tested).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sluice_core::ServiceName;

use crate::ruleset::Ruleset;
use crate::services::{Fragment, FragmentCtx, NodeInput, assemble, service_fragment};

#[derive(Debug, Default)]
pub struct Renderer {
    ctx: Option<FragmentCtx>,
    /// Per Service: the fingerprint of the Service as last committed (not a copy: at 10k
    /// Services a copy of each would cost the agent ~15 MB), and what it rendered to. Only a
    /// render the kernel took is committed, so these are the rules each Service has in place.
    cache: HashMap<ServiceName, (u64, Arc<Fragment>)>,
}

/// What the last render did (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderStats {
    pub reused: usize,
    pub rendered: usize,
}

/// A render not yet known to be in the kernel: [`Renderer::commit`] it once the sync succeeded.
pub struct Rendered {
    pub ruleset: Ruleset,
    pub stats: RenderStats,
    ctx: FragmentCtx,
    next: HashMap<ServiceName, (u64, Arc<Fragment>)>,
}

impl Renderer {
    /// Render and commit at once (callers that do not sync, such as benchmarks).
    pub fn render(&mut self, input: &NodeInput<'_>) -> (Ruleset, RenderStats) {
        let r = self.render_holding(input, &BTreeSet::new());
        let out = (r.ruleset.clone(), r.stats);
        self.commit(r);
        out
    }

    /// Render every Service of `input`, except that each `held` Service keeps the rules it has
    /// in the kernel (its last committed fragment, or none if it never had one): the way one
    /// Service the kernel refuses is isolated from all others.
    pub fn render_holding(&mut self, input: &NodeInput<'_>, held: &BTreeSet<ServiceName>) -> Rendered {
        let ctx = FragmentCtx::of(input);
        // Node name, cluster CIDR or owned features changed: every fragment may differ.
        let reuse = self.ctx.as_ref() == Some(&ctx);
        let mut stats = RenderStats::default();
        let mut next = HashMap::with_capacity(input.services.len());
        let mut fragments = Vec::with_capacity(input.services.len());
        for svc in input.services {
            if held.contains(&svc.name) {
                continue;
            }
            let fp = svc.fingerprint();
            let frag = match self.cache.get(&svc.name) {
                Some((old, frag)) if reuse && *old == fp => {
                    stats.reused += 1;
                    frag.clone()
                }
                _ => {
                    stats.rendered += 1;
                    Arc::new(service_fragment(svc, &ctx))
                }
            };
            next.insert(svc.name.clone(), (fp, frag.clone()));
            fragments.push(frag);
        }
        // Held Services as they are in the kernel, present in the input or not.
        for name in held {
            if let Some(entry) = self.cache.get(name) {
                fragments.push(entry.1.clone());
                next.insert(name.clone(), entry.clone());
            }
        }
        let ruleset = assemble(input, fragments.iter().map(|f| f.as_ref()));
        Rendered { ruleset, stats, ctx, next }
    }

    /// The kernel took `r`: it is what each Service has in place now. (Services gone since the
    /// last commit leave the cache here.)
    pub fn commit(&mut self, r: Rendered) {
        self.cache = r.next;
        self.ctx = Some(r.ctx);
    }

    /// The Service whose own chain a restore input line names (as the chain written, or as the
    /// target of a jump), in `pending` or in what is committed: shared chains name none.
    pub fn owner_of_line(&self, pending: &Rendered, line: &str) -> Option<ServiceName> {
        let chains: Vec<&str> =
            line.split_whitespace().map(|t| t.trim_start_matches(':')).filter(|t| t.starts_with("SLUICE-")).collect();
        pending
            .next
            .iter()
            .chain(self.cache.iter())
            .find_map(|(name, (_, frag))| chains.iter().any(|c| frag.owns_chain(c)).then(|| name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr};

    use sluice_core::{Backend, BackendState, Feature, Frontend, FrontendKind, Protocol, Service};

    use super::*;
    use crate::services::{port_chains, render};

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
            log_group: None,
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

    /// A held Service keeps what was committed for it (changed, removed or never rendered),
    /// everything else renders as usual; the line naming its chain names it.
    #[test]
    fn a_held_service_keeps_its_committed_rules_and_is_found_by_its_chain() {
        let owned: BTreeSet<Feature> = crate::SPEC.implemented();
        let mut r = Renderer::default();
        let before: Vec<Service> = (0..4).map(|i| svc(i, 2)).collect();
        r.render(&node_input(&before, &owned, "node-1"));
        // svc-1 changes, svc-2 goes, svc-9 is new; svc-1, svc-2 and svc-9 are held.
        let mut after = before.clone();
        after[1].backends.truncate(1);
        after.remove(2);
        after.push(svc(9, 2));
        let held: BTreeSet<ServiceName> = [1, 2, 9].iter().map(|i| svc(*i, 0).name).collect();
        let pending = r.render_holding(&node_input(&after, &owned, "node-1"), &held);
        // Expected: svc-0, svc-3 as now; svc-1 and svc-2 as before; no svc-9.
        let expect: Vec<Service> = vec![before[0].clone(), before[1].clone(), before[2].clone(), before[3].clone()];
        // Rules in shared chains may come in another order (held fragments come last).
        let canon = |r: &Ruleset| {
            let mut out = Vec::new();
            for (t, chains) in &r.chains {
                for (c, rules) in chains {
                    let mut rules: Vec<String> = rules.iter().cloned().collect();
                    rules.sort();
                    out.push((t.to_string(), c.clone(), rules));
                }
            }
            out
        };
        let (got, want) = (canon(&pending.ruleset), canon(&render(&node_input(&expect, &owned, "node-1"))));
        assert_eq!(got, want);
        let chain = port_chains(&before[2], "http", Protocol::Tcp).svc;
        assert_eq!(r.owner_of_line(&pending, &format!("-X {chain}")), Some(before[2].name.clone()));
        assert_eq!(r.owner_of_line(&pending, &format!(":{chain} - [0:0]")), Some(before[2].name.clone()));
        assert_eq!(r.owner_of_line(&pending, "-A SLUICE-SERVICES -j SLUICE-NODEPORTS"), None);
        // Committed, the held ones are what the kernel has; nothing held renders all.
        r.commit(pending);
        let (all, _) = r.render(&node_input(&after, &owned, "node-1"));
        assert_eq!(all, render(&node_input(&after, &owned, "node-1")));
    }
}
