//! The source side of a pass: read the source, translate when it changed, and apply the prune
//! gate: while reads are incomplete (or the source never synced), Services of the last complete
//! read that the current read lacks are kept as they were. The last complete read is saved in
//! the state directory, so an agent restarting with a broken manifest file present keeps
//! serving that file's Services.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use sluice_config::Config;
use sluice_core::gate::{LastComplete, hold_missing};
use sluice_core::{ClusterState, HostPort, Service, ServiceName, SourceSync};

use super::source::AgentSource;
use crate::api::types::SourceStatus;
use crate::source::translate::{Memo, Options, translate_memo};

/// What the source says now, translated and gated.
pub struct Current {
    /// The source generation it was translated from.
    pub generation: u64,
    pub objects: usize,
    pub state: ClusterState,
    /// Services kept by the prune gate (missing from an incomplete read).
    pub held: Vec<ServiceName>,
}

pub struct SourceSide {
    source: AgentSource,
    synced: bool,
    current: Option<Current>,
    opts: Options,
    /// The pods translated before (an unchanged pod is not translated again).
    memo: Memo,
    last_complete: PathBuf,
}

#[derive(Serialize)]
struct LastCompleteRef<'a> {
    services: &'a [Service],
    host_ports: &'a [HostPort],
}

impl SourceSide {
    /// The Kubernetes source, for the writes the agent makes (the migration's node label).
    pub fn kube(&self) -> Option<crate::source::kube::KubeSource> {
        match &self.source {
            AgentSource::Kube(k) => Some(k.clone()),
            AgentSource::Manifests(..) => None,
        }
    }

    pub async fn new(cfg: &Config, changed: std::sync::Arc<tokio::sync::Notify>) -> anyhow::Result<Self> {
        let (lo, hi) = cfg.node_port_range()?;
        let standalone = cfg.source.kind == sluice_config::SourceKind::Manifests;
        Ok(SourceSide {
            source: AgentSource::new(cfg, changed).await?,
            synced: false,
            current: None,
            opts: Options {
                node_port_range: (lo, hi),
                service_cidr: standalone.then_some(cfg.service_cidr),
                cluster_cidr: Some(cfg.cluster_cidr),
            },
            memo: Memo::default(),
            last_complete: cfg.state_dir().join("last-complete.json"),
        })
    }

    pub fn current(&self) -> Option<&Current> {
        self.current.as_ref()
    }

    /// Read the source; translate and gate when it changed. Returns the source's status and
    /// what the engine may do (prune only when synced and complete).
    pub fn read(&mut self) -> (SourceStatus, SourceSync) {
        let t = std::time::Instant::now();
        let read = self.source.read(self.current.as_ref().map(|c| c.generation));
        if !read.unchanged {
            tracing::debug!(ms = t.elapsed().as_secs_f64() * 1000.0, "source read");
        }
        self.synced = self.synced || read.complete;
        let mut status = SourceStatus {
            kind: self.source.kind().into(),
            location: self.source.location(),
            synced: self.synced,
            objects: read.objects.as_ref().map(|o| o.count()).unwrap_or(0),
            last_sync_unix: super::now_unix(),
            errors: read.errors,
            stale_secs: read.stale_secs,
        };
        let sync = SourceSync { synced: self.synced, complete: read.complete };
        if !read.unchanged
            && let Some(objects) = read.objects
        {
            // Conflicts: a frontend served before keeps winning; after a restart, "before" is the
            // last complete read saved on disk.
            let saved;
            let prior = match &self.current {
                Some(c) => c.state.services.as_slice(),
                None => {
                    saved = self.load().ok().flatten().map(|l| l.services).unwrap_or_default();
                    saved.as_slice()
                }
            };
            let t = std::time::Instant::now();
            let mut state = translate_memo(&objects, self.opts, prior, &mut self.memo);
            tracing::debug!(
                ms = t.elapsed().as_secs_f64() * 1000.0,
                services = state.services.len(),
                rejected = state.rejected.len(),
                "translated"
            );
            let held = if sync.prune_allowed() {
                if let Err(e) = self.save(&state) {
                    status.errors.push(format!("{e:#}"));
                }
                Vec::new()
            } else {
                match self.load() {
                    Ok(Some(last)) => hold_missing(&mut state, &last),
                    Ok(None) => Vec::new(),
                    Err(e) => {
                        status.errors.push(format!("{e:#}"));
                        Vec::new()
                    }
                }
            };
            for s in &held {
                tracing::warn!(service = %s, "kept: missing from an incomplete source read (not pruned until a complete read)");
            }
            self.current = Some(Current { generation: read.generation, objects: objects.count(), state, held });
        }
        if let Some(c) = &self.current {
            status.objects = c.objects;
        }
        (status, sync)
    }

    /// Atomically, so a crash mid-write leaves the previous complete read.
    fn save(&self, state: &ClusterState) -> anyhow::Result<()> {
        let path = &self.last_complete;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        // Streamed: at 10k Services the JSON is megabytes, and a buffer of it would stay in the
        // allocator's hands.
        let file = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut w, &LastCompleteRef { services: &state.services, host_ports: &state.host_ports })?;
        std::io::Write::flush(&mut w).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("saving the last complete source read to {}", path.display()))
    }

    fn load(&self) -> anyhow::Result<Option<LastComplete>> {
        let path = &self.last_complete;
        let Some(bytes) = crate::files::read_if_exists(path)? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is unreadable (delete it; it is rewritten after the next complete read)", path.display())
        })?))
    }
}
