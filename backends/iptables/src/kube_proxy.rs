//! kube-proxy's iptables-mode state read back from `iptables-save`: its Service frontends
//! (`KUBE-SERVICES` and `KUBE-NODEPORTS`), where each leads (`KUBE-FW-` source ranges,
//! `KUBE-EXT-` external traffic, `KUBE-SVC-`/`KUBE-SVL-` endpoint choice, `KUBE-SEP-` DNAT), its
//! affinity and external traffic policy. Pure. A rule in kube-proxy's chains of a shape this
//! parser does not know is reported as unknown with the reason, never guessed at.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sluice_core::migrate::{KubeProxyState, ProxiedFrontend, UnknownRule};
use sluice_core::{FrontendKind, Protocol};

use crate::save::TableDump;

/// A rule's words, with a quoted comment kept whole (without its quotes).
pub(crate) fn words(rule: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in rule.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The value after `opt` (`-d`, `--dport`, `-j`, ...).
fn opt<'w>(w: &'w [String], opt: &str) -> Option<&'w str> {
    w.iter().position(|x| x == opt).and_then(|i| w.get(i + 1)).map(String::as_str)
}

fn proto(w: &[String]) -> Option<Protocol> {
    match opt(w, "-p")? {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Where one frontend's target chain leads.
#[derive(Default)]
struct Leads {
    endpoints: BTreeSet<(IpAddr, u16)>,
    affinity_s: Option<u32>,
    external_local: bool,
}

struct Parser<'a> {
    chains: BTreeMap<&'a str, Vec<&'a str>>,
    table: &'a str,
    unknown: Vec<UnknownRule>,
}

impl<'a> Parser<'a> {
    fn unknown(&mut self, chain: &str, rule: &str, why: &str) {
        let u = UnknownRule { table: self.table.into(), chain: chain.into(), rule: rule.into(), why: why.into() };
        if !self.unknown.contains(&u) {
            self.unknown.push(u);
        }
    }

    fn rules(&self, chain: &str) -> Vec<&'a str> {
        self.chains.get(chain).cloned().unwrap_or_default()
    }

    /// Follow a frontend's target: FW -> EXT -> SVC/SVL -> SEP.
    fn follow(&mut self, chain: &str, leads: &mut Leads, depth: u8) {
        if depth > 3 {
            self.unknown(chain, "", "chains nest deeper than kube-proxy's layout");
            return;
        }
        for rule in self.rules(chain) {
            let w = words(rule);
            let Some(target) = opt(&w, "-j") else {
                self.unknown(chain, rule, "no target");
                continue;
            };
            match target {
                "KUBE-MARK-MASQ" | "KUBE-MARK-DROP" | "RETURN" => {}
                t if t.starts_with("KUBE-SEP-") => {
                    if opt(&w, "--seconds").is_some() && w.iter().any(|x| x == "--rcheck") {
                        leads.affinity_s = opt(&w, "--seconds").and_then(|s| s.parse().ok());
                    }
                    self.endpoint(t, leads);
                }
                t if t.starts_with("KUBE-SVL-") => {
                    leads.external_local = true;
                    // The local set is a subset of the cluster set that KUBE-SVC names; read it
                    // only when no KUBE-SVC is reached (a Local-only ClusterIP path).
                    let mut local = Leads::default();
                    self.follow(t, &mut local, depth + 1);
                    if leads.endpoints.is_empty() {
                        leads.endpoints = local.endpoints;
                    }
                    leads.affinity_s = leads.affinity_s.or(local.affinity_s);
                }
                t if t.starts_with("KUBE-SVC-") || t.starts_with("KUBE-EXT-") => {
                    let mut inner = Leads::default();
                    self.follow(t, &mut inner, depth + 1);
                    leads.endpoints.extend(inner.endpoints);
                    leads.affinity_s = leads.affinity_s.or(inner.affinity_s);
                    leads.external_local |= inner.external_local;
                }
                _ => self.unknown(chain, rule, "target outside kube-proxy's Service layout"),
            }
        }
    }

    fn endpoint(&mut self, sep: &str, leads: &mut Leads) {
        let mut found = false;
        for rule in self.rules(sep) {
            let w = words(rule);
            match opt(&w, "-j") {
                Some("KUBE-MARK-MASQ") => {}
                Some("DNAT") => {
                    let to = opt(&w, "--to-destination").and_then(|d| d.parse::<std::net::SocketAddr>().ok());
                    match to {
                        Some(sa) => {
                            leads.endpoints.insert((sa.ip(), sa.port()));
                            found = true;
                        }
                        None => self.unknown(sep, rule, "DNAT without an address:port destination"),
                    }
                }
                _ => self.unknown(sep, rule, "an endpoint chain holds hairpin marking and one DNAT"),
            }
        }
        if !found {
            self.unknown(sep, "", "an endpoint chain without a DNAT");
        }
    }
}

