//! sluice-observer: flow visibility over gRPC, wire-compatible with Hubble's clients.
//!
//! - [`pb`]: the messages and services generated from `proto/` (sluice's own definitions of
//!   Hubble's `flow`, `observer`, `relay` and `peer` packages: Hubble's names and numbers).
//! - [`convert`]: core's flow records and filters to and from the wire types.
//! - [`server`]: the per-node [`server::Hub`] (the ring of recent flows, fed by the datapath)
//!   and the `observer.Observer` service over it, plus the gRPC health service that answers
//!   `hubble.server.Observer` as SERVING.
//!
//! See docs/design/flows.md.

pub mod client;
pub mod convert;
pub mod metrics;
pub mod peer;
pub mod relay;
pub mod server;
pub mod tls;

/// Generated from `proto/`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod flow {
        tonic::include_proto!("flow");
    }
    pub mod relay {
        tonic::include_proto!("relay");
    }
    pub mod observer {
        tonic::include_proto!("observer");
    }
    pub mod peer {
        tonic::include_proto!("peer");
    }
}

/// The name Hubble's CLI asks the health service about.
pub const HEALTH_SERVICE: &str = "hubble.server.Observer";
