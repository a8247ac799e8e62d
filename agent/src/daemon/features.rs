//! The feature plan at runtime: probe once at start, plan from capabilities x config, and
//! re-plan when the config file changes (or on SIGHUP). A valid new config moves features
//! make-before-break; an invalid one is rejected and the running plan stays.

use std::path::PathBuf;
use std::time::SystemTime;

use sluice_config::Config;
use sluice_core::plan::{compute, transition};
use sluice_core::{Capabilities, Feature, Plan, PlanInput, Step, StepState};

pub use crate::api::types::{MigrationOverride, ReloadStatus, StepRecord};

/// Where the running config came from, so it can be re-read.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub flags: serde_json::Value,
}

/// The plan a config gives on these capabilities (with `probes.assume_missing` applied).
pub fn plan_for(cfg: &Config, probed: &Capabilities) -> anyhow::Result<Plan> {
    let caps = probed.clone().assume_missing(&cfg.assume_missing()?);
    let features = cfg.partial_features()?;
    let per_feature = cfg.feature_dataplanes()?;
    Ok(compute(&PlanInput {
        caps: &caps,
        mode: cfg.kube_proxy_replacement.0,
        partial_features: &features,
        dataplane: cfg.dataplane,
        dataplane_features: &per_feature,
        backends: &super::registry::specs(),
        disabled: if cfg.flows.enabled { &[] } else { &[(Feature::Flows, "flows.enabled: false")] },
    })?)
}

/// Keys that can change while the agent runs; every other change needs a restart.
fn runtime_changeable(old: &Config, new: &Config) -> Result<(), String> {
    let mut same = new.clone();
    same.kube_proxy_replacement = old.kube_proxy_replacement;
    same.kube_proxy_replacement_features = old.kube_proxy_replacement_features.clone();
    same.dataplane = old.dataplane;
    same.dataplane_features = old.dataplane_features.clone();
    same.probes = old.probes.clone();
    same.policy_enforcement = old.policy_enforcement;
    same.flows.enabled = old.flows.enabled;
    same.flows.allowed_verdicts = old.flows.allowed_verdicts;
    same.flows.trace_to_stack = old.flows.trace_to_stack;
    if &same == old {
        return Ok(());
    }
    let a = serde_json::to_value(old).unwrap_or_default();
    let b = serde_json::to_value(&same).unwrap_or_default();
    let keys: Vec<String> = b
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| a.get(k.as_str()) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    Err(format!(
        "{} cannot change while the agent runs (restart it); only kube_proxy_replacement, kube_proxy_replacement_features, dataplane, dataplane_features, probes, policy_enforcement, flows.enabled, flows.allowed_verdicts and flows.trace_to_stack can",
        keys.join(", ")
    ))
}

pub struct Planner {
    pub source: ConfigSource,
    pub probed: Capabilities,
    pub config: Config,
    pub plan: Plan,
    pub status: ReloadStatus,
    /// The node's `sluice.io/node-config` label, selecting a `node_configs` entry.
    pub node_config: Option<String>,
    /// Where `sluice migrate`'s pin of kube_proxy_replacement is kept.
    override_file: PathBuf,
    mtime: Option<SystemTime>,
}

/// The pin `sluice migrate` left, if any. A file that cannot be read stops the agent: guessing
/// would hand a migrated node's Services back to a kube-proxy that is gone.
fn load_override(path: &std::path::Path) -> anyhow::Result<Option<MigrationOverride>> {
    let Some(b) = crate::files::read_if_exists(path)? else { return Ok(None) };
    serde_json::from_slice(&b).map(Some).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a migration pin ({e}); it is written by `sluice migrate apply|rollback`: remove it to use the config file's kube_proxy_replacement",
            path.display()
        )
    })
}

/// Write (or with `None` remove) the pin, never half-written.
fn store_override(path: &std::path::Path, o: Option<&MigrationOverride>) -> Result<(), String> {
    let Some(o) = o else {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("removing {}: {e}", path.display())),
            _ => Ok(()),
        };
    };
    let body = serde_json::to_vec_pretty(o).map_err(|e| e.to_string())?;
    crate::files::write_atomic(path, &body).map_err(|e| format!("{e:#}"))
}

/// The config the plan is made from: the file (or flags), the node's `node_configs` entry, and
/// `sluice migrate`'s pin of kube_proxy_replacement over both.
fn effective(cfg: &Config, label: Option<&str>, pin: Option<&MigrationOverride>) -> Result<Config, String> {
    let mut e = cfg.with_node_config(label).map_err(|e| format!("{e:#}"))?;
    if let Some(p) = pin {
        e.kube_proxy_replacement = sluice_config::KprSetting(p.kube_proxy_replacement);
    }
    Ok(e)
}

