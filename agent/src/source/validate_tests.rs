use super::*;
use crate::source::Objects;
use crate::source::manifests::{classify, parse_documents};
use crate::source::translate::translate_with;

fn read(yaml: &str) -> Objects {
    let mut o = Objects::default();
    classify(parse_documents(std::path::Path::new("t.yaml"), yaml).expect("yaml"), &mut o);
    o
}

const BASE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 198.51.100.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {type: NodePort, clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}
"#;

fn opts() -> Options {
    Options {
        node_port_range: (30000, 32767),
        service_cidr: Some("10.96.0.0/12".parse().expect("cidr")),
        cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
    }
}

/// Translate BASE plus `extra`; returns the rejection reasons and the served frontends.
fn with(extra: &str) -> (Vec<String>, Vec<String>) {
    let st = translate_with(&read(&format!("{BASE}---\n{extra}")), opts(), &[]);
    let fronts = st
        .services
        .iter()
        .flat_map(|s| s.frontends.iter().map(move |f| format!("{} {:?}:{}/{}", s.name, f.ip, f.port, f.protocol)))
        .collect();
    (st.rejected.iter().map(ToString::to_string).collect(), fronts)
}

fn svc(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name:?}, namespace: default}}\nspec: {spec}\n")
}

#[test]
fn bad_services_are_refused_by_field_and_the_base_keeps_serving() {
    let cases = [
        (svc("lo", "{clusterIP: 127.0.0.1, ports: [{port: 80}]}"), "spec.clusterIP \"127.0.0.1\" is a loopback"),
        (svc("zero", "{clusterIP: 0.0.0.0, ports: [{port: 80}]}"), "unspecified"),
        (svc("bc", "{clusterIP: 255.255.255.255, ports: [{port: 80}]}"), "broadcast"),
        (svc("mc", "{clusterIP: 224.0.0.1, ports: [{port: 80}]}"), "multicast"),
        (svc("ll", "{clusterIP: 169.254.0.1, ports: [{port: 80}]}"), "link-local"),
        (svc("podip", "{clusterIP: 10.244.1.2, ports: [{port: 80}]}"), "inside the pod network"),
        (svc("nodeip", "{clusterIP: 198.51.100.11, ports: [{port: 80}]}"), "is the address of Node node-1"),
        (svc("out", "{clusterIP: 192.168.0.1, ports: [{port: 80}]}"), "outside service_cidr"),
        (svc("v6", "{clusterIP: 'fd00::1', ports: [{port: 80}]}"), "IPv6"),
        (svc("Upper", "{ports: [{port: 80}]}"), "metadata.name \"Upper\" must be a DNS-1035 label"),
        (svc("new\nline", "{ports: [{port: 80}]}"), "metadata.name \"new\\\\nline\""),
        (svc(&"x".repeat(64), "{ports: [{port: 80}]}"), "DNS-1035"),
        (svc("ty", "{type: Balloon, ports: [{port: 80}]}"), "spec.type \"Balloon\" is not one of ClusterIP"),
        (svc("p0", "{ports: [{port: 0}]}"), "spec.ports[0].port \"0\" is outside 1-65535"),
        (svc("pbig", "{ports: [{port: 70000}]}"), "outside 1-65535"),
        (svc("proto", "{ports: [{port: 80, protocol: ICMP}]}"), "spec.ports[0].protocol \"ICMP\" is not one of TCP, UDP, SCTP"),
        (svc("dup", "{ports: [{name: a, port: 80}, {name: b, port: 80}]}"), "spec.ports[1].port \"80/TCP\" repeats spec.ports[0]"),
        (svc("noname", "{ports: [{port: 80}, {port: 81}]}"), "spec.ports[0].name \"\" is required"),
        (svc("np", "{type: NodePort, ports: [{port: 80, nodePort: 80}]}"), "nodePort \"80\" is outside 30000-32767"),
        (svc("npci", "{ports: [{port: 80, nodePort: 30001}]}"), "is only allowed on type NodePort"),
        (svc("tp", "{ports: [{port: 80, targetPort: 'Not_A_Name'}]}"), "IANA service name"),
        (svc("eip", "{ports: [{port: 80}], externalIPs: [10.244.1.2]}"), "spec.externalIPs[0]"),
        (svc("aff", "{ports: [{port: 80}], sessionAffinity: Sticky}"), "spec.sessionAffinity"),
        (svc("etp", "{ports: [{port: 80}], externalTrafficPolicy: Nearest}"), "spec.externalTrafficPolicy"),
        (svc("lbsr", "{ports: [{port: 80}], loadBalancerSourceRanges: [bogus]}"), "is not a CIDR"),
        (svc("noports", "{clusterIP: 10.96.0.99}"), "spec.ports \"[]\" is required"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: notanumber}]}\n".into(), "does not decode"),
        ("just: a map\n".into(), "document: apiVersion/kind/metadata.name"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: default}\nstatus: {podIP: 127.0.0.1}\n".into(), "Pod default/p2: status.podIP"),
        ("apiVersion: v1\nkind: Node\nmetadata: {name: n2}\nspec: {podCIDR: 10.244.2.7/24}\n".into(), "host bits set; the network is 10.244.2.0/24"),
        ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, namespace: default, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [127.0.0.1]}]\nports: [{port: 8080}]\n".into(), "endpoints[0].addresses[0]"),
    ];
    let (ok, base) = with("");
    assert!(ok.is_empty(), "{ok:?}");
    for (doc, want) in cases {
        let (rejected, fronts) = with(&doc);
        assert_eq!(rejected.len(), 1, "{doc}: {rejected:?}");
        assert!(rejected[0].contains(want), "{doc}: {} lacks {want:?}", rejected[0]);
        assert!(!rejected[0].contains('\n'));
        assert!(base.iter().all(|b| fronts.contains(b)), "{doc}: base frontends lost: {fronts:?}");
    }
}

