//! The API server's rules for names, labels, addresses and ports, as pure functions, and the
//! typed rejection every source reports when an object breaks one.
//!
//! In standalone mode sluice is the only validator the manifests meet; with the Kubernetes
//! source it is the last line of defence. Either way an object that fails is refused whole (or,
//! for a conflict, in the one frontend that conflicts), named with the field, the value and what
//! is accepted, and nothing else changes. The walk over Kubernetes objects lives with the
//! translation (agent); the rules it applies are here, so they are unit-tested without types
//! from Kubernetes and shared by every source.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// Which naming rule a string breaks (Kubernetes' `IsDNS1123Label` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Syntax {
    /// Namespaces, port names: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
    Dns1123Label,
    /// Pods, Nodes, EndpointSlices: dot-separated DNS-1123 labels, at most 253.
    Dns1123Subdomain,
    /// Services: a DNS-1123 label that starts with a letter, at most 63.
    Dns1035Label,
    /// Label keys: an optional DNS subdomain prefix and `/`, then a name of at most 63
    /// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
    QualifiedName,
    /// Label values: empty, or at most 63 alphanumerics, `-`, `_`, `.`, starting and ending
    /// alphanumeric.
    LabelValue,
    /// Named target ports: at most 15 lowercase alphanumerics and `-`, with a letter, no `--`,
    /// not starting or ending with `-`.
    IanaServiceName,
}

impl fmt::Display for Syntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Syntax::Dns1123Label => {
                "a DNS-1123 label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
            }
            Syntax::Dns1123Subdomain => {
                "a DNS-1123 subdomain (at most 253 characters: lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit)"
            }
            Syntax::Dns1035Label => {
                "a DNS-1035 label (at most 63 lowercase letters, digits and '-', starting with a letter, ending with a letter or digit)"
            }
            Syntax::QualifiedName => {
                "a qualified name ([prefix/]name: name at most 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit; prefix a DNS-1123 subdomain)"
            }
            Syntax::LabelValue => {
                "a label value (empty, or at most 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit)"
            }
            Syntax::IanaServiceName => {
                "an IANA service name (at most 15 lowercase letters, digits and '-', with at least one letter, no '--', not starting or ending with '-')"
            }
        })
    }
}

fn alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn dns_label(s: &str, first_letter: bool) -> bool {
    let first = s.chars().next();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum_lower(c) || c == '-')
        && first.is_some_and(|c| if first_letter { c.is_ascii_lowercase() } else { alnum_lower(c) })
        && s.chars().last().is_some_and(alnum_lower)
}

fn label_name(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| ok(c) || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_some_and(ok)
        && s.chars().last().is_some_and(ok)
}

impl Syntax {
    pub fn check(self, s: &str) -> bool {
        match self {
            Syntax::Dns1123Label => dns_label(s, false),
            Syntax::Dns1035Label => dns_label(s, true),
            Syntax::Dns1123Subdomain => s.len() <= 253 && s.split('.').all(|p| dns_label(p, false)),
            Syntax::QualifiedName => match s.split_once('/') {
                Some((prefix, name)) => Syntax::Dns1123Subdomain.check(prefix) && label_name(name),
                None => label_name(s),
            },
            Syntax::LabelValue => s.is_empty() || label_name(s),
            Syntax::IanaServiceName => {
                !s.is_empty()
                    && s.len() <= 15
                    && s.chars().all(|c| alnum_lower(c) || c == '-')
                    && s.chars().any(|c| c.is_ascii_lowercase())
                    && !s.contains("--")
                    && !s.starts_with('-')
                    && !s.ends_with('-')
            }
        }
    }
}

/// Address ranges no Service frontend or endpoint may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddrClass {
    Unspecified,
    Loopback,
    LinkLocal,
    Multicast,
    Broadcast,
    /// 240.0.0.0/4 (reserved for future use; the kernel does not route it by default).
    Reserved,
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddrClass::Unspecified => "unspecified (0.0.0.0)",
            AddrClass::Loopback => "loopback (127.0.0.0/8)",
            AddrClass::LinkLocal => "link-local (169.254.0.0/16)",
            AddrClass::Multicast => "multicast (224.0.0.0/4)",
            AddrClass::Broadcast => "broadcast (255.255.255.255)",
            AddrClass::Reserved => "reserved (240.0.0.0/4)",
        })
    }
}

/// The special range an address falls in, if any (IPv4 only; IPv6 is refused separately).
pub fn special(ip: Ipv4Addr) -> Option<AddrClass> {
    if ip.is_unspecified() {
        Some(AddrClass::Unspecified)
    } else if ip.is_loopback() {
        Some(AddrClass::Loopback)
    } else if ip.is_link_local() {
        Some(AddrClass::LinkLocal)
    } else if ip.is_multicast() {
        Some(AddrClass::Multicast)
    } else if ip.is_broadcast() {
        Some(AddrClass::Broadcast)
    } else if ip.octets()[0] >= 240 {
        Some(AddrClass::Reserved)
    } else {
        None
    }
}

