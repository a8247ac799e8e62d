//! The agent's own Prometheus metrics (`sluice_*`, served on `metrics.listen_address`, Cilium's
//! agent port being 9962) and the serving of Hubble's flow metrics (`metrics.hubble_listen_address`).
//! Values come from what each pass reported and what the status shows: nothing is measured twice.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sluice_config::Config;
use sluice_core::dataplane::Usage;
use sluice_core::{Engine, PassReport};
use sluice_observer::metrics::{Render, render, serve};
use sluice_observer::server::Hub;

use crate::api::types::{AgentStatus, MetricsStatus};

type Labels = Vec<(&'static str, String)>;

fn latency() -> Histogram {
    // 0.5 ms to ~16 s: one unchanged pass to a 10k-Service program from empty.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

struct Families {
    reconcile_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    reconcile_errors: Family<Labels, Counter>,
    kernel_changes: Family<Labels, Counter>,
    map_entries: Family<Labels, Gauge>,
    map_capacity: Family<Labels, Gauge>,
    kernel_objects: Family<Labels, Gauge>,
    feature_served: Family<Labels, Gauge>,
    services: Gauge,
    rejected_objects: Gauge,
    identities: Gauge,
    policies: Gauge,
    isolated_endpoints: Family<Labels, Gauge>,
    source_synced: Gauge,
}

pub struct Metrics {
    f: Arc<Families>,
    registry: Arc<Registry>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// Bind errors of the last attempt (shown in the status until the bind succeeds).
    pub errors: Vec<String>,
    /// Bind errors already logged (each once).
    logged: Vec<String>,
    pub status: MetricsStatus,
}

impl Metrics {
    pub fn new() -> Self {
        let f = Families {
            reconcile_seconds: Family::new_with_constructor(latency),
            reconcile_errors: Family::default(),
            kernel_changes: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            kernel_objects: Family::default(),
            feature_served: Family::default(),
            services: Gauge::default(),
            rejected_objects: Gauge::default(),
            identities: Gauge::default(),
            policies: Gauge::default(),
            isolated_endpoints: Family::default(),
            source_synced: Gauge::default(),
        };
        let mut r = Registry::with_prefix("sluice");
        r.register(
            "reconcile_duration_seconds",
            "Time one backend took to converge its kernel state, per reconcile",
            f.reconcile_seconds.clone(),
        );
        r.register("reconcile_errors", "Per-object errors a backend reported", f.reconcile_errors.clone());
        r.register("kernel_changes", "Kernel objects a backend wrote or removed", f.kernel_changes.clone());
        r.register("bpf_map_entries", "Entries sluice wrote into a BPF map", f.map_entries.clone());
        r.register("bpf_map_capacity", "Entries a BPF map can hold", f.map_capacity.clone());
        r.register("kernel_objects", "Kernel objects a backend holds, by kind", f.kernel_objects.clone());
        r.register("feature_served", "1 when the backend's kernel state serves the feature", f.feature_served.clone());
        r.register("services", "Services read from the source", f.services.clone());
        r.register("rejected_objects", "Objects refused by validation", f.rejected_objects.clone());
        r.register("identities", "Cluster security identities in use", f.identities.clone());
        r.register("policies", "Network policies in force", f.policies.clone());
        r.register(
            "isolated_endpoints",
            "Local endpoints isolated by policy, per direction",
            f.isolated_endpoints.clone(),
        );
        r.register("source_synced", "1 once the source has synced", f.source_synced.clone());
        Metrics {
            f: Arc::new(f),
            registry: Arc::new(r),
            servers: Vec::new(),
            errors: Vec::new(),
            logged: Vec::new(),
            status: MetricsStatus::default(),
        }
    }

    /// Start the configured listeners (none unless an address is set). Called every pass: a
    /// bind that failed (the address not on the node yet, the port taken) is tried again, and
    /// its error stays in the status until it succeeds.
    pub async fn ensure_served(&mut self, cfg: &Config, hub: &Arc<Hub>) {
        self.errors.clear();
        if let Some(addr) = cfg.metrics.listen_address.filter(|_| self.status.agent.is_none()) {
            let registry = self.registry.clone();
            let r: Render = Arc::new(move || render(&registry));
            if self.start(serve(addr, "metrics.listen_address", r).await) {
                self.status.agent = Some(addr.to_string());
            }
        }
        if let Some(addr) = cfg.metrics.hubble_listen_address.filter(|_| self.status.hubble.is_none()) {
            let hub = hub.clone();
            let r: Render = Arc::new(move || hub.metrics().render());
            if self.start(serve(addr, "metrics.hubble_listen_address", r).await) {
                self.status.hubble = Some(addr.to_string());
            }
        }
        self.status.enabled = hub.metrics().enabled();
    }

    fn start(&mut self, res: Result<tokio::task::JoinHandle<()>, String>) -> bool {
        match res {
            Ok(h) => {
                tracing::info!("metrics served");
                self.servers.push(h);
                true
            }
            Err(e) => {
                if !self.logged.contains(&e) {
                    tracing::warn!(error = %e, "metrics not served (tried again each pass)");
                    self.logged.push(e.clone());
                }
                self.errors.push(e);
                false
            }
        }
    }

    pub fn record_pass(&self, pass: &PassReport) {
        for c in &pass.backend_calls {
            let l = vec![("backend", c.id.as_str().to_string())];
            self.f.reconcile_seconds.get_or_create(&l).observe(c.seconds);
            self.f.reconcile_errors.get_or_create(&l).inc_by(c.errors as u64);
            self.f.kernel_changes.get_or_create(&l).inc_by(c.changes as u64);
        }
    }

    pub fn record_state(&self, engine: &Engine, st: &AgentStatus) {
        let set = |g: &Gauge, v: usize| {
            g.set(v as i64);
        };
        for b in engine.backends() {
            let id = b.id();
            for u in b.usage() {
                match u {
                    Usage::MapFill { map, entries, capacity } => {
                        self.f.map_entries.get_or_create(&vec![("map", map.clone())]).set(entries as i64);
                        self.f.map_capacity.get_or_create(&vec![("map", map)]).set(capacity as i64);
                    }
                    Usage::Objects { kind, count } => {
                        let l = vec![("backend", id.as_str().to_string()), ("kind", kind)];
                        self.f.kernel_objects.get_or_create(&l).set(count as i64);
                    }
                }
            }
            let serving = engine.serving(id);
            for f in sluice_core::Feature::ALL {
                let l = vec![("feature", f.name().to_string()), ("backend", id.as_str().to_string())];
                self.f.feature_served.get_or_create(&l).set(i64::from(serving.contains(&f)));
            }
        }
        set(&self.f.services, st.services);
        set(&self.f.rejected_objects, st.rejected.len());
        set(&self.f.identities, st.policy.identities);
        set(&self.f.policies, st.policy.policies.len());
        for (dir, n) in [("ingress", st.policy.ingress_isolated), ("egress", st.policy.egress_isolated)] {
            set(&self.f.isolated_endpoints.get_or_create(&vec![("direction", dir.to_string())]), n);
        }
        set(&self.f.source_synced, usize::from(st.source.synced));
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        for s in self.servers.drain(..) {
            s.abort();
        }
    }
}
