use sluice_core::Protocol;
use sluice_core::policy::{Entity, NsScope, Peer, PortSpec};
use sluice_core::validate::Problem;

use crate::source::Objects;
use crate::source::manifests::{classify, parse_documents};

fn read(yaml: &str) -> sluice_core::ClusterState {
    let mut o = Objects::default();
    classify(parse_documents(std::path::Path::new("p.yaml"), yaml).expect("yaml"), &mut o);
    crate::source::translate::translate(&o)
}

#[test]
fn network_policy_defaults_policy_types_and_translates_peers() {
    let st = read(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n    - namespaceSelector: {matchLabels: {ns: \"y\"}}\n      podSelector: {}\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n    ports: [{port: 80}, {protocol: UDP, port: serve-81-udp}, {port: 1000, endPort: 2000}]\n",
    );
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    let p = &st.policies[0];
    assert!(p.egress.is_none(), "no egress rules: Ingress only");
    let r = &p.ingress.as_ref().expect("ingress")[0];
    let peers = r.peers.as_ref().expect("peers");
    assert!(matches!(&peers[0], Peer::Pods { namespaces: NsScope::Named(n), .. } if n == "x"));
    assert!(matches!(&peers[1], Peer::Pods { namespaces: NsScope::Selector(_), pods, .. } if pods.is_empty()));
    assert!(matches!(&peers[2], Peer::Cidr { except, .. } if except.len() == 1));
    let ports = r.ports.as_ref().expect("ports");
    assert_eq!(ports[0].protocol, Protocol::Tcp, "default TCP");
    assert_eq!(ports[1].port, Some(PortSpec::Named("serve-81-udp".into())));
    assert_eq!(ports[2].port, Some(PortSpec::Range { port: 1000, end: 2000 }));
}

#[test]
fn invalid_policies_are_refused_by_name_and_the_others_kept() {
    let bad = [
        (
            "spec.podSelector.matchExpressions[0].operator",
            "  podSelector: {matchExpressions: [{key: a, operator: Maybe}]}\n",
        ),
        ("spec.ingress[0].ports[0].endPort", "  podSelector: {}\n  ingress: [{ports: [{port: 80, endPort: 79}]}]\n"),
        (
            "spec.ingress[0].peers[0].ipBlock.cidr",
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/8}}]}]\n",
        ),
        (
            "spec.ingress[0].peers[0].ipBlock.except[0]",
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]\n",
        ),
        ("spec.policyTypes[0]", "  podSelector: {}\n  policyTypes: [Sideways]\n"),
        ("spec.egress[0].ports[0].protocol", "  podSelector: {}\n  egress: [{ports: [{protocol: ICMP}]}]\n"),
    ];
    for (field, spec) in bad {
        let st = read(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: x}}\nspec:\n{spec}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: good, namespace: x}}\nspec: {{podSelector: {{}}}}\n"
        ));
        assert_eq!(st.policies.len(), 1, "{field}: the good one stays");
        assert_eq!(st.rejected.len(), 1, "{field}: {:?}", st.rejected);
        assert_eq!(st.rejected[0].object, "NetworkPolicy x/bad");
        assert_eq!(st.rejected[0].field, field, "{:?}", st.rejected[0]);
    }
}

