//! Answers to the policy commands, from the loop's state: the same compiler and the same
//! compiled view the datapath was programmed from, so what the CLI says is what is enforced.

use std::net::Ipv4Addr;

use sluice_core::ClusterState;
use sluice_core::policy::{DirectionPolicy, Enforcement, Identity, PolicyEndpoint};

use super::policy::{Inputs, PolicyCache};
use crate::api::Response;
use crate::api::policy::{EndpointEntry, IdentityEntry, PolicyEntry, PolicyReport, PolicySummary};

fn state_of(d: &DirectionPolicy) -> String {
    if d.enforced {
        "enforced".into()
    } else if !d.audited_by.is_empty() {
        "audit".into()
    } else {
        "off".into()
    }
}

fn names(d: &DirectionPolicy) -> Vec<String> {
    d.selected_by.iter().chain(&d.audited_by).map(|p| p.to_string()).collect()
}

pub fn summary(cache: &PolicyCache, state: &ClusterState, owner: String) -> PolicySummary {
    let v = &cache.view;
    PolicySummary {
        enforcement: v.enforcement.to_string(),
        owner,
        policies: state.policies.iter().map(|p| p.name.to_string()).collect(),
        ingress_isolated: v.endpoints.iter().filter(|e| e.policy.ingress.enforced).count(),
        egress_isolated: v.endpoints.iter().filter(|e| e.policy.egress.enforced).count(),
        identities: cache.identities,
    }
}

fn endpoints(cache: &PolicyCache, state: &ClusterState) -> Vec<EndpointEntry> {
    cache
        .view
        .endpoints
        .iter()
        .map(|e| {
            let labels = state
                .pods
                .iter()
                .find(|p| p.ip == Some(std::net::IpAddr::V4(e.ip)))
                .map(|p| p.labels.clone())
                .unwrap_or_default();
            EndpointEntry {
                pod: e.pod.clone(),
                ip: e.ip.to_string(),
                interface: e.interface.clone(),
                identity: e.policy.identity.0,
                labels,
                ingress: state_of(&e.policy.ingress),
                egress: state_of(&e.policy.egress),
                ingress_policies: names(&e.policy.ingress),
                egress_policies: names(&e.policy.egress),
                ingress_rules: e.policy.ingress.rules.len(),
                egress_rules: e.policy.egress.rules.len(),
            }
        })
        .collect()
}

fn identities(cache: &PolicyCache, state: &ClusterState, enforcement: Enforcement) -> Vec<IdentityEntry> {
    let inputs = Inputs::new(state, &cache.ctx);
    let cx = inputs.context(state, &cache.ctx, enforcement, &inputs.identities(cache.numbered.clone()));
    let mut out: Vec<IdentityEntry> = Identity::RESERVED
        .iter()
        .map(|(id, name)| IdentityEntry {
            identity: id.0,
            labels: vec![format!("reserved:{name}")],
            pods: 0,
            moved_from: None,
        })
        .collect();
    for (id, l) in &cx.identities.labels {
        let canonical = l.canonical();
        out.push(IdentityEntry {
            identity: id.0,
            labels: canonical.split(';').map(str::to_string).collect(),
            pods: inputs.endpoints.iter().filter(|e| e.labels == *l).count(),
            moved_from: cx.identities.collisions.iter().find(|c| c.labels == canonical).map(|c| c.preferred.0),
        });
    }
    out
}

fn policies(cache: &PolicyCache, state: &ClusterState, enforcement: Enforcement) -> PolicyReport {
    let inputs = Inputs::new(state, &cache.ctx);
    let cx = inputs.context(state, &cache.ctx, enforcement, &inputs.identities(cache.numbered.clone()));
    let local: Vec<&PolicyEndpoint> =
        cache.view.endpoints.iter().filter_map(|e| inputs.endpoints.iter().find(|p| p.ip == e.ip)).collect();
    let policies = state
        .policies
        .iter()
        .map(|p| PolicyEntry {
            name: p.name.to_string(),
            audit: p.audit,
            selects: local
                .iter()
                .filter(|e| cx.selecting(e).iter().any(|s| s.name == p.name))
                .map(|e| format!("{}/{}", e.namespace, e.name))
                .collect(),
            policy: p.clone(),
        })
        .collect();
    let policy_kinds = ["NetworkPolicy", "SluiceNetworkPolicy", "SluiceClusterwideNetworkPolicy"];
    PolicyReport {
        enforcement: enforcement.to_string(),
        policies,
        rejected: state
            .rejected
            .iter()
            .filter(|r| policy_kinds.iter().any(|k| r.object.starts_with(&format!("{k} "))))
            .cloned()
            .collect(),
    }
}

/// `NS/POD` (plain `POD`: default) or an IPv4 address.
fn address(state: &ClusterState, who: &str) -> Result<Ipv4Addr, String> {
    if let Ok(ip) = who.parse() {
        return Ok(ip);
    }
    let (ns, name) = who.split_once('/').unwrap_or(("default", who));
    let pod = state
        .pods
        .iter()
        .find(|p| p.namespace == ns && p.name == name)
        .ok_or_else(|| format!("no pod {ns}/{name} in the source; give NS/POD or an IPv4 address"))?;
    match pod.ip {
        Some(std::net::IpAddr::V4(ip)) => Ok(ip),
        _ => Err(format!("pod {ns}/{name} has no IPv4 address yet")),
    }
}

pub fn answer(
    req: &crate::api::Request,
    cache: &PolicyCache,
    state: Option<&ClusterState>,
    enforcement: Enforcement,
) -> Response {
    use crate::api::Request;
    let Some(state) = state else {
        return Response::Error("the source has not been read yet; try again in a moment".into());
    };
    match req {
        Request::Endpoints => Response::Endpoints(endpoints(cache, state)),
        Request::Identities => Response::Identities(identities(cache, state, enforcement)),
        Request::Policies => Response::Policies(Box::new(policies(cache, state, enforcement))),
        Request::Trace { from, to, port, protocol } => {
            let (src, dst) = match (address(state, from), address(state, to)) {
                (Ok(s), Ok(d)) => (s, d),
                (Err(e), _) | (_, Err(e)) => return Response::Error(e),
            };
            let inputs = Inputs::new(state, &cache.ctx);
            let cx = inputs.context(state, &cache.ctx, enforcement, &inputs.identities(cache.numbered.clone()));
            Response::Trace(Box::new(cx.trace(src, dst, *protocol, *port)))
        }
        _ => Response::Error("not a policy request".into()),
    }
}
