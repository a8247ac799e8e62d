//! Flow visibility on this node: while the plan gives `flows` to a backend that serves it,
//! reader threads (flows_sources.rs) turn the datapath's observations into flows (named through a
//! directory the loop refreshes each pass) and push them into the hub: conntrack events on an
//! iptables node; the eBPF ring (traces, policy events) on an eBPF node, plus the conntrack
//! events of connections netfilter translates there. The Observer API is served on a root-only
//! unix socket (and on TCP only when an address is configured).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use sluice_config::Config;
use sluice_core::ClusterState;
use sluice_core::flow::enrich::Directory;
use sluice_core::flow::metrics::LostSource;
use sluice_core::policy::{Identity, PolicyView};
use sluice_observer::server::{Hub, now_ns};

use crate::api::types::FlowsStatus;

use super::flows_sources::{self as sources, RuleTagMap, read_loop, ring_flow};

pub struct Flows {
    hub: Arc<Hub>,
    directory: Arc<RwLock<Directory>>,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// The NFLOG reader (policy drops), when its group could be bound.
    drops: Option<std::thread::JoinHandle<()>>,
    /// What each NFLOG prefix stands for, from the policy view the iptables rules were made of.
    drop_tags: Arc<RwLock<std::collections::HashMap<String, sluice_iptables::policy::DropTag>>>,
    /// Why drops are not logged (the group is taken, nfnetlink_log is missing), when so.
    drops_error: Option<String>,
    policy_generation: Option<u64>,
    /// The eBPF ring buffer reader (policy drops), while eBPF enforces policy on this node.
    ebpf_drops: Option<std::thread::JoinHandle<()>>,
    ebpf_stop: Arc<AtomicBool>,
    /// What each (endpoint interface, direction, rule index) the datapath reports stands for.
    rule_tags: Arc<RwLock<RuleTagMap>>,
    rule_tags_generation: Option<u64>,
    /// Why the eBPF drops are not read, when so.
    ebpf_drops_error: Option<String>,
    /// On an eBPF-traced node where netfilter translates some frontends (Services on iptables
    /// or kube-proxy): conntrack events of the connections netfilter translated.
    nat_reader: Option<std::thread::JoinHandle<()>>,
    nat_stop: Arc<AtomicBool>,
    /// A reader told to stop, left to end on its own (its receive waits up to 1 s: joining it
    /// would hold the pass that took the frontends from netfilter up that long).
    nat_stopping: Option<std::thread::JoinHandle<()>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// The backend whose datapath the flows come from while they run (iptables: conntrack
    /// events; eBPF: the pod-veth programs' traces in the ring buffer).
    serving: Option<sluice_core::BackendId>,
    socket: PathBuf,
    listen: Option<SocketAddr>,
    /// TLS on the TCP listener (`flows.tls`).
    tls: Option<sluice_config::TlsFiles>,
    /// The source generation `directory` was built from.
    generation: Option<u64>,
}

impl Flows {
    pub fn new(cfg: &Config) -> Self {
        let socket = cfg.flows.socket_path.clone().unwrap_or_else(|| cfg.socket_path.with_file_name("hubble.sock"));
        let address = match cfg.flows.listen_address {
            Some(a) => a.to_string(),
            None => format!("unix://{}", socket.display()),
        };
        Flows {
            hub: Hub::new(&cfg.node_name, &address, cfg.flows.ring_size, cfg.hubble_metrics().unwrap_or_default()),
            directory: Arc::default(),
            stop: Arc::default(),
            lost: Arc::default(),
            error: Arc::default(),
            reader: None,
            drops: None,
            drop_tags: Arc::default(),
            drops_error: None,
            policy_generation: None,
            ebpf_drops: None,
            ebpf_stop: Arc::default(),
            rule_tags: Arc::default(),
            rule_tags_generation: None,
            ebpf_drops_error: None,
            nat_reader: None,
            nat_stop: Arc::default(),
            nat_stopping: None,
            servers: Vec::new(),
            serving: None,
            socket,
            listen: cfg.flows.listen_address,
            tls: cfg.flows.tls.clone(),
            generation: None,
        }
    }

