//! What the Kubernetes watchers have seen, kind by kind. Pure: watcher events in, the same
//! [`Objects`] the manifest source produces out.
//!
//! A (re)list arrives as `Init`, `InitApply`..., `InitDone`: the new list is buffered and swapped
//! in whole at `InitDone`, so a 410 Gone relist never shows a half-empty cluster, and objects
//! missing from the new list are dropped only then (they were deleted while we were not looking).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::runtime::watcher::Event;

use crate::source::Objects;

#[derive(Debug, Clone)]
pub struct KindStore<K> {
    current: BTreeMap<String, Arc<K>>,
    pending: Option<BTreeMap<String, Arc<K>>>,
    /// An initial list completed at least once.
    pub synced: bool,
    pub events: u64,
}

impl<K> Default for KindStore<K> {
    fn default() -> Self {
        KindStore { current: BTreeMap::new(), pending: None, synced: false, events: 0 }
    }
}

fn key<K: ResourceExt>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

impl<K: ResourceExt + Clone> KindStore<K> {
    pub fn apply(&mut self, ev: Event<K>) {
        self.events += 1;
        match ev {
            Event::Init => self.pending = Some(BTreeMap::new()),
            Event::InitApply(o) => {
                if let Some(p) = self.pending.as_mut() {
                    p.insert(key(&o), Arc::new(o));
                }
            }
            Event::InitDone => {
                if let Some(p) = self.pending.take() {
                    self.current = p;
                }
                self.synced = true;
            }
            Event::Apply(o) => {
                self.current.insert(key(&o), Arc::new(o));
            }
            Event::Delete(o) => {
                self.current.remove(&key(&o));
            }
        }
    }

    pub fn values(&self) -> Vec<Arc<K>> {
        self.current.values().cloned().collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.current.len()
    }
}

#[derive(Debug, Clone, Default)]
pub struct KubeStore {
    pub nodes: KindStore<Node>,
    pub pods: KindStore<Pod>,
    pub services: KindStore<Service>,
    pub endpoint_slices: KindStore<EndpointSlice>,
    pub network_policies: KindStore<NetworkPolicy>,
    pub namespaces: KindStore<Namespace>,
    pub sluice_policies: KindStore<DynamicObject>,
    pub sluice_clusterwide_policies: KindStore<DynamicObject>,
}

/// A CRD object as the policy translation reads it (the same document the manifest source
/// decodes).
fn doc(kind: &str, o: Arc<DynamicObject>) -> Arc<crate::source::policy::SluicePolicyDoc> {
    Arc::new(crate::source::policy::SluicePolicyDoc {
        kind: kind.into(),
        spec: o.data.get("spec").cloned(),
        metadata: o.metadata.clone(),
    })
}

impl KubeStore {
    /// Every kind listed at least once: only then may anything be pruned.
    pub fn synced(&self) -> bool {
        self.nodes.synced
            && self.pods.synced
            && self.services.synced
            && self.endpoint_slices.synced
            && self.network_policies.synced
            && self.namespaces.synced
            && self.sluice_policies.synced
            && self.sluice_clusterwide_policies.synced
    }

    /// Changes whenever any watcher delivered an event.
    pub fn generation(&self) -> u64 {
        self.nodes.events
            + self.pods.events
            + self.services.events
            + self.endpoint_slices.events
            + self.network_policies.events
            + self.namespaces.events
            + self.sluice_policies.events
            + self.sluice_clusterwide_policies.events
    }

    pub fn objects(&self) -> Objects {
        Objects {
            nodes: self.nodes.values(),
            pods: self.pods.values(),
            services: self.services.values(),
            endpoint_slices: self.endpoint_slices.values(),
            network_policies: self.network_policies.values(),
            namespaces: self.namespaces.values(),
            sluice_policies: self
                .sluice_policies
                .values()
                .into_iter()
                .map(|o| doc("SluiceNetworkPolicy", o))
                .chain(
                    self.sluice_clusterwide_policies
                        .values()
                        .into_iter()
                        .map(|o| doc("SluiceClusterwideNetworkPolicy", o)),
                )
                .collect(),
            rejected: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "resourceVersion": "1"},
            "spec": {"podCIDR": cidr}
        }))
        .expect("node")
    }

    #[test]
    fn relist_swaps_atomically_and_drops_missing() {
        let mut s: KindStore<Node> = KindStore::default();
        s.apply(Event::Init);
        s.apply(Event::InitApply(node("a", "10.244.1.0/24")));
        assert!(!s.synced && s.len() == 0, "nothing visible before InitDone");
        s.apply(Event::InitApply(node("b", "10.244.2.0/24")));
        s.apply(Event::InitDone);
        assert!(s.synced);
        assert_eq!(s.len(), 2);
        s.apply(Event::Apply(node("c", "10.244.3.0/24")));
        s.apply(Event::Delete(node("a", "")));
        assert_eq!(s.values().iter().map(|n| n.name_any()).collect::<Vec<_>>(), ["b", "c"]);
        // 410 Gone: a relist. Until InitDone the old view stays whole.
        s.apply(Event::Init);
        s.apply(Event::InitApply(node("c", "10.244.3.0/24")));
        assert_eq!(s.len(), 2);
        s.apply(Event::InitDone);
        assert_eq!(s.values().iter().map(|n| n.name_any()).collect::<Vec<_>>(), ["c"], "b was deleted during the gap");
    }
}
