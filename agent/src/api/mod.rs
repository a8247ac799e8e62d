//! The agent's local API: one JSON request per line on a root-only unix socket, one JSON
//! response per line. Small on purpose: the CLI and the lab are its only clients.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub mod policy;
pub mod types;

pub use types::{AgentStatus, LbEntry, ServiceEntry};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Every Service frontend with its backends and owner (`sluice service list`).
    Services,
    /// The Services sluice programs on this node, as the model holds them (`sluice migrate plan`).
    DesiredServices,
    /// The eBPF service maps (`sluice bpf lb list`).
    BpfLb,
    /// Sent by sluice-cni after ADD and DEL: reconcile now instead of at the next poll.
    EndpointsChanged,
    /// This node's endpoints with identity and enforcement (`sluice endpoint list`).
    Endpoints,
    /// Identities in use (`sluice identity list`).
    Identities,
    /// Policies in force and what they select here (`sluice policy get`).
    Policies,
    /// Would a new connection pass (`sluice policy trace`)? `from`/`to`: `NS/POD` or an IPv4.
    Trace {
        from: String,
        to: String,
        port: u16,
        protocol: sluice_core::Protocol,
    },
    /// Pin (or with `None` release) this node's `kube_proxy_replacement` for `sluice migrate`;
    /// refused when the plan it gives cannot be made on this node.
    Migration {
        kube_proxy_replacement: Option<sluice_core::KprMode>,
        set_by: String,
    },
    /// Set (or remove) `sluice.io/kube-proxy=replaced` on this node's Node object, with the
    /// agent's API credentials (the kubernetes source only).
    MarkNode {
        replaced: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Status(Box<AgentStatus>),
    Services(Vec<ServiceEntry>),
    DesiredServices {
        node: String,
        services: Vec<sluice_core::Service>,
        /// Every node the source knows (name, address): where `migrate verify` probes NodePorts.
        #[serde(default)]
        nodes: Vec<sluice_core::NodeInfo>,
    },
    BpfLb(Vec<LbEntry>),
    Endpoints(Vec<policy::EndpointEntry>),
    Identities(Vec<policy::IdentityEntry>),
    Policies(Box<policy::PolicyReport>),
    Trace(Box<sluice_core::policy::trace::Trace>),
    Ok,
    /// The answer to `MarkNode`: whether the Node carries the label as asked, and what happened.
    NodeLabel {
        labelled: bool,
        detail: String,
    },
    Error(String),
}

pub async fn call(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the sluice agent at {} (is `sluice agent` running? set --socket or SLUICE_SOCKET_PATH)",
            socket.display()
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    let mut resp = String::new();
    BufReader::new(r).read_line(&mut resp).await?;
    serde_json::from_str(&resp).with_context(|| format!("agent sent an unreadable response: {resp:?}"))
}
