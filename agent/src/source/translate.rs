//! Kubernetes objects -> core model. Pure: both the manifest source and (later) the
//! Kubernetes watcher feed this one function, so they cannot disagree.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Service as K8sService, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_core::validate::{Problem, Rejected};
use sluice_core::{
    Backend, BackendState, ClusterState, Frontend, FrontendKind, NodeInfo, PodInfo, Protocol, Service, ServiceName,
};

use super::{Objects, validate};

/// Settings the translation needs from the agent's config.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub node_port_range: (u16, u16),
    /// Standalone mode: allocate a ClusterIP from here for Services without `spec.clusterIP`
    /// (sluice is the only API server the manifests meet), and refuse explicit ones outside it.
    /// `None`: the API server allocates and checks.
    pub service_cidr: Option<ipnet::Ipv4Net>,
    /// The pod network: no Service address may fall inside it.
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
}

impl Default for Options {
    fn default() -> Self {
        Options { node_port_range: (30000, 32767), service_cidr: None, cluster_cidr: None }
    }
}

#[cfg(test)]
pub fn translate(o: &Objects) -> ClusterState {
    translate_with(o, Options::default(), &[])
}

/// Validate and translate. `prior`: the Services of the previous translation, whose frontends
/// keep winning conflicts against newcomers of the same age.
#[cfg(test)]
pub fn translate_with(o: &Objects, opts: Options, prior: &[Service]) -> ClusterState {
    translate_memo(o, opts, prior, &mut Memo::default())
}

/// Pods validated and translated before, by the object they came from. Sources share an
/// unchanged object between reads (the same `Arc`), so a change to one pod of 10,000 translates
/// one: the rest are taken from here (the memo holds each object, so its address is not reused).
#[derive(Default)]
pub struct Memo {
    pods: std::collections::HashMap<usize, MemoPod>,
}

struct MemoPod {
    obj: Arc<Pod>,
    check: validate::Check,
    info: Arc<PodInfo>,
}

#[cfg(test)]
impl Memo {
    /// Pod objects held.
    pub fn len(&self) -> usize {
        self.pods.len()
    }
}

/// [`translate_with`], reusing (and renewing) `memo`.
pub fn translate_memo(o: &Objects, opts: Options, prior: &[Service], memo: &mut Memo) -> ClusterState {
    let mut st = ClusterState { rejected: o.rejected.clone(), ..Default::default() };
    let nodes = admitted(&o.nodes, "Node", false, |n| &n.metadata, validate::node, &mut st.rejected);
    let (pods, infos) = admitted_pods(&o.pods, memo, &mut st.rejected);
    let slices = admitted(
        &o.endpoint_slices,
        "EndpointSlice",
        true,
        |s| &s.metadata,
        validate::endpoint_slice,
        &mut st.rejected,
    );
    for n in &nodes {
        let info = node(n);
        st.nodes.insert(info.name.clone(), info);
    }
    st.pods = infos;
    for p in &pods {
        host_ports(p, &mut st.host_ports);
    }
    let owners = validate::owners(&nodes, &pods);
    let cx = validate::Ctx { opts: &opts, owners: &owners };
    let mut services =
        admitted(&o.services, "Service", true, |s| &s.metadata, |s| validate::service(s, &cx), &mut st.rejected);
    // Oldest first, then by name: the order the API server's allocators effectively give.
    services.sort_by_cached_key(|s| {
        (s.metadata.creation_timestamp.is_none(), s.metadata.creation_timestamp.clone(), name_of(s))
    });
    // EndpointSlices by the Service they belong to (namespace, kubernetes.io/service-name):
    // one pass, not one scan of every slice per Service.
    let mut slice_index: SliceIndex<'_> = BTreeMap::new();
    for sl in &slices {
        if let Some(svc) = sl.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")) {
            let ns = sl.metadata.namespace.as_deref().unwrap_or("default");
            slice_index.entry((ns, svc.as_str())).or_default().push(sl);
        }
    }
    let allocated = opts.service_cidr.map(|cidr| super::alloc::cluster_ips(&services, cidr)).unwrap_or_default();
    let mut converted = Vec::new();
    for s in services {
        let alloc = allocated.get(&name_of(s)).copied();
        let res = match (alloc, opts.service_cidr) {
            (Some(None), Some(cidr)) => Err(Rejected::new(
                validate::display_name("Service", &s.metadata, true),
                "spec.clusterIP",
                "",
                Problem::PoolExhausted { cidr },
            )),
            _ => service(s, alloc.flatten(), &slice_index, &pods).map_err(|detail| {
                Rejected::new(
                    validate::display_name("Service", &s.metadata, true),
                    "spec",
                    "",
                    Problem::Inconsistent { detail },
                )
            }),
        };
        match res {
            Ok(Some(svc)) => converted.push((svc, s.metadata.creation_timestamp.clone())),
            Ok(None) => {}
            Err(r) => st.rejected.push(r),
        }
    }
    st.rejected.extend(super::claims::resolve(&mut converted, prior));
    policies(o, &mut st);
    st.services = converted.into_iter().map(|(s, _)| s).collect();
    st.services.sort_by(|a, b| a.name.cmp(&b.name));
    st
}

