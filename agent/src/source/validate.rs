//! The API server's validation of every object kind sluice reads, in one place, before
//! translation. An object that fails is refused whole with the first field that is wrong (as
//! `kubectl apply` reports it); everything else is translated as if it did not exist. The rules
//! themselves (name syntax, special addresses, port ranges) are `sluice_core::validate`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Node, Pod, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_core::validate::{self, Problem, Rejected, Syntax};

use super::translate::Options;

/// What validation needs besides the object: the config's ranges and the addresses of nodes
/// and pods (a Service address equal to one would hijack its traffic).
pub struct Ctx<'a> {
    pub opts: &'a Options,
    /// Address -> `Node name` / `Pod ns/name`.
    pub owners: &'a BTreeMap<Ipv4Addr, Owner<'a>>,
}

pub type Check = Result<(), Box<Rejected>>;

/// Builds rejections for one object.
/// (The object's name is formatted only when it is refused.)
struct Obj<'a> {
    kind: &'static str,
    meta: &'a ObjectMeta,
    namespaced: bool,
}

impl Obj<'_> {
    fn err(&self, field: impl Into<String>, value: impl std::fmt::Display, problem: Problem) -> Box<Rejected> {
        Box::new(Rejected::new(display_name(self.kind, self.meta, self.namespaced), field, value, problem))
    }

    fn syntax(&self, field: &str, value: &str, syntax: Syntax) -> Check {
        if syntax.check(value) { Ok(()) } else { Err(self.err(field, value, Problem::Syntax { syntax })) }
    }

    fn one_of(&self, field: &str, value: Option<&str>, accepted: &[&str]) -> Check {
        match value {
            Some(v) if !accepted.contains(&v) => {
                Err(self.err(field, v, Problem::OneOf { accepted: accepted.join(", ") }))
            }
            _ => Ok(()),
        }
    }

    fn port(&self, field: &str, v: i32, lo: u16, hi: u16) -> Result<u16, Box<Rejected>> {
        validate::port(v, lo, hi).map_err(|p| self.err(field, v, p))
    }

    /// metadata: name (by the kind's rule), namespace, label syntax.
    fn meta(&self, m: &ObjectMeta, name_rule: Syntax, namespaced: bool) -> Check {
        let name = m.name.as_deref().ok_or_else(|| self.err("metadata.name", "", Problem::Missing))?;
        self.syntax("metadata.name", name, name_rule)?;
        if namespaced && let Some(ns) = m.namespace.as_deref() {
            self.syntax("metadata.namespace", ns, Syntax::Dns1123Label)?;
        }
        for (k, v) in m.labels.iter().flatten() {
            self.syntax("metadata.labels", k, Syntax::QualifiedName)?;
            // The field is named only for a bad value (10,000 pods are checked per change).
            if !Syntax::LabelValue.check(v) {
                self.syntax(&format!("metadata.labels[{k}]"), v, Syntax::LabelValue)?;
            }
        }
        Ok(())
    }

    fn protocol(&self, field: &str, p: Option<&String>) -> Check {
        self.one_of(field, p.map(String::as_str), &["TCP", "UDP", "SCTP"])
    }
}

/// How an object is named in rejections (`Kind ns/name`), escaped.
pub fn display_name(kind: &str, m: &ObjectMeta, namespaced: bool) -> String {
    let name = validate::escape(m.name.as_deref().unwrap_or("<unnamed>"));
    match namespaced {
        true => format!("{kind} {}/{name}", validate::escape(m.namespace.as_deref().unwrap_or("default"))),
        false => format!("{kind} {name}"),
    }
}

pub fn node(n: &Node) -> Check {
    let o = Obj { kind: "Node", meta: &n.metadata, namespaced: false };
    o.meta(&n.metadata, Syntax::Dns1123Subdomain, false)?;
    for (i, a) in n.status.iter().flat_map(|s| s.addresses.iter().flatten()).enumerate() {
        if a.type_ == "InternalIP" {
            validate::ipv4(&a.address).map_err(|p| o.err(format!("status.addresses[{i}].address"), &a.address, p))?;
        }
    }
    if let Some(c) = n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
        validate::network(c).map_err(|p| o.err("spec.podCIDR", c, p))?;
    }
    Ok(())
}

