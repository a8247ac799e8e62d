use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::identity::{allocate, preferred};
use super::*;
use crate::service::Protocol;

fn labels(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

fn ep(ns: &str, name: &str, ip: &str, node: &str, pod_labels: &str) -> PolicyEndpoint {
    let mut nsl = labels(&format!("kubernetes.io/metadata.name={ns}"));
    if ns == "y" {
        nsl.insert("team".into(), "blue".into());
    }
    PolicyEndpoint {
        namespace: ns.into(),
        name: name.into(),
        ip: ip.parse().expect("ip"),
        node: Some(node.into()),
        labels: IdentityLabels { namespace: ns.into(), pod: labels(pod_labels), namespace_labels: nsl },
        ports: vec![
            NamedPort { name: "serve-80-tcp".into(), protocol: Protocol::Tcp, port: 80 },
            NamedPort { name: "serve-80-udp".into(), protocol: Protocol::Udp, port: 80 },
            // Same name, another number on b: named ports resolve per pod.
            NamedPort { name: "web".into(), protocol: Protocol::Tcp, port: if name == "b" { 81 } else { 80 } },
        ],
    }
}

/// x/a, x/b on node-1; y/a, y/b on node-2.
fn cluster() -> Vec<PolicyEndpoint> {
    vec![
        ep("x", "a", "10.244.1.10", "node-1", "pod=a"),
        ep("x", "b", "10.244.1.11", "node-1", "pod=b"),
        ep("y", "a", "10.244.2.10", "node-2", "pod=a"),
        ep("y", "b", "10.244.2.11", "node-2", "pod=b"),
    ]
}

fn nodes() -> BTreeMap<String, Vec<Ipv4Addr>> {
    [
        ("node-1".to_string(), vec![Ipv4Addr::new(198, 51, 100, 11)]),
        ("node-2".to_string(), vec![Ipv4Addr::new(198, 51, 100, 12)]),
    ]
    .into()
}

fn netpol(ns: &str, name: &str, subject: &str, ingress: Option<Vec<Rule>>, egress: Option<Vec<Rule>>) -> Policy {
    Policy {
        name: PolicyName { kind: PolicyKind::NetworkPolicy, namespace: Some(ns.into()), name: name.into() },
        subject: Subject {
            namespace: Some(ns.into()),
            selector: LabelSelector { match_labels: labels(subject), match_expressions: vec![] },
            extended: false,
        },
        ingress,
        egress,
        ingress_deny: vec![],
        egress_deny: vec![],
        audit: false,
    }
}

fn pods(ns: NsScope, sel: &str) -> Peer {
    Peer::Pods {
        namespaces: ns,
        pods: LabelSelector { match_labels: labels(sel), match_expressions: vec![] },
        extended: false,
    }
}

fn tcp(port: u16) -> PortRule {
    PortRule { protocol: Protocol::Tcp, port: Some(PortSpec::Range { port, end: port }), http: None }
}

/// Run a trace between two addresses in a cluster with these policies.
fn allowed(policies: &[Policy], from: &str, to: &str, proto: Protocol, port: u16) -> bool {
    allowed_with(policies, Enforcement::Default, from, to, proto, port)
}

fn allowed_with(policies: &[Policy], enf: Enforcement, from: &str, to: &str, proto: Protocol, port: u16) -> bool {
    let eps = cluster();
    let n = nodes();
    let ctx = PolicyContext::new(PolicyInput {
        endpoints: &eps,
        policies,
        enforcement: enf,
        node: "node-1",
        node_ips: &n,
        cluster_cidr: "10.244.0.0/16".parse().expect("net"),
        apiserver: &[],
    });
    ctx.trace(from.parse().expect("ip"), to.parse().expect("ip"), proto, port).allowed
}

const XA: &str = "10.244.1.10";
const XB: &str = "10.244.1.11";
const YA: &str = "10.244.2.10";
const YB: &str = "10.244.2.11";
use Protocol::{Sctp, Tcp, Udp};

#[test]
fn no_policy_allows_everything_and_deny_all_isolates_per_direction() {
    assert!(allowed(&[], XA, XB, Tcp, 80));
    // ingress: [] on x/b: nothing reaches x/b, but x/b still connects out.
    let deny_in = netpol("x", "deny", "pod=b", Some(vec![]), None);
    assert!(!allowed(std::slice::from_ref(&deny_in), XA, XB, Tcp, 80));
    assert!(allowed(std::slice::from_ref(&deny_in), XB, XA, Tcp, 80));
    // Egress isolation only.
    let deny_out = netpol("x", "deny-out", "pod=b", None, Some(vec![]));
    assert!(allowed(std::slice::from_ref(&deny_out), XA, XB, Tcp, 80));
    assert!(!allowed(std::slice::from_ref(&deny_out), XB, XA, Tcp, 80));
}

#[test]
fn empty_rule_allows_all_and_policies_are_a_union() {
    let all = Rule { peers: None, ports: None };
    let p = netpol("x", "all", "pod=b", Some(vec![all]), None);
    assert!(allowed(std::slice::from_ref(&p), YA, XB, Udp, 9));
    // A deny-all and an allow-from-a on one pod: the union allows a only.
    let deny = netpol("x", "deny", "", Some(vec![]), None);
    let from_a = netpol(
        "x",
        "from-a",
        "pod=b",
        Some(vec![Rule { peers: Some(vec![pods(NsScope::Named("x".into()), "pod=a")]), ports: None }]),
        None,
    );
    let both = [deny, from_a];
    assert!(allowed(&both, XA, XB, Tcp, 80));
    assert!(!allowed(&both, YA, XB, Tcp, 80), "a podSelector-only peer is the policy's namespace");
    assert!(!allowed(&both, XB, XA, Tcp, 80), "deny-all still isolates x/a");
}

#[test]
fn namespace_and_pod_selector_in_one_peer_is_and_in_two_peers_is_or() {
    let blue = NsScope::Selector(LabelSelector::from_labels([("team", "blue")]));
    let and =
        Peer::Pods { namespaces: blue.clone(), pods: LabelSelector::from_labels([("pod", "a")]), extended: false };
    let p_and = netpol("x", "and", "pod=b", Some(vec![Rule { peers: Some(vec![and]), ports: None }]), None);
    assert!(allowed(std::slice::from_ref(&p_and), YA, XB, Tcp, 80));
    assert!(!allowed(std::slice::from_ref(&p_and), YB, XB, Tcp, 80));
    assert!(!allowed(std::slice::from_ref(&p_and), XA, XB, Tcp, 80));
    let or = vec![pods(blue, ""), pods(NsScope::Named("x".into()), "pod=a")];
    let p_or = netpol("x", "or", "pod=b", Some(vec![Rule { peers: Some(or), ports: None }]), None);
    assert!(allowed(std::slice::from_ref(&p_or), YB, XB, Tcp, 80));
    assert!(allowed(std::slice::from_ref(&p_or), XA, XB, Tcp, 80));
}

#[test]
fn match_expressions_notin_matches_pods_without_the_key() {
    let sel = LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![Requirement {
            key: "pod".into(),
            operator: Operator::NotIn,
            values: ["a".into()].into(),
        }],
    };
    assert!(sel.matches(&labels("pod=b")) && sel.matches(&labels("")) && !sel.matches(&labels("pod=a")));
    let ex = Requirement { key: "pod".into(), operator: Operator::Exists, values: Default::default() };
    assert!(ex.matches(&labels("pod=z")) && !ex.matches(&labels("x=y")));
}

