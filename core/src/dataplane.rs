//! The seam: what every dataplane backend implements, and the typed results it returns.
//!
//! A backend is handed a [`Desired`] view (this node's services, host ports, local endpoints
//! and node facts), the set of features it owns in this pass and whether it may prune, and
//! answers with a [`Report`]: which features its kernel state now serves, and per-object errors.
//! It never sees Kubernetes types and never decides ownership: the [`crate::engine::Engine`]
//! does, from the plan, make-before-break.
//!
//! The trait is synchronous: backends talk to the kernel with blocking syscalls
//! (`iptables-restore`, `bpf(2)`), and the agent runs an engine pass off its async workers.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::LocalEndpoint;
use crate::plan::Feature;
use crate::registry::{BackendId, BackendSpec};
use crate::service::ServiceName;
use crate::view::ServiceView;

/// Facts about this node every backend may need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeContext {
    pub name: String,
    pub cluster_cidr: ipnet::Ipv4Net,
    pub pod_cidr: Option<ipnet::Ipv4Net>,
    /// Where NodePorts and HostPorts listen; the first is the SNAT address.
    pub ips: Vec<Ipv4Addr>,
    /// Devices that carry traffic from outside the node.
    pub devices: Vec<String>,
    /// The node's cgroup v2 directory (socket LB attaches there).
    pub cgroup: PathBuf,
    /// How tc programs attach here (the plan's, from the probe): a backend never tries a path
    /// the probe found missing.
    pub tc_attach: crate::TcAttach,
    /// Flows: also trace where pods' new connections enter the stack (`flows.trace_to_stack`).
    pub trace_to_stack: bool,
}

/// What one pass asks of a backend.
#[derive(Debug, Clone, Copy)]
pub struct Desired<'a> {
    /// Changes whenever the source's content changes: a backend may skip work when it, the
    /// owned features and the node context are unchanged.
    pub generation: u64,
    pub view: &'a ServiceView<'a>,
    pub local_endpoints: &'a [LocalEndpoint],
    pub node: &'a NodeContext,
    /// This node's endpoints' policy (the `policy` feature's input).
    pub policy: &'a crate::policy::PolicyView,
    /// The L7 proxy's listening socket while it runs (beside `policy.l7_proxy`, its port): a
    /// backend that steers connections to the socket itself (eBPF's socket lookup) needs it; one
    /// that redirects by port (TPROXY) does not.
    pub l7_listener: Option<std::os::fd::BorrowedFd<'a>>,
}

/// The kernel object an error is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "kebab-case")]
pub enum ObjectRef {
    Service(ServiceName),
    /// A pod veth or node device.
    Interface(String),
    Cgroup(PathBuf),
    /// A BPF map, by name.
    Map(String),
    /// An iptables table, by name.
    Table(String),
    /// The backend as a whole (loading, its node facts).
    Backend,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::Service(s) => write!(f, "Service {s}"),
            ObjectRef::Interface(i) => write!(f, "interface {i}"),
            ObjectRef::Cgroup(c) => write!(f, "cgroup {}", c.display()),
            ObjectRef::Map(m) => write!(f, "map {m}"),
            ObjectRef::Table(t) => write!(f, "table {t}"),
            ObjectRef::Backend => f.write_str("backend"),
        }
    }
}

/// What a backend was doing when the kernel refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Load,
    Attach,
    Detach,
    MapUpdate,
    RuleSync,
    ConntrackFlush,
    Restore,
    Cleanup,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Load => "loading",
            Op::Attach => "attaching",
            Op::Detach => "detaching",
            Op::MapUpdate => "updating maps",
            Op::RuleSync => "syncing rules",
            Op::ConntrackFlush => "flushing conntrack",
            Op::Restore => "restoring kernel state",
            Op::Cleanup => "cleaning up",
        })
    }
}

/// A node fact a backend needs and does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingFact {
    /// The Node object has no InternalIP yet.
    NodeIp,
    /// No device holds the node's InternalIP.
    Device,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "kebab-case")]
pub enum DataplaneError {
    #[error("{backend}: {op} failed: {detail}")]
    Kernel { backend: BackendId, op: Op, detail: String },
    #[error("{backend}: map {map} is full ({entries} entries; raise bpf_map_sizes.{map})")]
    MapFull { backend: BackendId, map: String, entries: u32 },
    #[error(
        "{backend} does not translate {protocol} frontends; they are refused here (the iptables dataplane serves them)"
    )]
    UnsupportedProtocol { backend: BackendId, protocol: crate::service::Protocol },
    #[error("{backend}: pinned map {map} has {pinned} entries, the config asks for {configured}; {hint}")]
    MapSize { backend: BackendId, map: String, pinned: u32, configured: u32, hint: String },
    #[error("{backend}: {features} cannot be served on this node: {}", missing_fact_text(.fact))]
    NodeFact { backend: BackendId, features: String, fact: MissingFact },
}

fn missing_fact_text(f: &MissingFact) -> &'static str {
    match f {
        MissingFact::NodeIp => {
            "the Node has no InternalIP yet (status.addresses); nothing listens on node addresses until it has one"
        }
        MissingFact::Device => "no device holds the node's InternalIP; set `devices` in the config",
    }
}

