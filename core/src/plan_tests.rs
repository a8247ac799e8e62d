use super::*;
use crate::testing::spec;

// Two test backends shaped like the real ones (a kernel datapath needing BPF features and
// netfilter needing conntrack); their tables are the tests' own, not the real backends'.
fn kernel_needs(f: Feature) -> Option<&'static [Capability]> {
    use Capability::*;
    Some(match f {
        Feature::ClusterIp | Feature::SessionAffinity => &[ProgSchedCls, MapLruHash, TcAttach],
        Feature::NodePort
        | Feature::ExternalIps
        | Feature::LoadBalancer
        | Feature::HostPort
        | Feature::TrafficPolicyLocal
        | Feature::HealthCheckNodePort => &[ProgSchedCls, MapLruHash, TcAttach, HelperFibLookup],
        Feature::SocketLbTcp => &[CgroupV2, AttachCgroupConnect4],
        Feature::SocketLbUdp => &[CgroupV2, AttachCgroupSendmsg4, AttachCgroupRecvmsg4],
        Feature::SourceRanges => &[ProgSchedCls, TcAttach, MapLpmTrie],
        Feature::Policy => &[ProgSchedCls, MapLpmTrie],
        Feature::Flows => &[ProgSchedCls, MapRingbuf],
    })
}

fn netfilter_needs(f: Feature) -> Option<&'static [Capability]> {
    use Capability::*;
    Some(match f {
        Feature::Policy => &[Iptables, Conntrack, Ipset],
        Feature::Flows => &[Iptables],
        _ => &[Iptables, Conntrack],
    })
}

fn none(_: Feature) -> Option<&'static [Capability]> {
    None
}

fn only_cluster_ip(f: Feature) -> Option<&'static [Capability]> {
    matches!(f, Feature::ClusterIp | Feature::SessionAffinity).then_some(&[Capability::Iptables][..])
}

fn services_only(f: Feature) -> Option<&'static [Capability]> {
    if f.is_kube_proxy_feature() { kernel_needs(f) } else { None }
}

fn backends() -> [BackendSpec; 2] {
    [spec(BackendId::EBPF, kernel_needs), spec(BackendId::IPTABLES, netfilter_needs)]
}

fn needs(f: Feature, b: &BackendSpec) -> &'static [Capability] {
    (b.needs)(f).unwrap_or_default()
}

fn caps_without(c: Option<Capability>) -> Capabilities {
    let caps = Capabilities::all_present();
    match c {
        Some(c) => caps.assume_missing(&[c]),
        None => caps,
    }
}

fn input<'a>(
    caps: &'a Capabilities,
    mode: KprMode,
    partial_features: &'a [Feature],
    dataplane: DataplaneMode,
    backends: &'a [BackendSpec],
) -> PlanInput<'a> {
    static NONE: std::sync::LazyLock<std::collections::BTreeMap<Feature, DataplaneMode>> =
        std::sync::LazyLock::new(Default::default);
    PlanInput { caps, mode, partial_features, dataplane, dataplane_features: &NONE, backends, disabled: &[] }
}

fn plan(mode: KprMode, d: DataplaneMode, missing: Option<Capability>) -> Result<Plan, PlanError> {
    let caps = caps_without(missing);
    let all: Vec<Feature> = Feature::ALL.into_iter().filter(|f| f.is_kube_proxy_feature()).collect();
    compute(&input(&caps, mode, &all, d, &backends()))
}

const MODES: [KprMode; 4] = [KprMode::Disabled, KprMode::Partial, KprMode::Probe, KprMode::Strict];
const DATAPLANES: [DataplaneMode; 3] = [DataplaneMode::Auto, DataplaneMode::EBPF, DataplaneMode::IPTABLES];

