//! Applying a [`Ruleset`]: incremental by default (only changed chains), full when asked
//! (startup, periodic resync, after any failure), which first re-reads the kernel so drift
//! made by anyone else is repaired.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

use sluice_core::{Protocol, Service};

use crate::restore::{Iptables, IptablesError};
use crate::ruleset::{Applied, ChainOwner, Ruleset, TABLES, observe, plan_sync};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Tables a batch was written to (empty: nothing differed).
    pub tables: Vec<String>,
    /// Lines written (a measure of how incremental the sync was).
    pub lines: usize,
    pub full: bool,
}

pub struct RuleSyncer {
    pub ipt: Iptables,
    owner: ChainOwner,
    applied: Option<Applied>,
}

impl RuleSyncer {
    pub fn new(ipt: Iptables, owner: ChainOwner) -> Self {
        RuleSyncer { ipt, owner, applied: None }
    }

    /// Bring the kernel to `desired`. `full` re-reads the kernel state first.
    pub fn sync(&mut self, desired: &Ruleset, full: bool) -> Result<SyncReport, IptablesError> {
        let full = full || self.applied.is_none();
        if full {
            let dumps = TABLES.iter().map(|t| self.ipt.save(t)).collect::<Result<Vec<_>, _>>()?;
            self.applied = Some(observe(&dumps, self.owner));
        }
        let applied = self.applied.take().unwrap_or_default();
        let (batches, after) = plan_sync(desired, &applied);
        let mut report = SyncReport { full, ..Default::default() };
        for (table, batch) in &batches {
            if let Err(e) = self.ipt.restore(table, batch) {
                // Unknown state now: the next sync starts from a fresh read.
                self.applied = None;
                return Err(e);
            }
            report.tables.push((*table).to_string());
            report.lines += batch.lines().count();
        }
        self.applied = Some(after);
        Ok(report)
    }
}

/// UDP backends present before and gone now: their conntrack entries must go, or clients keep
/// sending into a dead endpoint (UDP has no connection to reset).
pub fn udp_backends(svcs: &[Service]) -> BTreeSet<IpAddr> {
    svcs.iter().flat_map(|s| s.backends.iter()).filter(|b| b.protocol == Protocol::Udp).map(|b| b.ip).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The `conntrack` tool failed (or is missing).
    #[error("conntrack {} failed: {detail} (install the conntrack package)", .args.join(" "))]
    Tool { args: Vec<String>, detail: String },
    /// A ctnetlink request of sluice's own failed.
    #[error("{what} over ctnetlink failed: {source} (needs the nf_conntrack_netlink module)")]
    Netlink { what: &'static str, source: std::io::Error },
}

/// Delete UDP conntrack entries DNATed to `ip` (exit 1 with "0 flow entries" is success).
pub fn flush_udp_conntrack(ip: IpAddr) -> Result<usize, ConntrackError> {
    conntrack_delete(&["-p", "udp", "--dst-nat", &ip.to_string()])
}

/// Delete UDP conntrack entries whose original destination is `vip` (flows a Service frontend
/// had; after the frontend moved to a dataplane that translates before netfilter, their reply
/// tuples would clash with the new flows').
pub fn flush_udp_to_frontend(vip: IpAddr) -> Result<usize, ConntrackError> {
    conntrack_delete(&["-p", "udp", "--orig-dst", &vip.to_string()])
}

/// Delete the TCP conntrack entries of closed connections (TIME_WAIT) on this node. (CLOSE
/// entries, after a reset, live 10 s; each extra state is one more dump of the whole table.)
///
/// Why: when a Service frontend moves between a dataplane that translates before netfilter
/// (eBPF at tc) and one that translates in it (iptables DNAT), a client port reused by a new
/// connection meets the closed connection's entry: its reply tuple is the new connection's, so
/// the backend's SYN-ACK is matched to the old entry and the client answers it with a reset (a
/// one-second SYN retransmit per reused port, for the two minutes TIME_WAIT entries live).
/// Such entries only absorb late packets of connections already closed at both ends.
///
/// Each delete names the dumped entry's id (`ct_flush`), so a connection that reused the port
/// since the dump keeps its entry.
pub fn flush_closed_tcp_conntrack() -> Result<usize, ConntrackError> {
    crate::ct_flush::flush_time_wait()
        .map_err(|source| ConntrackError::Netlink { what: "deleting TIME_WAIT entries", source })
}

/// Delete the conntrack entries to `vip` that no NAT translated (their reply comes from the
/// address itself).
///
/// Why: a SYN (or datagram) sent to a Service address before its DNAT rule existed is tracked
/// untranslated; a later connection that reuses the client port within the entry's lifetime
/// matches it, skips the nat table and is routed out of the node unanswered (measured in the
/// lab: clients probing a ClusterIP while it was being programmed later lost connections to it,
/// timed out or "host unreachable"). Entries DNATed to a backend, or translated by eBPF before
/// netfilter (their original destination is the backend), are not touched: those are live flows.
pub fn flush_untranslated_to(vip: IpAddr, proto: &str) -> Result<usize, ConntrackError> {
    let v = vip.to_string();
    conntrack_delete(&["-p", proto, "--orig-dst", &v, "--reply-src", &v])
}

fn conntrack_delete(args: &[&str]) -> Result<usize, ConntrackError> {
    let err = |detail: String| ConntrackError::Tool {
        args: std::iter::once("-D").chain(args.iter().copied()).map(str::to_string).collect(),
        detail,
    };
    let out = Command::new("conntrack").arg("-D").args(args).output().map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stderr);
    let deleted = text
        .lines()
        .find_map(|l| l.split(" flow entries have been deleted").next().filter(|_| l.contains("flow entries")))
        .and_then(|n| n.trim().rsplit(' ').next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    if out.status.success() || text.contains("0 flow entries") {
        Ok(deleted)
    } else {
        Err(err(text.trim().to_string()))
    }
}
