//! Applying the policy chains and sets: sets first (a rule never names a set that does not
//! exist), then the chains (only those that changed), then the sets no rule names any more are
//! destroyed. A failure leaves the kernel at the last complete state (an overflowing set is
//! caught before anything is written); the next pass re-reads both and retries.

use std::time::{Duration, Instant};

use sluice_core::policy::PolicyView;

use crate::ipset::{self, IpsetError, Sets};
use crate::policy::render;
use crate::restore::{Iptables, IptablesError};
use crate::ruleset::{ChainOwner, Ruleset};
use crate::sync::{RuleSyncer, SyncReport};

const FULL_RESYNC: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PolicySyncError {
    #[error(transparent)]
    Ipset(#[from] IpsetError),
    #[error(transparent)]
    Iptables(#[from] IptablesError),
}

pub struct PolicyRules {
    syncer: RuleSyncer,
    /// The sets as last written (`None`: unknown, read them back first).
    sets: Option<Sets>,
    /// The view generation last applied (`Some(None)`: policy removed).
    last: Option<Option<u64>>,
    last_full: Option<Instant>,
    pub chains: usize,
    pub set_count: usize,
}

impl PolicyRules {
    pub fn new(ipt: Iptables) -> Self {
        PolicyRules {
            syncer: RuleSyncer::new(ipt, ChainOwner::Policy),
            sets: None,
            last: None,
            last_full: None,
            chains: 0,
            set_count: 0,
        }
    }

    /// Converge to `view` (`None`: remove every policy chain and set).
    pub fn sync(&mut self, view: Option<&PolicyView>) -> Result<Option<SyncReport>, PolicySyncError> {
        let full = self.last_full.is_none_or(|t| t.elapsed() > FULL_RESYNC);
        let key = view.map(|v| v.generation);
        if !full && self.last == Some(key) {
            return Ok(None);
        }
        let (ruleset, want) = view.map(render).unwrap_or_else(|| (Ruleset::default(), Sets::new()));
        let res = self.apply(&ruleset, &want, full);
        match &res {
            Ok(_) => {
                if full {
                    self.last_full = Some(Instant::now());
                }
                self.last = Some(key);
                self.chains = ruleset.chains.values().map(|t| t.len()).sum();
                self.set_count = want.len();
            }
            Err(_) => {
                self.last = None;
                self.last_full = None;
                self.sets = None;
            }
        }
        res.map(Some)
    }

    fn apply(&mut self, ruleset: &Ruleset, want: &Sets, full: bool) -> Result<SyncReport, PolicySyncError> {
        let have = match (&self.sets, full) {
            (Some(s), false) => s.clone(),
            _ => ipset::save()?,
        };
        let batch = ipset::update_batch(want, &have)?;
        ipset::restore(&batch)?;
        // The sets now hold `want` (plus the ones about to go).
        let mut now = have.clone();
        now.extend(want.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.sets = Some(now.clone());
        let mut report = self.syncer.sync(ruleset, full)?;
        report.lines += batch.lines().count();
        let destroy = ipset::destroy_batch(want, &now);
        ipset::restore(&destroy)?;
        self.sets = Some(want.clone());
        Ok(report)
    }

    /// Destroy every sluice set (after `sluice cleanup` removed the chains using them).
    pub fn destroy_all_sets() -> Result<usize, IpsetError> {
        let have = ipset::save()?;
        ipset::restore(&ipset::destroy_batch(&Sets::new(), &have))?;
        Ok(have.len())
    }
}
