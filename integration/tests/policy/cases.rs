//! The cases of the conformance suite: each a policy file, the expected matrix as a function
//! (from, to, port, protocol) -> allowed, and optional mutation steps (labels changing under a
//! policy). Upstream e2e cases first, then conflict cases and the Sluice CRDs.

use sluice_lab::Lab;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

pub struct P {
    pub ns: String,
    pub name: String,
    pub node: String,
    pub ip: String,
    pub svc_ip: String,
}

impl P {
    pub fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
    fn is(&self, key: &str) -> bool {
        self.key() == key
    }
}

pub type Expect = Box<dyn Fn(&P, &P, u16, Proto) -> bool>;

pub struct Step {
    pub what: &'static str,
    pub act: Box<dyn Fn(&Lab)>,
    pub expect: Expect,
}

/// A step that puts the lab back as it was.
pub type Undo = Box<dyn Fn(&Lab)>;

pub struct Case {
    pub name: &'static str,
    pub yaml: String,
    pub expect: Expect,
    pub steps: Vec<Step>,
    /// Restores what the steps changed (after the policy is deleted).
    pub undo: Vec<Undo>,
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: \"{ns}\"}}\nspec:\n{spec}---\n"
    )
}

fn case(name: &'static str, yaml: String, expect: impl Fn(&P, &P, u16, Proto) -> bool + 'static) -> Case {
    Case { name, yaml, expect: Box::new(expect), steps: Vec::new(), undo: Vec::new() }
}

