//! sluice-core: the desired-state model every source translates into and every backend
//! programs from. Pure data and pure functions: no I/O, no Kubernetes types, no kernel calls,
//! so all of it is testable without root.

pub mod caps;
pub mod fingerprint;
pub mod lb;
pub mod model;
pub mod plan;
pub mod routes;
pub mod service;

pub use caps::{Capabilities, Capability, ProbeResult};
pub use lb::{LbAlgorithm, MapSizes, maglev_table};
pub use model::{ClusterState, LocalEndpoint, NodeInfo, PodInfo};
pub use plan::{DataplaneMode, Feature, Implemented, KprMode, Owner, Plan, PlanEntry, PlanError, PlanInput, Step};
pub use routes::{PodRoute, RouteDiff, desired_pod_routes, diff_routes};
pub use service::{Backend, BackendState, Frontend, FrontendKind, HostPort, Protocol, Service, ServiceName};
