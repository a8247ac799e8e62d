use super::*;

#[test]
fn names_follow_the_api_servers_rules() {
    assert!(Syntax::Dns1035Label.check("web-1"));
    assert!(!Syntax::Dns1035Label.check("1web"), "DNS-1035 starts with a letter");
    assert!(Syntax::Dns1123Label.check("1web"));
    assert!(!Syntax::Dns1123Label.check("Web"));
    assert!(!Syntax::Dns1123Label.check("web-"));
    assert!(!Syntax::Dns1123Label.check("we\nb"));
    assert!(!Syntax::Dns1123Label.check(&"a".repeat(64)));
    assert!(Syntax::Dns1123Label.check(&"a".repeat(63)));
    assert!(Syntax::Dns1123Subdomain.check("web.default.svc"));
    assert!(!Syntax::Dns1123Subdomain.check("web..svc"));
    assert!(!Syntax::Dns1123Subdomain.check(&"a.".repeat(127)));
    assert!(Syntax::QualifiedName.check("app.kubernetes.io/name"));
    assert!(Syntax::QualifiedName.check("App_1"));
    assert!(!Syntax::QualifiedName.check("/name"));
    assert!(!Syntax::QualifiedName.check("a/b/c"));
    assert!(Syntax::LabelValue.check(""));
    assert!(!Syntax::LabelValue.check("-x"));
    assert!(Syntax::IanaServiceName.check("http-alt"));
    assert!(!Syntax::IanaServiceName.check("8080"), "needs a letter");
    assert!(!Syntax::IanaServiceName.check("a--b"));
    assert!(!Syntax::IanaServiceName.check("abcdefghijklmnop"), "16 > 15");
}

#[test]
fn special_addresses_are_named() {
    let class = |s: &str| ipv4(s).err();
    assert_eq!(class("127.0.0.1"), Some(Problem::Special { class: AddrClass::Loopback }));
    assert_eq!(class("0.0.0.0"), Some(Problem::Special { class: AddrClass::Unspecified }));
    assert_eq!(class("255.255.255.255"), Some(Problem::Special { class: AddrClass::Broadcast }));
    assert_eq!(class("224.0.0.5"), Some(Problem::Special { class: AddrClass::Multicast }));
    assert_eq!(class("169.254.1.1"), Some(Problem::Special { class: AddrClass::LinkLocal }));
    assert_eq!(class("240.1.1.1"), Some(Problem::Special { class: AddrClass::Reserved }));
    assert_eq!(class("fd00::1"), Some(Problem::Ipv6));
    assert_eq!(class("10.96.0.300"), Some(Problem::NotIpv4));
    assert_eq!(ipv4("10.96.0.10"), Ok(Ipv4Addr::new(10, 96, 0, 10)));
}

#[test]
fn networks_refuse_host_bits_and_name_the_network() {
    assert_eq!(network("10.244.0.0/16").map(|n| n.to_string()), Ok("10.244.0.0/16".into()));
    assert_eq!(network("10.244.1.5/16"), Err(Problem::HostBits { network: "10.244.0.0/16".parse().expect("cidr") }));
    assert_eq!(network("10.244.0.0"), Err(Problem::NotCidr));
}

#[test]
fn a_rejection_names_field_value_and_what_is_accepted() {
    let r = Rejected::new("Service default/web", "spec.ports[0].port", 0, Problem::Range { lo: 1, hi: 65535 });
    assert_eq!(r.to_string(), "Service default/web: spec.ports[0].port \"0\" is outside 1-65535");
    let r =
        Rejected::new("Service default/x", "metadata.name", "a\nb", Problem::Syntax { syntax: Syntax::Dns1035Label });
    assert!(r.reason.starts_with("metadata.name \"a\\\\nb\""), "{}", r.reason);
    assert!(!r.reason.contains('\n'));
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["problem"], "syntax");
    assert_eq!(json["syntax"], "dns1035-label");
    assert_eq!(json["field"], "metadata.name");
}

#[test]
fn escape_bounds_length() {
    let long = "x".repeat(10_000);
    assert_eq!(escape(&long).len(), 259);
}