#[test]
fn sluice_policies_entities_deny_and_fail_closed() {
    let st = read(
        "apiVersion: sluice.io/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {'k8s:pod': a}}\n  ingress:\n  - fromEntities: [world, cluster]\n    toPorts: [{ports: [{port: '80', protocol: ANY}]}]\n  - fromEndpoints: [{matchLabels: {pod: b}}]\n    toPorts: [{ports: [{port: '81'}], rules: {http: [{method: GET}]}}]\n  - toPorts: [{ports: [{port: '82'}], rules: {kafka: [{topic: t}]}}]\n  - {}\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: z}}]\n---\napiVersion: sluice.io/v1\nkind: SluiceClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress: [{toEntities: [moon]}]\n",
    );
    let p = &st.policies[0];
    assert_eq!(p.subject.selector.match_labels.get("pod").map(String::as_str), Some("a"), "k8s: prefix stripped");
    let ing = p.ingress.as_ref().expect("ingress");
    assert_eq!(ing.len(), 2, "the kafka rule and {{}} allow nothing: {ing:?}");
    let http = ing[1].ports.as_ref().expect("ports");
    assert_eq!(http[0].http.as_ref().map(|h| h[0].method.as_deref()), Some(Some("GET")), "{http:?}");
    assert_eq!(
        ing[0].peers.as_ref().expect("peers"),
        &vec![Peer::Entity(Entity::World), Peer::Entity(Entity::Cluster)]
    );
    assert_eq!(ing[0].ports.as_ref().expect("ports").len(), 3, "ANY = TCP, UDP, SCTP");
    assert!(matches!(&p.ingress_deny[0].peers.as_ref().expect("deny")[0], Peer::Pods { namespaces: NsScope::Any, .. }));
    let note = st.rejected.iter().find(|r| r.object == "SluiceNetworkPolicy x/p").expect("L7 reported");
    assert!(matches!(note.problem, Problem::NotEnforced { .. }), "{note:?}");
    assert_eq!(note.field, "spec.ingress[2].toPorts[0].rules.kafka");
    let bad = st.rejected.iter().find(|r| r.object == "SluiceClusterwideNetworkPolicy c").expect("moon refused");
    assert_eq!(bad.field, "spec.egress[0].toEntities[0]");
    assert!(bad.reason.contains("world, cluster"), "{}", bad.reason);
}

#[test]
fn bad_http_rules_refuse_the_policy_by_field_and_value() {
    let head = "apiVersion: sluice.io/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec:\n  endpointSelector: {}\n";
    let good = "---\napiVersion: sluice.io/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: good, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{path: /ok}]}}]}]\n";
    let bad = [
        (
            "spec.ingress[0].toPorts[0].rules.http[0].path",
            "(open",
            "  ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{path: '(open'}]}}]}]\n",
        ),
        (
            "spec.ingress[0].toPorts[0].ports[0].protocol",
            "UDP",
            "  ingress: [{toPorts: [{ports: [{port: '53', protocol: UDP}], rules: {http: [{}]}}]}]\n",
        ),
        (
            "spec.ingress[0].toPorts[0].ports[0].protocol",
            "ANY",
            "  ingress: [{toPorts: [{ports: [{port: '53', protocol: ANY}], rules: {http: [{}]}}]}]\n",
        ),
        (
            "spec.ingressDeny[0].toPorts[0].rules",
            "",
            "  ingressDeny: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]}]\n",
        ),
        (
            "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch",
            "SHOUT",
            "  ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{headerMatches: [{name: X, mismatch: SHOUT}]}]}}]}]\n",
        ),
        (
            "spec.ingress[0].toPorts[0].rules.http[0].headers[0]",
            "bad name",
            "  ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{headers: ['bad name']}]}}]}]\n",
        ),
        (
            "spec.ingress[0].toPorts[0].rules.grpc",
            "grpc",
            "  ingress: [{toPorts: [{ports: [{port: '80'}], rules: {grpc: []}}]}]\n",
        ),
    ];
    for (field, value, spec) in bad {
        let st = read(&format!("{head}{spec}{good}"));
        assert_eq!(st.policies.len(), 1, "{field}: the good one stays");
        assert_eq!(st.rejected.len(), 1, "{field}: {:?}", st.rejected);
        let r = &st.rejected[0];
        assert_eq!((r.object.as_str(), r.field.as_str()), ("SluiceNetworkPolicy x/bad", field), "{r:?}");
        assert!(r.value.contains(value), "{field}: the value is named: {r:?}");
    }
}
