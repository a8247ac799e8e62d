//! Network policy in core: identities, the policy model both policy kinds translate into, and
//! the compiler that turns them into per-endpoint rules the backends encode. Pure: no I/O.
//!
//! - [`selector`]: label selectors.
//! - [`identity`]: numeric identities from labels, the same on every node.
//! - [`model`]: policies, rules, peers, entities, enforcement modes.
//! - [`compile`]: per-endpoint, per-direction rule lists; [`compile::decide`] evaluates them.
//! - [`trace`]: a whole connection (source egress, destination ingress), for `sluice policy trace`.

pub mod compile;
pub mod identity;
pub mod l7;
pub mod l7_frontends;
pub mod lower;
pub mod model;
pub mod selector;
pub mod trace;
pub mod view;

pub use compile::{
    Action, CompiledRule, Decision, DirectionPolicy, EndpointPolicy, Identities, NamedPort, PeerMatch, PolicyContext,
    PolicyEndpoint, PolicyInput, decide, rule_matches,
};
pub use identity::{Allocation, Identity, IdentityLabels};
pub use l7::{HeaderMatch, HttpMatcher, HttpRule, HttpRuleError};
pub use lower::{LoweredPeer, LoweredRule, SetEntry, audit_shadow, lower};
pub use model::{
    Direction, Enforcement, Entity, NsScope, Peer, Policy, PolicyKind, PolicyName, PortRule, PortSpec, Rule, Subject,
};
pub use selector::{LabelSelector, Operator, Requirement};
pub use view::{EndpointRules, PolicyView};

#[cfg(test)]
mod tests;
