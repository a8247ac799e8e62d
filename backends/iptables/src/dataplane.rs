//! The iptables backend behind the core `Dataplane` seam: render the ruleset of the Service
//! features the engine gives it (pod masquerade is the node manager's, `crate::node`), sync it
//! incrementally, re-read the
//! kernel for a full resync periodically and after failures, and flush UDP conntrack entries
//! of removed backends.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sluice_core::{
    BackendId, BackendSpec, Capability, CleanupReport, Dataplane, DataplaneError, Desired, Feature, ObjectError,
    ObjectRef, Op, Report, Restored, ServiceName,
};

use crate::incremental::Renderer;
use crate::policy_sync::PolicyRules;
use crate::restore::{Iptables, IptablesError, Variant};
use crate::ruleset::{ChainOwner, TABLES, observe};
use crate::services::NodeInput;
use crate::sync::{
    RuleSyncer, flush_closed_tcp_conntrack, flush_udp_conntrack, flush_udp_to_frontend, flush_untranslated_to,
    udp_backends,
};

/// How often the kernel state is re-read and repaired even when nothing changed.
pub const FULL_RESYNC: Duration = Duration::from_secs(30);

/// What this backend needs per feature; every Service feature is implemented.
fn needs(f: Feature) -> Option<&'static [Capability]> {
    use Capability::*;
    match f {
        // Conntrack events: every connection netfilter tracks, with its translation.
        Feature::Flows => Some(&[Iptables, Conntrack]),
        Feature::Policy => Some(&[Iptables, Conntrack, Ipset]),
        _ => Some(&[Iptables, Conntrack]),
    }
}

pub const SPEC: BackendSpec = BackendSpec { id: BackendId::IPTABLES, needs, policy_needs_own_translation: false };

pub struct IptablesDataplane {
    syncer: Option<RuleSyncer>,
    ipt: Iptables,
    /// Formats only Services that changed since the last render.
    renderer: Renderer,
    /// What the last successful sync was made from.
    last_inputs: Option<Inputs>,
    /// Whether the plan gives this backend `flows` (read by the agent's conntrack reader).
    flows: bool,
    /// UDP backend addresses of the last successful sync (their conntrack entries are flushed
    /// when they go; the addresses alone, not a copy of every Service).
    last_udp: BTreeSet<std::net::IpAddr>,
    last_full: Option<Instant>,
    /// Rules of the last sync, for the summary.
    rules: usize,
    /// Frontend addresses (and protocols) the last sync served: a new one gets its stale
    /// conntrack entries cleared.
    last_frontends: BTreeSet<(std::net::IpAddr, sluice_core::Protocol)>,
    /// Network policy: its own chains and sets, its own syncer.
    policy: PolicyRules,
    /// Whether the last policy sync (with the feature owned) succeeded.
    policy_programmed: bool,
    /// Services whose rules the kernel refused in the last pass, with the error: they keep
    /// the rules they had, everything else is programmed. Retried every `HELD_RETRY`.
    held: std::collections::BTreeMap<ServiceName, ObjectError>,
    held_since: Option<Instant>,
}

/// How often Services the kernel refused are retried when nothing else changes.
const HELD_RETRY: Duration = Duration::from_secs(5);
/// Most Services held out of one pass (each costs a failed restore and a re-read); a batch
/// still refused after that fails whole, as before (the kernel keeps the last good rules).
const HELD_MAX: usize = 8;

/// Most new frontend addresses whose untranslated conntrack entries are cleared in one sync
/// (each is a `conntrack` process); more at once (a node starting with many Services) are left,
/// as kube-proxy's own start leaves them.
const FLUSH_MAX: usize = 64;

fn served_frontends(
    desired: &Desired<'_>,
    owned: &BTreeSet<Feature>,
    held: &std::collections::BTreeMap<ServiceName, ObjectError>,
) -> BTreeSet<(std::net::IpAddr, sluice_core::Protocol)> {
    desired
        .view
        .services
        .iter()
        .filter(|s| !held.contains_key(&s.name))
        .flat_map(|s| s.frontends.iter())
        .filter(|f| owned.contains(&f.kind.feature()))
        .filter_map(|f| f.ip.map(|ip| (ip, f.protocol)))
        .collect()
}