/// Namespaces and policies of every kind; invalid ones refused by name.
fn policies(o: &Objects, st: &mut ClusterState) {
    st.namespaces = super::policy::namespaces(&o.namespaces, &mut st.rejected);
    for p in &st.pods {
        st.namespaces
            .entry(p.namespace.clone())
            .or_insert_with(|| [(super::policy::NAME_LABEL.to_string(), p.namespace.clone())].into_iter().collect());
    }
    let nps = admitted(&o.network_policies, "NetworkPolicy", true, |n| &n.metadata, |_| Ok(()), &mut st.rejected);
    for np in nps {
        match super::policy::network_policy(np) {
            Ok(p) => st.policies.push(p),
            Err(r) => st.rejected.push(*r),
        }
    }
    let docs = admitted(&o.sluice_policies, "SluiceNetworkPolicy", true, |d| &d.metadata, |_| Ok(()), &mut st.rejected);
    let mut notes = Vec::new();
    for d in docs {
        match super::policy::sluice_policy(d, &mut notes) {
            Ok(p) => st.policies.push(p),
            Err(r) => st.rejected.push(*r),
        }
    }
    st.rejected.extend(notes);
    st.policies.sort_by(|a, b| a.name.cmp(&b.name));
}

/// Valid EndpointSlices by (namespace, Service name).
type SliceIndex<'a> = BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>;

/// The objects of one kind that pass validation and are not a second copy of an earlier one;
/// the others are recorded in `rejected`.
fn admitted<'a, T>(
    objs: &'a [std::sync::Arc<T>],
    kind: &str,
    namespaced: bool,
    meta: impl Fn(&T) -> &ObjectMeta,
    check: impl Fn(&T) -> validate::Check,
    rejected: &mut Vec<Rejected>,
) -> Vec<&'a T> {
    let dups = validate::duplicates(objs.iter().map(|o| object_key(meta(o), namespaced)));
    let mut out = Vec::new();
    for (i, o) in objs.iter().map(|o| o.as_ref()).enumerate() {
        let res = check(o).and_then(|()| unique(kind, meta(o), namespaced, !dups.contains(&i)));
        match res {
            Ok(()) => out.push(o),
            Err(r) => rejected.push(*r),
        }
    }
    out
}

/// [`admitted`] for Pods, with their translations, taken from `memo` where the object is the
/// one translated before.
fn admitted_pods<'a>(
    objs: &'a [Arc<Pod>],
    memo: &mut Memo,
    rejected: &mut Vec<Rejected>,
) -> (Vec<&'a Pod>, Vec<Arc<PodInfo>>) {
    let dups = validate::duplicates(objs.iter().map(|o| object_key(&o.metadata, true)));
    let mut next = std::collections::HashMap::with_capacity(objs.len());
    let (mut pods, mut infos) = (Vec::new(), Vec::new());
    for (i, o) in objs.iter().enumerate() {
        let at = Arc::as_ptr(o) as usize;
        let m = match memo.pods.remove(&at).filter(|m| Arc::ptr_eq(&m.obj, o)) {
            Some(m) => m,
            None => MemoPod { obj: o.clone(), check: validate::pod(o), info: Arc::new(pod(o)) },
        };
        match m.check.clone().and_then(|()| unique("Pod", &o.metadata, true, !dups.contains(&i))) {
            Ok(()) => {
                pods.push(o.as_ref());
                infos.push(m.info.clone());
            }
            Err(r) => rejected.push(*r),
        }
        next.insert(at, m);
    }
    memo.pods = next;
    (pods, infos)
}

