use std::sync::{Arc, Mutex};

use super::*;
use crate::dataplane::NodeContext;
use crate::plan::{DataplaneMode, KprMode, PlanEntry, Reason};
use crate::service::Service;
use crate::testing::{Call, FakeDataplane, ServiceBuilder, backend};
use crate::view::ServiceView;

const A: BackendId = BackendId::new("fast");
const B: BackendId = BackendId::new("slow");

fn plan_with(owner: impl Fn(Feature) -> Owner) -> Plan {
    Plan {
        mode: KprMode::Probe,
        dataplane: DataplaneMode::Auto,
        entries: Feature::ALL
            .into_iter()
            .map(|feature| PlanEntry {
                feature,
                owner: owner(feature),
                reason: Reason::Dataplane { dataplane: DataplaneMode::Auto },
                fallback: None,
            })
            .collect(),
        tc_attach: crate::TcAttach::Tcx,
        warnings: Vec::new(),
    }
}

struct Rig {
    engine: Engine,
    log: Arc<Mutex<Vec<Call>>>,
    fail_b: Arc<Mutex<BTreeSet<Feature>>>,
    kernel_a: Arc<Mutex<BTreeMap<crate::ServiceName, BTreeSet<Feature>>>>,
    holes_a: Arc<Mutex<Vec<crate::dataplane::Hole>>>,
    before_breaks_a: crate::testing::BeforeBreaks,
}

fn rig(restored_a: BTreeSet<Feature>) -> Rig {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut a = FakeDataplane::new(A, log.clone());
    a.restored = restored_a;
    let b = FakeDataplane::new(B, log.clone());
    let (fail_b, kernel_a, holes_a) = (b.fail.clone(), a.kernel.clone(), a.holes.clone());
    let before_breaks_a = a.before_breaks.clone();
    let mut engine = Engine::new(vec![Box::new(a), Box::new(b)]);
    assert!(engine.restore().is_empty());
    Rig { engine, log, fail_b, kernel_a, holes_a, before_breaks_a }
}

fn services() -> Vec<Service> {
    ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            ServiceBuilder::new("default", n)
                .cluster_ip(&format!("10.96.0.{}", i + 1), 80)
                .backend(backend("10.244.1.2", 8080, "node-1"))
                .build()
        })
        .collect()
}

const SYNCED: SourceSync = SourceSync { synced: true, complete: true };

fn pass(r: &mut Rig, plan: &Plan, svcs: &[Service], sync: SourceSync) -> PassReport {
    let node = NodeContext { name: "node-1".into(), ..Default::default() };
    let view = ServiceView::new("node-1", svcs, &[]);
    let pv = crate::policy::PolicyView::default();
    let desired =
        Desired { generation: 1, view: &view, local_endpoints: &[], node: &node, policy: &pv, l7_listener: None };
    r.engine.reconcile(plan, &desired, sync)
}

fn calls(r: &Rig) -> Vec<Call> {
    r.log.lock().map(|l| l.clone()).unwrap_or_default()
}

