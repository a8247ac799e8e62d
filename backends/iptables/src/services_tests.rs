use super::*;
use sluice_core::Frontend;
use sluice_core::testing::{ServiceBuilder, backend};

fn be(ip: &str, node: &str) -> Backend {
    backend(ip, 8080, node)
}

fn fe(kind: FrontendKind, ip: Option<&str>, port: u16) -> Frontend {
    Frontend {
        kind,
        ip: ip.map(|i| i.parse().expect("ip")),
        port,
        protocol: Protocol::Tcp,
        port_name: "http".into(),
        target_port: 8080,
    }
}

fn web() -> Service {
    ServiceBuilder::new("default", "web")
        .cluster_ip("10.96.0.26", 80)
        .node_port(30080)
        .external_ip("203.0.113.10", 80)
        .backend(be("10.244.1.2", "node-1"))
        .backend(be("10.244.2.2", "node-2"))
        .backend(be("10.244.2.3", "node-2"))
        .build()
}

fn all_owned() -> BTreeSet<Feature> {
    crate::SPEC.implemented()
}

fn render_one(services: &[Service], owned: &BTreeSet<Feature>) -> Ruleset {
    render(&NodeInput {
        node_name: "node-1",
        cluster_cidr: "10.244.0.0/16".parse().expect("net"),
        services,
        host_ports: &[],
        owned,
        log_group: None,
    })
}

fn nat<'a>(r: &'a Ruleset, chain: &str) -> &'a Vec<String> {
    r.chains["nat"]
        .get(chain)
        .unwrap_or_else(|| panic!("no chain {chain}: {:?}", r.chains["nat"].keys().collect::<Vec<_>>()))
}

#[test]
fn cluster_ip_dispatch_tree_and_probabilities() {
    let r = render_one(&[web()], &all_owned());
    // 10.96.0.26: low byte 0x1a -> level 1 on 0xa, leaf 0xa1.
    assert_eq!(
        nat(&r, SERVICES)[0],
        "-d 10.244.0.0/16 -m comment --comment \"sluice: pod addresses are not Services\" -j RETURN",
        "pod-to-pod traffic leaves first"
    );
    assert_eq!(nat(&r, SERVICES)[1], "-d 0.0.0.10/0.0.0.15 -j SLUICE-D-A");
    // (the ExternalIP 203.0.113.10 shares level 1 but has its own leaf)
    assert!(nat(&r, "SLUICE-D-A").contains(&"-d 0.0.0.26/0.0.0.255 -j SLUICE-D-A1".to_string()));
    let c = port_chains(&web(), "http", Protocol::Tcp);
    assert!(nat(&r, "SLUICE-D-A1")[0].starts_with(&format!("-d 10.96.0.26/32 -p tcp -m tcp --dport 80 -j {}", c.svc)));
    let svc = nat(&r, &c.svc);
    assert!(svc[0].starts_with("! -s 10.244.0.0/16") && svc[0].ends_with("-j SLUICE-MARK-MASQ"));
    assert!(
        svc[1].contains("--probability 0.33333333333 -p tcp -j DNAT --to-destination 10.244.1.2:8080"),
        "{}",
        svc[1]
    );
    assert!(
        svc[2].contains("--probability 0.50000000000 -p tcp -j DNAT --to-destination 10.244.2.2:8080"),
        "{}",
        svc[2]
    );
    assert!(!svc[3].contains("statistic") && svc[3].ends_with("--to-destination 10.244.2.3:8080"));
    // Hairpin only for the local endpoint.
    let post = nat(&r, POSTROUTING);
    assert_eq!(post.iter().filter(|l| l.contains("hairpin")).count(), 1);
    assert!(post.iter().any(|l| l.starts_with("-s 10.244.1.2/32 -d 10.244.1.2/32")));
    assert!(r.hooks.iter().any(|h| h.builtin == "PREROUTING" && h.target == SERVICES));
    assert!(r.hooks.iter().any(|h| h.builtin == "OUTPUT" && h.target == SERVICES));
}