fn mtime(p: &Option<PathBuf>) -> Option<SystemTime> {
    p.as_ref().and_then(|p| std::fs::metadata(p).ok()).and_then(|m| m.modified().ok())
}

impl Planner {
    pub fn new(source: ConfigSource, probed: Capabilities, config: Config) -> anyhow::Result<Self> {
        let override_file = config.state_dir().join("migration").join("pin.json");
        let pin = load_override(&override_file)?;
        let plan = plan_for(&effective(&config, None, pin.as_ref()).map_err(anyhow::Error::msg)?, &probed)?;
        if let Some(p) = &pin {
            tracing::warn!(mode = p.kube_proxy_replacement.title(), by = %p.set_by, "kube_proxy_replacement pinned by sluice migrate, over the config file");
        }
        let status = ReloadStatus {
            path: source.path.as_ref().map(|p| p.display().to_string()),
            generation: 1,
            last_attempt_unix: super::now_unix(),
            rejected: None,
            node_config: None,
            last_transition: Vec::new(),
            migration: pin,
            state_dir: config.state_dir().display().to_string(),
        };
        Ok(Planner {
            mtime: mtime(&source.path),
            source,
            probed,
            config,
            plan,
            status,
            node_config: None,
            override_file,
        })
    }

    /// `sluice migrate` pins (or releases) kube_proxy_replacement on this node. The pin is
    /// stored before the re-plan and put back as it was if the plan cannot be made, so what is
    /// on disk always matches the plan in force.
    pub fn set_migration(&mut self, pin: Option<MigrationOverride>) -> Result<Vec<Step>, String> {
        self.status.last_attempt_unix = super::now_unix();
        let before = self.status.migration.clone();
        store_override(&self.override_file, pin.as_ref())?;
        self.status.migration = pin;
        let res = self.replan(Ok(self.config.clone()), self.node_config.clone());
        if res.is_err() {
            self.status.migration = before;
            store_override(&self.override_file, self.status.migration.as_ref())?;
        }
        res
    }

    /// Has the config file changed since it was last read?
    pub fn file_changed(&self) -> bool {
        self.source.path.is_some() && mtime(&self.source.path) != self.mtime
    }

    /// Re-read the config. On success returns the steps to run (make-before-break order).
    pub fn reload(&mut self) -> Result<Vec<Step>, String> {
        self.mtime = mtime(&self.source.path);
        self.status.last_attempt_unix = super::now_unix();
        let attempt = sluice_config::load(self.source.path.as_deref(), Some(self.source.flags.clone()))
            .map_err(|e| format!("{e:#}"))
            .and_then(|new| runtime_changeable(&self.config, &new).map(|_| new));
        self.replan(attempt, self.node_config.clone())
    }

    /// The node label selecting a `node_configs` entry changed (or appeared, or went away).
    pub fn set_node_config(&mut self, label: Option<String>) -> Result<Vec<Step>, String> {
        self.status.last_attempt_unix = super::now_unix();
        let base = Ok(self.config.clone());
        self.replan(base, label)
    }

    /// Record the outcome of a reload or label change. The steps run in the next engine pass
    /// (every new owner programs before any old owner removes); their state follows the engine.
    pub fn apply(&mut self, res: Result<Vec<Step>, String>) {
        match res {
            Ok(steps) => {
                tracing::info!(generation = self.status.generation, "config applied: {}", self.plan.status_line());
                tracing::info!(steps = %describe(&steps), "feature transition planned (make before break)");
                self.status.last_transition = steps
                    .into_iter()
                    .map(|step| StepRecord { step, state: StepState::Waiting, result: "in the next pass".into() })
                    .collect();
            }
            Err(e) => tracing::error!(error = %e, "config reload rejected; the running config and plan stay"),
        }
    }

    /// The last transition's steps, as far as the engine has carried them out.
    pub fn track(&mut self, engine: &sluice_core::Engine) {
        let mut done = Vec::new();
        for r in &mut self.status.last_transition {
            let state = engine.step_state(&r.step);
            if state != r.state && state == StepState::Done {
                done.push(r.step.clone());
            }
            r.state = state;
            r.result = match (state, &r.step) {
                (StepState::Done, Step::Program { .. }) => "programmed".into(),
                (StepState::Done, Step::Remove { .. }) => "removed".into(),
                (StepState::Waiting, Step::Program { owner, feature }) => {
                    format!("waiting: {owner} does not serve {feature} yet (see errors); the old owner keeps it")
                }
                (StepState::Waiting, Step::Remove { feature, .. }) => {
                    format!("kept until the new owner of {feature} serves it")
                }
            };
        }
        if !done.is_empty() {
            tracing::info!(steps = %describe(&done), "feature transition steps done");
        }
    }