/// One failed object; every other object of the pass was still programmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectError {
    pub object: ObjectRef,
    pub error: DataplaneError,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.object {
            ObjectRef::Backend => write!(f, "{}", self.error),
            _ => write!(f, "{}: {}", self.object, self.error),
        }
    }
}

/// The outcome of one reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The features the backend's kernel state serves now (what it programmed successfully,
    /// or, after a failure, what it still serves from before).
    pub programmed: BTreeSet<Feature>,
    /// Kernel objects written or removed in this pass (0: nothing differed).
    pub changes: usize,
    pub errors: Vec<ObjectError>,
    /// Interfaces where features in `programmed` are nevertheless not served (the attach
    /// failed there; the error is in `errors`): the engine has the plan's fallback backend
    /// serve those features too until the hole closes.
    pub holes: Vec<Hole>,
}

/// Features a backend serves everywhere but on one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hole {
    pub interface: String,
    pub features: BTreeSet<Feature>,
}

/// What a backend found of its own in the kernel at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Features whose kernel state may still be in place (a superset is safe: the engine keeps
    /// such a feature on this backend until its planned owner serves it).
    pub features: BTreeSet<Feature>,
    /// Objects found (chains, map entries, links).
    pub objects: usize,
    /// What could not be read back (the backend starts from what it could read).
    pub errors: Vec<ObjectError>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    /// Kernel objects removed.
    pub removed: usize,
    pub errors: Vec<ObjectError>,
}

/// A dataplane backend. See the module docs for the contract.
pub trait Dataplane {
    /// The backend's id, features and the capabilities each needs.
    fn spec(&self) -> BackendSpec;

    fn id(&self) -> BackendId {
        self.spec().id
    }

    /// Read back what a previous agent left in the kernel (pinned maps, chains) before the
    /// first reconcile. Nothing is removed here.
    fn restore(&mut self) -> Restored;

    /// Converge the kernel to `desired` for the `owned` features; objects of features not
    /// owned are removed. With `prune` false, objects missing from `desired` stay in place (the
    /// source is incomplete or not yet synced: missing is not the same as deleted).
    fn reconcile(&mut self, desired: &Desired<'_>, owned: &BTreeSet<Feature>, prune: bool) -> Report;

    /// Whether this backend translates Service addresses in netfilter, as kube-proxy does:
    /// features moving between it and kube-proxy change nothing conntrack sees, so neither
    /// `before_break` nor `after_transition` hears of them (a settle there would only disturb
    /// connections).
    fn translates_in_netfilter(&self) -> bool {
        false
    }

    /// Called once per pass in which a holder is about to drop features a new owner now
    /// serves (between make and break): shared kernel state can be settled here, while the old
    /// owner still serves, so that what is left for `after_transition` is small. `moving`: the
    /// features about to be dropped.
    fn before_break(&mut self, _desired: &Desired<'_>, _moving: &BTreeSet<Feature>) -> Vec<ObjectError> {
        Vec::new()
    }

    /// Called once per pass in which features changed hands (any backend's served set changed),
    /// after every backend reconciled: kernel state shared between dataplanes (netfilter's
    /// conntrack) may need settling. `moved`: the features whose serving backends changed.
    fn after_transition(&mut self, _desired: &Desired<'_>, _moved: &BTreeSet<Feature>) -> Vec<ObjectError> {
        Vec::new()
    }

    /// Remove everything this backend owns in the kernel (`sluice cleanup`).
    fn cleanup(&mut self) -> CleanupReport;

    /// One line for `sluice status`.
    fn summary(&self) -> String;

    /// The frontends as the kernel holds them, for `sluice bpf lb list` (backends without
    /// per-frontend kernel entries list none).
    fn lb_rows(&self) -> Vec<LbRow> {
        Vec::new()
    }

    /// How full the backend's kernel objects are (the agent's `sluice_*` metrics).
    fn usage(&self) -> Vec<Usage> {
        Vec::new()
    }

    /// Events the datapath reported since the last call (flow events land here; no backend
    /// produces any yet).
    fn drain_events(&mut self) -> Vec<DataplaneEvent> {
        Vec::new()
    }
}

/// An event from a datapath. None is defined yet: flow records (and lost-event counts) come
/// with the flows issue; the trait's `drain_events` is where backends will hand them over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataplaneEvent {}

/// One measure of a backend's kernel state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Usage {
    /// A fixed-size map: entries written of its capacity (a full map refuses new frontends).
    MapFill { map: String, entries: u64, capacity: u64 },
    /// Objects of one kind (`rules`, `chains`, `sets`, `attached-interfaces`).
    Objects { kind: String, count: u64 },
}

/// One frontend as a backend's kernel state holds it (`sluice bpf lb list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbRow {
    /// `VIP:port/PROTO`.
    pub frontend: String,
    pub service_id: u32,
    pub backend_count: u32,
    pub affinity_s: u32,
    /// Who this frontend is served for: pods, external, host-tcp, host-udp, source-ranges.
    #[serde(default)]
    pub serves: Vec<String>,
    /// (slot, backend address; " local" when on this node).
    pub backends: Vec<(u32, String)>,
}
