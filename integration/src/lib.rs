//! sluice-lab: virtual clusters in network namespaces, for the demo, the end-to-end suites
//! and the benchmarks. The binary is a thin CLI over [`lab::Lab`].

pub mod bench;
pub mod bench_attach;
pub mod bench_floor;
pub mod bench_flows;
pub mod bench_l7;
pub mod bench_paired;
pub mod bench_services;
pub mod cnirun;
pub mod flip;
pub mod http;
pub mod http_load;
pub mod lab;
pub mod load;
pub mod proc;
pub mod state;
pub mod topo;

pub use lab::Lab;