#[derive(Clone, PartialEq)]
struct Inputs {
    generation: u64,
    owned: BTreeSet<Feature>,
    node: String,
    cluster_cidr: ipnet::Ipv4Net,
    log_group: Option<u16>,
}

fn kernel(op: Op, table: Option<&str>, e: impl std::fmt::Display) -> ObjectError {
    ObjectError {
        object: table.map(|t| ObjectRef::Table(t.into())).unwrap_or(ObjectRef::Backend),
        error: DataplaneError::Kernel { backend: BackendId::IPTABLES, op, detail: e.to_string() },
    }
}

fn table_of(e: &IptablesError) -> Option<&str> {
    match e {
        IptablesError::Failed { table, .. } => Some(table),
        IptablesError::Spawn { .. } => None,
    }
}

impl IptablesDataplane {
    pub fn new(ipt: Iptables) -> Self {
        IptablesDataplane {
            syncer: Some(RuleSyncer::new(ipt, ChainOwner::Services)),
            ipt,
            renderer: Renderer::default(),
            last_inputs: None,
            flows: false,
            last_udp: BTreeSet::new(),
            last_full: None,
            rules: 0,
            last_frontends: BTreeSet::new(),
            policy: PolicyRules::new(ipt),
            policy_programmed: false,
            held: Default::default(),
            held_since: None,
        }
    }

    pub fn variant(&self) -> Variant {
        self.ipt.variant
    }

