//! The `kubernetes` source: kube-rs watchers over Nodes, Pods (cluster-wide: identities and the
//! IP-to-identity map need every pod), Services, EndpointSlices, Namespaces, NetworkPolicies and
//! the Sluice policy CRDs, each retried with backoff, feeding one [`KubeStore`]. The CRDs must be
//! installed (deploy/sluice-crds.yaml): until they are listed the source is not in sync and
//! nothing is pruned, so a missing CRD never opens a policy.
//!
//! During an API outage the store keeps its last view (the dataplane stays as it is) and the
//! source reports itself stale with the outage's age; when the watchers come back they relist
//! and the agent converges.

pub mod node_label;
pub mod store;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Config};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

pub use store::KubeStore;

use super::Objects;

#[derive(Debug, Default)]
struct Health {
    /// Kind -> (first failure of the current outage, last error).
    failing: std::collections::BTreeMap<&'static str, (Instant, String)>,
}

#[derive(Clone)]
pub struct KubeSource {
    store: Arc<Mutex<KubeStore>>,
    health: Arc<Mutex<Health>>,
    pub location: String,
    /// For the writes the agent makes (the migration's node label).
    client: Client,
}

/// What every watcher writes to: the store, the health record, and the agent's wake-up (an
/// applied event is acted on now, not at the next poll).
#[derive(Clone)]
struct Sinks {
    store: Arc<Mutex<KubeStore>>,
    health: Arc<Mutex<Health>>,
    changed: Arc<tokio::sync::Notify>,
}

/// What one read of the source gives the agent.
pub struct Snapshot {
    /// `None` until every kind has been listed once.
    pub objects: Option<Objects>,
    pub generation: u64,
    pub synced: bool,
    pub errors: Vec<String>,
    /// Seconds since the API became unreachable (None while healthy).
    pub stale_secs: Option<u64>,
}

fn spawn_watch<K>(
    api: Api<K>,
    cfg: Config,
    sinks: Sinks,
    kind: &'static str,
    pick: fn(&mut KubeStore) -> &mut store::KindStore<K>,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, cfg).default_backoff().boxed();
        while let Some(item) = events.next().await {
            match item {
                Ok(ev) => {
                    if let Ok(mut s) = sinks.store.lock() {
                        pick(&mut s).apply(ev);
                    }
                    sinks.changed.notify_one();
                    if let Ok(mut h) = sinks.health.lock()
                        && h.failing.remove(kind).is_some()
                    {
                        tracing::info!(kind, "Kubernetes API reachable again");
                    }
                }
                Err(e) => {
                    tracing::warn!(kind, error = %e, "watch failed; retrying with backoff, dataplane unchanged");
                    if let Ok(mut h) = sinks.health.lock() {
                        let since = h.failing.get(kind).map(|(t, _)| *t).unwrap_or_else(Instant::now);
                        h.failing.insert(kind, (since, e.to_string()));
                    }
                }
            }
        }
    });
}

impl KubeSource {
    /// The Sluice policy CRDs: (kind, plural).
    pub const CRDS: [(&'static str, &'static str); 2] = [
        ("SluiceNetworkPolicy", "sluicenetworkpolicies"),
        ("SluiceClusterwideNetworkPolicy", "sluiceclusterwidenetworkpolicies"),
    ];

    /// Start the watchers.
    pub fn start(client: Client, location: String, changed: Arc<tokio::sync::Notify>) -> Self {
        let store = Arc::new(Mutex::new(KubeStore::default()));
        let health = Arc::new(Mutex::new(Health::default()));
        let sinks = Sinks { store: store.clone(), health: health.clone(), changed };
        let all = Config::default();
        spawn_watch::<Node>(Api::all(client.clone()), all.clone(), sinks.clone(), "Node", |s| &mut s.nodes);
        spawn_watch::<Pod>(Api::all(client.clone()), all.clone(), sinks.clone(), "Pod", |s| &mut s.pods);
        spawn_watch::<Namespace>(Api::all(client.clone()), all.clone(), sinks.clone(), "Namespace", |s| {
            &mut s.namespaces
        });
        let crd = |kind: &str, plural: &str| {
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("sluice.io", "v1", kind), plural)
        };
        let (snp, scnp) = (crd(Self::CRDS[0].0, Self::CRDS[0].1), crd(Self::CRDS[1].0, Self::CRDS[1].1));
        spawn_watch::<DynamicObject>(
            Api::all_with(client.clone(), &snp),
            all.clone(),
            sinks.clone(),
            "SluiceNetworkPolicy",
            |s| &mut s.sluice_policies,
        );
        spawn_watch::<DynamicObject>(
            Api::all_with(client.clone(), &scnp),
            all.clone(),
            sinks.clone(),
            "SluiceClusterwideNetworkPolicy",
            |s| &mut s.sluice_clusterwide_policies,
        );
        spawn_watch::<Service>(Api::all(client.clone()), all.clone(), sinks.clone(), "Service", |s| &mut s.services);
        spawn_watch::<EndpointSlice>(Api::all(client.clone()), all.clone(), sinks.clone(), "EndpointSlice", |s| {
            &mut s.endpoint_slices
        });
        spawn_watch::<NetworkPolicy>(Api::all(client.clone()), all, sinks.clone(), "NetworkPolicy", |s| {
            &mut s.network_policies
        });
        KubeSource { store, health, location, client }
    }

    /// Errors and staleness only (no objects).
    pub fn snapshot_health(&self) -> (Vec<String>, Option<u64>) {
        match self.health.lock() {
            Ok(h) => (
                h.failing.iter().map(|(k, (_, e))| format!("{k} watch: {e}")).collect(),
                h.failing.values().map(|(t, _)| t.elapsed().as_secs()).max(),
            ),
            Err(_) => (Vec::new(), None),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let (objects, synced, generation) = match self.store.lock() {
            Ok(s) if s.synced() => (Some(s.objects()), true, s.generation()),
            Ok(s) => (None, false, s.generation()),
            _ => (None, false, 0),
        };
        let (errors, stale_secs) = match self.health.lock() {
            Ok(h) => (
                h.failing.iter().map(|(k, (_, e))| format!("{k} watch: {e}")).collect(),
                h.failing.values().map(|(t, _)| t.elapsed().as_secs()).max(),
            ),
            Err(_) => (Vec::new(), None),
        };
        Snapshot { objects, synced, errors, stale_secs, generation }
    }

    /// The store's generation without building the objects.
    pub fn generation(&self) -> u64 {
        self.store.lock().map(|s| s.generation()).unwrap_or(0)
    }
}

/// A client from `kubeconfig` (a file), else the usual inference: in-cluster service account,
/// then $KUBECONFIG / ~/.kube/config.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    use anyhow::Context;
    let cfg = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes credentials: not in a cluster and no kubeconfig (set source.kubeconfig)")?,
    };
    Client::try_from(cfg).context("building the Kubernetes client")
}