/// The kind a `KUBE-SERVICES` comment names (`ns/name:port cluster IP`, `... external IP`,
/// `... loadbalancer IP`), and the Service port.
fn kind_of(comment: &str) -> Option<(FrontendKind, &str)> {
    [
        (" cluster IP", FrontendKind::ClusterIp),
        (" external IP", FrontendKind::ExternalIp),
        (" loadbalancer IP", FrontendKind::LoadBalancer),
    ]
    .into_iter()
    .find_map(|(suffix, kind)| comment.strip_suffix(suffix).map(|svc| (kind, svc)))
}

/// Frontends kube-proxy rejects because their Service has no endpoints (filter table:
/// `KUBE-SERVICES` for cluster IPs, `KUBE-EXTERNAL-SERVICES` for NodePorts and external IPs).
fn rejected(filter: &TableDump, unknown: &mut Vec<UnknownRule>) -> Vec<ProxiedFrontend> {
    let mut out = Vec::new();
    for r in &filter.rules {
        let Some((chain, rule)) = r.split_once(' ') else { continue };
        if chain != "KUBE-SERVICES" && chain != "KUBE-EXTERNAL-SERVICES" {
            continue;
        }
        let w = words(rule);
        let comment = opt(&w, "--comment").unwrap_or_default();
        let parsed = (|| {
            let svc = comment.strip_suffix(" has no endpoints")?;
            (opt(&w, "-j")? == "REJECT").then_some(())?;
            let protocol = proto(&w)?;
            let port: u16 = opt(&w, "--dport")?.parse().ok()?;
            let ip: Option<IpAddr> = match opt(&w, "-d") {
                Some(d) => Some(d.trim_end_matches("/32").parse().ok()?),
                None => None,
            };
            let kind = match (chain, ip) {
                ("KUBE-SERVICES", Some(_)) => FrontendKind::ClusterIp,
                ("KUBE-EXTERNAL-SERVICES", Some(_)) => FrontendKind::ExternalIp,
                ("KUBE-EXTERNAL-SERVICES", None) => FrontendKind::NodePort,
                _ => return None,
            };
            Some(ProxiedFrontend {
                service_port: svc.into(),
                kind,
                ip,
                port,
                protocol,
                endpoints: BTreeSet::new(),
                affinity_s: None,
                external_local: false,
            })
        })();
        match parsed {
            Some(f) => out.push(f),
            None => unknown.push(UnknownRule {
                table: "filter".into(),
                chain: chain.into(),
                rule: rule.into(),
                why: "not a no-endpoints REJECT of kube-proxy's layout".into(),
            }),
        }
    }
    out
}

/// Parse one `iptables-save` dump's nat (and, when given, filter) table. `source` names where
/// it was read.
pub fn parse(nat: &TableDump, filter: Option<&TableDump>, source: &str) -> KubeProxyState {
    let mut chains: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &nat.rules {
        if let Some((chain, rest)) = r.split_once(' ')
            && chain.starts_with("KUBE-")
        {
            chains.entry(chain).or_default().push(rest);
        }
    }
    let mut p = Parser { chains, table: "nat", unknown: Vec::new() };
    let mut frontends = Vec::new();
    for (chain, nodeport) in [("KUBE-SERVICES", false), ("KUBE-NODEPORTS", true)] {
        for rule in p.rules(chain) {
            let w = words(rule);
            let target = opt(&w, "-j").unwrap_or_default();
            if !nodeport && target == "KUBE-NODEPORTS" {
                continue;
            }
            let comment = opt(&w, "--comment").unwrap_or_default();
            let parsed = (|| {
                let protocol = proto(&w)?;
                let port: u16 = opt(&w, "--dport")?.parse().ok()?;
                let (kind, svc, ip) = if nodeport {
                    (FrontendKind::NodePort, comment, None)
                } else {
                    let (kind, svc) = kind_of(comment)?;
                    let ip: IpAddr = opt(&w, "-d")?.trim_end_matches("/32").parse().ok()?;
                    (kind, svc, Some(ip))
                };
                let ok = ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-"].iter().any(|pre| target.starts_with(pre));
                ok.then(|| (kind, svc.to_string(), ip, port, protocol))
            })();
            let Some((kind, service_port, ip, port, protocol)) = parsed else {
                p.unknown(chain, rule, "not a Service frontend rule of kube-proxy's layout");
                continue;
            };
            let mut leads = Leads::default();
            p.follow(target, &mut leads, 0);
            frontends.push(ProxiedFrontend {
                service_port,
                kind,
                ip,
                port,
                protocol,
                endpoints: leads.endpoints,
                affinity_s: leads.affinity_s,
                external_local: leads.external_local,
            });
        }
    }
    let mut unknown = p.unknown;
    if let Some(filter) = filter {
        frontends.extend(rejected(filter, &mut unknown));
    }
    KubeProxyState { source: source.into(), frontends, unknown }
}

#[cfg(test)]
#[path = "kube_proxy_tests.rs"]
mod tests;
