//! HTTP rules (`toPorts[].rules.http[]`): which requests an L7-policed port lets through. A
//! port with HTTP rules is allowed at L3/L4 only towards the node's L7 proxy, which answers
//! every request no rule matches with 403; the rules are data here, compiled once per policy
//! change by the proxy ([`HttpMatcher`]).
//!
//! Matching as Cilium's: `method`, `path` and `host` are extended regular expressions matched
//! against the whole value (anchored: `/public` does not match `/public/x`; write `/public.*`);
//! a rule with every field empty allows every request; `headers` entries are `Name` (present)
//! or `Name: value` (present with exactly that value); `headerMatches` name a header and
//! optionally its exact value. A request passes when any rule of any policy matches it.

use regex::Regex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// Compared case-insensitively (HTTP header names are).
    pub name: String,
    /// `None`: the header must be present; `Some`: present with exactly this value.
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HttpRule {
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub headers: Vec<HeaderMatch>,
}

/// Why an HTTP rule is refused (the source names the field and the policy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpRuleError {
    #[error("not a valid regular expression ({detail}); fields are anchored regexes, e.g. /public.* or GET|HEAD")]
    Regex { detail: String },
    #[error("a header name is a token (letters, digits, !#$%&'*+-.^_`|~), not {name:?}")]
    HeaderName { name: String },
}

fn anchored(re: &str) -> Result<Regex, HttpRuleError> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| HttpRuleError::Regex { detail: e.to_string() })
}

fn token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl HttpRule {
    /// Check one field's value as the source reads it: `Ok` or what is wrong with it.
    pub fn check_regex(re: &str) -> Result<(), HttpRuleError> {
        anchored(re).map(|_| ())
    }

    pub fn check_header_name(name: &str) -> Result<(), HttpRuleError> {
        if token(name) { Ok(()) } else { Err(HttpRuleError::HeaderName { name: name.into() }) }
    }
}

/// What a rule looks at in a request.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    /// (lower-case name, value) pairs as received.
    pub headers: &'a [(String, String)],
}

struct Compiled {
    method: Option<Regex>,
    path: Option<Regex>,
    host: Option<Regex>,
    headers: Vec<HeaderMatch>,
}

/// The rules of one (endpoint, port, peer) as the proxy evaluates them: compiled once.
pub struct HttpMatcher {
    rules: Vec<Compiled>,
}

impl HttpMatcher {
    /// Rules were validated by the source; one that does not compile here matches nothing
    /// (fails closed).
    pub fn new(rules: &[HttpRule]) -> Self {
        let rules = rules
            .iter()
            .filter_map(|r| {
                let re = |f: &Option<String>| f.as_deref().map(anchored).transpose();
                Some(Compiled {
                    method: re(&r.method).ok()?,
                    path: re(&r.path).ok()?,
                    host: re(&r.host).ok()?,
                    headers: r
                        .headers
                        .iter()
                        .map(|h| HeaderMatch { name: h.name.to_ascii_lowercase(), value: h.value.clone() })
                        .collect(),
                })
            })
            .collect();
        HttpMatcher { rules }
    }

    /// Does any rule allow this request?
    pub fn allows(&self, req: &Request) -> bool {
        self.rules.iter().any(|r| {
            r.method.as_ref().is_none_or(|m| m.is_match(req.method))
                && r.path.as_ref().is_none_or(|p| p.is_match(req.path))
                && r.host.as_ref().is_none_or(|h| h.is_match(req.host))
                && r.headers.iter().all(|h| {
                    req.headers.iter().any(|(n, v)| *n == h.name && h.value.as_ref().is_none_or(|want| want == v))
                })
        })
    }
}

/// The HTTP rules one direction applies to a connection, and whose they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Check {
    pub rules: Vec<HttpRule>,
    /// `Kind ns/name` of each policy behind the rules, sorted, each once.
    pub policies: Vec<String>,
    /// The destination's ingress rules (else the client's egress rules).
    pub ingress: bool,
}

