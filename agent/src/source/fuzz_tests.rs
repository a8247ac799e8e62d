//! Fuzz tier for the translation (proptest, bounded): random mixes of good, hostile and
//! conflicting objects go in; desired state plus named rejections come out, never a panic, and
//! what is served never breaks the invariants the backends rely on.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::Objects;
use super::manifests::classify;
use super::translate::{Options, translate_with};
use sluice_core::FrontendKind;

fn pick<T: Clone + std::fmt::Debug + 'static>(xs: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(xs)
}

const IPS: &[&str] = &[
    "10.96.0.10",
    "10.96.0.11",
    "10.96.0.10",
    "127.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",
    "169.254.1.1",
    "10.244.1.2",
    "198.51.100.11",
    "fd00::1",
    "bogus",
    "",
    "None",
    "203.0.113.10",
    "240.0.0.1",
];
const PORTS: &[i64] = &[80, 80, 443, 0, -1, 65535, 65536, 30080, 30081, 8080];
const PROTOS: &[&str] = &["TCP", "UDP", "SCTP", "ICMP", "tcp"];
const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "Balloon"];
const NAMES: &[&str] = &["web", "a", "Bad_Name", "x\ny", "-lead", "ok-1", ""];

/// Mostly from the good values (so that valid objects meet and conflict), sometimes anything.
fn mostly<T: Clone + std::fmt::Debug + 'static>(good: &'static [T], any: &'static [T]) -> impl Strategy<Value = T> {
    prop_oneof![4 => pick(good), 1 => pick(any)]
}

fn port() -> impl Strategy<Value = Value> {
    (
        mostly(&[80, 443], PORTS),
        mostly(&["TCP", "UDP"], PROTOS),
        proptest::option::of(mostly(&[30080, 30081], PORTS)),
        proptest::option::of(mostly(&["http", "dns"], &["http", "dns", "HTTP", ""])),
    )
        .prop_map(|(p, proto, np, name)| json!({"port": p, "protocol": proto, "nodePort": np, "name": name}))
}

fn service(i: usize) -> impl Strategy<Value = Value> {
    (
        mostly(&["web", "a", "ok-1"], NAMES),
        mostly(&["ClusterIP", "NodePort"], TYPES),
        mostly(&["10.96.0.10", "10.96.0.11", ""], IPS),
        proptest::collection::vec(port(), 0..3),
        proptest::collection::vec(mostly(&["203.0.113.10", "10.96.0.10"], IPS), 0..2),
    )
        .prop_map(move |(n, ty, ip, ports, eips)| {
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": format!("{n}{i}"), "namespace": "default"},
                   "spec": {"type": ty, "clusterIP": ip, "ports": ports, "externalIPs": eips, "selector": {"app": "web"}}})
        })
}

fn pod(i: usize) -> impl Strategy<Value = Value> {
    (pick(NAMES), pick(IPS), pick(PORTS)).prop_map(move |(n, ip, p)| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("{n}p{i}"), "namespace": "default", "labels": {"app": "web"}},
               "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [{"containerPort": p, "hostPort": p}]}]},
               "status": {"podIP": ip}})
    })
}

fn junk() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("a string")),
        Just(json!([1, 2])),
        Just(json!({"kind": "Service"})),
        Just(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": 5}})),
        Just(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": "nope"})),
    ]
}

fn documents() -> impl Strategy<Value = Vec<Value>> {
    let services = (0..6usize).map(service).collect::<Vec<_>>();
    let pods = (0..3usize).map(pod).collect::<Vec<_>>();
    (services, pods, proptest::collection::vec(junk(), 0..2), 0..6usize).prop_map(|(mut s, p, j, keep)| {
        s.truncate(keep);
        s.into_iter().chain(p).chain(j).collect()
    })
}

fn opts() -> Options {
    Options {
        node_port_range: (30000, 32767),
        service_cidr: Some("10.96.0.0/12".parse().expect("cidr")),
        cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
    }
}

fn objects(docs: Vec<Value>) -> Objects {
    let mut o = Objects::default();
    classify(docs, &mut o);
    o
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn translation_never_panics_and_serves_only_what_is_valid(docs in documents(), prior_docs in documents()) {
        let prior = translate_with(&objects(prior_docs), opts(), &[]).services;
        let st = translate_with(&objects(docs.clone()), opts(), &prior);
        let mut claims = BTreeSet::new();
        for s in &st.services {
            for f in &s.frontends {
                let key = (if f.kind == FrontendKind::NodePort { None } else { f.ip }, f.port, f.protocol);
                prop_assert!(claims.insert(key), "two served frontends share {:?}", key);
                prop_assert!(f.port != 0);
                if let Some(IpAddr::V4(ip)) = f.ip {
                    prop_assert!(sluice_core::validate::special(ip).is_none(), "{}", ip);
                    prop_assert!(!ip.to_string().starts_with("10.244."), "{}", ip);
                }
                if f.kind == FrontendKind::ClusterIp {
                    let ip = match f.ip { Some(IpAddr::V4(ip)) => ip, other => panic!("{other:?}") };
                    prop_assert!(opts().service_cidr.is_some_and(|c| c.contains(&ip)));
                    prop_assert!(ip != Ipv4Addr::new(198, 51, 100, 11));
                }
                if f.kind == FrontendKind::NodePort {
                    prop_assert!((30000..=32767).contains(&f.port));
                }
            }
        }
        for r in &st.rejected {
            prop_assert!(!r.object.is_empty() && !r.field.is_empty());
            prop_assert!(!r.reason.contains('\n') && !r.object.contains('\n'));
        }
        // The same objects in another order (another file layout, another node): the same result.
        let mut rev = docs;
        rev.reverse();
        let again = translate_with(&objects(rev), opts(), &prior);
        prop_assert_eq!(&again.services, &st.services);
    }

    #[test]
    fn arbitrary_manifest_text_never_panics(text in "\\PC{0,300}") {
        if let Ok(docs) = super::manifests::parse_documents(std::path::Path::new("f.yaml"), &text) {
            let _ = translate_with(&objects(docs), opts(), &[]);
        }
    }
}
