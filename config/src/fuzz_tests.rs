//! Fuzz tier (proptest, bounded): any config text is a config or an error naming a key; never a
//! panic, and nothing accepted breaks the invariants the agent relies on.

use proptest::prelude::*;

use super::*;

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("10.244.0.0/16".to_string()),
        Just("10.244.1.5/16".to_string()),
        Just("10.96.0.0/12".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("0-0".to_string()),
        Just("30000-32767".to_string()),
        Just("strict".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("~".to_string()),
        "-?[0-9]{1,12}",
        "[ -~]{0,24}",
    ]
}

fn key() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("node_name"),
        Just("cluster_cidr"),
        Just("service_cidr"),
        Just("pod_cidr"),
        Just("node_port_range"),
        Just("kube_proxy_replacement"),
        Just("dataplane"),
        Just("lb_maglev_table_size"),
        Just("masquerade"),
        Just("bogus_key"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = from_yaml_str(&text);
    }

    #[test]
    fn near_miss_configs_are_valid_or_name_a_key(pairs in proptest::collection::vec((key(), value()), 0..6)) {
        let mut text = String::from("node_name: n1\n");
        for (k, v) in &pairs {
            text += &format!("{k}: {}\n", serde_json::Value::String(v.clone()));
        }
        match from_yaml_str(&text) {
            Ok(c) => {
                prop_assert_eq!(c.cluster_cidr.trunc(), c.cluster_cidr);
                prop_assert_eq!(c.service_cidr.trunc(), c.service_cidr);
                prop_assert!(!c.cluster_cidr.contains(&c.service_cidr.network()));
                prop_assert!(!c.service_cidr.contains(&c.cluster_cidr.network()));
                prop_assert!(c.node_port_range().is_ok());
            }
            Err(e) => {
                let s = e.to_string();
                prop_assert!(s.contains("key") || s.contains("configuration"), "{}", s);
            }
        }
    }
}