#[test]
fn ip_block_with_except_matches_pod_addresses() {
    let block =
        Peer::Cidr { net: "10.244.0.0/16".parse().expect("net"), except: vec!["10.244.2.0/24".parse().expect("net")] };
    let p = netpol("x", "cidr", "pod=b", Some(vec![Rule { peers: Some(vec![block]), ports: None }]), None);
    assert!(allowed(std::slice::from_ref(&p), XA, XB, Tcp, 80));
    assert!(!allowed(std::slice::from_ref(&p), YA, XB, Tcp, 80), "except takes y's pods out");
}

#[test]
fn ports_protocols_end_port_and_named_ports() {
    let rule = |ports| Rule { peers: None, ports: Some(ports) };
    // UDP 80 only: never TCP 80.
    let udp = netpol(
        "x",
        "udp",
        "pod=b",
        Some(vec![rule(vec![PortRule {
            protocol: Udp,
            port: Some(PortSpec::Range { port: 80, end: 80 }),
            http: None,
        }])]),
        None,
    );
    assert!(allowed(std::slice::from_ref(&udp), XA, XB, Udp, 80));
    assert!(!allowed(std::slice::from_ref(&udp), XA, XB, Tcp, 80));
    let sctp =
        netpol("x", "sctp", "pod=b", Some(vec![rule(vec![PortRule { protocol: Sctp, port: None, http: None }])]), None);
    assert!(
        !allowed(std::slice::from_ref(&sctp), XA, XB, Tcp, 80) && allowed(std::slice::from_ref(&sctp), XA, XB, Sctp, 7)
    );
    // endPort.
    let range = netpol(
        "x",
        "range",
        "pod=b",
        Some(vec![rule(vec![PortRule {
            protocol: Tcp,
            port: Some(PortSpec::Range { port: 80, end: 81 }),
            http: None,
        }])]),
        None,
    );
    assert!(
        allowed(std::slice::from_ref(&range), XA, XB, Tcp, 81)
            && !allowed(std::slice::from_ref(&range), XA, XB, Tcp, 82)
    );
    // Named ingress port: "web" is 81 on x/b.
    let named = netpol(
        "x",
        "named",
        "",
        Some(vec![rule(vec![PortRule { protocol: Tcp, port: Some(PortSpec::Named("web".into())), http: None }])]),
        None,
    );
    assert!(allowed(std::slice::from_ref(&named), XA, XB, Tcp, 81));
    assert!(!allowed(std::slice::from_ref(&named), XA, XB, Tcp, 80));
    assert!(allowed(std::slice::from_ref(&named), XB, XA, Tcp, 80));
    // Named egress port: resolved per destination.
    let out = netpol(
        "y",
        "named-out",
        "pod=a",
        None,
        Some(vec![rule(vec![PortRule { protocol: Tcp, port: Some(PortSpec::Named("web".into())), http: None }])]),
    );
    assert!(allowed(std::slice::from_ref(&out), YA, XB, Tcp, 81));
    assert!(!allowed(std::slice::from_ref(&out), YA, XB, Tcp, 80));
    assert!(allowed(std::slice::from_ref(&out), YA, XA, Tcp, 80));
    // Default TCP on a rule with ports.
    let p80 = netpol("x", "p80", "pod=b", Some(vec![rule(vec![tcp(80)])]), None);
    assert!(
        allowed(std::slice::from_ref(&p80), YA, XB, Tcp, 80) && !allowed(std::slice::from_ref(&p80), YA, XB, Udp, 80)
    );
}

