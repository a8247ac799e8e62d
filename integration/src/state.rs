//! The lab's record of what it made, on disk so `down` works after a crashed run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRec {
    pub name: String,
    pub index: u32,
    pub netns: String,
    pub underlay_ip: String,
    pub pod_cidr: String,
    pub agent_pid: Option<u32>,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRec {
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub ip: String,
    pub labels: BTreeMap<String, String>,
    pub serve_port: Option<u16>,
    /// hostPort mapped to `serve_port` (TCP), declared in the pod's manifest.
    #[serde(default)]
    pub host_port: Option<u16>,
    pub serve_pid: Option<u32>,
    /// The chain's ADD result, passed back on DEL/CHECK as libcni's cache does.
    pub cni_result: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalRec {
    pub name: String,
    pub netns: String,
    pub ip: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub underlay_netns: String,
    pub nodes: Vec<NodeRec>,
    pub pods: Vec<PodRec>,
    pub externals: Vec<ExternalRec>,
    /// Other processes the lab started (PID, what), stopped by `down`.
    pub extra_pids: Vec<(u32, String)>,
}

impl LabState {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("no lab is up ({} missing); run `sluice-lab up` first", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("lab state {} is corrupt; run `sluice-lab down`", path.display()))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&NodeRec> {
        self.nodes.iter().find(|n| n.name == name).with_context(|| {
            let names: Vec<_> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            format!("no node {name:?} in this lab; nodes: {}", names.join(", "))
        })
    }
}
