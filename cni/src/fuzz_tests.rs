//! Fuzz tier (proptest, bounded case counts): whatever a runtime puts on stdin or in the
//! environment, the plugin's parsing answers with a value or a typed error, never a panic.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::spec::{Env, NetConf, decode, parse_cni_args};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// Network configs that are nearly right: every field from a pool of good and hostile values.
fn netconf_json() -> impl Strategy<Value = String> {
    let version = prop_oneof![Just("1.0.0"), Just("0.4.0"), Just("9.9.9"), Just(""), Just("1.1.0")];
    let name = prop_oneof![Just("sluice".to_string()), Just("".to_string()), "[ -~]{0,40}", "\\PC{0,20}"];
    let subnet = prop_oneof![
        Just("10.244.1.0/24".to_string()),
        Just("0.0.0.0/0".to_string()),
        Just("0.0.0.0/1".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("10.244.1.7/31".to_string()),
        "[0-9./]{0,20}",
    ];
    let gw = prop_oneof![Just(None), Just(Some("10.244.1.1".to_string())), "[0-9.]{0,16}".prop_map(Some)];
    let mtu = prop_oneof![Just(None), any::<i64>().prop_map(Some)];
    (version, name, subnet, gw, mtu).prop_map(|(v, n, s, g, m)| {
        serde_json::json!({"cniVersion": v, "name": n, "type": "sluice-cni", "subnet": s, "gateway": g, "mtu": m})
            .to_string()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_stdin_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(raw) = decode(&bytes) {
            let _ = NetConf::validate(raw);
        }
    }

    #[test]
    fn near_miss_configs_are_accepted_or_named(text in netconf_json()) {
        match decode(text.as_bytes()).and_then(NetConf::validate) {
            Ok(c) => {
                prop_assert!(c.subnet.prefix_len() >= 16 && c.subnet.prefix_len() <= 30);
                prop_assert!(c.subnet.contains(&c.gateway));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty() && e.code() > 0),
        }
    }

    #[test]
    fn arbitrary_environment_never_panics(
        vars in proptest::collection::btree_map(
            prop_oneof![Just("CNI_COMMAND"), Just("CNI_CONTAINERID"), Just("CNI_NETNS"), Just("CNI_IFNAME"), Just("CNI_ARGS"), Just("CNI_PATH")],
            "\\PC{0,80}",
            0..6,
        ),
        command in prop_oneof![Just("ADD"), Just("DEL"), Just("CHECK"), Just("GC"), Just("STATUS"), Just("VERSION"), Just("add"), Just("")],
    ) {
        let mut vars: BTreeMap<&str, String> = vars;
        vars.entry("CNI_COMMAND").or_insert_with(|| command.to_string());
        match Env::from_lookup(|k| vars.get(k).cloned()) {
            Ok(env) => {
                // What ADD/DEL/CHECK accept is safe to use as a file and interface name.
                prop_assert!(!env.container_id.contains('/') && !env.ifname.contains('/'));
                prop_assert!(env.ifname.len() <= 15);
            }
            Err(e) => prop_assert!(e.code() > 0),
        }
    }

    #[test]
    fn arbitrary_cni_args_never_panic(raw in "\\PC{0,200}") {
        let _ = parse_cni_args(&raw);
    }
}