    /// Who is who, as the last pass left it (the L7 proxy's flows are named through it).
    pub fn directory(&self) -> Arc<RwLock<Directory>> {
        self.directory.clone()
    }

    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// The NFLOG group policy drops should be logged to: while the drop reader runs.
    pub fn log_drops(&self) -> Option<u16> {
        self.drops.as_ref().filter(|d| !d.is_finished()).map(|_| sluice_iptables::nflog::GROUP)
    }

    /// What the policy chains' NFLOG prefixes stand for, when the policy view changed.
    pub fn refresh_policy(&mut self, view: &sluice_core::policy::PolicyView) {
        if self.policy_generation == Some(view.generation) {
            return;
        }
        self.policy_generation = Some(view.generation);
        let tags = sluice_iptables::policy::drop_tags(view);
        if let Ok(mut t) = self.drop_tags.write() {
            *t = tags;
        }
    }

    /// What each eBPF rule index of `view` stands for. Called before the pass writes `view`'s
    /// rules to the kernel too: a drop or audit the datapath reports right after the write
    /// must find what decided it (CI once saw an audit read in that window attributed to
    /// "(an audit rule changed since this packet)").
    pub fn refresh_rule_tags(&mut self, view: &PolicyView) {
        if !self.running() || self.rule_tags_generation == Some(view.generation) {
            return;
        }
        self.rule_tags_generation = Some(view.generation);
        let tags = sluice_core::flow::drop::tags_by_rule(view);
        if let Ok(mut t) = self.rule_tags.write() {
            *t = tags;
        }
    }

    /// The eBPF datapath's ring buffer: read while flows run and eBPF enforces policy here
    /// (`policy`: drops, audits, verdicts, attributed with the lowering the endpoint maps hold)
    /// or serves the flows (traces of new connections).
    pub fn reconcile_ebpf_drops(&mut self, policy: bool, pin_dir: &std::path::Path, view: &PolicyView) {
        let on = (policy || self.serving == Some(sluice_core::BackendId::EBPF)) && self.running();
        if on {
            self.refresh_rule_tags(view);
        }
        let alive = self.ebpf_drops.as_ref().is_some_and(|h| !h.is_finished());
        if !on {
            self.stop_ebpf_drops();
            self.ebpf_drops_error = None;
            return;
        }
        if alive {
            return;
        }
        self.stop_ebpf_drops();
        match self.start_ebpf_drops(pin_dir) {
            Ok(()) => {
                self.ebpf_drops_error = None;
                tracing::info!(pin_dir = %pin_dir.display(), "flows: the eBPF ring buffer is read (traces, policy events)");
            }
            Err(e) => {
                let why = format!("the eBPF ring buffer is not read (no traces or eBPF policy events): {e}");
                if self.ebpf_drops_error.as_deref() != Some(why.as_str()) {
                    tracing::warn!("{why}");
                }
                self.ebpf_drops_error = Some(why);
            }
        }
    }

