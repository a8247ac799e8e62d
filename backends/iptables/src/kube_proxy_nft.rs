//! kube-proxy's nftables-mode state read back from `nft -j list table ip kube-proxy`: frontends
//! from its verdict maps (`service-ips`: ClusterIP, external and LoadBalancer IPs;
//! `service-nodeports`; `no-endpoint-services`), followed through `external-`/`service-` chains
//! (`numgen random` over `endpoint-` chains, `@affinity-` sets for ClientIP affinity) to each
//! endpoint chain's `dnat`. Pure. A rule of a shape this parser does not know is reported as
//! unknown with the reason, never guessed at.
//!
//! Limitation: an `external-` target is read as an external IP; kube-proxy's JSON does not tell
//! a LoadBalancer IP apart, so such a frontend is compared as an external IP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value;
use sluice_core::migrate::{KubeProxyState, ProxiedFrontend, UnknownRule};
use sluice_core::{FrontendKind, Protocol};

/// The table `nft` names it by.
pub const TABLE: &str = "ip kube-proxy";

struct Table<'a> {
    rules: BTreeMap<&'a str, Vec<&'a Vec<Value>>>,
    /// Set name -> timeout (seconds), for the affinity sets.
    timeouts: BTreeMap<&'a str, u32>,
    maps: BTreeMap<&'a str, &'a Vec<Value>>,
    unknown: Vec<UnknownRule>,
}

fn target(v: &Value) -> Option<&str> {
    v.get("goto").or_else(|| v.get("jump"))?.get("target")?.as_str()
}