    /// The Service features: render, sync, flush what changed. A batch the kernel refuses
    /// because of one Service's rules (the tool names the line; the line names the Service's
    /// chain) is retried with that Service held at the rules it has in place: every other
    /// Service is still programmed, and the held one is retried alone on later passes.
    fn reconcile_services(&mut self, desired: &Desired<'_>, owned: &BTreeSet<Feature>) -> Report {
        // Missing objects are kept by the engine's prune gate (it passes the last complete
        // Services while the source is incomplete); the ruleset is always rendered whole.
        let node = desired.node;
        let inputs = Inputs {
            generation: desired.generation,
            owned: owned.iter().copied().filter(|f| f.is_kube_proxy_feature()).collect(),
            node: node.name.clone(),
            cluster_cidr: node.cluster_cidr,
            log_group: desired.policy.log_drops,
        };
        let full_due = self.last_full.is_none_or(|t| t.elapsed() > FULL_RESYNC);
        let retry_due = !self.held.is_empty() && self.held_since.is_none_or(|t| t.elapsed() > HELD_RETRY);
        if self.last_inputs.as_ref() == Some(&inputs) && !full_due && !retry_due {
            return Report {
                programmed: self.programmed(),
                errors: self.held.values().cloned().collect(),
                ..Default::default()
            };
        }
        let mut report = Report { programmed: self.programmed(), ..Default::default() };
        let input = NodeInput {
            node_name: &inputs.node,
            cluster_cidr: inputs.cluster_cidr,
            services: desired.view.services,
            host_ports: desired.view.all_host_ports,
            owned: &inputs.owned,
            log_group: inputs.log_group,
        };
        // Every pass starts with nothing held: a held Service is retried with all the others.
        let mut held: std::collections::BTreeMap<ServiceName, ObjectError> = Default::default();
        let synced = loop {
            let names: BTreeSet<ServiceName> = held.keys().cloned().collect();
            let rendered = self.renderer.render_holding(&input, &names);
            tracing::debug!(
                reused = rendered.stats.reused,
                rendered = rendered.stats.rendered,
                "iptables rules rendered"
            );
            let full = full_due || !held.is_empty();
            let syncer = self.syncer.get_or_insert_with(|| RuleSyncer::new(self.ipt, ChainOwner::Services));
            // On a thread of its own: a full sync parses the whole `iptables-save` dump (at 10k
            // Services ~130k rules), and memory freed on the caller's thread stays in its
            // allocator heap (measured: the agent's RSS at 10k Services 169-171 MB this way,
            // 150 MB before).
            let sync = std::thread::scope(|s| s.spawn(|| syncer.sync(&rendered.ruleset, full)).join());
            let sync = sync.unwrap_or_else(|_| {
                Err(IptablesError::Spawn {
                    binary: "iptables-restore".into(),
                    source: std::io::Error::other("the sync thread panicked"),
                })
            });
            match sync {
                Ok(sync) => {
                    self.rules = rendered.ruleset.rule_count();
                    self.renderer.commit(rendered);
                    break Ok(sync);
                }
                Err(e) => {
                    let owner = match &e {
                        IptablesError::Failed { line: Some(line), .. } => {
                            self.renderer.owner_of_line(&rendered, line).filter(|n| !held.contains_key(n))
                        }
                        _ => None,
                    };
                    match owner {
                        Some(name) if held.len() < HELD_MAX => {
                            tracing::warn!(service = %name, error = %e, "the kernel refused one Service's rules; programming the others without them");
                            let detail = format!(
                                "{e} (its rules as they were stay in place; the other Services are programmed; retried every {}s)",
                                HELD_RETRY.as_secs()
                            );
                            held.insert(
                                name.clone(),
                                ObjectError {
                                    object: ObjectRef::Service(name),
                                    error: DataplaneError::Kernel {
                                        backend: BackendId::IPTABLES,
                                        op: Op::RuleSync,
                                        detail,
                                    },
                                },
                            );
                        }
                        _ => break Err(e),
                    }
                }
            }
        };
        match synced {
            Ok(sync) => {
                if !sync.tables.is_empty() {
                    tracing::info!(full = sync.full, lines = sync.lines, tables = ?sync.tables, "iptables synced");
                }
                if full_due {
                    self.last_full = Some(Instant::now());
                }
                report.changes = sync.lines;
                // Only after the new rules are in: stale UDP flows would otherwise re-appear.
                let udp_now = udp_backends(desired.view.services);
                for ip in self.last_udp.difference(&udp_now).copied() {
                    match flush_udp_conntrack(ip) {
                        Ok(n) => tracing::info!(%ip, deleted = n, "UDP conntrack entries of a removed backend flushed"),
                        Err(e) => report.errors.push(kernel(Op::ConntrackFlush, None, e)),
                    }
                }
                let frontends = served_frontends(desired, &inputs.owned, &held);
                let fresh: Vec<_> = frontends.difference(&self.last_frontends).copied().collect();
                if !fresh.is_empty() {
                    report.errors.extend(clear_stale_entries(&fresh));
                }
                self.last_frontends = frontends;
                report.programmed = inputs.owned.clone();
                self.last_inputs = Some(inputs);
                self.last_udp = udp_now;
            }
            Err(e) => {
                // Nothing of the failed batch landed (restore is atomic per table): what was
                // served before is still served. The next pass re-reads the kernel.
                self.last_full = None;
                report.errors.push(kernel(Op::RuleSync, table_of(&e), format!("{e} (will retry with a full resync)")));
            }
        }
        self.held_since = (!held.is_empty()).then(Instant::now);
        report.errors.extend(held.values().cloned());
        self.held = held;
        report
    }

    fn programmed(&self) -> BTreeSet<Feature> {
        let mut p = self.last_inputs.as_ref().map(|i| i.owned.clone()).unwrap_or_default();
        if self.policy_programmed {
            p.insert(Feature::Policy);
        }
        if self.flows {
            p.insert(Feature::Flows);
        }
        p
    }