#[test]
fn deny_beats_allow_and_entities() {
    let mut p = netpol(
        "x",
        "snp",
        "pod=b",
        Some(vec![Rule { peers: Some(vec![Peer::Entity(Entity::Cluster)]), ports: None }]),
        None,
    );
    p.name.kind = PolicyKind::SluiceNetworkPolicy;
    p.ingress_deny = vec![Rule { peers: Some(vec![pods(NsScope::Any, "pod=a")]), ports: Some(vec![tcp(80)]) }];
    assert!(!allowed(std::slice::from_ref(&p), YA, XB, Tcp, 80), "deny wins");
    assert!(allowed(std::slice::from_ref(&p), YA, XB, Tcp, 81));
    assert!(allowed(std::slice::from_ref(&p), YB, XB, Tcp, 80));
    assert!(!allowed(std::slice::from_ref(&p), "203.0.113.9", XB, Tcp, 80), "world is not cluster");
    let world = netpol(
        "x",
        "world",
        "pod=b",
        Some(vec![Rule { peers: Some(vec![Peer::Entity(Entity::World)]), ports: None }]),
        None,
    );
    assert!(allowed(std::slice::from_ref(&world), "203.0.113.9", XB, Tcp, 80));
    assert!(!allowed(std::slice::from_ref(&world), YA, XB, Tcp, 80));
    assert!(!allowed(std::slice::from_ref(&world), "198.51.100.12", XB, Tcp, 80), "a remote node is not world");
    // From the pod's own node: always.
    assert!(allowed(std::slice::from_ref(&world), "198.51.100.11", XB, Tcp, 80));
}

