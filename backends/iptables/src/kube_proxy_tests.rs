use super::*;
use crate::save::parse_save;

/// kube-proxy's layout (iptables mode, as `iptables-save` prints it): a ClusterIP over two
/// endpoints with ClientIP affinity, a NodePort with externalTrafficPolicy Local, an external IP,
/// a LoadBalancer with source ranges, a Service without endpoints, and one foreign rule.
const DUMP: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-SEP-A1 - [0:0]
:KUBE-SEP-A2 - [0:0]
:KUBE-EXT-AAAA - [0:0]
:KUBE-SVC-BBBB - [0:0]
:KUBE-SVL-BBBB - [0:0]
:KUBE-EXT-BBBB - [0:0]
:KUBE-SEP-B1 - [0:0]
:KUBE-SEP-B2 - [0:0]
:KUBE-FW-CCCC - [0:0]
:KUBE-EXT-CCCC - [0:0]
:KUBE-SVC-CCCC - [0:0]
:KUBE-SEP-C1 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-AAAA
-A KUBE-SERVICES -d 203.0.113.10/32 -p tcp -m comment --comment "default/web:http external IP" -m tcp --dport 80 -j KUBE-EXT-AAAA
-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m comment --comment "default/local:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-BBBB
-A KUBE-SERVICES -d 10.96.0.12/32 -p udp -m comment --comment "default/lb:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-CCCC
-A KUBE-SERVICES -d 192.0.2.50/32 -p udp -m comment --comment "default/lb:dns loadbalancer IP" -m udp --dport 53 -j KUBE-FW-CCCC
-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m comment --comment "someone else's" -m tcp --dport 99 -j ACCEPT
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/local:http" -m tcp --dport 30080 -j KUBE-EXT-BBBB
-A KUBE-SVC-AAAA ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-AAAA -m comment --comment "default/web:http -> 10.244.1.2:8080" -m recent --name KUBE-SEP-A1 --mask 255.255.255.255 --rsource --rcheck --seconds 10800 --reap -j KUBE-SEP-A1
-A KUBE-SVC-AAAA -m comment --comment "default/web:http -> 10.244.2.2:8080" -m recent --name KUBE-SEP-A2 --mask 255.255.255.255 --rsource --rcheck --seconds 10800 --reap -j KUBE-SEP-A2
-A KUBE-SVC-AAAA -m comment --comment "default/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A1
-A KUBE-SVC-AAAA -m comment --comment "default/web:http -> 10.244.2.2:8080" -j KUBE-SEP-A2
-A KUBE-EXT-AAAA -m comment --comment "masquerade traffic for default/web:http external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-AAAA -j KUBE-SVC-AAAA
-A KUBE-SEP-A1 -s 10.244.1.2/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-A1 -p tcp -m comment --comment "default/web:http" -m recent --set --name KUBE-SEP-A1 --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SEP-A2 -s 10.244.2.2/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-A2 -p tcp -m comment --comment "default/web:http" -m recent --set --name KUBE-SEP-A2 --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.2.2:8080
-A KUBE-EXT-BBBB -s 10.244.0.0/16 -m comment --comment "pod traffic for default/local:http external destinations" -j KUBE-SVC-BBBB
-A KUBE-EXT-BBBB -m comment --comment "masquerade LOCAL traffic for default/local:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-BBBB -m comment --comment "route LOCAL traffic for default/local:http external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-BBBB
-A KUBE-EXT-BBBB -j KUBE-SVL-BBBB
-A KUBE-SVC-BBBB ! -s 10.244.0.0/16 -d 10.96.0.11/32 -p tcp -m comment --comment "default/local:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-BBBB -m comment --comment "default/local:http -> 10.244.1.3:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-B1
-A KUBE-SVC-BBBB -m comment --comment "default/local:http -> 10.244.2.3:8080" -j KUBE-SEP-B2
-A KUBE-SVL-BBBB -m comment --comment "default/local:http -> 10.244.1.3:8080" -j KUBE-SEP-B1
-A KUBE-SEP-B1 -s 10.244.1.3/32 -m comment --comment "default/local:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-B1 -p tcp -m comment --comment "default/local:http" -m tcp -j DNAT --to-destination 10.244.1.3:8080
-A KUBE-SEP-B2 -s 10.244.2.3/32 -m comment --comment "default/local:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-B2 -p tcp -m comment --comment "default/local:http" -m tcp -j DNAT --to-destination 10.244.2.3:8080
-A KUBE-FW-CCCC -s 198.51.100.0/24 -m comment --comment "default/lb:dns loadbalancer IP" -j KUBE-EXT-CCCC
-A KUBE-FW-CCCC -m comment --comment "default/lb:dns loadbalancer IP" -j KUBE-MARK-DROP
-A KUBE-EXT-CCCC -m comment --comment "masquerade traffic for default/lb:dns external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-CCCC -j KUBE-SVC-CCCC
-A KUBE-SVC-CCCC -m comment --comment "default/lb:dns -> 10.244.1.4:53" -j KUBE-SEP-C1
-A KUBE-SEP-C1 -s 10.244.1.4/32 -m comment --comment "default/lb:dns" -j KUBE-MARK-MASQ
-A KUBE-SEP-C1 -p udp -m comment --comment "default/lb:dns" -m udp -j DNAT --to-destination 10.244.1.4:53
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.96.0.13/32 -p tcp -m comment --comment "default/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "default/empty:http has no endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30013 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"#;

