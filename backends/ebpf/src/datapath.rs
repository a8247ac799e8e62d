//! The live datapath: the service maps kept in step with the desired services (attachment of
//! the programs is in `attach.rs`).
//!
//! Restart safety: maps and links are pinned under the node's pin directory, so forwarding goes
//! on while no agent runs. A new agent loads the programs again, takes the links over, takes
//! service IDs back from the pinned service map, and only then rewrites what differs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::loader::Loaded;
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap};
use sluice_core::{HostPort, Service};

pub use crate::attach::remove_all;
use crate::maps::{
    BackendKey, BackendVal, Entries, FlowKey, MaglevKey, NatVal, NodeCfg, NodeCtx, SnatVal, SrcRangeKey, SvcKey, SvcVal,
};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Load(#[from] crate::loader::LoadError),
    #[error("map {map}: {detail}")]
    Map { map: &'static str, detail: String },
    #[error("attaching {prog} to {target}: {detail}")]
    Attach { prog: &'static str, target: String, detail: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub struct Datapath {
    pub(crate) bpf: Loaded,
    pub(crate) pin_dir: PathBuf,
    /// Service IDs by frontend, restored from the pinned map at open.
    ids: BTreeMap<SvcKey, u32>,
    written: Entries,
    /// The services last written, for incremental updates (only changed ones are re-encoded):
    /// a fingerprint and the frontend keys of each, not a copy of every Service.
    last: BTreeMap<sluice_core::ServiceName, Written>,
    /// The node context and hostPorts of the last write: a change re-encodes everything.
    last_ctx: Option<NodeCtx>,
    last_host_ports: Vec<HostPort>,
    /// Pinned maps whose size differs from the config's (kept until `sluice cleanup`).
    pub size_mismatches: Vec<SizeMismatch>,
    /// What the kernel refused in the last update (`Datapath::refused`).
    refused: Vec<(Option<sluice_core::ServiceName>, DatapathError)>,
    /// The socket-lookup program runs in this network namespace (`policy_l7::steer`); its link
    /// lives as long as this process holds the program.
    pub(crate) l7_lookup: bool,
}

/// A pinned map whose size is not the configured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeMismatch {
    pub map: &'static str,
    pub pinned: u32,
    pub configured: u32,
}

/// Service ids whose entries the kernel refused in one update, with the first refusal.
type Refusals = BTreeMap<u32, DatapathError>;

fn refuse(refused: &mut Refusals, id: u32, map: &'static str, e: aya::maps::MapError) {
    refused.entry(id).or_insert(DatapathError::Map { map, detail: e.to_string() });
}

/// What the datapath remembers of a written Service.
struct Written {
    fingerprint: u64,
    keys: Vec<SvcKey>,
}

fn written(s: &Service, keys: Vec<SvcKey>) -> Written {
    Written { fingerprint: s.fingerprint(), keys }
}

pub(crate) fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| DatapathError::Map { map, detail: e.to_string() }
}

pub(crate) fn missing(map: &'static str) -> DatapathError {
    DatapathError::Map { map, detail: "missing from the BPF object".into() }
}

/// One of the object's hash maps (plain or LRU), typed.
fn hash_map<'a, K: aya::Pod, V: aya::Pod>(
    bpf: &'a mut Loaded,
    name: &'static str,
) -> Result<HashMap<&'a mut aya::maps::MapData, K, V>, DatapathError> {
    let map = bpf.map_mut(name).ok_or(missing(name))?;
    HashMap::try_from(map).map_err(map_err(name))
}

/// The source-range trie; keys are (service id, address) under a prefix length.
fn ranges_map(bpf: &mut Loaded) -> Result<LpmTrie<&mut aya::maps::MapData, [u32; 2], u8>, DatapathError> {
    let map = bpf.map_mut("sluice_src_ranges").ok_or(missing("sluice_src_ranges"))?;
    LpmTrie::try_from(map).map_err(map_err("sluice_src_ranges"))
}

