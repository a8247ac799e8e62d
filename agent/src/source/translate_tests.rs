use super::*;
use crate::source::manifests::{classify, parse_documents};

fn objects(yaml: &str) -> Objects {
    let mut o = Objects::default();
    classify(parse_documents(std::path::Path::new("t.yaml"), yaml).expect("yaml"), &mut o);
    o
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 198.51.100.11}, {type: Hostname, address: node-1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: default, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.244.1.2, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, namespace: default, labels: {app: web}}
spec:
  nodeName: node-2
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.244.2.2, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalIPs: [203.0.113.10]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: default}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
"#;

#[test]
fn nodes_and_pods() {
    let st = translate(&objects(CLUSTER));
    let n = st.node("node-1").expect("node");
    assert_eq!(n.internal_ip.map(|i| i.to_string()).as_deref(), Some("198.51.100.11"));
    assert_eq!(n.pod_cidr.map(|c| c.to_string()).as_deref(), Some("10.244.1.0/24"));
    assert_eq!(st.pods.len(), 2);
    assert!(!st.pods[1].ready);
}

/// Owners as the controllers set them: a Deployment's pod is owned by its ReplicaSet (named
/// Deployment + `-` + pod-template-hash), a StatefulSet's directly; a bare pod has none.
#[test]
fn pods_carry_their_workload_as_hubble_names_it() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-7d9f8c6b5-x2x4z
  namespace: default
  labels: {app: web, pod-template-hash: 7d9f8c6b5}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d9f8c6b5, uid: "1", controller: true}]
spec: {nodeName: node-1, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: default
  ownerReferences:
  - {apiVersion: v1, kind: Node, name: node-1, uid: "2"}
  - {apiVersion: apps/v1, kind: StatefulSet, name: db, uid: "3", controller: true}
spec: {nodeName: node-1, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: lone, namespace: default}
spec: {nodeName: node-1, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.4}
"#;
    let st = translate(&objects(yaml));
    let w = |name: &str| {
        st.pods
            .iter()
            .find(|p| p.name == name)
            .expect("pod")
            .workload
            .as_ref()
            .map(|w| (w.kind.clone(), w.name.clone()))
    };
    assert_eq!(w("web-7d9f8c6b5-x2x4z"), Some(("Deployment".into(), "web".into())));
    assert_eq!(w("db-0"), Some(("StatefulSet".into(), "db".into())), "the controller, not the first owner");
    assert_eq!(w("lone"), None);
}

#[test]
fn service_frontends_and_selector_backends() {
    let st = translate(&objects(CLUSTER));
    assert_eq!(st.services.len(), 1, "headless skipped");
    let s = &st.services[0];
    let kinds: Vec<_> = s.frontends.iter().map(|f| (f.kind, f.port)).collect();
    assert_eq!(kinds, [(FrontendKind::ClusterIp, 80), (FrontendKind::NodePort, 30080), (FrontendKind::ExternalIp, 80)]);
    assert_eq!(s.backends.len(), 2);
    assert_eq!(s.backends[0].port, 8080, "named targetPort resolved");
    assert_eq!(s.backends[0].state, BackendState::Active);
    assert_eq!(s.backends[1].state, BackendState::NotReady);
}

#[test]
fn endpoint_slices_win_over_selector() {
    let yaml = format!(
        "{CLUSTER}---\n{}",
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 9090, protocol: TCP}]
endpoints:
- addresses: [10.244.3.7]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-3
"#
    );
    let st = translate(&objects(&yaml));
    let b = &st.services[0].backends;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].ip.to_string(), "10.244.3.7");
    assert_eq!(b[0].state, BackendState::Terminating);
}

#[test]
fn invalid_service_is_rejected_alone() {
    let yaml = format!(
        "{CLUSTER}---\n{}",
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: default}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 70000}]}\n"
    );
    let st = translate(&objects(&yaml));
    assert_eq!(st.services.len(), 1);
    assert_eq!(st.rejected.len(), 1);
    assert_eq!(st.rejected[0].object, "Service default/bad");
    assert!(st.rejected[0].reason.contains("70000"));
}

fn svc(name: &str, spec: &str) -> String {
    format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {spec}\n")
}

