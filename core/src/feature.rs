//! Features: what the plan hands to an owner. The Service features are kube-proxy's job
//! (what `partial`/`probe`/`strict` govern); policy and flows are sluice's own.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    ClusterIp,
    NodePort,
    ExternalIps,
    LoadBalancer,
    HostPort,
    SocketLbTcp,
    SocketLbUdp,
    SessionAffinity,
    SourceRanges,
    TrafficPolicyLocal,
    HealthCheckNodePort,
    Policy,
    Flows,
}

impl Feature {
    /// Every feature: the Service features, then policy and flows.
    pub const ALL: [Feature; 13] = {
        let mut all = [Feature::Policy; 13];
        let mut i = 0;
        while i < Feature::SERVICES.len() {
            all[i] = Feature::SERVICES[i];
            i += 1;
        }
        all[11] = Feature::Policy;
        all[12] = Feature::Flows;
        all
    };

    /// The Service features (kube-proxy's job): every feature but policy and flows.
    pub const SERVICES: [Feature; 11] = [
        Feature::ClusterIp,
        Feature::NodePort,
        Feature::ExternalIps,
        Feature::LoadBalancer,
        Feature::HostPort,
        Feature::SocketLbTcp,
        Feature::SocketLbUdp,
        Feature::SessionAffinity,
        Feature::SourceRanges,
        Feature::TrafficPolicyLocal,
        Feature::HealthCheckNodePort,
    ];

    /// The config name (`kube_proxy_replacement_features`).
    pub fn name(self) -> &'static str {
        match self {
            Feature::ClusterIp => "cluster-ip",
            Feature::NodePort => "node-port",
            Feature::ExternalIps => "external-ips",
            Feature::LoadBalancer => "load-balancer",
            Feature::HostPort => "host-port",
            Feature::SocketLbTcp => "socket-lb-tcp",
            Feature::SocketLbUdp => "socket-lb-udp",
            Feature::SessionAffinity => "session-affinity",
            Feature::SourceRanges => "source-ranges",
            Feature::TrafficPolicyLocal => "traffic-policy-local",
            Feature::HealthCheckNodePort => "health-check-node-port",
            Feature::Policy => "policy",
            Feature::Flows => "flows",
        }
    }

    /// The name in the status line, as Cilium users read it.
    pub fn title(self) -> &'static str {
        match self {
            Feature::ClusterIp => "ClusterIP",
            Feature::NodePort => "NodePort",
            Feature::ExternalIps => "ExternalIPs",
            Feature::LoadBalancer => "LoadBalancer",
            Feature::HostPort => "HostPort",
            Feature::SocketLbTcp => "SocketLB-TCP",
            Feature::SocketLbUdp => "SocketLB-UDP",
            Feature::SessionAffinity => "SessionAffinity",
            Feature::SourceRanges => "SourceRanges",
            Feature::TrafficPolicyLocal => "TrafficPolicyLocal",
            Feature::HealthCheckNodePort => "HealthCheckNodePort",
            Feature::Policy => "Policy",
            Feature::Flows => "Flows",
        }
    }

    /// Features kube-proxy could serve instead (policy and flows are sluice's alone).
    pub fn is_kube_proxy_feature(self) -> bool {
        !matches!(self, Feature::Policy | Feature::Flows)
    }

    /// Features whose owner rewrites addresses of Service traffic (the others refine how).
    pub fn translates_addresses(self) -> bool {
        matches!(
            self,
            Feature::ClusterIp
                | Feature::NodePort
                | Feature::ExternalIps
                | Feature::LoadBalancer
                | Feature::HostPort
                | Feature::SocketLbTcp
                | Feature::SocketLbUdp
        )
    }

    /// A feature that only makes sense with the same owner as its base feature.
    pub fn base(self) -> Option<Feature> {
        match self {
            Feature::SessionAffinity => Some(Feature::ClusterIp),
            Feature::TrafficPolicyLocal | Feature::HealthCheckNodePort => Some(Feature::NodePort),
            Feature::SourceRanges => Some(Feature::LoadBalancer),
            _ => None,
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown feature {given:?}; known: {known}")]
pub struct UnknownFeature {
    pub given: String,
    pub known: String,
}

impl FromStr for Feature {
    type Err = UnknownFeature;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Feature::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFeature { given: s.into(), known: Feature::ALL.map(|f| f.name()).join(", ") })
    }
}
