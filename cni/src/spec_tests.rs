use super::*;
use crate::error::code;

fn env(pairs: &[(&'static str, &str)]) -> Result<Env, CniError> {
    let map: BTreeMap<&str, String> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
    Env::from_lookup(|k| map.get(k).cloned())
}

fn conf(json: &str) -> Result<NetConf, CniError> {
    NetConf::validate(decode(json.as_bytes())?)
}

#[test]
fn add_env_complete() {
    let e = env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc-1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
    ])
    .expect("valid env");
    assert_eq!(e.command, Command::Add);
    assert_eq!(e.pod_name(), Some("web-0"));
    assert_eq!(e.pod_namespace(), Some("default"));
    assert!(!e.args.contains_key("IgnoreUnknown"));
}

#[test]
fn del_accepts_empty_netns() {
    let e = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_NETNS", ""), ("CNI_IFNAME", "eth0")])
        .expect("DEL without netns");
    assert_eq!(e.netns, None);
}

#[test]
fn env_errors_name_the_variable() {
    let err = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]).expect_err("no netns");
    assert_eq!(err.code(), code::INVALID_ENV);
    assert!(err.to_string().contains("CNI_NETNS"), "{err}");

    let err = env(&[("CNI_COMMAND", "FROB")]).expect_err("bad command");
    assert!(err.to_string().contains("FROB") && err.to_string().contains("ADD"), "{err}");

    let err = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a/b"), ("CNI_NETNS", "/x"), ("CNI_IFNAME", "eth0")])
        .expect_err("bad id");
    assert!(err.to_string().contains("a/b"), "{err}");

    let err = env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "a"),
        ("CNI_NETNS", "/x"),
        ("CNI_IFNAME", "averyveryverylongname"),
    ])
    .expect_err("long ifname");
    assert_eq!(err.code(), code::INVALID_ENV);

    let err = env(&[("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "novalue")]).expect_err("bad args");
    assert!(err.to_string().contains("CNI_ARGS"));
}

#[test]
fn version_needs_no_attachment_env() {
    assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).expect("ok").command, Command::Version);
}

#[test]
fn config_defaults_and_gateway() {
    let c = conf(r#"{"cniVersion":"1.0.0","name":"sluice","type":"sluice-cni","subnet":"10.244.1.0/24","extra":true}"#)
        .expect("valid");
    assert_eq!(c.gateway.to_string(), "10.244.1.1");
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
}

#[test]
fn config_subnet_is_truncated() {
    let c = conf(r#"{"cniVersion":"1.1.0","name":"n","subnet":"10.244.1.7/24"}"#).expect("valid");
    assert_eq!(c.subnet.to_string(), "10.244.1.0/24");
}

#[test]
fn config_errors() {
    let e = conf("{not json").expect_err("decode");
    assert_eq!(e.code(), code::DECODING_FAILURE);

    let e = conf(r#"{"cniVersion":"0.2.0","name":"n","subnet":"10.0.0.0/24"}"#).expect_err("old version");
    assert_eq!(e.code(), code::INCOMPATIBLE_VERSION);
    assert!(e.to_string().contains("0.2.0") && e.to_string().contains("1.1.0"));

    let e = conf(r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.300/24"}"#).expect_err("bad cidr");
    assert_eq!(e.code(), code::INVALID_CONFIG);
    assert!(e.to_string().contains("10.0.0.300/24"), "{e}");

    let e = conf(r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/31"}"#).expect_err("tiny");
    assert_eq!(e.code(), code::INVALID_CONFIG);

    let e = conf(r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24","gateway":"10.0.1.1"}"#).expect_err("gw");
    assert!(e.to_string().contains("gateway"));

    let e = conf(r#"{"cniVersion":"1.0.0","name":"bad name","subnet":"10.0.0.0/24"}"#).expect_err("name");
    assert!(e.to_string().contains("bad name"));

    let e = conf(r#"{"cniVersion":"1.0.0","name":"n"}"#).expect_err("no subnet");
    assert!(e.to_string().contains("subnet"));
}

fn attached() -> Attached {
    Attached {
        host_ifname: "slc0123456789a".into(),
        host_mac: "aa:bb:cc:dd:ee:01".into(),
        ifname: "eth0".into(),
        mac: "aa:bb:cc:dd:ee:02".into(),
        sandbox: "/run/netns/p".into(),
        ip: "10.244.1.5".parse().expect("ip"),
        gateway: "10.244.1.1".parse().expect("ip"),
    }
}

#[test]
fn results_per_version() {
    for v in SUPPORTED_VERSIONS {
        let r = render_result(v, &attached());
        assert_eq!(r["cniVersion"], v);
        assert_eq!(r["interfaces"][1]["sandbox"], "/run/netns/p");
        assert_eq!(r["ips"][0]["address"], "10.244.1.5/32");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["routes"][0]["gw"], "10.244.1.1");
        let has_version = r["ips"][0].get("version").is_some();
        assert_eq!(has_version, v.starts_with("0."), "version field for {v}");
        assert_eq!(prev_result_ip(&r), Some("10.244.1.5".parse().expect("ip")));
    }
}

#[test]
fn version_output_lists_all() {
    let v = render_version(Some("0.4.0"));
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(v["supportedVersions"].as_array().map(Vec::len), Some(4));
    assert_eq!(render_version(Some("9.9.9"))["cniVersion"], LATEST_VERSION);
}

#[test]
fn valid_attachments_parse() {
    let c = conf(r#"{"cniVersion":"1.1.0","name":"n","subnet":"10.0.0.0/24","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#)
        .expect("valid");
    assert_eq!(c.valid_attachments.expect("list")[0].container_id, "a");
}
