//! Taking kube-proxy's iptables rules off a node and putting them back (`sluice migrate apply`
//! / `rollback`). Pure: a table dump in, a snapshot and restore batches out.
//!
//! Removal is one batch per table: the jumps from the built-in chains go first, then the chains
//! are flushed and deleted. `iptables-restore` commits the batch as one, so no packet ever
//! enters a flushed chain. Chains of kubelet (`KUBE-FIREWALL`, `KUBE-KUBELET-CANARY`,
//! `KUBE-MARK-DROP`) are not kube-proxy's and are never touched; neither is a kube-proxy chain
//! that a chain of someone else's still jumps to (it is kept, with what it leads to, and named).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::kube_proxy::words;
use crate::save::TableDump;

/// The tables kube-proxy writes in iptables mode.
pub const TABLES: [&str; 3] = ["nat", "filter", "mangle"];

const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Is this chain one kube-proxy's iptables proxier creates?
pub fn is_kube_proxy_chain(chain: &str) -> bool {
    matches!(
        chain,
        "KUBE-SERVICES"
            | "KUBE-EXTERNAL-SERVICES"
            | "KUBE-NODEPORTS"
            | "KUBE-POSTROUTING"
            | "KUBE-MARK-MASQ"
            | "KUBE-FORWARD"
            | "KUBE-PROXY-FIREWALL"
            | "KUBE-PROXY-CANARY"
    ) || ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-"].iter().any(|p| chain.starts_with(p))
}

/// A chain of someone else's jumps into a kube-proxy chain: that chain stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptChain {
    pub chain: String,
    /// The foreign chain whose rule jumps to it (or to a kept chain leading to it).
    pub referenced_by: String,
}

/// kube-proxy's part of one table, as it was: enough to put it back exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSnapshot {
    pub table: String,
    /// kube-proxy's chains, in the order declared.
    pub chains: Vec<String>,
    /// The rules of those chains (`iptables-save` lines without `-A `), in order.
    pub rules: Vec<String>,
    /// Jumps from built-in chains into them, in order.
    pub hooks: Vec<String>,
    /// Chains removal leaves in place, and why.
    #[serde(default)]
    pub kept: Vec<KeptChain>,
}

fn chain_of(rule: &str) -> &str {
    rule.split_whitespace().next().unwrap_or("")
}

fn target_of(rule: &str) -> Option<String> {
    let w = words(rule);
    let i = w.iter().position(|x| x == "-j" || x == "-g")?;
    w.get(i + 1).cloned()
}

/// kube-proxy's part of a table; `None` when it has none.
pub fn snapshot(t: &TableDump) -> Option<TableSnapshot> {
    let chains: Vec<String> = t.chains.iter().filter(|c| is_kube_proxy_chain(c)).cloned().collect();
    if chains.is_empty() {
        return None;
    }
    let ours: BTreeSet<&str> = chains.iter().map(String::as_str).collect();
    let mut rules = Vec::new();
    let mut hooks = Vec::new();
    // Which kube-proxy chains each chain jumps to, and who outside jumps in.
    let mut edges: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut foreign: Vec<(String, String)> = Vec::new();
    for r in &t.rules {
        let chain = chain_of(r);
        let target = target_of(r).filter(|tg| ours.contains(tg.as_str()));
        if ours.contains(chain) {
            rules.push(r.clone());
            if let Some(tg) = target {
                edges.entry(chain).or_default().push(tg);
            }
        } else if let Some(tg) = target {
            if BUILTIN.contains(&chain) {
                hooks.push(r.clone());
            } else {
                foreign.push((tg, chain.to_string()));
            }
        }
    }
    // A kept chain keeps everything it leads to: removing those would fail the batch.
    let mut kept: Vec<KeptChain> = Vec::new();
    let mut todo = foreign;
    while let Some((chain, by)) = todo.pop() {
        if kept.iter().any(|k| k.chain == chain) {
            continue;
        }
        for next in edges.get(chain.as_str()).into_iter().flatten() {
            todo.push((next.clone(), by.clone()));
        }
        kept.push(KeptChain { chain, referenced_by: by });
    }
    kept.sort_by(|a, b| a.chain.cmp(&b.chain));
    Some(TableSnapshot { table: t.name.clone(), chains, rules, hooks, kept })
}

impl TableSnapshot {
    fn is_kept(&self, chain: &str) -> bool {
        self.kept.iter().any(|k| k.chain == chain)
    }

    /// Chains removal deletes.
    pub fn removed_chains(&self) -> impl Iterator<Item = &String> {
        self.chains.iter().filter(|c| !self.is_kept(c))
    }

    /// The one batch that takes kube-proxy's part out of the table as it is now (`now` is the
    /// table read just before): its hooks, then its chains. Only what is still there is named,
    /// so a rerun after a partial or earlier removal does not fail. `None`: nothing left.
    pub fn removal_batch(&self, now: &TableDump) -> Option<String> {
        let present: BTreeSet<&str> = now.chains.iter().map(String::as_str).collect();
        let hooks: Vec<&String> = now
            .rules
            .iter()
            .filter(|r| BUILTIN.contains(&chain_of(r)))
            .filter(|r| target_of(r).is_some_and(|tg| is_kube_proxy_chain(&tg) && !self.is_kept(&tg)))
            .collect();
        let chains: Vec<&str> = now
            .chains
            .iter()
            .map(String::as_str)
            .filter(|c| is_kube_proxy_chain(c) && !self.is_kept(c) && present.contains(c))
            .collect();
        crate::save::teardown_batch(&self.table, &hooks, &chains)
    }

    /// The one batch that puts the snapshot back into the table as it is now: every chain
    /// declared (which empties one that exists), its rules, then each hook not already there,
    /// appended: rules already in the built-in chains (sluice's own hooks) keep precedence
    /// until their owner removes them, which is what make-before-break needs.
    pub fn restore_batch(&self, now: &TableDump) -> String {
        let mut s = format!("*{}\n", self.table);
        for c in &self.chains {
            s.push_str(&format!(":{c} - [0:0]\n"));
        }
        for r in &self.rules {
            s.push_str(&format!("-A {r}\n"));
        }
        for h in &self.hooks {
            if !now.rules.contains(h) {
                s.push_str(&format!("-A {h}\n"));
            }
        }
        s.push_str("COMMIT\n");
        s
    }
}

#[cfg(test)]
#[path = "kube_proxy_cutover_tests.rs"]
mod tests;
