//! The reconcile engine: executes the plan against the registered backends, make-before-break,
//! and gates every prune on the source.
//!
//! Invariants (unit-tested with [`crate::testing::FakeDataplane`]):
//! - A feature moving from backend A to backend B stays with A (A keeps programming it) until
//!   B's report says B serves it; only then is A asked to drop it. If B fails, A keeps it for
//!   as long as B fails, and [`FeatureState`] says so.
//! - A feature moving to kube-proxy or off is released at once: sluice cannot see kube-proxy's
//!   rules, and the operator asked for it.
//! - Backends may prune (remove kernel state of objects missing from the desired view) only when
//!   the source is synced and its last read was complete.
//! - At start, what each backend restores from the kernel counts as served: a restart with a
//!   changed plan moves features make-before-break too.
//! - A backend that serves a feature but reports a hole (one interface it could not attach to)
//!   has the plan's fallback backend serve that feature too, for as long as the hole lasts; the
//!   fallback gets it in the same pass and drops it once the owner's report has no hole.
//!
//! The engine itself does no I/O: the backends do, inside `reconcile`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::dataplane::{Dataplane, Desired, Hole, ObjectError, Report};
use crate::plan::{Feature, Owner, Plan, Step};
use crate::registry::BackendId;

/// How far the source got: pruning needs both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceSync {
    /// A complete read has happened at least once since the agent started.
    pub synced: bool,
    /// The read behind this pass was complete (no unreadable file, no failed watch).
    pub complete: bool,
}

impl SourceSync {
    pub fn prune_allowed(self) -> bool {
        self.synced && self.complete
    }
}

/// Where a feature stands after a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Progress {
    /// The planned backend serves it.
    Serving,
    /// The planned backend does not serve it (yet); `kept_by` still does (make-before-break).
    Moving { kept_by: Vec<BackendId> },
    /// The planned backend failed and nobody of sluice's serves it.
    Failed,
    /// Planned to kube-proxy or off: nothing of sluice's.
    NotSluice,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureState {
    pub feature: Feature,
    pub planned: Owner,
    #[serde(flatten)]
    pub progress: Progress,
    /// Interfaces the planned backend could not serve it on, and who covers them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holes: Vec<HoleState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoleState {
    pub interface: String,
    /// The fallback backend serving the feature there (None: nobody can).
    pub covered_by: Option<BackendId>,
}

/// Whether one step of a transition has happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Done,
    /// A Program step whose owner does not serve the feature yet, or a Remove step waiting for it.
    Waiting,
}

/// The outcome of one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassReport {
    pub features: Vec<FeatureState>,
    pub errors: Vec<ObjectError>,
    pub prune: bool,
    /// Kernel objects written or removed, over every backend.
    pub changes: usize,
    /// How many backend reconciles ran (one per backend; two for a backend releasing a feature).
    pub calls: usize,
    /// Features whose serving backends changed in this pass.
    pub moved: BTreeSet<Feature>,
    /// Each backend reconcile of the pass, in call order (the agent's latency metrics).
    pub backend_calls: Vec<BackendCall>,
}

/// One backend reconcile: how long it took and what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendCall {
    pub id: BackendId,
    pub seconds: f64,
    pub changes: usize,
    pub errors: usize,
}

pub struct Engine {
    backends: Vec<Box<dyn Dataplane + Send>>,
    /// What each backend's kernel state serves, from its last report (or restore).
    serving: BTreeMap<BackendId, BTreeSet<Feature>>,
    /// Each backend's holes, from its last report.
    holes: BTreeMap<BackendId, Vec<Hole>>,
    /// Features the last pass's plan left to kube-proxy: a backend taking one over is a change
    /// of dataplane too (kube-proxy translates in netfilter), though no backend of ours held it.
    kube_proxy_had: BTreeSet<Feature>,
}

impl Engine {
    /// Backends in registry order (the order they reconcile in).
    pub fn new(backends: Vec<Box<dyn Dataplane + Send>>) -> Self {
        Engine { backends, serving: BTreeMap::new(), holes: BTreeMap::new(), kube_proxy_had: BTreeSet::new() }
    }

