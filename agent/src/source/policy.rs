//! Namespaces and network policies -> core policy model, validated as the API server (and, for
//! the CRDs, their OpenAPI schema) would. A policy that fails validation is refused whole, by
//! name, with the first wrong field; every other policy is translated as if it did not exist.
//! A rule sluice does not enforce yet (L7 `rules`) fails closed: the policy still isolates, that
//! rule allows nothing, and the rule is reported.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as K8sSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_core::Protocol;
use sluice_core::policy::identity::NAMESPACE_KEY;
use sluice_core::policy::{
    Entity, LabelSelector, NsScope, Operator, Peer, Policy, PolicyKind, PolicyName, PortRule, PortSpec, Requirement,
    Rule, Subject,
};
use sluice_core::validate::{self, Problem, Rejected, Syntax};

use super::validate::display_name;

/// The label that puts any policy in audit mode: what it would drop is allowed and reported.
pub const AUDIT_LABEL: &str = "policy.sluice.io/audit";
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

type Res<T> = Result<T, Box<Rejected>>;

struct Obj(String);

impl Obj {
    fn err(&self, field: impl Into<String>, value: impl std::fmt::Display, problem: Problem) -> Box<Rejected> {
        Box::new(Rejected::new(self.0.clone(), field, value, problem))
    }
    fn syntax(&self, field: &str, v: &str, s: Syntax) -> Res<()> {
        if s.check(v) { Ok(()) } else { Err(self.err(field, v, Problem::Syntax { syntax: s })) }
    }
    fn inconsistent(&self, field: &str, v: impl std::fmt::Display, detail: &str) -> Box<Rejected> {
        self.err(field, v, Problem::Inconsistent { detail: detail.into() })
    }
}

/// Namespace name -> labels (with `kubernetes.io/metadata.name`, as the API server sets it).
pub fn namespaces(
    objs: &[std::sync::Arc<Namespace>],
    rejected: &mut Vec<Rejected>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for n in objs {
        let o = Obj(display_name("Namespace", &n.metadata, false));
        let res = (|| -> Res<()> {
            let name = n.metadata.name.as_deref().ok_or_else(|| o.err("metadata.name", "", Problem::Missing))?;
            o.syntax("metadata.name", name, Syntax::Dns1123Label)?;
            labels(&o, "metadata.labels", n.metadata.labels.as_ref())
        })();
        match res {
            Ok(()) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                let mut l = n.metadata.labels.clone().unwrap_or_default();
                l.insert(NAME_LABEL.into(), name.clone());
                out.insert(name, l);
            }
            Err(r) => rejected.push(*r),
        }
    }
    out
}

fn labels(o: &Obj, field: &str, l: Option<&BTreeMap<String, String>>) -> Res<()> {
    for (k, v) in l.into_iter().flatten() {
        o.syntax(field, k, Syntax::QualifiedName)?;
        o.syntax(&format!("{field}[{k}]"), v, Syntax::LabelValue)?;
    }
    Ok(())
}

fn audit(m: &ObjectMeta) -> bool {
    m.labels.as_ref().and_then(|l| l.get(AUDIT_LABEL)).is_some_and(|v| v == "true")
}

fn meta(o: &Obj, m: &ObjectMeta, namespaced: bool) -> Res<()> {
    let name = m.name.as_deref().ok_or_else(|| o.err("metadata.name", "", Problem::Missing))?;
    o.syntax("metadata.name", name, Syntax::Dns1123Subdomain)?;
    if namespaced && let Some(ns) = m.namespace.as_deref() {
        o.syntax("metadata.namespace", ns, Syntax::Dns1123Label)?;
    }
    labels(o, "metadata.labels", m.labels.as_ref())?;
    if let Some(v) = m.labels.as_ref().and_then(|l| l.get(AUDIT_LABEL)) {
        validate_one_of(o, &format!("metadata.labels[{AUDIT_LABEL}]"), v, &["true", "false"])?;
    }
    Ok(())
}

fn validate_one_of(o: &Obj, field: &str, v: &str, accepted: &[&str]) -> Res<()> {
    if accepted.contains(&v) { Ok(()) } else { Err(o.err(field, v, Problem::OneOf { accepted: accepted.join(", ") })) }
}

