//! Wire types of the agent's local API, shared by the agent, the CLI and the lab (and, with the
//! flows issue, the gRPC server): what `sluice status`, `sluice service list` and
//! `sluice bpf lb list` receive.

use serde::{Deserialize, Serialize};
use sluice_core::model::Rejected;
use sluice_core::{FeatureState, LocalEndpoint, ObjectError, Plan, PodRoute, ServiceName, Step, StepState};

/// One row of `sluice bpf lb list`.
pub type LbEntry = sluice_core::LbRow;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceStatus {
    pub kind: String,
    pub location: String,
    /// True once a complete read succeeded; nothing is pruned before that.
    pub synced: bool,
    pub objects: usize,
    pub last_sync_unix: u64,
    pub errors: Vec<String>,
    /// Seconds since the API became unreachable; the dataplane stays as it was meanwhile.
    #[serde(default)]
    pub stale_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub pod_cidr: Option<String>,
    pub cluster_cidr: String,
    pub underlay_ip: Option<String>,
    pub source: SourceStatus,
    pub conflist: Option<String>,
    pub routes: Vec<PodRoute>,
    pub masquerade: String,
    pub iptables_variant: String,
    pub local_endpoints: Vec<LocalEndpoint>,
    pub services: usize,
    pub rejected: Vec<Rejected>,
    /// Problems the last reconcile hit (empty when healthy).
    pub errors: Vec<String>,
    pub started_unix: u64,
    pub kernel: String,
    pub probe_ms: u64,
    pub plan: Option<Plan>,
    pub config: ReloadStatus,
    /// The eBPF datapath in one line.
    #[serde(default)]
    pub ebpf: String,
    /// Every registered backend: what its kernel state serves, in one line.
    #[serde(default)]
    pub backends: Vec<BackendStatus>,
    /// Each feature's progress towards its planned owner (make-before-break moves show here).
    #[serde(default)]
    pub features: Vec<FeatureState>,
    /// The backends' per-object errors, typed (also in `errors`, in words).
    #[serde(default)]
    pub dataplane_errors: Vec<ObjectError>,
    /// Services the source's last read lacked but its last complete read had: kept programmed
    /// until a complete read says they are gone (the prune gate).
    #[serde(default)]
    pub held: Vec<ServiceName>,
    /// Network policy on this node.
    #[serde(default)]
    pub policy: super::policy::PolicySummary,
    /// Flow visibility on this node.
    #[serde(default)]
    pub flows: FlowsStatus,
    /// Where the Prometheus metrics are served (nothing unless configured).
    #[serde(default)]
    pub metrics: MetricsStatus,
    /// The L7 proxy process the agent is connected to (none while no HTTP rule needs one).
    #[serde(default)]
    pub l7_proxy: Option<L7ProxyStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct L7ProxyStatus {
    pub pid: u32,
    /// Its listener on 127.0.0.1.
    pub port: u16,
    /// Its control socket.
    pub control: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsStatus {
    /// The agent's `sluice_*` metrics (`metrics.listen_address`), when served.
    pub agent: Option<String>,
    /// Hubble's flow metrics (`metrics.hubble_listen_address`), when served.
    pub hubble: Option<String>,
    /// The Hubble metrics counted, in `metrics.enabled` syntax.
    pub enabled: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowsStatus {
    /// Whether flows are being recorded (the plan gives `flows` to a backend and its source runs).
    pub running: bool,
    /// Where the datapath events come from.
    pub source: String,
    /// The Observer's unix socket (Hubble's API).
    pub socket: Option<String>,
    pub listen_address: Option<String>,
    /// TLS on `listen_address`: "server certificate" or "mutual (client certificates required)".
    #[serde(default)]
    pub tls: Option<String>,
    pub flows: usize,
    pub capacity: usize,
    pub seen: u64,
    /// Flows pushed out of the ring by newer ones (readers that fell behind are told per stream).
    pub overwritten: u64,
    /// Events the kernel dropped before the agent read them (socket overruns).
    pub lost_in_kernel: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    pub id: sluice_core::BackendId,
    pub serving: Vec<sluice_core::Feature>,
    pub summary: String,
}

/// Outcome of the last reload attempt, shown in status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub path: Option<String>,
    /// Increments with every applied config (1 = the one the agent started with).
    pub generation: u64,
    pub last_attempt_unix: u64,
    /// `None` when the last attempt was applied; the error when it was rejected.
    pub rejected: Option<String>,
    /// The `node_configs` entry this node's label selects, if any.
    #[serde(default)]
    pub node_config: Option<String>,
    /// The steps of the last applied change, in the order they ran.
    pub last_transition: Vec<StepRecord>,
    /// `kube_proxy_replacement` set on this node by `sluice migrate`, over the config file.
    #[serde(default)]
    pub migration: Option<MigrationOverride>,
    /// Where the agent keeps what must survive a restart (last complete read, migration record).
    #[serde(default)]
    pub state_dir: String,
}

/// `sluice migrate apply` (strict) or `rollback` (disabled) pins this node's
/// `kube_proxy_replacement` until the next migrate step; kept in the state directory, so it
/// survives restarts, and shown in `sluice status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationOverride {
    pub kube_proxy_replacement: sluice_core::KprMode,
    /// The command that set it (`sluice migrate apply`).
    pub set_by: String,
    pub since_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    /// Whether the step has happened (the engine keeps the old owner until the new one serves).
    pub state: StepState,
    pub result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendEntry {
    pub address: String,
    pub state: String,
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Position in the sorted list of frontends (stable while the Service set is unchanged).
    pub id: usize,
    pub service: String,
    pub frontend: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Who serves this frontend on this node (eBPF, iptables, kube-proxy, off), or `rejected`.
    pub owner: String,
    pub backends: Vec<BackendEntry>,
    /// Why the object (or this frontend of it) is refused; listed until it is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}