/// What makes two objects of a kind the same one: namespace (when namespaced) and name.
fn object_key(m: &ObjectMeta, namespaced: bool) -> (&str, &str) {
    (
        if namespaced { m.namespace.as_deref().unwrap_or("default") } else { "" },
        m.name.as_deref().unwrap_or("<unnamed>"),
    )
}

/// The refusal of a second copy of an object (`unique` false).
fn unique(kind: &str, m: &ObjectMeta, namespaced: bool, unique: bool) -> validate::Check {
    if unique {
        return Ok(());
    }
    Err(Box::new(Rejected::new(
        validate::display_name(kind, m, namespaced),
        "metadata.name",
        m.name.as_deref().unwrap_or_default(),
        Problem::Duplicate { first: "an earlier object of the same kind and name in this read".into() },
    )))
}

fn host_ports(p: &Pod, out: &mut Vec<sluice_core::HostPort>) {
    let containers = p.spec.iter().flat_map(|s| s.containers.iter());
    if !containers.flat_map(|c| c.ports.iter().flatten()).any(|cp| cp.host_port.is_some_and(|h| h != 0)) {
        return; // (most pods: not translated twice)
    }
    let info = pod(p);
    let Some(IpAddr::V4(pod_ip)) = info.ip else { return };
    for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
        for cp in c.ports.iter().flatten() {
            let Some(hp) = cp.host_port.and_then(|h| u16::try_from(h).ok()).filter(|h| *h != 0) else { continue };
            let (Ok(proto), Ok(cport)) = (protocol(cp.protocol.as_ref()), u16::try_from(cp.container_port)) else {
                continue;
            };
            out.push(sluice_core::HostPort {
                pod: format!("{}/{}", info.namespace, info.name),
                node: info.node.clone(),
                host_ip: cp
                    .host_ip
                    .as_ref()
                    .and_then(|h| h.parse().ok())
                    .filter(|ip: &std::net::Ipv4Addr| !ip.is_unspecified()),
                host_port: hp,
                protocol: proto,
                pod_ip,
                container_port: cport,
            });
        }
    }
}

pub(super) fn name_of(s: &K8sService) -> String {
    format!("{}/{}", s.metadata.namespace.as_deref().unwrap_or("default"), s.metadata.name.as_deref().unwrap_or(""))
}

fn node(n: &Node) -> NodeInfo {
    let internal_ip = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .and_then(|a| a.address.parse().ok());
    let pod_cidr = n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).and_then(|c| c.parse().ok());
    NodeInfo {
        name: n.metadata.name.clone().unwrap_or_default(),
        internal_ip,
        pod_cidr,
        labels: n.metadata.labels.clone().unwrap_or_default(),
    }
}

fn pod(p: &Pod) -> PodInfo {
    let status = p.status.as_ref();
    // A Pod written by hand has no status; treat it as ready, as a freshly started pod would be.
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == "True")
        .unwrap_or(true);
    PodInfo {
        namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: p.metadata.name.clone().unwrap_or_default(),
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
        ip: status.and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse().ok()),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ready,
        ports: named_ports(p),
        workload: workload(p),
    }
}

/// The pod's workload as Hubble names it: its controller, and for a ReplicaSet whose name is a
/// Deployment's plus the pod's `pod-template-hash`, that Deployment (the Deployment object
/// itself is not watched; the naming is the Deployment controller's contract).
fn workload(p: &Pod) -> Option<sluice_core::flow::Workload> {
    let owner = p.metadata.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
    if owner.kind == "ReplicaSet"
        && let Some(hash) = p.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash"))
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
        && !deployment.is_empty()
    {
        return Some(sluice_core::flow::Workload { name: deployment.into(), kind: "Deployment".into() });
    }
    Some(sluice_core::flow::Workload { name: owner.name.clone(), kind: owner.kind.clone() })
}

