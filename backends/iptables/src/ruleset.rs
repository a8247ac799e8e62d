//! The whole desired iptables state of sluice as data (tables -> chains -> rules, plus the hooks
//! from built-in chains), and the pure diff that turns "what was applied" and "what is wanted"
//! into one `iptables-restore --noflush` batch per table that rewrites only changed chains.
//!
//! The first rule of every sluice chain carries a hash of the chain's content in its comment
//! (`sluice:<16 hex>`; no extra rule, since every rule costs in a legacy table blob). After a
//! restart the agent reads `iptables-save`, takes each chain's hash and rule count, and rewrites
//! only chains whose hash or count differ: it keeps what is right and fixes what differs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::policy::POLICY_CHAIN_PREFIX;
use crate::save::TableDump;
use crate::{CHAIN_PREFIX, NODE_CHAIN_PREFIX};

pub const TABLES: [&str; 3] = ["nat", "filter", "mangle"];

/// A jump from a built-in chain into a sluice chain, inserted at the top.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hook {
    pub table: &'static str,
    pub builtin: &'static str,
    pub target: String,
    /// Extra match, e.g. `-m conntrack --ctstate NEW`.
    pub matches: String,
}

impl Hook {
    pub fn rule(&self) -> String {
        let m = if self.matches.is_empty() { String::new() } else { format!("{} ", self.matches) };
        format!("{} {m}-m comment --comment \"sluice: hook {}\" -j {}", self.builtin, self.target, self.target)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// table -> chain -> rules (each rule without `-A CHAIN`). Shared: a Service's chains are
    /// the same allocation in every render until the Service changes (incremental rendering).
    pub chains: BTreeMap<&'static str, BTreeMap<String, Arc<Vec<String>>>>,
    pub hooks: BTreeSet<Hook>,
}

impl Ruleset {
    pub fn chain(&mut self, table: &'static str, name: &str) -> &mut Vec<String> {
        Arc::make_mut(self.chains.entry(table).or_default().entry(name.to_string()).or_default())
    }

    /// Append `rules` to a chain; a chain not there yet shares `rules` instead of copying it.
    pub fn append_shared(&mut self, table: &'static str, name: &str, rules: &Arc<Vec<String>>) {
        match self.chains.entry(table).or_default().entry(name.to_string()) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(rules.clone());
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                Arc::make_mut(o.get_mut()).extend(rules.iter().cloned());
            }
        }
    }

    pub fn hook(&mut self, table: &'static str, builtin: &'static str, target: &str, matches: &str) {
        self.hooks.insert(Hook { table, builtin, target: target.into(), matches: matches.into() });
    }

    pub fn rule_count(&self) -> usize {
        self.chains.values().flat_map(|t| t.values()).map(|c| c.len()).sum()
    }
}

/// What a chain holds in the kernel, as far as sync cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainState {
    pub hash: u64,
    pub rules: usize,
}

/// sluice's view of the kernel: its chains and its hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub chains: BTreeMap<(String, String), ChainState>,
    /// (table, "BUILTIN TARGET") -> the rule as `iptables-save` prints it (without `-A `).
    pub hooks: BTreeMap<(String, String), String>,
}

