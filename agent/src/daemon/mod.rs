//! `sluice agent`: the node daemon. Wiring only: the source side (read, translate, prune gate),
//! node plumbing, the core engine driving the registered backends, the health servers and the
//! status socket. Every decision lives in core (plan, engine, view) or in a manager.
//!
//! Restart safety: nothing is flushed at start. Backends restore what they find in the kernel
//! (it counts as served until the plan's owner serves it); stale state is pruned only once the
//! source has synced and its read is complete.

mod cni_conf;
mod devices;
pub mod features;
mod flows;
mod flows_sources;
mod health;
mod l7;
mod metrics;
mod node;
mod policy;
mod policy_query;
mod publish;
pub mod registry;
mod server;
mod source;
mod state;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sluice_config::{Config, IptablesVariant};
use sluice_core::{BackendId, Desired, Engine, Feature, ServiceView};
use sluice_iptables::{Iptables, Variant};
use tokio::sync::RwLock;

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub async fn run(cfg: Config, config_source: features::ConfigSource) -> anyhow::Result<()> {
    // Probe before anything else: strict refuses to start on a node that cannot serve it.
    let (probed, took) = tokio::task::spawn_blocking(sluice_probes::probe).await?;
    tracing::info!(kernel = %probed.kernel, ms = took.as_millis() as u64, "kernel probed");
    let mut planner =
        features::Planner::new(config_source, probed, cfg.clone()).context("cannot plan features for this node")?;
    tracing::info!("{}", planner.plan.status_line());
    for w in &planner.plan.warnings {
        tracing::warn!("{w}");
    }
    let status = Arc::new(RwLock::new(publish::initial(&cfg, &planner, took)));
    let listener = server::bind(&cfg.socket_path)?;
    let wake = Arc::new(tokio::sync::Notify::new());
    // Service lists are built when asked, from what the loop last programmed (at 10k Services
    // each list is tens of MB: keeping them ready would double the agent's memory).
    let (query_tx, mut queries) = tokio::sync::mpsc::channel::<server::Query>(16);
    tokio::spawn(server::serve(listener, status.clone(), wake.clone(), query_tx));
    tracing::info!(node = %cfg.node_name, socket = %cfg.socket_path.display(), "sluice agent started");

    let ipt = match cfg.iptables.variant {
        IptablesVariant::Auto => tokio::task::spawn_blocking(Iptables::detect).await?,
        IptablesVariant::Nft => Iptables { variant: Variant::Nft },
        IptablesVariant::Legacy => Iptables { variant: Variant::Legacy },
    };
    let mut node = node::NodeManager::start(ipt).await?;
    let mut engine = Engine::new(registry::build(&cfg, ipt));
    let mut restore_errors = tokio::task::block_in_place(|| engine.restore());
    for e in &restore_errors {
        tracing::warn!(error = %e, "restoring kernel state");
    }
    // The source wakes the loop when it has news; the tick below is the fallback poll.
    let source_changed = Arc::new(tokio::sync::Notify::new());
    let mut source = state::SourceSide::new(&cfg, source_changed.clone()).await?;
    let mut health = health::HealthServers::default();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.source.poll_interval_ms));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // Capabilities that appear after start (nf_conntrack or ip_set loaded by someone, a module
    // installed) are noticed: the node is probed again now and then, off the loop.
    let (probe_tx, mut probes) = tokio::sync::mpsc::channel(1);
    tokio::spawn(reprobe(probe_tx, Duration::from_secs(cfg.probes.reprobe_interval_s)));
    // Per-Service errors of the last pass: `sluice service list` shows them as failed.
    let mut failed: Vec<sluice_core::ObjectError> = Vec::new();
    let mut policy = policy::PolicyCache::default();
    let mut flows = flows::Flows::new(&cfg);
    let mut l7 = l7::L7Proxy::new(cfg.l7_control_socket(), flows.hub(), flows.directory(), wake.clone());
    let mut metrics = metrics::Metrics::new();
    let mut last_generation = None;
    loop {
        let mut reload = false;
        tokio::select! {
            _ = tick.tick() => {}
            _ = sighup.recv() => reload = true,
            Some(caps) = probes.recv() => {
                if let Some(res) = planner.reprobe(caps) {
                    planner.apply(res);
                }
            }
            _ = wake.notified() => {}
            _ = source_changed.notified() => {}
            Some(q) = queries.recv() => {
                // A migration pin re-plans now; the pass below starts carrying it out.
                let server::Query::Migration(mode, set_by, tx) = q else {
                    answer(q, &source, &planner, &engine, &failed, &policy);
                    continue;
                };
                let pin = mode.map(|m| features::MigrationOverride { kube_proxy_replacement: m, set_by, since_unix: now_unix() });
                let res = planner.set_migration(pin);
                let _ = tx.send(res.as_ref().map(|_| ()).map_err(Clone::clone));
                planner.apply(res);
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        let t_pass = std::time::Instant::now();
        if reload || planner.file_changed() {
            let res = planner.reload();
            planner.apply(res);
        }
        let (src_status, sync) = source.read();
        let t_read = t_pass.elapsed();
        let Some(cur) = source.current() else {
            status.write().await.source = src_status;
            continue;
        };
        // A node label may select a per-node config (node_configs): re-plan when it changes.
        let label =
            cur.state.node(&cfg.node_name).and_then(|n| n.labels.get(sluice_config::NODE_CONFIG_LABEL).cloned());
        if label != planner.node_config {
            tracing::info!(label = ?label, "node config label changed");
            let res = planner.set_node_config(label);
            planner.apply(res);
        }
        let mut plumbing = node.reconcile(&cfg, &cur.state, sync.synced).await;
        plumbing.ctx.tc_attach = planner.plan.tc_attach;
        plumbing.ctx.trace_to_stack = planner.config.flows.trace_to_stack;
        let view = ServiceView::new(&cfg.node_name, &cur.state.services, &cur.state.host_ports);
        let logging = |l7_proxy| policy::Logging {
            drops: flows.log_drops(),
            allows: planner.config.flows.allowed_verdicts,
            l7_proxy,
        };
        let (generation, enforcement) = (cur.generation, planner.config.policy_enforcement);
        let policy_view = loop {
            let v = policy.update(
                generation,
                enforcement,
                &cur.state,
                &plumbing.local_endpoints,
                &plumbing.ctx,
                logging(l7.port()),
            );
            // true: the proxy started now (the first proxy rule, or the first pass after a
            // restart); the pass runs again so that it already redirects to it, and an L7 port
            // is closed no longer than needed. It starts once, so this runs at most twice.
            if !l7.after_pass(v, &planner.config.l7).await {
                break v;
            }
        };
        let t_policy = t_pass.elapsed();
        // What the new rules' drops stand for, and who is who (the Services' frontends), before
        // the rules reach the kernel: a flow read between the write and a later refresh would
        // otherwise find no attribution, or no Service.
        flows.refresh(cur.generation, &cfg.node_name, &cur.state, &policy_view.ipcache);
        flows.refresh_policy(policy_view);
        if planner.plan.owner(Feature::Policy) == sluice_core::Owner::EBPF
            || engine.serving(sluice_core::BackendId::EBPF).contains(&Feature::Policy)
        {
            flows.refresh_rule_tags(policy_view);
        }
        let t_flows = t_pass.elapsed();
        let desired = Desired {
            generation: cur.generation,
            view: &view,
            local_endpoints: &plumbing.local_endpoints,
            node: &plumbing.ctx,
            policy: policy_view,
            l7_listener: l7.listener(),
        };
        let pass = tokio::task::block_in_place(|| engine.reconcile(&planner.plan, &desired, sync));
        // Where a change's time goes (read, translate and policy, kernel), for the
        // change-to-enforcement figures: `SLUICE_LOG=sluice::daemon=debug`.
        if last_generation != Some(cur.generation) {
            last_generation = Some(cur.generation);
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            tracing::debug!(
                generation = cur.generation,
                read_ms = ms(t_read),
                policy_ms = ms(t_policy - t_read),
                flows_ms = ms(t_flows - t_policy),
                kernel_ms = ms(t_pass.elapsed() - t_flows),
                "pass after a source change"
            );
        }
        metrics.record_pass(&pass);
        failed =
            pass.errors.iter().filter(|e| matches!(e.object, sluice_core::ObjectRef::Service(_))).cloned().collect();
        // The health servers are the agent's own, whichever backend serves the NodePort.
        let hc_owned = matches!(planner.plan.owner(Feature::HealthCheckNodePort), sluice_core::Owner::Backend(_));
        let health_errors = health.reconcile(if hc_owned { health::desired(&view) } else { Default::default() }).await;
        planner.track(&engine);
        // Flows while the plan's owner serves them; who is who refreshed when the source changed.
        let flows_by = match planner.plan.owner(Feature::Flows) {
            sluice_core::Owner::Backend(b) => engine.serving(b).contains(&Feature::Flows).then_some(b),
            _ => None,
        };
        flows.reconcile(flows_by).await;
        // Frontends netfilter translates (this node's iptables backend, or kube-proxy beside it).
        let netfilter_translates =
            [Feature::ClusterIp, Feature::NodePort, Feature::ExternalIps, Feature::LoadBalancer, Feature::HostPort]
                .iter()
                .any(|f| {
                    matches!(planner.plan.owner(*f), sluice_core::Owner::KubeProxy | sluice_core::Owner::IPTABLES)
                });
        flows.reconcile_netfilter_nat(netfilter_translates);
        let ebpf_policy = engine.serving(sluice_core::BackendId::EBPF).contains(&Feature::Policy);
        tokio::task::block_in_place(|| flows.reconcile_ebpf_drops(ebpf_policy, &cfg.bpf_pin_dir(), &policy.view));
        metrics.ensure_served(&cfg, &flows.hub()).await;
        let mut st = status.write().await;
        publish::status(
            &mut st,
            publish::Pass {
                planner: &planner,
                engine: &engine,
                pass,
                source: src_status,
                current: cur,
                plumbing,
                other_errors: std::mem::take(&mut restore_errors)
                    .iter()
                    .map(|e| e.to_string())
                    .chain(health_errors)
                    .collect(),
                iptables_variant: ipt.variant.as_str(),
            },
        );
        let owner = match planner.plan.owner(Feature::Policy) {
            sluice_core::Owner::Backend(b) => b.to_string(),
            other => other.to_string(),
        };
        st.policy = policy_query::summary(&policy, &cur.state, owner);
        st.flows = flows.status();
        st.errors.extend(metrics.errors.iter().cloned());
        st.errors.extend(l7.error.iter().map(|e| format!("L7 proxy: {e}")));
        st.l7_proxy = l7.status();
        st.metrics = metrics.status.clone();
        metrics.record_state(&engine, &st);
    }
    // The L7 proxy stays: it outlives the agent (its connections and last view go on).
    let _ = std::fs::remove_file(&cfg.socket_path);
    tracing::info!("sluice agent stopped; kernel state left in place for the next start");
    Ok(())
}

async fn reprobe(tx: tokio::sync::mpsc::Sender<sluice_core::Capabilities>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is now: the start-up probe just ran
    loop {
        tick.tick().await;
        let Ok((caps, _)) = tokio::task::spawn_blocking(sluice_probes::probe).await else { continue };
        if tx.send(caps).await.is_err() {
            return;
        }
    }
}

/// Between two passes: what the lists show is what the last pass programmed.
fn answer(
    q: server::Query,
    source: &state::SourceSide,
    planner: &features::Planner,
    engine: &Engine,
    failed: &[sluice_core::ObjectError],
    policy: &policy::PolicyCache,
) {
    match q {
        server::Query::Policy(req, tx) => {
            let state = source.current().map(|c| &c.state);
            let _ = tx.send(policy_query::answer(&req, policy, state, planner.config.policy_enforcement));
        }
        server::Query::Services(tx) => {
            let (services, rejected) = source
                .current()
                .map(|c| (c.state.services.as_slice(), c.state.rejected.as_slice()))
                .unwrap_or_default();
            let _ = tx.send(crate::services::entries(services, rejected, failed, &planner.plan));
        }
        server::Query::DesiredServices(tx) => {
            let (services, nodes) = source
                .current()
                .map(|c| (c.state.services.clone(), c.state.nodes.values().cloned().collect()))
                .unwrap_or_default();
            let _ = tx.send((planner.config.node_name.clone(), services, nodes));
        }
        server::Query::Migration(..) => {} // handled by the loop: it changes the plan
        server::Query::MarkNode(replaced, tx) => {
            let node = planner.config.node_name.clone();
            let Some(kube) = source.kube() else {
                let _ = tx.send((
                    false,
                    "the manifest source has no Node object to label; keep kube-proxy off this node by its unit (docs/design/migration.md)".into(),
                ));
                return;
            };
            // The API call runs beside the loop, which goes on reconciling.
            tokio::spawn(async move {
                let label = crate::source::kube::node_label::LABEL;
                let answer = match kube.label_node(&node, replaced).await {
                    Ok(()) if replaced => (true, format!("node {node} labelled {label}=replaced")),
                    Ok(()) => (true, format!("label {label} removed from node {node}")),
                    Err(e) => (
                        false,
                        format!(
                            "labelling node {node} ({label}) failed: {e}; the agent's role needs `patch` on nodes (deploy/sluice.yaml), or label it by hand"
                        ),
                    ),
                };
                let _ = tx.send(answer);
            });
        }
        server::Query::BpfLb(tx) => {
            let rows = engine.backends().find(|b| b.id() == BackendId::EBPF).map(|b| b.lb_rows());
            let _ = tx.send(rows.unwrap_or_default());
        }
    }
}
