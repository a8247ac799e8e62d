//! `SluiceNetworkPolicy` (namespaced) and `SluiceClusterwideNetworkPolicy`, modelled on
//! CiliumNetworkPolicy: `endpointSelector`, `ingress`/`egress` rules with `fromEndpoints` /
//! `toEndpoints`, `fromEntities` / `toEntities`, `fromCIDR` / `toCIDR`, `fromCIDRSet` /
//! `toCIDRSet` (with `except`) and `toPorts` (`port`, `endPort`, `protocol` incl. ANY), and
//! `ingressDeny` / `egressDeny`. Within a rule the peer lists are ORed and ANDed with `toPorts`;
//! a rule with ports only allows every peer on them; an empty rule `{}` allows nothing.
//!
//! Endpoint selectors see Cilium's extended labels: the namespace as
//! `io.kubernetes.pod.namespace`, namespace labels as `io.cilium.k8s.namespace.labels.*`; a
//! `k8s:` key prefix is accepted. In a namespaced policy a selector that does not name a
//! namespace stays in the policy's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as K8sSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

use super::*;

#[derive(Debug, Clone, Deserialize)]
pub struct SluicePolicyDoc {
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<Value>,
}

const RULE_KEYS_IN: [&str; 5] = ["fromEndpoints", "fromEntities", "fromCIDR", "fromCIDRSet", "toPorts"];
const RULE_KEYS_OUT: [&str; 5] = ["toEndpoints", "toEntities", "toCIDR", "toCIDRSet", "toPorts"];

fn decode<T: serde::de::DeserializeOwned>(o: &Obj, field: &str, v: &Value) -> Res<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| o.err(field, v.to_string(), Problem::Decode { detail: e.to_string() }))
}