#[test]
fn a_conflict_refuses_only_the_newcomers_frontend() {
    // Name sorts before "web", same (absent) creation time: the incumbent still wins.
    let prior = translate_with(&read(BASE), opts(), &[]).services;
    let extra = svc(
        "aaa",
        "{type: NodePort, clusterIP: 10.96.0.11, ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30081}]}",
    );
    let st = translate_with(&read(&format!("{BASE}---\n{extra}")), opts(), &prior);
    let r: Vec<String> = st.rejected.iter().map(ToString::to_string).collect();
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].contains("Service default/aaa: spec.ports[].nodePort \"(node addresses):30080/TCP\" is already served for Service default/web"), "{}", r[0]);
    let aaa = st.services.iter().find(|s| s.name.name == "aaa").expect("aaa kept");
    assert_eq!(aaa.frontends.len(), 3, "its ClusterIP ports and the other nodePort are served");
    let web = st.services.iter().find(|s| s.name.name == "web").expect("web");
    assert_eq!(web.frontends.len(), 2);
    // Without history (a fresh agent), the older object wins; with no timestamps, the name.
    let fresh = translate_with(&read(&format!("{BASE}---\n{extra}")), opts(), &[]);
    assert!(fresh.rejected[0].object.ends_with("/web"));
    let stamped =
        extra.replace("namespace: default}", "namespace: default, creationTimestamp: '2030-01-01T00:00:00Z'}");
    let base = BASE.replace(
        "name: web, namespace: default}",
        "name: web, namespace: default, creationTimestamp: '2029-01-01T00:00:00Z'}",
    );
    let st = translate_with(&read(&format!("{base}---\n{stamped}")), opts(), &[]);
    assert!(st.rejected[0].object.ends_with("/aaa"), "older web wins: {:?}", st.rejected);
}

#[test]
fn a_second_service_on_the_same_cluster_ip_port_loses() {
    let prior = translate_with(&read(BASE), opts(), &[]).services;
    let extra = svc("aaa", "{clusterIP: 10.96.0.10, ports: [{port: 80}]}");
    let st = translate_with(&read(&format!("{BASE}---\n{extra}")), opts(), &prior);
    assert_eq!(st.rejected.len(), 1);
    assert_eq!(st.rejected[0].field, "spec.clusterIP");
    let web = st.services.iter().find(|s| s.name.name == "web").expect("web");
    assert_eq!(web.frontends.len(), 2, "the winner is untouched");
}

#[test]
fn duplicate_objects_in_one_read_keep_the_first() {
    let (r, _) = with(&svc("web", "{clusterIP: 10.96.0.12, ports: [{port: 80}]}"));
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].contains("Service default/web: metadata.name"), "{}", r[0]);
}

/// The lab's bad-input corpus, checked here without root: every object is refused by name,
/// with the expected reason, and the base cluster keeps every frontend.
#[test]
fn the_bad_input_corpus_is_refused_by_name() {
    const CORPUS: &str = include_str!("../../../integration/tests/data/bad_objects.yaml");
    const SERVICES: &str = include_str!("../../../integration/tests/data/bad_input_services.yaml");
    // BASE's node and pod (its Service is web, as in SERVICES), plus node-2.
    let nodes_and_pod = BASE.split("\n---\n").take(2).collect::<Vec<_>>().join("\n---\n");
    let node2 = "apiVersion: v1\nkind: Node\nmetadata: {name: node-2}\nspec: {podCIDR: 10.244.2.0/24}\nstatus: {addresses: [{type: InternalIP, address: 198.51.100.12}]}\n";
    let lab = format!("{nodes_and_pod}\n---\n{node2}---\n{SERVICES}");
    let base = translate_with(&read(&lab), opts(), &[]);
    assert!(base.rejected.is_empty(), "{:?}", base.rejected);
    let mut seen = BTreeSet::new();
    let cases: Vec<&str> = CORPUS.split("\n---\n").skip(1).collect();
    assert!(cases.len() >= 50, "{}", cases.len());
    for case in cases {
        let (head, body) = case.split_once('\n').expect("expect line");
        let (object, text) = head.trim_start_matches("# expect: ").split_once(" :: ").expect("OBJECT :: TEXT");
        assert!(seen.insert(object.to_string()), "objects are distinct: {object}");
        let st = translate_with(&read(&format!("{lab}\n---\n{body}")), opts(), &base.services);
        assert!(
            st.rejected.iter().any(|r| r.object == object && r.reason.contains(text)),
            "{object}: want {text:?} in {:?}",
            st.rejected.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
        for s in &base.services {
            let now = st.services.iter().find(|n| n.name == s.name).expect("base Service kept");
            assert_eq!(now, s, "{object} changed {}", s.name);
        }
    }
}
