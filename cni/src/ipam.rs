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
/// Corrupt records are moved here (named `<ip>.<unix time>`); their addresses stay reserved
/// until an operator deletes the file, since a pod may still use them.
pub const QUARANTINE_DIR: &str = "quarantine";
/// The most addresses one store holds: one file per address, listed on every ADD. A larger
/// subnet is refused with this limit named (node pod CIDRs are /24 to /16 in practice).
pub const MAX_ADDRESSES: u64 = 1 << 16;
/// How long a verb waits for the store's lock before giving up with "try again later".
pub const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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

    /// Hosts of the subnet (the network and broadcast addresses excluded above /31).
    fn host_range(&self) -> (u32, u64) {
        let (net, bcast) = (u32::from(self.subnet.network()), u32::from(self.subnet.broadcast()));
        match self.subnet.prefix_len() {
            31 | 32 => (net, u64::from(bcast - net) + 1),
            _ => (net + 1, u64::from(bcast - net).saturating_sub(1)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn err(&self, path: &Path) -> impl FnOnce(std::io::Error) -> CniError + '_ {
        let path = path.to_path_buf();
        move |source| CniError::Store { path, source }
    }

    /// Take the store's exclusive lock; everything else happens through the guard.
    /// Waits at most [`LOCK_TIMEOUT`]: every verb answers within its deadline, even when
    /// another process holds the lock (hung, or stopped by a debugger).
    pub fn lock(&self) -> Result<Locked<'_>, CniError> {
        let (_, size) = self.host_range();
        if size > MAX_ADDRESSES {
            return Err(CniError::InvalidConfig {
                field: "subnet".into(),
                value: self.subnet.to_string(),
                accepted: format!(
                    "at most {MAX_ADDRESSES} addresses (a /16 or smaller): the IPAM store keeps one record per address"
                ),
            });
        }
        fs::create_dir_all(&self.dir).map_err(self.err(&self.dir))?;
        let path = self.dir.join(LOCK_FILE);
        let mut file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(self.err(&path))?;
        let deadline = std::time::Instant::now() + LOCK_TIMEOUT;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(flock) => return Ok(Locked { store: self, _lock: flock }),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(CniError::Unavailable {
                        reason: format!(
                            "the IPAM store lock {} was held by another process for {}s; try again",
                            path.display(),
                            LOCK_TIMEOUT.as_secs()
                        ),
                    });
                }
                Err((_, errno)) => return Err(CniError::Store { path, source: std::io::Error::from(errno) }),
            }
        }
    }

    /// The `i`-th address pods may get, counting from the subnet's first host (wrapping);
    /// `None` for the gateway. Computed, never listed: a large subnet costs no memory.
    fn candidate(&self, i: u64) -> Option<Ipv4Addr> {
        let (first, size) = self.host_range();
        let ip = Ipv4Addr::from(first.wrapping_add((i % size.max(1)) as u32));
        (ip != self.gateway).then_some(ip)
    }

    /// How many addresses pods may get.
    fn candidate_count(&self) -> u64 {
        let (first, size) = self.host_range();
        let gw = u64::from(u32::from(self.gateway));
        let has_gw = (u64::from(first)..u64::from(first) + size).contains(&gw);
        size - u64::from(has_gw)
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

    /// Every readable record. A corrupt one is quarantined (moved aside, see
    /// [`QUARANTINE_DIR`]) and reported on stderr: it never blocks other pods' ADD or DEL.
    pub fn list(&self) -> Result<Vec<Allocation>, CniError> {
        let dir = &self.store.dir;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(self.store.err(dir))? {
            let entry = entry.map_err(self.store.err(dir))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            match self.read(ip) {
                Ok(a) if a.ip == ip => out.push(a),
                Ok(_) | Err(CniError::StoreCorrupt { .. }) => {
                    let to = self.quarantine(ip)?;
                    eprintln!(
                        "sluice-cni: IPAM record for {ip} is corrupt; moved to {} (its address stays reserved until that file is deleted)",
                        to.display()
                    );
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    fn quarantine(&self, ip: Ipv4Addr) -> Result<PathBuf, CniError> {
        let qdir = self.store.dir.join(QUARANTINE_DIR);
        fs::create_dir_all(&qdir).map_err(self.store.err(&qdir))?;
        let to = qdir.join(format!("{ip}.{}", now_unix()));
        fs::rename(self.path(ip), &to).map_err(self.store.err(&to))?;
        Ok(to)
    }

    /// Addresses of quarantined records (reserved: a pod may still hold them).
    pub fn quarantined(&self) -> Vec<(Ipv4Addr, PathBuf)> {
        let qdir = self.store.dir.join(QUARANTINE_DIR);
        let Ok(rd) = fs::read_dir(&qdir) else { return Vec::new() };
        let mut out: Vec<(Ipv4Addr, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let ip = name.rsplit_once('.').map_or(name.as_str(), |(ip, _)| ip).parse().ok()?;
                Some((ip, e.path()))
            })
            .collect();
        out.sort();
        out
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
        let mut used: BTreeSet<Ipv4Addr> = self.quarantined().into_iter().map(|(ip, _)| ip).collect();
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
        let (first, size) = self.store.host_range();
        let start =
            last.map(|l| u64::from(u32::from(l).wrapping_sub(first))).filter(|i| *i < size).map(|i| i + 1).unwrap_or(0);
        // At most `used + 2` steps: every skipped candidate is used or the gateway.
        let pick = (0..size).filter_map(|i| self.store.candidate(start + i)).find(|ip| !used.contains(ip)).ok_or_else(
            || CniError::PoolExhausted {
                network: self.store.network.clone(),
                subnet: self.store.subnet.to_string(),
                used: used.len(),
            },
        )?;
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
        let used = self.list()?.iter().filter(|a| !a.is_abandoned(now)).count() + self.quarantined().len();
        Ok(usize::try_from(self.store.candidate_count()).unwrap_or(usize::MAX).saturating_sub(used))
    }
}

#[cfg(test)]
#[path = "ipam_tests.rs"]
mod tests;
