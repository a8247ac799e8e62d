use super::*;

#[test]
fn defaults_need_a_node_name() {
    let e = from_yaml_str("{}").expect_err("no node name");
    let s = e.to_string();
    assert!(
        s.contains("node_name") && s.contains("SLUICE_NODE_NAME"),
        "{s}"
    );
}

#[test]
fn yaml_and_defaults() {
    let c = from_yaml_str("node_name: node-1\ncni:\n  network_name: lab\n").expect("valid");
    assert_eq!(c.node_name, "node-1");
    assert_eq!(c.cni.network_name, "lab");
    assert_eq!(c.cni.data_dir, PathBuf::from("/var/lib/sluice/cni"));
    assert!(c.masquerade);
}

#[test]
fn unknown_keys_are_errors() {
    let e = from_yaml_str("node_name: a\nnode_nmae: b\n").expect_err("typo");
    assert!(e.to_string().contains("node_nmae"), "{e}");
    let e = from_yaml_str("node_name: a\ncni:\n  datadir: x\n").expect_err("nested typo");
    assert!(e.to_string().contains("datadir"), "{e}");
}

#[test]
fn bad_values_name_key_and_accepted() {
    let e = from_yaml_str("node_name: a\ncluster_cidr: 10.0.0.0/33\n").expect_err("bad cidr");
    assert!(e.to_string().contains("cluster_cidr"), "{e}");
    let e = from_yaml_str("node_name: a\npod_cidr: 10.9.0.0/24\n").expect_err("outside");
    let s = e.to_string();
    assert!(
        s.contains("pod_cidr") && s.contains("10.9.0.0/24") && s.contains("10.244.0.0/16"),
        "{s}"
    );
    let e = from_yaml_str("node_name: a\niptables:\n  variant: xt\n").expect_err("variant");
    assert!(e.to_string().contains("xt"), "{e}");
    let e = from_yaml_str("node_name: A_B\n").expect_err("name");
    assert!(e.to_string().contains("A_B"), "{e}");
    let e =
        from_yaml_str("node_name: a\ncni:\n  chain: [{capabilities: {}}]\n").expect_err("chain");
    assert!(e.to_string().contains("cni.chain[0]"), "{e}");
}

#[test]
fn file_env_and_flags_precedence() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "node_name = \"from-file\"\nmasquerade = false\n").expect("write");
    let c = load(Some(&path), None).expect("toml");
    assert_eq!(c.node_name, "from-file");
    assert!(!c.masquerade);
    let c = load(
        Some(&path),
        Some(serde_json::json!({"node_name": "from-flag"})),
    )
    .expect("flags");
    assert_eq!(c.node_name, "from-flag");
    let e = load(Some(&dir.path().join("missing.yaml")), None).expect_err("missing");
    assert!(e.to_string().contains("missing.yaml"), "{e}");
}