#[test]
fn enforcement_modes_and_audit() {
    assert!(!allowed_with(&[], Enforcement::Always, XA, XB, Tcp, 80));
    let deny = netpol("x", "deny", "", Some(vec![]), None);
    assert!(allowed_with(std::slice::from_ref(&deny), Enforcement::Never, XA, XB, Tcp, 80));
    let mut audit = deny.clone();
    audit.audit = true;
    assert!(allowed(std::slice::from_ref(&audit), XA, XB, Tcp, 80), "audit never drops");
    let eps = cluster();
    let n = nodes();
    let ctx = PolicyContext::new(PolicyInput {
        endpoints: &eps,
        policies: std::slice::from_ref(&audit),
        enforcement: Enforcement::Default,
        node: "node-1",
        node_ips: &n,
        cluster_cidr: "10.244.0.0/16".parse().expect("net"),
        apiserver: &[],
    });
    let t = ctx.trace(XA.parse().expect("ip"), XB.parse().expect("ip"), Tcp, 80);
    let ing = t.ingress.expect("ingress step");
    assert_eq!(ing.decision, Decision::NotIsolated);
    assert!(matches!(ing.audit, Some(Decision::DefaultDeny { .. })), "{ing:?}");
}

#[test]
fn identities_are_deterministic_reserved_below_256_and_never_shared() {
    let a = cluster();
    let one = allocate(a.iter().map(|e| e.labels.clone()));
    let two = allocate(a.iter().rev().map(|e| e.labels.clone()));
    assert_eq!(one, two, "order-independent");
    assert_eq!(one.labels.len(), 4);
    assert!(one.labels.keys().all(|i| i.is_cluster()));
    // Force collisions: many sets, fold them and check no number is shared.
    let many: Vec<IdentityLabels> = (0..5000)
        .map(|i| IdentityLabels {
            namespace: "n".into(),
            pod: labels(&format!("i={i}")),
            namespace_labels: BTreeMap::new(),
        })
        .collect();
    let alloc = allocate(many.clone());
    assert_eq!(alloc.labels.len(), 5000);
    for c in &alloc.collisions {
        assert_ne!(c.preferred, c.given);
    }
    let l0 = &many[0];
    let same = allocate(many[..10].to_vec());
    if !alloc.collisions.iter().any(|c| c.labels == l0.canonical()) {
        assert_eq!(alloc.get(l0), Some(preferred(l0)));
        assert_eq!(same.get(l0), alloc.get(l0), "stable as other label sets come and go");
    }
    assert_eq!(Identity::HOST.reserved_name(), Some("host"));
}

