//! Attaching the programs so they outlive the agent: tc on pod veths and node devices (pinned
//! TCX links; on kernels without TCX, classic tc filters: see `attach_classic`), cgroup v2
//! sock_addr hooks for socket LB. Every link is pinned
//! under `<pin_dir>/links/` (tc: `<ifname>-<ingress|egress>`) or `<pin_dir>/cgroup/<program>`.
//!
//! Takeover on restart: a tc link pinned by an earlier agent gets this process's program swapped
//! in atomically (`attach_to_link`); a cgroup link is replaced make-before-break (the new link is
//! attached before the old one is unpinned; while both run, the second sees an already translated
//! address and does nothing).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType};

use sluice_core::TcAttach;

use crate::datapath::{Datapath, DatapathError};

/// Programs on a pod's host veth.
const POD_PROGS: [(&str, TcAttachType, &str); 2] =
    [("sluice_from_pod", TcAttachType::Ingress, "ingress"), ("sluice_to_pod", TcAttachType::Egress, "egress")];
/// Program on a node device (the underlay).
const DEVICE_PROGS: [(&str, TcAttachType, &str); 1] = [("sluice_from_net", TcAttachType::Ingress, "ingress")];

impl Datapath {
    fn link_path(&self, ifname: &str, dir: &str) -> PathBuf {
        self.pin_dir.join("links").join(format!("{ifname}-{dir}"))
    }

    /// Attach the pod programs to a pod's host veth (or swap them into what an earlier agent
    /// attached), on the node's tc attach path.
    pub fn attach(&mut self, ifname: &str, path: TcAttach) -> Result<(), DatapathError> {
        self.attach_on(ifname, &POD_PROGS, path)
    }

    /// Attach the node-device program (NodePort, ExternalIPs, LoadBalancer, HostPort from outside).
    pub fn attach_device(&mut self, ifname: &str, path: TcAttach) -> Result<(), DatapathError> {
        self.attach_on(ifname, &DEVICE_PROGS, path)
    }