fn proto(s: &str) -> Option<Protocol> {
    match s {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// `service-HASH-ns/name/proto/port` (or `external-`, `endpoint-...__ip/port`) -> `ns/name:port`.
fn service_port(chain: &str) -> Option<String> {
    let rest = chain.split_once('-')?.1.split_once('-')?.1;
    let rest = rest.split("__").next()?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [ns, name, _proto, port] => Some(format!("{ns}/{name}:{port}")),
        _ => None,
    }
}

#[derive(Default)]
struct Leads {
    endpoints: BTreeSet<(IpAddr, u16)>,
    affinity_s: Option<u32>,
}

impl<'a> Table<'a> {
    /// Report a rule once, however many frontends lead through it.
    fn unknown(&mut self, chain: &str, rule: &[Value], why: &str) {
        let u = UnknownRule {
            table: TABLE.into(),
            chain: chain.into(),
            rule: Value::Array(rule.to_vec()).to_string(),
            why: why.into(),
        };
        if !self.unknown.contains(&u) {
            self.unknown.push(u);
        }
    }

    fn follow(&mut self, chain: &str, leads: &mut Leads, depth: u8) {
        if depth > 4 {
            return;
        }
        let rules: Vec<&Vec<Value>> = self.rules.get(chain).cloned().unwrap_or_default();
        for rule in rules {
            let mut known = true;
            let mut affinity_set = None;
            for e in rule.iter() {
                if let Some(t) = target(e) {
                    if t == "mark-for-masquerade" {
                        continue;
                    }
                    if t.starts_with("endpoint-") {
                        self.endpoint(t, leads);
                    } else if t.starts_with("service-") || t.starts_with("external-") {
                        self.follow(t, leads, depth + 1);
                    } else {
                        known = false;
                    }
                } else if let Some(vm) = e.get("vmap") {
                    let by_numgen = vm.get("key").and_then(|k| k.get("numgen")).is_some();
                    let targets: Vec<String> = vm
                        .get("data")
                        .and_then(|d| d.get("set"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|pair| pair.get(1).and_then(target).map(str::to_string))
                        .collect();
                    if !by_numgen || targets.is_empty() || !targets.iter().all(|t| t.starts_with("endpoint-")) {
                        known = false;
                    }
                    for t in targets.iter().filter(|t| t.starts_with("endpoint-")) {
                        self.endpoint(t, leads);
                    }
                } else if let Some(m) = e.get("match") {
                    if let Some(set) = m.get("right").and_then(Value::as_str).and_then(|r| r.strip_prefix('@')) {
                        if set.starts_with("affinity-") {
                            affinity_set = Some(set.to_string());
                        } else {
                            known = false;
                        }
                    }
                } else if e.get("counter").is_none() {
                    known = false;
                }
            }
            if let Some(set) = affinity_set {
                leads.affinity_s = self.timeouts.get(set.as_str()).copied().or(leads.affinity_s);
            }
            if !known {
                self.unknown(chain, rule, "not a shape kube-proxy's nftables proxier writes in a service chain");
            }
        }
    }

    fn endpoint(&mut self, chain: &str, leads: &mut Leads) {
        let rules: Vec<&Vec<Value>> = self.rules.get(chain).cloned().unwrap_or_default();
        let mut found = false;
        for rule in rules {
            for e in rule.iter() {
                let Some(d) = e.get("dnat") else { continue };
                let addr = d.get("addr").and_then(Value::as_str).and_then(|a| a.parse().ok());
                let port = d.get("port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok());
                match (addr, port) {
                    (Some(a), Some(p)) => {
                        leads.endpoints.insert((a, p));
                        found = true;
                    }
                    _ => self.unknown(chain, rule, "a dnat without an IPv4 address and port"),
                }
            }
        }
        if !found {
            self.unknown(chain, &[], "an endpoint chain without a dnat");
        }
    }
}

/// kube-proxy's frontends and unknown rules in `json` (the output of `nft -j list table ip
/// kube-proxy`); `None` if it is not nft's JSON.
pub fn parse(json: &str) -> Option<KubeProxyState> {
    let doc: Value = serde_json::from_str(json).ok()?;
    let items = doc.get("nftables")?.as_array()?;
    let mut t = Table { rules: BTreeMap::new(), timeouts: BTreeMap::new(), maps: BTreeMap::new(), unknown: Vec::new() };
    for it in items {
        if let Some(r) = it.get("rule")
            && let (Some(c), Some(e)) =
                (r.get("chain").and_then(Value::as_str), r.get("expr").and_then(Value::as_array))
        {
            t.rules.entry(c).or_default().push(e);
        } else if let Some(s) = it.get("set")
            && let (Some(n), Some(to)) =
                (s.get("name").and_then(Value::as_str), s.get("timeout").and_then(Value::as_u64))
        {
            t.timeouts.insert(n, u32::try_from(to).unwrap_or(u32::MAX));
        } else if let Some(m) = it.get("map")
            && let (Some(n), Some(e)) = (m.get("name").and_then(Value::as_str), m.get("elem").and_then(Value::as_array))
        {
            t.maps.insert(n, e);
        }
    }
    let mut frontends = Vec::new();
    for (map, with_ip) in [("service-ips", true), ("service-nodeports", false), ("no-endpoint-services", true)] {
        let elems: Vec<Value> = t.maps.get(map).map(|e| e.to_vec()).unwrap_or_default();
        for el in &elems {
            let key = el.get(0).and_then(|k| k.get("concat")).and_then(Value::as_array);
            let verdict = el.get(1);
            let parsed = key.and_then(|k| {
                let (ip, rest) = if with_ip {
                    (Some(k.first()?.as_str()?.parse::<IpAddr>().ok()?), &k[1..])
                } else {
                    (None, &k[..])
                };
                let protocol = proto(rest.first()?.as_str()?)?;
                let port = u16::try_from(rest.get(1)?.as_u64()?).ok()?;
                Some((ip, protocol, port))
            });
            let Some((ip, protocol, port)) = parsed else {
                t.unknown(map, std::slice::from_ref(el), "a map element not of kube-proxy's key shape");
                continue;
            };
            let mut leads = Leads::default();
            let (kind, sp) = match verdict.and_then(target) {
                Some(chain) if map != "no-endpoint-services" => {
                    let kind = match (ip, chain.starts_with("external-")) {
                        (None, _) => FrontendKind::NodePort,
                        (Some(_), true) => FrontendKind::ExternalIp,
                        (Some(_), false) => FrontendKind::ClusterIp,
                    };
                    t.follow(chain, &mut leads, 0);
                    (kind, service_port(chain))
                }
                // No endpoints: kube-proxy rejects (or drops); the element's comment names the
                // Service port when it has one.
                _ => {
                    let comment = el.get(1).and_then(|v| v.get("comment")).and_then(Value::as_str);
                    (
                        if ip.is_some() { FrontendKind::ClusterIp } else { FrontendKind::NodePort },
                        comment.map(str::to_string),
                    )
                }
            };
            frontends.push(ProxiedFrontend {
                service_port: sp.unwrap_or_default(),
                kind,
                ip,
                port,
                protocol,
                endpoints: leads.endpoints,
                affinity_s: leads.affinity_s,
                external_local: false,
            });
        }
    }
    Some(KubeProxyState { source: "nftables".into(), frontends, unknown: t.unknown })
}

#[cfg(test)]
#[path = "kube_proxy_nft_tests.rs"]
mod tests;