    pub fn backends(&self) -> impl Iterator<Item = &(dyn Dataplane + Send)> {
        self.backends.iter().map(|b| b.as_ref())
    }

    /// Read back every backend's kernel state; what it finds counts as served.
    pub fn restore(&mut self) -> Vec<ObjectError> {
        let mut errors = Vec::new();
        for b in &mut self.backends {
            let r = b.restore();
            self.serving.insert(b.id(), r.features);
            errors.extend(r.errors);
        }
        errors
    }

    /// The features a backend's kernel state serves now.
    pub fn serving(&self, id: BackendId) -> BTreeSet<Feature> {
        self.serving.get(&id).cloned().unwrap_or_default()
    }

    /// Features the planned backend serves with a hole on some interface.
    fn holed(&self, plan: &Plan) -> BTreeMap<Feature, Vec<&str>> {
        let mut out: BTreeMap<Feature, Vec<&str>> = BTreeMap::new();
        for (id, holes) in &self.holes {
            for h in holes {
                for f in h.features.iter().filter(|f| plan.owner(**f) == Owner::Backend(*id)) {
                    out.entry(*f).or_default().push(&h.interface);
                }
            }
        }
        out
    }

    /// What `id` must program: its planned features; features it serves whose planned owner is
    /// another backend that does not serve them yet; features it is the fallback for whose
    /// owner has a hole.
    fn owned(&self, plan: &Plan, id: BackendId) -> BTreeSet<Feature> {
        let mut owned = plan.owned_by(id);
        owned.extend(self.holed(plan).into_keys().filter(|f| plan.fallback(*f) == Some(id)));
        for f in self.serving(id) {
            if let Owner::Backend(next) = plan.owner(f)
                && next != id
                && !self.serving(next).contains(&f)
            {
                owned.insert(f);
            }
        }
        owned
    }

    /// One pass: make (every backend programs its planned features, holders keep theirs), then
    /// break (holders whose features the new owner now serves drop them).
    pub fn reconcile(&mut self, plan: &Plan, desired: &Desired<'_>, sync: SourceSync) -> PassReport {
        let prune = sync.prune_allowed();
        let mut pass = PassReport { prune, ..Default::default() };
        let before = self.serving.clone();
        let ids: Vec<BackendId> = self.backends.iter().map(|b| b.id()).collect();
        // Taking features from kube-proxy: the word before the break comes before the make,
        // since the make is the moment kube-proxy's rules stop seeing new flows.
        let netfilter: BTreeSet<BackendId> =
            self.backends.iter().filter(|b| b.translates_in_netfilter()).map(|b| b.id()).collect();
        let taking: BTreeSet<Feature> = self
            .kube_proxy_had
            .iter()
            .copied()
            .filter(|f| {
                plan.owner(*f).backend().is_some_and(|b| !self.serving(b).contains(f) && !netfilter.contains(&b))
            })
            .collect();
        if !taking.is_empty() {
            for b in &mut self.backends {
                pass.errors.extend(b.before_break(desired, &taking));
            }
        }
        // Make. Backends that gain features go first so that, within the pass, a holder's
        // second call (break) already sees the new owner's result.
        let mut make: Vec<(BackendId, BTreeSet<Feature>)> = ids.iter().map(|id| (*id, self.owned(plan, *id))).collect();
        make.sort_by_key(|(id, owned)| owned.is_subset(&self.serving(*id)));
        for (id, owned) in &make {
            let report = self.call(*id, desired, owned, prune);
            pass.absorb(*id, report);
        }
        // Break, after a word to every backend about what is about to be dropped.
        // A netfilter backend handing a feature to kube-proxy: same translation point, no word.
        let to_kube_proxy_alike =
            |f: &Feature, from: &BackendId| plan.owner(*f) == Owner::KubeProxy && netfilter.contains(from);
        let moving: BTreeSet<Feature> = make
            .iter()
            .flat_map(|(id, made)| {
                made.difference(&self.owned(plan, *id))
                    .copied()
                    .filter(|f| !to_kube_proxy_alike(f, id))
                    .collect::<Vec<_>>()
            })
            .collect();
        if !moving.is_empty() {
            for b in &mut self.backends {
                pass.errors.extend(b.before_break(desired, &moving));
            }
        }
        for (id, made) in &make {
            let owned = self.owned(plan, *id);
            if &owned != made {
                let report = self.call(*id, desired, &owned, prune);
                pass.absorb(*id, report);
            }
        }
        let moved: BTreeSet<Feature> = self
            .moved_since(&before, &taking)
            .into_iter()
            .filter(|f| !before.iter().any(|(id, had)| had.contains(f) && to_kube_proxy_alike(f, id)))
            .collect();
        self.kube_proxy_had = Feature::ALL.into_iter().filter(|f| plan.owner(*f) == Owner::KubeProxy).collect();
        if !moved.is_empty() {
            for b in &mut self.backends {
                pass.errors.extend(b.after_transition(desired, &moved));
            }
            pass.moved = moved;
        }
        pass.features = self.states(plan);
        pass
    }

