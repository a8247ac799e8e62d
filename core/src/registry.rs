//! Backend names and what each backend declares about itself. The plan and the engine know
//! backends only through a [`BackendSpec`]; no code outside a backend's own crate names a
//! backend by a hard-coded variant.
//!
//! Adding a backend: its crate exports a `SPEC` and a [`crate::Dataplane`] implementation, one
//! entry goes into [`KNOWN_BACKENDS`] (its name and preference under `dataplane: auto`), and one
//! arm into the agent's registry (`agent/src/daemon/registry.rs`) that constructs it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::caps::Capability;
use crate::plan::Feature;

/// A backend's name (`ebpf`, `iptables`): a short inline string, so owners stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId {
    len: u8,
    bytes: [u8; BackendId::MAX],
}

/// A name that is not a backend id: too long, empty or not `[a-z0-9-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid backend name {given:?}: 1 to 16 characters of a-z, 0-9 and '-'")]
pub struct InvalidBackendId {
    pub given: String,
}

impl BackendId {
    pub const MAX: usize = 16;
    pub const EBPF: BackendId = BackendId::new("ebpf");
    pub const IPTABLES: BackendId = BackendId::new("iptables");

    /// For constants; panics at compile time on a name longer than [`BackendId::MAX`].
    pub const fn new(s: &str) -> BackendId {
        let b = s.as_bytes();
        assert!(!b.is_empty() && b.len() <= BackendId::MAX, "backend id must be 1..=16 bytes");
        let mut bytes = [0u8; BackendId::MAX];
        let mut i = 0;
        while i < b.len() {
            bytes[i] = b[i];
            i += 1;
        }
        BackendId { len: b.len() as u8, bytes }
    }

    pub fn parse(s: &str) -> Result<BackendId, InvalidBackendId> {
        let ok = !s.is_empty()
            && s.len() <= BackendId::MAX
            && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if ok { Ok(BackendId::new(s)) } else { Err(InvalidBackendId { given: s.into() }) }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    /// The name people read (`eBPF`), from [`KNOWN_BACKENDS`]; the id itself otherwise.
    pub fn title(&self) -> &str {
        KNOWN_BACKENDS.iter().find(|k| k.id == *self).map(|k| k.title).unwrap_or(self.as_str())
    }

    pub fn is_known(&self) -> bool {
        KNOWN_BACKENDS.iter().any(|k| k.id == *self)
    }
}

impl fmt::Debug for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackendId({})", self.as_str())
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

impl Serialize for BackendId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BackendId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BackendId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A backend this build knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownBackend {
    pub id: BackendId,
    pub title: &'static str,
}

/// Every backend of this build, best first: `dataplane: auto` tries them in this order.
pub const KNOWN_BACKENDS: &[KnownBackend] =
    &[KnownBackend { id: BackendId::EBPF, title: "eBPF" }, KnownBackend { id: BackendId::IPTABLES, title: "iptables" }];

/// What a backend says about itself: the features it implements in this build and the kernel
/// capabilities each needs. Static data, so the plan stays a pure function.
#[derive(Debug, Clone, Copy)]
pub struct BackendSpec {
    pub id: BackendId,
    /// The capabilities a feature needs on this backend; `None` when this build does not
    /// implement the feature on it.
    pub needs: fn(Feature) -> Option<&'static [Capability]>,
    /// Its `policy` sees a Service's backend only when it translates ClusterIPs itself (it
    /// polices at the pod's interface, before netfilter's DNAT). The plan gives it `policy`
    /// only together with `cluster-ip`.
    pub policy_needs_own_translation: bool,
}

impl BackendSpec {
    pub fn implements(&self, f: Feature) -> bool {
        (self.needs)(f).is_some()
    }

    /// Every feature this build implements on the backend.
    pub fn implemented(&self) -> std::collections::BTreeSet<Feature> {
        Feature::ALL.into_iter().filter(|f| self.implements(*f)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_bad_names() {
        assert_eq!(BackendId::parse("ebpf"), Ok(BackendId::EBPF));
        assert_eq!(BackendId::EBPF.to_string(), "eBPF");
        assert_eq!(BackendId::parse("nft").map(|b| b.to_string()), Ok("nft".into()));
        for bad in ["", "EBPF", "a b", "seventeen-letters"] {
            let e = BackendId::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        let json = serde_json::to_string(&BackendId::IPTABLES).expect("json");
        assert_eq!(json, "\"iptables\"");
        assert_eq!(serde_json::from_str::<BackendId>(&json).expect("back"), BackendId::IPTABLES);
    }
}