/// What is wrong with one field's value. Rendered after the field and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum Problem {
    #[error("is required")]
    Missing,
    #[error("must be {syntax}")]
    Syntax { syntax: Syntax },
    #[error("is not an IPv4 address")]
    NotIpv4,
    #[error("is IPv6; sluice serves IPv4 only")]
    Ipv6,
    #[error("is a {class} address, which no Service or endpoint may use")]
    Special { class: AddrClass },
    #[error("is outside service_cidr {cidr}; accepted: an address inside it, empty (allocated), or None (headless)")]
    OutsideServiceCidr { cidr: ipnet::Ipv4Net },
    #[error("is inside the pod network {cidr} (cluster_cidr): it would capture pod traffic")]
    InPodNetwork { cidr: ipnet::Ipv4Net },
    #[error("is the address of {owner}")]
    TakenBy { owner: String },
    #[error("is not a CIDR (accepted: a.b.c.d/n)")]
    NotCidr,
    #[error("has host bits set; the network is {network}")]
    HostBits { network: ipnet::Ipv4Net },
    #[error("is outside {lo}-{hi}")]
    Range { lo: i64, hi: i64 },
    #[error("is not one of {accepted}")]
    OneOf { accepted: String },
    #[error("repeats {first}")]
    Duplicate { first: String },
    #[error(
        "is already served for {winner}, which came first; only this frontend is refused (any other frontend of this Service is still served)"
    )]
    Conflict { winner: String },
    #[error("is empty and service_cidr {cidr} has no free address; set spec.clusterIP or widen service_cidr")]
    PoolExhausted { cidr: ipnet::Ipv4Net },
    #[error("is only allowed on {allowed}")]
    NotAllowed { allowed: String },
    #[error("is not a Kubernetes object (apiVersion, kind and metadata.name are required)")]
    NotAnObject,
    #[error("is inconsistent: {detail}")]
    Inconsistent { detail: String },
    #[error("does not decode: {detail}")]
    Decode { detail: String },
    #[error("is {detail}")]
    Invalid { detail: String },
    /// Admitted, but this part is not enforced by this build: it fails closed (allows nothing).
    #[error("is not enforced by this build ({detail}); this rule allows nothing until it is (fails closed)")]
    NotEnforced { detail: String },
}

/// One refused object (or, for a conflict, one refused frontend of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// `Kind namespace/name` (or `Kind name` for cluster-scoped kinds).
    pub object: String,
    /// The field path, as `kubectl explain` names it (`spec.ports[1].nodePort`).
    pub field: String,
    /// The offending value as the object gave it (escaped: control characters shown as `\n`...).
    pub value: String,
    #[serde(flatten)]
    pub problem: Problem,
    /// The whole reason in words (field, value, problem): what status and the lists print.
    pub reason: String,
}

impl Rejected {
    pub fn new(
        object: impl Into<String>,
        field: impl Into<String>,
        value: impl fmt::Display,
        problem: Problem,
    ) -> Self {
        let (field, value) = (field.into(), escape(&value.to_string()));
        let reason = format!("{field} {value:?} {problem}");
        Rejected { object: object.into(), field, value, problem, reason }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

/// Control characters, quotes and backslashes escaped, at most 256 characters: a value from an
/// object never reaches a log line, a status table or a rule comment as it was written.
pub fn escape(s: &str) -> String {
    let mut out: String = s.chars().take(256).flat_map(char::escape_default).collect();
    if s.chars().count() > 256 {
        out.push_str("...");
    }
    out
}

/// Parse an IPv4 Service or endpoint address: not IPv6, not special.
pub fn ipv4(s: &str) -> Result<Ipv4Addr, Problem> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => special(ip).map_or(Ok(ip), |class| Err(Problem::Special { class })),
        Ok(IpAddr::V6(_)) => Err(Problem::Ipv6),
        Err(_) => Err(Problem::NotIpv4),
    }
}

/// A port number field: `lo..=hi`.
pub fn port(v: i32, lo: u16, hi: u16) -> Result<u16, Problem> {
    u16::try_from(v).ok().filter(|p| (lo..=hi).contains(p)).ok_or(Problem::Range { lo: lo.into(), hi: hi.into() })
}

/// A CIDR that must be a network (no host bits), as the config and Node.spec.podCIDR need.
pub fn network(s: &str) -> Result<ipnet::Ipv4Net, Problem> {
    let net: ipnet::Ipv4Net = s.trim().parse().map_err(|_| Problem::NotCidr)?;
    if net.trunc() != net {
        return Err(Problem::HostBits { network: net.trunc() });
    }
    Ok(net)
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