/// For every feature, in both directions: the new owner's call that programs it comes before
/// the old owner's call without it, and after every call someone serves it.
#[test]
fn make_before_break_for_every_feature_both_ways() {
    for f in Feature::ALL {
        for (from, to) in [(A, B), (B, A)] {
            let mut r = rig(BTreeSet::new());
            let svcs = services();
            let before = plan_with(|g| if g == f { Owner::Backend(from) } else { Owner::KubeProxy });
            let after = plan_with(|g| if g == f { Owner::Backend(to) } else { Owner::KubeProxy });
            let first = pass(&mut r, &before, &svcs, SYNCED);
            assert!(r.engine.serving(from).contains(&f));
            assert!(first.moved.is_empty(), "programming from nothing is not a move: {:?}", first.moved);
            let start = calls(&r).len();
            let rep = pass(&mut r, &after, &svcs, SYNCED);
            let log = calls(&r)[start..].to_vec();
            let made = log.iter().position(|c| c.backend == to && c.owned.contains(&f)).expect("new owner called");
            let broke =
                log.iter().position(|c| c.backend == from && !c.owned.contains(&f)).expect("old owner released");
            assert!(made < broke, "{f}: {from:?} -> {to:?}: {log:?}");
            // The old owner kept the feature in every call before the new owner's.
            assert!(log[..made].iter().filter(|c| c.backend == from).all(|c| c.owned.contains(&f)), "{f}: {log:?}");
            assert!(r.engine.serving(to).contains(&f) && !r.engine.serving(from).contains(&f));
            let st = rep.features.iter().find(|s| s.feature == f).expect("state");
            assert_eq!(st.progress, Progress::Serving);
            assert_eq!(rep.calls, 3, "new owner once, old owner twice (keep, then release)");
            assert_eq!(rep.moved, BTreeSet::from([f]), "the settle hook hears of the move");
            // Every backend hears of the coming break once, after the make and before the break.
            let bb = r.before_breaks_a.lock().map(|b| b.clone()).unwrap_or_default();
            assert_eq!(bb.len(), 1, "{f}: {bb:?}");
            assert_eq!(bb[0].1, BTreeSet::from([f]));
            assert!(start + made < bb[0].0 && bb[0].0 <= start + broke, "{f}: {bb:?} vs {log:?}");
        }
    }
}

#[test]
fn failing_new_owner_leaves_the_feature_with_the_old_one() {
    let mut r = rig(BTreeSet::new());
    let svcs = services();
    let on_a = plan_with(|f| if f.is_kube_proxy_feature() { Owner::Backend(A) } else { Owner::Off });
    let on_b = plan_with(|f| if f.is_kube_proxy_feature() { Owner::Backend(B) } else { Owner::Off });
    pass(&mut r, &on_a, &svcs, SYNCED);
    r.fail_b.lock().expect("lock").insert(Feature::NodePort);
    let rep = pass(&mut r, &on_b, &svcs, SYNCED);
    assert!(r.engine.serving(A).contains(&Feature::NodePort), "old owner keeps what the new one failed");
    assert!(!r.engine.serving(A).contains(&Feature::ClusterIp), "what moved is released");
    let np = rep.features.iter().find(|s| s.feature == Feature::NodePort).expect("np");
    assert_eq!(np.progress, Progress::Moving { kept_by: vec![A] });
    assert!(rep.errors.iter().any(|e| e.to_string().contains("node-port refused")), "{:?}", rep.errors);
    let step = Step::Remove { feature: Feature::NodePort, owner: Owner::Backend(A) };
    assert_eq!(r.engine.step_state(&step), StepState::Waiting);
    // Every later pass keeps it there while the failure lasts; the kernel entries stay.
    pass(&mut r, &on_b, &svcs, SYNCED);
    assert!(r.kernel_a.lock().expect("lock").values().all(|f| f.contains(&Feature::NodePort)));
    // The new owner recovers: the next pass completes the move.
    r.fail_b.lock().expect("lock").clear();
    let rep = pass(&mut r, &on_b, &svcs, SYNCED);
    assert!(rep.features.iter().all(|s| matches!(s.progress, Progress::Serving | Progress::NotSluice)), "{rep:?}");
    assert!(r.engine.serving(A).is_empty());
    assert_eq!(r.engine.step_state(&step), StepState::Done);
}

#[test]
fn failure_with_no_previous_owner_is_reported_failed() {
    let mut r = rig(BTreeSet::new());
    r.fail_b.lock().expect("lock").insert(Feature::ClusterIp);
    let plan = plan_with(|f| if f == Feature::ClusterIp { Owner::Backend(B) } else { Owner::KubeProxy });
    let rep = pass(&mut r, &plan, &services(), SYNCED);
    let st = rep.features.iter().find(|s| s.feature == Feature::ClusterIp).expect("state");
    assert_eq!(st.progress, Progress::Failed);
}

#[test]
fn moving_to_kube_proxy_releases_at_once() {
    let mut r = rig(BTreeSet::new());
    let svcs = services();
    pass(&mut r, &plan_with(|_| Owner::Backend(A)), &svcs, SYNCED);
    let rep = pass(&mut r, &plan_with(|_| Owner::KubeProxy), &svcs, SYNCED);
    assert!(r.engine.serving(A).is_empty());
    assert!(rep.features.iter().all(|s| s.progress == Progress::NotSluice));
}

