//! Network policy as sluice enforces it: Kubernetes NetworkPolicy and the Sluice*NetworkPolicy
//! CRDs translate into these types (in the agent's source); the compiler never sees either.

use std::fmt;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::selector::LabelSelector;
use crate::service::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    NetworkPolicy,
    SluiceNetworkPolicy,
    SluiceClusterwideNetworkPolicy,
}

impl PolicyKind {
    pub fn short(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "netpol",
            PolicyKind::SluiceNetworkPolicy => "snp",
            PolicyKind::SluiceClusterwideNetworkPolicy => "sccnp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyName {
    pub kind: PolicyKind,
    /// `None` for cluster-wide policies.
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{:?} {ns}/{}", self.kind, self.name),
            None => write!(f, "{:?} {}", self.kind, self.name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Which namespaces a pod peer may be in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NsScope {
    /// This one (a NetworkPolicy peer with only a podSelector: the policy's namespace).
    Named(String),
    /// Namespaces whose labels match.
    Selector(LabelSelector),
    Any,
}

/// Cilium's entities (`fromEntities` / `toEntities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    World,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    All,
}

impl Entity {
    pub const NAMES: &'static str = "world, cluster, host, remote-node, kube-apiserver, all";

    pub fn parse(s: &str) -> Option<Entity> {
        Some(match s {
            "world" => Entity::World,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "kube-apiserver" => Entity::KubeApiserver,
            "all" => Entity::All,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Peer {
    /// Pods whose labels match `pods`, in namespaces `namespaces`. `extended`: the selector
    /// sees the Cilium-style extended label map (namespace name and labels as pod labels).
    Pods {
        namespaces: NsScope,
        pods: LabelSelector,
        extended: bool,
    },
    /// Addresses (pods' too) inside `net` but none of `except`.
    Cidr {
        net: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
    Entity(Entity),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortSpec {
    /// `port` .. `end` inclusive (`end == port` for one port).
    Range { port: u16, end: u16 },
    /// A containerPort name, resolved per destination pod.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRule {
    pub protocol: Protocol,
    /// `None`: every port of `protocol`.
    pub port: Option<PortSpec>,
    /// `Some`: L7-policed (TCP only): the L3/L4 match admits the peer to the node's proxy, which
    /// lets through the requests one of these rules matches (docs/design/l7.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<super::l7::HttpRule>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// `None`: every peer.
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port and protocol.
    pub ports: Option<Vec<PortRule>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// `None`: every namespace (cluster-wide policies).
    pub namespace: Option<String>,
    pub selector: LabelSelector,
    pub extended: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: PolicyName,
    pub subject: Subject,
    /// `Some`: the policy isolates the subject in this direction (an empty list allows nothing).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    /// Deny rules: beat every allow; their presence isolates the direction too (as Cilium).
    pub ingress_deny: Vec<Rule>,
    pub egress_deny: Vec<Rule>,
    /// Audit mode: what this policy would drop is allowed and reported.
    pub audit: bool,
}

impl Policy {
    pub fn rules(&self, d: Direction) -> (Option<&Vec<Rule>>, &Vec<Rule>) {
        match d {
            Direction::Ingress => (self.ingress.as_ref(), &self.ingress_deny),
            Direction::Egress => (self.egress.as_ref(), &self.egress_deny),
        }
    }

    pub fn isolates(&self, d: Direction) -> bool {
        let (allow, deny) = self.rules(d);
        allow.is_some() || !deny.is_empty()
    }
}

/// `policy_enforcement`, as Cilium's: `default` isolates a pod in a direction once a policy
/// selects it for that direction; `always` isolates every pod; `never` enforces nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    #[default]
    Default,
    Always,
    Never,
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Enforcement::Default => "default",
            Enforcement::Always => "always",
            Enforcement::Never => "never",
        })
    }
}
