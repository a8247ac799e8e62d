//! Tier 2: the events the pod-veth programs write into the ring buffer, read back through the
//! pinned ring as the agent reads them (BPF_PROG_TEST_RUN on crafted packets): policy drops,
//! audits and allow verdicts with their rule, traces of new connections with their Service
//! translation (at the pod veths and at the node device), and the budgets whose overflow is counted as lost, never silent.

mod common;
#[path = "common/lb.rs"]
mod lb;

use aya::maps::HashMap;
use common::require_root;
use lb::*;
use sluice_ebpf::events::{Event, EventReader, LbDrop, PolicyDrop, Trace, TracePoint};
use sluice_ebpf::maps::{NODE_F_ALLOWS, NODE_F_TO_STACK, NODE_F_TRACE};

fn batch(events: &mut EventReader) -> Vec<Event> {
    events.recv_batch(std::time::Duration::from_secs(1)).expect("events")
}

fn policy_events(events: &mut EventReader) -> Vec<PolicyDrop> {
    batch(events)
        .into_iter()
        .map(|e| match e {
            Event::Policy(p) => p,
            other => panic!("tracing is off: {other:?}"),
        })
        .collect()
}

#[test]
fn policy_drops_reach_the_ring_with_their_rule_and_within_the_budget() {
    use sluice_ebpf::policy::{POL_EGRESS, PolEpKey, PolEpVal, PolRule};
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    let mut events = EventReader::open(&lb.dir).expect("open the pinned ring");
    // The test run's packets come from loopback (ifindex 1): police its egress. Rule 0 denies
    // TCP port 81 to anyone, rule 1 allows TCP 80; the rest is default deny.
    let mut val = PolEpVal { enforced: 1, count: 2, ..Default::default() };
    val.rules[0] = PolRule { action: 2, proto: 6, lo: 81, hi: 81, ..Default::default() };
    val.rules[1] = PolRule { action: 1, proto: 6, lo: 80, hi: 80, ..Default::default() };
    let key = PolEpKey { ifindex: 1, dir: POL_EGRESS };
    let mut eps: HashMap<_, PolEpKey, PolEpVal> =
        HashMap::try_from(lb.bpf().map_mut("sluice_pol_ep").expect("map")).expect("hash");
    eps.insert(key, val, 0).expect("insert");
    assert_ne!(lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 40000, "10.244.2.2", 80)).0, TC_ACT_SHOT);
    assert_eq!(lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 40001, "10.244.2.2", 81)).0, TC_ACT_SHOT);
    assert_eq!(lb.run("sluice_from_pod", &packet(17, "10.244.1.5", 40002, "10.244.2.2", 53)).0, TC_ACT_SHOT);
    let got = policy_events(&mut events);
    assert_eq!(got.len(), 2, "one event per drop, none for the pass: {got:?}");
    assert_eq!((got[0].rule, got[0].packet.dport, got[0].packet.proto, got[0].ingress), (Some(0), 81, 6, false));
    assert_eq!(
        (got[0].packet.src, got[0].packet.dst, got[0].packet.sport),
        (ip("10.244.1.5"), ip("10.244.2.2"), 40001)
    );
    assert_eq!(got[0].packet.tcp_flags, 0x02, "a SYN");
    assert_eq!((got[1].rule, got[1].packet.dport, got[1].packet.proto), (None, 53, 17), "default deny");
    assert_eq!(events.lost_since_last(), 0);
    // A flood: past the per-CPU budget, drops are counted as suppressed, never silently gone.
    let flood = 10_000u32;
    for i in 0..flood {
        lb.run("sluice_from_pod", &packet(17, "10.244.1.5", 30000 + (i % 20000) as u16, "10.244.2.2", 53));
    }
    let mut seen = 0u64;
    while let Ok(b) = events.recv_batch(std::time::Duration::from_millis(200)) {
        seen += b.len() as u64;
    }
    let lost = events.lost_since_last();
    assert!(lost > 0, "a flood of {flood} in well under a second exceeds the budget");
    assert_eq!(seen + lost, u64::from(flood), "every drop is either an event or counted as lost");
}

