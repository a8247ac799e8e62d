//! `sluice agent`: the node daemon. Wires the source, the core model and the backends:
//! read source -> translate -> reconcile routes, masquerade, CNI conflist -> publish status.
//!
//! Restart safety: nothing is flushed at start. Routes and rules are read back and corrected;
//! stale ones are removed only once the source has synced.

mod cni_conf;
mod devices;
pub mod ebpf;
pub mod features;
mod health;
pub mod rules;
mod server;
mod source;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use sluice_config::{Config, IptablesVariant};
use sluice_core::{LocalEndpoint, desired_pod_routes};
use sluice_iptables::services::{Masquerade, POSTROUTING};
use sluice_iptables::{Iptables, RouteManager, Variant};
use tokio::sync::RwLock;

use crate::source::translate::{Options, translate_with};
use crate::status::{AgentStatus, SourceStatus};

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub async fn run(cfg: Config, source: features::ConfigSource) -> anyhow::Result<()> {
    // Probe before anything else: strict refuses to start on a node that cannot serve it.
    let (probed, took) = tokio::task::spawn_blocking(sluice_probes::probe).await?;
    tracing::info!(kernel = %probed.kernel, ms = took.as_millis() as u64, "kernel probed");
    let mut planner =
        features::Planner::new(source, probed, cfg.clone()).context("cannot plan features for this node")?;
    tracing::info!("{}", planner.plan.status_line());
    for w in &planner.plan.warnings {
        tracing::warn!("{w}");
    }
    let status = Arc::new(RwLock::new(AgentStatus {
        node: cfg.node_name.clone(),
        cluster_cidr: cfg.cluster_cidr.to_string(),
        started_unix: now_unix(),
        kernel: planner.probed.kernel.clone(),
        probe_ms: took.as_millis() as u64,
        plan: Some(planner.plan.clone()),
        config: planner.status.clone(),
        ..Default::default()
    }));
    let listener = server::bind(&cfg.socket_path)?;
    let wake = Arc::new(tokio::sync::Notify::new());
    // Service lists are built when asked, from what the loop last programmed (at 10k Services
    // each list is tens of MB: keeping them ready would double the agent's memory).
    let (query_tx, mut queries) = tokio::sync::mpsc::channel::<server::Query>(16);
    tokio::spawn(server::serve(listener, status.clone(), wake.clone(), query_tx));
    tracing::info!(node = %cfg.node_name, socket = %cfg.socket_path.display(), "sluice agent started");

    // Pods route through the node: forwarding is a precondition of pod networking.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling net.ipv4.ip_forward")?;

    let (conn, handle, _) = rtnetlink::new_connection().context("opening netlink socket")?;
    tokio::spawn(conn);
    let routes = RouteManager::new(handle.clone());
    let ipt = match cfg.iptables.variant {
        IptablesVariant::Auto => tokio::task::spawn_blocking(Iptables::detect).await?,
        IptablesVariant::Nft => Iptables { variant: Variant::Nft },
        IptablesVariant::Legacy => Iptables { variant: Variant::Legacy },
    };
    let mut source = source::AgentSource::new(&cfg).await?;
    let mut synced = false;
    let mut rules = rules::RulesManager::new(ipt);
    // (source generation, object count, translated state) of the last change.
    let mut last: Option<(u64, usize, sluice_core::ClusterState)> = None;
    let mut health = health::HealthServers::default();
    let mut bpf = ebpf::EbpfManager::new(cfg.bpf_pin_dir());
    // (node IPs, devices, when looked up): devices are re-read when the IPs change or every 30 s.
    let mut node_devices: Option<(Vec<std::net::Ipv4Addr>, Vec<String>, std::time::Instant)> = None;
    let cgroup = cfg.cgroup_root();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.source.poll_interval_ms));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        let mut reload = false;
        tokio::select! {
            _ = tick.tick() => {}
            _ = sighup.recv() => reload = true,
            _ = wake.notified() => {}
            Some(q) = queries.recv() => {
                // Between two passes: what the lists show is what the last pass programmed.
                match q {
                    server::Query::Services(tx) => {
                        let services = last.as_ref().map(|(_, _, st)| st.services.as_slice()).unwrap_or_default();
                        let _ = tx.send(crate::services::entries(services, &planner.plan));
                    }
                    server::Query::BpfLb(tx) => {
                        let _ = tx.send(bpf.lb_list());
                    }
                }
                continue;
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        if reload || planner.file_changed() {
            apply_reload(&mut planner);
            let mut st = status.write().await;
            st.plan = Some(planner.plan.clone());
            st.config = planner.status.clone();
        }
        let read = source.read(last.as_ref().map(|(g, _, _)| *g));
        let mut errors = Vec::new();
        let mut src_status = SourceStatus {
            kind: source.kind().into(),
            location: source.location(),
            synced: synced || read.complete,
            objects: read.objects.as_ref().map(|o| o.count()).unwrap_or(0),
            last_sync_unix: now_unix(),
            errors: read.errors,
            stale_secs: read.stale_secs,
        };
        synced = src_status.synced;
        // Translate only when the source changed; otherwise keep the last state.
        if !read.unchanged {
            let Some(objects) = read.objects else {
                status.write().await.source = src_status;
                continue;
            };
            let (lo, hi) = cfg.node_port_range()?;
            let count = objects.count();
            last = Some((read.generation, count, translate_with(&objects, Options { node_port_range: (lo, hi) })));
        }
        let Some((generation, count, state)) = last.as_ref() else { continue };
        let generation = *generation;
        src_status.objects = *count;
        // A node label may select a per-node config (node_configs): re-plan when it changes.
        let label = state.node(&cfg.node_name).and_then(|n| n.labels.get(sluice_config::NODE_CONFIG_LABEL).cloned());
        if label != planner.node_config {
            apply_node_config(&mut planner, label);
            let mut st = status.write().await;
            st.plan = Some(planner.plan.clone());
            st.config = planner.status.clone();
        }
        let me = state.node(&cfg.node_name).cloned();
        let pod_cidr = cfg.pod_cidr.or(me.as_ref().and_then(|n| n.pod_cidr));

        let desired = desired_pod_routes(&cfg.node_name, state.nodes.values());
        let observed = match routes.reconcile(&desired, synced).await {
            Ok((diff, now)) => {
                for r in &diff.add {
                    tracing::info!(dst = %r.dst, via = %r.via, "route added");
                }
                for r in &diff.remove {
                    tracing::info!(dst = %r.dst, via = %r.via, "stale route removed");
                }
                now
            }
            Err(e) => {
                errors.push(e.to_string());
                BTreeSet::new()
            }
        };

        let mut conflist = None;
        let mut masquerade = "off (masquerade: false)".to_string();
        if let Some(cidr) = pod_cidr {
            if !cfg.cni.conflist_path.as_os_str().is_empty() {
                match cni_conf::write_if_changed(&cfg, cidr) {
                    Ok(()) => conflist = Some(cfg.cni.conflist_path.display().to_string()),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if cfg.masquerade {
                masquerade = format!(
                    "{cidr} -> outside {} (iptables {}, chain {POSTROUTING})",
                    cfg.cluster_cidr,
                    ipt.variant.as_str()
                );
            }
        } else {
            masquerade = "waiting for pod CIDR".into();
        }
        let masq =
            pod_cidr.filter(|_| cfg.masquerade).map(|pod_cidr| Masquerade { pod_cidr, cluster_cidr: cfg.cluster_cidr });
        // Make-before-break towards eBPF: a feature moving from iptables to eBPF keeps its
        // iptables rules until the eBPF maps hold it (the other way, iptables syncs first anyway).
        let ebpf_owned: BTreeSet<sluice_core::Feature> =
            planner.plan.entries.iter().filter(|e| e.owner == sluice_core::Owner::Ebpf).map(|e| e.feature).collect();
        let ipt_owned = |bpf: &ebpf::EbpfManager, rules: &rules::RulesManager| {
            let pending: BTreeSet<_> = ebpf_owned.difference(&bpf.programmed()).copied().collect();
            let mut o = rules::owned(&planner.plan);
            o.extend(pending.intersection(&rules.programmed()).copied());
            o
        };
        let first = ipt_owned(&bpf, &rules);
        errors.extend(
            rules.reconcile(&cfg.node_name, cfg.cluster_cidr, masq.clone(), generation, state, first.clone()).await,
        );
        // The health servers are the agent's own, whichever dataplane serves the NodePort.
        let hc_owned = planner.plan.entries.iter().any(|e| {
            e.feature == sluice_core::Feature::HealthCheckNodePort
                && matches!(e.owner, sluice_core::Owner::Iptables | sluice_core::Owner::Ebpf)
        });
        let want = if hc_owned { health::desired(&state.services, &cfg.node_name) } else { Default::default() };
        errors.extend(health.reconcile(want).await);
        let local_endpoints = match pod_cidr {
            Some(cidr) => local_endpoints(&cfg, cidr).unwrap_or_else(|e| {
                errors.push(e.to_string());
                Vec::new()
            }),
            None => Vec::new(),
        };
        // eBPF after iptables: when ClusterIP moves to eBPF, host access (iptables socket-lb)
        // is in place first; when it moves away, iptables has taken new flows already.
        let ips: Vec<std::net::Ipv4Addr> = me.as_ref().and_then(|n| n.internal_ip).into_iter().collect();
        if node_devices.as_ref().is_none_or(|(i, _, t)| *i != ips || t.elapsed() > Duration::from_secs(30)) {
            let devs = if !cfg.devices.is_empty() {
                cfg.devices.clone()
            } else {
                devices::holding(&handle, &ips).await.unwrap_or_else(|e| {
                    errors.push(format!("listing node devices: {e:#}"));
                    Vec::new()
                })
            };
            node_devices = Some((ips.clone(), devs, std::time::Instant::now()));
        }
        let node = ebpf::NodeFacts {
            name: cfg.node_name.clone(),
            ips,
            devices: node_devices.as_ref().map(|(_, d, _)| d.clone()).unwrap_or_default(),
            cgroup: cgroup.clone(),
            maglev_m: (cfg.lb_algorithm == sluice_core::LbAlgorithm::Maglev).then_some(cfg.lb_maglev_table_size),
            map_sizes: cfg.bpf_map_sizes,
        };
        errors.extend(bpf.reconcile(generation, state, &planner.plan, &local_endpoints, &node));
        let second = ipt_owned(&bpf, &rules);
        if second != first {
            errors.extend(rules.reconcile(&cfg.node_name, cfg.cluster_cidr, masq, generation, state, second).await);
        }
        let mut st = status.write().await;
        st.ebpf = bpf.summary();
        st.source = src_status;
        st.pod_cidr = pod_cidr.map(|c| c.to_string());
        st.underlay_ip = me.and_then(|n| n.internal_ip).map(|i| i.to_string());
        st.conflist = conflist;
        st.routes = observed.into_iter().collect();
        st.masquerade = masquerade;
        st.iptables_variant = ipt.variant.as_str().into();
        st.local_endpoints = local_endpoints;
        st.services = state.services.len();
        // Logged once, when an object is first refused; status shows it for as long as it lasts.
        for r in state.rejected.iter().filter(|r| !st.rejected.contains(r)) {
            tracing::warn!(object = %r.object, reason = %r.reason, "object rejected; everything else keeps working");
        }
        st.rejected = state.rejected.clone();
        for e in &errors {
            if !st.errors.contains(e) {
                tracing::warn!(error = %e, "reconcile problem");
            }
        }
        st.errors = errors;
    }
    let _ = std::fs::remove_file(&cfg.socket_path);
    tracing::info!("sluice agent stopped; kernel state left in place for the next start");
    Ok(())
}

/// Re-read the config and record the transition, make-before-break. iptables programs and
/// removes in the same atomic restore batch per table (run right after, in this loop turn);
/// no eBPF Service programming is built yet, which the step records say.
fn apply_node_config(planner: &mut features::Planner, label: Option<String>) {
    tracing::info!(label = ?label, "node config label changed");
    let res = planner.set_node_config(label);
    record(planner, res);
}

fn apply_reload(planner: &mut features::Planner) {
    let res = planner.reload();
    record(planner, res);
}

fn record(planner: &mut features::Planner, res: Result<Vec<sluice_core::Step>, String>) {
    match res {
        Ok(steps) => {
            tracing::info!(generation = planner.status.generation, "config reloaded: {}", planner.plan.status_line());
            planner.status.last_transition = steps
                .into_iter()
                .map(|step| {
                    tracing::info!(?step, "feature transition step");
                    let result = match &step {
                        sluice_core::Step::Program { owner: sluice_core::Owner::Iptables, .. }
                        | sluice_core::Step::Remove { owner: sluice_core::Owner::Iptables, .. } => {
                            "iptables: in the next sync's restore batch (atomic per table, new rules and removals together)"
                        }
                        _ => {
                            "eBPF: map entries in the next sync; iptables keeps a feature moving to eBPF until the eBPF maps hold it"
                        }
                    };
                    features::StepRecord { step, result: result.into() }
                })
                .collect();
        }
        Err(e) => tracing::error!(error = %e, "config reload rejected; the running config and plan stay"),
    }
}

/// This node's pod interfaces, from the CNI plugin's IPAM store (the source of truth for what
/// is wired on this node).
fn local_endpoints(cfg: &Config, cidr: ipnet::Ipv4Net) -> Result<Vec<LocalEndpoint>, sluice_cni::CniError> {
    let gw = sluice_cni::spec::first_host(cidr);
    let store = sluice_cni::ipam::Store::new(&cfg.cni.data_dir, &cfg.cni.network_name, cidr, gw);
    if !store.dir().exists() {
        return Ok(Vec::new());
    }
    let list = store.lock()?.list()?;
    Ok(list
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
        .collect())
}