fn state() -> KubeProxyState {
    let dumps = parse_save(DUMP);
    parse(&dumps[0], Some(&dumps[1]), "iptables-nft")
}

fn find(s: &KubeProxyState, kind: FrontendKind, port: u16) -> &ProxiedFrontend {
    s.frontends.iter().find(|f| f.kind == kind && f.port == port).unwrap_or_else(|| panic!("{:?}", s.frontends))
}

fn eps(list: &[&str]) -> BTreeSet<(IpAddr, u16)> {
    list.iter()
        .map(|e| {
            let sa: std::net::SocketAddr = e.parse().expect("addr");
            (sa.ip(), sa.port())
        })
        .collect()
}

#[test]
fn every_frontend_is_read_with_its_endpoints_affinity_and_policy() {
    let s = state();
    let web = find(&s, FrontendKind::ClusterIp, 80);
    assert_eq!(web.service_port, "default/web:http");
    assert_eq!(web.ip, Some("10.96.0.10".parse().expect("ip")));
    assert_eq!(web.endpoints, eps(&["10.244.1.2:8080", "10.244.2.2:8080"]));
    assert_eq!(web.affinity_s, Some(10800));
    let np = find(&s, FrontendKind::NodePort, 30080);
    assert_eq!((np.service_port.as_str(), np.ip), ("default/local:http", None));
    assert!(np.external_local, "KUBE-EXT jumps to KUBE-SVL: externalTrafficPolicy Local");
    assert_eq!(np.endpoints, eps(&["10.244.1.3:8080", "10.244.2.3:8080"]), "the cluster-wide set");
    let ext = find(&s, FrontendKind::ExternalIp, 80);
    assert_eq!(ext.ip, Some("203.0.113.10".parse().expect("ip")));
    assert_eq!(
        (ext.endpoints.clone(), ext.affinity_s, ext.external_local),
        (web.endpoints.clone(), Some(10800), false)
    );
    let lb = find(&s, FrontendKind::LoadBalancer, 53);
    assert_eq!((lb.protocol, lb.external_local), (Protocol::Udp, false));
    assert_eq!(lb.endpoints, eps(&["10.244.1.4:53"]), "through KUBE-FW and KUBE-EXT");
    assert_eq!(lb.affinity_s, None);
}

#[test]
fn services_without_endpoints_are_frontends_with_none() {
    let s = state();
    let empty: Vec<&ProxiedFrontend> = s.frontends.iter().filter(|f| f.service_port == "default/empty:http").collect();
    assert_eq!(empty.len(), 2, "{empty:?}");
    assert!(empty.iter().all(|f| f.endpoints.is_empty()));
    assert!(empty.iter().any(|f| f.kind == FrontendKind::NodePort && f.port == 30013 && f.ip.is_none()));
    assert!(empty.iter().any(|f| f.kind == FrontendKind::ClusterIp && f.port == 80));
}

