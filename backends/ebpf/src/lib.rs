//! sluice-ebpf: the eBPF backend.
//!
//! - `bpf/` holds the programs in C; `build.rs` compiles them; they are embedded here.
//! - [`maps`]: Rust mirrors of the C map layouts (with layout assertions) and the pure encoding
//!   of core services into map entries.
//! - [`loader`]: loading with aya, map pinning, bpffs.
//!
//! Status: the tc service datapath (DNAT, reverse NAT, LRU conntrack, ClientIP affinity) is
//! built and tested through BPF_PROG_TEST_RUN; attaching it to pod veths from the agent is not
//! built yet, so the agent's plan never gives a feature to eBPF (see docs/design/ebpf.md).

pub mod datapath;
pub mod loader;
pub mod maps;

/// The compiled object (see build.rs).
pub static LB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb.bpf.o"));