    /// A fresh probe of the node. When a capability came or went (a module loaded after boot,
    /// a kernel feature enabled), re-plan with the running config; `None` when nothing changed.
    pub fn reprobe(&mut self, caps: Capabilities) -> Option<Result<Vec<Step>, String>> {
        let changed: Vec<String> = caps
            .results
            .iter()
            .filter(|(c, r)| self.probed.results.get(c).map(|o| o.found) != Some(r.found))
            .map(|(c, r)| format!("{c} {}", if r.found { "appeared" } else { "went away" }))
            .collect();
        if changed.is_empty() && caps.kube_proxy_active == self.probed.kube_proxy_active {
            return None;
        }
        tracing::info!(changes = %changed.join(", "), kube_proxy = caps.kube_proxy_active, "node capabilities changed: re-planning");
        self.probed = caps;
        self.status.last_attempt_unix = super::now_unix();
        Some(self.replan(Ok(self.config.clone()), self.node_config.clone()))
    }

    fn replan(&mut self, base: Result<Config, String>, label: Option<String>) -> Result<Vec<Step>, String> {
        let pin = self.status.migration.clone();
        let attempt = base.and_then(|new| {
            let effective = effective(&new, label.as_deref(), pin.as_ref())?;
            plan_for(&effective, &self.probed).map(|p| (new, p)).map_err(|e| format!("{e:#}"))
        });
        // A label naming nothing valid still counts as seen, so it is not retried every loop.
        self.node_config = label.clone();
        match attempt {
            Ok((new, plan)) => {
                self.status.node_config = label;
                let steps = transition(&self.plan, &plan);
                self.config = new;
                self.plan = plan;
                self.status.generation += 1;
                self.status.rejected = None;
                Ok(steps)
            }
            Err(e) => {
                self.status.rejected = Some(e.clone());
                Err(e)
            }
        }
    }
}

/// `eBPF programs cluster-ip, node-port; iptables removes cluster-ip, node-port`.
fn describe(steps: &[Step]) -> String {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for s in steps {
        let (verb, owner, feature) = match s {
            Step::Program { owner, feature } => ("programs", owner, feature),
            Step::Remove { owner, feature } => ("removes", owner, feature),
        };
        let head = format!("{owner} {verb}");
        match groups.last_mut() {
            Some((h, fs)) if *h == head => fs.push(feature.name()),
            _ => groups.push((head, vec![feature.name()])),
        }
    }
    groups.iter().map(|(h, fs)| format!("{h} {}", fs.join(", "))).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mode_keys_change_at_runtime() {
        let old = sluice_config::from_yaml_str("node_name: node-1").expect("cfg");
        let mut new = old.clone();
        new.dataplane = sluice_core::DataplaneMode::IPTABLES;
        assert!(runtime_changeable(&old, &new).is_ok());
        new.node_name = "node-2".into();
        new.masquerade = false;
        let e = runtime_changeable(&old, &new).expect_err("immutable");
        assert!(
            e.starts_with("node_name, masquerade cannot change")
                || e.starts_with("masquerade, node_name cannot change"),
            "{e}"
        );
    }

    #[test]
    fn reload_applies_valid_and_rejects_invalid() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "node_name: node-1\ndataplane: iptables\n").expect("write");
        let source = ConfigSource { path: Some(path.clone()), flags: serde_json::json!({}) };
        let cfg = sluice_config::load(Some(&path), None).expect("cfg");
        let mut p = Planner::new(source, Capabilities::all_present(), cfg).expect("planner");
        assert_eq!(p.plan.owner(sluice_core::Feature::ClusterIp), sluice_core::Owner::IPTABLES);

        std::fs::write(&path, "node_name: node-1\ndataplane: iptables\nkube_proxy_replacement: disabled\n")
            .expect("write");
        let steps = p.reload().expect("valid reload");
        assert!(matches!(steps.first(), Some(Step::Remove { owner: sluice_core::Owner::IPTABLES, .. })), "{steps:?}");
        assert_eq!(p.status.generation, 2);

        std::fs::write(&path, "node_name: node-1\ndataplane: warp\n").expect("write");
        let e = p.reload().expect_err("invalid");
        assert!(e.contains("warp"), "{e}");
        assert_eq!(p.plan.owner(sluice_core::Feature::ClusterIp), sluice_core::Owner::KubeProxy, "old plan kept");
        assert_eq!(p.status.generation, 2);
        assert!(p.status.rejected.as_deref().is_some_and(|r| r.contains("warp")));

        // A strict config that the node cannot serve is rejected too.
        std::fs::write(&path, "node_name: node-1\nkube_proxy_replacement: strict\ndataplane: ebpf\nprobes:\n  assume_missing: [tc-attach]\n").expect("write");
        let e = p.reload().expect_err("strict");
        assert!(e.contains("strict") && e.contains("cluster-ip") && e.contains("no tc attach"), "{e}");
    }
}
