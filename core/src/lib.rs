//! sluice-core: the desired-state model every source translates into, the seam every backend
//! implements, and the engine that drives the backends. Pure data and pure functions: no I/O,
//! no Kubernetes types, no kernel calls, so all of it is testable without root.
//!
//! - [`model`], [`service`]: what the sources say, translated.
//! - [`view`]: kube-proxy's semantics of a Service on one node, defined once for every backend.
//! - [`plan`]: which backend serves each feature and why ([`plan::Reason`]).
//! - [`registry`]: backend names and the specs backends declare.
//! - [`dataplane`]: the `Dataplane` trait and its typed reports.
//! - [`engine`]: make-before-break execution of the plan, the prune gate; [`gate`]: what is kept
//!   while the source is incomplete.

pub mod caps;
pub mod dataplane;
pub mod engine;
pub mod feature;
pub mod fingerprint;
pub mod flow;
pub mod gate;
pub mod lb;
pub mod migrate;
pub mod model;
pub mod plan;
pub mod policy;
pub mod programmed;
pub mod registry;
pub mod routes;
pub mod service;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;
pub mod view;

pub use caps::{Capabilities, Capability, ProbeResult, TcAttach};
pub use dataplane::{
    CleanupReport, Dataplane, DataplaneError, Desired, LbRow, MissingFact, NodeContext, ObjectError, ObjectRef, Op,
    Report, Restored,
};
pub use engine::{BackendCall, Engine, FeatureState, HoleState, PassReport, Progress, SourceSync, StepState};
pub use lb::{LbAlgorithm, MapSizes, maglev_table};
pub use model::{ClusterState, LocalEndpoint, NodeInfo, PodInfo};
pub use plan::{DataplaneMode, Feature, KprMode, Lack, Owner, Plan, PlanEntry, PlanError, PlanInput, Reason, Step};
pub use registry::{BackendId, BackendSpec, KNOWN_BACKENDS};
pub use routes::{PodRoute, RouteDiff, desired_pod_routes, diff_routes};
pub use service::{Backend, BackendState, Frontend, FrontendKind, HostPort, Protocol, Service, ServiceName};
pub use view::{PortView, ServiceView};