pub fn chain_hash(rules: &[String]) -> u64 {
    if rules.is_empty() {
        return 0;
    }
    let mut h = Sha256::new();
    for r in rules {
        h.update(r.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The chain's first rule with the hash added to its comment (or a comment added).
fn with_hash(first: &str, hash: u64) -> String {
    let tag = format!("sluice:{hash:016x}");
    match first.find("--comment \"") {
        Some(i) => {
            let at = i + "--comment \"".len();
            format!("{}{tag} {}", &first[..at], &first[at..])
        }
        None => format!("-m comment --comment \"{tag}\" {first}"),
    }
}

fn hash_of(rule: &str) -> Option<u64> {
    let i = rule.find("sluice:")? + "sluice:".len();
    rule.get(i..i + 16).and_then(|h| u64::from_str_radix(h, 16).ok())
}

/// Which of sluice's chains a syncer owns: two syncers (the Service backend and the node
/// manager) share the tables, and neither may prune the other's chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainOwner {
    /// `SLUICE-*` except `SLUICE-NODE-*` and `SLUICE-POL-*`.
    Services,
    /// `SLUICE-NODE-*`.
    Node,
    /// `SLUICE-POL-*`.
    Policy,
}

impl ChainOwner {
    pub fn owns(self, chain: &str) -> bool {
        let owner = if chain.starts_with(NODE_CHAIN_PREFIX) {
            ChainOwner::Node
        } else if chain.starts_with(POLICY_CHAIN_PREFIX) {
            ChainOwner::Policy
        } else {
            ChainOwner::Services
        };
        chain.starts_with(CHAIN_PREFIX) && owner == self
    }
}

/// The chains of the kernel's tables, where sluice's hooks are.
const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Read the chains and hooks `owner` owns back from `iptables-save` dumps.
pub fn observe(dumps: &[TableDump], owner: ChainOwner) -> Applied {
    let mut a = Applied::default();
    for t in dumps {
        for c in t.chains.iter().filter(|c| owner.owns(c)) {
            let rules: Vec<&String> = t.rules.iter().filter(|r| r.split_whitespace().next() == Some(c)).collect();
            let hash = rules.first().and_then(|r| hash_of(r)).unwrap_or(0);
            a.chains.insert((t.name.clone(), c.clone()), ChainState { hash, rules: rules.len() });
        }
        for r in &t.rules {
            let mut words = r.split_whitespace();
            let builtin = words.next().unwrap_or_default();
            // sluice hooks into built-in chains only: a jump from anyone else's chain into a
            // sluice chain is theirs, never removed here (it can hold a chain sluice wants to
            // delete; the backend then holds that one Service, see `IptablesDataplane`).
            if !BUILTIN_CHAINS.contains(&builtin) {
                continue;
            }
            if let Some(target) = r.rsplit(" -j ").next().filter(|t| owner.owns(t)) {
                a.hooks.insert((t.name.clone(), format!("{builtin} {target}")), r.clone());
            }
        }
    }
    a
}

/// The batches (table -> restore input) that take the kernel from `applied` to `desired`,
/// and the state after they are applied. Unchanged chains are not written at all.
pub fn plan_sync(desired: &Ruleset, applied: &Applied) -> (BTreeMap<&'static str, String>, Applied) {
    let mut batches = BTreeMap::new();
    let mut after = Applied::default();
    for table in TABLES {
        let empty = BTreeMap::new();
        let want = desired.chains.get(table).unwrap_or(&empty);
        let mut declare = String::new();
        let mut body = String::new();
        for (name, rules) in want {
            let hash = chain_hash(rules);
            let state = ChainState { hash, rules: rules.len() };
            after.chains.insert((table.to_string(), name.clone()), state);
            if applied.chains.get(&(table.to_string(), name.clone())) == Some(&state) {
                continue;
            }
            let _ = writeln!(declare, ":{name} - [0:0]");
            for (i, r) in rules.iter().enumerate() {
                let r = if i == 0 { with_hash(r, hash) } else { r.clone() };
                let _ = writeln!(body, "-A {name} {r}");
            }
        }
        let mut tail = String::new();
        // Hooks: add missing ones at the top; remove ones no longer wanted (before their chain goes).
        let wanted: BTreeSet<(String, String)> = desired
            .hooks
            .iter()
            .filter(|h| h.table == table)
            .map(|h| (table.to_string(), format!("{} {}", h.builtin, h.target)))
            .collect();
        for h in desired.hooks.iter().filter(|h| h.table == table) {
            let key = (table.to_string(), format!("{} {}", h.builtin, h.target));
            if !applied.hooks.contains_key(&key) {
                let _ = writeln!(body, "-I {}", h.rule());
            }
            after.hooks.insert(key, h.rule());
        }
        for ((t, hook), rule) in applied.hooks.iter().filter(|((t, _), _)| t == table) {
            if !wanted.contains(&(t.clone(), hook.clone())) {
                let _ = writeln!(body, "-D {rule}");
            }
        }
        for (_, name) in applied.chains.keys().filter(|(t, _)| t == table) {
            if !want.contains_key(name) {
                let _ = writeln!(declare, ":{name} - [0:0]");
                let _ = writeln!(tail, "-X {name}");
            }
        }
        if !(declare.is_empty() && body.is_empty() && tail.is_empty()) {
            batches.insert(table, format!("*{table}\n{declare}{body}{tail}COMMIT\n"));
        }
    }
    (batches, after)
}

#[cfg(test)]
#[path = "ruleset_tests.rs"]
mod tests;
