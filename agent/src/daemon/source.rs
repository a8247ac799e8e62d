//! The agent's source of cluster state: a manifest directory or the Kubernetes API.

use sluice_config::{Config, SourceKind};

use crate::source::Objects;
use crate::source::kube::KubeSource;
use crate::source::manifests::ManifestDir;

pub enum AgentSource {
    Manifests(ManifestDir, String),
    Kube(KubeSource),
}

pub struct Read {
    /// `None` when unreadable (see errors) or, with `unchanged`, when nothing changed.
    pub objects: Option<Objects>,
    /// Nothing changed since the generation the caller passed: keep using its last state.
    pub unchanged: bool,
    pub generation: u64,
    pub errors: Vec<String>,
    /// A complete, error-free view: after the first one, pruning is allowed.
    pub complete: bool,
    pub stale_secs: Option<u64>,
}

impl AgentSource {
    /// `changed` is notified when the source has news (a watch event, a manifest written), so
    /// the agent acts on it at once; the poll is the fallback.
    pub async fn new(cfg: &Config, changed: std::sync::Arc<tokio::sync::Notify>) -> anyhow::Result<Self> {
        Ok(match cfg.source.kind {
            SourceKind::Manifests => {
                let dir = &cfg.source.manifests_dir;
                if let Err(e) = crate::source::dir_watch::spawn(dir, changed) {
                    tracing::info!(dir = %dir.display(), error = %e, poll_ms = cfg.source.poll_interval_ms, "manifest directory not watched; polled only");
                }
                AgentSource::Manifests(ManifestDir::new(dir.clone()), dir.display().to_string())
            }
            SourceKind::Kubernetes => {
                let client = crate::source::kube::client(cfg.source.kubeconfig.as_deref()).await?;
                let location = cfg
                    .source
                    .kubeconfig
                    .as_ref()
                    .map(|p| format!("API via {}", p.display()))
                    .unwrap_or_else(|| "API (in-cluster or $KUBECONFIG)".into());
                AgentSource::Kube(KubeSource::start(client, location, changed))
            }
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            AgentSource::Manifests(..) => "manifests",
            AgentSource::Kube(_) => "kubernetes",
        }
    }

    pub fn location(&self) -> String {
        match self {
            AgentSource::Manifests(_, l) => l.clone(),
            AgentSource::Kube(k) => k.location.clone(),
        }
    }

    /// Read the source. With `since` (the generation the caller last translated), an unchanged
    /// source returns no objects and `unchanged`, sparing a copy and a translation per loop.
    pub fn read(&mut self, since: Option<u64>) -> Read {
        match self {
            AgentSource::Manifests(m, _) => {
                // Copy the objects out only when something changed since the caller's generation.
                let (readable, errors) = m.scan();
                let complete = readable && errors.is_empty();
                let generation = m.generation();
                let unchanged = readable && since == Some(generation);
                Read {
                    objects: (readable && !unchanged).then(|| m.objects()),
                    unchanged,
                    generation,
                    errors: errors.iter().map(|e| format!("{}: {}", e.path.display(), e.message)).collect(),
                    complete,
                    stale_secs: None,
                }
            }
            AgentSource::Kube(k) => {
                if since.is_some() && since == Some(k.generation()) {
                    let s = k.snapshot_health();
                    return Read {
                        objects: None,
                        unchanged: true,
                        generation: since.unwrap_or(0),
                        errors: s.0,
                        complete: true,
                        stale_secs: s.1,
                    };
                }
                let s = k.snapshot();
                Read {
                    objects: s.objects,
                    unchanged: false,
                    generation: s.generation,
                    errors: s.errors,
                    complete: s.synced,
                    stale_secs: s.stale_secs,
                }
            }
        }
    }
}