fn endpoints(o: &Obj, field: &str, ns: Option<&str>, v: &Value) -> Res<Vec<Peer>> {
    let sels: Vec<K8sSelector> = decode(o, field, v)?;
    let mut out = Vec::new();
    for (i, s) in sels.iter().enumerate() {
        let sel = selector(o, &format!("{field}[{i}]"), s, true)?;
        let namespaces = match ns {
            Some(ns) if !sel.mentions(NAMESPACE_KEY) => NsScope::Named(ns.into()),
            _ => NsScope::Any,
        };
        out.push(Peer::Pods { namespaces, pods: sel, extended: true });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CidrSet {
    cidr: String,
    #[serde(default)]
    except: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortProtocol {
    port: Option<IntOrString>,
    end_port: Option<i32>,
    protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortsDoc {
    #[serde(default)]
    ports: Vec<PortProtocol>,
    rules: Option<Value>,
}

/// One rule; `Ok(None)` when it allows nothing (empty, or fails closed).
fn rule(o: &Obj, field: &str, ns: Option<&str>, dir: Dir, v: &Value, notes: &mut Vec<Rejected>) -> Res<Option<Rule>> {
    let dir_in = dir.ingress;
    let map = v
        .as_object()
        .ok_or_else(|| o.err(field, v.to_string(), Problem::Decode { detail: "a rule is an object".into() }))?;
    let known = if dir_in { RULE_KEYS_IN } else { RULE_KEYS_OUT };
    let (eps, ents, cidrs, sets) = (known[0], known[1], known[2], known[3]);
    let mut fails_closed = None;
    for k in map.keys() {
        if !known.contains(&k.as_str()) {
            fails_closed =
                Some((format!("{field}.{k}"), format!("{k} is not implemented; known: {}", known.join(", "))));
        }
    }
    let mut peers: Vec<Peer> = Vec::new();
    let mut named_peers = false;
    if let Some(v) = map.get(eps) {
        peers.extend(endpoints(o, &format!("{field}.{eps}"), ns, v)?);
        named_peers = true;
    }
    if let Some(v) = map.get(ents) {
        let names: Vec<String> = decode(o, &format!("{field}.{ents}"), v)?;
        for (i, n) in names.iter().enumerate() {
            let e = Entity::parse(n).ok_or_else(|| {
                o.err(format!("{field}.{ents}[{i}]"), n, Problem::OneOf { accepted: Entity::NAMES.into() })
            })?;
            peers.push(Peer::Entity(e));
        }
        named_peers = true;
    }
    if let Some(v) = map.get(cidrs) {
        let list: Vec<String> = decode(o, &format!("{field}.{cidrs}"), v)?;
        for (i, c) in list.iter().enumerate() {
            if let Some(net) = cidr(o, &format!("{field}.{cidrs}[{i}]"), c)? {
                peers.push(Peer::Cidr { net, except: vec![] });
            }
        }
        named_peers = true;
    }
    if let Some(v) = map.get(sets) {
        let list: Vec<CidrSet> = decode(o, &format!("{field}.{sets}"), v)?;
        for (i, s) in list.iter().enumerate() {
            peers.extend(block(o, &format!("{field}.{sets}[{i}]"), &s.cidr, &s.except)?);
        }
        named_peers = true;
    }
    let mut ports: Option<Vec<PortRule>> = None;
    if let Some(v) = map.get("toPorts") {
        let docs: Vec<PortsDoc> = decode(o, &format!("{field}.toPorts"), v)?;
        let mut list = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            let f = format!("{field}.toPorts[{i}]");
            let http = match d.rules.as_ref().filter(|r| !r.is_null()) {
                None => None,
                Some(r) => match super::policy_l7::rules(o, &format!("{f}.rules"), r, dir.deny)? {
                    super::policy_l7::L7::Http(h) => Some(h),
                    super::policy_l7::L7::NotEnforced { field, detail } => {
                        fails_closed = Some((field, detail));
                        None
                    }
                },
            };
            for (j, p) in d.ports.iter().enumerate() {
                let pf = format!("{f}.ports[{j}]");
                let protos = protocol(o, &format!("{pf}.protocol"), p.protocol.as_deref(), true)?;
                if http.is_some() && protos != [Protocol::Tcp] {
                    let value = p.protocol.as_deref().unwrap_or("TCP");
                    return Err(o.err(
                        format!("{pf}.protocol"),
                        value,
                        Problem::NotAllowed { allowed: "TCP ports (HTTP rules need TCP)".into() },
                    ));
                }
                let spec = port_spec(o, &pf, p.port.as_ref(), p.end_port)?;
                list.extend(protos.into_iter().map(|protocol| PortRule {
                    protocol,
                    port: spec.clone(),
                    http: http.clone(),
                }));
            }
            if http.is_some() && d.ports.is_empty() {
                return Err(o.err(
                    format!("{f}.ports"),
                    "[]",
                    Problem::Inconsistent {
                        detail: "HTTP rules apply to the ports they are listed with; list at least one TCP port".into(),
                    },
                ));
            }
        }
        ports = (!list.is_empty()).then_some(list);
    }
    if let Some((f, detail)) = fails_closed {
        notes.push(*o.err(f, "", Problem::NotEnforced { detail }));
        // Closed: an allow rule allows nothing; a deny rule denies everything.
        return Ok(dir.deny.then_some(Rule { peers: None, ports: None }));
    }
    if !named_peers && ports.is_none() {
        return Ok(None); // `{}`: Cilium's explicit default deny
    }
    if named_peers && peers.is_empty() {
        return Ok(None); // only IPv6 CIDRs or empty lists
    }
    Ok(Some(Rule { peers: named_peers.then_some(peers), ports }))
}

/// Which rule list a rule is in.
#[derive(Clone, Copy)]
struct Dir {
    ingress: bool,
    deny: bool,
}

fn rules(o: &Obj, spec: &Value, key: &str, ns: Option<&str>, notes: &mut Vec<Rejected>) -> Res<Option<Vec<Rule>>> {
    let dir = Dir { ingress: key.starts_with("ingress"), deny: key.ends_with("Deny") };
    let Some(v) = spec.get(key) else { return Ok(None) };
    let list = v.as_array().ok_or_else(|| {
        o.err(format!("spec.{key}"), v.to_string(), Problem::Decode { detail: "a list of rules".into() })
    })?;
    let mut out = Vec::new();
    for (i, r) in list.iter().enumerate() {
        out.extend(rule(o, &format!("spec.{key}[{i}]"), ns, dir, r, notes)?);
    }
    Ok(Some(out))
}

/// A `SluiceNetworkPolicy` or `SluiceClusterwideNetworkPolicy`. `notes`: rules admitted as
/// failing closed.
pub fn sluice_policy(doc: &SluicePolicyDoc, notes: &mut Vec<Rejected>) -> Res<Policy> {
    let clusterwide = doc.kind == "SluiceClusterwideNetworkPolicy";
    let o = Obj(display_name(&doc.kind, &doc.metadata, !clusterwide));
    meta(&o, &doc.metadata, !clusterwide)?;
    let ns = (!clusterwide).then(|| doc.metadata.namespace.clone().unwrap_or_else(|| "default".into()));
    let spec = doc.spec.as_ref().ok_or_else(|| o.err("spec", "", Problem::Missing))?;
    if !spec.is_object() {
        return Err(o.err("spec", spec.to_string(), Problem::Decode { detail: "spec is an object".into() }));
    }
    let sel: K8sSelector = match spec.get("endpointSelector") {
        Some(v) => decode(&o, "spec.endpointSelector", v)?,
        None => return Err(o.err("spec.endpointSelector", "", Problem::Missing)),
    };
    let selector = selector(&o, "spec.endpointSelector", &sel, true)?;
    let nsr = ns.as_deref();
    let ingress = rules(&o, spec, "ingress", nsr, notes)?;
    let egress = rules(&o, spec, "egress", nsr, notes)?;
    let ingress_deny = rules(&o, spec, "ingressDeny", nsr, notes)?.unwrap_or_default();
    let egress_deny = rules(&o, spec, "egressDeny", nsr, notes)?.unwrap_or_default();
    let kind = if clusterwide { PolicyKind::SluiceClusterwideNetworkPolicy } else { PolicyKind::SluiceNetworkPolicy };
    Ok(Policy {
        name: PolicyName { kind, namespace: ns.clone(), name: doc.metadata.name.clone().unwrap_or_default() },
        subject: Subject { namespace: ns, selector, extended: true },
        ingress,
        egress,
        ingress_deny,
        egress_deny,
        audit: audit(&doc.metadata),
    })
}
