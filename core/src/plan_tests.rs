use super::*;

fn caps_without(c: Option<Capability>) -> Capabilities {
    let caps = Capabilities::all_present();
    match c {
        Some(c) => caps.assume_missing(&[c]),
        None => caps,
    }
}

fn plan(mode: KprMode, d: DataplaneMode, missing: Option<Capability>) -> Result<Plan, PlanError> {
    let caps = caps_without(missing);
    let all: Vec<Feature> = Feature::ALL.into_iter().filter(|f| f.is_kube_proxy_feature()).collect();
    compute(&PlanInput { caps: &caps, mode, partial_features: &all, dataplane: d, implemented: Implemented::ALL })
}

const MODES: [KprMode; 4] = [KprMode::Disabled, KprMode::Partial, KprMode::Probe, KprMode::Strict];
const DATAPLANES: [DataplaneMode; 3] = [DataplaneMode::Auto, DataplaneMode::Ebpf, DataplaneMode::Iptables];

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
                let servable = |f: Feature| candidates(d).iter().any(|o| missing(&caps, needs(f, *o)).is_empty());
                let any_unservable = Feature::ALL.into_iter().any(|f| !servable(f));
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
                                Owner::Ebpf => {
                                    assert!(missing(&caps, e.feature.ebpf_needs()).is_empty(), "{ctx}: {e:?}");
                                    assert_ne!(d, DataplaneMode::Iptables, "{ctx}: {e:?}");
                                }
                                Owner::Iptables => {
                                    assert!(missing(&caps, e.feature.iptables_needs()).is_empty(), "{ctx}: {e:?}");
                                    assert_ne!(d, DataplaneMode::Ebpf, "{ctx}: {e:?}");
                                }
                                Owner::KubeProxy => assert!(e.feature.is_kube_proxy_feature(), "{ctx}: {e:?}"),
                                Owner::Off => assert!(!e.feature.is_kube_proxy_feature(), "{ctx}: {e:?}"),
                            }
                            assert!(!e.reason.is_empty(), "{ctx}: {e:?} has no reason");
                            if mode == KprMode::Disabled && e.feature.is_kube_proxy_feature() {
                                assert_eq!(e.owner, Owner::KubeProxy, "{ctx}");
                            }
                            if let Some(base) = e.feature.base() {
                                assert_eq!(e.owner, p.owner(base), "{ctx}: {} must follow {}", e.feature, base);
                            }
                        }
                        // Under auto with nothing missing, everything is eBPF.
                        if d == DataplaneMode::Auto && m.is_none() && mode != KprMode::Disabled {
                            assert!(p.entries.iter().all(|e| e.owner == Owner::Ebpf), "{ctx}: {p:?}");
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
    assert_eq!(auto.owner(Feature::NodePort), Owner::Iptables);
    assert_eq!(auto.owner(Feature::ClusterIp), Owner::Ebpf);
    let np = auto.entries.iter().find(|e| e.feature == Feature::NodePort).expect("np");
    assert_eq!(np.reason, "eBPF: no bpf_fib_lookup");

    let probe_ebpf = plan(KprMode::Probe, DataplaneMode::Ebpf, m).expect("probe ebpf");
    assert_eq!(probe_ebpf.owner(Feature::NodePort), Owner::KubeProxy);
    assert_eq!(probe_ebpf.owner(Feature::HealthCheckNodePort), Owner::KubeProxy, "one owner for the health check port");
    assert!(probe_ebpf.warnings.iter().any(|w| w.contains("NodePort left to kube-proxy")), "{:?}", probe_ebpf.warnings);

    let strict = plan(KprMode::Strict, DataplaneMode::Ebpf, m).expect_err("strict ebpf");
    assert_eq!(
        strict.to_string(),
        "kube_proxy_replacement=strict: feature node-port cannot be served by eBPF: eBPF: no bpf_fib_lookup; run `sluice probe` to see the node's capabilities, or use kube_proxy_replacement=probe to leave it to kube-proxy"
    );
    // strict + auto: served anyway, by iptables. What no peer offers.
    let strict_auto = plan(KprMode::Strict, DataplaneMode::Auto, m).expect("strict auto");
    assert_eq!(strict_auto.owner(Feature::NodePort), Owner::Iptables);
}

