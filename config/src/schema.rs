//! The configuration schema with its defaults. docs/configuration.md documents every key;
//! keep the two in step.

use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use sluice_core::{Capability, DataplaneMode, Feature, KprMode};

use crate::ConfigError;

/// `kube_proxy_replacement`: disabled | partial | probe | strict, and Cilium 1.14+ style
/// booleans (`true` = strict, `false` = disabled), as YAML booleans or strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct KprSetting(pub KprMode);

impl From<KprSetting> for String {
    fn from(k: KprSetting) -> String {
        k.0.title().to_lowercase()
    }
}

impl<'de> Deserialize<'de> for KprSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        let mode = match Raw::deserialize(d)? {
            Raw::Bool(true) => KprMode::Strict,
            Raw::Bool(false) => KprMode::Disabled,
            Raw::Str(s) => match s.as_str() {
                "disabled" | "false" => KprMode::Disabled,
                "partial" => KprMode::Partial,
                "probe" => KprMode::Probe,
                "strict" | "true" => KprMode::Strict,
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "{other:?} is not a kube_proxy_replacement mode; accepted: disabled, partial, probe, strict, true (= strict), false (= disabled)"
                    )));
                }
            },
        };
        Ok(KprSetting(mode))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name, as in the Node object. Required (flag `--node-name`, env SLUICE_NODE_NAME).
    pub node_name: String,
    /// All pod addresses of the cluster; traffic leaving it is masqueraded.
    #[serde(deserialize_with = "net::network")]
    pub cluster_cidr: Ipv4Net,
    /// This node's pod CIDR. Default: the Node object's `spec.podCIDR`.
    #[serde(deserialize_with = "net::optional_network")]
    pub pod_cidr: Option<Ipv4Net>,
    /// The cluster's Service addresses. With the manifest source, a Service without
    /// `spec.clusterIP` gets one from here, the same on every node (sluice stands in for the
    /// API server's allocator).
    #[serde(deserialize_with = "net::network")]
    pub service_cidr: Ipv4Net,
    /// Where the agent keeps what must survive its restarts (the last complete set of Services,
    /// which the prune gate holds while the source is incomplete; `sluice migrate`'s record, pin and
    /// marker). It must survive reboots. Default: /var/lib/sluice/<node_name>.
    pub state_dir: Option<PathBuf>,
    /// Unix socket for the CLI (root-only, mode 0600).
    pub socket_path: PathBuf,
    pub source: SourceConfig,
    pub cni: CniConfig,
    /// Masquerade pod traffic that leaves `cluster_cidr`.
    pub masquerade: bool,
    pub iptables: IptablesConfig,
    /// Which Service features sluice takes from kube-proxy: disabled, partial, probe, strict.
    pub kube_proxy_replacement: KprSetting,
    /// With `partial`: the features sluice serves (names as in `sluice plan`).
    pub kube_proxy_replacement_features: Vec<String>,
    /// Which backends may serve features: auto (eBPF where the kernel allows, else iptables), ebpf, iptables.
    pub dataplane: DataplaneMode,
    /// Per feature, over `dataplane`: e.g. `{node-port: iptables}` keeps NodePort (and what
    /// follows it) on iptables while the other features go by `dataplane`. Keys are feature
    /// names as in `sluice plan`; values as `dataplane`.
    pub dataplane_features: std::collections::BTreeMap<String, DataplaneMode>,
    pub probes: ProbesConfig,
    /// Flow visibility (Hubble's Observer API), served while the plan gives `flows` to a backend.
    pub flows: FlowsConfig,
    /// The node-local L7 (HTTP) proxy that enforces `toPorts[].rules.http` (iptables policy).
    pub l7: L7Config,
    /// Prometheus metrics: Hubble's flow metrics and the agent's own. Nothing listens unless an
    /// address is set.
    pub metrics: MetricsConfig,
    /// Network policy enforcement: `default` (a pod is isolated in a direction once a policy
    /// selects it for that direction), `always` (every pod is isolated: only what a policy
    /// allows passes), `never` (policies are read and shown, nothing is enforced). Changeable
    /// while the agent runs.
    pub policy_enforcement: sluice_core::policy::Enforcement,
    /// Where the eBPF backend pins its maps and links. Default: /sys/fs/bpf/sluice/<node_name>.
    pub bpf_pin_dir: Option<PathBuf>,
    /// Node devices the eBPF backend serves NodePort/ExternalIPs/LoadBalancer/HostPort on.
    /// Empty: the devices holding the node's InternalIP.
    pub devices: Vec<String>,
    /// cgroup v2 directory the socket-LB programs attach to (host processes in it and below).
    /// Default: /sys/fs/cgroup when it is cgroup v2, else /sys/fs/cgroup/unified (hybrid layout).
    pub cgroup_root: Option<PathBuf>,
    /// How the eBPF backend picks a new flow's backend: random, or maglev (consistent hashing).
    pub lb_algorithm: sluice_core::LbAlgorithm,
    /// Maglev lookup table size per frontend (a prime; see sluice_core::lb::MAGLEV_SIZES).
    pub lb_maglev_table_size: u32,
    /// Entries of the eBPF maps. A pinned map keeps its size until `sluice cleanup`.
    pub bpf_map_sizes: sluice_core::MapSizes,
    /// NodePort range, `FIRST-LAST` (kube-apiserver's --service-node-port-range).
    pub node_port_range: String,
    /// Per-node overrides, selected by the node label `sluice.io/node-config: NAME` (in the spirit
    /// of CiliumNodeConfig): roll kube-proxy replacement out node by node.
    pub node_configs: std::collections::BTreeMap<String, NodeOverride>,
    /// What loading noticed but did not refuse (unknown `SLUICE_*` environment variables); the
    /// agent logs each at start.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// CIDR keys: the value in every error, and no host bits (`10.244.1.5/16` is refused, naming