    /// Attach on `path`, then release what the other path held on this interface (the kernel
    /// runs both while they overlap; the second sees translated packets and passes them), so a
    /// node moving between TCX and classic tc is never without programs.
    fn attach_on(
        &mut self,
        ifname: &str,
        progs: &[(&'static str, TcAttachType, &str)],
        path: TcAttach,
    ) -> Result<(), DatapathError> {
        match path {
            TcAttach::Tcx => {
                self.attach_tc(ifname, progs)?;
                crate::attach_classic::release(&self.pin_dir, ifname);
            }
            TcAttach::Classic => {
                let named: Vec<(&'static str, &str)> = progs.iter().map(|(n, _, d)| (*n, *d)).collect();
                self.attach_classic(ifname, &named)?;
                self.unpin_links(ifname);
            }
            TcAttach::None => {
                return Err(DatapathError::Attach {
                    prog: progs.first().map(|p| p.0).unwrap_or("sluice"),
                    target: ifname.into(),
                    detail: "this node has no tc attach path (neither TCX nor clsact + cls_bpf); the plan should not give eBPF tc features here".into(),
                });
            }
        }
        Ok(())
    }

    fn unpin_links(&self, ifname: &str) {
        for dir in ["ingress", "egress"] {
            let path = self.link_path(ifname, dir);
            if let Ok(l) = PinnedLink::from_pin(&path) {
                let _ = l.unpin();
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    fn attach_tc(&mut self, ifname: &str, progs: &[(&'static str, TcAttachType, &str)]) -> Result<(), DatapathError> {
        let links = self.pin_dir.join("links");
        std::fs::create_dir_all(&links).map_err(|source| DatapathError::Io { path: links.clone(), source })?;
        for (name, ty, dir) in progs {
            let path = self.link_path(ifname, dir);
            let err = |detail: String| DatapathError::Attach { prog: name, target: ifname.into(), detail };
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
                        .attach_with_options(ifname, *ty, TcAttachOptions::TcxOrder(LinkOrder::default()))
                        .map_err(|e| err(format!("{e}")))?;
                    let link = prog.take_link(id).map_err(|e| err(format!("{e}")))?;
                    let fd: FdLink = link.try_into().map_err(|e| err(format!("{e}")))?;
                    fd.pin(&path).map_err(|e| err(format!("pinning {}: {e}", path.display())))?;
                }
            }
        }
        Ok(())
    }

    /// Attach the socket-LB programs to a cgroup v2 directory (host processes in it and below).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let dir = self.pin_dir.join("cgroup");
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::Io { path: dir.clone(), source })?;
        let target = cgroup.display().to_string();
        let cg = std::fs::File::open(cgroup).map_err(|source| DatapathError::Io { path: cgroup.into(), source })?;
        for name in crate::loader::SOCK_PROGRAMS {
            let err = |detail: String| DatapathError::Attach { prog: name, target: target.clone(), detail };
            let path = dir.join(name);
            let prog: &mut CgroupSockAddr = self
                .bpf
                .program_mut(name)
                .ok_or_else(|| err("missing".into()))?
                .try_into()
                .map_err(|e| err(format!("{e}")))?;
            // Single = flags 0, which link_create requires; links of one cgroup coexist anyway.
            let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(|e| err(format!("{e}")))?;
            let link = prog.take_link(id).map_err(|e| err(format!("{e}")))?;
            let fd: FdLink = link.try_into().map_err(|e| err(format!("{e}")))?;
            // The new link runs before the old one goes: no moment without socket LB.
            if let Ok(old) = PinnedLink::from_pin(&path) {
                let _ = old.unpin();
            }
            fd.pin(&path).map_err(|e| err(format!("pinning {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Release the socket-LB links (the feature moved away from eBPF).
    pub fn detach_cgroup(&mut self) -> usize {
        let mut n = 0;
        for name in crate::loader::SOCK_PROGRAMS {
            if let Ok(l) = PinnedLink::from_pin(self.pin_dir.join("cgroup").join(name)) {
                let _ = l.unpin();
                n += 1;
            }
        }
        n
    }

    /// Whether socket-LB links are pinned.
    pub fn cgroup_attached(&self) -> bool {
        self.pin_dir.join("cgroup").join(crate::loader::SOCK_PROGRAMS[0]).exists()
    }

    /// Interfaces with sluice's tc programs (pod veths and node devices), on either path.
    pub fn attached(&self) -> BTreeSet<String> {
        let dir = self.pin_dir.join("links");
        let mut all: BTreeSet<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.rsplit_once('-').map(|(i, _)| i.to_string())))
            .collect();
        all.extend(crate::attach_classic::attached(&self.pin_dir));
        all
    }

    /// Detach from interfaces not in `keep` (deleted pods, devices no longer used): unpin, which
    /// releases the link.
    pub fn detach_others(&mut self, keep: &BTreeSet<String>) -> Vec<String> {
        let mut gone = Vec::new();
        for ifname in self.attached().difference(keep) {
            self.unpin_links(ifname);
            crate::attach_classic::release(&self.pin_dir, ifname);
            gone.push(ifname.clone());
        }
        gone
    }
}

/// Remove every sluice BPF object under `pin_dir` (links detach when unpinned).
pub fn remove_all(pin_dir: &Path) -> Result<usize, std::io::Error> {
    let mut n = crate::attach_classic::release_all(pin_dir);
    for sub in ["links", "cgroup"] {
        if let Ok(rd) = std::fs::read_dir(pin_dir.join(sub)) {
            for e in rd.flatten() {
                if let Ok(l) = PinnedLink::from_pin(e.path()) {
                    let _ = l.unpin();
                } else {
                    let _ = std::fs::remove_file(e.path());
                }
                n += 1;
            }
        }
    }
    if pin_dir.exists() {
        for e in std::fs::read_dir(pin_dir)?.flatten() {
            if e.file_type().is_ok_and(|t| !t.is_dir()) {
                std::fs::remove_file(e.path())?;
                n += 1;
            }
        }
        for sub in ["links", "cgroup"] {
            let _ = std::fs::remove_dir(pin_dir.join(sub));
        }
        std::fs::remove_dir(pin_dir)?;
    }
    Ok(n)
}
