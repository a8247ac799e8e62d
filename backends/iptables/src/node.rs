//! Node plumbing in netfilter: pod masquerade. Always sluice's, whichever backend serves the
//! Service features (pod networking is not a kube-proxy feature), so it lives apart from the
//! Service backend: its own chain (`SLUICE-NODE-MASQ`, hooked from nat POSTROUTING), its own
//! syncer that reads and prunes only `SLUICE-NODE-*` chains. The agent's node manager drives it.

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::restore::{Iptables, IptablesError};
use crate::ruleset::{ChainOwner, Ruleset};
use crate::sync::{RuleSyncer, SyncReport};

pub const MASQ_CHAIN: &str = "SLUICE-NODE-MASQ";

/// Re-read the kernel this often even when nothing changed (drift made by others is repaired).
const FULL_RESYNC: Duration = Duration::from_secs(60);

/// Pod masquerading: traffic from this node's pods leaving the cluster takes the node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    pub pod_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
}

/// The node's rules: empty when masquerade is off (or the pod CIDR is not known yet).
pub fn render(m: Option<&Masquerade>) -> Ruleset {
    let mut r = Ruleset::default();
    if let Some(m) = m {
        let c = r.chain("nat", MASQ_CHAIN);
        c.push(format!(
            "-s {} -d {} -m comment --comment \"sluice: pod traffic inside the cluster keeps its source\" -j RETURN",
            m.pod_cidr, m.cluster_cidr
        ));
        c.push(format!(
            "-s {} -m comment --comment \"sluice: masquerade pod traffic leaving the cluster\" -j MASQUERADE",
            m.pod_cidr
        ));
        r.hook("nat", "POSTROUTING", MASQ_CHAIN, "");
    }
    r
}

pub struct NodeRules {
    syncer: RuleSyncer,
    last: Option<Option<Masquerade>>,
    last_full: Option<Instant>,
}

impl NodeRules {
    pub fn new(ipt: Iptables) -> Self {
        NodeRules { syncer: RuleSyncer::new(ipt, ChainOwner::Node), last: None, last_full: None }
    }

    /// Converge the node's chains; a no-op while nothing changed (but for the periodic re-read).
    pub fn sync(&mut self, m: Option<Masquerade>) -> Result<Option<SyncReport>, IptablesError> {
        let full = self.last_full.is_none_or(|t| t.elapsed() > FULL_RESYNC);
        if !full && self.last.as_ref() == Some(&m) {
            return Ok(None);
        }
        match self.syncer.sync(&render(m.as_ref()), full) {
            Ok(r) => {
                if full {
                    self.last_full = Some(Instant::now());
                }
                self.last = Some(m);
                Ok(Some(r))
            }
            Err(e) => {
                self.last = None;
                self.last_full = None;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Applied, observe, plan_sync};
    use crate::save::TableDump;

    fn masq() -> Masquerade {
        Masquerade {
            pod_cidr: "10.244.1.0/24".parse().expect("net"),
            cluster_cidr: "10.244.0.0/16".parse().expect("net"),
        }
    }

    #[test]
    fn masquerade_is_one_node_chain_hooked_from_postrouting() {
        let r = render(Some(&masq()));
        assert_eq!(r.chains["nat"][MASQ_CHAIN].len(), 2);
        assert!(r.chains["nat"][MASQ_CHAIN][1].ends_with("-j MASQUERADE"));
        assert_eq!(r.hooks.len(), 1);
        assert!(render(None).chains.is_empty() && render(None).hooks.is_empty());
    }

    #[test]
    fn the_node_and_service_syncers_never_prune_each_others_chains() {
        let (batches, _) = plan_sync(&render(Some(&masq())), &Applied::default());
        let nat = &batches["nat"];
        // The kernel after both syncers ran: a Service chain and the node chain, both hooked.
        let dump = TableDump {
            name: "nat".into(),
            chains: vec!["SLUICE-SERVICES".into(), MASQ_CHAIN.into(), "POSTROUTING".into()],
            rules: vec![
                format!("POSTROUTING -m comment --comment \"sluice: hook {MASQ_CHAIN}\" -j {MASQ_CHAIN}"),
                "PREROUTING -m comment --comment \"sluice: hook SLUICE-SERVICES\" -j SLUICE-SERVICES".into(),
                "SLUICE-SERVICES -j RETURN".into(),
            ],
        };
        let node = observe(std::slice::from_ref(&dump), ChainOwner::Node);
        assert_eq!(node.chains.keys().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), [MASQ_CHAIN]);
        assert_eq!(node.hooks.len(), 1);
        let services = observe(std::slice::from_ref(&dump), ChainOwner::Services);
        assert_eq!(services.chains.keys().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["SLUICE-SERVICES"]);
        // Masquerade off: only the node's chain and hook go.
        let (batches, _) = plan_sync(&render(None), &node);
        assert!(batches["nat"].contains(&format!("-X {MASQ_CHAIN}")), "{}", batches["nat"]);
        assert!(!batches["nat"].contains("SLUICE-SERVICES"), "{}", batches["nat"]);
        assert!(nat.contains(&format!(":{MASQ_CHAIN}")));
    }
}