pub fn pod(p: &Pod) -> Check {
    let o = Obj { kind: "Pod", meta: &p.metadata, namespaced: true };
    o.meta(&p.metadata, Syntax::Dns1123Subdomain, true)?;
    if let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        match validate::ipv4(ip) {
            Ok(_) | Err(Problem::Ipv6) => {}
            Err(e) => return Err(o.err("status.podIP", ip, e)),
        }
    }
    for (ci, c) in p.spec.iter().flat_map(|s| s.containers.iter()).enumerate() {
        for (pi, cp) in c.ports.iter().flatten().enumerate() {
            let f = |x: &str| format!("spec.containers[{ci}].ports[{pi}].{x}");
            o.port(&f("containerPort"), cp.container_port, 1, 65535)?;
            if let Some(hp) = cp.host_port {
                o.port(&f("hostPort"), hp, 0, 65535)?;
            }
            o.protocol(&f("protocol"), cp.protocol.as_ref())?;
            if let Some(n) = cp.name.as_deref() {
                o.syntax(&f("name"), n, Syntax::IanaServiceName)?;
            }
            if let Some(h) = cp.host_ip.as_deref().filter(|h| !h.is_empty()) {
                match h.parse::<Ipv4Addr>() {
                    Ok(_) => {}
                    Err(_) => return Err(o.err(f("hostIP"), h, Problem::NotIpv4)),
                }
            }
        }
    }
    Ok(())
}

pub fn endpoint_slice(s: &EndpointSlice) -> Check {
    let o = Obj { kind: "EndpointSlice", meta: &s.metadata, namespaced: true };
    o.meta(&s.metadata, Syntax::Dns1123Subdomain, true)?;
    o.one_of("addressType", Some(s.address_type.as_str()), &["IPv4", "IPv6", "FQDN"])?;
    let ipv4 = s.address_type == "IPv4";
    for (ei, ep) in s.endpoints.iter().enumerate() {
        if ep.addresses.is_empty() {
            return Err(o.err(format!("endpoints[{ei}].addresses"), "[]", Problem::Missing));
        }
        for (ai, a) in ep.addresses.iter().enumerate().filter(|_| ipv4) {
            validate::ipv4(a).map_err(|p| o.err(format!("endpoints[{ei}].addresses[{ai}]"), a, p))?;
        }
    }
    for (pi, p) in s.ports.iter().flatten().enumerate() {
        if let Some(port) = p.port {
            o.port(&format!("ports[{pi}].port"), port, 1, 65535)?;
        }
        o.protocol(&format!("ports[{pi}].protocol"), p.protocol.as_ref())?;
        if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
            o.syntax(&format!("ports[{pi}].name"), n, Syntax::Dns1123Label)?;
        }
    }
    Ok(())
}

const SERVICE_TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