#[test]
fn a_rule_of_an_unknown_shape_is_reported_never_guessed() {
    let s = state();
    assert_eq!(s.unknown.len(), 1, "{:?}", s.unknown);
    assert_eq!(s.unknown[0].chain, "KUBE-SERVICES");
    assert!(s.unknown[0].rule.contains("--dport 99"), "{:?}", s.unknown[0]);
    assert_eq!(s.frontends.len(), 8, "{:?}", s.frontends);
}

#[test]
fn a_dnat_without_a_destination_is_unknown() {
    let text = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n:KUBE-SEP-X - [0:0]\n-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment \"default/x:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-X\n-A KUBE-SVC-X -j KUBE-SEP-X\n-A KUBE-SEP-X -p tcp -m tcp -j DNAT --to-destination 10.244.1.9\nCOMMIT\n";
    let dumps = parse_save(text);
    let s = parse(&dumps[0], None, "iptables-legacy");
    assert_eq!(s.frontends.len(), 1);
    assert!(s.frontends[0].endpoints.is_empty());
    assert!(s.unknown.iter().any(|u| u.chain == "KUBE-SEP-X" && u.why.contains("DNAT")), "{:?}", s.unknown);
}

#[test]
fn comments_with_spaces_stay_one_word() {
    let w = words("-m comment --comment \"default/web:http cluster IP\" -j X");
    assert_eq!(w, ["-m", "comment", "--comment", "default/web:http cluster IP", "-j", "X"]);
}

/// Fuzz tier: rules assembled from kube-proxy's own words in any order and count, plus arbitrary
/// text, give frontends and unknown rules, never a panic; every frontend read comes from a
/// KUBE-SERVICES or KUBE-NODEPORTS rule.
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("-j".to_string()),
            Just("-d".to_string()),
            Just("-p".to_string()),
            Just("--dport".to_string()),
            Just("--to-destination".to_string()),
            Just("--comment".to_string()),
            Just("\"default/web:http cluster IP\"".to_string()),
            Just("--rcheck".to_string()),
            Just("--seconds".to_string()),
            Just("!".to_string()),
            Just("\"".to_string()),
            "KUBE-(SVC|SVL|EXT|FW|SEP)-[AB]",
            Just("KUBE-NODEPORTS".to_string()),
            Just("KUBE-MARK-MASQ".to_string()),
            Just("DNAT".to_string()),
            Just("tcp".to_string()),
            "10\\.96\\.0\\.[0-9]{1,3}(/32)?(:[0-9]{1,6})?",
            "[0-9]{1,6}",
            "[ -~]{0,12}",
        ]
    }

    fn rule() -> impl Strategy<Value = String> {
        let chain = prop_oneof![
            Just("KUBE-SERVICES"),
            Just("KUBE-NODEPORTS"),
            Just("KUBE-SVC-A"),
            Just("KUBE-SVL-A"),
            Just("KUBE-EXT-A"),
            Just("KUBE-FW-A"),
            Just("KUBE-SEP-A"),
            Just("KUBE-SEP-B"),
        ];
        (chain, proptest::collection::vec(word(), 0..12)).prop_map(|(c, w)| format!("{c} {}", w.join(" ")))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_rules_parse_without_panicking(rules in proptest::collection::vec(rule(), 0..24)) {
            let nat = TableDump { name: "nat".into(), chains: vec![], rules: rules.clone() };
            let filter = TableDump { name: "filter".into(), chains: vec![], rules: rules.clone() };
            let s = parse(&nat, Some(&filter), "fuzz");
            let heads = rules.iter().filter(|r| r.starts_with("KUBE-SERVICES ") || r.starts_with("KUBE-NODEPORTS ")).count();
            // nat and filter each contribute at most one frontend per such rule.
            prop_assert!(s.frontends.len() <= 2 * heads, "{} frontends from {} rules", s.frontends.len(), heads);
        }
    }
}