    /// Policy chains and sets: installed while the feature is owned, removed when it is not.
    fn reconcile_policy(&mut self, desired: &Desired<'_>, owned: &BTreeSet<Feature>) -> Option<ObjectError> {
        let want = owned.contains(&Feature::Policy).then_some(desired.policy);
        match self.policy.sync(want) {
            Ok(r) => {
                if let Some(r) = r.filter(|r| !r.tables.is_empty() || r.lines > 0) {
                    tracing::info!(lines = r.lines, full = r.full, "policy rules synced");
                }
                self.policy_programmed = want.is_some();
                None
            }
            Err(e) => {
                // The kernel keeps the last complete policy: what was enforced still is.
                Some(ObjectError {
                    object: ObjectRef::Table("filter".into()),
                    error: DataplaneError::Kernel {
                        backend: BackendId::IPTABLES,
                        op: Op::RuleSync,
                        detail: format!("network policy: {e} (will retry with a full resync)"),
                    },
                })
            }
        }
    }
}

/// Frontends iptables serves from now on: connection attempts tracked before their rules
/// existed must not catch later connections (see `flush_untranslated_to`).
fn clear_stale_entries(fresh: &[(std::net::IpAddr, sluice_core::Protocol)]) -> Vec<ObjectError> {
    if fresh.len() > FLUSH_MAX {
        return Vec::new();
    }
    let mut errors = Vec::new();
    for (vip, p) in fresh {
        let proto = match p {
            sluice_core::Protocol::Tcp => "tcp",
            sluice_core::Protocol::Udp => "udp",
            sluice_core::Protocol::Sctp => "sctp",
        };
        if let Err(e) = flush_untranslated_to(*vip, proto) {
            errors.push(kernel(Op::ConntrackFlush, None, e));
        }
    }
    errors
}

impl Dataplane for IptablesDataplane {
    fn spec(&self) -> BackendSpec {
        SPEC
    }

    /// sluice's chains from a previous agent serve whatever Service features that agent gave
    /// to iptables; which ones is not recorded, so every Service feature counts as possibly
    /// served (the engine then keeps them here until their planned owner serves them).
    fn restore(&mut self) -> Restored {
        let mut r = Restored::default();
        let dumps: Result<Vec<_>, _> = TABLES.iter().map(|t| self.ipt.save(t)).collect();
        match dumps {
            Ok(dumps) => {
                let applied = observe(&dumps, ChainOwner::Services);
                r.objects = applied.chains.len();
                // The POSTROUTING hook is always there; the others only while some Service
                // feature is served (pod masquerade is the node manager's chain).
                if applied.hooks.keys().any(|(_, hook)| !hook.ends_with(crate::services::POSTROUTING)) {
                    r.features = Feature::SERVICES.into_iter().collect();
                }
                // Policy chains of a previous agent keep enforcing until this one takes over:
                // a restart never opens a selected pod.
                let policy = observe(&dumps, ChainOwner::Policy);
                if !policy.chains.is_empty() {
                    r.features.insert(Feature::Policy);
                    r.objects += policy.chains.len();
                }
            }
            Err(e) => r.errors.push(kernel(Op::Restore, table_of(&e), &e)),
        }
        r
    }

    fn reconcile(&mut self, desired: &Desired<'_>, owned: &BTreeSet<Feature>, _prune: bool) -> Report {
        let policy_error = self.reconcile_policy(desired, owned);
        // Flows come from conntrack events, which need no object of their own here: the
        // netfilter hooks this node's rules (masquerade at least) keep conntrack tracking.
        self.flows = owned.contains(&Feature::Flows);
        let mut report = self.reconcile_services(desired, owned);
        report.programmed = self.programmed();
        report.errors.extend(policy_error);
        report
    }