/// A selector, validated. `strip_k8s`: Cilium-style keys may carry a `k8s:` source prefix.
fn selector(o: &Obj, field: &str, s: &K8sSelector, strip_k8s: bool) -> Res<LabelSelector> {
    let key = |k: &str| if strip_k8s { k.strip_prefix("k8s:").unwrap_or(k).to_string() } else { k.to_string() };
    let mut out = LabelSelector::default();
    for (k, v) in s.match_labels.iter().flatten() {
        let k = key(k);
        o.syntax(&format!("{field}.matchLabels"), &k, Syntax::QualifiedName)?;
        o.syntax(&format!("{field}.matchLabels[{k}]"), v, Syntax::LabelValue)?;
        out.match_labels.insert(k, v.clone());
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let k = key(&e.key);
        o.syntax(&format!("{f}.key"), &k, Syntax::QualifiedName)?;
        let operator = match e.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(o.err(
                    format!("{f}.operator"),
                    other,
                    Problem::OneOf { accepted: "In, NotIn, Exists, DoesNotExist".into() },
                ));
            }
        };
        let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
        for v in &values {
            o.syntax(&format!("{f}.values"), v, Syntax::LabelValue)?;
        }
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(o.inconsistent(&format!("{f}.values"), "[]", "In and NotIn need at least one value"));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(o.inconsistent(
                    &format!("{f}.values"),
                    values.iter().cloned().collect::<Vec<_>>().join(","),
                    "Exists and DoesNotExist take no values",
                ));
            }
            _ => {}
        }
        out.match_expressions.push(Requirement { key: k, operator, values });
    }
    Ok(out)
}

fn protocol(o: &Obj, field: &str, p: Option<&str>, any: bool) -> Res<Vec<Protocol>> {
    Ok(match p.unwrap_or("TCP") {
        "TCP" => vec![Protocol::Tcp],
        "UDP" => vec![Protocol::Udp],
        "SCTP" => vec![Protocol::Sctp],
        "ANY" if any => vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
        other => {
            let accepted = if any { "TCP, UDP, SCTP, ANY" } else { "TCP, UDP, SCTP" };
            return Err(o.err(field, other, Problem::OneOf { accepted: accepted.into() }));
        }
    })
}

/// A port (number or name) and an optional endPort.
fn port_spec(o: &Obj, field: &str, port: Option<&IntOrString>, end: Option<i32>) -> Res<Option<PortSpec>> {
    let spec = match port {
        None => {
            if let Some(e) = end {
                return Err(o.inconsistent(&format!("{field}.endPort"), e, "endPort needs a numeric port"));
            }
            return Ok(None);
        }
        Some(IntOrString::Int(n)) => {
            let p = validate::port(*n, 1, 65535).map_err(|pr| o.err(format!("{field}.port"), n, pr))?;
            let e = match end {
                None => p,
                Some(e) => {
                    let e = validate::port(e, 1, 65535).map_err(|pr| o.err(format!("{field}.endPort"), e, pr))?;
                    if e < p {
                        return Err(o.err(format!("{field}.endPort"), e, Problem::Range { lo: p.into(), hi: 65535 }));
                    }
                    e
                }
            };
            PortSpec::Range { port: p, end: e }
        }
        Some(IntOrString::String(s)) => {
            // Cilium's CRDs write numbers as strings.
            if let Ok(n) = s.parse::<i32>() {
                return port_spec(o, field, Some(&IntOrString::Int(n)), end);
            }
            o.syntax(&format!("{field}.port"), s, Syntax::IanaServiceName)?;
            if let Some(e) = end {
                return Err(o.inconsistent(
                    &format!("{field}.endPort"),
                    e,
                    "endPort needs a numeric port, not a named one",
                ));
            }
            PortSpec::Named(s.clone())
        }
    };
    Ok(Some(spec))
}

fn cidr(o: &Obj, field: &str, s: &str) -> Res<Option<ipnet::Ipv4Net>> {
    if s.contains(':') {
        // IPv6 blocks are valid and match no IPv4 traffic: nothing to enforce.
        if s.parse::<ipnet::Ipv6Net>().is_ok() {
            return Ok(None);
        }
        return Err(o.err(field, s, Problem::NotCidr));
    }
    validate::network(s).map(Some).map_err(|p| o.err(field, s, p))
}

fn block(o: &Obj, field: &str, c: &str, except: &[String]) -> Res<Option<Peer>> {
    let Some(net) = cidr(o, &format!("{field}.cidr"), c)? else { return Ok(None) };
    let mut ex = Vec::new();
    for (i, e) in except.iter().enumerate() {
        let f = format!("{field}.except[{i}]");
        if let Some(x) = cidr(o, &f, e)? {
            if !net.contains(&x) || x.prefix_len() <= net.prefix_len() {
                return Err(o.inconsistent(&f, e, &format!("except must lie strictly inside cidr {net}")));
            }
            ex.push(x);
        }
    }
    Ok(Some(Peer::Cidr { net, except: ex }))
}

