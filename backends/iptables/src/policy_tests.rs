use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use sluice_core::Protocol;
use sluice_core::policy::{
    Action, CompiledRule, DirectionPolicy, EndpointPolicy, EndpointRules, Enforcement, Identity, PeerMatch, PolicyKind,
    PolicyName, PolicyView,
};

use super::*;

fn name() -> PolicyName {
    PolicyName { kind: PolicyKind::NetworkPolicy, namespace: Some("x".into()), name: "p".into() }
}

fn rule(action: Action, peer: PeerMatch, proto: Option<Protocol>, ports: Option<(u16, u16)>) -> CompiledRule {
    CompiledRule { action, peer, protocol: proto, ports, policy: name(), audit: false, http: vec![] }
}

fn view(ingress: DirectionPolicy) -> PolicyView {
    PolicyView {
        generation: 1,
        enforcement: Enforcement::Default,
        endpoints: vec![EndpointRules {
            ip: Ipv4Addr::new(10, 244, 1, 5),
            interface: "slcabc".into(),
            pod: "x/b".into(),
            policy: EndpointPolicy { identity: Identity(300), ingress, egress: DirectionPolicy::default() },
        }],
        ipcache: [(Ipv4Addr::new(10, 244, 2, 7), Identity(400)), (Ipv4Addr::new(10, 244, 2, 8), Identity(401))].into(),
        log_drops: None,
        log_allows: false,
        l7_proxy: None,
        l7_frontends: vec![],
    }
}

#[test]
fn nothing_isolated_renders_nothing() {
    let (r, sets) = render(&view(DirectionPolicy::default()));
    assert!(r.chains.is_empty() && r.hooks.is_empty() && sets.is_empty());
}

#[test]
fn isolated_ingress_gets_a_chain_with_denies_first_sets_per_peer_and_a_named_default_deny() {
    let d = DirectionPolicy {
        enforced: true,
        selected_by: vec![name()],
        audited_by: vec![],
        rules: vec![
            rule(Action::Deny, PeerMatch::Ips([Ipv4Addr::new(10, 244, 2, 8)].into()), None, None),
            rule(
                Action::Allow,
                PeerMatch::Identities([Identity(400), Identity(401)].into()),
                Some(Protocol::Tcp),
                Some((80, 81)),
            ),
            rule(
                Action::Allow,
                PeerMatch::Cidr {
                    net: "10.0.0.0/8".parse().expect("net"),
                    except: vec!["10.244.0.0/16".parse().expect("net")],
                },
                Some(Protocol::Udp),
                None,
            ),
            rule(
                Action::Allow,
                PeerMatch::Cidr { net: "192.168.0.0/16".parse().expect("net"), except: vec![] },
                Some(Protocol::Sctp),
                Some((9, 9)),
            ),
            // Nobody has identity 999: no rule, no set.
            rule(Action::Allow, PeerMatch::Identities([Identity(999)].into()), None, None),
        ],
    };
    let (r, sets) = render(&view(d));
    let chain = endpoint_chain("slcabc", true);
    let rules = &r.chains["filter"][&chain];
    assert_eq!(rules.len(), 5, "{rules:#?}");
    assert!(rules[0].ends_with("-j DROP") && rules[0].contains("--match-set"), "{}", rules[0]);
    let allows = &rules[1..4];
    assert!(allows.iter().all(|r| r.ends_with("-j RETURN")), "{allows:#?}");
    assert!(allows.iter().any(|r| r.contains("-p tcp -m tcp --dport 80:81") && r.contains("--match-set")));
    assert!(allows.iter().any(|r| r.contains("-p udp ") && r.contains("--match-set")));
    assert!(allows.iter().any(|r| r.starts_with("-s 192.168.0.0/16 -p sctp -m sctp --dport 9 ")), "{allows:#?}");
    assert!(rules[4].contains("default deny for x/b: selected by NetworkPolicy x/p") && rules[4].ends_with("-j DROP"));
    assert_eq!(sets.len(), 3);
    let members: BTreeSet<&String> = sets.values().flatten().collect();
    assert!(members.contains(&"10.244.2.7/32".to_string()) && members.contains(&"10.244.0.0/16 nomatch".to_string()));
    let fwd = &r.chains["filter"][FWD_CHAIN];
    assert!(fwd[0].contains("RELATED,ESTABLISHED") && fwd[1].starts_with("-o slcabc ") && fwd.len() == 2);
    // FORWARD for pod to pod, INPUT for a pod's packets to its own node.
    let hooked: BTreeSet<&str> = r.hooks.iter().map(|h| h.builtin).collect();
    assert_eq!(hooked, BTreeSet::from(["FORWARD", "INPUT"]));
}