#[test]
fn an_audit_list_reports_would_be_drops_and_drops_nothing() {
    use sluice_ebpf::policy::{POL_EGRESS, PolEpKey, PolEpVal, PolRule};
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    let mut events = EventReader::open(&lb.dir).expect("open the pinned ring");
    let key = PolEpKey { ifindex: 1, dir: POL_EGRESS };
    // Enforced: allow TCP 80 and 81. Audit: deny TCP 81, allow 80, isolate (default deny).
    let mut enforced = PolEpVal { enforced: 1, count: 1, ..Default::default() };
    enforced.rules[0] = PolRule { action: 1, proto: 6, lo: 80, hi: 81, ..Default::default() };
    let mut audit = PolEpVal { enforced: 1, count: 2, ..Default::default() };
    audit.rules[0] = PolRule { action: 2, proto: 6, lo: 81, hi: 81, ..Default::default() };
    audit.rules[1] = PolRule { action: 1, proto: 6, lo: 80, hi: 80, ..Default::default() };
    for (map, val) in [("sluice_pol_ep", enforced), ("sluice_pol_audit", audit)] {
        let mut m: HashMap<_, PolEpKey, PolEpVal> =
            HashMap::try_from(lb.bpf().map_mut(map).expect("map")).expect("hash");
        m.insert(key, val, 0).expect("insert");
    }
    let to = |port: u16, sport: u16| packet(6, "10.244.1.5", sport, "10.244.2.2", port);
    assert_ne!(lb.run("sluice_from_pod", &to(80, 41000)).0, TC_ACT_SHOT, "allowed by both");
    assert_ne!(lb.run("sluice_from_pod", &to(81, 41001)).0, TC_ACT_SHOT, "an audit deny never drops");
    assert_eq!(lb.run("sluice_from_pod", &to(82, 41002)).0, TC_ACT_SHOT, "the enforced default deny still drops");
    let got = policy_events(&mut events);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].audit && got[0].rule == Some(0) && got[0].packet.dport == 81, "{:?}", got[0]);
    assert!(
        !got[1].audit && got[1].rule.is_none() && got[1].packet.dport == 82,
        "a real drop is no audit: {:?}",
        got[1]
    );
}

#[test]
fn a_proxy_rule_drops_where_it_cannot_redirect() {
    use sluice_ebpf::policy::{POL_EGRESS, PolEpKey, PolEpVal, PolRule};
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    let mut events = EventReader::open(&lb.dir).expect("open the pinned ring");
    // Rule 0 sends TCP 80 to the L7 proxy, rule 1 allows TCP 81.
    let mut val = PolEpVal { enforced: 1, count: 2, ..Default::default() };
    val.rules[0] = PolRule { action: 3, proto: 6, lo: 80, hi: 80, ..Default::default() };
    val.rules[1] = PolRule { action: 1, proto: 6, lo: 81, hi: 81, ..Default::default() };
    let mut eps: HashMap<_, PolEpKey, PolEpVal> =
        HashMap::try_from(lb.bpf().map_mut("sluice_pol_ep").expect("map")).expect("hash");
    eps.insert(PolEpKey { ifindex: 1, dir: POL_EGRESS }, val, 0).expect("insert");
    // No proxy (port 0): dropped and reported with the rule that wanted it.
    assert_eq!(lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 42000, "10.244.2.2", 80)).0, TC_ACT_SHOT);
    assert_ne!(lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 42001, "10.244.2.2", 81)).0, TC_ACT_SHOT);
    let got = policy_events(&mut events);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].rule, got[0].packet.dport), (Some(0), 80), "{:?}", got[0]);
    // A proxy port with no listener behind it (nothing here listens on 127.0.0.1:1): dropped.
    let mut port: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(lb.bpf().map_mut("sluice_l7_port").expect("map")).expect("array");
    port.set(0, 1, 0).expect("set");
    assert_eq!(lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 42002, "10.244.2.2", 80)).0, TC_ACT_SHOT);
    assert_ne!(lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 42003, "10.244.2.2", 81)).0, TC_ACT_SHOT);
}