fn np_peer(o: &Obj, field: &str, ns: &str, p: &NetworkPolicyPeer) -> Res<Option<Peer>> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(o.inconsistent(
                field,
                "ipBlock",
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            ));
        }
        return block(o, &format!("{field}.ipBlock"), &b.cidr, b.except.as_deref().unwrap_or_default());
    }
    let pods = p.pod_selector.as_ref().map(|s| selector(o, &format!("{field}.podSelector"), s, false)).transpose()?;
    let nss = p
        .namespace_selector
        .as_ref()
        .map(|s| selector(o, &format!("{field}.namespaceSelector"), s, false))
        .transpose()?;
    Ok(Some(match (pods, nss) {
        (None, None) => {
            return Err(o.err(
                field,
                "{}",
                Problem::Inconsistent { detail: "a peer needs podSelector, namespaceSelector or ipBlock".into() },
            ));
        }
        (Some(pods), None) => Peer::Pods { namespaces: NsScope::Named(ns.into()), pods, extended: false },
        (pods, Some(n)) => {
            Peer::Pods { namespaces: NsScope::Selector(n), pods: pods.unwrap_or_default(), extended: false }
        }
    }))
}

fn np_ports(o: &Obj, field: &str, ports: Option<&Vec<NetworkPolicyPort>>) -> Res<Option<Vec<PortRule>>> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else { return Ok(None) };
    let mut out = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let protos = protocol(o, &format!("{f}.protocol"), p.protocol.as_deref(), false)?;
        let spec = port_spec(o, &f, p.port.as_ref(), p.end_port)?;
        out.extend(protos.into_iter().map(|protocol| PortRule { protocol, port: spec.clone(), http: None }));
    }
    Ok(Some(out))
}

fn np_rules<'a>(
    o: &Obj,
    field: &str,
    ns: &str,
    rules: impl Iterator<Item = (Option<&'a Vec<NetworkPolicyPeer>>, Option<&'a Vec<NetworkPolicyPort>>)>,
) -> Res<Vec<Rule>> {
    let mut out = Vec::new();
    for (i, (peers, ports)) in rules.enumerate() {
        let f = format!("{field}[{i}]");
        let peers = match peers.filter(|p| !p.is_empty()) {
            None => None,
            Some(ps) => {
                let mut v = Vec::new();
                for (j, p) in ps.iter().enumerate() {
                    v.extend(np_peer(o, &format!("{f}.peers[{j}]"), ns, p)?);
                }
                // Every peer was an IPv6 block: this rule allows no IPv4 traffic.
                if v.is_empty() {
                    continue;
                }
                Some(v)
            }
        };
        out.push(Rule { peers, ports: np_ports(o, &format!("{f}.ports"), ports)? });
    }
    Ok(out)
}

/// A `networking.k8s.io/v1` NetworkPolicy.
pub fn network_policy(np: &NetworkPolicy) -> Res<Policy> {
    let o = Obj(display_name("NetworkPolicy", &np.metadata, true));
    meta(&o, &np.metadata, true)?;
    let ns = np.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = np.spec.as_ref().ok_or_else(|| o.err("spec", "", Problem::Missing))?;
    let subject = selector(&o, "spec.podSelector", &spec.pod_selector.clone().unwrap_or_default(), false)?;
    let types: Vec<String> = match &spec.policy_types {
        Some(t) => {
            for (i, v) in t.iter().enumerate() {
                validate_one_of(&o, &format!("spec.policyTypes[{i}]"), v, &["Ingress", "Egress"])?;
            }
            t.clone()
        }
        // As the API server defaults it: Ingress, plus Egress when there are egress rules.
        None => {
            let mut t = vec!["Ingress".to_string()];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                t.push("Egress".into());
            }
            t
        }
    };
    let ingress =
        np_rules(&o, "spec.ingress", &ns, spec.ingress.iter().flatten().map(|r| (r.from.as_ref(), r.ports.as_ref())))?;
    let egress =
        np_rules(&o, "spec.egress", &ns, spec.egress.iter().flatten().map(|r| (r.to.as_ref(), r.ports.as_ref())))?;
    Ok(Policy {
        name: PolicyName {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some(ns.clone()),
            name: np.metadata.name.clone().unwrap_or_default(),
        },
        subject: Subject { namespace: Some(ns), selector: subject, extended: false },
        ingress: types.iter().any(|t| t == "Ingress").then_some(ingress),
        egress: types.iter().any(|t| t == "Egress").then_some(egress),
        ingress_deny: Vec::new(),
        egress_deny: Vec::new(),
        audit: audit(&np.metadata),
    })
}

#[path = "policy_crd.rs"]
mod crd;
#[path = "policy_l7.rs"]
mod policy_l7;
pub use crd::{SluicePolicyDoc, sluice_policy};

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