/// `10.244.0.0/16`, rather than silently taken as the network).
mod net {
    use ipnet::Ipv4Net;
    use serde::{Deserialize, Deserializer, de::Error};

    fn parse<E: Error>(s: &str) -> Result<Ipv4Net, E> {
        match sluice_core::validate::network(s) {
            Ok(n) => Ok(n),
            Err(sluice_core::validate::Problem::HostBits { network }) => {
                Err(E::custom(format!("{s:?} has host bits set; the network is {network}: write that")))
            }
            Err(_) => Err(E::custom(format!("{s:?} is not an IPv4 CIDR; accepted: a.b.c.d/n, e.g. 10.244.0.0/16"))),
        }
    }

    pub fn network<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Net, D::Error> {
        parse(&String::deserialize(d)?)
    }

    pub fn optional_network<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Net>, D::Error> {
        Option::<String>::deserialize(d)?.map(|s| parse(&s)).transpose()
    }
}

/// What a node label may override: the runtime-changeable keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeOverride {
    pub kube_proxy_replacement: Option<KprSetting>,
    pub kube_proxy_replacement_features: Option<Vec<String>>,
    pub dataplane: Option<DataplaneMode>,
    pub dataplane_features: Option<std::collections::BTreeMap<String, DataplaneMode>>,
    pub probes: Option<ProbesConfig>,
}

/// The label on a Node object that selects one of `node_configs`.
pub const NODE_CONFIG_LABEL: &str = "sluice.io/node-config";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// Capabilities to treat as missing even if the kernel has them (rehearse an older kernel).
    pub assume_missing: Vec<String>,
    /// How often the agent probes the node again (a module loaded after start, say) and
    /// re-plans when a capability came or went.
    pub reprobe_interval_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsConfig {
    /// Record flows and serve the Observer API (Hubble's `enable-hubble`). Changeable at runtime.
    pub enabled: bool,
    /// Flows kept per node for `GetFlows` (Hubble's default: 4095).
    pub ring_size: usize,
    /// The Observer's unix socket (root-only). Default: `hubble.sock` beside `socket_path`.
    pub socket_path: Option<PathBuf>,
    /// TCP address for Hubble's relay and CLI, e.g. `0.0.0.0:4244`. Nothing listens unless set.
    pub listen_address: Option<std::net::SocketAddr>,
    /// A policy verdict (FORWARDED, with the allowing policies) for every new flow an allow rule
    /// admits on policed pods (iptables and eBPF). Off by default: one NFLOG message per new
    /// connection cost the policy benchmark 0.77x of its rate at ~20k connections/s on 2 cores.
    /// Drops and audits are always reported. Changeable at runtime.
    pub allowed_verdicts: bool,
    /// eBPF nodes: also a `to-stack` trace where a pod's new connection enters the host stack
    /// (after its Service translation), beside the `from-endpoint` one, as Cilium's monitor
    /// shows both. Off by default: a third trace per connection (docs/benchmarks.md has the
    /// cost). Netfilter nodes' conntrack flows are to-stack already. Changeable at runtime.
    pub trace_to_stack: bool,
    /// TLS on the TCP listener (`listen_address`; the unix socket is root-only and stays
    /// plaintext), as Hubble's `hubble-tls-cert-file`/`-key-file`/`-client-ca-files`.
    pub tls: Option<TlsFiles>,
}

