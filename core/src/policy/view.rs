//! What the backends encode for policy on one node: each local endpoint's compiled rules and
//! the IP-to-identity map its identity peers resolve through.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::compile::EndpointPolicy;
use super::identity::Identity;
use super::model::Enforcement;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRules {
    pub ip: Ipv4Addr,
    /// The pod's host-side interface (where its traffic enters and leaves the node).
    pub interface: String,
    /// `NS/NAME`.
    pub pod: String,
    pub policy: EndpointPolicy,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyView {
    /// Changes whenever anything below changes (backends may skip work when it does not).
    pub generation: u64,
    pub enforcement: Enforcement,
    pub endpoints: Vec<EndpointRules>,
    pub ipcache: BTreeMap<Ipv4Addr, Identity>,
}

impl PolicyView {
    /// The addresses whose identity is in `ids`.
    pub fn addresses_of<'a>(
        &'a self,
        ids: &'a std::collections::BTreeSet<Identity>,
    ) -> impl Iterator<Item = Ipv4Addr> + 'a {
        self.ipcache.iter().filter(|(_, id)| ids.contains(id)).map(|(ip, _)| *ip)
    }
}