    fn start_ebpf_drops(&mut self, pin_dir: &std::path::Path) -> anyhow::Result<()> {
        let mut reader = sluice_ebpf::events::EventReader::open(pin_dir)?;
        self.ebpf_stop.store(false, Ordering::SeqCst);
        let (hub, dir, tags, stop, lost) = (
            self.hub.clone(),
            self.directory.clone(),
            self.rule_tags.clone(),
            self.ebpf_stop.clone(),
            self.lost.clone(),
        );
        let handle = std::thread::Builder::new().name("flows-ebpf-ring".into()).spawn(move || {
            let res = read_loop(
                &stop,
                &hub,
                &lost,
                || {
                    // Short, so a stop (the owner changed) is not held up: the loop joins this thread.
                    let batch = reader.recv_batch(Duration::from_millis(200));
                    // Over the datapath's budget, or the ring was full: lost, and said so.
                    let n = reader.lost_since_last();
                    if n > 0 {
                        lost.fetch_add(n, Ordering::Relaxed);
                        hub.metrics().lost(LostSource::Kernel, n);
                    }
                    batch
                },
                |events| {
                    let (Ok(d), Ok(t)) = (dir.read(), tags.read()) else { return Vec::new() };
                    events.iter().map(|e| ring_flow(&d, &t, e)).collect()
                },
            );
            if let Err(e) = res {
                tracing::warn!(error = %e, "reading the eBPF ring buffer failed; its events are no longer reported");
            }
        })?;
        self.ebpf_drops = Some(handle);
        Ok(())
    }

    /// `netfilter_translates`: some frontend on this node is translated by netfilter (the
    /// iptables backend or kube-proxy). The eBPF programs see those connections before (pod
    /// veth) or after (the backend's veth) the translation, never with it: conntrack knows it.
    pub fn reconcile_netfilter_nat(&mut self, netfilter_translates: bool) {
        let want = netfilter_translates && self.serving == Some(sluice_core::BackendId::EBPF) && self.running();
        let alive = self.nat_reader.as_ref().is_some_and(|h| !h.is_finished());
        if self.nat_stopping.as_ref().is_some_and(|h| h.is_finished()) {
            let _ = self.nat_stopping.take().map(|h| h.join());
        }
        if want == alive {
            return;
        }
        self.stop_nat_reader();
        // One reader at a time (two would record each connection twice): a new one starts once
        // the last has ended, on a later pass.
        if !want || self.nat_stopping.is_some() {
            return;
        }
        self.nat_stop = Arc::new(AtomicBool::new(false));
        let (hub, dir, stop, lost, error) =
            (self.hub.clone(), self.directory.clone(), self.nat_stop.clone(), self.lost.clone(), self.error.clone());
        match sources::spawn_conntrack(hub, dir, stop, lost, error, true) {
            Ok(h) => {
                tracing::info!("flows: conntrack events read for the connections netfilter translates");
                self.nat_reader = Some(h);
            }
            Err(e) => {
                self.set_error(Some(format!("reading conntrack events (netfilter-translated connections): {e:#}")))
            }
        }
    }

    fn stop_nat_reader(&mut self) {
        self.nat_stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.nat_reader.take() {
            self.nat_stopping = Some(h);
        }
    }

    fn stop_ebpf_drops(&mut self) {
        self.ebpf_stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.ebpf_drops.take() {
            let _ = h.join();
        }
    }

    fn running(&self) -> bool {
        match self.serving {
            Some(sluice_core::BackendId::IPTABLES) => self.reader.as_ref().is_some_and(|r| !r.is_finished()),
            Some(_) => !self.servers.is_empty(),
            None => false,
        }
    }

    /// Who is who, for naming flows: rebuilt when the source read changed.
    pub fn refresh(
        &mut self,
        generation: u64,
        node_name: &str,
        state: &ClusterState,
        ipcache: &BTreeMap<Ipv4Addr, Identity>,
    ) {
        if self.generation == Some(generation) {
            return;
        }
        self.generation = Some(generation);
        // A node's addresses: its own, and its pod network's gateway (the first address of its
        // podCIDR, as the CNI plugin assigns it), which its host processes use towards its pods.
        let node_ips: Vec<_> = state
            .nodes
            .values()
            .flat_map(|n| {
                let gw = n.pod_cidr.and_then(|c| c.hosts().next());
                n.internal_ip.into_iter().chain(gw).map(move |ip| (ip, n.name == node_name))
            })
            .collect();
        let identity = |ip| ipcache.get(&ip).map(|i: &Identity| i.0);
        let dir = match self.directory.read() {
            Ok(prev) => Directory::renew(&prev, node_name, &state.pods, &state.services, identity, &node_ips),
            Err(_) => Directory::new(node_name, state.pods.iter().map(|p| &**p), &state.services, identity, &node_ips),
        };
        if let Ok(mut d) = self.directory.write() {
            *d = dir;
        }
        // Every node's Observer, for relays: its InternalIP on this node's TCP port (the
        // cluster runs one config; Hubble's 4244 when none is set here).
        let port = self.listen.map_or(4244, |a| a.port());
        self.hub.set_peers(
            state
                .nodes
                .values()
                .filter_map(|n| n.internal_ip.map(|ip| (n.name.clone(), format!("{ip}:{port}"))))
                .collect(),
        );
    }

