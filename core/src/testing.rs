//! Test utilities shared by every crate's tests (feature `testing`): one Service builder, and a
//! recording [`FakeDataplane`] for the engine's orderings, failures and the prune gate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::caps::Capability;
use crate::dataplane::{
    CleanupReport, Dataplane, DataplaneError, Desired, ObjectError, ObjectRef, Op, Report, Restored,
};
use crate::plan::Feature;
use crate::registry::{BackendId, BackendSpec};
use crate::service::{Backend, BackendState, Frontend, FrontendKind, Protocol, Service, ServiceName};

/// An active TCP backend on `node`, port name `http`.
pub fn backend(ip: &str, port: u16, node: &str) -> Backend {
    Backend {
        ip: ip.parse().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        port,
        port_name: "http".into(),
        protocol: Protocol::Tcp,
        state: BackendState::Active,
        node: (!node.is_empty()).then(|| node.to_string()),
    }
}

/// The same backend, terminating.
pub fn terminating(mut b: Backend) -> Backend {
    b.state = BackendState::Terminating;
    b
}

/// Builds a [`Service`]: frontends on port name `http`, TCP unless `.protocol()` says otherwise.
#[derive(Debug, Clone)]
pub struct ServiceBuilder {
    svc: Service,
    protocol: Protocol,
}

impl ServiceBuilder {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceBuilder {
            svc: Service {
                name: ServiceName { namespace: namespace.into(), name: name.into() },
                frontends: Vec::new(),
                backends: Vec::new(),
                affinity_timeout_s: None,
                external_local: false,
                internal_local: false,
                source_ranges: Vec::new(),
                health_check_node_port: None,
            },
            protocol: Protocol::Tcp,
        }
    }

    /// Protocol of the frontends added after this call, and of every backend.
    pub fn protocol(mut self, p: Protocol) -> Self {
        self.protocol = p;
        self
    }

    fn frontend(mut self, kind: FrontendKind, ip: Option<&str>, port: u16) -> Self {
        let target_port = self.svc.backends.first().map(|b| b.port).unwrap_or(port);
        self.svc.frontends.push(Frontend {
            kind,
            ip: ip.and_then(|i| i.parse().ok()),
            port,
            protocol: self.protocol,
            port_name: "http".into(),
            target_port,
        });
        self
    }

    pub fn cluster_ip(self, ip: &str, port: u16) -> Self {
        self.frontend(FrontendKind::ClusterIp, Some(ip), port)
    }

    pub fn node_port(self, port: u16) -> Self {
        self.frontend(FrontendKind::NodePort, None, port)
    }

    pub fn external_ip(self, ip: &str, port: u16) -> Self {
        self.frontend(FrontendKind::ExternalIp, Some(ip), port)
    }

    pub fn load_balancer(self, ip: &str, port: u16) -> Self {
        self.frontend(FrontendKind::LoadBalancer, Some(ip), port)
    }

    pub fn backend(mut self, mut b: Backend) -> Self {
        b.protocol = self.protocol;
        self.svc.backends.push(b);
        self
    }

    pub fn affinity(mut self, timeout_s: u32) -> Self {
        self.svc.affinity_timeout_s = Some(timeout_s);
        self
    }

    pub fn external_local(mut self) -> Self {
        self.svc.external_local = true;
        self
    }

    pub fn internal_local(mut self) -> Self {
        self.svc.internal_local = true;
        self
    }

    pub fn source_range(mut self, cidr: &str) -> Self {
        if let Ok(c) = cidr.parse() {
            self.svc.source_ranges.push(c);
        }
        self
    }

    pub fn health_check_node_port(mut self, port: u16) -> Self {
        self.svc.health_check_node_port = Some(port);
        self
    }

    pub fn build(mut self) -> Service {
        // A frontend added before its backends maps to the backends' port.
        if let Some(p) = self.svc.backends.first().map(|b| b.port) {
            for fe in &mut self.svc.frontends {
                fe.target_port = p;
            }
        }
        self.svc
    }
}

/// Spec of a test backend implementing every feature, needing `needs` for each.
pub fn spec(id: BackendId, needs: fn(Feature) -> Option<&'static [Capability]>) -> BackendSpec {
    BackendSpec { id, needs, policy_needs_own_translation: false }
}