/// A server's certificate, its key and, for mutual TLS, the CAs its clients' certificates must
/// chain to. PEM files, read when the listener starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Set: clients must present a certificate one of these CAs signed (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct L7Config {
    /// Run the proxy. Off: ports with HTTP rules let nothing through (fails closed).
    pub enabled: bool,
    /// Its port on 127.0.0.1 (TPROXY delivers there; nothing else can reach it).
    pub proxy_port: u16,
    /// Largest request head in bytes (more: 431).
    pub max_header_bytes: usize,
    /// Seconds a client has to send a request's headers (slow clients are cut off).
    pub header_timeout_s: u64,
    /// Open client connections at most (more are closed at once).
    pub max_connections: usize,
    /// Seconds the proxy has, when it stops (SIGTERM, `sluice cleanup`), to finish the requests
    /// in flight.
    pub drain_timeout_s: u64,
    /// The proxy process's control socket (root-only). Default: `l7-proxy.sock` beside
    /// `socket_path`.
    pub control_socket: Option<PathBuf>,
    /// Headers recorded in L7 flows (request headers on the request flow, response headers on
    /// the response flow), by name, case-insensitive. None by default: headers carry secrets.
    pub flow_headers: Vec<String>,
}

impl Default for L7Config {
    fn default() -> Self {
        L7Config {
            enabled: true,
            proxy_port: 15001,
            max_header_bytes: 65536,
            header_timeout_s: 10,
            max_connections: 10000,
            drain_timeout_s: 10,
            control_socket: None,
            flow_headers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The agent's `sluice_*` metrics (programming latency, map fill, rule counts, errors,
    /// identities, policies), e.g. `10.0.0.1:9962` (Cilium's agent port).
    pub listen_address: Option<std::net::SocketAddr>,
    /// Hubble's flow metrics (`hubble_*`), e.g. `10.0.0.1:9965` (Hubble's port).
    pub hubble_listen_address: Option<std::net::SocketAddr>,
    /// Which Hubble metrics to count, in Hubble's `metrics.enabled` syntax: `flow`, `drop`, `tcp`,
    /// `port-distribution`, `icmp`, `policy`, each optionally with
    /// `:sourceContext=namespace|pod|pod-name|ip|identity|reserved-identity|workload|workload-name|app;destinationContext=...`.
    pub enabled: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen_address: None,
            hubble_listen_address: None,
            enabled: ["flow", "drop", "tcp", "port-distribution", "icmp", "policy"].map(String::from).to_vec(),
        }
    }
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            enabled: true,
            ring_size: 4095,
            socket_path: None,
            listen_address: None,
            allowed_verdicts: false,
            trace_to_stack: false,
            tls: None,
        }
    }
}