#[test]
fn new_connections_are_traced_once_with_their_translation_when_tracing_is_on() {
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    let mut events = EventReader::open(&lb.dir).expect("open the pinned ring");
    lb.node_ip("198.51.100.11");
    lb.service("10.96.0.10", 80, 6, 1, &[("10.244.2.7", 8080)], 0);
    lb.service("10.96.0.53", 53, 17, 2, &[("10.244.2.9", 5353)], 0);
    // Off: nothing is sent.
    lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 43000, "10.96.0.10", 80));
    assert!(events.recv_batch(std::time::Duration::from_millis(200)).is_err(), "no trace while tracing is off");
    lb.node_flags(NODE_F_TRACE);
    // A SYN to a ClusterIP: one trace from the endpoint, with the frontend and its backend.
    lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 43001, "10.96.0.10", 80));
    // Mid-stream packets and the reply are not new connections.
    lb.run("sluice_from_pod", &with_flags(packet(6, "10.244.1.5", 43001, "10.96.0.10", 80), 0x10));
    lb.run("sluice_to_pod", &with_flags(packet(6, "10.244.2.7", 8080, "10.244.1.5", 43001), 0x12));
    // The same connection entering the backend: a trace to the endpoint.
    lb.run("sluice_to_pod", &packet(6, "10.244.1.5", 43001, "10.244.2.7", 8080));
    // UDP: the first packet of a flow, not the next, and not the reply.
    for _ in 0..3 {
        lb.run("sluice_from_pod", &packet(17, "10.244.1.5", 44000, "10.96.0.53", 53));
    }
    lb.run("sluice_to_pod", &packet(17, "10.244.2.9", 5353, "10.244.1.5", 44000));
    let got = batch(&mut events);
    let traces: Vec<Trace> = got
        .iter()
        .map(|e| match e {
            Event::Trace(t) => *t,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(traces.len(), 3, "{traces:#?}");
    let (syn, into, udp) = (traces[0], traces[1], traces[2]);
    assert_eq!(syn.point, TracePoint::FromEndpoint);
    assert_eq!((syn.src, syn.sport, syn.dst, syn.dport), (ip("10.244.1.5"), 43001, ip("10.96.0.10"), 80));
    assert_eq!((syn.translated_to, syn.proto, syn.tcp_flags), (Some((ip("10.244.2.7"), 8080)), 6, 0x02));
    assert_eq!(syn.ifindex, 1, "the test run's packets come from loopback");
    assert_eq!(into.point, TracePoint::ToEndpoint);
    assert_eq!((into.dst, into.dport, into.translated_to), (ip("10.244.2.7"), 8080, None));
    assert_eq!((udp.proto, udp.dst, udp.translated_to), (17, ip("10.96.0.53"), Some((ip("10.244.2.9"), 5353))));
    assert_eq!(events.lost_since_last(), 0);
    // A flood of new connections past the traces' budget: every one is a trace or counted lost.
    let flood = 120_000u32;
    for i in 0..flood {
        let sport = 1024 + (i % 60_000) as u16;
        lb.run("sluice_from_pod", &packet(6, &format!("10.244.3.{}", 1 + i / 60_000), sport, "10.244.2.7", 8080));
    }
    let mut seen = 0u64;
    while let Ok(b) = events.recv_batch(std::time::Duration::from_millis(200)) {
        seen += b.len() as u64;
    }
    let lost = events.lost_since_last();
    assert_eq!(seen + lost, u64::from(flood), "seen {seen}, lost {lost}");
}

#[test]
fn allow_verdicts_name_the_rule_only_when_asked_for() {
    use sluice_ebpf::policy::{POL_EGRESS, PolEpKey, PolEpVal, PolRule};
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    let mut events = EventReader::open(&lb.dir).expect("open the pinned ring");
    lb.node_ip("198.51.100.11");
    let mut val = PolEpVal { enforced: 1, count: 1, ..Default::default() };
    val.rules[0] = PolRule { action: 1, proto: 6, lo: 80, hi: 80, ..Default::default() };
    let mut eps: HashMap<_, PolEpKey, PolEpVal> =
        HashMap::try_from(lb.bpf().map_mut("sluice_pol_ep").expect("map")).expect("hash");
    eps.insert(PolEpKey { ifindex: 1, dir: POL_EGRESS }, val, 0).expect("insert");
    let syn = |sport| packet(6, "10.244.1.5", sport, "10.244.2.2", 80);
    lb.node_flags(NODE_F_TRACE);
    assert_ne!(lb.run("sluice_from_pod", &syn(45000)).0, TC_ACT_SHOT);
    let got = batch(&mut events);
    assert!(matches!(got[..], [Event::Trace(_)]), "a trace, no verdict unless asked: {got:?}");
    lb.node_flags(NODE_F_TRACE | NODE_F_ALLOWS);
    assert_ne!(lb.run("sluice_from_pod", &syn(45001)).0, TC_ACT_SHOT);
    let got = batch(&mut events);
    assert_eq!(got.len(), 2, "{got:?}");
    let Event::Policy(v) = got[0] else { panic!("{got:?}") };
    assert!(v.allow && !v.audit && v.rule == Some(0) && v.packet.dport == 80 && !v.ingress, "{v:?}");
    assert!(matches!(got[1], Event::Trace(t) if t.sport == 45001));
}

#[test]
fn connections_from_outside_are_traced_arriving_and_leaving_for_another_node() {
    use sluice_ebpf::maps::{BE_F_LOCAL, SVC_F_EXTERNAL, SVC_F_TC};
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    let mut events = EventReader::open(&lb.dir).expect("open the pinned ring");
    lb.node_ip("198.51.100.11");
    let ext = SVC_F_TC | SVC_F_EXTERNAL;
    lb.frontend("198.51.100.11", 30080, 6, 1, &[("10.244.1.2", 8080, BE_F_LOCAL)], 0, ext);
    lb.frontend("198.51.100.11", 30081, 6, 2, &[("10.244.2.2", 8080, 0)], 0, ext);
    lb.frontend("198.51.100.11", 30053, 17, 3, &[("10.244.1.2", 5353, BE_F_LOCAL)], 0, ext);
    let local = packet(6, "198.51.100.201", 50000, "198.51.100.11", 30080);
    lb.run("sluice_from_net", &local);
    assert!(events.recv_batch(std::time::Duration::from_millis(200)).is_err(), "no trace while tracing is off");
    lb.node_flags(NODE_F_TRACE);
    // To a local backend: traced arriving, with the backend; not its next packets.
    lb.run("sluice_from_net", &packet(6, "198.51.100.201", 50001, "198.51.100.11", 30080));
    lb.run("sluice_from_net", &with_flags(packet(6, "198.51.100.201", 50001, "198.51.100.11", 30080), 0x10));
    // To a backend on another node: arriving, then leaving SNATed as the backend sees it.
    let (_, out) = lb.run("sluice_from_net", &packet(6, "198.51.100.201", 50002, "198.51.100.11", 30081));
    let (_, snat_port, _, _) = fields(&out);
    // UDP: the flow's first datagram only.
    for _ in 0..3 {
        lb.run("sluice_from_net", &packet(17, "198.51.100.201", 50003, "198.51.100.11", 30053));
    }
    let traces: Vec<Trace> = batch(&mut events)
        .into_iter()
        .map(|e| match e {
            Event::Trace(t) => t,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(traces.len(), 4, "{traces:#?}");
    let (to_local, to_remote, leaving, udp) = (traces[0], traces[1], traces[2], traces[3]);
    assert_eq!(to_local.point, TracePoint::FromNetwork);
    assert_eq!(
        (to_local.src, to_local.sport, to_local.dst, to_local.dport, to_local.translated_to),
        (ip("198.51.100.201"), 50001, ip("198.51.100.11"), 30080, Some((ip("10.244.1.2"), 8080)))
    );
    assert_eq!((to_remote.point, to_remote.translated_to), (TracePoint::FromNetwork, Some((ip("10.244.2.2"), 8080))));
    assert_eq!(leaving.point, TracePoint::ToNetwork);
    assert_eq!(
        (leaving.src, leaving.sport, leaving.dst, leaving.dport, leaving.translated_to),
        (ip("198.51.100.11"), snat_port, ip("10.244.2.2"), 8080, None)
    );
    assert_eq!(
        (udp.point, udp.proto, udp.translated_to),
        (TracePoint::FromNetwork, 17, Some((ip("10.244.1.2"), 5353)))
    );
    assert_eq!(events.lost_since_last(), 0);
}

/// A cgroup v2 directory of its own, removed on drop (its processes have exited by then).
struct TestCgroup(std::path::PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_socket_translation_is_traced_once_per_socket_and_backend_of_the_node_only() {
    use aya::programs::{CgroupAttachMode, CgroupSockAddr};
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    let mut events = EventReader::open(&lb.dir).expect("open the pinned ring");
    // Where cgroup v2 is mounted (the unified hierarchy; /sys/fs/cgroup itself on most hosts).
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let Some(root) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
    }) else {
        panic!("no cgroup v2 mount: socket LB needs one");
    };
    let cg = TestCgroup(std::path::PathBuf::from(format!(
        "{root}/sluice-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )));
    std::fs::create_dir(&cg.0).expect("a cgroup v2 directory");
    // Socket LB for host TCP and UDP (flags 4 | 8) on 10.96.0.10:80, to a loopback backend.
    lb.frontend("10.96.0.10", 80, 6, 1, &[("127.0.0.1", 8080, 0)], 0, 4);
    lb.frontend("10.96.0.10", 53, 17, 2, &[("127.0.0.1", 5353, 0)], 0, 8);
    lb.node_flags(NODE_F_TRACE);
    let file = std::fs::File::open(&cg.0).expect("open cgroup");
    let mut links = Vec::new();
    for name in ["sluice_sock_connect4", "sluice_sock_sendmsg4"] {
        let p: &mut CgroupSockAddr = lb.bpf().program_mut(name).expect("prog").try_into().expect("sock_addr");
        links.push(p.attach(&file, CgroupAttachMode::Single).expect("attach"));
    }
    // A process in the cgroup (this test binary again, running `sock_client` below), in a
    // network namespace of its own (nothing leaves it): one TCP connect, and one UDP socket
    // sending three datagrams (one translation traced).
    let client = || {
        let exe = std::env::current_exe().expect("test binary");
        let st = std::process::Command::new(exe)
            .args(["--exact", "sock_client", "--test-threads", "1", "--quiet"])
            .env("SLUICE_SOCK_CLIENT_CGROUP", &cg.0)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run the client");
        assert!(st.success(), "{st}");
    };
    client();
    let got = batch(&mut events);
    let socks: Vec<_> = got
        .iter()
        .filter_map(|e| match e {
            Event::Sock(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(socks.len(), 2, "{got:#?}");
    assert_eq!(
        (socks[0].proto, socks[0].front, socks[0].backend),
        (6, (ip("10.96.0.10"), 80), (ip("127.0.0.1"), 8080))
    );
    assert_eq!((socks[1].proto, socks[1].backend), (17, (ip("127.0.0.1"), 5353)));
    assert!(socks[0].cookie != 0 && socks[0].cookie != socks[1].cookie, "{socks:?}");
    // With the node's netns named (the agent writes its own), a socket of another netns (a pod
    // in the same cgroup) is left to its veth's program: neither translated nor traced.
    let own = sluice_ebpf::sock_netns::own_netns_cookie().expect("SO_NETNS_COOKIE");
    let mut hostns: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(lb.bpf().map_mut("sluice_hostns").expect("map")).expect("array");
    hostns.set(0, own, 0).expect("set");
    client();
    assert!(events.recv_batch(std::time::Duration::from_millis(300)).is_err(), "another netns's socket was translated");
}

/// The client of `a_socket_translation_is_traced_once_per_socket_and_backend_of_the_node_only`, run as its own
/// process (cgroup membership is per process); a no-op otherwise.
#[test]
fn sock_client() {
    use std::net::{TcpStream, UdpSocket};
    let Some(cg) = std::env::var_os("SLUICE_SOCK_CLIENT_CGROUP") else { return };
    std::fs::write(std::path::Path::new(&cg).join("cgroup.procs"), std::process::id().to_string())
        .expect("join the cgroup");
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a network namespace of its own");
    let _ = TcpStream::connect_timeout(&"10.96.0.10:80".parse().expect("addr"), std::time::Duration::from_millis(200));
    let u = UdpSocket::bind("0.0.0.0:0").expect("udp");
    for _ in 0..3 {
        let _ = u.send_to(b"x", "10.96.0.10:53");
    }
}

#[test]
fn service_drops_are_reported_with_their_reason_while_flows_run() {
    use sluice_ebpf::maps::{BE_F_LOCAL, SVC_F_EXTERNAL, SVC_F_SRC_RANGES, SVC_F_TC};
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    let mut events = EventReader::open(&lb.dir).expect("open the pinned ring");
    lb.node_ip("198.51.100.11");
    // A ClusterIP without endpoints, and a LoadBalancer IP open to 198.51.100.200/29 only.
    lb.service("10.96.0.20", 80, 6, 1, &[], 0);
    lb.frontend(
        "203.0.113.101",
        80,
        6,
        2,
        &[("10.244.1.2", 8080, BE_F_LOCAL)],
        0,
        SVC_F_TC | SVC_F_EXTERNAL | SVC_F_SRC_RANGES,
    );
    lb.allow_range(2, "198.51.100.200", 29);
    let no_backend = packet(6, "10.244.1.5", 46000, "10.96.0.20", 80);
    let outside = packet(6, "198.51.100.192", 46001, "203.0.113.101", 80);
    assert_eq!(lb.run("sluice_from_pod", &no_backend).0, TC_ACT_SHOT);
    assert!(events.recv_batch(std::time::Duration::from_millis(200)).is_err(), "nothing while flows are off");
    lb.node_flags(NODE_F_TRACE);
    assert_eq!(lb.run("sluice_from_pod", &no_backend).0, TC_ACT_SHOT);
    assert_eq!(lb.run("sluice_from_net", &outside).0, TC_ACT_SHOT);
    let drops: Vec<LbDrop> = batch(&mut events)
        .into_iter()
        .map(|e| match e {
            Event::LbDrop(d) => d,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(drops.len(), 2, "{drops:#?}");
    assert_eq!(
        (drops[0].at_device, drops[0].reason as i32, drops[0].packet.dst, drops[0].packet.dport),
        (false, 158, ip("10.96.0.20"), 80)
    );
    assert_eq!(drops[0].packet.tcp_flags, 0x02);
    assert_eq!((drops[1].at_device, drops[1].reason as i32, drops[1].packet.src), (true, 177, ip("198.51.100.192")));
}

#[test]
fn a_to_stack_trace_follows_the_translation_only_when_asked_for() {
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    let mut events = EventReader::open(&lb.dir).expect("open the pinned ring");
    lb.node_ip("198.51.100.11");
    lb.service("10.96.0.10", 80, 6, 1, &[("10.244.2.7", 8080)], 0);
    lb.node_flags(NODE_F_TRACE);
    lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 47000, "10.96.0.10", 80));
    let got = batch(&mut events);
    assert!(matches!(got[..], [Event::Trace(t)] if t.point == TracePoint::FromEndpoint), "{got:?}");
    lb.node_flags(NODE_F_TRACE | NODE_F_TO_STACK);
    // To a Service (translated) and to a pod directly: each from the endpoint, then to the stack.
    lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 47001, "10.96.0.10", 80));
    lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 47002, "10.244.2.8", 9090));
    let points: Vec<(TracePoint, u16, std::net::Ipv4Addr, u16)> = batch(&mut events)
        .into_iter()
        .map(|e| match e {
            Event::Trace(t) => (t.point, t.sport, t.dst, t.dport),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        points,
        [
            (TracePoint::FromEndpoint, 47001, ip("10.96.0.10"), 80),
            (TracePoint::ToStack, 47001, ip("10.244.2.7"), 8080),
            (TracePoint::FromEndpoint, 47002, ip("10.244.2.8"), 9090),
            (TracePoint::ToStack, 47002, ip("10.244.2.8"), 9090),
        ]
    );
}