/// Each `before_break` a [`FakeDataplane`] heard: how many calls its log held then, and the
/// features moving.
pub type BeforeBreaks = Arc<Mutex<Vec<(usize, BTreeSet<Feature>)>>>;

/// One call a [`FakeDataplane`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub backend: BackendId,
    pub owned: BTreeSet<Feature>,
    pub prune: bool,
    pub services: Vec<ServiceName>,
}

/// A backend that keeps its "kernel" in memory: per Service, which features it programmed.
/// Features in `fail` cannot be programmed (their previous state stays, as a real backend's
/// would after a refused write).
pub struct FakeDataplane {
    pub id: BackendId,
    pub log: Arc<Mutex<Vec<Call>>>,
    pub fail: Arc<Mutex<BTreeSet<Feature>>>,
    pub kernel: Arc<Mutex<BTreeMap<ServiceName, BTreeSet<Feature>>>>,
    pub restored: BTreeSet<Feature>,
    /// Holes to report (for the features owned in the call).
    pub holes: Arc<Mutex<Vec<crate::dataplane::Hole>>>,
    pub before_breaks: BeforeBreaks,
    /// What `translates_in_netfilter` answers.
    pub netfilter: bool,
    serving: BTreeSet<Feature>,
}

impl FakeDataplane {
    pub fn new(id: BackendId, log: Arc<Mutex<Vec<Call>>>) -> Self {
        FakeDataplane {
            id,
            log,
            fail: Arc::default(),
            kernel: Arc::default(),
            restored: BTreeSet::new(),
            holes: Arc::default(),
            before_breaks: Arc::default(),
            netfilter: false,
            serving: BTreeSet::new(),
        }
    }
}

fn all(_: Feature) -> Option<&'static [Capability]> {
    Some(&[])
}

impl Dataplane for FakeDataplane {
    fn spec(&self) -> BackendSpec {
        spec(self.id, all)
    }

    fn restore(&mut self) -> Restored {
        self.serving = self.restored.clone();
        Restored { features: self.restored.clone(), ..Default::default() }
    }

    fn reconcile(&mut self, desired: &Desired<'_>, owned: &BTreeSet<Feature>, prune: bool) -> Report {
        let fail = self.fail.lock().map(|f| f.clone()).unwrap_or_default();
        let services: Vec<ServiceName> = desired.view.services.iter().map(|s| s.name.clone()).collect();
        if let Ok(mut log) = self.log.lock() {
            log.push(Call { backend: self.id, owned: owned.clone(), prune, services: services.clone() });
        }
        let mut errors = Vec::new();
        let mut now: BTreeSet<Feature> = owned.difference(&fail).copied().collect();
        for f in owned.intersection(&fail) {
            errors.push(ObjectError {
                object: ObjectRef::Backend,
                error: DataplaneError::Kernel { backend: self.id, op: Op::MapUpdate, detail: format!("{f} refused") },
            });
            if self.serving.contains(f) {
                now.insert(*f);
            }
        }
        let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        let mut changes = 0;
        for s in &services {
            if kernel.insert(s.clone(), now.clone()).as_ref() != Some(&now) {
                changes += 1;
            }
        }
        if prune {
            let before = kernel.len();
            kernel.retain(|name, _| services.contains(name));
            changes += before - kernel.len();
        }
        self.serving = now.clone();
        let holes = self
            .holes
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|mut h| {
                h.features.retain(|f| now.contains(f));
                h
            })
            .filter(|h| !h.features.is_empty())
            .collect();
        Report { programmed: now, changes, errors, holes }
    }

    fn translates_in_netfilter(&self) -> bool {
        self.netfilter
    }

    fn before_break(&mut self, _desired: &Desired<'_>, moving: &BTreeSet<Feature>) -> Vec<ObjectError> {
        let at = self.log.lock().map(|l| l.len()).unwrap_or_default();
        if let Ok(mut b) = self.before_breaks.lock() {
            b.push((at, moving.clone()));
        }
        Vec::new()
    }

    fn cleanup(&mut self) -> CleanupReport {
        let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        let removed = kernel.len();
        kernel.clear();
        self.serving.clear();
        CleanupReport { removed, errors: Vec::new() }
    }

    fn summary(&self) -> String {
        format!("fake {}: serving {}", self.id, self.serving.len())
    }
}