pub fn service(s: &K8sService, cx: &Ctx<'_>) -> Check {
    let o = Obj { kind: "Service", meta: &s.metadata, namespaced: true };
    o.meta(&s.metadata, Syntax::Dns1035Label, true)?;
    let spec = s.spec.as_ref().ok_or_else(|| o.err("spec", "", Problem::Missing))?;
    o.one_of("spec.type", spec.type_.as_deref(), &SERVICE_TYPES)?;
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return Ok(()); // DNS only: sluice programs nothing for it
    }
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let headless = cluster_ip == "None";
    if headless && ty != "ClusterIP" {
        return Err(o.err(
            "spec.clusterIP",
            "None",
            Problem::NotAllowed { allowed: "type ClusterIP (headless)".into() },
        ));
    }
    if !headless && !cluster_ip.is_empty() {
        address(&o, "spec.clusterIP", cluster_ip, cx, true)?;
    }
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() && !headless {
        return Err(o.err("spec.ports", "[]", Problem::Missing));
    }
    let (lo, hi) = cx.opts.node_port_range;
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seen: BTreeMap<(i32, &str), usize> = BTreeMap::new();
    let mut node_ports: BTreeMap<(i32, &str), usize> = BTreeMap::new();
    for (i, p) in ports.iter().enumerate() {
        let f = |x: &str| format!("spec.ports[{i}].{x}");
        o.port(&f("port"), p.port, 1, 65535)?;
        o.protocol(&f("protocol"), p.protocol.as_ref())?;
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        match p.name.as_deref().filter(|n| !n.is_empty()) {
            None if ports.len() > 1 => return Err(o.err(f("name"), "", Problem::Missing)),
            None => {}
            Some(n) => {
                o.syntax(&f("name"), n, Syntax::Dns1123Label)?;
                if let Some(first) = names.insert(n, i) {
                    return Err(o.err(f("name"), n, Problem::Duplicate { first: format!("spec.ports[{first}].name") }));
                }
            }
        }
        if let Some(first) = seen.insert((p.port, proto), i) {
            let v = format!("{}/{proto}", p.port);
            return Err(o.err(f("port"), v, Problem::Duplicate { first: format!("spec.ports[{first}]") }));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) => {
                o.port(&f("targetPort"), *t, 1, 65535)?;
            }
            Some(IntOrString::String(n)) => o.syntax(&f("targetPort"), n, Syntax::IanaServiceName)?,
            None => {}
        }
        if let Some(np) = p.node_port.filter(|np| *np != 0) {
            if !matches!(ty, "NodePort" | "LoadBalancer") {
                let allowed = "type NodePort or LoadBalancer".to_string();
                return Err(o.err(f("nodePort"), np, Problem::NotAllowed { allowed }));
            }
            o.port(&f("nodePort"), np, lo, hi)?;
            if let Some(first) = node_ports.insert((np, proto), i) {
                let v = format!("{np}/{proto}");
                return Err(o.err(
                    f("nodePort"),
                    v,
                    Problem::Duplicate { first: format!("spec.ports[{first}].nodePort") },
                ));
            }
        }
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        address(&o, &format!("spec.externalIPs[{i}]"), ip, cx, false)?;
    }
    o.one_of("spec.sessionAffinity", spec.session_affinity.as_deref(), &["None", "ClientIP"])?;
    let timeout =
        spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
    if let Some(t) = timeout.filter(|t| !(1..=86400).contains(t)) {
        let f = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
        return Err(o.err(f, t, Problem::Range { lo: 1, hi: 86400 }));
    }
    o.one_of("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref(), &["Cluster", "Local"])?;
    o.one_of("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref(), &["Cluster", "Local"])?;
    for (i, r) in spec.load_balancer_source_ranges.iter().flatten().enumerate() {
        // The API server accepts host bits here (it uses the network); so does sluice.
        if r.trim().parse::<ipnet::Ipv4Net>().is_err() {
            return Err(o.err(format!("spec.loadBalancerSourceRanges[{i}]"), r, Problem::NotCidr));
        }
    }
    if let Some(h) = spec.health_check_node_port.filter(|h| *h != 0) {
        if ty != "LoadBalancer" || spec.external_traffic_policy.as_deref() != Some("Local") {
            let allowed = "type LoadBalancer with externalTrafficPolicy Local".to_string();
            return Err(o.err("spec.healthCheckNodePort", h, Problem::NotAllowed { allowed }));
        }
        o.port("spec.healthCheckNodePort", h, 1, 65535)?;
    }
    let ingress = s.status.as_ref().and_then(|st| st.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        if let Some(ip) = &ing.ip {
            address(&o, &format!("status.loadBalancer.ingress[{i}].ip"), ip, cx, false)?;
        }
    }
    Ok(())
}

/// A Service address: IPv4, not special, not in the pod network, not a node's or pod's
/// address (a ClusterIP) or a pod's (an external address may be a node's: kube-proxy serves
/// externalIPs on node addresses); a ClusterIP inside service_cidr when sluice allocates.
fn address(o: &Obj, field: &str, value: &str, cx: &Ctx<'_>, cluster_ip: bool) -> Check {
    let ip = validate::ipv4(value).map_err(|p| o.err(field, value, p))?;
    if let Some(cidr) = cx.opts.cluster_cidr.filter(|c| c.contains(&ip)) {
        return Err(o.err(field, value, Problem::InPodNetwork { cidr }));
    }
    if let Some(owner) = cx.owners.get(&ip).filter(|w| cluster_ip || matches!(w, Owner::Pod(_))) {
        return Err(o.err(field, value, Problem::TakenBy { owner: owner.to_string() }));
    }
    if let Some(cidr) = cx.opts.service_cidr.filter(|c| cluster_ip && !c.contains(&ip)) {
        return Err(o.err(field, value, Problem::OutsideServiceCidr { cidr }));
    }
    Ok(())
}

/// Who holds an address: named only when a Service's address collides with it (a change's
/// translation builds this for every pod, and formatting 10,000 names would cost more than the
/// rest of it).
#[derive(Clone, Copy)]
pub enum Owner<'a> {
    Node(&'a ObjectMeta),
    Pod(&'a ObjectMeta),
}

impl std::fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Node(m) => write!(f, "Node {}", m.name.as_deref().unwrap_or_default()),
            Owner::Pod(m) => f.write_str(&display_name("Pod", m, true)),
        }
    }
}

/// Addresses of the valid nodes and pods, for [`Ctx::owners`].
pub fn owners<'a>(nodes: &[&'a Node], pods: &[&'a Pod]) -> BTreeMap<Ipv4Addr, Owner<'a>> {
    let mut out = BTreeMap::new();
    for n in nodes {
        for a in n.status.iter().flat_map(|s| s.addresses.iter().flatten()).filter(|a| a.type_ == "InternalIP") {
            if let Ok(ip) = a.address.parse() {
                out.insert(ip, Owner::Node(&n.metadata));
            }
        }
    }
    for p in pods {
        if let Some(Ok(IpAddr::V4(ip))) = p.status.as_ref().and_then(|s| s.pod_ip.as_deref()).map(str::parse) {
            out.entry(ip).or_insert(Owner::Pod(&p.metadata));
        }
    }
    out
}

/// Names whose object appears twice in one read (two manifests of one Service): the API
/// server would hold one; sluice cannot tell which is meant and refuses the later copies.
pub fn duplicates<K: Ord>(keys: impl IntoIterator<Item = K>) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut dups = BTreeSet::new();
    for (i, k) in keys.into_iter().enumerate() {
        if !seen.insert(k) {
            dups.insert(i);
        }
    }
    dups
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