/// Every mode x dataplane x single missing capability: the plan never gives a feature to a
/// backend lacking what it needs, strict fails exactly when some feature is unservable, and
/// every non-default owner carries a reason.
#[test]
fn exhaustive_mode_dataplane_missing_capability() {
    let missings: Vec<Option<Capability>> =
        std::iter::once(None).chain(Capability::ALL.into_iter().map(Some)).collect();
    for mode in MODES {
        for d in DATAPLANES {
            for m in &missings {
                let caps = caps_without(*m);
                let ctx = format!("mode={mode:?} dataplane={d:?} missing={m:?}");
                let bs = backends();
                let servable = |f: Feature| candidates(d, &bs).iter().any(|b| missing(&caps, needs(f, b)).is_empty());
                // Strict and partial promise the kube-proxy features only.
                let any_unservable = Feature::SERVICES.into_iter().any(|f| !servable(f));
                match plan(mode, d, *m) {
                    Err(e) => {
                        assert!(
                            matches!(mode, KprMode::Strict | KprMode::Partial),
                            "{ctx}: only strict/partial fail, got {e}"
                        );
                        assert!(any_unservable, "{ctx}: failed although every feature is servable: {e}");
                        let cap = m.expect("a failure needs a missing capability");
                        assert!(
                            e.to_string().contains(cap.describe()),
                            "{ctx}: error must name {}: {e}",
                            cap.describe()
                        );
                    }
                    Ok(p) => {
                        if mode == KprMode::Strict {
                            assert!(!any_unservable, "{ctx}: strict must refuse an unservable feature");
                        }
                        assert_eq!(p.entries.len(), Feature::ALL.len());
                        for e in &p.entries {
                            match e.owner {
                                Owner::Backend(id) => {
                                    let b = bs.iter().find(|b| b.id == id).expect("registered");
                                    assert!(missing(&caps, needs(e.feature, b)).is_empty(), "{ctx}: {e:?}");
                                    assert!(d == DataplaneMode::Auto || d == DataplaneMode::Only(id), "{ctx}: {e:?}");
                                }
                                Owner::KubeProxy => assert!(e.feature.is_kube_proxy_feature(), "{ctx}: {e:?}"),
                                Owner::Off => assert!(!e.feature.is_kube_proxy_feature(), "{ctx}: {e:?}"),
                            }
                            assert!(!e.reason.to_string().is_empty(), "{ctx}: {e:?} has no reason");
                            if mode == KprMode::Disabled && e.feature.is_kube_proxy_feature() {
                                assert_eq!(e.owner, Owner::KubeProxy, "{ctx}");
                            }
                            if let Some(base) = e.feature.base() {
                                assert_eq!(e.owner, p.owner(base), "{ctx}: {} must follow {}", e.feature, base);
                            }
                        }
                        // Under auto with nothing missing, everything is eBPF.
                        if d == DataplaneMode::Auto && m.is_none() && mode != KprMode::Disabled {
                            assert!(p.entries.iter().all(|e| e.owner == Owner::EBPF), "{ctx}: {p:?}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn missing_fib_lookup_per_mode_as_the_issue_states() {
    let m = Some(Capability::HelperFibLookup);
    let auto = plan(KprMode::Probe, DataplaneMode::Auto, m).expect("probe auto");
    assert_eq!(auto.owner(Feature::NodePort), Owner::IPTABLES);
    assert_eq!(auto.owner(Feature::ClusterIp), Owner::EBPF);
    let np = auto.entries.iter().find(|e| e.feature == Feature::NodePort).expect("np");
    assert_eq!(np.reason.to_string(), "eBPF: no bpf_fib_lookup");
    assert!(
        matches!(&np.reason, Reason::FellBack { passed_over } if passed_over[0].missing == [Capability::HelperFibLookup])
    );

    let probe_ebpf = plan(KprMode::Probe, DataplaneMode::EBPF, m).expect("probe ebpf");
    assert_eq!(probe_ebpf.owner(Feature::NodePort), Owner::KubeProxy);
    assert_eq!(probe_ebpf.owner(Feature::HealthCheckNodePort), Owner::KubeProxy, "one owner for the health check port");
    assert!(probe_ebpf.warnings.iter().any(|w| w.contains("NodePort left to kube-proxy")), "{:?}", probe_ebpf.warnings);

    let strict = plan(KprMode::Strict, DataplaneMode::EBPF, m).expect_err("strict ebpf");
    assert_eq!(
        strict.to_string(),
        "kube_proxy_replacement=strict: feature node-port cannot be served by eBPF: eBPF: no bpf_fib_lookup; run `sluice probe` to see the node's capabilities, or use kube_proxy_replacement=probe to leave it to kube-proxy"
    );
    // strict + auto: served anyway, by iptables. What no peer offers.
    let strict_auto = plan(KprMode::Strict, DataplaneMode::Auto, m).expect("strict auto");
    assert_eq!(strict_auto.owner(Feature::NodePort), Owner::IPTABLES);
}

#[test]
fn dependents_move_with_their_base() {
    // No LPM trie: source ranges need iptables, so LoadBalancer moves there too.
    let p = plan(KprMode::Probe, DataplaneMode::Auto, Some(Capability::MapLpmTrie)).expect("plan");
    assert_eq!(p.owner(Feature::SourceRanges), Owner::IPTABLES);
    assert_eq!(p.owner(Feature::LoadBalancer), Owner::IPTABLES);
    assert!(
        p.entries.iter().any(|e| e.feature == Feature::LoadBalancer
            && e.reason.to_string().contains("moved to iptables with source-ranges"))
    );
    assert_eq!(p.owner(Feature::Policy), Owner::IPTABLES);
}

#[test]
fn partial_takes_only_listed_features() {
    let caps = Capabilities::all_present();
    let listed = [Feature::NodePort, Feature::HealthCheckNodePort];
    let p = compute(&input(&caps, KprMode::Partial, &listed, DataplaneMode::Auto, &backends())).expect("plan");
    assert_eq!(p.owner(Feature::NodePort), Owner::EBPF);
    assert_eq!(p.owner(Feature::ClusterIp), Owner::KubeProxy);
    assert_eq!(p.owner(Feature::Policy), Owner::EBPF, "policy is sluice's in every mode");
    let e = compute(&input(&caps, KprMode::Partial, &[Feature::SessionAffinity], DataplaneMode::Auto, &backends()))
        .expect_err("base missing");
    assert!(e.to_string().contains("session-affinity needs cluster-ip"), "{e}");
}

#[test]
fn kube_proxy_absence_is_warned() {
    let caps = Capabilities::all_present();
    let p = compute(&input(&caps, KprMode::Disabled, &[], DataplaneMode::Auto, &backends())).expect("plan");
    assert!(p.warnings.iter().any(|w| w.contains("kube-proxy is not running")), "{:?}", p.warnings);
}

#[test]
fn status_line_shows_owner_and_reason() {
    let p = plan(KprMode::Probe, DataplaneMode::Auto, Some(Capability::HelperFibLookup)).expect("plan");
    let line = p.status_line();
    assert!(
        line.starts_with("KubeProxyReplacement: Probe [ClusterIP (eBPF), NodePort (iptables: no bpf_fib_lookup)"),
        "{line}"
    );
}

#[test]
fn transition_is_make_before_break() {
    let ipt = plan(KprMode::Probe, DataplaneMode::IPTABLES, None).expect("iptables");
    let auto = plan(KprMode::Probe, DataplaneMode::Auto, None).expect("auto");
    let steps = transition(&ipt, &auto);
    assert_eq!(steps.len(), 2 * Feature::ALL.len());
    let first_remove = steps.iter().position(|s| matches!(s, Step::Remove { .. })).expect("removes");
    assert!(steps[..first_remove].iter().all(|s| matches!(s, Step::Program { owner: Owner::EBPF, .. })));
    assert!(steps[first_remove..].iter().all(|s| matches!(s, Step::Remove { owner: Owner::IPTABLES, .. })));
    assert!(transition(&auto, &auto).is_empty());
    // To disabled: sluice only removes; kube-proxy takes over.
    let off = plan(KprMode::Disabled, DataplaneMode::Auto, None).expect("disabled");
    assert!(transition(&auto, &off).iter().all(|s| matches!(s, Step::Remove { .. })));
}

#[test]
fn names_round_trip() {
    for f in Feature::ALL {
        assert_eq!(f.name().parse::<Feature>().expect("feature"), f);
    }
    for c in Capability::ALL {
        assert_eq!(c.name().parse::<Capability>().expect("cap"), c);
    }
    let e = "fib".parse::<Capability>().expect_err("unknown");
    assert!(e.to_string().contains("helper-fib-lookup"));
}

#[test]
fn unimplemented_backend_is_never_chosen_and_says_so() {
    let caps = Capabilities::all_present();
    let bs = [spec(BackendId::EBPF, none), spec(BackendId::IPTABLES, only_cluster_ip)];
    let p = compute(&input(&caps, KprMode::Probe, &[], DataplaneMode::Auto, &bs)).expect("plan");
    assert_eq!(p.owner(Feature::ClusterIp), Owner::IPTABLES);
    let e = p.entries.iter().find(|e| e.feature == Feature::ClusterIp).expect("entry");
    assert_eq!(e.reason.to_string(), "eBPF: not implemented in this build");
    assert_eq!(p.owner(Feature::NodePort), Owner::KubeProxy);
    assert_eq!(p.owner(Feature::Policy), Owner::Off);
    let err = compute(&input(&caps, KprMode::Strict, &[], DataplaneMode::EBPF, &bs)).expect_err("strict");
    assert!(err.to_string().contains("not implemented in this build"), "{err}");
}

/// Policy and flows are sluice's own: a build that implements neither still runs strict, and
/// partial with every Service feature listed, on every dataplane.
#[test]
fn strict_needs_only_the_kube_proxy_features() {
    let caps = Capabilities::all_present();
    let bs = [spec(BackendId::EBPF, services_only), spec(BackendId::IPTABLES, services_only)];
    let all: Vec<Feature> = Feature::SERVICES.to_vec();
    for d in DATAPLANES {
        for mode in [KprMode::Strict, KprMode::Partial] {
            let p = compute(&input(&caps, mode, &all, d, &bs)).unwrap_or_else(|e| panic!("{mode:?} {d:?}: {e}"));
            assert_eq!(p.owner(Feature::Policy), Owner::Off);
            assert!(
                matches!(&p.entries.iter().find(|e| e.feature == Feature::Flows).expect("flows").reason, Reason::Unservable { lacks } if lacks.iter().all(|l| l.not_built))
            );
            assert!(Feature::SERVICES.iter().all(|f| matches!(p.owner(*f), Owner::Backend(_))));
        }
    }
}

#[test]
fn unknown_dataplane_names_the_value_and_the_accepted_ones() {
    let caps = Capabilities::all_present();
    let d = DataplaneMode::Only(BackendId::new("nft"));
    let e = compute(&input(&caps, KprMode::Probe, &[], d, &backends())).expect_err("unknown");
    assert_eq!(e.to_string(), "dataplane=nft: no such backend in this build; accepted: auto, ebpf, iptables");
    assert_eq!(
        "bpf".parse::<DataplaneMode>().expect_err("bad"),
        "unknown dataplane \"bpf\"; accepted: auto, ebpf, iptables"
    );
}

#[test]
fn owners_and_reasons_serialize_as_before() {
    let p = plan(KprMode::Probe, DataplaneMode::Auto, Some(Capability::HelperFibLookup)).expect("plan");
    let json = serde_json::to_value(&p).expect("json");
    assert_eq!(json["dataplane"], "auto");
    let np = json["entries"].as_array().and_then(|es| es.iter().find(|e| e["feature"] == "node-port")).expect("np");
    assert_eq!(np["owner"], "iptables");
    assert_eq!(np["reason"]["kind"], "fell-back");
    let back: Plan = serde_json::from_value(json).expect("back");
    assert_eq!(back, p);
}

/// A backend that polices before Service translation gets `policy` only where it also
/// translates ClusterIPs; elsewhere policy is enforced after translation, and the plan says why.
#[test]
fn policy_follows_translation_for_backends_that_police_before_it() {
    let mut kernel = spec(BackendId::EBPF, kernel_needs);
    kernel.policy_needs_own_translation = true;
    let specs = [kernel, spec(BackendId::IPTABLES, netfilter_needs)];
    let all: Vec<Feature> = Feature::SERVICES.to_vec();
    let run = |mode, missing: Option<Capability>| {
        let caps = caps_without(missing);
        compute(&input(&caps, mode, &all, DataplaneMode::Auto, &specs)).expect("plan")
    };
    let p = run(KprMode::Probe, None);
    assert_eq!((p.owner(Feature::ClusterIp), p.owner(Feature::Policy)), (Owner::EBPF, Owner::EBPF));
    // No tc attach at all: ClusterIP goes to iptables, so does policy.
    let p = run(KprMode::Probe, Some(Capability::TcAttach));
    assert_eq!((p.owner(Feature::ClusterIp), p.owner(Feature::Policy)), (Owner::IPTABLES, Owner::IPTABLES));
    let e = p.entries.iter().find(|e| e.feature == Feature::Policy).expect("entry");
    assert!(matches!(e.reason, Reason::AfterTranslation { passed: BackendId::EBPF, translator: Owner::IPTABLES }));
    assert!(e.reason.to_string().contains("enforced after it"), "{}", e.reason);
    // kube-proxy translates: policy in netfilter, after its DNAT.
    let p = run(KprMode::Disabled, None);
    assert_eq!((p.owner(Feature::ClusterIp), p.owner(Feature::Policy)), (Owner::KubeProxy, Owner::IPTABLES));
}

#[test]
fn without_tcx_the_tc_features_stay_on_ebpf_through_classic_tc() {
    let specs = [spec(BackendId::EBPF, kernel_needs), spec(BackendId::IPTABLES, netfilter_needs)];
    let all: Vec<Feature> = Feature::SERVICES.to_vec();
    let caps = caps_without(Some(Capability::Tcx));
    assert!(caps.results[&Capability::TcAttach].found, "{:?}", caps.results[&Capability::TcAttach]);
    let p = compute(&input(&caps, KprMode::Probe, &all, DataplaneMode::Auto, &specs)).expect("plan");
    assert_eq!(p.tc_attach, crate::TcAttach::Classic);
    assert_eq!(p.owner(Feature::ClusterIp), Owner::EBPF);
    assert_eq!(p.owner(Feature::NodePort), Owner::EBPF);
    // Neither path: the tc features leave eBPF, the reason names what is missing.
    let caps = Capabilities::all_present().assume_missing(&[Capability::Tcx, Capability::TcClsact]);
    let p = compute(&input(&caps, KprMode::Probe, &all, DataplaneMode::Auto, &specs)).expect("plan");
    assert_eq!(p.tc_attach, crate::TcAttach::None);
    assert_eq!(p.owner(Feature::ClusterIp), Owner::IPTABLES);
    let e = p.entries.iter().find(|e| e.feature == Feature::ClusterIp).expect("entry");
    assert!(e.reason.to_string().contains("no tc attach"), "{}", e.reason);
    // Hiding tc-attach itself hides both paths, whatever the kernel has.
    let caps = Capabilities::all_present().assume_missing(&[Capability::TcAttach]);
    assert_eq!(caps.tc_attach(), crate::TcAttach::None);
    assert!(caps.has(Capability::Tcx), "the probed paths stay visible in `sluice probe`");
    assert!(!caps.has(Capability::TcAttach));
}

#[test]
fn every_backend_owned_feature_names_a_fallback_for_holes_even_under_a_named_dataplane() {
    let specs = [spec(BackendId::EBPF, kernel_needs), spec(BackendId::IPTABLES, netfilter_needs)];
    let all: Vec<Feature> = Feature::SERVICES.to_vec();
    for d in [DataplaneMode::Auto, DataplaneMode::Only(BackendId::EBPF)] {
        let caps = caps_without(None);
        let p = compute(&input(&caps, KprMode::Probe, &all, d, &specs)).expect("plan");
        assert_eq!(p.owner(Feature::ClusterIp), Owner::EBPF);
        assert_eq!(p.fallback(Feature::ClusterIp), Some(BackendId::IPTABLES), "{d:?}");
        assert_eq!(p.fallback(Feature::NodePort), Some(BackendId::IPTABLES), "{d:?}");
    }
    // No netfilter: nobody to fall back to (the hole is reported uncovered).
    let caps = caps_without(Some(Capability::Iptables));
    let p = compute(&input(&caps, KprMode::Probe, &all, DataplaneMode::Auto, &specs)).expect("plan");
    assert_eq!(p.owner(Feature::ClusterIp), Owner::EBPF);
    assert_eq!(p.fallback(Feature::ClusterIp), None);
    // kube-proxy's features have no fallback.
    let p = compute(&input(&caps_without(None), KprMode::Disabled, &all, DataplaneMode::Auto, &specs)).expect("plan");
    assert_eq!(p.fallback(Feature::ClusterIp), None);
}

#[test]
fn dataplane_features_put_one_feature_and_its_followers_on_another_backend() {
    let specs = [spec(BackendId::EBPF, kernel_needs), spec(BackendId::IPTABLES, netfilter_needs)];
    let all: Vec<Feature> = Feature::SERVICES.to_vec();
    let caps = caps_without(None);
    let per: std::collections::BTreeMap<Feature, DataplaneMode> = [(Feature::NodePort, DataplaneMode::IPTABLES)].into();
    let mut i = input(&caps, KprMode::Probe, &all, DataplaneMode::Auto, &specs);
    i.dataplane_features = &per;
    let p = compute(&i).expect("plan");
    assert_eq!(p.owner(Feature::ClusterIp), Owner::EBPF);
    assert_eq!(p.owner(Feature::NodePort), Owner::IPTABLES);
    // Followers go with their base unless named themselves.
    assert_eq!(p.owner(Feature::TrafficPolicyLocal), Owner::IPTABLES);
    let e = p.entries.iter().find(|e| e.feature == Feature::NodePort).expect("entry");
    assert_eq!(e.reason, Reason::Dataplane { dataplane: DataplaneMode::IPTABLES });
    // The named backend lacking a capability: the same rules as `dataplane` (probe: kube-proxy).
    let caps = caps_without(Some(Capability::Iptables));
    let mut i = input(&caps, KprMode::Probe, &all, DataplaneMode::Auto, &specs);
    i.dataplane_features = &per;
    let p = compute(&i).expect("plan");
    assert_eq!(p.owner(Feature::NodePort), Owner::KubeProxy);
    assert_eq!(p.owner(Feature::ClusterIp), Owner::EBPF);
}

#[test]
fn a_feature_turned_off_in_the_config_is_off_with_the_key() {
    let caps = caps_without(None);
    let all: Vec<Feature> = Feature::ALL.into_iter().filter(|f| f.is_kube_proxy_feature()).collect();
    let b = backends();
    let on = compute(&input(&caps, KprMode::Probe, &all, DataplaneMode::Auto, &b)).expect("plan");
    let flows = |p: &Plan| p.entries.iter().find(|e| e.feature == Feature::Flows).cloned().expect("flows");
    assert_ne!(flows(&on).owner, Owner::Off);
    let off = [(Feature::Flows, "flows.enabled")];
    let p = compute(&PlanInput { disabled: &off, ..input(&caps, KprMode::Probe, &all, DataplaneMode::Auto, &b) })
        .expect("plan");
    assert_eq!(flows(&p).owner, Owner::Off);
    assert_eq!(flows(&p).reason.to_string(), "turned off by flows.enabled");
}
