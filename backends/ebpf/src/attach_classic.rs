//! Classic tc attach, for kernels without TCX (before 6.6): a clsact qdisc on the device and one
//! `cls_bpf` direct-action filter per hook, at sluice's own priority and handle, named after the
//! program (`sluice_*`). That triple is how sluice tells its filters from another tc user's
//! (Cilium, Calico leftovers, an operator's own): a filter at sluice's priority and handle with
//! another name is reported and never touched.
//!
//! Netlink filters cannot be pinned, so the record of what sluice attached lives in bpffs beside
//! the pinned maps, as directories (bpffs holds no plain files): `<pin_dir>/tc/<ifname>/ingress`,
//! `.../egress`, and `.../own-qdisc` when sluice created the clsact qdisc. A restarted agent
//! finds its filters there and replaces their programs in place (same priority and handle; the
//! kernel swaps the program atomically), so a `kill -9` leaves no gap. Releasing a device
//! deletes sluice's filters and the qdisc only if sluice created it and nothing else uses it.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::programs::SchedClassifier;

use crate::datapath::{Datapath, DatapathError};
use crate::tc_netlink::{self as nl, Hook, Slot};

/// sluice's filter priority on every clsact hook (lower runs first: Cilium's 1 runs before).
pub const PRIORITY: u16 = 0x5100;
/// sluice's filter handle within that priority.
pub const HANDLE: u32 = 0x5100;
/// Every sluice program name starts with this.
const PREFIX: &str = "sluice_";
const OWN_QDISC: &str = "own-qdisc";

fn hook_of(dir: &str) -> Hook {
    if dir == "egress" { Hook::Egress } else { Hook::Ingress }
}

fn record(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join("tc").join(ifname)
}

/// A filter in sluice's slot that is not sluice's, if any (reported, never touched).
fn foreign(ifindex: u32, hook: Hook) -> std::io::Result<Option<nl::Filter>> {
    Ok(nl::filters(ifindex, hook)?.into_iter().find(|f| {
        f.priority == PRIORITY && f.handle == HANDLE && !f.name.as_deref().is_some_and(|n| n.starts_with(PREFIX))
    }))
}

impl Datapath {
    /// Attach (or swap this process's programs into) sluice's filters on `ifname`.
    pub(crate) fn attach_classic(&mut self, ifname: &str, progs: &[(&'static str, &str)]) -> Result<(), DatapathError> {
        let first = progs.first().map(|p| p.0).unwrap_or("sluice");
        let err = |prog: &'static str, detail: String| DatapathError::Attach { prog, target: ifname.into(), detail };
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(|e| err(first, format!("no such device: {e}")))?;
        let rec = record(&self.pin_dir, ifname);
        std::fs::create_dir_all(&rec).map_err(|source| DatapathError::Io { path: rec.clone(), source })?;
        match nl::slot(ifindex).map_err(|e| err(first, format!("listing qdiscs: {e}")))? {
            Slot::Clsact => {}
            Slot::Empty => {
                match nl::add_clsact(ifindex) {
                    Ok(()) => mkdir(&rec.join(OWN_QDISC))?,
                    // Another tc user added it a moment ago: use it, it is not ours to remove.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(err(first, format!("adding a clsact qdisc: {e}"))),
                }
            }
            Slot::Other(kind) => {
                return Err(err(
                    first,
                    format!(
                        "the device has a `{kind}` qdisc where clsact goes; classic tc attach needs clsact (`tc qdisc del dev {ifname} ingress` frees the slot), or use TCX (Linux 6.6+)"
                    ),
                ));
            }
        }
        // Every hook checked before any is written: a foreign filter refuses the device whole.
        for (name, dir) in progs {
            if let Some(f) = foreign(ifindex, hook_of(dir)).map_err(|e| err(name, format!("listing filters: {e}")))? {
                return Err(err(
                    name,
                    format!(
                        "a `{}` filter named {:?} sits at sluice's priority {PRIORITY} handle {HANDLE:#x} on {dir}; it is not sluice's and is left alone (remove it, or use TCX)",
                        f.kind,
                        f.name.unwrap_or_default()
                    ),
                ));
            }
        }
        for (name, dir) in progs {
            let prog: &mut SchedClassifier = self
                .bpf
                .program_mut(name)
                .ok_or_else(|| err(name, "missing".into()))?
                .try_into()
                .map_err(|e| err(name, format!("{e}")))?;
            let fd = prog.fd().map_err(|e| err(name, format!("{e}")))?;
            nl::replace_filter(ifindex, hook_of(dir), PRIORITY, HANDLE, fd.as_fd(), name)
                .map_err(|e| err(name, format!("cls_bpf filter on {dir}: {e}")))?;
            mkdir(&rec.join(dir))?;
        }
        Ok(())
    }
}

fn mkdir(p: &Path) -> Result<(), DatapathError> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(DatapathError::Io { path: p.into(), source }),
    }
}

/// Devices with a classic-tc record.
pub fn attached(pin_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(pin_dir.join("tc"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect()
}

/// Delete sluice's filters on `ifname` (those still named sluice_*), then the qdisc if sluice
/// created it and no filter is left on it, then the record. A device already gone took its
/// filters with it. Returns how many kernel objects were removed.
pub fn release(pin_dir: &Path, ifname: &str) -> usize {
    let rec = record(pin_dir, ifname);
    let mut n = 0;
    if let Ok(ifindex) = nix::net::if_::if_nametoindex(ifname) {
        for dir in ["ingress", "egress"] {
            let hook = hook_of(dir);
            let ours = nl::filters(ifindex, hook).unwrap_or_default().into_iter().any(|f| {
                f.priority == PRIORITY && f.handle == HANDLE && f.name.as_deref().is_some_and(|n| n.starts_with(PREFIX))
            });
            if ours && nl::del_filter(ifindex, hook, PRIORITY, HANDLE).is_ok() {
                n += 1;
            }
        }
        let empty =
            [Hook::Ingress, Hook::Egress].into_iter().all(|h| nl::filters(ifindex, h).is_ok_and(|f| f.is_empty()));
        if rec.join(OWN_QDISC).exists() && empty && nl::del_clsact(ifindex).is_ok() {
            n += 1;
        }
    }
    for sub in ["ingress", "egress", OWN_QDISC] {
        let _ = std::fs::remove_dir(rec.join(sub));
    }
    let _ = std::fs::remove_dir(&rec);
    n
}

/// Release every device with a record (`sluice cleanup`, or the backend leaving classic tc).
pub fn release_all(pin_dir: &Path) -> usize {
    let n = attached(pin_dir).iter().map(|i| release(pin_dir, i)).sum();
    let _ = std::fs::remove_dir(pin_dir.join("tc"));
    n
}