/// The list datapaths evaluate for audit policies gives, for every flow the enforced rules let
/// through, the audit verdict the trace computes.
#[test]
fn the_audit_shadow_agrees_with_the_trace() {
    let name = |n: &str, audit: bool| PolicyName {
        kind: if audit { PolicyKind::SluiceNetworkPolicy } else { PolicyKind::NetworkPolicy },
        namespace: Some("x".into()),
        name: n.into(),
    };
    let rule = |action, port: u16, policy: &str, audit: bool| CompiledRule {
        action,
        peer: PeerMatch::Any,
        protocol: Some(Tcp),
        ports: Some((port, port)),
        policy: name(policy, audit),
        audit,
        http: vec![],
    };
    let none = DirectionPolicy::default();
    assert_eq!(audit_shadow(&none), None, "no audit policy: nothing to evaluate");
    for enforced in [false, true] {
        let d = DirectionPolicy {
            enforced,
            selected_by: if enforced { vec![name("real", false)] } else { vec![] },
            audited_by: vec![name("audit-iso", true)],
            rules: vec![
                rule(Action::Deny, 22, "audit-no-ssh", true),
                rule(Action::Allow, 80, "real", false),
                rule(Action::Allow, 443, "audit-tls", true),
            ],
        };
        let shadow = audit_shadow(&d).expect("shadow");
        for port in [22, 80, 443, 8080] {
            let (real, audit) = decide(&d, XA.parse().expect("ip"), Identity(300), Tcp, port);
            if !real.allowed() {
                continue; // the shadow is evaluated only for what the enforced list lets through
            }
            let (shadowed, _) = decide(&shadow, XA.parse().expect("ip"), Identity(300), Tcp, port);
            match audit {
                None => assert!(shadowed.allowed(), "port {port} enforced={enforced}: {shadowed:?}"),
                Some(a) => assert_eq!(shadowed, a, "port {port} enforced={enforced}"),
            }
        }
    }
}

#[test]
fn identities_are_reused_only_for_the_same_label_sets() {
    let eps = cluster();
    let first = Identities::new(&eps);
    // The same sets in another order, and a second pod with a set already numbered: reused.
    let mut same = eps.clone();
    same.reverse();
    same.push(ep("x", "a2", "10.244.1.20", "node-1", "pod=a"));
    assert!(first.covers(&same));
    let reused = Identities::update(Some(first.clone()), &same);
    assert!(std::sync::Arc::ptr_eq(&reused.allocation, &first.allocation));
    // A label changed: one set went, one came; the rest keep their numbers, and the result is
    // what a fresh numbering gives (allocation and label index alike).
    let mut relabelled = eps.clone();
    relabelled[0].labels.pod = labels("pod=other");
    assert!(!first.covers(&relabelled));
    let (updated, fresh) = (Identities::update(Some(first.clone()), &relabelled), Identities::new(&relabelled));
    assert_eq!(*updated.allocation, *fresh.allocation);
    assert_eq!(*updated.by_label, *fresh.by_label);
    // A set gone (every remaining one known, but fewer): the same as a fresh start too.
    let fewer = eps[1..].to_vec();
    assert!(!first.covers(&fewer));
    let renumbered = Identities::update(Some(first), &fewer);
    assert_eq!(*renumbered.allocation, *Identities::new(&fewer).allocation);
    assert_eq!(*renumbered.by_label, *Identities::new(&fewer).by_label);
    assert!(!renumbered.allocation.labels.values().any(|l| *l == eps[0].labels));
}

#[test]
fn identities_with_a_collision_are_numbered_afresh() {
    // Two label sets whose preferred numbers collide, the second added to a cluster holding
    // the first (both ways round): the update must give what a fresh numbering gives (the
    // later set in order moves), not the first-come answer.
    let (a, b) = colliding_pair();
    for (first, second) in [(&a, &b), (&b, &a)] {
        let before = vec![ep("x", "p", "10.244.1.1", "node-1", first)];
        let mut after = before.clone();
        after.push(ep("x", "q", "10.244.1.2", "node-1", second));
        let updated = Identities::update(Some(Identities::new(&before)), &after);
        assert_eq!(*updated.allocation, *Identities::new(&after).allocation);
        assert_eq!(updated.allocation.collisions.len(), 1);
    }
}

/// Two label sets whose preferred numbers collide, the first in allocation order first.
fn colliding_pair() -> (String, String) {
    let mut seen: BTreeMap<Identity, String> = BTreeMap::new();
    let (a, b) = (0..200_000)
        .find_map(|i| {
            let l = format!("n={i}");
            let id = preferred(&ep("x", "p", "10.244.1.1", "node-1", &l).labels);
            seen.insert(id, l.clone()).map(|prev| (prev, l))
        })
        .expect("a collision among 200,000 label sets");
    let key = |l: &str| ep("x", "p", "10.244.1.1", "node-1", l).labels.canonical();
    if key(&a) <= key(&b) { (a, b) } else { (b, a) }
}

