//! The deploy manifests parse as the Kubernetes objects they claim to be (k8s-openapi types),
//! the embedded agent config is valid, and RBAC grants only reads of what the agent watches.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;

const MANIFESTS: [(&str, &str); 2] = [
    ("deploy/sluice.yaml", include_str!("../../deploy/sluice.yaml")),
    ("deploy/sluice-kube-proxy-free.yaml", include_str!("../../deploy/sluice-kube-proxy-free.yaml")),
];

fn docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text).expect("yaml").into_iter().filter(|d| !d.is_null()).collect()
}

#[test]
fn manifests_are_valid_kubernetes_objects() {
    for (file, text) in MANIFESTS {
        let docs = docs(text);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap_or("")).collect();
        assert_eq!(kinds, ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"], "{file}");
        for d in &docs {
            let ok = match d["kind"].as_str() {
                Some("ServiceAccount") => serde_json::from_value::<ServiceAccount>(d.clone()).map(|_| ()),
                Some("ClusterRole") => serde_json::from_value::<ClusterRole>(d.clone()).map(|_| ()),
                Some("ClusterRoleBinding") => serde_json::from_value::<ClusterRoleBinding>(d.clone()).map(|_| ()),
                Some("ConfigMap") => serde_json::from_value::<ConfigMap>(d.clone()).map(|_| ()),
                Some("DaemonSet") => serde_json::from_value::<DaemonSet>(d.clone()).map(|_| ()),
                other => panic!("{file}: unexpected kind {other:?}"),
            };
            ok.unwrap_or_else(|e| panic!("{file}: {} does not parse: {e}", d["kind"]));
        }

        // RBAC: get/list/watch, and one write: patch on nodes (the migration's node label).
        let role: ClusterRole = serde_json::from_value(docs[1].clone()).expect("role");
        let mut patches = 0;
        for r in role.rules.expect("rules") {
            if r.verbs == ["patch"] {
                assert_eq!(r.resources.as_deref(), Some(&["nodes".to_string()][..]), "{file}: patch only on nodes");
                patches += 1;
                continue;
            }
            assert!(r.verbs.iter().all(|v| ["get", "list", "watch"].contains(&v.as_str())), "{file}: {:?}", r.verbs);
        }
        assert_eq!(patches, 1, "{file}: the node label needs patch on nodes");

        // The ConfigMap's config is one the agent accepts (node_name arrives by env).
        let cm: ConfigMap = serde_json::from_value(docs[3].clone()).expect("cm");
        let text = &cm.data.expect("data")["config.yaml"];
        let cfg = sluice_config::from_yaml_str(&format!("node_name: node-1\n{text}"))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(cfg.source.kind, sluice_config::SourceKind::Kubernetes);
        for name in cfg.node_configs.keys() {
            cfg.with_node_config(Some(name)).unwrap_or_else(|e| panic!("{file}: node config {name}: {e}"));
        }

        // The DaemonSet runs privileged on the host network with the mounts the agent needs.
        let ds: DaemonSet = serde_json::from_value(docs[4].clone()).expect("ds");
        let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
        assert_eq!(pod.host_network, Some(true));
        let agent = &pod.containers[0];
        assert_eq!(agent.security_context.as_ref().and_then(|s| s.privileged), Some(true));
        let mounts: Vec<&str> = agent.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
        for want in ["/sys/fs/bpf", "/sys/fs/cgroup", "/etc/cni/net.d", "/run/sluice", "/var/lib/sluice"] {
            assert!(mounts.contains(&want), "{file}: missing mount {want}");
        }
        let env: Vec<&str> = agent.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert!(env.contains(&"SLUICE_NODE_NAME"), "{file}");
        // The L7 proxy's own container: the agent's command line parses it, on the same socket.
        let proxy = pod.containers.iter().find(|c| c.name == "l7-proxy").expect("l7-proxy container");
        let argv = proxy.command.clone().unwrap_or_default();
        assert!(<crate::Cli as clap::Parser>::try_parse_from(&argv).is_ok(), "{file}: {argv:?}");
        let proxy_mounts: Vec<&str> = proxy.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
        assert!(proxy_mounts.contains(&"/run/sluice") && proxy_mounts.contains(&"/etc/sluice"), "{file}");
        let init = &pod.init_containers.expect("init")[0];
        assert!(
            init.command.iter().flatten().any(|c| c.contains("sluice-cni")),
            "{file}: init installs the CNI binary"
        );
    }
    // The kube-proxy-free variant is strict and reaches the API server directly.
    let kpf = docs(MANIFESTS[1].1);
    let ds: DaemonSet = serde_json::from_value(kpf[4].clone()).expect("ds");
    let env: Vec<String> = ds.spec.expect("spec").template.spec.expect("pod").containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    assert!(env.contains(&"KUBERNETES_SERVICE_HOST".to_string()));
    assert!(kpf[3]["data"]["config.yaml"].as_str().expect("cfg").contains("kube_proxy_replacement: strict"));
}

#[test]
fn the_policy_crds_are_the_ones_the_agent_watches() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Vec<CustomResourceDefinition> = docs(include_str!("../../deploy/sluice-crds.yaml"))
        .into_iter()
        .map(|d| serde_json::from_value(d).expect("a CustomResourceDefinition"))
        .collect();
    let names: Vec<(String, String)> =
        crds.iter().map(|c| (c.spec.names.kind.clone(), c.spec.names.plural.clone())).collect();
    let watched: Vec<(String, String)> =
        crate::source::kube::KubeSource::CRDS.iter().map(|(k, p)| (k.to_string(), p.to_string())).collect();
    assert_eq!(names, watched);
    assert!(crds.iter().all(|c| c.spec.group == "sluice.io"));
    // RBAC lets the agent read them, and Namespaces.
    for (file, text) in MANIFESTS {
        assert!(text.contains("resources: [sluicenetworkpolicies, sluiceclusterwidenetworkpolicies]"), "{file}");
        assert!(text.contains("namespaces]"), "{file}");
    }
}

#[test]
fn the_relay_manifest_is_a_deployment_and_service_whose_command_parses() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    let docs = docs(include_str!("../../deploy/sluice-relay.yaml"));
    let dep: Deployment = serde_json::from_value(docs[0].clone()).expect("Deployment");
    let svc: Service = serde_json::from_value(docs[1].clone()).expect("Service");
    let ports: Vec<i32> = svc.spec.and_then(|s| s.ports).into_iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, [4245, 80]);
    let pod = dep.spec.expect("spec").template.spec.expect("pod");
    let mut cmds = Vec::new();
    for c in &pod.containers {
        let cmd = c.command.clone().expect("command");
        // With the env references filled in as the kubelet does, the CLI accepts it.
        let argv: Vec<String> =
            cmd.iter().map(|a| a.replace("$(POD_IP)", "10.244.1.9").replace("$(NODE_IP)", "10.0.0.1")).collect();
        let cli = <crate::Cli as clap::Parser>::try_parse_from(argv).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        cmds.push(cli.cmd);
    }
    assert!(matches!(cmds[..], [crate::Cmd::Relay(_), crate::Cmd::Ui(_)]));
}
