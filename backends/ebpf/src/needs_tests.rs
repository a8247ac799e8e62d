//! The plan's promise "never a verifier failure at runtime" rests on `SPEC.needs` naming a
//! probed capability for every helper the programs call. These tests read the C sources, so a
//! helper added to a program without a probe (and a need) fails here, not on someone's kernel.

use std::collections::BTreeSet;

use sluice_core::{Capability, Feature};

const POD: &str = include_str!("../bpf/progs/pod.h");
const NET: &str = include_str!("../bpf/progs/net.h");
const SOCK: &str = include_str!("../bpf/progs/sock.h");
/// The sk_lookup program's helpers are probed too, though a kernel without the hook loses only
/// L7 redirects (the backend reports it at runtime), not a feature.
const LOOKUP: &str = include_str!("../bpf/progs/lookup.h");
const LIBS: [&str; 7] = [
    include_str!("../bpf/lib/l7.h"),
    include_str!("../bpf/lib/layout.h"),
    include_str!("../bpf/lib/policy.h"),
    include_str!("../bpf/lib/maps.h"),
    include_str!("../bpf/lib/nat.h"),
    include_str!("../bpf/lib/lb.h"),
    include_str!("../bpf/lib/packet.h"),
];

/// Helpers every kernel with sched_cls and cgroup/sock_addr programs has (4.x); byte-order
/// macros are not helpers at all.
const BASELINE: [&str; 13] = [
    "bpf_map_lookup_elem",
    "bpf_map_update_elem",
    "bpf_map_delete_elem",
    "bpf_get_prandom_u32",
    "bpf_ktime_get_ns",
    "bpf_l3_csum_replace",
    "bpf_l4_csum_replace",
    "bpf_skb_load_bytes",
    "bpf_skb_store_bytes",
    "bpf_redirect",
    "bpf_htonl",
    "bpf_htons",
    "bpf_ntohs",
];

/// The capability whose probe covers a newer helper.
fn probed_by(helper: &str) -> Option<Capability> {
    Some(match helper {
        "bpf_fib_lookup" => Capability::HelperFibLookup,
        "bpf_redirect_neigh" => Capability::HelperRedirectNeigh,
        "bpf_skc_lookup_tcp" | "bpf_sk_lookup_udp" | "bpf_sk_release" | "bpf_sk_assign" => Capability::HelperSkLookup,
        "bpf_get_socket_cookie" => Capability::HelperSocketCookie,
        "bpf_get_netns_cookie" => Capability::HelperGetNetnsCookie,
        // The ring buffer helpers came with the map type (5.8): its probe covers them.
        "bpf_ringbuf_reserve" | "bpf_ringbuf_submit" => Capability::MapRingbuf,
        _ => return None,
    })
}

/// Every `bpf_*(` call in the sources (declarations of structs such as `struct bpf_fib_lookup p`
/// are not followed by a parenthesis).
fn helpers(sources: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for src in sources {
        let mut rest = *src;
        while let Some(i) = rest.find("bpf_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            let preceded_by_ident =
                rest[..i].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !preceded_by_ident && tail[end..].starts_with('(') {
                out.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    out
}

fn needs(f: Feature) -> BTreeSet<Capability> {
    (crate::SPEC.needs)(f).map(|n| n.iter().copied().collect()).unwrap_or_default()
}

#[test]
fn every_helper_the_programs_call_is_probed() {
    let mut all = vec![POD, NET, SOCK, LOOKUP];
    all.extend(LIBS);
    let unknown: Vec<String> =
        helpers(&all).into_iter().filter(|h| !BASELINE.contains(&h.as_str()) && probed_by(h).is_none()).collect();
    assert!(unknown.is_empty(), "helpers with no probe: {unknown:?} (add a Capability and its probe)");
}

#[test]
fn every_feature_on_ebpf_needs_what_loading_the_object_needs() {
    // Loading the object loads every tc program (and creates every map): their helpers are
    // needed by every feature, socket LB included.
    let mut tc = vec![POD, NET];
    tc.extend(LIBS);
    let object: BTreeSet<Capability> = helpers(&tc).iter().filter_map(|h| probed_by(h)).collect();
    assert!(object.contains(&Capability::HelperFibLookup), "the scan found the tc helpers: {object:?}");
    let maps = [Capability::MapHash, Capability::MapLruHash, Capability::MapLpmTrie, Capability::MapRingbuf];
    for f in Feature::ALL.into_iter().filter(|f| (crate::SPEC.needs)(*f).is_some()) {
        let n = needs(f);
        for c in object.iter().chain(&maps) {
            assert!(n.contains(c), "{} does not need {} (used by the object it loads)", f.name(), c.name());
        }
    }
    for c in helpers(&[SOCK]).iter().filter_map(|h| probed_by(h)) {
        assert!(needs(Feature::SocketLbTcp).contains(&c) && needs(Feature::SocketLbUdp).contains(&c), "{}", c.name());
    }
}

#[test]
fn the_tc_features_need_an_attach_path_not_tcx() {
    for f in [Feature::ClusterIp, Feature::NodePort, Feature::Policy, Feature::SourceRanges] {
        let n = needs(f);
        assert!(n.contains(&Capability::TcAttach) && !n.contains(&Capability::Tcx), "{}", f.name());
    }
}

#[test]
fn a_failed_attach_leaves_a_hole_of_the_owned_features_that_interface_carries() {
    use crate::dataplane::hole;
    let owned: BTreeSet<Feature> =
        [Feature::ClusterIp, Feature::NodePort, Feature::SourceRanges, Feature::SocketLbTcp].into();
    let pod = hole("veth1", false, &owned).expect("pod hole");
    assert_eq!(pod.interface, "veth1");
    assert_eq!(pod.features, BTreeSet::from([Feature::ClusterIp]));
    let dev = hole("eth0", true, &owned).expect("device hole");
    assert_eq!(dev.features, BTreeSet::from([Feature::NodePort, Feature::SourceRanges]));
    // Nothing owned that the interface carries: no hole to cover.
    assert!(hole("eth0", true, &BTreeSet::from([Feature::ClusterIp])).is_none());
}

/// Kernels before 5.2 verify at most 4096 instructions per program; no program may need the
/// larger limit (else "large instruction limit" would join the needs, with a probe).
#[test]
fn every_program_fits_the_old_instruction_limit() {
    let mut names = Vec::new();
    for (object, bytes) in crate::OBJECTS {
        let obj = aya_obj::Object::parse(bytes).unwrap_or_else(|e| panic!("parse {object}: {e}"));
        for f in obj.functions.values() {
            assert!(f.instructions.len() < 4096, "{object}: {} has {} instructions", f.name, f.instructions.len());
            names.push((object, f.name.clone()));
        }
    }
    // One object per hook family, each program in exactly one of them.
    for (object, prog) in [("pod", "sluice_from_pod"), ("pod", "sluice_to_pod"), ("net", "sluice_from_net")]
        .into_iter()
        .chain(crate::loader::SOCK_PROGRAMS.iter().map(|p| ("sock", *p)))
        .chain([("lookup", crate::loader::LOOKUP_PROGRAM)])
    {
        let homes: Vec<&str> = names.iter().filter(|(_, n)| n == prog).map(|(o, _)| *o).collect();
        assert_eq!(homes, [object], "{prog}: {names:?}");
    }
}