/// What the L7 proxy does with a connection it was handed (`client` -> `dst`): the checks each
/// request must pass (the client's egress and the destination's ingress, for whichever is a
/// local endpoint), or why the connection is refused. The proxy's upstream connection leaves
/// through OUTPUT and meets no FORWARD chain here, so the L3/L4 verdict of the other local
/// direction is decided here too; a remote destination's node polices its own ingress.
pub fn connection_checks(
    view: &super::view::PolicyView,
    client: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    port: u16,
) -> Result<Vec<L7Check>, String> {
    use super::compile::{Action, Decision, decide, rule_matches};
    use super::identity::Identity;
    use super::model::Direction;
    use crate::service::Protocol;

    let id = |ip| view.ipcache.get(&ip).copied().unwrap_or(Identity::WORLD);
    let mut checks = Vec::new();
    let sides = [(view.endpoint(client), Direction::Egress, dst), (view.endpoint(dst), Direction::Ingress, client)];
    if sides.iter().all(|(ep, _, _)| ep.is_none()) {
        return Err(format!("neither {client} nor {dst} is a pod on this node"));
    }
    for (ep, dir, peer) in sides {
        let Some(ep) = ep else { continue };
        let d = ep.policy.direction(dir);
        if !d.enforced {
            continue;
        }
        let (verdict, _) = decide(d, peer, id(peer), Protocol::Tcp, port);
        match verdict {
            Decision::ToProxy { .. } => {
                let hits: Vec<_> = d
                    .rules
                    .iter()
                    .filter(|r| {
                        r.action == Action::Proxy && !r.audit && rule_matches(r, peer, id(peer), Protocol::Tcp, port)
                    })
                    .collect();
                let policies = hits.iter().map(|r| r.policy.to_string()).collect::<std::collections::BTreeSet<_>>();
                checks.push(L7Check {
                    rules: hits.iter().flat_map(|r| r.http.iter().cloned()).collect(),
                    policies: policies.into_iter().collect(),
                    ingress: dir == Direction::Ingress,
                });
            }
            v if v.allowed() => {}
            _ => return Err(format!("{dir} of {} does not allow {peer} on TCP {port}", ep.pod)),
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a str, path: &'a str, headers: &'a [(String, String)]) -> Request<'a> {
        Request { method, path, host: "echo.default", headers }
    }

    #[test]
    fn fields_are_anchored_regexes_and_any_rule_may_allow() {
        let m = HttpMatcher::new(&[
            HttpRule { method: Some("GET".into()), path: Some("/public".into()), ..Default::default() },
            HttpRule { method: Some("POST|PUT".into()), path: Some("/api/.*".into()), ..Default::default() },
        ]);
        assert!(m.allows(&req("GET", "/public", &[])));
        assert!(!m.allows(&req("GET", "/public/x", &[])), "anchored at the end");
        assert!(!m.allows(&req("GET", "/x/public", &[])), "anchored at the start");
        assert!(!m.allows(&req("GETX", "/public", &[])));
        assert!(!m.allows(&req("POST", "/public", &[])));
        assert!(m.allows(&req("PUT", "/api/v1", &[])));
        assert!(!m.allows(&req("GET", "/private", &[])));
    }

    #[test]
    fn an_empty_rule_allows_everything_and_no_rule_nothing() {
        assert!(HttpMatcher::new(&[HttpRule::default()]).allows(&req("DELETE", "/any", &[])));
        assert!(!HttpMatcher::new(&[]).allows(&req("GET", "/", &[])));
    }

    #[test]
    fn headers_by_presence_or_exact_value_names_case_insensitive() {
        let m = HttpMatcher::new(&[HttpRule {
            headers: vec![
                HeaderMatch { name: "X-Token".into(), value: None },
                HeaderMatch { name: "x-env".into(), value: Some("prod".into()) },
            ],
            ..Default::default()
        }]);
        let h = |pairs: &[(&str, &str)]| pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect::<Vec<_>>();
        assert!(m.allows(&req("GET", "/", &h(&[("x-token", "abc"), ("x-env", "prod")]))));
        assert!(!m.allows(&req("GET", "/", &h(&[("x-token", "abc"), ("x-env", "dev")]))));
        assert!(!m.allows(&req("GET", "/", &h(&[("x-env", "prod")]))));
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        assert!(matches!(HttpRule::check_regex("(unclosed"), Err(HttpRuleError::Regex { .. })));
        assert!(HttpRule::check_regex("/public|/health").is_ok());
        assert!(HttpRule::check_header_name("X-Token").is_ok());
        assert_eq!(HttpRule::check_header_name("bad name"), Err(HttpRuleError::HeaderName { name: "bad name".into() }));
        // A rule that slipped past validation matches nothing (fails closed).
        let m = HttpMatcher::new(&[HttpRule { path: Some("(".into()), ..Default::default() }]);
        assert!(!m.allows(&req("GET", "(", &[])));
    }
}
