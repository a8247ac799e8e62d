//! The proxy's [`Decide`] over the node's policy view, as the agent last sent it: the
//! connection checks come from `sluice_core::policy::l7` (the same code the agent's `policy
//! trace` uses), the HTTP matchers compile once per view and rule set, not per connection.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex, RwLock};

use sluice_core::policy::{HttpMatcher, HttpRule, PolicyView, l7::connection_checks};

use crate::{Check, Decide, Verdict};

#[derive(Default)]
struct Current {
    /// `None` until the first view: everything is refused (fails closed).
    view: Option<Arc<PolicyView>>,
    /// Header names recorded in flows, lowercase.
    flow_headers: Arc<[String]>,
    matchers: Mutex<HashMap<Vec<HttpRule>, Arc<HttpMatcher>>>,
}

/// The latest view, shared with the connection handlers (each reads it when accepted).
#[derive(Default)]
pub struct PolicyDecide(RwLock<Arc<Current>>);

impl PolicyDecide {
    /// A new view: new connections are decided by it; open ones keep their checks.
    pub fn set(&self, view: PolicyView, flow_headers: &[String]) {
        let flow_headers = flow_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        let cur = Current { view: Some(Arc::new(view)), flow_headers, matchers: Default::default() };
        if let Ok(mut v) = self.0.write() {
            *v = Arc::new(cur);
        }
    }

    /// The generation of the view in force, if any.
    pub fn generation(&self) -> Option<u64> {
        self.0.read().ok().and_then(|c| c.view.as_ref().map(|v| v.generation))
    }
}

impl Decide for PolicyDecide {
    fn generation(&self) -> u64 {
        PolicyDecide::generation(self).unwrap_or(0)
    }

    fn decide(&self, client: SocketAddrV4, dst: SocketAddrV4) -> Verdict {
        let cur = self.0.read().map(|v| v.clone()).unwrap_or_default();
        let Some(view) = &cur.view else {
            return Verdict::Refuse { reason: "no policy view from the agent yet".into() };
        };
        let matcher = |rules: &Vec<HttpRule>| -> Arc<HttpMatcher> {
            let Ok(mut m) = cur.matchers.lock() else { return Arc::new(HttpMatcher::new(rules)) };
            m.entry(rules.clone()).or_insert_with(|| Arc::new(HttpMatcher::new(rules))).clone()
        };
        // A ClusterIP taken as it is (netfilter Services translate after the redirect): the
        // proxy picks the backend, and the checks are the backend's.
        let frontend = view.l7_frontends.iter().find(|f| f.vip == *dst.ip() && f.port == dst.port());
        let dst = match frontend.map(|f| f.pick(client.port())) {
            None => dst,
            Some(Some((ip, port))) => SocketAddrV4::new(ip, port),
            Some(None) => return Verdict::Refuse { reason: format!("{dst}: the Service has no backend") },
        };
        match connection_checks(view, *client.ip(), *dst.ip(), dst.port()) {
            Ok(checks) => Verdict::Http {
                checks: checks
                    .into_iter()
                    .map(|c| Check { matcher: matcher(&c.rules), policies: c.policies, ingress: c.ingress })
                    .collect(),
                upstream: dst,
                source: Some(*client.ip()),
                record_headers: cur.flow_headers.clone(),
            },
            Err(reason) => Verdict::Refuse { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_served_before_the_first_view() {
        let d = PolicyDecide::default();
        let a = "10.0.0.1:40000".parse().expect("addr");
        let b = "10.0.0.2:80".parse().expect("addr");
        assert!(matches!(d.decide(a, b), Verdict::Refuse { reason } if reason.contains("no policy view")));
        assert_eq!(d.generation(), None);
        d.set(PolicyView { generation: 7, ..Default::default() }, &[]);
        assert_eq!(d.generation(), Some(7));
    }
}