fn labels(kv: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const DENY_ALL_X: &str = "  podSelector: {}\n  policyTypes: [Ingress]\n";

pub fn all(pods: &[P]) -> Vec<Case> {
    let y_b_ip = pods.iter().find(|p| p.is("y/b")).map(|p| p.ip.clone()).unwrap_or_default();
    let mut v = vec![
        case("default-deny-ingress", np("x", "deny", DENY_ALL_X), |_, t, _, _| t.ns != "x"),
        case("default-deny-egress", np("x", "deny-out", "  podSelector: {}\n  policyTypes: [Egress]\n"), |f, _, _, _| {
            f.ns != "x"
        }),
        case(
            "allow-all-beside-deny-all",
            np("x", "deny", DENY_ALL_X) + &np("x", "allow-all", "  podSelector: {}\n  ingress: [{}]\n"),
            |_, _, _, _| true,
        ),
        case(
            "allow-from-pod-b-same-namespace",
            np("x", "a-from-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n"),
            |f, t, _, _| !t.is("x/a") || f.is("x/b"),
        ),
        case(
            "allow-from-namespace-y",
            np("x", "a-from-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]\n"),
            |f, t, _, _| !t.is("x/a") || f.ns == "y",
        ),
        case(
            "namespace-and-pod-selector-in-one-peer",
            np("x", "a-from-y-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: \"y\"}}\n      podSelector: {matchLabels: {pod: b}}\n"),
            |f, t, _, _| !t.is("x/a") || f.is("y/b"),
        ),
        case(
            "namespace-or-pod-selector-as-two-peers",
            np("x", "a-from-y-or-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: \"y\"}}\n    - podSelector: {matchLabels: {pod: b}}\n"),
            |f, t, _, _| !t.is("x/a") || f.ns == "y" || f.is("x/b"),
        ),
        case(
            "match-expressions-not-in",
            np("x", "a-not-from-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [\"y\"]}]}\n"),
            |f, t, _, _| !t.is("x/a") || f.ns != "y",
        ),
        case(
            "port-81-only",
            np("x", "a-81", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 81}]}]\n"),
            |_, t, port, proto| !t.is("x/a") || (port == 81 && proto == Proto::Tcp),
        ),
        case(
            "named-port",
            np("x", "a-named", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: serve-81-udp, protocol: UDP}]}]\n"),
            |_, t, port, proto| !t.is("x/a") || (port == 81 && proto == Proto::Udp),
        ),
        case(
            "end-port",
            np("x", "a-range", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 80, endPort: 81}]}]\n"),
            |_, t, _, proto| !t.is("x/a") || proto == Proto::Tcp,
        ),
        case(
            "udp-rule-never-allows-tcp",
            np("x", "a-udp", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{protocol: UDP, port: 80}]}]\n"),
            |_, t, port, proto| !t.is("x/a") || (port == 80 && proto == Proto::Udp),
        ),
        case(
            "ip-block-with-except",
            np("x", "a-cidr", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24]}}]}]\n"),
            |f, t, _, _| !t.is("x/a") || f.node == "node-1",
        ),
        case(
            "egress-to-namespace-y",
            np("x", "a-to-y", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]\n"),
            |f, t, _, _| !f.is("x/a") || t.ns == "y",
        ),
        case(
            "egress-port-80-tcp",
            np("x", "a-out-80", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 80, protocol: TCP}]}]\n"),
            |f, _, port, proto| !f.is("x/a") || (port == 80 && proto == Proto::Tcp),
        ),
        case(
            "egress-named-port",
            np("x", "a-out-named", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-81-tcp}]}]\n"),
            |f, _, port, proto| !f.is("x/a") || (port == 81 && proto == Proto::Tcp),
        ),
        // Conflicts.
        case(
            "deny-by-ip-allow-by-pod",
            np(
                "x",
                "a-ip-and-pod",
                &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{y_b_ip}/32]}}}}]\n  - from: [{{namespaceSelector: {{matchLabels: {{ns: \"y\"}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}]\n"),
            ),
            |_, _, _, _| true,
        ),
        case(
            "deny-all-ingress-with-allow-all-egress",
            np("x", "a-deny-in", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n")
                + &np("x", "all-out", "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{}]\n"),
            |_, t, _, _| !t.is("x/a"),
        ),
        case(
            "sluice-deny-beats-allow",
            "apiVersion: sluice.io/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: a-cluster-but-y, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {pod: a}}\n  ingress: [{fromEntities: [cluster]}]\n  ingressDeny: [{fromEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: \"y\"}}]}]\n".into(),
            |f, t, _, _| !t.is("x/a") || f.ns != "y",
        ),
        case(
            "sluice-clusterwide-egress",
            "apiVersion: sluice.io/v1\nkind: SluiceClusterwideNetworkPolicy\nmetadata: {name: c-to-a}\nspec:\n  endpointSelector: {matchLabels: {pod: c}}\n  egress: [{toEndpoints: [{matchLabels: {pod: a}}], toPorts: [{ports: [{port: \"80\", protocol: ANY}]}]}]\n".into(),
            |f, t, port, _| f.name != "c" || (t.name == "a" && port == 80),
        ),
    ];
    // Label mutations under a policy: pods and namespaces gaining the selected labels.
    let mut m = case(
        "pod-and-namespace-label-changes",
        np(
            "x",
            "a-from-team-blue",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {team: blue}}}]\n  - from: [{namespaceSelector: {matchLabels: {env: prod}}}]\n",
        ),
        |_, t, _, _| !t.is("x/a"),
    );
    m.steps.push(Step {
        what: "y/c labelled team=blue",
        act: Box::new(|lab| {
            lab.pod_label("y/c", labels(&[("team", "blue")])).expect("label");
        }),
        expect: Box::new(|f, t, _, _| !t.is("x/a") || f.is("y/c")),
    });
    m.steps.push(Step {
        what: "namespace z labelled env=prod",
        act: Box::new(|lab| lab.namespace_set("z", labels(&[("ns", "z"), ("env", "prod")]), true).expect("ns label")),
        expect: Box::new(|f, t, _, _| !t.is("x/a") || f.is("y/c") || f.ns == "z"),
    });
    m.undo.push(Box::new(|lab| {
        lab.pod_label("y/c", labels(&[("team", "none")])).expect("label");
        lab.namespace_set("z", labels(&[("ns", "z")]), true).expect("ns label");
    }));
    v.push(m);
    v
}