#[test]
fn identities_update_in_place_beside_a_collision_and_afresh_on_its_path() {
    let (a, b) = colliding_pair();
    let before = vec![
        ep("x", "a", "10.244.1.1", "node-1", &a),
        ep("x", "b", "10.244.1.2", "node-1", &b),
        ep("x", "c", "10.244.1.3", "node-1", "n=c"),
    ];
    let first = Identities::new(&before);
    assert_eq!(first.allocation.collisions.len(), 1);
    // A label change away from the collision: updated in place, as a fresh numbering gives.
    let mut relabelled = before.clone();
    relabelled[2].labels.pod = labels("n=d");
    let updated = first.clone().renumbered(&relabelled).expect("in place");
    assert_eq!(*updated.allocation, *Identities::new(&relabelled).allocation);
    assert_eq!(*updated.by_label, *Identities::new(&relabelled).by_label);
    // The set holding the contested number goes: the moved one would move back, so in place
    // is refused and the update numbers afresh.
    let without_a = before[1..].to_vec();
    assert!(first.clone().renumbered(&without_a).is_none());
    let fresh = Identities::update(Some(first), &without_a);
    assert!(fresh.allocation.collisions.is_empty());
    assert_eq!(*fresh.allocation, *Identities::new(&without_a).allocation);
}

#[test]
#[ignore = "timing probe, run by hand: cargo test --release -p sluice-core identities_timing -- --ignored --nocapture"]
fn identities_timing() {
    let eps: Vec<PolicyEndpoint> = (0..10_000)
        .map(|i| {
            ep(
                "bench",
                &format!("p{i}"),
                &format!("10.244.{}.{}", 100 + i / 250, i % 250),
                "node-9",
                &format!("id={i}"),
            )
        })
        .collect();
    let first = Identities::new(&eps);
    let mut changed = eps.clone();
    changed[5000].labels.pod = labels("id=other");
    let t = std::time::Instant::now();
    let covers = first.covers(&changed);
    let t_cov = t.elapsed();
    let r = first.clone().renumbered(&changed);
    let t_ren = t.elapsed();
    drop(r);
    let t2 = std::time::Instant::now();
    let fresh = Identities::new(&changed);
    eprintln!(
        "collisions {} covers {covers} in {t_cov:?}; renumbered (shared Arc) {:?}; fresh {:?}",
        first.allocation.collisions.len(),
        t_ren - t_cov,
        t2.elapsed()
    );
    let t3 = std::time::Instant::now();
    let u = Identities::update(Some(first), &changed);
    eprintln!("update (unshared) {:?}", t3.elapsed());
    assert_eq!(*u.allocation, *fresh.allocation);
}

