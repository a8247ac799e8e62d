use super::*;
use crate::save::parse_save;

fn ruleset() -> Ruleset {
    let mut r = Ruleset::default();
    r.chain("nat", "SLUICE-SERVICES").push("-d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SLUICE-SVC-A".into());
    r.chain("nat", "SLUICE-SVC-A").push("-j DNAT --to-destination 10.244.1.2:8080".into());
    r.hook("nat", "PREROUTING", "SLUICE-SERVICES", "");
    r
}

/// Simulate what iptables-save prints after a batch is applied.
fn dump_after(r: &Ruleset) -> Vec<TableDump> {
    let mut text = String::new();
    for (table, chains) in &r.chains {
        text += &format!("*{table}\n:PREROUTING ACCEPT [0:0]\n");
        for name in chains.keys() {
            text += &format!(":{name} - [0:0]\n");
        }
        for h in r.hooks.iter().filter(|h| h.table == *table) {
            text += &format!("-A {}\n", h.rule());
        }
        for (name, rules) in chains {
            for (i, rule) in rules.iter().enumerate() {
                let rule = if i == 0 { with_hash(rule, chain_hash(rules)) } else { rule.clone() };
                text += &format!("-A {name} {rule}\n");
            }
        }
        text += "COMMIT\n";
    }
    parse_save(&text)
}

#[test]
fn first_sync_writes_everything_then_nothing() {
    let r = ruleset();
    let (batches, after) = plan_sync(&r, &Applied::default());
    let nat = &batches["nat"];
    assert!(nat.contains(":SLUICE-SVC-A - [0:0]") && nat.contains("-j DNAT --to-destination 10.244.1.2:8080"));
    assert!(nat.contains("-I PREROUTING -m comment --comment \"sluice: hook SLUICE-SERVICES\" -j SLUICE-SERVICES"));
    // Applying the same desired state again: no batch at all.
    let (again, _) = plan_sync(&r, &after);
    assert!(again.is_empty(), "{again:?}");
    // Same after a restart, from what iptables-save shows.
    let observed = observe(&dump_after(&r), ChainOwner::Services);
    assert_eq!(observed.chains, after.chains);
    let (restart, _) = plan_sync(&r, &observed);
    assert!(restart.is_empty(), "{restart:?}");
}

#[test]
fn only_changed_chains_are_rewritten_and_removed_ones_deleted() {
    let r = ruleset();
    let (_, applied) = plan_sync(&r, &Applied::default());
    let mut r2 = r.clone();
    r2.chain("nat", "SLUICE-SVC-A")[0] = "-j DNAT --to-destination 10.244.1.3:8080".into();
    let (b, _) = plan_sync(&r2, &applied);
    let nat = &b["nat"];
    assert!(nat.contains(":SLUICE-SVC-A - [0:0]"));
    assert!(!nat.contains(":SLUICE-SERVICES"), "unchanged chain untouched: {nat}");
    assert!(!nat.contains("-I PREROUTING"), "hook already present");

    let mut r3 = r.clone();
    r3.chains.get_mut("nat").expect("nat").remove("SLUICE-SVC-A");
    r3.chain("nat", "SLUICE-SERVICES").clear();
    let (b, _) = plan_sync(&r3, &applied);
    let nat = &b["nat"];
    assert!(nat.contains("-X SLUICE-SVC-A\n"));
    assert!(nat.find(":SLUICE-SERVICES") < nat.find("-X SLUICE-SVC-A"), "parent rewritten before the child is deleted");
}

#[test]
fn drift_is_detected_by_rule_count() {
    let r = ruleset();
    let mut dumps = dump_after(&r);
    // Someone appended a rule to a sluice chain by hand.
    dumps[0].rules.push("SLUICE-SVC-A -j ACCEPT".into());
    let (b, _) = plan_sync(&r, &observe(&dumps, ChainOwner::Services));
    assert!(b["nat"].contains(":SLUICE-SVC-A - [0:0]"), "drifted chain rewritten");
}

#[test]
fn unwanted_hook_is_removed_with_its_exact_rule() {
    let mut r = ruleset();
    r.hook("nat", "OUTPUT", "SLUICE-SERVICES", "-m addrtype --dst-type LOCAL");
    let observed = observe(&dump_after(&r), ChainOwner::Services);
    let mut r2 = r.clone();
    r2.hooks.retain(|h| h.builtin != "OUTPUT");
    let (b, _) = plan_sync(&r2, &observed);
    assert!(
        b["nat"].contains("-D OUTPUT -m addrtype --dst-type LOCAL -m comment --comment \"sluice: hook SLUICE-SERVICES\" -j SLUICE-SERVICES"),
        "{}",
        b["nat"]
    );
}

/// A jump from someone else's chain into a sluice chain is theirs: never taken for a hook,
/// never removed (only built-in chains hold sluice's hooks).
#[test]
fn a_foreign_chains_jump_into_a_sluice_chain_is_left_alone() {
    let r = ruleset();
    let mut dumps = dump_after(&r);
    dumps[0].chains.push("FOREIGN".into());
    dumps[0].rules.push("FOREIGN -p udp -m udp --dport 9 -j SLUICE-SVC-A".into());
    let observed = observe(&dumps, ChainOwner::Services);
    assert_eq!(observed.hooks.len(), 1, "{:?}", observed.hooks);
    let (b, _) = plan_sync(&r, &observed);
    assert!(b.is_empty(), "{b:?}");
}

#[test]
fn hash_rides_on_the_first_rules_comment() {
    let h = 0x0123_4567_89ab_cdef;
    assert_eq!(
        with_hash("-j DNAT --to-destination 1.2.3.4:80", h),
        "-m comment --comment \"sluice:0123456789abcdef\" -j DNAT --to-destination 1.2.3.4:80"
    );
    let r = with_hash("! -s 10.0.0.0/8 -m comment --comment \"default/web:http\" -j X", h);
    assert_eq!(r, "! -s 10.0.0.0/8 -m comment --comment \"sluice:0123456789abcdef default/web:http\" -j X");
    assert_eq!(hash_of(&r), Some(h));
}
