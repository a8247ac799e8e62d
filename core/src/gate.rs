//! The prune gate's data side: what to keep when the source cannot vouch that an object is gone.
//!
//! A read that is incomplete (an unreadable manifest file, a watch not yet synced) says nothing
//! about the objects it lacks: they may be fine in the file that failed to parse. The agent keeps
//! the last complete set of Services and hostPorts (on disk, so a restart with a broken file
//! still has it); while reads are incomplete, objects of that set missing from the read are kept
//! as they were, and backends are told not to prune.

use serde::{Deserialize, Serialize};

use crate::model::ClusterState;
use crate::service::{HostPort, Service, ServiceName};

/// The Services and hostPorts of the last complete read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastComplete {
    pub services: Vec<Service>,
    pub host_ports: Vec<HostPort>,
}

impl LastComplete {
    pub fn of(state: &ClusterState) -> Self {
        LastComplete { services: state.services.clone(), host_ports: state.host_ports.clone() }
    }
}

/// Add to `state` what `last` had and `state` lacks; returns the Services kept that way.
/// Services stay sorted by name (the encoders' incremental paths rely on it).
pub fn hold_missing(state: &mut ClusterState, last: &LastComplete) -> Vec<ServiceName> {
    let mut held = Vec::new();
    for s in &last.services {
        if !state.services.iter().any(|c| c.name == s.name) {
            held.push(s.name.clone());
            state.services.push(s.clone());
        }
    }
    if !held.is_empty() {
        state.services.sort_by(|a, b| a.name.cmp(&b.name));
    }
    for h in &last.host_ports {
        let same = |c: &&HostPort| c.pod == h.pod && c.host_port == h.host_port && c.protocol == h.protocol;
        if !state.host_ports.iter().any(|c| same(&c)) {
            state.host_ports.push(h.clone());
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ServiceBuilder;

    #[test]
    fn missing_services_are_kept_sorted_and_present_ones_win() {
        let a = ServiceBuilder::new("default", "a").cluster_ip("10.96.0.1", 80).build();
        let b_old = ServiceBuilder::new("default", "b").cluster_ip("10.96.0.2", 80).build();
        let b_new = ServiceBuilder::new("default", "b").cluster_ip("10.96.0.2", 81).build();
        let c = ServiceBuilder::new("default", "c").cluster_ip("10.96.0.3", 80).build();
        let last = LastComplete { services: vec![a.clone(), b_old, c.clone()], host_ports: vec![] };
        let mut state = ClusterState { services: vec![b_new.clone()], ..Default::default() };
        let held = hold_missing(&mut state, &last);
        assert_eq!(held, vec![a.name.clone(), c.name.clone()]);
        assert_eq!(state.services, vec![a, b_new, c]);
    }
}