/// The pod's named containerPorts (validation already checked names and numbers).
fn named_ports(p: &Pod) -> Vec<sluice_core::policy::NamedPort> {
    let containers = p.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            Some(sluice_core::policy::NamedPort {
                name: cp.name.clone()?,
                protocol: protocol(cp.protocol.as_ref()).ok()?,
                port: u16::try_from(cp.container_port).ok()?,
            })
        })
        .collect()
}

fn protocol(p: Option<&String>) -> Result<Protocol, String> {
    match p.map(String::as_str).unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(format!("protocol {other:?} is not one of TCP, UDP, SCTP")),
    }
}

fn port_u16(v: i32, what: &str) -> Result<u16, String> {
    u16::try_from(v).ok().filter(|p| *p != 0).ok_or_else(|| format!("{what} {v} is outside 1-65535"))
}

/// `Ok(None)` for services sluice does not proxy (headless, ExternalName). `allocated`: the
/// ClusterIP sluice allocated for a Service without `spec.clusterIP` (standalone mode).
fn service(
    s: &K8sService,
    allocated: Option<std::net::Ipv4Addr>,
    slices: &SliceIndex<'_>,
    pods: &[&Pod],
) -> Result<Option<Service>, String> {
    let ns = s.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = s.metadata.name.clone().ok_or("metadata.name is missing")?;
    let spec = s.spec.as_ref().ok_or("spec is missing")?;
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return Ok(None);
    }
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if cluster_ip == "None" {
        return Ok(None);
    }
    // Addresses, ports and ranges were validated (`validate::service`); the errors below keep
    // the translation total, they do not repeat the rules.
    let vip: Option<IpAddr> = match cluster_ip {
        "" => allocated.map(IpAddr::V4),
        ip => Some(IpAddr::V4(ip.parse().map_err(|_| format!("spec.clusterIP {ip:?} is not an IPv4 address"))?)),
    };
    let mut frontends = Vec::new();
    let ports: &[ServicePort] = spec.ports.as_deref().unwrap_or(&[]);
    for p in ports {
        let port = port_u16(p.port, "port")?;
        let proto = protocol(p.protocol.as_ref())?;
        let port_name = p.name.clone().unwrap_or_default();
        let target_port = match &p.target_port {
            None => port,
            Some(IntOrString::Int(i)) => port_u16(*i, "targetPort")?,
            Some(IntOrString::String(_)) => 0, // resolved per backend from the pod's named port
        };
        let fe =
            |kind, ip, port| Frontend { kind, ip, port, protocol: proto, port_name: port_name.clone(), target_port };
        if let Some(ip) = vip {
            frontends.push(fe(FrontendKind::ClusterIp, Some(ip), port));
        }
        if matches!(ty, "NodePort" | "LoadBalancer")
            && let Some(np) = p.node_port
        {
            frontends.push(fe(FrontendKind::NodePort, None, port_u16(np, "nodePort")?));
        }
        for ip in spec.external_ips.iter().flatten() {
            let ip: std::net::Ipv4Addr =
                ip.parse().map_err(|_| format!("spec.externalIPs entry {ip:?} is not an IPv4 address"))?;
            frontends.push(fe(FrontendKind::ExternalIp, Some(IpAddr::V4(ip)), port));
        }
        if ty == "LoadBalancer" {
            let ingress = s.status.as_ref().and_then(|st| st.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
            for ing in ingress.into_iter().flatten() {
                if let Some(ip) = &ing.ip {
                    let ip = ip
                        .parse()
                        .map_err(|_| format!("status.loadBalancer.ingress ip {ip:?} is not an IP address"))?;
                    frontends.push(fe(FrontendKind::LoadBalancer, Some(ip), port));
                }
            }
        }
    }
    let svc_name = ServiceName { namespace: ns.clone(), name: name.clone() };
    let own_slices: &[&EndpointSlice] = slices.get(&(ns.as_str(), name.as_str())).map_or(&[], Vec::as_slice);
    let mut backends = if own_slices.is_empty() {
        match &spec.selector {
            Some(sel) if !sel.is_empty() => backends_from_selector(&ns, sel, ports, pods)?,
            _ => Vec::new(),
        }
    } else {
        backends_from_slices(own_slices)?
    };
    // In one order whatever order the source listed pods and slices in (every node programs
    // the same slots), each endpoint once.
    fn key(b: &Backend) -> (IpAddr, u16, &str, Protocol) {
        (b.ip, b.port, b.port_name.as_str(), b.protocol)
    }
    backends.sort_by(|a, b| (key(a), a.state, &a.node).cmp(&(key(b), b.state, &b.node)));
    backends.dedup_by(|a, b| key(a) == key(b));
    let affinity_timeout_s = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            Some(
                u32::try_from(t)
                    .map_err(|_| format!("sessionAffinityConfig.clientIP.timeoutSeconds {t} is negative"))?,
            )
        }
        _ => None,
    };
    let mut source_ranges = Vec::new();
    for r in spec.load_balancer_source_ranges.iter().flatten() {
        let net: ipnet::Ipv4Net =
            r.trim().parse().map_err(|_| format!("loadBalancerSourceRanges entry {r:?} is not an IPv4 CIDR"))?;
        source_ranges.push(net.trunc());
    }
    let health_check_node_port = match spec.health_check_node_port {
        Some(p) => Some(port_u16(p, "healthCheckNodePort")?),
        None => None,
    };
    Ok(Some(Service {
        name: svc_name,
        frontends,
        backends,
        affinity_timeout_s,
        external_local: spec.external_traffic_policy.as_deref() == Some("Local") && ty != "ClusterIP",
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        source_ranges,
        health_check_node_port,
    }))
}

