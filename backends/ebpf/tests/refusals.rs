//! Tier 2: entries the kernel refuses fail only their own Service. The datapath is handed more
//! backend slots than its map holds (admission, which normally prevents that, is bypassed): the
//! kernel's real E2BIG refuses the inserts past the capacity. Every other Service is written,
//! the refused one is named, keeps what it had (never a frontend entry pointing at slots that
//! are not there) and is retried on the next update, which writes it once it fits.

mod common;

use std::path::PathBuf;

use common::require_root;
use sluice_core::testing::{ServiceBuilder, backend};
use sluice_core::{Feature, MapSizes, Service};
use sluice_ebpf::datapath::{Datapath, remove_all};
use sluice_ebpf::maps::{NodeCtx, SvcKey, addr, port};

struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = remove_all(&self.0);
    }
}

/// A ClusterIP 10.96.0.N:80 with two backends.
fn svc(name: &str, n: u8) -> Service {
    ServiceBuilder::new("default", name)
        .backend(backend(&format!("10.244.1.{}", 2 * n), 8080, "node-1"))
        .backend(backend(&format!("10.244.1.{}", 2 * n + 1), 8080, "node-1"))
        .cluster_ip(&format!("10.96.0.{n}"), 80)
        .build()
}

fn key(n: u8) -> SvcKey {
    SvcKey { vip: addr(format!("10.96.0.{n}").parse().expect("ip")), port: port(80), proto: 6, pad: 0 }
}

/// Frontends in the maps (by N), after checking each one's slots are all there.
fn written(dp: &Datapath) -> Vec<u8> {
    let e = dp.entries();
    let mut out = Vec::new();
    for n in 1..=9 {
        if let Some(v) = e.services.get(&key(n)) {
            let slots = e.backends.keys().filter(|k| k.service_id == v.service_id).count();
            assert_eq!(slots as u32, v.backend_count, "frontend {n} points at slots that are not all there");
            out.push(n);
        }
    }
    assert_eq!(e.backends.len(), 2 * out.len(), "stale slots: {:?}", e.backends);
    out
}

/// The same, read back from the pinned maps (what the kernel holds, not the datapath's record).
fn in_kernel(pins: &Pins, sizes: &MapSizes) -> Vec<u8> {
    written(&Datapath::open(&pins.0, sizes).expect("reopen"))
}

fn refused(dp: &Datapath) -> Vec<String> {
    dp.refused()
        .iter()
        .map(|(n, e)| format!("{}: {e}", n.as_ref().map(|n| n.to_string()).unwrap_or_default()))
        .collect()
}

#[test]
fn entries_the_kernel_refuses_fail_only_their_service_which_is_retried() {
    if !require_root() {
        return;
    }
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/sluice-test-refusals-{}", std::process::id())));
    let _ = remove_all(&pins.0);
    let sizes = MapSizes { backends: 4, ..Default::default() };
    let mut dp = Datapath::open(&pins.0, &sizes).expect("open");
    let ctx = NodeCtx {
        node_name: "node-1".into(),
        node_ips: vec![],
        owned: [Feature::ClusterIp].into(),
        maglev_m: None,
        allowed_verdicts: false,
        trace_to_stack: false,
    };
    let (a, b, c, d) = (svc("a", 1), svc("b", 2), svc("c", 3), svc("d", 4));

    // The first write (whole): a and b fill the map, c is refused by name.
    dp.update(&[a.clone(), b.clone(), c.clone()], &[], &ctx).expect("update");
    assert_eq!(written(&dp), [1, 2]);
    assert_eq!(in_kernel(&pins, &sizes), [1, 2]);
    let r = refused(&dp);
    assert!(r.len() == 1 && r[0].starts_with("default/c: map sluice_backends:"), "{r:?}");

    // An incremental change: d is new, c retried; both refused, a and b untouched.
    dp.update(&[a.clone(), b.clone(), c.clone(), d.clone()], &[], &ctx).expect("update");
    assert_eq!(written(&dp), [1, 2]);
    let r = refused(&dp);
    assert!(r.len() == 2 && r[0].starts_with("default/c:") && r[1].starts_with("default/d:"), "{r:?}");

    // Room frees up: a goes, c (retried) gets it; d is still refused.
    dp.update(&[b.clone(), c.clone(), d.clone()], &[], &ctx).expect("update");
    assert_eq!(written(&dp), [2, 3]);
    let r = refused(&dp);
    assert!(r.len() == 1 && r[0].starts_with("default/d:"), "{r:?}");

    // And again: b goes, d is written; nothing is refused, nothing stale remains.
    dp.update(&[c.clone(), d.clone()], &[], &ctx).expect("update");
    assert_eq!(written(&dp), [3, 4]);
    assert_eq!(in_kernel(&pins, &sizes), [3, 4]);
    assert!(refused(&dp).is_empty());
    // Nothing left to retry: an unchanged update writes nothing.
    assert_eq!(dp.update(&[c, d], &[], &ctx).expect("update"), 0);
}

/// A frontend that moves from one Service to another (a conflict's winner changed) belongs to
/// the new owner only: removing or changing the old owner later leaves it in place. (Found by
/// the reversibility lab test: the old owner's record kept the key, and its removal deleted
/// the new owner's NodePort.)
#[test]
fn a_frontend_moved_to_another_service_survives_the_old_owner() {
    if !require_root() {
        return;
    }
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/sluice-test-moved-{}", std::process::id())));
    let _ = remove_all(&pins.0);
    let sizes = MapSizes::default();
    let mut dp = Datapath::open(&pins.0, &sizes).expect("open");
    let ctx = NodeCtx {
        node_name: "node-1".into(),
        node_ips: vec![],
        owned: [Feature::ClusterIp].into(),
        maglev_m: None,
        allowed_verdicts: false,
        trace_to_stack: false,
    };
    // "x" holds 10.96.0.1; then "x" moves to 10.96.0.2 and "y" takes 10.96.0.1.
    let (x1, x2, y1) = (svc("x", 1), svc("x", 2), svc("y", 1));
    dp.update(std::slice::from_ref(&x1), &[], &ctx).expect("update");
    assert_eq!(written(&dp), [1]);
    dp.update(&[x2.clone(), y1.clone()], &[], &ctx).expect("update");
    assert_eq!(written(&dp), [1, 2]);
    // The old owner changes again, then goes: y's frontend stays.
    dp.update(&[svc("x", 3), y1.clone()], &[], &ctx).expect("update");
    assert_eq!(written(&dp), [1, 3]);
    dp.update(std::slice::from_ref(&y1), &[], &ctx).expect("update");
    assert_eq!(written(&dp), [1]);
    assert_eq!(in_kernel(&pins, &sizes), [1]);
}
