//! sluice-iptables: the iptables/netlink backend.
//!
//! - [`render`] and [`save`]: pure text in, text out (rule rendering, parsing `iptables-save`,
//!   computing cleanup) — unit-tested without root.
//! - [`restore`]: the only place that runs `iptables-restore`/`iptables-save`, always as one
//!   atomic batch per table with `--noflush --wait`.
//! - [`routes`]: inter-node pod routes over netlink, marked with [`NODE_RTPROTO`].
//!
//! - [`dataplane`]: the backend behind core's `Dataplane` seam (what the engine drives).
//!
//! Everything sluice creates is marked: chains start with [`CHAIN_PREFIX`], rules carry a
//! `sluice:` comment, routes carry the protocol number.

pub mod conntrack_list;
pub mod ct_events;
pub mod ct_flush;
pub mod dataplane;
pub mod incremental;
pub mod ipset;
pub mod kube_proxy;
pub mod kube_proxy_cutover;
pub mod kube_proxy_nft;
pub mod l7;
pub mod l7_route;
pub mod nflog;
mod nfnl;
pub mod node;
pub mod policy;
mod policy_sync;
pub mod probe;
pub mod programmed;
pub mod restore;
pub mod routes;
pub mod ruleset;
pub mod save;
pub mod services;
pub mod sync;

pub use dataplane::{IptablesDataplane, SPEC};
pub use node::NodeRules;
pub use policy_sync::{PolicyRules, PolicySyncError};
pub use restore::{Iptables, IptablesError, Variant};
pub use routes::{NODE_RTPROTO, RouteError, RouteManager};

pub const CHAIN_PREFIX: &str = "SLUICE-";
/// Chains of the node plumbing (pod masquerade), owned by the node manager, not the Service
/// backend: each syncer reads and prunes only its own.
pub const NODE_CHAIN_PREFIX: &str = "SLUICE-NODE-";
