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

fn default_ns() -> String {
    "default".into()
}

impl PodRec {
    /// The pod's name inside its namespace.
    pub fn short(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }

    /// The ports the echo server listens on.
    pub fn ports(&self) -> Vec<u16> {
        if self.serve_ports.is_empty() { self.serve_port.into_iter().collect() } else { self.serve_ports.clone() }
    }
}

/// `NS/NAME` or `NAME` -> (namespace, name, the lab's key: `NAME` in default, else `NS/NAME`).
pub fn pod_key(s: &str) -> (String, String, String) {
    match s.split_once('/') {
        Some(("default", n)) => ("default".into(), n.into(), n.into()),
        Some((ns, n)) => (ns.into(), n.into(), format!("{ns}/{n}")),
        None => ("default".into(), s.into(), s.into()),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRec {
    /// How the lab names the pod: `NAME` in `default`, `NS/NAME` elsewhere.
    pub name: String,
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub ip: String,
    pub labels: BTreeMap<String, String>,
    /// The first echo port (kept for callers that serve one).
    pub serve_port: Option<u16>,
    /// Every echo port (TCP and UDP each).
    #[serde(default)]
    pub serve_ports: Vec<u16>,
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
