use anyhow::Context;
use serde::Serialize;
use sluice_iptables::{Iptables, RouteManager, Variant};

use crate::Output;

#[derive(Serialize)]
struct Removed {
    iptables: Vec<String>,
    routes: usize,
    bpf_objects: usize,
}

pub fn run(config: Option<&std::path::Path>, out: Output) -> anyhow::Result<()> {
    let mut removed = Removed { iptables: Vec::new(), routes: 0, bpf_objects: 0 };
    // BPF first: unpinning the links detaches the programs from the pod veths.
    let pin_dirs: Vec<std::path::PathBuf> = match config.map(|p| sluice_config::load(Some(p), None)) {
        Some(Ok(cfg)) => vec![cfg.bpf_pin_dir()],
        Some(Err(e)) => return Err(e).context("reading the agent config for its BPF pin directory"),
        None => std::fs::read_dir("/sys/fs/bpf/sluice").into_iter().flatten().flatten().map(|e| e.path()).collect(),
    };
    for dir in pin_dirs {
        removed.bpf_objects +=
            sluice_ebpf::datapath::remove_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    // Both variants: a node may have switched between them since sluice last ran.
    for variant in [Variant::Nft, Variant::Legacy] {
        let ipt = Iptables { variant };
        match ipt.cleanup(&["nat", "filter", "mangle", "raw"]) {
            Ok(tables) => removed.iptables.extend(tables.into_iter().map(|t| format!("{}/{t}", variant.as_str()))),
            Err(sluice_iptables::IptablesError::Spawn { .. }) => {} // this variant is not installed
            Err(e) => return Err(e).context("removing sluice iptables chains"),
        }
    }
    removed.routes = super::block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        anyhow::Ok(RouteManager::new(handle).remove_all().await?)
    })??;
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(&removed)?),
        Output::Table => {
            if removed.iptables.is_empty() {
                println!("iptables: no sluice chains found");
            } else {
                println!("iptables: removed sluice chains and hooks in {}", removed.iptables.join(", "));
            }
            println!("routes:   removed {} sluice route(s)", removed.routes);
            println!("bpf:      removed {} pinned map(s) and link(s)", removed.bpf_objects);
        }
    }
    Ok(())
}
