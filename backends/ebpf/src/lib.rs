//! sluice-ebpf: the eBPF backend.
//!
//! - `bpf/` holds the programs in C; `build.rs` compiles them; they are embedded here.
//! - [`maps`]: Rust mirrors of the C map layouts (with layout assertions) and the pure encoding
//!   of core services into map entries.
//! - [`loader`]: loading with aya, map pinning, bpffs.
//!
//! - [`datapath`]: the service maps kept in step with the desired services; [`attach`]: the
//!   programs on pod veths, node devices and the node's cgroup, through pinned TCX links or
//!   (kernels before 6.6) clsact + `cls_bpf` filters ([`attach_classic`], [`tc_netlink`]).
//!
//! - [`dataplane`]: the backend behind core's `Dataplane` seam (what the engine drives).
//!
//! See docs/design/ebpf.md for what is built and what is not.

pub mod admit;
pub mod attach;
pub mod attach_classic;
pub mod datapath;
pub mod dataplane;
pub mod events;
pub mod lb_list;
pub mod loader;
pub mod maps;
pub mod policy;
pub mod policy_l7;
pub mod probe;
pub mod sock_netns;
pub mod tc_netlink;

pub use dataplane::{EbpfDataplane, SPEC};

/// The compiled objects, one per hook family (see build.rs and bpf/*.bpf.c): pod veths, node
/// devices, cgroup socket hooks, the node's socket lookup. They share their maps through pins.
pub static OBJECTS: [(&str, &[u8]); 4] = [
    ("pod", aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pod.bpf.o"))),
    ("net", aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/net.bpf.o"))),
    ("sock", aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.bpf.o"))),
    ("lookup", aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lookup.bpf.o"))),
];

#[cfg(test)]
mod needs_tests;