    /// Features whose set of serving backends differs from `before`, among those some backend
    /// served before or kube-proxy had (`from_kube_proxy`); a feature programmed for the first
    /// time has moved from nowhere.
    fn moved_since(
        &self,
        before: &BTreeMap<BackendId, BTreeSet<Feature>>,
        from_kube_proxy: &BTreeSet<Feature>,
    ) -> BTreeSet<Feature> {
        let ids: BTreeSet<&BackendId> = before.keys().chain(self.serving.keys()).collect();
        let mut served_before: BTreeSet<Feature> = before.values().flatten().copied().collect();
        served_before.extend(from_kube_proxy);
        let mut moved = BTreeSet::new();
        for id in ids {
            let (was, now) = (before.get(id).cloned().unwrap_or_default(), self.serving(*id));
            moved.extend(was.symmetric_difference(&now).copied().filter(|f| served_before.contains(f)));
        }
        moved
    }

    fn call(&mut self, id: BackendId, desired: &Desired<'_>, owned: &BTreeSet<Feature>, prune: bool) -> (Report, f64) {
        let Some(b) = self.backends.iter_mut().find(|b| b.id() == id) else { return (Report::default(), 0.0) };
        let started = std::time::Instant::now();
        let report = b.reconcile(desired, owned, prune);
        let seconds = started.elapsed().as_secs_f64();
        self.serving.insert(id, report.programmed.clone());
        self.holes.insert(id, report.holes.clone());
        (report, seconds)
    }

    /// Every feature's progress under `plan`.
    pub fn states(&self, plan: &Plan) -> Vec<FeatureState> {
        let holed = self.holed(plan);
        plan.entries
            .iter()
            .map(|e| {
                let progress = match e.owner {
                    Owner::Backend(id) if self.serving(id).contains(&e.feature) => Progress::Serving,
                    Owner::Backend(id) => {
                        let kept_by: Vec<BackendId> = self
                            .serving
                            .iter()
                            .filter(|(b, f)| **b != id && f.contains(&e.feature))
                            .map(|(b, _)| *b)
                            .collect();
                        if kept_by.is_empty() { Progress::Failed } else { Progress::Moving { kept_by } }
                    }
                    Owner::KubeProxy | Owner::Off => Progress::NotSluice,
                };
                let holes = holed
                    .get(&e.feature)
                    .into_iter()
                    .flatten()
                    .map(|i| HoleState {
                        interface: i.to_string(),
                        covered_by: e.fallback.filter(|b| self.serving(*b).contains(&e.feature)),
                    })
                    .collect();
                FeatureState { feature: e.feature, planned: e.owner, progress, holes }
            })
            .collect()
    }

    /// Whether a step of a transition has happened.
    pub fn step_state(&self, step: &Step) -> StepState {
        let done = match step {
            Step::Program { feature, owner: Owner::Backend(b) } => self.serving(*b).contains(feature),
            Step::Remove { feature, owner: Owner::Backend(b) } => !self.serving(*b).contains(feature),
            _ => true,
        };
        if done { StepState::Done } else { StepState::Waiting }
    }
}

impl PassReport {
    fn absorb(&mut self, id: BackendId, (r, seconds): (Report, f64)) {
        self.calls += 1;
        self.backend_calls.push(BackendCall { id, seconds, changes: r.changes, errors: r.errors.len() });
        self.changes += r.changes;
        self.errors.extend(r.errors);
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
