use sluice_core::Feature;
use sluice_core::testing::{ServiceBuilder, backend};

use super::*;

fn ctx() -> NodeCtx {
    NodeCtx {
        node_name: "node-1".into(),
        node_ips: vec!["198.51.100.11".parse().expect("ip")],
        owned: Feature::SERVICES.into_iter().collect(),
        maglev_m: None,
        allowed_verdicts: false,
        trace_to_stack: false,
    }
}

fn svc(name: &str, ip: &str) -> Service {
    ServiceBuilder::new("default", name).cluster_ip(ip, 80).backend(backend("10.244.1.2", 8080, "node-1")).build()
}

fn names(a: &Admission<'_>) -> Vec<String> {
    a.services.iter().map(|s| s.name.name.clone()).collect()
}

#[test]
fn everything_fits_borrowed_nothing_refused() {
    let all = [svc("a", "10.96.0.1"), svc("b", "10.96.0.2")];
    let a = admit(&all, &[], &ctx(), &MapSizes::default(), &BTreeSet::new());
    assert!(matches!(a.services, Cow::Borrowed(_)));
    assert!(a.refused.is_empty());
}

#[test]
fn a_full_map_programs_what_fits_and_names_the_rest() {
    let all = [svc("a", "10.96.0.1"), svc("b", "10.96.0.2"), svc("c", "10.96.0.3")];
    let sizes = MapSizes { services: 2, ..MapSizes::default() };
    let a = admit(&all, &[], &ctx(), &sizes, &BTreeSet::new());
    assert_eq!(names(&a), ["a", "b"], "name order on a fresh agent");
    assert_eq!(a.refused.len(), 1);
    assert_eq!(
        a.refused[0].to_string(),
        "Service default/c: eBPF: map services is full (2 entries; raise bpf_map_sizes.services)"
    );
    // A Service the maps already hold keeps its place against a newcomer that sorts first.
    let written: BTreeSet<ServiceName> = [&all[1], &all[2]].iter().map(|s| s.name.clone()).collect();
    let a = admit(&all, &[], &ctx(), &sizes, &written);
    assert_eq!(names(&a), ["b", "c"]);
    assert!(a.refused[0].to_string().starts_with("Service default/a: "));
    // Backends count too.
    let sizes = MapSizes { backends: 1, ..MapSizes::default() };
    let a = admit(&all, &[], &ctx(), &sizes, &BTreeSet::new());
    assert_eq!(names(&a), ["a"]);
    assert!(
        a.refused
            .iter()
            .all(|r| r.to_string().contains("map backends is full (1 entries; raise bpf_map_sizes.backends)"))
    );
}

#[test]
fn sctp_frontends_are_refused_by_name_and_the_other_ports_served() {
    let mixed = ServiceBuilder::new("default", "m")
        .cluster_ip("10.96.0.9", 80)
        .protocol(Protocol::Sctp)
        .cluster_ip("10.96.0.9", 9999)
        .build();
    let all = [mixed];
    let a = admit(&all, &[], &ctx(), &MapSizes::default(), &BTreeSet::new());
    assert_eq!(a.services.len(), 1);
    assert_eq!(a.services[0].frontends.len(), 1, "the TCP port is served");
    assert_eq!(a.services[0].frontends[0].protocol, Protocol::Tcp);
    assert!(
        a.refused[0].to_string().contains("Service default/m: eBPF does not translate SCTP frontends"),
        "{}",
        a.refused[0]
    );
}

#[test]
fn the_bound_is_never_below_the_exact_footprint() {
    let s = ServiceBuilder::new("default", "np")
        .cluster_ip("10.96.0.1", 80)
        .node_port(30080)
        .external_ip("203.0.113.1", 80)
        .backend(backend("10.244.1.2", 8080, "node-1"))
        .backend(backend("10.244.2.2", 8080, "node-2"))
        .source_range("198.51.100.0/24")
        .build();
    let mut c = ctx();
    c.node_ips.push("198.51.100.99".parse().expect("ip"));
    for maglev in [None, Some(251)] {
        c.maglev_m = maglev;
        let (exact, bound) = (crate::maps::footprint(&s, &c), crate::maps::footprint_bound(&s, &c));
        assert!(exact.services <= bound.services && exact.backends <= bound.backends, "{exact:?} {bound:?}");
        assert!(exact.source_ranges <= bound.source_ranges && exact.maglev <= bound.maglev, "{exact:?} {bound:?}");
        assert!(exact.services > 0);
    }
}
