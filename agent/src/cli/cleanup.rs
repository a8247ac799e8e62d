use anyhow::Context;
use serde::Serialize;
use sluice_config::Config;
use sluice_iptables::{Iptables, RouteManager, Variant};

use crate::Output;

#[derive(Serialize)]
struct Removed {
    /// Kernel objects removed per backend (iptables: tables touched; eBPF: pinned maps and links).
    backends: std::collections::BTreeMap<String, usize>,
    routes: usize,
    /// L7 proxy processes told to drain and exit.
    #[serde(default)]
    l7_proxies: usize,
}

/// Every backend's `cleanup`, through the registry, then node plumbing (routes). BPF first:
/// unpinning the links detaches the programs from the pod veths.
pub fn run(config: Option<&std::path::Path>, out: Output) -> anyhow::Result<()> {
    // With the agent's config: its pin directory. Without: one config per pin directory found
    // (every node's agent on a lab machine), or the defaults when there is none.
    let configs: Vec<Config> = match config {
        Some(p) => vec![sluice_config::load(Some(p), None).context("reading the agent config")?],
        None => {
            let dirs: Vec<std::path::PathBuf> =
                std::fs::read_dir("/sys/fs/bpf/sluice").into_iter().flatten().flatten().map(|e| e.path()).collect();
            let base = Config::default();
            if dirs.is_empty() {
                vec![base]
            } else {
                dirs.into_iter().map(|d| Config { bpf_pin_dir: Some(d), ..base.clone() }).collect()
            }
        }
    };
    let mut removed = Removed { backends: Default::default(), routes: 0, l7_proxies: 0 };
    // The L7 proxies first: they outlive the agent, and their redirects go below.
    for cfg in &configs {
        let path = cfg.l7_control_socket();
        let stopped = super::block_on(sluice_proxy::control::stop(&path))?
            .with_context(|| format!("stopping the L7 proxy on {}", path.display()))?;
        removed.l7_proxies += usize::from(stopped);
    }
    for (i, cfg) in configs.iter().enumerate() {
        // The iptables cleanup covers both variants node-wide; it runs with the first config.
        for mut b in super::super::daemon::registry::build(cfg, Iptables { variant: Variant::Nft }) {
            if i > 0 && b.id() != sluice_core::BackendId::EBPF {
                continue;
            }
            let r = b.cleanup();
            if let Some(e) = r.errors.first() {
                anyhow::bail!("{} cleanup failed: {e}", b.id());
            }
            *removed.backends.entry(b.id().as_str().to_string()).or_default() += r.removed;
        }
    }
    removed.routes = super::block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        let n = RouteManager::new(handle.clone()).remove_all().await?;
        // The L7 proxy's policy routing (fwmark rule and its local table).
        anyhow::Ok(n + sluice_iptables::l7_route::remove(&handle).await?)
    })??;
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(&removed)?),
        Output::Table => {
            for (id, n) in &removed.backends {
                let what = if id == "iptables" {
                    "table(s) with sluice chains and hooks"
                } else {
                    "pinned map(s) and link(s)"
                };
                println!("{id:<9} removed {n} {what}");
            }
            println!("{:<9} removed {} sluice route(s)", "routes", removed.routes);
            println!("{:<9} stopped {} L7 proxy process(es) (each drains first)", "l7-proxy", removed.l7_proxies);
        }
    }
    Ok(())
}
