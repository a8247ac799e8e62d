//! ClusterIP allocation for the manifest source, where sluice stands in for the API server: a
//! Service without `spec.clusterIP` gets an address from `service_cidr`, computed from its name
//! alone, so every node picks the same one and it does not move as other Services come and go.
//! Only a collision (two names hashing to one address, or an explicit clusterIP on it) probes
//! on; the Service whose name sorts first keeps the address it hashed to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service as K8sService;

/// FNV-1a, 64 bit: stable across builds and platforms (std's hasher is not).
fn fnv(s: &str, salt: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes().chain(salt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Services (in the given order, sorted by name) that need an address, with the one each gets
/// (`None`: `service_cidr` has no free address for it).
pub fn cluster_ips(services: &[&K8sService], cidr: Ipv4Net) -> BTreeMap<String, Option<Ipv4Addr>> {
    let explicit = |s: &K8sService| s.spec.as_ref().and_then(|sp| sp.cluster_ip.clone()).unwrap_or_default();
    let mut taken: BTreeSet<Ipv4Addr> = services.iter().filter_map(|s| explicit(s).parse().ok()).collect();
    let net = u32::from(cidr.network());
    // Usable: not the network address, not the first host (kubernetes.default by convention),
    // not the broadcast address.
    let size = u64::from(u32::from(cidr.broadcast()) - net).saturating_sub(2);
    let mut out = BTreeMap::new();
    for s in services {
        let spec = s.spec.as_ref();
        let wants = explicit(s).is_empty() && spec.and_then(|sp| sp.type_.as_deref()) != Some("ExternalName");
        if !wants {
            continue;
        }
        let name = super::translate::name_of(s);
        let pick = (0..64u32)
            .filter(|_| size > 0)
            .map(|salt| Ipv4Addr::from(net + 2 + (fnv(&name, salt) % size) as u32))
            .find(|ip| !taken.contains(ip));
        if let Some(ip) = pick {
            taken.insert(ip);
        }
        out.insert(name, pick);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: Option<&str>) -> K8sService {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
        }))
        .expect("svc")
    }

    #[test]
    fn stable_as_services_come_and_go_and_never_on_a_taken_address() {
        let cidr: Ipv4Net = "10.96.0.0/12".parse().expect("cidr");
        let (a, b, c) = (svc("a", None), svc("b", None), svc("c", Some("10.96.0.10")));
        let all = cluster_ips(&[&a, &b, &c], cidr);
        let only_b = cluster_ips(&[&b], cidr);
        assert_eq!(all["default/b"], only_b["default/b"], "b keeps its address when a and c go");
        assert!(!all.contains_key("default/c"), "explicit clusterIPs are not allocated");
        for ip in all.values().flatten() {
            assert!(cidr.contains(ip) && *ip != cidr.network() && *ip != cidr.broadcast());
            assert_ne!(ip.to_string(), "10.96.0.1");
            assert_ne!(ip.to_string(), "10.96.0.10");
        }
        // A /30 has one allocatable address: the second Service gets none.
        let tiny: Ipv4Net = "10.96.0.0/30".parse().expect("cidr");
        let got = cluster_ips(&[&a, &b], tiny);
        assert_eq!(got.values().filter(|v| v.is_some()).count(), 1);
    }
}
