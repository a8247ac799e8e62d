//! The CNI conflist the agent installs for its node.

use anyhow::Context;
use ipnet::Ipv4Net;
use sluice_cni::conflist::{ConfList, SluicePlugin};
use sluice_config::Config;

/// The node's conflist, from the CNI crate's types (what the plugin decodes).
pub fn render_conflist(cfg: &Config, pod_cidr: Ipv4Net) -> ConfList {
    let sluice = SluicePlugin {
        plugin_type: "sluice-cni".into(),
        subnet: pod_cidr.to_string(),
        data_dir: cfg.cni.data_dir.display().to_string(),
        agent_socket: cfg.socket_path.display().to_string(),
        mtu: cfg.cni.mtu,
    };
    ConfList::new(&cfg.cni.network_name, sluice, &cfg.cni.chain)
}

/// Write atomically, and only when the content changed (runtimes watch this directory).
pub fn write_if_changed(cfg: &Config, pod_cidr: Ipv4Net) -> anyhow::Result<()> {
    let path = &cfg.cni.conflist_path;
    let text = serde_json::to_string_pretty(&render_conflist(cfg, pod_cidr))? + "\n";
    if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    crate::files::write_atomic(path, text.as_bytes()).context("installing the CNI conflist")?;
    tracing::info!(path = %path.display(), %pod_cidr, "CNI conflist written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_has_subnet_and_chain() {
        let mut cfg = sluice_config::from_yaml_str(
            "node_name: node-1\ncni:\n  chain: [{type: portmap, capabilities: {portMappings: true}}]\n",
        )
        .expect("cfg");
        cfg.cni.mtu = Some(1400);
        let c = serde_json::to_value(render_conflist(&cfg, "10.244.1.0/24".parse().expect("net"))).expect("json");
        assert_eq!(c["plugins"][0]["subnet"], "10.244.1.0/24");
        assert_eq!(c["plugins"][0]["mtu"], 1400);
        assert_eq!(c["plugins"][0]["agentSocket"], "/run/sluice/sluice.sock");
        assert_eq!(c["plugins"][1]["type"], "portmap");
        assert_eq!(c["cniVersion"], "1.0.0");
    }
}
