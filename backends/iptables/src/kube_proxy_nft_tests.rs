use super::*;

const FIXTURE: &str = include_str!("../tests/fixtures/kube-proxy.json");

fn ep(s: &str) -> (IpAddr, u16) {
    let (ip, p) = s.split_once(':').expect("ip:port");
    (ip.parse().expect("ip"), p.parse().expect("port"))
}

#[test]
fn frontends_come_from_the_maps_and_lead_to_the_endpoint_dnats() {
    let s = parse(FIXTURE).expect("nft JSON");
    assert_eq!(s.source, "nftables");
    assert!(s.unknown.is_empty(), "{:#?}", s.unknown);
    assert_eq!(s.frontends.len(), 3, "{:#?}", s.frontends);
    let web = s.frontends.iter().find(|f| f.ip == Some("10.96.0.10".parse().expect("ip"))).expect("web");
    assert_eq!(web.service_port, "default/web:http");
    assert_eq!(web.kind, FrontendKind::ClusterIp);
    assert_eq!(web.endpoints, BTreeSet::from([ep("10.244.1.2:8080"), ep("10.244.2.2:8080")]));
    assert_eq!(web.affinity_s, None);
    let np = s.frontends.iter().find(|f| f.kind == FrontendKind::NodePort).expect("nodeport");
    assert_eq!((np.port, np.ip), (30080, None));
    assert_eq!(np.endpoints, web.endpoints, "through external- to the service chain");
    let sticky = s.frontends.iter().find(|f| f.service_port == "default/sticky:http").expect("sticky");
    assert_eq!(sticky.affinity_s, Some(10800));
    assert_eq!(sticky.endpoints, BTreeSet::from([ep("10.244.1.2:8080")]));
}

#[test]
fn a_rule_of_unknown_shape_is_reported_never_followed() {
    let odd = FIXTURE.replacen(
        "{\"jump\": {\"target\": \"mark-for-masquerade\"}}]}}",
        "{\"jump\": {\"target\": \"someone-elses-chain\"}}]}}",
        1,
    );
    assert_ne!(odd, FIXTURE, "the fixture has the rule to change");
    let s = parse(&odd).expect("nft JSON");
    assert_eq!(s.unknown.len(), 1, "{:#?}", s.unknown);
    assert!(s.unknown[0].rule.contains("someone-elses-chain"));
    assert_eq!(s.unknown[0].table, TABLE);
}

#[test]
fn anything_that_is_not_nft_json_is_none_and_never_panics() {
    for text in ["", "{}", "[]", "{\"nftables\": 3}", "{\"nftables\": [{\"rule\": {\"chain\": 1}}]}", "not json"] {
        let s = parse(text);
        assert!(s.is_none() || s.is_some_and(|s| s.frontends.is_empty()), "{text}");
    }
    // Truncated elements are reported, not guessed.
    let broken = "{\"nftables\": [{\"map\": {\"name\": \"service-ips\", \"elem\": [[{\"concat\": [\"x\", \"tcp\", 80]}, {\"goto\": {\"target\": \"service-A-ns/n/tcp/p\"}}]]}}]}";
    let s = parse(broken).expect("json");
    assert!(s.frontends.is_empty());
    assert_eq!(s.unknown.len(), 1);
}