#[test]
fn dependents_move_with_their_base() {
    // No LPM trie: source ranges need iptables, so LoadBalancer moves there too.
    let p = plan(KprMode::Probe, DataplaneMode::Auto, Some(Capability::MapLpmTrie)).expect("plan");
    assert_eq!(p.owner(Feature::SourceRanges), Owner::Iptables);
    assert_eq!(p.owner(Feature::LoadBalancer), Owner::Iptables);
    assert!(
        p.entries
            .iter()
            .any(|e| e.feature == Feature::LoadBalancer && e.reason.contains("moved to iptables with source-ranges"))
    );
    assert_eq!(p.owner(Feature::Policy), Owner::Iptables);
}

#[test]
fn partial_takes_only_listed_features() {
    let caps = Capabilities::all_present();
    let listed = [Feature::NodePort, Feature::HealthCheckNodePort];
    let p = compute(&PlanInput {
        caps: &caps,
        mode: KprMode::Partial,
        partial_features: &listed,
        dataplane: DataplaneMode::Auto,
        implemented: Implemented::ALL,
    })
    .expect("plan");
    assert_eq!(p.owner(Feature::NodePort), Owner::Ebpf);
    assert_eq!(p.owner(Feature::ClusterIp), Owner::KubeProxy);
    assert_eq!(p.owner(Feature::Policy), Owner::Ebpf, "policy is sluice's in every mode");
    let e = compute(&PlanInput {
        caps: &caps,
        mode: KprMode::Partial,
        partial_features: &[Feature::SessionAffinity],
        dataplane: DataplaneMode::Auto,
        implemented: Implemented::ALL,
    })
    .expect_err("base missing");
    assert!(e.to_string().contains("session-affinity needs cluster-ip"), "{e}");
}

#[test]
fn kube_proxy_absence_is_warned() {
    let caps = Capabilities::all_present();
    let p = compute(&PlanInput {
        caps: &caps,
        mode: KprMode::Disabled,
        partial_features: &[],
        dataplane: DataplaneMode::Auto,
        implemented: Implemented::ALL,
    })
    .expect("plan");
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
    let ipt = plan(KprMode::Probe, DataplaneMode::Iptables, None).expect("iptables");
    let auto = plan(KprMode::Probe, DataplaneMode::Auto, None).expect("auto");
    let steps = transition(&ipt, &auto);
    assert_eq!(steps.len(), 2 * Feature::ALL.len());
    let first_remove = steps.iter().position(|s| matches!(s, Step::Remove { .. })).expect("removes");
    assert!(steps[..first_remove].iter().all(|s| matches!(s, Step::Program { owner: Owner::Ebpf, .. })));
    assert!(steps[first_remove..].iter().all(|s| matches!(s, Step::Remove { owner: Owner::Iptables, .. })));
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
    let imp = Implemented { ebpf: &[], iptables: &[Feature::ClusterIp, Feature::SessionAffinity] };
    let p = compute(&PlanInput {
        caps: &caps,
        mode: KprMode::Probe,
        partial_features: &[],
        dataplane: DataplaneMode::Auto,
        implemented: imp,
    })
    .expect("plan");
    assert_eq!(p.owner(Feature::ClusterIp), Owner::Iptables);
    let e = p.entries.iter().find(|e| e.feature == Feature::ClusterIp).expect("entry");
    assert_eq!(e.reason, "eBPF: not implemented in this build");
    assert_eq!(p.owner(Feature::NodePort), Owner::KubeProxy);
    assert_eq!(p.owner(Feature::Policy), Owner::Off);
    let err = compute(&PlanInput {
        caps: &caps,
        mode: KprMode::Strict,
        partial_features: &[],
        dataplane: DataplaneMode::Ebpf,
        implemented: imp,
    })
    .expect_err("strict");
    assert!(err.to_string().contains("not implemented in this build"), "{err}");
}