#[test]
fn identity_rules_with_the_same_ports_share_one_set() {
    let d = DirectionPolicy {
        enforced: true,
        selected_by: vec![name()],
        audited_by: vec![],
        rules: (0..50)
            .map(|i| {
                rule(
                    Action::Allow,
                    PeerMatch::Identities([Identity(400 + i % 2)].into()),
                    Some(Protocol::Tcp),
                    Some((80, 80)),
                )
            })
            .chain([rule(
                Action::Allow,
                PeerMatch::Identities([Identity(401)].into()),
                Some(Protocol::Tcp),
                Some((81, 81)),
            )])
            .collect(),
    };
    let (r, sets) = render(&view(d));
    let rules = &r.chains["filter"][&endpoint_chain("slcabc", true)];
    assert_eq!(rules.len(), 3, "port 80 group, port 81 group, default deny: {rules:#?}");
    assert_eq!(sets.len(), 2);
    assert!(sets.values().any(|m| m.len() == 2), "both identities' addresses in the port-80 set");
}

#[test]
fn set_names_follow_the_peer_not_its_members() {
    let peer = PeerMatch::Identities([Identity(400)].into());
    let d = DirectionPolicy {
        enforced: true,
        selected_by: vec![],
        audited_by: vec![],
        rules: vec![rule(Action::Allow, peer.clone(), None, None)],
    };
    let (_, a) = render(&view(d.clone()));
    let mut v = view(d);
    v.ipcache.insert(Ipv4Addr::new(10, 244, 3, 3), Identity(400));
    let (_, b) = render(&v);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "a new pod changes members only");
    assert_eq!(b.values().next().map(|s| s.len()), Some(2));
    // The whole internet with exceptions as a set: hash:net has no /0.
    let world =
        PeerMatch::Cidr { net: "0.0.0.0/0".parse().expect("net"), except: vec!["10.244.0.0/16".parse().expect("net")] };
    let d = DirectionPolicy {
        enforced: true,
        selected_by: vec![],
        audited_by: vec![],
        rules: vec![rule(Action::Allow, world, None, None)],
    };
    let (_, sets) = render(&view(d));
    let e = sets.values().next().expect("set");
    assert!(e.contains("0.0.0.0/1") && e.contains("128.0.0.0/1") && e.contains("10.244.0.0/16 nomatch"), "{e:?}");
}

#[test]
fn logged_drops_carry_a_prefix_that_names_what_decided_them() {
    let deny = DirectionPolicy {
        enforced: true,
        rules: vec![rule(Action::Deny, PeerMatch::Any, Some(Protocol::Tcp), Some((22, 22)))],
        selected_by: vec![name()],
        audited_by: vec![],
    };
    let mut v = view(deny);
    let (quiet, _) = render(&v);
    assert!(
        !quiet.chains["filter"].values().flat_map(|c| c.iter()).any(|l| l.contains("NFLOG")),
        "no NFLOG unless asked"
    );
    v.log_drops = Some(crate::nflog::GROUP);
    let (r, _) = render(&v);
    let chain = r.chains["filter"].iter().find(|(n, _)| n.starts_with("SLUICE-POL-I-")).map(|(_, c)| c).expect("chain");
    let drops: Vec<&String> = chain.iter().filter(|l| l.ends_with("-j DROP")).collect();
    let logs: Vec<&String> = chain.iter().filter(|l| l.contains("-j NFLOG")).collect();
    assert_eq!((drops.len(), logs.len()), (2, 2), "{chain:#?}");
    // Each NFLOG line sits right before its DROP with the same match.
    for (i, l) in chain.iter().enumerate() {
        if l.contains("-j NFLOG") {
            let next = &chain[i + 1];
            assert!(next.ends_with("-j DROP"));
            assert_eq!(l.split("-j NFLOG").next(), next.split("-m comment").next(), "{l} / {next}");
        }
    }
    let tags = drop_tags(&v);
    let prefix = |l: &str| l.split("--nflog-prefix ").nth(1).expect("prefix").trim().to_string();
    let explicit = &tags[&prefix(logs[0])];
    assert!(!explicit.default_deny && explicit.ingress && explicit.pod == "x/b" && !explicit.policies.is_empty());
    let default = &tags[&prefix(logs[1])];
    assert!(default.default_deny && default.policies == explicit.policies, "{default:?}");
    assert!(prefix(logs[0]).len() < 64, "NFLOG prefixes are at most 63 bytes");
}

