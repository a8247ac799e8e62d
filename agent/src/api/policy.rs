//! Wire types of the policy commands: `sluice endpoint list`, `sluice identity list`,
//! `sluice policy get`, `sluice policy trace`, and the policy block of `sluice status`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_core::policy::{Decision, Policy};

/// The policy line of `sluice status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicySummary {
    /// `default`, `always` or `never`.
    pub enforcement: String,
    /// Who enforces (`iptables`), or why nobody does.
    pub owner: String,
    /// Every policy in force, `Kind ns/name`.
    pub policies: Vec<String>,
    /// Local endpoints isolated on ingress / egress.
    pub ingress_isolated: usize,
    pub egress_isolated: usize,
    /// Cluster identities in use.
    pub identities: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointEntry {
    pub pod: String,
    pub ip: String,
    pub interface: String,
    pub identity: u32,
    pub labels: BTreeMap<String, String>,
    /// `enforced`, `audit` (an audit-mode policy selects it) or `off`.
    pub ingress: String,
    pub egress: String,
    /// The policies that isolate it, per direction.
    pub ingress_policies: Vec<String>,
    pub egress_policies: Vec<String>,
    /// Compiled rules (allow and deny entries) per direction.
    pub ingress_rules: usize,
    pub egress_rules: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityEntry {
    pub identity: u32,
    /// `reserved:host`... for reserved identities; the label set otherwise.
    pub labels: Vec<String>,
    /// Pods (cluster-wide) with this identity.
    pub pods: usize,
    /// Set when the label set's preferred number was taken by another (a hash collision).
    #[serde(default)]
    pub moved_from: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyEntry {
    /// `Kind ns/name`.
    pub name: String,
    pub audit: bool,
    /// Local endpoints it selects.
    pub selects: Vec<String>,
    /// The policy as sluice enforces it (after validation and translation).
    pub policy: Policy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyReport {
    pub enforcement: String,
    pub policies: Vec<PolicyEntry>,
    /// Policies refused (or admitted with a part that fails closed), with the reason.
    pub rejected: Vec<sluice_core::model::Rejected>,
}

/// One direction's decision in words (the trace's rendering).
pub fn decision_text(d: &Decision) -> String {
    match d {
        Decision::NotIsolated => "allowed: no policy isolates it".into(),
        Decision::FromOwnNode => "allowed: traffic from the pod's own node".into(),
        Decision::Allowed { policy } => format!("allowed by {policy}"),
        Decision::Denied { policy } => format!("denied by {policy}"),
        Decision::ToProxy { policy } => {
            format!("allowed to the node's L7 proxy by {policy}: its HTTP rules decide each request")
        }
        Decision::DefaultDeny { selected_by } if selected_by.is_empty() => {
            "denied: default deny (policy_enforcement=always)".into()
        }
        Decision::DefaultDeny { selected_by } => format!(
            "denied: default deny because {} select{} this pod",
            selected_by.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
            if selected_by.len() == 1 { "s" } else { "" }
        ),
    }
}
