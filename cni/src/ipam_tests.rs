use super::*;

fn store(dir: &Path, cidr: &str) -> Store {
    let net: Ipv4Net = cidr.parse().expect("cidr");
    Store::new(dir, "testnet", net, crate::spec::first_host(net))
}

fn req(id: &str) -> Request {
    Request { container_id: id.into(), ifname: "eth0".into(), ..Default::default() }
}

#[test]
fn allocates_distinct_and_skips_gateway() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = store(tmp.path(), "10.1.0.0/29"); // hosts .1-.6, gateway .1 -> 5 addresses
    let l = s.lock().expect("lock");
    let ips: BTreeSet<_> = (0..5).map(|i| l.allocate(&req(&format!("c{i}"))).expect("alloc").ip).collect();
    assert_eq!(ips.len(), 5);
    assert!(!ips.contains(&"10.1.0.1".parse().expect("ip")));
    let e = l.allocate(&req("c5")).expect_err("exhausted");
    assert_eq!(e.code(), crate::error::code::POOL_EXHAUSTED);
    assert!(e.to_string().contains("10.1.0.0/29"), "{e}");
}

#[test]
fn same_attachment_gets_same_address() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = store(tmp.path(), "10.1.0.0/24");
    let l = s.lock().expect("lock");
    let a = l.allocate(&req("c")).expect("alloc");
    let b = l.allocate(&req("c")).expect("alloc again");
    assert_eq!(a.ip, b.ip);
    assert_eq!(l.list().expect("list").len(), 1);
}

#[test]
fn release_is_idempotent_and_round_robin_avoids_reuse() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = store(tmp.path(), "10.1.0.0/24");
    let l = s.lock().expect("lock");
    let a = l.allocate(&req("a")).expect("alloc");
    assert_eq!(l.release("a", "eth0").expect("release").len(), 1);
    assert!(l.release("a", "eth0").expect("release again").is_empty());
    let b = l.allocate(&req("b")).expect("alloc");
    assert_ne!(a.ip, b.ip, "freed address not handed out immediately");
}

#[test]
fn abandoned_pending_is_reclaimed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = store(tmp.path(), "10.1.0.0/30"); // one usable address (.2)
    let l = s.lock().expect("lock");
    let mut a = l.allocate(&req("crashed")).expect("alloc");
    // Simulate a plugin that died mid-ADD: a PID that cannot exist.
    a.pid = u32::MAX - 1;
    l.write(&a).expect("write");
    let b = l.allocate(&req("next")).expect("reclaimed");
    assert_eq!(a.ip, b.ip);
    // A ready allocation is never reclaimed that way.
    l.commit(b, "slcx").expect("commit");
    assert!(l.allocate(&req("third")).is_err());
}

#[test]
fn gc_keeps_only_valid() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = store(tmp.path(), "10.1.0.0/24");
    let l = s.lock().expect("lock");
    for id in ["a", "b", "c"] {
        let a = l.allocate(&req(id)).expect("alloc");
        l.commit(a, "h").expect("commit");
    }
    let valid = [Attachment { container_id: "b".into(), ifname: "eth0".into() }];
    let freed = l.gc(&valid).expect("gc");
    assert_eq!(freed.len(), 2);
    let left: Vec<_> = l.list().expect("list").into_iter().map(|a| a.container_id).collect();
    assert_eq!(left, ["b"]);
}

#[test]
fn concurrent_allocations_are_distinct() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let s = store(&dir, "10.2.0.0/24");
                let l = s.lock().expect("lock");
                let a = l.allocate(&req(&format!("c{i}"))).expect("alloc");
                l.commit(a, "h").expect("commit").ip
            })
        })
        .collect();
    let ips: BTreeSet<_> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    assert_eq!(ips.len(), 100);
}

#[test]
fn corrupt_record_is_quarantined_and_its_address_stays_reserved() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = store(tmp.path(), "10.1.0.0/24");
    fs::create_dir_all(s.dir()).expect("dir");
    fs::write(s.dir().join("10.1.0.2"), "garbage").expect("write");
    let l = s.lock().expect("lock");
    assert!(l.list().expect("list goes on").is_empty());
    assert!(!s.dir().join("10.1.0.2").exists(), "moved aside");
    let q = l.quarantined();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0.to_string(), "10.1.0.2");
    // Other pods still get addresses, never the quarantined one.
    let a = l.allocate(&req("c1")).expect("allocate");
    assert_ne!(a.ip.to_string(), "10.1.0.2");
    assert_eq!(l.free_count().expect("free"), 253 - 1 - 1, "gateway .1, quarantined .2, c1");
    assert_eq!(l.release("c1", "eth0").expect("release").len(), 1);
}

#[test]
fn large_subnets_cost_no_memory_and_oversized_ones_are_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = store(tmp.path(), "10.0.0.0/16");
    let l = s.lock().expect("lock");
    let a = l.allocate(&req("c1")).expect("allocate");
    assert_eq!(a.ip.to_string(), "10.0.0.2", "first host after the gateway");
    assert_eq!(l.free_count().expect("free"), 65534 - 1 - 1);
    drop(l);
    for cidr in ["10.0.0.0/8", "0.0.0.0/1"] {
        let e = store(tmp.path(), cidr).lock().err().expect("refused");
        let text = e.to_string();
        assert!(text.contains("subnet") && text.contains(cidr) && text.contains("/16"), "{text}");
    }
}