impl Default for ProbesConfig {
    fn default() -> Self {
        ProbesConfig { assume_missing: Vec::new(), reprobe_interval_s: 60 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: String::new(),
            cluster_cidr: Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            pod_cidr: None,
            service_cidr: Ipv4Net::new(std::net::Ipv4Addr::new(10, 96, 0, 0), 12).unwrap_or_default(),
            state_dir: None,
            socket_path: "/run/sluice/sluice.sock".into(),
            source: SourceConfig::default(),
            cni: CniConfig::default(),
            masquerade: true,
            iptables: IptablesConfig::default(),
            kube_proxy_replacement: KprSetting(KprMode::Probe),
            kube_proxy_replacement_features: Vec::new(),
            dataplane: DataplaneMode::Auto,
            dataplane_features: Default::default(),
            probes: ProbesConfig::default(),
            flows: FlowsConfig::default(),
            l7: L7Config::default(),
            metrics: MetricsConfig::default(),
            policy_enforcement: sluice_core::policy::Enforcement::Default,
            node_port_range: "30000-32767".into(),
            node_configs: Default::default(),
            bpf_pin_dir: None,
            devices: Vec::new(),
            cgroup_root: None,
            lb_algorithm: sluice_core::LbAlgorithm::Random,
            lb_maglev_table_size: 1021,
            bpf_map_sizes: sluice_core::MapSizes::default(),
            warnings: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A directory of Kubernetes YAML (standalone mode, used by the lab).
    Manifests,
    /// The Kubernetes API (watchers with backoff).
    Kubernetes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Directory of `*.yaml`/`*.yml`/`*.json` Kubernetes objects, read recursively.
    pub manifests_dir: PathBuf,
    /// How often the manifest directory is re-read (and the reconcile loop runs), in milliseconds (100..=60000).
    pub poll_interval_ms: u64,
    /// kind=kubernetes: kubeconfig file; unset = in-cluster service account, then $KUBECONFIG.
    pub kubeconfig: Option<PathBuf>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Manifests,
            manifests_dir: "/etc/sluice/manifests".into(),
            poll_interval_ms: 1000,
            kubeconfig: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Where the agent writes the CNI conflist for this node; empty to not write one.
    pub conflist_path: PathBuf,
    /// The CNI network name (also the IPAM directory name).
    pub network_name: String,
    /// IPAM state directory handed to the plugin (`dataDir`).
    pub data_dir: PathBuf,
    /// Pod interface MTU; unset leaves the kernel default.
    pub mtu: Option<u32>,
    /// Extra plugins chained after sluice-cni, as raw CNI plugin configs (e.g. portmap).
    pub chain: Vec<serde_json::Value>,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conflist_path: "/etc/cni/net.d/05-sluice.conflist".into(),
            network_name: "sluice".into(),
            data_dir: "/var/lib/sluice/cni".into(),
            mtu: None,
            chain: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IptablesVariant {
    /// Use whichever variant already holds rules on the node (nft when none does).
    Auto,
    Nft,
    Legacy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IptablesConfig {
    pub variant: IptablesVariant,
}

impl Default for IptablesConfig {
    fn default() -> Self {
        IptablesConfig { variant: IptablesVariant::Auto }
    }
}

fn invalid(key: &str, value: impl ToString, accepted: &str) -> ConfigError {
    ConfigError::Invalid { key: key.into(), value: value.to_string(), accepted: accepted.into(), origin: None }
}

impl Config {
    /// `metrics.enabled`, parsed (Hubble's syntax).
    pub fn hubble_metrics(&self) -> Result<Vec<sluice_core::flow::metrics::MetricSpec>, ConfigError> {
        use sluice_core::flow::metrics::{MetricsSpecError as E, parse};
        parse(&self.metrics.enabled).map_err(|e| {
            let (E::UnknownMetric { index, .. }
            | E::UnknownOption { index, .. }
            | E::BadValue { index, .. }
            | E::Duplicate { index, .. }) = &e;
            let accepted = match &e {
                E::UnknownMetric { .. } => "one of flow, drop, tcp, port-distribution, icmp, policy".to_string(),
                E::UnknownOption { option, .. } => {
                    format!("options sourceContext and destinationContext (not {option})")
                }
                E::BadValue { option, accepted, .. } => format!("{option} values {accepted}"),
                E::Duplicate { first, .. } => format!("each metric once (it is also metrics.enabled[{first}])"),
            };
            invalid(&format!("metrics.enabled[{index}]"), &self.metrics.enabled[*index], &accepted)
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(true)
    }

    /// `require_node_name` false: an empty node name passes (planning needs no node; a
    /// non-empty bad one is still refused).
    pub fn validate_with(&self, require_node_name: bool) -> Result<(), ConfigError> {
        let n = &self.node_name;
        let dns_label = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && !s.starts_with(['-', '.'])
                && !s.ends_with(['-', '.'])
        };
        if !dns_label(n) && (require_node_name || !n.is_empty()) {
            return Err(invalid(
                "node_name",
                n,
                "a Kubernetes node name: lowercase letters, digits, '-' and '.' (set it with --node-name or SLUICE_NODE_NAME)",
            ));
        }
        if self.cluster_cidr.contains(&self.service_cidr.network())
            || self.service_cidr.contains(&self.cluster_cidr.network())
        {
            return Err(invalid(
                "service_cidr",
                self.service_cidr,
                &format!(
                    "a range that does not overlap cluster_cidr {} (Service and pod addresses must differ)",
                    self.cluster_cidr
                ),
            ));
        }
        if let Some(p) = self.pod_cidr {
            if !self.cluster_cidr.contains(&p) {
                return Err(invalid("pod_cidr", p, &format!("a CIDR inside cluster_cidr {}", self.cluster_cidr)));
            }
            if p.prefix_len() > 30 {
                return Err(invalid("pod_cidr", p, "a prefix of /30 or shorter"));
            }
        }
        if !sluice_core::lb::MAGLEV_SIZES.contains(&self.lb_maglev_table_size) {
            let accepted: Vec<String> = sluice_core::lb::MAGLEV_SIZES.iter().map(u32::to_string).collect();
            return Err(invalid("lb_maglev_table_size", self.lb_maglev_table_size, &accepted.join(", ")));
        }
        for (k, v) in self.bpf_map_sizes.named() {
            if !(1..=16_777_216).contains(&v) {
                return Err(invalid(&format!("bpf_map_sizes.{k}"), v, "1..=16777216 entries"));
            }
        }
        if self.flows.tls.is_some() && self.flows.listen_address.is_none() {
            return Err(invalid(
                "flows.tls",
                "set",
                "TLS with flows.listen_address (it secures the TCP listener; the unix socket is root-only): set the address, or remove flows.tls",
            ));
        }
        if !(100..=60_000).contains(&self.source.poll_interval_ms) {
            return Err(invalid("source.poll_interval_ms", self.source.poll_interval_ms, "100..=60000"));
        }
        if self.cni.network_name.is_empty()
            || !self.cni.network_name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(invalid("cni.network_name", &self.cni.network_name, "letters, digits, '_', '.', '-'"));
        }
        if let Some(m) = self.cni.mtu
            && !(576..=65535).contains(&m)
        {
            return Err(invalid("cni.mtu", m, "576..=65535"));
        }
        for (i, p) in self.cni.chain.iter().enumerate() {
            if p.get("type").and_then(|t| t.as_str()).is_none() {
                return Err(invalid(&format!("cni.chain[{i}]"), p, "a CNI plugin config object with a \"type\""));
            }
        }
        let features = self.partial_features()?;
        match (self.kube_proxy_replacement.0, features.is_empty()) {
            (KprMode::Partial, true) => {
                return Err(invalid(
                    "kube_proxy_replacement_features",
                    "[]",
                    &format!("at least one feature with kube_proxy_replacement=partial; features: {}", feature_names()),
                ));
            }
            (KprMode::Partial, false) => {}
            (_, false) => {
                return Err(invalid(
                    "kube_proxy_replacement_features",
                    self.kube_proxy_replacement_features.join(","),
                    "an empty list unless kube_proxy_replacement=partial (it is ignored otherwise, so it is refused)",
                ));
            }
            _ => {}
        }
        self.feature_dataplanes()?;
        self.assume_missing()?;
        if !(1..=86_400).contains(&self.probes.reprobe_interval_s) {
            return Err(invalid("probes.reprobe_interval_s", self.probes.reprobe_interval_s, "1 to 86400 (seconds)"));
        }
        if self.l7.proxy_port == 0 {
            return Err(invalid("l7.proxy_port", self.l7.proxy_port, "a port 1 to 65535, free on 127.0.0.1"));
        }
        if !(8192..=1 << 20).contains(&self.l7.max_header_bytes) {
            return Err(invalid("l7.max_header_bytes", self.l7.max_header_bytes, "8192 to 1048576 bytes"));
        }
        if !(1..=3600).contains(&self.l7.header_timeout_s) {
            return Err(invalid("l7.header_timeout_s", self.l7.header_timeout_s, "1 to 3600 seconds"));
        }
        if !(1..=1_000_000).contains(&self.l7.max_connections) {
            return Err(invalid("l7.max_connections", self.l7.max_connections, "1 to 1000000 connections"));
        }
        if self.l7.drain_timeout_s > 300 {
            return Err(invalid("l7.drain_timeout_s", self.l7.drain_timeout_s, "0 to 300 seconds"));
        }
        for (i, h) in self.l7.flow_headers.iter().enumerate() {
            // RFC 9110 token characters.
            let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if h.is_empty() || !h.chars().all(tchar) {
                return Err(invalid(&format!("l7.flow_headers[{i}]"), h, "an HTTP header name, e.g. content-type"));
            }
        }
        if !(16..=1 << 20).contains(&self.flows.ring_size) {
            return Err(invalid("flows.ring_size", self.flows.ring_size, "16 to 1048576 flows"));
        }
        self.hubble_metrics()?;
        if let (Some(a), Some(b)) = (self.metrics.listen_address, self.metrics.hubble_listen_address)
            && a == b
        {
            return Err(invalid(
                "metrics.hubble_listen_address",
                b,
                "an address other than metrics.listen_address (each serves its own /metrics)",
            ));
        }
        self.node_port_range()?;
        for name in self.node_configs.keys() {
            self.with_node_config(Some(name))?;
        }
        Ok(())
    }

    /// This config with the named `node_configs` entry applied (validated). `None`: unchanged.
    pub fn with_node_config(&self, name: Option<&str>) -> Result<Config, ConfigError> {
        let Some(name) = name else { return Ok(self.clone()) };
        let o = self.node_configs.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.node_configs.keys().map(String::as_str).collect();
            invalid(
                &format!("node label {NODE_CONFIG_LABEL}"),
                name,
                &format!(
                    "a key of node_configs ({})",
                    if known.is_empty() { "none defined".into() } else { known.join(", ") }
                ),
            )
        })?;
        let mut c = self.clone();
        c.node_configs.clear();
        if let Some(k) = o.kube_proxy_replacement {
            c.kube_proxy_replacement = k;
        }
        if let Some(f) = &o.kube_proxy_replacement_features {
            c.kube_proxy_replacement_features = f.clone();
        }
        if let Some(d) = o.dataplane {
            c.dataplane = d;
        }
        if let Some(d) = &o.dataplane_features {
            c.dataplane_features = d.clone();
        }
        if let Some(p) = &o.probes {
            c.probes = p.clone();
        }
        c.validate().map_err(|e| match e {
            ConfigError::Invalid { key, value, accepted, origin } => {
                ConfigError::Invalid { key: format!("node_configs.{name}: {key}"), value, accepted, origin }
            }
            other => other,
        })?;
        Ok(c)
    }

    /// The L7 proxy's control socket (`l7.control_socket`, else beside `socket_path`).
    pub fn l7_control_socket(&self) -> PathBuf {
        self.l7.control_socket.clone().unwrap_or_else(|| self.socket_path.with_file_name("l7-proxy.sock"))
    }

    pub fn bpf_pin_dir(&self) -> PathBuf {
        self.bpf_pin_dir.clone().unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/sluice").join(&self.node_name))
    }

    /// See `state_dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| PathBuf::from("/var/lib/sluice").join(&self.node_name))
    }

    /// The cgroup v2 directory for socket LB (see `cgroup_root`).
    pub fn cgroup_root(&self) -> PathBuf {
        self.cgroup_root.clone().unwrap_or_else(cgroup2_mount)
    }

    /// `node_port_range`, parsed.
    pub fn node_port_range(&self) -> Result<(u16, u16), ConfigError> {
        let bad = || {
            invalid(
                "node_port_range",
                &self.node_port_range,
                "FIRST-LAST with 1 <= FIRST <= LAST <= 65535, e.g. 30000-32767",
            )
        };
        let (a, b) = self.node_port_range.split_once('-').ok_or_else(bad)?;
        let (a, b): (u16, u16) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if a == 0 || a > b {
            return Err(bad());
        }
        Ok((a, b))
    }

    /// `kube_proxy_replacement_features`, parsed.
    pub fn partial_features(&self) -> Result<Vec<Feature>, ConfigError> {
        self.kube_proxy_replacement_features
            .iter()
            .enumerate()
            .map(|(i, f)| {
                f.parse::<Feature>().map_err(|e| {
                    invalid(&format!("kube_proxy_replacement_features[{i}]"), f, &format!("one of {}", e.known))
                })
            })
            .collect()
    }

    /// `dataplane_features`, parsed.
    pub fn feature_dataplanes(&self) -> Result<std::collections::BTreeMap<Feature, DataplaneMode>, ConfigError> {
        self.dataplane_features
            .iter()
            .map(|(f, d)| {
                let feature = f.parse::<Feature>().map_err(|e| {
                    invalid("dataplane_features", f, &format!("feature names as keys, one of {}", e.known))
                })?;
                Ok((feature, *d))
            })
            .collect()
    }

    /// `probes.assume_missing`, parsed.
    pub fn assume_missing(&self) -> Result<Vec<Capability>, ConfigError> {
        self.probes
            .assume_missing
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.parse::<Capability>()
                    .map_err(|e| invalid(&format!("probes.assume_missing[{i}]"), c, &format!("one of {}", e.known)))
            })
            .collect()
    }
}

fn feature_names() -> String {
    Feature::ALL.map(|f| f.name()).join(", ")
}

/// Where cgroup v2 is mounted: /sys/fs/cgroup on a pure v2 host, /sys/fs/cgroup/unified in the
/// hybrid layout.
pub fn cgroup2_mount() -> PathBuf {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let root = PathBuf::from("/sys/fs/cgroup");
    #[allow(clippy::unnecessary_cast)]
    let v2 = nix::sys::statfs::statfs(&root).is_ok_and(|s| s.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC);
    if v2 { root } else { root.join("unified") }
}