#[test]
fn node_port_and_external_ip_go_through_ext_with_masquerade() {
    let r = render_one(&[web()], &all_owned());
    let c = port_chains(&web(), "http", Protocol::Tcp);
    assert!(
        nat(&r, NODEPORTS)[0].starts_with("-p tcp -m tcp --dport 30080") && nat(&r, NODEPORTS)[0].ends_with(&c.ext)
    );
    assert_eq!(nat(&r, &c.ext), &vec![format!("-j {MARK_MASQ}"), format!("-j {}", c.svc)]);
    assert!(nat(&r, SERVICES).iter().any(|l| l == "-m addrtype --dst-type LOCAL -j SLUICE-NODEPORTS"));
}

#[test]
fn external_local_keeps_source_and_uses_local_endpoints() {
    let mut s = web();
    s.external_local = true;
    let r = render_one(&[s.clone()], &all_owned());
    let c = port_chains(&s, "http", Protocol::Tcp);
    assert_eq!(nat(&r, &c.ext), &vec![format!("-s 10.244.0.0/16 -j {}", c.svc), format!("-j {}", c.svl)]);
    let svl = nat(&r, &c.svl);
    assert_eq!(svl.len(), 1);
    assert!(svl[0].ends_with("--to-destination 10.244.1.2:8080"));
}

#[test]
fn affinity_uses_recent_per_endpoint() {
    let mut s = web();
    s.affinity_timeout_s = Some(600);
    let r = render_one(&[s.clone()], &all_owned());
    let c = port_chains(&s, "http", Protocol::Tcp);
    let svc = nat(&r, &c.svc);
    assert!(svc[1].starts_with("-m recent --rcheck --seconds 600 --reap --name SLUICE-SEP-"));
    let sep = svc[1].rsplit("-j ").next().expect("sep");
    assert!(nat(&r, sep)[0].contains("-m recent --set --name") && nat(&r, sep)[0].contains("DNAT"));
}

#[test]
fn source_ranges_filter_load_balancer() {
    let mut s = web();
    s.frontends.push(fe(FrontendKind::LoadBalancer, Some("198.51.100.240"), 80));
    s.source_ranges = vec!["198.51.100.0/28".parse().expect("net")];
    let r = render_one(&[s.clone()], &all_owned());
    let c = port_chains(&s, "http", Protocol::Tcp);
    assert_eq!(nat(&r, &c.fw)[0], format!("-s 198.51.100.0/28 -j {}", c.ext));
    assert!(nat(&r, &c.fw)[1].ends_with("-j SLUICE-MARK-DROP"));
    assert!(
        r.chains["filter"][FILTER][0].contains("--mark 0x20000/0x20000")
            && r.chains["filter"][FILTER][0].ends_with("-j DROP")
    );
}

#[test]
fn no_endpoints_rejects_and_unowned_features_are_left_alone() {
    let mut s = web();
    s.backends.clear();
    let r = render_one(&[s.clone()], &all_owned());
    let rej = &r.chains["filter"][REJECT];
    assert!(rej.iter().any(|l| l.starts_with("-d 10.96.0.26/32 -p tcp -m tcp --dport 80") && l.ends_with("-j REJECT")));
    assert!(rej.iter().any(|l| l.contains("--dport 30080") && l.contains("--dst-type LOCAL")));

    // Plan gives only node-port to iptables: no ClusterIP dispatch, no OUTPUT hook.
    let owned: BTreeSet<Feature> = [Feature::NodePort].into();
    let r = render_one(&[web()], &owned);
    assert!(!r.chains["nat"].keys().any(|k| k.starts_with("SLUICE-D-")), "ClusterIP left to its owner");
    assert!(r.chains["nat"].contains_key(NODEPORTS));
    assert!(!r.hooks.iter().any(|h| h.builtin == "OUTPUT" && h.table == "nat"));
    // Nothing owned: only the (idle) service-SNAT chain is hooked; pod masquerade is the node
    // manager's chain.
    let r = render_one(&[web()], &BTreeSet::new());
    assert_eq!(r.hooks.iter().map(|h| h.target.as_str()).collect::<Vec<_>>(), [POSTROUTING], "{:?}", r.hooks);
}