#[test]
fn the_proxy_checks_both_local_directions_and_refuses_what_l3_l4_does_not_allow() {
    let http = vec![HttpRule { method: Some("GET".into()), path: Some("/public".into()), ..Default::default() }];
    let l7 = PortRule { http: Some(http.clone()), ..tcp(80) };
    let ingress = netpol(
        "x",
        "l7",
        "pod=b",
        Some(vec![Rule { peers: Some(vec![pods(NsScope::Named("x".into()), "pod=a")]), ports: Some(vec![l7]) }]),
        None,
    );
    let view = |policies: &[Policy]| {
        let eps = cluster();
        let n = nodes();
        let ctx = PolicyContext::new(PolicyInput {
            endpoints: &eps,
            policies,
            enforcement: Enforcement::Default,
            node: "node-1",
            node_ips: &n,
            cluster_cidr: "10.244.0.0/16".parse().expect("net"),
            apiserver: &[],
        });
        let endpoints = eps[..2]
            .iter()
            .map(|e| EndpointRules {
                ip: e.ip,
                interface: format!("veth-{}", e.name),
                pod: format!("x/{}", e.name),
                policy: ctx.compile(e),
            })
            .collect();
        PolicyView { endpoints, ipcache: ctx.ipcache.clone(), l7_proxy: Some(15001), ..Default::default() }
    };
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
    let v = view(std::slice::from_ref(&ingress));
    let checks = l7::connection_checks(&v, ip(XA), ip(XB), 80).expect("allowed to the proxy");
    assert_eq!(checks, vec![l7::L7Check { rules: http, policies: vec!["NetworkPolicy x/l7".into()], ingress: true }]);
    assert!(l7::connection_checks(&v, ip(YA), ip(XB), 80).is_err(), "y/a is not a peer: refused");
    assert!(l7::connection_checks(&v, ip(XA), ip(XB), 81).is_err(), "another port: refused");
    assert!(l7::connection_checks(&v, ip(YA), ip(YB), 80).is_err(), "no local endpoint: refused");
    // x/a's egress allows only 81: the proxy's upstream would bypass FORWARD, so it refuses.
    let egress = netpol("x", "a-out", "pod=a", None, Some(vec![Rule { peers: None, ports: Some(vec![tcp(81)]) }]));
    let v = view(&[ingress.clone(), egress]);
    let e = l7::connection_checks(&v, ip(XA), ip(XB), 80).expect_err("egress denies");
    assert!(e.contains("egress of x/a"), "{e}");
    // The ClusterIP of a Service backed by x/b's port 80 is taken by the proxy as it is;
    // another Service's (y/b) or another port's is not.
    use crate::testing::{ServiceBuilder, backend};
    let services = [
        ServiceBuilder::new("x", "b").cluster_ip("10.96.0.20", 80).backend(backend(XB, 80, "node-1")).build(),
        ServiceBuilder::new("x", "b81").cluster_ip("10.96.0.21", 80).backend(backend(XB, 81, "node-1")).build(),
        ServiceBuilder::new("y", "b").cluster_ip("10.96.0.22", 80).backend(backend(YB, 80, "node-1")).build(),
    ];
    let v = view(std::slice::from_ref(&ingress));
    let fronts = super::l7_frontends::frontends(&v, "node-1", &[ip("198.51.100.11")], &services);
    assert_eq!(fronts.len(), 1, "{fronts:?}");
    assert_eq!((fronts[0].vip, fronts[0].port, fronts[0].service.as_str()), (ip("10.96.0.20"), 80, "x/b"));
    assert_eq!(fronts[0].pick(40000), Some((ip(XB), 80)));
    assert!(!fronts[0].external);
    // From outside: the NodePort on each node address and an ExternalIP, with the local backends
    // whose ingress rules have HTTP rules (not the remote one, not another port's).
    let services = [ServiceBuilder::new("x", "b")
        .cluster_ip("10.96.0.20", 80)
        .node_port(30080)
        .external_ip("203.0.113.9", 80)
        .backend(backend(XB, 80, "node-1"))
        .backend(backend("10.244.2.9", 80, "node-2"))
        .build()];
    let fronts = super::l7_frontends::frontends(&v, "node-1", &[ip("198.51.100.11"), ip("198.51.100.21")], &services);
    type Front = (Ipv4Addr, u16, Vec<(Ipv4Addr, u16)>);
    let ext: Vec<Front> = fronts.iter().filter(|f| f.external).map(|f| (f.vip, f.port, f.backends.clone())).collect();
    assert!(fronts.iter().all(|f| !f.only_local), "a remote backend may be picked: {fronts:?}");
    let local = vec![(ip(XB), 80)];
    assert_eq!(
        ext,
        vec![
            (ip("198.51.100.11"), 30080, local.clone()),
            (ip("198.51.100.21"), 30080, local.clone()),
            (ip("203.0.113.9"), 80, local)
        ],
        "{fronts:?}"
    );
    // externalTrafficPolicy: Local: nat can only pick the local one.
    let services = [ServiceBuilder::new("x", "b")
        .node_port(30080)
        .external_local()
        .backend(backend(XB, 80, "node-1"))
        .backend(backend("10.244.2.9", 80, "node-2"))
        .build()];
    let fronts = super::l7_frontends::frontends(&v, "node-1", &[ip("198.51.100.11")], &services);
    assert!(fronts.len() == 1 && fronts[0].external && fronts[0].only_local, "{fronts:?}");
}
