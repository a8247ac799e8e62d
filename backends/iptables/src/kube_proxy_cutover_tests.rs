use super::*;
use crate::save::parse_save;

const NAT: &str = "*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-MARK-DROP - [0:0]
:KUBE-SVC-AAA - [0:0]
:KUBE-SEP-BBB - [0:0]
:SLUICE-SERVICES - [0:0]
-A PREROUTING -m comment --comment \"sluice: hook SLUICE-SERVICES\" -j SLUICE-SERVICES
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-AAA
-A KUBE-SVC-AAA -j KUBE-SEP-BBB
-A KUBE-SEP-BBB -s 10.244.1.2/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-BBB -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
-A SLUICE-SERVICES -d 10.96.0.10/32 -j ACCEPT
COMMIT
";

fn nat() -> TableDump {
    parse_save(NAT).remove(0)
}

#[test]
fn snapshot_takes_kube_proxys_chains_rules_and_hooks_only() {
    let s = snapshot(&nat()).expect("kube-proxy is here");
    assert_eq!(s.chains, ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-SVC-AAA", "KUBE-SEP-BBB"]);
    assert_eq!(s.hooks.len(), 3, "{:?}", s.hooks);
    assert!(s.hooks.iter().all(|h| !h.contains("SLUICE")));
    assert_eq!(s.rules.len(), 6);
    assert!(s.kept.is_empty());
    assert!(!s.chains.contains(&"KUBE-MARK-DROP".to_string()), "kubelet's chain");
}

#[test]
fn removal_unhooks_before_it_flushes_and_never_touches_others() {
    let t = nat();
    let s = snapshot(&t).expect("snapshot");
    let b = s.removal_batch(&t).expect("something to remove");
    let first_flush = b.find("-F ").expect("flushes");
    let last_unhook = b.rfind("-D ").expect("unhooks");
    assert!(last_unhook < first_flush, "hooks go before any chain is flushed:\n{b}");
    assert!(b.contains("-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"));
    assert!(b.contains("-X KUBE-SEP-BBB\n"));
    assert!(!b.contains("SLUICE") && !b.contains("KUBE-MARK-DROP"), "{b}");
    assert!(b.starts_with("*nat\n") && b.ends_with("COMMIT\n"));
    // Once removed, nothing is left to do: a rerun is a no-op.
    let after = parse_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-MARK-DROP - [0:0]\n:SLUICE-SERVICES - [0:0]\n-A PREROUTING -j SLUICE-SERVICES\nCOMMIT\n",
    )
    .remove(0);
    assert_eq!(s.removal_batch(&after), None);
}

#[test]
fn a_chain_someone_else_jumps_to_is_kept_with_what_it_leads_to() {
    let text = NAT.replace(
        ":SLUICE-SERVICES - [0:0]\n",
        ":SLUICE-SERVICES - [0:0]\n:CNI-HOSTPORT-MASQ - [0:0]\n-A CNI-HOSTPORT-MASQ -j KUBE-SVC-AAA\n",
    );
    let t = parse_save(&text).remove(0);
    let s = snapshot(&t).expect("snapshot");
    let kept: Vec<&str> = s.kept.iter().map(|k| k.chain.as_str()).collect();
    assert_eq!(kept, ["KUBE-MARK-MASQ", "KUBE-SEP-BBB", "KUBE-SVC-AAA"]);
    assert!(s.kept.iter().all(|k| k.referenced_by == "CNI-HOSTPORT-MASQ"));
    let b = s.removal_batch(&t).expect("batch");
    assert!(!b.contains("KUBE-SVC-AAA") && !b.contains("KUBE-SEP-BBB") && !b.contains("KUBE-MARK-MASQ"), "{b}");
    assert!(b.contains("-X KUBE-SERVICES\n"));
}

#[test]
fn restore_puts_back_exactly_what_was_taken_behind_existing_hooks() {
    let t = nat();
    let s = snapshot(&t).expect("snapshot");
    let removed = parse_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:SLUICE-SERVICES - [0:0]\n-A PREROUTING -m comment --comment \"sluice: hook SLUICE-SERVICES\" -j SLUICE-SERVICES\nCOMMIT\n",
    )
    .remove(0);
    let b = s.restore_batch(&removed);
    for c in &s.chains {
        assert!(b.contains(&format!(":{c} - [0:0]\n")), "{c} declared:\n{b}");
    }
    for r in s.rules.iter().chain(&s.hooks) {
        assert!(b.contains(&format!("-A {r}\n")), "{r} restored:\n{b}");
    }
    assert!(!b.contains("-I "), "hooks are appended behind the rules in place:\n{b}");
    // Hooks already present (kube-proxy came back first) are not doubled.
    let b = s.restore_batch(&t);
    assert!(!b.contains("-A PREROUTING"), "{b}");
}

#[test]
fn no_kube_proxy_no_snapshot() {
    let t = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\nCOMMIT\n").remove(0);
    assert_eq!(snapshot(&t), None);
}