#[test]
fn filter_chains_only_when_something_is_dropped_or_rejected() {
    // Every packet crosses the filter hooks: none without source ranges or endpoint-less Services.
    let r = render_one(&[web()], &all_owned());
    assert!(!r.chains.contains_key("filter"), "{:?}", r.chains.get("filter"));
    assert!(!r.hooks.iter().any(|h| h.table == "filter"));
    let mut s = web();
    s.backends.clear();
    let r = render_one(&[s], &all_owned());
    assert_eq!(*r.chains["filter"][FILTER], vec![format!("-m conntrack --ctstate NEW -j {REJECT}")]);
    assert_eq!(r.hooks.iter().filter(|h| h.table == "filter" && h.target == FILTER).count(), 3);
}

#[test]
fn ten_thousand_services_spread_over_leaves() {
    let services: Vec<Service> = (0..10_000u32)
        .map(|i| {
            let mut s = web();
            s.name.name = format!("svc-{i}");
            let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 10)) + i);
            s.frontends = vec![Frontend { ip: Some(ip.into()), ..fe(FrontendKind::ClusterIp, None, 80) }];
            s
        })
        .collect();
    let r = render_one(&services, &all_owned());
    let leaves: Vec<_> = r.chains["nat"].iter().filter(|(k, _)| k.starts_with("SLUICE-D-") && k.len() == 11).collect();
    assert_eq!(leaves.len(), 256);
    let max = leaves.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    assert!(max <= 40, "leaf of {max} rules: dispatch must stay short");
    assert!(nat(&r, SERVICES).len() <= 1 + 16 + 2);
}

#[test]
fn hostile_names_cannot_break_a_restore_line() {
    // Validation refuses such names upstream; the renderer must still never emit a line break,
    // quote or backslash from an object's name into a rule.
    let evil =
        ServiceBuilder::new("default", "x\"\n-A SLUICE-SERVICES -j ACCEPT\\").cluster_ip("10.96.0.27", 80).build();
    let r = render_one(&[evil, web()], &all_owned());
    for (table, chains) in &r.chains {
        for (chain, rules) in chains {
            for rule in rules.iter() {
                assert!(!rule.contains('\n') && !rule.contains('\\'), "{table}/{chain}: {rule:?}");
                assert_eq!(rule.matches('"').count() % 2, 0, "{table}/{chain}: unbalanced quote in {rule:?}");
            }
        }
    }
}

#[test]
fn while_flows_run_service_drops_are_logged_before_they_happen() {
    let mut empty = web();
    empty.backends.clear();
    let mut ranged = web();
    ranged.name.name = "ranged".into();
    ranged.frontends = vec![fe(FrontendKind::LoadBalancer, Some("198.51.100.240"), 80)];
    ranged.source_ranges = vec!["198.51.100.0/28".parse().expect("net")];
    let owned = all_owned();
    let services = [empty, ranged];
    let r = render(&NodeInput {
        node_name: "node-1",
        cluster_cidr: "10.244.0.0/16".parse().expect("net"),
        services: &services,
        host_ports: &[],
        owned: &owned,
        log_group: Some(4242),
    });
    let rej = &r.chains["filter"][REJECT];
    for (i, rule) in rej.iter().enumerate().filter(|(_, l)| l.ends_with("-j REJECT")) {
        let nflog = &rej[i - 1];
        let (m, _) = rule.split_once(" -j ").expect("target");
        assert!(
            nflog.starts_with(m) && nflog.contains("-j NFLOG --nflog-group 4242 --nflog-prefix \"sluice-svc:noep\""),
            "{rej:#?}"
        );
    }
    assert_eq!(rej.len(), 6, "ClusterIP, NodePort and ExternalIP rejects, each logged: {rej:#?}");
    let filter = &r.chains["filter"][FILTER];
    assert!(filter[0].contains("--mark 0x20000/0x20000") && filter[0].contains("sluice-svc:range"), "{filter:#?}");
    assert!(filter[1].ends_with("-j DROP"));
}
