//! Security identities: one number per distinct set of security-relevant labels (the pod's
//! labels, its namespace's labels and the namespace name), the same on every node.
//!
//! Numbering is deterministic, so nodes agree without talking to each other and an agent
//! restart finds the same numbers: a label set's number is its FNV-1a hash folded into the
//! cluster range (256 ..= 2^24-1, Cilium's layout: reserved identities below 256, node-local
//! CIDR identities from 2^24). Two label sets whose hashes meet are never given one number:
//! every node sees every label set of the cluster, orders the colliding sets the same way and
//! moves all but the first to the next free number, and the collision is reported (`sluice
//! identity list`). An identity exists while some pod carries its labels; nothing needs to be
//! collected when the last one goes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Identity(pub u32);

impl Identity {
    pub const HOST: Identity = Identity(1);
    pub const WORLD: Identity = Identity(2);
    pub const UNMANAGED: Identity = Identity(3);
    pub const HEALTH: Identity = Identity(4);
    pub const INIT: Identity = Identity(5);
    pub const REMOTE_NODE: Identity = Identity(6);
    pub const KUBE_APISERVER: Identity = Identity(7);
    /// The first cluster identity.
    pub const MIN_CLUSTER: u32 = 256;
    /// The last cluster identity (CIDR identities start above).
    pub const MAX_CLUSTER: u32 = (1 << 24) - 1;

    pub const RESERVED: [(Identity, &'static str); 7] = [
        (Identity::HOST, "host"),
        (Identity::WORLD, "world"),
        (Identity::UNMANAGED, "unmanaged"),
        (Identity::HEALTH, "health"),
        (Identity::INIT, "init"),
        (Identity::REMOTE_NODE, "remote-node"),
        (Identity::KUBE_APISERVER, "kube-apiserver"),
    ];

    /// `reserved:host` and friends for the reserved numbers.
    pub fn reserved_name(self) -> Option<&'static str> {
        Identity::RESERVED.iter().find(|(i, _)| *i == self).map(|(_, n)| *n)
    }

    pub fn is_cluster(self) -> bool {
        (Identity::MIN_CLUSTER..=Identity::MAX_CLUSTER).contains(&self.0)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The labels an identity stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdentityLabels {
    pub namespace: String,
    pub pod: BTreeMap<String, String>,
    /// The namespace's labels (with `kubernetes.io/metadata.name`).
    pub namespace_labels: BTreeMap<String, String>,
}

/// The key Cilium-style selectors use to name a pod's namespace.
pub const NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";
/// Prefix under which Cilium-style selectors see namespace labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

impl IdentityLabels {
    /// One canonical string: the identity's name in hashes and listings.
    pub fn canonical(&self) -> String {
        let mut s = format!("namespace={}", self.namespace);
        for (k, v) in &self.pod {
            s.push_str(&format!(";pod:{k}={v}"));
        }
        for (k, v) in &self.namespace_labels {
            s.push_str(&format!(";ns:{k}={v}"));
        }
        s
    }

    /// The labels as Cilium-style endpoint selectors see them: the pod's own, the namespace
    /// name under [`NAMESPACE_KEY`] and namespace labels under [`NAMESPACE_LABELS_PREFIX`].
    pub fn extended(&self) -> BTreeMap<String, String> {
        let mut m = self.pod.clone();
        m.insert(NAMESPACE_KEY.into(), self.namespace.clone());
        for (k, v) in &self.namespace_labels {
            m.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
        }
        m
    }
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Where a label set's number would be without collisions.
pub fn preferred(labels: &IdentityLabels) -> Identity {
    let span = u64::from(Identity::MAX_CLUSTER - Identity::MIN_CLUSTER + 1);
    Identity(Identity::MIN_CLUSTER + (fnv1a(&labels.canonical()) % span) as u32)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collision {
    pub labels: String,
    pub preferred: Identity,
    pub given: Identity,
}

/// Every cluster identity in use, both ways round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    pub by_labels: BTreeMap<IdentityLabels, Identity>,
    pub labels: BTreeMap<Identity, IdentityLabels>,
    pub collisions: Vec<Collision>,
}

impl Allocation {
    pub fn get(&self, l: &IdentityLabels) -> Option<Identity> {
        self.by_labels.get(l).copied()
    }
}

/// Number every label set. Deterministic in the set of label sets (not in their order).
pub fn allocate(sets: impl IntoIterator<Item = IdentityLabels>) -> Allocation {
    let distinct: BTreeSet<IdentityLabels> = sets.into_iter().collect();
    let mut ordered: Vec<(Identity, String, IdentityLabels)> =
        distinct.into_iter().map(|l| (preferred(&l), l.canonical(), l)).collect();
    ordered.sort();
    let mut out = Allocation::default();
    for (want, canonical, l) in ordered {
        let mut n = want.0;
        while out.labels.contains_key(&Identity(n)) {
            n = if n == Identity::MAX_CLUSTER { Identity::MIN_CLUSTER } else { n + 1 };
        }
        if n != want.0 {
            out.collisions.push(Collision { labels: canonical, preferred: want, given: Identity(n) });
        }
        out.labels.insert(Identity(n), l.clone());
        out.by_labels.insert(l, Identity(n));
    }
    out
}