/// While flows are recorded, an allow rule logs its verdict (new flows only reach it) right
/// before it RETURNs, with a prefix that names the policies that allowed the flow.
#[test]
fn allow_rules_log_their_policy_verdict_while_flows_are_recorded() {
    let d = DirectionPolicy {
        enforced: true,
        rules: vec![rule(Action::Allow, PeerMatch::Any, Some(Protocol::Tcp), Some((80, 80)))],
        selected_by: vec![name()],
        audited_by: vec![],
    };
    let mut v = view(d);
    let (quiet, _) = render(&v);
    assert!(
        !quiet.chains["filter"].values().flat_map(|c| c.iter()).any(|l| l.contains("NFLOG")),
        "no NFLOG unless asked"
    );
    v.log_drops = Some(crate::nflog::GROUP);
    let (drops_only, _) = render(&v);
    let logged = |r: &Ruleset| {
        r.chains["filter"].values().flat_map(|c| c.iter()).any(|l| l.contains(crate::nflog::ALLOW_PREFIX))
    };
    assert!(!logged(&drops_only), "allowed verdicts only when asked for");
    v.log_allows = true;
    let (r, _) = render(&v);
    let chain = r.chains["filter"].iter().find(|(n, _)| n.starts_with("SLUICE-POL-I-")).map(|(_, c)| c).expect("chain");
    let at = chain.iter().position(|l| l.contains(crate::nflog::ALLOW_PREFIX)).expect("allow logged");
    assert!(
        chain[at].contains("--dport 80")
            && chain[at + 1].contains("--dport 80")
            && chain[at + 1].ends_with("-j RETURN")
    );
    let prefix = chain[at].split("--nflog-prefix ").nth(1).expect("prefix").trim().to_string();
    assert!(prefix.len() < 64);
    let tag = &drop_tags(&v)[&prefix];
    assert!(tag.allow && !tag.default_deny && tag.ingress && tag.pod == "x/b" && !tag.policies.is_empty(), "{tag:?}");
}

/// Audit: a chain after the enforced one (while drops are logged), whose would-be drops are
/// logged with the audit prefix and RETURN; nothing in it drops.
#[test]
fn an_audit_policy_gets_a_logging_chain_after_the_enforced_one() {
    let mut audit_deny = rule(Action::Deny, PeerMatch::Any, Some(Protocol::Tcp), Some((22, 22)));
    audit_deny.audit = true;
    let d = DirectionPolicy {
        enforced: true,
        selected_by: vec![name()],
        audited_by: vec![name()],
        rules: vec![audit_deny, rule(Action::Allow, PeerMatch::Any, Some(Protocol::Tcp), Some((22, 80)))],
    };
    // Without a drop reader, there is no one to tell: no audit chain.
    let (r, _) = render(&view(d.clone()));
    assert!(!r.chains["filter"].contains_key(&audit_chain("slcabc", true)));
    let mut v = view(d);
    v.log_drops = Some(4242);
    let (r, _) = render(&v);
    let fwd = &r.chains["filter"][FWD_CHAIN];
    let real = fwd.iter().position(|l| l.ends_with(&endpoint_chain("slcabc", true))).expect("enforced jump");
    let audit = fwd.iter().position(|l| l.ends_with(&audit_chain("slcabc", true))).expect("audit jump");
    assert!(real < audit, "what the enforced chain drops never reaches the audit: {fwd:#?}");
    let rules = &r.chains["filter"][&audit_chain("slcabc", true)];
    assert!(rules.iter().all(|l| !l.ends_with("-j DROP")), "{rules:#?}");
    assert!(rules[0].contains("--dport 22") && rules[0].contains(&format!("--nflog-prefix {}", nflog::AUDIT_PREFIX)));
    assert!(rules[1].contains("--dport 22") && rules[1].ends_with("-j RETURN"), "first match ends the audit");
    let log = &rules[rules.len() - 2];
    assert!(log.contains(nflog::AUDIT_PREFIX) && log.contains("-j NFLOG"), "audit isolation: {rules:#?}");
    let tags = drop_tags(&v);
    let audits: Vec<_> = tags.iter().filter(|(p, _)| p.starts_with(nflog::AUDIT_PREFIX)).collect();
    assert_eq!(audits.len(), 2, "the audit deny and the audit default");
    assert!(audits.iter().all(|(_, t)| t.audit && t.pod == "x/b"));
}