fn lpm_key(k: &SrcRangeKey) -> LpmKey<[u32; 2]> {
    LpmKey::new(k.prefixlen, [k.service_id, k.addr])
}

impl Datapath {
    pub fn open(pin_dir: &Path, sizes: &sluice_core::MapSizes) -> Result<Self, DatapathError> {
        let mut bpf = crate::loader::load_with(pin_dir, sizes)?;
        let mut size_mismatches = Vec::new();
        for (name, want) in crate::loader::map_sizes(sizes) {
            let have = bpf.map(name).and_then(|m| match m {
                aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d) | aya::maps::Map::LpmTrie(d) => {
                    d.info().ok().map(|i| i.max_entries())
                }
                aya::maps::Map::Array(d) => d.info().ok().map(|i| i.max_entries()),
                _ => None,
            });
            if let Some(have) = have.filter(|h| *h != want) {
                size_mismatches.push(SizeMismatch { map: name, pinned: have, configured: want });
            }
        }
        let mut written = Entries::default();
        let mut ids = BTreeMap::new();
        {
            let svc: HashMap<_, SvcKey, SvcVal> = hash_map(&mut bpf, "sluice_svc")?;
            for (k, v) in svc.iter().flatten() {
                ids.insert(k, v.service_id);
                written.services.insert(k, v);
            }
        }
        {
            let be: HashMap<_, BackendKey, BackendVal> = hash_map(&mut bpf, "sluice_backends")?;
            for (k, v) in be.iter().flatten() {
                written.backends.insert(k, v);
            }
        }
        for (k, _) in ranges_map(&mut bpf)?.iter().flatten() {
            let [service_id, addr] = k.data();
            written.ranges.insert(SrcRangeKey { prefixlen: k.prefix_len(), service_id, addr });
        }
        for (k, slot) in hash_map::<MaglevKey, u32>(&mut bpf, "sluice_maglev")?.iter().flatten() {
            let t = written.maglev.entry(k.service_id).or_default();
            if t.len() <= k.index as usize {
                t.resize(k.index as usize + 1, 0);
            }
            t[k.index as usize] = slot;
        }
        Ok(Datapath {
            bpf,
            pin_dir: pin_dir.to_path_buf(),
            ids,
            written,
            last: BTreeMap::new(),
            last_ctx: None,
            last_host_ports: Vec::new(),
            size_mismatches,
            refused: Vec::new(),
            l7_lookup: false,
        })
    }

    /// The SNAT address for flows forwarded to other nodes.
    fn write_node(&mut self, ctx: &NodeCtx) -> Result<(), DatapathError> {
        let map = self.bpf.map_mut("sluice_node").ok_or(missing("sluice_node"))?;
        let mut arr: Array<_, NodeCfg> = Array::try_from(map).map_err(map_err("sluice_node"))?;
        let node_ip = ctx.node_ips.first().map(|ip| crate::maps::addr(*ip)).unwrap_or(0);
        arr.set(0, NodeCfg { node_ip, maglev_m: ctx.maglev_m.unwrap_or(0), flags: ctx.flags(), pad: 0 }, 0)
            .map_err(map_err("sluice_node"))?;
        // Socket LB is for this netns's processes (the node's); 0 (a kernel without
        // SO_NETNS_COOKIE) leaves it on every socket of the cgroup.
        let map = self.bpf.map_mut("sluice_hostns").ok_or(missing("sluice_hostns"))?;
        let mut arr: Array<_, u64> = Array::try_from(map).map_err(map_err("sluice_hostns"))?;
        arr.set(0, crate::sock_netns::own_netns_cookie().unwrap_or(0), 0).map_err(map_err("sluice_hostns"))
    }

    /// Map entries for exactly these services (IDs kept stable; IDs of frontends no longer
    /// present are forgotten).
    fn encode(&mut self, services: &[Service], host_ports: &[HostPort], ctx: &NodeCtx) -> (Entries, Vec<Vec<SvcKey>>) {
        let (out, keys) = self.encode_keep_ids(services, host_ports, ctx);
        self.ids.retain(|k, _| out.services.contains_key(k));
        (out, keys)
    }

    /// Bring the maps to `want`: frontends that go away first (with their slots), then backends,
    /// then services (a frontend never points at a slot that is not there yet), then the stale
    /// slots of frontends that stay. UDP flows whose
    /// backend went away lose their conntrack entries (they would black-hole otherwise; TCP
    /// re-picks on every SYN, so its stale entries are harmless and the scan is skipped).
    /// An entry the kernel refuses fails only its service (by id, in `refused`): that service's
    /// frontends keep what they had, every other service is written. `written` follows each
    /// write, so it is what the maps hold either way.
    fn sync(&mut self, want: Entries, refused: &mut Refusals) -> Result<usize, DatapathError> {
        let mut changes = 0;
        let udp_ids: BTreeSet<u32> =
            self.written.services.iter().filter(|(k, _)| k.proto == 17).map(|(_, v)| v.service_id).collect();
        let still: BTreeSet<(u32, u16)> = want.backends.values().map(|w| (w.addr, w.port)).collect();
        let gone_backends: BTreeSet<(u32, u16)> = self
            .written
            .backends
            .iter()
            .filter(|(k, _)| udp_ids.contains(&k.service_id))
            .map(|(_, b)| (b.addr, b.port))
            .filter(|b| !still.contains(b))
            .collect();
        // Frontends that go away entirely leave first, with their slots (at a map's capacity the
        // new ones fit only then); frontends that stay get new slots before their entry changes.
        let want_ids: BTreeSet<u32> = want.services.values().map(|v| v.service_id).collect();
        let gone: Vec<SvcKey> =
            self.written.services.keys().filter(|k| !want.services.contains_key(k)).copied().collect();
        {
            let mut svc: HashMap<_, SvcKey, SvcVal> = hash_map(&mut self.bpf, "sluice_svc")?;
            for k in gone {
                let _ = svc.remove(&k);
                self.written.services.remove(&k);
                changes += 1;
            }
        }
        {
            let orphans: Vec<BackendKey> =
                self.written.backends.keys().filter(|k| !want_ids.contains(&k.service_id)).copied().collect();
            let mut be: HashMap<_, BackendKey, BackendVal> = hash_map(&mut self.bpf, "sluice_backends")?;
            for k in orphans {
                let _ = be.remove(&k);
                self.written.backends.remove(&k);
                changes += 1;
            }
        }
        changes += self.write_backends(&want.backends, refused)?;
        changes += self.write_services(&want.services, refused)?;
        {
            let stale: Vec<BackendKey> = self
                .written
                .backends
                .keys()
                .filter(|k| want_ids.contains(&k.service_id) && !want.backends.contains_key(k))
                .filter(|k| !refused.contains_key(&k.service_id))
                .copied()
                .collect();
            let mut be: HashMap<_, BackendKey, BackendVal> = hash_map(&mut self.bpf, "sluice_backends")?;
            for k in stale {
                let _ = be.remove(&k);
                self.written.backends.remove(&k);
                changes += 1;
            }
        }
        {
            let stale: Vec<SrcRangeKey> = self.written.ranges.difference(&want.ranges).copied().collect();
            let mut lpm = ranges_map(&mut self.bpf)?;
            for k in want.ranges.difference(&self.written.ranges) {
                match lpm.insert(&lpm_key(k), 1, 0) {
                    Ok(()) => changes += 1,
                    Err(e) => refuse(refused, k.service_id, "sluice_src_ranges", e),
                }
            }
            for k in &stale {
                let _ = lpm.remove(&lpm_key(k));
                changes += 1;
            }
            let ok = |k: &SrcRangeKey| !refused.contains_key(&k.service_id);
            self.written.ranges = want.ranges.iter().copied().filter(ok).collect();
        }
        changes += self.write_maglev(&want.maglev, self.written.maglev.keys().copied().collect(), refused)?;
        if !gone_backends.is_empty() {
            self.flush_flows(&gone_backends)?;
        }
        Ok(changes)
    }

    /// Write the backend slots that differ; a refused one fails its service.
    fn write_backends(
        &mut self,
        want: &BTreeMap<BackendKey, BackendVal>,
        refused: &mut Refusals,
    ) -> Result<usize, DatapathError> {
        let mut changes = 0;
        let mut be: HashMap<_, BackendKey, BackendVal> = hash_map(&mut self.bpf, "sluice_backends")?;
        for (k, v) in want {
            if self.written.backends.get(k) == Some(v) {
                continue;
            }
            match be.insert(*k, *v, 0) {
                Ok(()) => {
                    self.written.backends.insert(*k, *v);
                    changes += 1;
                }
                Err(e) => refuse(refused, k.service_id, "sluice_backends", e),
            }
        }
        Ok(changes)
    }

    /// Write the frontend entries that differ, but none of a service already refused (its
    /// entry would point at slots that are not all there).
    fn write_services(
        &mut self,
        want: &BTreeMap<SvcKey, SvcVal>,
        refused: &mut Refusals,
    ) -> Result<usize, DatapathError> {
        let mut changes = 0;
        let mut svc: HashMap<_, SvcKey, SvcVal> = hash_map(&mut self.bpf, "sluice_svc")?;
        for (k, v) in want {
            if self.written.services.get(k) == Some(v) || refused.contains_key(&v.service_id) {
                continue;
            }
            match svc.insert(*k, *v, 0) {
                Ok(()) => {
                    self.written.services.insert(*k, *v);
                    changes += 1;
                }
                Err(e) => refuse(refused, v.service_id, "sluice_svc", e),
            }
        }
        Ok(changes)
    }

    /// Incremental form of `encode` + `sync`: only services that changed since the last call are
    /// re-encoded and written (a single endpoint change at 10k services touches one service).
    /// The first call after `open` compares against what the pinned maps hold.
    /// A change of the node context (owned features, node addresses) or of the hostPorts (rare:
    /// pods with hostPorts come and go) re-encodes everything.
    pub fn update(
        &mut self,
        services: &[Service],
        host_ports: &[HostPort],
        ctx: &NodeCtx,
    ) -> Result<usize, DatapathError> {
        if self.last.is_empty() || self.last_ctx.as_ref() != Some(ctx) || self.last_host_ports != host_ports {
            if self.last_ctx.as_ref() != Some(ctx) {
                self.write_node(ctx)?;
            }
            let (want, keys) = self.encode(services, host_ports, ctx);
            let mut refused = Refusals::new();
            let n = self.sync(want, &mut refused)?;
            self.last = services.iter().zip(keys).map(|(s, k)| (s.name.clone(), written(s, k))).collect();
            self.last_ctx = Some(ctx.clone());
            self.last_host_ports = host_ports.to_vec();
            self.note_refusals(services, refused);
            return Ok(n);
        }
        // One merge pass over both name-ordered lists (sources deliver Services sorted by name;
        // anything else is sorted first): no per-call maps, no lookups, one name comparison per
        // Service. Comparing the unchanged Services is the whole cost of a single change.
        let sorted;
        let cur: &[Service] = if services.is_sorted_by(|a, b| a.name <= b.name) {
            services
        } else {
            let mut v = services.to_vec();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            sorted = v;
            &sorted
        };
        let mut changed: Vec<&Service> = Vec::new();
        let mut removed: Vec<sluice_core::ServiceName> = Vec::new();
        let mut old = self.last.iter().peekable();
        for s in cur {
            loop {
                match old.peek() {
                    Some((name, prev)) => match (*name).cmp(&s.name) {
                        std::cmp::Ordering::Less => {
                            removed.push((*name).clone());
                            old.next();
                        }
                        std::cmp::Ordering::Equal => {
                            if prev.fingerprint != s.fingerprint() {
                                changed.push(s);
                            }
                            old.next();
                            break;
                        }
                        std::cmp::Ordering::Greater => {
                            changed.push(s);
                            break;
                        }
                    },
                    None => {
                        changed.push(s);
                        break;
                    }
                }
            }
        }
        removed.extend(old.map(|(n, _)| n.clone()));
        if changed.is_empty() && removed.is_empty() {
            return Ok(0);
        }
        // The frontends of changed/removed services, before and after.
        let old_keys: BTreeSet<SvcKey> = changed
            .iter()
            .map(|s| &s.name)
            .chain(removed.iter())
            .filter_map(|n| self.last.get(n))
            .flat_map(|w| w.keys.iter().copied())
            .collect();
        let changed_owned: Vec<Service> = changed.iter().map(|s| (*s).clone()).collect();
        let (fresh, keys) = self.encode_keep_ids(&changed_owned, &[], ctx);
        for r in &removed {
            self.last.remove(r);
        }
        // Each record holds the service's frontends now, nothing it had: a frontend it lost may
        // belong to another service since (a conflict's winner changed), and a later change or
        // removal of this one must not take it away. (A refused service is retried through its
        // fingerprint; its frontends that stay are in its new keys.)
        for (s, k) in changed_owned.iter().zip(keys) {
            self.last.insert(s.name.clone(), written(s, k));
        }
        let mut refused = Refusals::new();
        let n = match self.sync_delta(&old_keys, fresh, &mut refused) {
            Ok(n) => n,
            Err(e) => {
                // What the maps hold is not known exactly: the next update writes everything.
                self.last.clear();
                return Err(e);
            }
        };
        self.note_refusals(&changed_owned, refused);
        Ok(n)
    }

    /// Name the services the kernel refused entries of: each is retried on the next update
    /// (its fingerprint is forgotten), everything else stays as written.
    fn note_refusals(&mut self, services: &[Service], mut refused: Refusals) {
        self.refused.clear();
        if refused.is_empty() {
            return;
        }
        for s in services {
            let Some(w) = self.last.get_mut(&s.name) else { continue };
            let ids: BTreeSet<u32> = w.keys.iter().filter_map(|k| self.ids.get(k)).copied().collect();
            if let Some(id) = ids.iter().find(|id| refused.contains_key(id)) {
                w.fingerprint = 0;
                if let Some(e) = refused.remove(id) {
                    self.refused.push((Some(s.name.clone()), e));
                }
                refused.retain(|id, _| !ids.contains(id));
            }
        }
        // Entries of no service (hostPorts): the next full write retries them.
        if !refused.is_empty() {
            self.last_host_ports.clear();
        }
        self.refused.extend(refused.into_values().map(|e| (None, e)));
    }

    /// What the kernel refused in the last update: per service (`None`: hostPort entries).
    pub fn refused(&self) -> &[(Option<sluice_core::ServiceName>, DatapathError)] {
        &self.refused
    }

    /// Apply one delta: the touched services' old frontends (`old`) are replaced by `fresh`.
    fn sync_delta(
        &mut self,
        old: &BTreeSet<SvcKey>,
        fresh: Entries,
        refused: &mut Refusals,
    ) -> Result<usize, DatapathError> {
        let mut changes = 0;
        // Old backend slots of the touched services (BackendKey sorts by service id first).
        let mut old_backends: Vec<(BackendKey, BackendVal)> = Vec::new();
        let mut udp_gone = BTreeSet::new();
        for k in old {
            if let Some(v) = self.written.services.get(k) {
                let lo = BackendKey { service_id: v.service_id, slot: 0 };
                let hi = BackendKey { service_id: v.service_id, slot: u32::MAX };
                for (bk, bv) in self.written.backends.range(lo..=hi) {
                    old_backends.push((*bk, *bv));
                    if k.proto == 17 && !fresh.backends.values().any(|f| (f.addr, f.port) == (bv.addr, bv.port)) {
                        udp_gone.insert((bv.addr, bv.port));
                    }
                }
            }
        }
        let old_ids: BTreeSet<u32> =
            old.iter().filter_map(|k| self.written.services.get(k)).map(|v| v.service_id).collect();
        // Frontends that go away entirely leave first, with their backend slots: at a map's
        // capacity a new frontend only fits once they are gone, and nothing points at what they
        // leave. (Changed frontends keep make-before-break: new slots, then the entry, then the
        // old slots.)
        let gone: Vec<SvcKey> = old.iter().filter(|k| !fresh.services.contains_key(k)).copied().collect();
        let gone_ids: BTreeSet<u32> =
            gone.iter().filter_map(|k| self.written.services.get(k)).map(|v| v.service_id).collect();
        let mut svc: HashMap<_, SvcKey, SvcVal> = hash_map(&mut self.bpf, "sluice_svc")?;
        for k in &gone {
            let _ = svc.remove(k);
            self.written.services.remove(k);
            self.ids.remove(k);
            changes += 1;
        }
        let mut be: HashMap<_, BackendKey, BackendVal> = hash_map(&mut self.bpf, "sluice_backends")?;
        for (k, _) in
            old_backends.iter().filter(|(k, _)| gone_ids.contains(&k.service_id) && !fresh.backends.contains_key(k))
        {
            let _ = be.remove(k);
            self.written.backends.remove(k);
            changes += 1;
        }
        changes += self.write_backends(&fresh.backends, refused)?;
        changes += self.write_services(&fresh.services, refused)?;
        let mut lpm = ranges_map(&mut self.bpf)?;
        let mut ranges_failed = BTreeSet::new();
        for k in fresh.ranges.difference(&self.written.ranges) {
            match lpm.insert(&lpm_key(k), 1, 0) {
                Ok(()) => changes += 1,
                Err(e) => {
                    refuse(refused, k.service_id, "sluice_src_ranges", e);
                    ranges_failed.insert(*k);
                }
            }
        }
        let stale: Vec<SrcRangeKey> = self
            .written
            .ranges
            .iter()
            .filter(|k| old_ids.contains(&k.service_id) && !fresh.ranges.contains(k))
            .copied()
            .collect();
        for k in &stale {
            let _ = lpm.remove(&lpm_key(k));
            self.written.ranges.remove(k);
            changes += 1;
        }
        self.written.ranges.extend(fresh.ranges.iter().filter(|k| !ranges_failed.contains(*k)).copied());
        let stale_tables: BTreeSet<u32> =
            old_ids.iter().filter(|id| self.written.maglev.contains_key(id)).copied().collect();
        changes += self.write_maglev(&fresh.maglev, stale_tables, refused)?;
        let mut be: HashMap<_, BackendKey, BackendVal> = hash_map(&mut self.bpf, "sluice_backends")?;
        // Old slots of a refused service stay: its frontends still point at them.
        let stale = |k: &BackendKey| {
            !gone_ids.contains(&k.service_id) && !fresh.backends.contains_key(k) && !refused.contains_key(&k.service_id)
        };
        for (k, _) in old_backends.iter().filter(|(k, _)| stale(k)) {
            let _ = be.remove(k);
            self.written.backends.remove(k);
            changes += 1;
        }
        if !udp_gone.is_empty() {
            self.flush_flows(&udp_gone)?;
        }
        Ok(changes)
    }

    /// Write Maglev tables that differ from what is written; remove the tables of `candidates`
    /// that `tables` no longer has. Only changed buckets are written.
    fn write_maglev(
        &mut self,
        tables: &BTreeMap<u32, Vec<u32>>,
        candidates: BTreeSet<u32>,
        refused: &mut Refusals,
    ) -> Result<usize, DatapathError> {
        let mut changes = 0;
        let mut map: HashMap<_, MaglevKey, u32> = hash_map(&mut self.bpf, "sluice_maglev")?;
        let mut failed = BTreeSet::new();
        for (id, table) in tables {
            let old = self.written.maglev.get(id);
            for (i, slot) in table.iter().enumerate() {
                if old.and_then(|o| o.get(i)) != Some(slot) {
                    match map.insert(MaglevKey { service_id: *id, index: i as u32 }, *slot, 0) {
                        Ok(()) => changes += 1,
                        Err(e) => {
                            refuse(refused, *id, "sluice_maglev", e);
                            failed.insert(*id);
                            break;
                        }
                    }
                }
            }
            // A shrunk table (smaller lb_maglev_table_size) loses its tail.
            for i in table.len()..old.map_or(0, Vec::len) {
                let _ = map.remove(&MaglevKey { service_id: *id, index: i as u32 });
            }
        }
        for id in candidates.iter().filter(|id| !tables.contains_key(id)) {
            for i in 0..self.written.maglev.get(id).map_or(0, Vec::len) {
                let _ = map.remove(&MaglevKey { service_id: *id, index: i as u32 });
                changes += 1;
            }
        }
        for id in &candidates {
            self.written.maglev.remove(id);
        }
        // A table half written is rewritten whole on the retry.
        self.written.maglev.extend(tables.iter().filter(|(k, _)| !failed.contains(*k)).map(|(k, v)| (*k, v.clone())));
        Ok(changes)
    }

    /// Delete conntrack, reverse-NAT and SNAT entries of flows to these backends.
    fn flush_flows(&mut self, gone: &BTreeSet<(u32, u16)>) -> Result<(), DatapathError> {
        let mut snat: HashMap<_, FlowKey, SnatVal> = hash_map(&mut self.bpf, "sluice_snat")?;
        let stale: Vec<FlowKey> =
            snat.iter().flatten().filter(|(k, _)| gone.contains(&(k.saddr, k.sport))).map(|(k, _)| k).collect();
        for k in stale {
            let _ = snat.remove(&k);
        }
        for map in ["sluice_ct", "sluice_rnat"] {
            let mut ct: HashMap<_, FlowKey, NatVal> = hash_map(&mut self.bpf, map)?;
            let stale: Vec<FlowKey> = ct
                .iter()
                .flatten()
                .filter(|(k, v)| gone.contains(&(v.addr, v.port)) || gone.contains(&(k.saddr, k.sport)))
                .map(|(k, _)| k)
                .collect();
            for k in stale {
                let _ = ct.remove(&k);
            }
        }
        Ok(())
    }

    /// Encode some services, reusing existing IDs, without forgetting other services' IDs; with
    /// each Service's frontend keys.
    fn encode_keep_ids(
        &mut self,
        services: &[Service],
        host_ports: &[HostPort],
        ctx: &NodeCtx,
    ) -> (Entries, Vec<Vec<SvcKey>>) {
        let (fresh, keys) = crate::maps::encode_with_keys(services, host_ports, ctx);
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
        for k in &fresh.ranges {
            if let Some(id) = remap.get(&k.service_id) {
                out.ranges.insert(SrcRangeKey { service_id: *id, ..*k });
            }
        }
        for (k, t) in fresh.maglev {
            if let Some(id) = remap.get(&k) {
                out.maglev.insert(*id, t);
            }
        }
        (out, keys)
    }

    /// What the service maps hold: (frontend, service, backends by slot).
    pub fn entries(&self) -> &Entries {
        &self.written
    }

    /// The frontends and backend slots the kernel's service maps hold now, read back (not what
    /// this process meant to write): what `sluice bpf lb list` and `migrate verify` show.
    pub fn kernel_entries(&self) -> Result<Entries, DatapathError> {
        let svc_map = self.bpf.map("sluice_svc").ok_or(missing("sluice_svc"))?;
        let svc: HashMap<&aya::maps::MapData, SvcKey, SvcVal> =
            HashMap::try_from(svc_map).map_err(map_err("sluice_svc"))?;
        let be_map = self.bpf.map("sluice_backends").ok_or(missing("sluice_backends"))?;
        let be: HashMap<&aya::maps::MapData, BackendKey, BackendVal> =
            HashMap::try_from(be_map).map_err(map_err("sluice_backends"))?;
        let mut out = Entries::default();
        for r in svc.iter() {
            let (k, v) = r.map_err(map_err("sluice_svc"))?;
            out.services.insert(k, v);
        }
        for r in be.iter() {
            let (k, v) = r.map_err(map_err("sluice_backends"))?;
            out.backends.insert(k, v);
        }
        Ok(out)
    }
}
