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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    /// Changes whenever anything below changes (backends may skip work when it does not).
    pub generation: u64,
    pub enforcement: Enforcement,
    pub endpoints: Vec<EndpointRules>,
    pub ipcache: BTreeMap<Ipv4Addr, Identity>,
    /// The NFLOG group drops are logged to while the agent records flows (backends that log
    /// drops through netfilter; `None`: not logged).
    pub log_drops: Option<u16>,
    /// Also log allow rules' verdicts on new flows there (`flows.allowed_verdicts`; only with
    /// `log_drops`).
    pub log_allows: bool,
    /// The port of this node's L7 proxy while it runs: `Proxy` rules redirect to it (netfilter
    /// TPROXY). `None`: they let nothing through (fail closed).
    pub l7_proxy: Option<u16>,
    /// ClusterIPs the redirect takes before netfilter Services translate them, while the proxy
    /// runs (see `l7_frontends`).
    pub l7_frontends: Vec<super::l7_frontends::L7Frontend>,
}

impl PolicyView {
    /// The local endpoint with this address.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<&EndpointRules> {
        self.endpoints.iter().find(|e| e.ip == ip)
    }
}
