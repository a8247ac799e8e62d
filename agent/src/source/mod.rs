//! Sources of cluster state. Each produces Kubernetes objects; [`translate`] turns them into
//! the core model. Only the agent sees Kubernetes types.

mod alloc;
mod claims;
pub mod dir_watch;
pub mod kube;
pub mod manifests;
pub mod policy;
pub mod translate;
pub mod validate;

#[cfg(test)]
mod fuzz_tests;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The objects a source has seen, by kind. Shared, not copied: a source hands out its objects
/// on every change, and at 10,000 Pods copying them was a third of a change's time.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub nodes: Vec<Arc<Node>>,
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub namespaces: Vec<Arc<k8s_openapi::api::core::v1::Namespace>>,
    pub network_policies: Vec<Arc<k8s_openapi::api::networking::v1::NetworkPolicy>>,
    /// SluiceNetworkPolicy and SluiceClusterwideNetworkPolicy documents.
    pub sluice_policies: Vec<Arc<policy::SluicePolicyDoc>>,
    /// Documents the source could not decode into an object (named, with the reason).
    pub rejected: Vec<sluice_core::validate::Rejected>,
}

impl Objects {
    pub fn count(&self) -> usize {
        self.nodes.len()
            + self.pods.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.namespaces.len()
            + self.network_policies.len()
            + self.sluice_policies.len()
    }
}
