//! The live datapath: programs attached to pod veths through pinned TCX links, and the service
//! maps kept in step with the desired services.
//!
//! Restart safety: maps and links are pinned under the node's pin directory, so forwarding goes
//! on while no agent runs. A new agent loads the programs again, atomically swaps them into the
//! existing links (`attach_to_link`), takes service IDs back from the pinned service map, and
//! only then rewrites what differs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::HashMap;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use sluice_core::Service;

use crate::maps::{BackendKey, BackendVal, Entries, FlowKey, NatVal, SvcKey, SvcVal};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Load(#[from] crate::loader::LoadError),
    #[error("map {map}: {detail}")]
    Map { map: &'static str, detail: String },
    #[error("attaching {prog} to {ifname}: {detail}")]
    Attach { prog: &'static str, ifname: String, detail: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

const PROGS: [(&str, TcAttachType, &str); 2] =
    [("sluice_from_pod", TcAttachType::Ingress, "ingress"), ("sluice_to_pod", TcAttachType::Egress, "egress")];

pub struct Datapath {
    bpf: Ebpf,
    pin_dir: PathBuf,
    /// Service IDs by frontend, restored from the pinned map at open.
    ids: BTreeMap<SvcKey, u32>,
    written: Entries,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| DatapathError::Map { map, detail: e.to_string() }
}

impl Datapath {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let mut bpf = crate::loader::load(pin_dir)?;
        let mut written = Entries::default();
        let mut ids = BTreeMap::new();
        {
            let svc: HashMap<_, SvcKey, SvcVal> = HashMap::try_from(
                bpf.map_mut("sluice_svc")
                    .ok_or(DatapathError::Map { map: "sluice_svc", detail: "missing from object".into() })?,
            )
            .map_err(map_err("sluice_svc"))?;
            for (k, v) in svc.iter().flatten() {
                ids.insert(k, v.service_id);
                written.services.insert(k, v);
            }
        }
        {
            let be: HashMap<_, BackendKey, BackendVal> = HashMap::try_from(
                bpf.map_mut("sluice_backends")
                    .ok_or(DatapathError::Map { map: "sluice_backends", detail: "missing".into() })?,
            )
            .map_err(map_err("sluice_backends"))?;
            for (k, v) in be.iter().flatten() {
                written.backends.insert(k, v);
            }
        }
        Ok(Datapath { bpf, pin_dir: pin_dir.to_path_buf(), ids, written })
    }

    fn link_path(&self, ifname: &str, dir: &str) -> PathBuf {
        self.pin_dir.join("links").join(format!("{ifname}-{dir}"))
    }

    /// Attach both programs to a pod's host veth (or swap the new programs into pinned links).
    pub fn attach(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let links = self.pin_dir.join("links");
        std::fs::create_dir_all(&links).map_err(|source| DatapathError::Io { path: links.clone(), source })?;
        for (name, ty, dir) in PROGS {
            let path = self.link_path(ifname, dir);
            let err = |detail: String| DatapathError::Attach { prog: name, ifname: ifname.into(), detail };
            let prog: &mut SchedClassifier = self
                .bpf
                .program_mut(name)
                .ok_or_else(|| err("missing".into()))?
                .try_into()
                .map_err(|e| err(format!("{e}")))?;
            match PinnedLink::from_pin(&path) {
                Ok(old) => {
                    let link: SchedClassifierLink = FdLink::from(old).try_into().map_err(|e| err(format!("{e}")))?;
                    let id = prog.attach_to_link(link).map_err(|e| err(format!("{e}")))?;
                    // The pin keeps the link; our handle may go.
                    let _ = prog.take_link(id).map_err(|e| err(format!("{e}")))?;
                }
                Err(_) => {
                    let id = prog
                        .attach_with_options(ifname, ty, TcAttachOptions::TcxOrder(LinkOrder::default()))
                        .map_err(|e| err(format!("{e}")))?;
                    let link = prog.take_link(id).map_err(|e| err(format!("{e}")))?;
                    let fd: FdLink = link.try_into().map_err(|e| err(format!("{e}")))?;
                    fd.pin(&path).map_err(|e| err(format!("pinning {}: {e}", path.display())))?;
                }
            }
        }
        Ok(())
    }

    /// Interfaces with pinned links.
    pub fn attached(&self) -> BTreeSet<String> {
        let dir = self.pin_dir.join("links");
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.rsplit_once('-').map(|(i, _)| i.to_string())))
            .collect()
    }

    /// Detach from interfaces not in `keep` (deleted pods): unpin, which releases the link.
    pub fn detach_others(&mut self, keep: &BTreeSet<String>) -> Vec<String> {
        let mut gone = Vec::new();
        for ifname in self.attached().difference(keep) {
            for (_, _, dir) in PROGS {
                let path = self.link_path(ifname, dir);
                if let Ok(l) = PinnedLink::from_pin(&path) {
                    let _ = l.unpin();
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
            gone.push(ifname.clone());
        }
        gone
    }

    /// Map entries for these services, with IDs kept stable.
    pub fn encode(&mut self, services: &[Service]) -> Entries {
        let mut by_name = BTreeMap::new();
        let fresh = crate::maps::encode(services, &mut by_name);
        // Re-key: an existing frontend keeps its ID; new ones get the next free IDs.
        let mut next = self.ids.values().max().copied().unwrap_or(0);
        let mut remap = BTreeMap::new();
        let mut out = Entries::default();
        for (k, v) in &fresh.services {
            let id = *self.ids.entry(*k).or_insert_with(|| {
                next += 1;
                next
            });
            remap.insert(v.service_id, id);
            out.services.insert(*k, SvcVal { service_id: id, ..*v });
        }
        for (k, v) in &fresh.backends {
            if let Some(id) = remap.get(&k.service_id) {
                out.backends.insert(BackendKey { service_id: *id, slot: k.slot }, *v);
            }
        }
        self.ids.retain(|k, _| out.services.contains_key(k));
        out
    }

    /// Bring the maps to `want`: backends first, then services (a frontend never points at a
    /// slot that is not there yet), then stale services, then stale backends. Flows whose
    /// backend went away lose their conntrack entries (UDP would black-hole otherwise).
    pub fn sync(&mut self, want: Entries) -> Result<usize, DatapathError> {
        let mut changes = 0;
        let gone_backends: BTreeSet<(u32, u16)> = self
            .written
            .backends
            .values()
            .map(|b| (b.addr, b.port))
            .filter(|b| !want.backends.values().any(|w| (w.addr, w.port) == *b))
            .collect();
        {
            let mut be: HashMap<_, BackendKey, BackendVal> = HashMap::try_from(
                self.bpf
                    .map_mut("sluice_backends")
                    .ok_or(DatapathError::Map { map: "sluice_backends", detail: "missing".into() })?,
            )
            .map_err(map_err("sluice_backends"))?;
            for (k, v) in &want.backends {
                if self.written.backends.get(k) != Some(v) {
                    be.insert(*k, *v, 0).map_err(map_err("sluice_backends"))?;
                    changes += 1;
                }
            }
        }
        {
            let mut svc: HashMap<_, SvcKey, SvcVal> = HashMap::try_from(
                self.bpf
                    .map_mut("sluice_svc")
                    .ok_or(DatapathError::Map { map: "sluice_svc", detail: "missing".into() })?,
            )
            .map_err(map_err("sluice_svc"))?;
            for (k, v) in &want.services {
                if self.written.services.get(k) != Some(v) {
                    svc.insert(*k, *v, 0).map_err(map_err("sluice_svc"))?;
                    changes += 1;
                }
            }
            for k in self.written.services.keys().filter(|k| !want.services.contains_key(k)) {
                let _ = svc.remove(k);
                changes += 1;
            }
        }
        {
            let mut be: HashMap<_, BackendKey, BackendVal> = HashMap::try_from(
                self.bpf
                    .map_mut("sluice_backends")
                    .ok_or(DatapathError::Map { map: "sluice_backends", detail: "missing".into() })?,
            )
            .map_err(map_err("sluice_backends"))?;
            for k in self.written.backends.keys().filter(|k| !want.backends.contains_key(k)) {
                let _ = be.remove(k);
                changes += 1;
            }
        }
        if !gone_backends.is_empty() {
            for map in ["sluice_ct", "sluice_rnat"] {
                let mut ct: HashMap<_, FlowKey, NatVal> = HashMap::try_from(
                    self.bpf.map_mut(map).ok_or(DatapathError::Map { map: "sluice_ct", detail: "missing".into() })?,
                )
                .map_err(map_err("sluice_ct"))?;
                let stale: Vec<FlowKey> = ct
                    .iter()
                    .flatten()
                    .filter(|(k, v)| {
                        gone_backends.contains(&(v.addr, v.port)) || gone_backends.contains(&(k.saddr, k.sport))
                    })
                    .map(|(k, _)| k)
                    .collect();
                for k in stale {
                    let _ = ct.remove(&k);
                }
            }
        }
        self.written = want;
        Ok(changes)
    }

    /// What the service maps hold: (frontend, service, backends by slot).
    pub fn entries(&self) -> &Entries {
        &self.written
    }
}

/// Remove every sluice BPF object under `pin_dir` (links detach when unpinned).
pub fn remove_all(pin_dir: &Path) -> Result<usize, std::io::Error> {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(pin_dir.join("links")) {
        for e in rd.flatten() {
            if let Ok(l) = PinnedLink::from_pin(e.path()) {
                let _ = l.unpin();
            } else {
                let _ = std::fs::remove_file(e.path());
            }
            n += 1;
        }
    }
    if pin_dir.exists() {
        for e in std::fs::read_dir(pin_dir)?.flatten() {
            if e.path().is_file() || e.file_type().is_ok_and(|t| !t.is_dir()) {
                std::fs::remove_file(e.path())?;
                n += 1;
            }
        }
        let _ = std::fs::remove_dir(pin_dir.join("links"));
        std::fs::remove_dir(pin_dir)?;
    }
    Ok(n)
}