#[test]
fn node_port_range_and_duplicates_are_rejected_by_name() {
    let yaml = format!(
        "{}{}{}{}",
        svc("a", "{type: NodePort, clusterIP: 10.96.0.20, ports: [{port: 80, nodePort: 30100}]}"),
        svc("b", "{type: NodePort, clusterIP: 10.96.0.21, ports: [{port: 80, nodePort: 30100}]}"),
        svc("c", "{type: NodePort, clusterIP: 10.96.0.22, ports: [{port: 80, nodePort: 80}]}"),
        svc("d", "{clusterIP: 'fd00::1', ports: [{port: 80}]}"),
    );
    let st = translate(&objects(&yaml));
    assert_eq!(st.services.iter().map(|s| s.name.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(st.services[1].frontends.len(), 1, "b keeps its ClusterIP; only the nodePort is refused");
    let reasons: Vec<_> = st.rejected.iter().map(|r| format!("{}: {}", r.object, r.reason)).collect();
    assert!(
        reasons.iter().any(|r| r.contains("default/b") && r.contains("already served for Service default/a")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("default/c") && r.contains("30000-32767")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("default/d") && r.contains("IPv6")), "{reasons:?}");
}

#[test]
fn affinity_policies_ranges_and_host_ports() {
    let yaml = format!(
        "{}{}",
        svc(
            "lb",
            "{type: LoadBalancer, clusterIP: 10.96.0.30, externalTrafficPolicy: Local, internalTrafficPolicy: Local, healthCheckNodePort: 32000, sessionAffinity: ClientIP, loadBalancerSourceRanges: [203.0.113.0/24], ports: [{port: 80, nodePort: 30200}]}"
        ),
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: hp, namespace: default}\nspec:\n  nodeName: node-1\n  containers: [{name: c, image: x, ports: [{containerPort: 8080, hostPort: 18080}]}]\nstatus: {podIP: 10.244.1.9}\n"
    );
    let st = translate(&objects(&yaml));
    let s = &st.services[0];
    assert_eq!(s.affinity_timeout_s, Some(10800), "Kubernetes' default timeout");
    assert!(s.external_local && s.internal_local);
    assert_eq!(s.health_check_node_port, Some(32000));
    assert_eq!(s.source_ranges[0].to_string(), "203.0.113.0/24");
    assert_eq!(st.host_ports.len(), 1);
    assert_eq!((st.host_ports[0].host_port, st.host_ports[0].container_port), (18080, 8080));
}

#[test]
fn standalone_allocates_cluster_ips_from_service_cidr() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: noip, namespace: default}\nspec:\n  type: NodePort\n  ports: [{port: 80, nodePort: 30090}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: fixed, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n";
    let cidr: ipnet::Ipv4Net = "10.96.0.0/12".parse().expect("cidr");
    let opts = Options { service_cidr: Some(cidr), ..Options::default() };
    let st = translate_with(&objects(yaml), opts, &[]);
    let noip = st.services.iter().find(|s| s.name.name == "noip").expect("noip");
    let ip = noip.frontends.iter().find(|f| f.kind == FrontendKind::ClusterIp).and_then(|f| f.ip).expect("allocated");
    assert!(matches!(ip, IpAddr::V4(v4) if cidr.contains(&v4)), "{ip}");
    // The same address on every node: the same input always gives it.
    let again = translate_with(&objects(yaml), opts, &[]);
    assert_eq!(again.services, st.services);
    // With the Kubernetes source the API server allocates: nothing is made up.
    let kube = translate_with(&objects(yaml), Options::default(), &[]);
    let noip = kube.services.iter().find(|s| s.name.name == "noip").expect("noip");
    assert!(noip.frontends.iter().all(|f| f.kind != FrontendKind::ClusterIp));
    // A full service_cidr rejects the Service by name, with the way out.
    let tiny = Options { service_cidr: Some("10.96.0.0/31".parse().expect("cidr")), ..Options::default() };
    let st = translate_with(&objects(yaml), tiny, &[]);
    assert!(
        st.rejected.iter().any(|r| r.object == "Service default/noip" && r.reason.contains("widen service_cidr")),
        "{:?}",
        st.rejected
    );
}

/// Where a change's "read" goes at the policy bench's scale (10,000 Pods, 1,000 policies):
/// copying the objects out of the manifest directory, and translating them.
#[test]
#[ignore = "timing probe, run by hand: cargo test --release -p sluice translate_timing -- --ignored --nocapture"]
fn translate_timing() {
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n");
    for i in 0..10_000u32 {
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 244, 128, 0)) + i);
        y += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: bench, labels: {{id: \"{i}\"}}}}\nspec: {{nodeName: node-9, containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}}}\n"
        );
    }
    for i in 0..1000 {
        y += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{role: server}}}}\n  ingress: [{{from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{id: \"{i}\"}}}}}}], ports: [{{port: 80}}]}}]\n"
        );
    }
    let o = objects(&y);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let copy = Objects {
            pods: o.pods.clone(),
            namespaces: o.namespaces.clone(),
            network_policies: o.network_policies.clone(),
            ..Default::default()
        };
        let t_copy = t.elapsed();
        let st = translate(&copy);
        times.push((t_copy, t.elapsed() - t_copy, st.pods.len(), st.policies.len()));
    }
    eprintln!("copy / translate (pods, policies): {times:?}");
    let mut memo = Memo::default();
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let st = translate_memo(&o, Options::default(), &[], &mut memo);
        times.push((t.elapsed(), st.pods.len()));
    }
    eprintln!("translate with the memo (the first fills it): {times:?}");
}

/// An unchanged pod object is not translated again: the memo's translation is shared; a
/// changed one (a new object) is translated afresh, and a pod that went away leaves the memo.
#[test]
fn the_memo_reuses_unchanged_pods_and_translates_changed_ones() {
    let mut o = objects(CLUSTER);
    let mut memo = Memo::default();
    let first = translate_memo(&o, Options::default(), &[], &mut memo);
    let again = translate_memo(&o, Options::default(), &[], &mut memo);
    assert_eq!(first, again);
    assert_eq!(first, translate(&o), "the same translation as without the memo");
    assert!(first.pods.iter().zip(&again.pods).all(|(a, b)| std::sync::Arc::ptr_eq(a, b)), "shared, not rebuilt");
    let mut changed = (*o.pods[0]).clone();
    changed.metadata.labels.get_or_insert_default().insert("tier".into(), "front".into());
    o.pods[0] = std::sync::Arc::new(changed);
    let after = translate_memo(&o, Options::default(), &[], &mut memo);
    assert_eq!(after.pods[0].labels.get("tier").map(String::as_str), Some("front"));
    assert!(std::sync::Arc::ptr_eq(&after.pods[1], &first.pods[1]));
    o.pods.truncate(1);
    translate_memo(&o, Options::default(), &[], &mut memo);
    assert_eq!(memo.len(), 1, "only the pods of the last read are held");
}