    /// Start or stop with the plan (`owner`: the backend that serves flows); a new owner
    /// restarts them on its source. A start that fails is tried again each pass (the socket
    /// path may free up), logged once per distinct error.
    pub async fn reconcile(&mut self, owner: Option<sluice_core::BackendId>) {
        if self.serving.is_some() && self.serving != owner {
            self.shutdown();
            tracing::info!(now = ?owner.map(|b| b.to_string()), "flows stopped (the plan gives them to another backend, or to none)");
        }
        let Some(owner) = owner else { return };
        if self.serving.is_none()
            && let Err(e) = self.start(owner).await
        {
            let e = format!("{e:#}");
            if self.error.lock().ok().and_then(|g| g.clone()).as_deref() != Some(e.as_str()) {
                tracing::warn!(error = %e, "flows: cannot start");
            }
            self.shutdown();
            self.set_error(Some(e));
        }
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.error.lock() {
            *g = e;
        }
    }

    async fn start(&mut self, owner: sluice_core::BackendId) -> anyhow::Result<()> {
        use anyhow::Context;
        let _ = std::fs::remove_file(&self.socket);
        let uds = tokio::net::UnixListener::bind(&self.socket).with_context(|| {
            format!("binding the Observer socket {} (set flows.socket_path to another path)", self.socket.display())
        })?;
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} root-only", self.socket.display()))?;
        let router = self.hub.router().await;
        self.servers.push(tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(uds)).await {
                tracing::warn!(error = %e, "flows: unix socket server ended");
            }
        }));
        if let Some(addr) = self.listen {
            let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("listening on flows.listen_address {addr} (an address of this node, or unset it)")
            })?;
            let router = match &self.tls {
                None => self.hub.router().await,
                Some(t) => {
                    let cfg = sluice_observer::tls::server(&t.cert_file, &t.key_file, t.client_ca_file.as_deref())
                        .context("flows.tls")?;
                    self.hub.router_tls(cfg).await.context("flows.tls")?
                }
            };
            self.servers.push(tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(tcp)).await {
                    tracing::warn!(error = %e, "flows: TCP server ended");
                }
            }));
        }
        self.serving = Some(owner);
        self.start_drops();
        self.set_error(None);
        if owner != sluice_core::BackendId::IPTABLES {
            // The ring reader starts with the pass's eBPF step (`reconcile_ebpf_drops`).
            tracing::info!(socket = %self.socket.display(), tcp = ?self.listen, "flows: Observer API served, traces read from the eBPF ring buffer");
            return Ok(());
        }
        self.stop.store(false, Ordering::SeqCst);
        let (hub, dir, stop, lost, error) =
            (self.hub.clone(), self.directory.clone(), self.stop.clone(), self.lost.clone(), self.error.clone());
        self.reader = Some(sources::spawn_conntrack(hub, dir, stop, lost, error, false)?);
        tracing::info!(socket = %self.socket.display(), tcp = ?self.listen, "flows: Observer API served, conntrack events read");
        Ok(())
    }

    /// Policy drops from NFLOG: optional (flows run without them), reported when unavailable.
    fn start_drops(&mut self) {
        use sluice_iptables::nflog::{GROUP, NflogSocket, drop_flows};
        let sock = NflogSocket::open(GROUP).and_then(|s| s.set_read_timeout(Duration::from_secs(1)).map(|_| s));
        let mut sock = match sock {
            Ok(s) => s,
            Err(e) => {
                let why =
                    format!("policy drops not logged: NFLOG group {GROUP}: {e} (another program may listen on it)");
                tracing::warn!("{why}");
                self.drops_error = Some(why);
                return;
            }
        };
        self.drops_error = None;
        let (hub, dir, tags, stop, lost) =
            (self.hub.clone(), self.directory.clone(), self.drop_tags.clone(), self.stop.clone(), self.lost.clone());
        let spawned = std::thread::Builder::new().name("flows-drops".into()).spawn(move || {
            let res = read_loop(
                &stop,
                &hub,
                &lost,
                || sock.recv_batch(),
                |logged| match (dir.read(), tags.read()) {
                    (Ok(d), Ok(t)) => drop_flows(logged, &t, &d, now_ns()),
                    _ => Vec::new(),
                },
            );
            if let Err(e) = res {
                tracing::warn!(error = %e, "reading policy drops (NFLOG) failed; drops are no longer logged");
            }
        });
        match spawned {
            Ok(h) => self.drops = Some(h),
            Err(e) => self.drops_error = Some(format!("policy drops not logged: {e}")),
        }
    }

    fn shutdown(&mut self) {
        self.serving = None;
        self.stop_ebpf_drops();
        self.stop_nat_reader();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if let Some(r) = self.drops.take() {
            let _ = r.join();
        }
        for s in self.servers.drain(..) {
            s.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    pub fn status(&self) -> FlowsStatus {
        let (flows, capacity, seen, overwritten) = self.hub.counts();
        let running = self.running();
        FlowsStatus {
            running,
            source: if running {
                let mut s = if self.serving == Some(sluice_core::BackendId::IPTABLES) {
                    "conntrack events (netfilter): forwarded connections, with Service translation".to_string()
                } else {
                    "eBPF ring buffer: new connections at the pod veths (from and to the endpoint) and at the node devices for external frontends (from and to the network), socket-LB translations (trace-sock), with Service translation".to_string()
                };
                if let Some(g) = self.log_drops() {
                    s.push_str(&format!("; NFLOG group {g}: policy drops and audits (iptables)"));
                }
                let ring = self.ebpf_drops.as_ref().is_some_and(|h| !h.is_finished());
                if self.serving == Some(sluice_core::BackendId::IPTABLES) {
                    if ring {
                        s.push_str("; eBPF ring buffer: policy drops and audits (eBPF)");
                    }
                } else if ring {
                    s.push_str(", and the policy events of eBPF-enforced endpoints");
                } else {
                    s.push_str(" (not read: see the error)");
                }
                if self.nat_reader.as_ref().is_some_and(|h| !h.is_finished()) {
                    s.push_str("; conntrack events (netfilter): connections netfilter translated (frontends on iptables or kube-proxy), to-stack, with their Service");
                }
                s
            } else {
                String::new()
            },
            socket: running.then(|| self.socket.display().to_string()),
            listen_address: self.listen.filter(|_| running).map(|a| a.to_string()),
            tls: self.tls.as_ref().filter(|_| running && self.listen.is_some()).map(|t| {
                if t.client_ca_file.is_some() { "mutual (client certificates required)" } else { "server certificate" }
                    .to_string()
            }),
            flows,
            capacity,
            seen,
            overwritten,
            lost_in_kernel: self.lost.load(Ordering::Relaxed),
            error: self
                .error
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .or_else(|| self.drops_error.clone().filter(|_| running))
                .or_else(|| self.ebpf_drops_error.clone().filter(|_| running)),
        }
    }
}

impl Drop for Flows {
    fn drop(&mut self) {
        self.shutdown();
    }
}