#[test]
fn restored_state_moves_make_before_break_after_a_restart() {
    // A previous agent left every Service feature on A; the new plan says B.
    let restored: BTreeSet<Feature> = Feature::SERVICES.into_iter().collect();
    let mut r = rig(restored.clone());
    r.fail_b.lock().expect("lock").insert(Feature::LoadBalancer);
    let plan = plan_with(|f| if f.is_kube_proxy_feature() { Owner::Backend(B) } else { Owner::Off });
    pass(&mut r, &plan, &services(), SYNCED);
    assert_eq!(r.engine.serving(A), BTreeSet::from([Feature::LoadBalancer]));
    let log = calls(&r);
    let first_a = log.iter().find(|c| c.backend == A).expect("a called");
    assert_eq!(first_a.owned, restored, "the restored owner keeps everything until B serves it");
}

#[test]
fn prune_gate_unsynced_and_incomplete() {
    for sync in [
        SourceSync { synced: false, complete: false },
        SourceSync { synced: true, complete: false },
        SourceSync { synced: false, complete: true },
    ] {
        let mut r = rig(BTreeSet::new());
        let plan = plan_with(|_| Owner::Backend(A));
        pass(&mut r, &plan, &services(), SYNCED);
        // The next read lacks Service b: not synced or incomplete, so it must stay.
        let fewer: Vec<Service> = services().into_iter().take(1).collect();
        let rep = pass(&mut r, &plan, &fewer, sync);
        assert!(!rep.prune, "{sync:?}");
        assert!(calls(&r).last().is_some_and(|c| !c.prune), "{sync:?}");
        assert_eq!(r.kernel_a.lock().expect("lock").len(), 2, "{sync:?}: nothing pruned");
        // Once a complete read follows, the missing Service goes.
        pass(&mut r, &plan, &fewer, SYNCED);
        assert_eq!(r.kernel_a.lock().expect("lock").len(), 1, "{sync:?}: pruned after sync");
    }
}

#[test]
fn steady_state_calls_each_backend_once() {
    let mut r = rig(BTreeSet::new());
    let plan = plan_with(|f| if f == Feature::NodePort { Owner::Backend(B) } else { Owner::Backend(A) });
    let svcs = services();
    pass(&mut r, &plan, &svcs, SYNCED);
    let rep = pass(&mut r, &plan, &svcs, SYNCED);
    assert_eq!(rep.calls, 2);
}

/// One interface the owner cannot serve: the fallback backend serves the feature too, in the
/// same pass, and drops it once the hole closes; the owner keeps it throughout.
#[test]
fn a_hole_on_one_interface_is_covered_by_the_fallback_until_it_closes() {
    let mut r = rig(BTreeSet::new());
    let svcs = services();
    let mut plan = plan_with(|f| if f.is_kube_proxy_feature() { Owner::Backend(A) } else { Owner::Off });
    for e in plan.entries.iter_mut().filter(|e| e.owner == Owner::Backend(A)) {
        e.fallback = Some(B);
    }
    let hole = crate::dataplane::Hole { interface: "veth1".into(), features: BTreeSet::from([Feature::ClusterIp]) };
    *r.holes_a.lock().expect("lock") = vec![hole];
    let rep = pass(&mut r, &plan, &svcs, SYNCED);
    assert!(r.engine.serving(A).contains(&Feature::ClusterIp), "the owner keeps serving its other interfaces");
    assert_eq!(r.engine.serving(B), BTreeSet::from([Feature::ClusterIp]), "only the holed feature falls back");
    let st = rep.features.iter().find(|s| s.feature == Feature::ClusterIp).expect("state");
    assert_eq!(st.progress, Progress::Serving);
    assert_eq!(st.holes, vec![HoleState { interface: "veth1".into(), covered_by: Some(B) }]);
    let np = rep.features.iter().find(|s| s.feature == Feature::NodePort).expect("state");
    assert!(np.holes.is_empty());
    // Without a fallback the hole is reported uncovered.
    let mut bare = plan.clone();
    bare.entries.iter_mut().for_each(|e| e.fallback = None);
    let rep = pass(&mut r, &bare, &svcs, SYNCED);
    let st = rep.features.iter().find(|s| s.feature == Feature::ClusterIp).expect("state");
    assert_eq!(st.holes, vec![HoleState { interface: "veth1".into(), covered_by: None }]);
    assert!(!r.engine.serving(B).contains(&Feature::ClusterIp));
    // The hole closes: the fallback lets go in the next pass, the owner still serves.
    pass(&mut r, &plan, &svcs, SYNCED);
    assert!(r.engine.serving(B).contains(&Feature::ClusterIp));
    r.holes_a.lock().expect("lock").clear();
    let start = calls(&r).len();
    let rep = pass(&mut r, &plan, &svcs, SYNCED);
    assert!(r.engine.serving(B).is_empty(), "{:?}", calls(&r)[start..].to_vec());
    assert!(r.engine.serving(A).contains(&Feature::ClusterIp));
    assert!(rep.features.iter().all(|s| s.holes.is_empty()));
}