fn backends_from_slices(slices: &[&EndpointSlice]) -> Result<Vec<Backend>, String> {
    let mut out = Vec::new();
    for sl in slices {
        for ep in &sl.endpoints {
            let c = ep.conditions.as_ref();
            // EndpointSlice semantics: unset `ready` means ready; terminating implies not ready.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let state = if terminating && serving {
                BackendState::Terminating
            } else if ready && !terminating {
                BackendState::Active
            } else {
                BackendState::NotReady
            };
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                for p in sl.ports.iter().flatten() {
                    let Some(port) = p.port else { continue };
                    out.push(Backend {
                        ip,
                        port: port_u16(port, "EndpointSlice port")?,
                        port_name: p.name.clone().unwrap_or_default(),
                        protocol: protocol(p.protocol.as_ref())?,
                        state,
                        node: ep.node_name.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// What the EndpointSlice controller would produce for a selector.
fn backends_from_selector(
    ns: &str,
    sel: &BTreeMap<String, String>,
    ports: &[ServicePort],
    pods: &[&Pod],
) -> Result<Vec<Backend>, String> {
    let mut out = Vec::new();
    for p in pods {
        let info = pod(p);
        let matches = info.namespace == ns && sel.iter().all(|(k, v)| info.labels.get(k) == Some(v));
        let Some(ip) = info.ip.filter(|_| matches) else {
            continue;
        };
        for sp in ports {
            let target = match &sp.target_port {
                None => Some(sp.port),
                Some(IntOrString::Int(i)) => Some(*i),
                Some(IntOrString::String(named)) => p
                    .spec
                    .as_ref()
                    .into_iter()
                    .flat_map(|s| s.containers.iter())
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| cp.name.as_deref() == Some(named.as_str()))
                    .map(|cp| cp.container_port),
            };
            let Some(target) = target else { continue };
            out.push(Backend {
                ip,
                port: port_u16(target, "targetPort")?,
                port_name: sp.name.clone().unwrap_or_default(),
                protocol: protocol(sp.protocol.as_ref())?,
                state: if info.ready { BackendState::Active } else { BackendState::NotReady },
                node: info.node.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