#[test]
fn proxy_rules_redirect_in_mangle_in_list_order_and_are_absent_from_forward() {
    let d = DirectionPolicy {
        enforced: true,
        selected_by: vec![name()],
        audited_by: vec![],
        rules: vec![
            rule(Action::Deny, PeerMatch::Ips([Ipv4Addr::new(10, 244, 2, 8)].into()), None, None),
            CompiledRule {
                http: vec![sluice_core::policy::HttpRule { path: Some("/public".into()), ..Default::default() }],
                ..rule(
                    Action::Proxy,
                    PeerMatch::Identities([Identity(400)].into()),
                    Some(Protocol::Tcp),
                    Some((80, 80)),
                )
            },
        ],
    };
    // No proxy running: nothing redirects, FORWARD has no rule for it (default deny).
    let (r, _) = render(&view(d.clone()));
    assert!(!r.chains.contains_key("mangle"), "{:?}", r.chains.get("mangle"));
    let chain = endpoint_chain("slcabc", true);
    let fwd = &r.chains["filter"][&chain];
    assert!(fwd.iter().all(|l| !l.contains("--dport 80")), "{fwd:#?}");
    assert!(fwd.last().expect("default").contains("-j DROP"));

    let mut v = view(d);
    v.l7_proxy = Some(15001);
    let (r, sets) = render(&v);
    let mangle = &r.chains["mangle"];
    let top = &mangle[crate::l7::L7_CHAIN];
    assert!(top[0].contains("-m socket --transparent") && top[0].contains("--set-xmark 0x40000/0x40000"), "{top:#?}");
    // Later packets of a connection the proxy took: by its connmark, after nat.
    assert!(top[1].starts_with("-m connmark --mark 0x40000/0x40000 ") && top[2].ends_with("-j RETURN"), "{top:#?}");
    assert!(top[3].starts_with("-d 10.244.1.5 ") && top[3].contains("-j SLUICE-POL-L7-I-"), "{top:#?}");
    let l7 = mangle.iter().find(|(k, _)| k.starts_with("SLUICE-POL-L7-I-")).map(|(_, v)| v).expect("endpoint chain");
    assert!(l7[0].contains("FORWARD decides") && l7[0].ends_with("-j RETURN"), "deny first: {l7:#?}");
    assert!(
        l7[1].contains("-p tcp -m tcp --dport 80 --tcp-flags SYN,RST,ACK SYN ")
            && l7[1].ends_with("-j CONNMARK --set-xmark 0x40000/0x40000"),
        "the SYN marks the connection: {l7:#?}"
    );
    assert!(
        l7[2].contains("-p tcp -m tcp --dport 80 ")
            && l7[2].contains("-j TPROXY --on-ip 127.0.0.1 --on-port 15001 --tproxy-mark 0x40000/0x40000"),
        "{l7:#?}"
    );
    assert!(l7[2].contains("-m set --match-set sluice-"), "{l7:#?}");
    let set = l7[2].split("--match-set ").nth(1).and_then(|s| s.split(' ').next()).expect("set");
    assert_eq!(sets[set], BTreeSet::from(["10.244.2.7/32".to_string()]));
    assert!(
        r.hooks.iter().any(|h| h.table == "mangle" && h.builtin == "PREROUTING" && h.target == crate::l7::L7_CHAIN)
    );
    // A ClusterIP the proxy balances: taken before the endpoints' chains.
    // (A NodePort the eBPF device program would hand over is netfilter's to translate: none.)
    let front = |vip: &str, external, only_local| sluice_core::policy::l7_frontends::L7Frontend {
        vip: vip.parse().expect("ip"),
        port: 80,
        service: "x/echo".into(),
        backends: vec![("10.244.1.5".parse().expect("ip"), 80)],
        external,
        only_local,
    };
    v.l7_frontends = vec![front("10.96.0.40", false, false), front("198.51.100.11", true, false)];
    let (r, _) = render(&v);
    let top = &r.chains["mangle"][crate::l7::L7_CHAIN];
    assert!(top[1].starts_with("-m connmark --mark 0x40000/0x40000 ") && top[2].ends_with("-j RETURN"), "{top:#?}");
    let syn = "-d 10.96.0.40/32 -p tcp -m tcp --dport 80 --tcp-flags SYN,RST,ACK SYN ";
    assert!(top[3].starts_with(syn) && top[3].ends_with("-j CONNMARK --set-xmark 0x40000/0x40000"), "{top:#?}");
    assert!(
        top[4].starts_with(syn)
            && top[4].contains("ClusterIP of x/echo")
            && top[4].ends_with("-j TPROXY --on-ip 127.0.0.1 --on-port 15001 --tproxy-mark 0x40000/0x40000"),
        "{top:#?}"
    );
    assert!(!top.iter().any(|r| r.contains("198.51.100.11")), "{top:#?}");
    // Unless nat can only pick local L7-policed backends for it: then taken like the ClusterIP.
    v.l7_frontends = vec![front("10.96.0.40", false, false), front("198.51.100.11", true, true)];
    let (r, _) = render(&v);
    let top = &r.chains["mangle"][crate::l7::L7_CHAIN];
    assert!(top.iter().any(|r| r.contains("-d 198.51.100.11/32") && r.contains("-j TPROXY")), "{top:#?}");
}