/// kube-proxy -> a backend: no backend of ours held the features, yet it is a change of
/// dataplane. Every backend hears of it before the new owner's make (kube-proxy's rules stop
/// seeing new flows at that moment) and the settle hook hears of the move after it.
#[test]
fn taking_features_from_kube_proxy_is_a_move() {
    let mut r = rig(BTreeSet::new());
    let svcs = services();
    let kube_proxy = plan_with(|f| if f.is_kube_proxy_feature() { Owner::KubeProxy } else { Owner::Off });
    let on_a = plan_with(|f| if f.is_kube_proxy_feature() { Owner::Backend(A) } else { Owner::Off });
    let first = pass(&mut r, &kube_proxy, &svcs, SYNCED);
    assert!(first.moved.is_empty());
    let start = calls(&r).len();
    let rep = pass(&mut r, &on_a, &svcs, SYNCED);
    let taken: BTreeSet<Feature> = Feature::SERVICES.into_iter().collect();
    assert_eq!(rep.moved, taken, "the settle hook hears of the move");
    let bb = r.before_breaks_a.lock().map(|b| b.clone()).unwrap_or_default();
    assert_eq!(bb.len(), 1, "{bb:?}");
    assert_eq!(bb[0], (start, taken), "heard before the new owner's make");
    // Once taken, the next pass is no move.
    let again = pass(&mut r, &on_a, &svcs, SYNCED);
    assert!(again.moved.is_empty(), "{:?}", again.moved);
}

/// kube-proxy <-> a backend that translates in netfilter as kube-proxy does: no settle either
/// way (it would only disturb live connections).
#[test]
fn kube_proxy_and_a_netfilter_backend_trade_features_without_a_settle() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut a = FakeDataplane::new(A, log.clone());
    a.netfilter = true;
    let bb = a.before_breaks.clone();
    let mut r = Rig {
        engine: Engine::new(vec![Box::new(a)]),
        log,
        fail_b: Arc::default(),
        kernel_a: Arc::default(),
        holes_a: Arc::default(),
        before_breaks_a: bb.clone(),
    };
    let svcs = services();
    let kube_proxy = plan_with(|f| if f.is_kube_proxy_feature() { Owner::KubeProxy } else { Owner::Off });
    let on_a = plan_with(|f| if f.is_kube_proxy_feature() { Owner::Backend(A) } else { Owner::Off });
    pass(&mut r, &kube_proxy, &svcs, SYNCED);
    let took = pass(&mut r, &on_a, &svcs, SYNCED);
    assert!(took.moved.is_empty() && r.engine.serving(A).contains(&Feature::ClusterIp), "{:?}", took.moved);
    let gave = pass(&mut r, &kube_proxy, &svcs, SYNCED);
    assert!(gave.moved.is_empty() && !r.engine.serving(A).contains(&Feature::ClusterIp), "{:?}", gave.moved);
    assert!(bb.lock().map(|b| b.is_empty()).unwrap_or(false), "no word before a break");
}