    /// A Service frontend changed dataplanes: closed TCP connections' conntrack entries would
    /// catch new connections on reused client ports (see `flush_closed_tcp_conntrack`), and UDP
    /// flows to the frontends would clash with the ones eBPF translates before netfilter.
    fn after_transition(&mut self, desired: &Desired<'_>, moved: &BTreeSet<Feature>) -> Vec<ObjectError> {
        if !moved.iter().any(|f| f.translates_addresses()) {
            return Vec::new();
        }
        let mut errors = Vec::new();
        match flush_closed_tcp_conntrack() {
            Ok(n) => tracing::info!(
                deleted = n,
                "conntrack entries of closed TCP connections flushed (a frontend changed dataplanes)"
            ),
            Err(e) => errors.push(kernel(Op::ConntrackFlush, None, e)),
        }
        let udp_vips: BTreeSet<std::net::IpAddr> = desired
            .view
            .services
            .iter()
            .flat_map(|s| s.frontends.iter())
            .filter(|f| f.protocol == sluice_core::Protocol::Udp && moved.contains(&f.kind.feature()))
            .filter_map(|f| f.ip)
            .collect();
        for vip in udp_vips {
            if let Err(e) = flush_udp_to_frontend(vip) {
                errors.push(kernel(Op::ConntrackFlush, None, e));
            }
        }
        errors
    }

    /// DNAT in the nat table, as kube-proxy's: handing features to kube-proxy or taking them
    /// from it needs no conntrack settle.
    fn translates_in_netfilter(&self) -> bool {
        true
    }

    /// The same TIME_WAIT settle as after the transition, once before the break too: the old
    /// owner still serves while the bulk of the entries goes, so the one after the break (the
    /// window in which a reused client port's SYN can meet a closed connection's entry) has
    /// only the entries of the last moments to delete. Measured in the live-switch lab: the
    /// settle after the break deleted ~27k entries in ~240 ms before this.
    fn before_break(&mut self, _desired: &Desired<'_>, moving: &BTreeSet<Feature>) -> Vec<ObjectError> {
        if !moving.iter().any(|f| f.translates_addresses()) {
            return Vec::new();
        }
        match flush_closed_tcp_conntrack() {
            Ok(n) => {
                tracing::info!(deleted = n, "conntrack entries of closed TCP connections flushed before the break");
                Vec::new()
            }
            Err(e) => vec![kernel(Op::ConntrackFlush, None, e)],
        }
    }

    /// Both variants: a node may have switched between them since sluice last ran.
    fn cleanup(&mut self) -> CleanupReport {
        let mut out = CleanupReport::default();
        for variant in [Variant::Nft, Variant::Legacy] {
            match (Iptables { variant }).cleanup(&["nat", "filter", "mangle", "raw"]) {
                Ok(tables) => out.removed += tables.len(),
                Err(IptablesError::Spawn { .. }) => {} // this variant is not installed
                Err(e) => out.errors.push(kernel(Op::Cleanup, table_of(&e), &e)),
            }
        }
        match PolicyRules::destroy_all_sets() {
            Ok(n) => out.removed += n,
            Err(crate::ipset::IpsetError::Spawn { .. }) => {} // no ipset: sluice made no sets
            Err(e) => out.errors.push(kernel(Op::Cleanup, None, e)),
        }
        self.last_inputs = None;
        self.syncer = None;
        self.held.clear();
        self.policy = PolicyRules::new(self.ipt);
        self.policy_programmed = false;
        self.flows = false;
        out
    }

    fn usage(&self) -> Vec<sluice_core::dataplane::Usage> {
        use sluice_core::dataplane::Usage;
        [("rules", self.rules), ("policy-chains", self.policy.chains), ("policy-sets", self.policy.set_count)]
            .into_iter()
            .map(|(kind, n)| Usage::Objects { kind: kind.into(), count: n as u64 })
            .collect()
    }

    fn summary(&self) -> String {
        let owned: Vec<&str> = self.programmed().iter().map(|f| f.name()).collect();
        format!(
            "iptables-{}: {} rules, {} policy chains, {} policy sets; serving [{}]",
            self.ipt.variant.as_str(),
            self.rules,
            self.policy.chains,
            self.policy.set_count,
            if owned.is_empty() { "nothing".to_string() } else { owned.join(", ") }
        )
    }
}
