//! On-disk IPAM for one network: a directory with one file per allocated address, guarded by
//! an exclusive `flock` so concurrent plugin processes never hand out one address twice.
//!
//! Crash safety: an address is first written as `pending` with the allocating PID; ADD marks it
//! `ready` only after the interface exists. A pending record whose process is gone (or that is
//! older than [`PENDING_TTL_SECS`]) is reclaimed by the next ADD or by GC, so a crash mid-ADD
//! never leaks an address for good.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::CniError;
use crate::spec::Attachment;

pub const PENDING_TTL_SECS: u64 = 300;
const LOCK_FILE: &str = "lock";
const LAST_FILE: &str = "last_reserved_ip";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocState {
    Pending,
    Ready,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
    pub state: AllocState,
    pub pid: u32,
    pub created_unix: u64,
    #[serde(default)]
    pub host_ifname: String,
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub netns: Option<String>,
}

impl Allocation {
    pub fn attachment(&self) -> Attachment {
        Attachment { container_id: self.container_id.clone(), ifname: self.ifname.clone() }
    }

    /// A pending record whose owner can no longer finish it.
    fn is_abandoned(&self, now: u64) -> bool {
        self.state == AllocState::Pending
            && (!pid_alive(self.pid) || now.saturating_sub(self.created_unix) > PENDING_TTL_SECS)
    }
}

fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    network: String,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
}

/// Who asks for an address.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub container_id: String,
    pub ifname: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub netns: Option<String>,
}

impl Store {
    pub fn new(data_dir: &Path, network: &str, subnet: Ipv4Net, gateway: Ipv4Addr) -> Self {
        Store { dir: data_dir.join(network), network: network.into(), subnet, gateway }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn err(&self, path: &Path) -> impl FnOnce(std::io::Error) -> CniError + '_ {
        let path = path.to_path_buf();
        move |source| CniError::Store { path, source }
    }

    /// Take the store's exclusive lock; everything else happens through the guard.
    pub fn lock(&self) -> Result<Locked<'_>, CniError> {
        fs::create_dir_all(&self.dir).map_err(self.err(&self.dir))?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(self.err(&path))?;
        let flock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| CniError::Store { path: path.clone(), source: std::io::Error::from(errno) })?;
        Ok(Locked { store: self, _lock: flock })
    }

    /// Addresses pods may get: the subnet's hosts minus the gateway.
    fn candidates(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.subnet.hosts().filter(move |ip| *ip != self.gateway)
    }
}

pub struct Locked<'a> {
    store: &'a Store,
    _lock: Flock<File>,
}

impl Locked<'_> {
    fn path(&self, ip: Ipv4Addr) -> PathBuf {
        self.store.dir.join(ip.to_string())
    }

    pub fn list(&self) -> Result<Vec<Allocation>, CniError> {
        let dir = &self.store.dir;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(self.store.err(dir))? {
            let entry = entry.map_err(self.store.err(dir))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            out.push(self.read(ip)?);
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    fn read(&self, ip: Ipv4Addr) -> Result<Allocation, CniError> {
        let path = self.path(ip);
        let bytes = fs::read(&path).map_err(self.store.err(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| CniError::StoreCorrupt { path, source })
    }

    fn write(&self, a: &Allocation) -> Result<(), CniError> {
        // Write-then-rename: a crash leaves either the old record or the new one, never half.
        let path = self.path(a.ip);
        let tmp = self.store.dir.join(format!(".{}.tmp", a.ip));
        let bytes = serde_json::to_vec(a).map_err(|source| CniError::StoreCorrupt { path: path.clone(), source })?;
        fs::write(&tmp, bytes).map_err(self.store.err(&tmp))?;
        fs::rename(&tmp, &path).map_err(self.store.err(&path))
    }

    fn remove(&self, ip: Ipv4Addr) -> Result<(), CniError> {
        let path = self.path(ip);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(CniError::Store { path, source: e }),
            _ => Ok(()),
        }
    }

    /// Reserve an address for (container, ifname) as `pending`. A repeated request for the same
    /// attachment gets its existing address back.
    pub fn allocate(&self, req: &Request) -> Result<Allocation, CniError> {
        let now = now_unix();
        let existing = self.list()?;
        if let Some(a) = existing.iter().find(|a| a.container_id == req.container_id && a.ifname == req.ifname) {
            let mut a = a.clone();
            a.state = AllocState::Pending;
            a.pid = std::process::id();
            a.created_unix = now;
            self.write(&a)?;
            return Ok(a);
        }
        let mut used = BTreeSet::new();
        for a in &existing {
            if a.is_abandoned(now) {
                self.remove(a.ip)?;
            } else {
                used.insert(a.ip);
            }
        }
        // Round-robin from the last reserved address, as host-local does, so a just-freed
        // address is not handed straight to the next pod (stale conntrack, stale peers).
        let last: Option<Ipv4Addr> =
            fs::read_to_string(self.store.dir.join(LAST_FILE)).ok().and_then(|s| s.trim().parse().ok());
        let candidates: Vec<Ipv4Addr> = self.store.candidates().collect();
        let start = last.and_then(|l| candidates.iter().position(|c| *c == l)).map(|i| i + 1).unwrap_or(0);
        let pick = (0..candidates.len())
            .map(|i| candidates[(start + i) % candidates.len()])
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| CniError::PoolExhausted {
                network: self.store.network.clone(),
                subnet: self.store.subnet.to_string(),
                used: used.len(),
            })?;
        let a = Allocation {
            ip: pick,
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            state: AllocState::Pending,
            pid: std::process::id(),
            created_unix: now,
            host_ifname: String::new(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            netns: req.netns.clone(),
        };
        self.write(&a)?;
        let last_path = self.store.dir.join(LAST_FILE);
        fs::write(&last_path, pick.to_string()).map_err(self.store.err(&last_path))?;
        Ok(a)
    }

    /// Mark an allocation complete once its interface exists.
    pub fn commit(&self, mut a: Allocation, host_ifname: &str) -> Result<Allocation, CniError> {
        a.state = AllocState::Ready;
        a.host_ifname = host_ifname.into();
        self.write(&a)?;
        Ok(a)
    }

    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Allocation>, CniError> {
        Ok(self.list()?.into_iter().find(|a| a.container_id == container_id && a.ifname == ifname))
    }

    /// Free whatever (container, ifname) holds; returns what was freed (possibly nothing).
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Allocation>, CniError> {
        let freed: Vec<_> =
            self.list()?.into_iter().filter(|a| a.container_id == container_id && a.ifname == ifname).collect();
        for a in &freed {
            self.remove(a.ip)?;
        }
        Ok(freed)
    }

    /// Free every allocation not in `valid` (and abandoned pending ones); returns what was freed.
    pub fn gc(&self, valid: &[Attachment]) -> Result<Vec<Allocation>, CniError> {
        let now = now_unix();
        let valid: BTreeSet<_> = valid.iter().collect();
        let mut freed = Vec::new();
        for a in self.list()? {
            let keep = valid.contains(&a.attachment()) && !a.is_abandoned(now);
            if !keep {
                self.remove(a.ip)?;
                freed.push(a);
            }
        }
        Ok(freed)
    }

    pub fn free_count(&self) -> Result<usize, CniError> {
        let now = now_unix();
        let used = self.list()?.iter().filter(|a| !a.is_abandoned(now)).count();
        Ok(self.store.candidates().count().saturating_sub(used))
    }
}

#[cfg(test)]
#[path = "ipam_tests.rs"]
mod tests;
