//! Shared by the BPF_PROG_TEST_RUN binaries (test_run.rs, events.rs): the programs loaded with
//! maps pinned in a private directory, and crafted packets with valid checksums.
#![allow(dead_code)] // each binary uses its own part

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use aya::maps::Array;
use aya::maps::HashMap;
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use sluice_ebpf::maps::{BackendKey, BackendVal, MaglevKey, NodeCfg, SVC_F_TC, SvcKey, SvcVal, addr, port};

pub const TC_ACT_OK: u32 = 0;
/// TC_ACT_UNSPEC (-1): not ours, the next program (TCX) or the default action decides.
pub const PASS: u32 = u32::MAX;
pub const TC_ACT_SHOT: u32 = 2;
/// A redirect (to the device the FIB names); the test run does not transmit it.
pub const TC_ACT_REDIRECT: u32 = 7;
pub static SEQ: AtomicU32 = AtomicU32::new(0);

/// Loaded programs with maps pinned in a private directory, removed on drop.
pub struct Lb {
    pub bpf: Option<sluice_ebpf::loader::Loaded>,
    pub dir: PathBuf,
}

impl Lb {
    pub fn new() -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/sluice-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let bpf = sluice_ebpf::loader::load(&dir).expect("load");
        Lb { bpf: Some(bpf), dir }
    }

    pub fn bpf(&mut self) -> &mut sluice_ebpf::loader::Loaded {
        self.bpf.as_mut().expect("loaded")
    }

    /// A ClusterIP-like frontend served at the pod veths.
    pub fn service(&mut self, vip: &str, vport: u16, proto: u8, id: u32, backends: &[(&str, u16)], affinity_s: u32) {
        let bs: Vec<(&str, u16, u16)> = backends.iter().map(|(ip, p)| (*ip, *p, 0)).collect();
        self.frontend(vip, vport, proto, id, &bs, affinity_s, SVC_F_TC);
    }

    /// Any frontend: flags SVC_F_*, backends with BE_F_* flags.
    #[allow(clippy::too_many_arguments)]
    pub fn frontend(
        &mut self,
        vip: &str,
        vport: u16,
        proto: u8,
        id: u32,
        backends: &[(&str, u16, u16)],
        affinity_s: u32,
        flags: u32,
    ) {
        let mut svc: HashMap<_, SvcKey, SvcVal> =
            HashMap::try_from(self.bpf().map_mut("sluice_svc").expect("map")).expect("svc");
        let k = SvcKey { vip: addr(vip.parse().expect("ip")), port: port(vport), proto, pad: 0 };
        svc.insert(k, SvcVal { service_id: id, backend_count: backends.len() as u32, affinity_s, flags }, 0)
            .expect("insert");
        let mut be: HashMap<_, BackendKey, BackendVal> =
            HashMap::try_from(self.bpf().map_mut("sluice_backends").expect("map")).expect("be");
        for (i, (ip, p, f)) in backends.iter().enumerate() {
            be.insert(
                BackendKey { service_id: id, slot: i as u32 + 1 },
                BackendVal { addr: addr(ip.parse().expect("ip")), port: port(*p), flags: *f },
                0,
            )
            .expect("insert");
        }
    }

    pub fn node_ip(&mut self, ip: &str) {
        self.node(ip, 0);
    }

    pub fn node(&mut self, ip: &str, maglev_m: u32) {
        let mut a: Array<_, NodeCfg> = Array::try_from(self.bpf().map_mut("sluice_node").expect("map")).expect("node");
        a.set(0, NodeCfg { node_ip: addr(ip.parse().expect("ip")), maglev_m, ..Default::default() }, 0).expect("set");
    }

    /// The node entry's NODE_F_* flags (the rest kept).
    pub fn node_flags(&mut self, flags: u32) {
        let mut a: Array<_, NodeCfg> = Array::try_from(self.bpf().map_mut("sluice_node").expect("map")).expect("node");
        let cur = a.get(&0, 0).expect("get");
        a.set(0, NodeCfg { flags, ..cur }, 0).expect("set");
    }

    pub fn maglev(&mut self, id: u32, table: &[u32]) {
        let mut m: HashMap<_, MaglevKey, u32> =
            HashMap::try_from(self.bpf().map_mut("sluice_maglev").expect("map")).expect("maglev");
        for (i, slot) in table.iter().enumerate() {
            m.insert(MaglevKey { service_id: id, index: i as u32 }, *slot, 0).expect("insert");
        }
    }

    pub fn allow_range(&mut self, id: u32, net: &str, len: u32) {
        let mut t: LpmTrie<_, [u32; 2], u8> =
            LpmTrie::try_from(self.bpf().map_mut("sluice_src_ranges").expect("map")).expect("lpm");
        t.insert(&LpmKey::new(32 + len, [id, addr(net.parse().expect("ip"))]), 1, 0).expect("insert");
    }

    pub fn run(&mut self, prog: &str, pkt: &[u8]) -> (u32, Vec<u8>) {
        let p: &mut SchedClassifier = self.bpf().program_mut(prog).expect("prog").try_into().expect("classifier");
        let mut out = vec![0u8; pkt.len() + 64];
        let r = p
            .test_run(TestRunOptions { data_in: Some(pkt), data_out: Some(&mut out), ..Default::default() })
            .expect("test_run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        self.bpf = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn csum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let w =
            if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + TCP (or UDP) with correct checksums.
pub fn packet(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let (src, dst): (Ipv4Addr, Ipv4Addr) = (src.parse().expect("ip"), dst.parse().expect("ip"));
    let l4_len = if proto == 6 { 20 } else { 8 };
    let payload = b"hello";
    let total = 20 + l4_len + payload.len();
    let mut p = vec![0u8; 14];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = vec![0u8; l4_len];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        l4[12] = 5 << 4;
        l4[13] = 0x02; // SYN
    } else {
        l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    }
    l4.extend_from_slice(payload);
    let c = l4_csum(&src, &dst, proto, &l4);
    let off = if proto == 6 { 16 } else { 6 };
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    p.extend(ip);
    p.extend(l4);
    p
}

pub fn l4_csum(src: &Ipv4Addr, dst: &Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    csum(&pseudo, 0)
}

pub fn fields(p: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let ip = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    let port = |o: usize| u16::from_be_bytes([p[o], p[o + 1]]);
    (ip(26), port(34), ip(30), port(36))
}

/// IP header checksum and L4 checksum both verify (sum to zero).
pub fn checksums_valid(p: &[u8]) -> bool {
    let ip_ok = csum(&p[14..34], 0) == 0;
    let (src, _, dst, _) = fields(p);
    let l4_ok = l4_csum(&src, &dst, p[23], &p[34..]) == 0;
    ip_ok && l4_ok
}

/// TCP flags byte of a crafted packet: make it mid-stream (ACK, or SYN+ACK).
pub fn with_flags(mut p: Vec<u8>, flags: u8) -> Vec<u8> {
    let old = u16::from_be_bytes([p[46], p[47]]);
    p[47] = flags;
    // Incremental checksum update (RFC 1624) for the changed word.
    let new = u16::from_be_bytes([p[46], p[47]]);
    let c = u16::from_be_bytes([p[50], p[51]]);
    let mut sum = (!c as u32) + (!old as u32) + new as u32;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[50..52].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}
