//! Tier 2: the BPF programs run on crafted packets through BPF_PROG_TEST_RUN (no interfaces):
//! expected verdicts and rewritten packets, with valid checksums, for the forward and reply path.

mod common;
#[path = "common/lb.rs"]
mod lb;

use std::net::Ipv4Addr;

use aya::maps::Array;
use aya::maps::HashMap;
use common::require_root;
use lb::*;
use sluice_ebpf::maps::{
    BE_F_LOCAL, FlowKey, NODE_F_DEVICES_DRAIN, NatVal, NodeCfg, SVC_F_EXTERNAL, SVC_F_MAGLEV, SVC_F_SOCK_TCP,
    SVC_F_SRC_RANGES, SVC_F_TC, SvcKey, SvcVal, addr, port,
};

#[test]
fn cluster_ip_dnat_and_reverse_nat_tcp() {
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    lb.service("10.96.0.10", 80, 6, 1, &[("10.244.2.7", 8080)], 0);
    let syn = packet(6, "10.244.1.5", 40000, "10.96.0.10", 80);
    assert!(checksums_valid(&syn), "crafted packet is valid");
    let (verdict, out) = lb.run("sluice_from_pod", &syn);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(fields(&out), ("10.244.1.5".parse().expect("ip"), 40000, "10.244.2.7".parse().expect("ip"), 8080));
    assert!(checksums_valid(&out), "checksums fixed after DNAT");

    // The reply from the backend is reverse-NATed back to the VIP on the way into the pod.
    let reply = packet(6, "10.244.2.7", 8080, "10.244.1.5", 40000);
    let (verdict, out) = lb.run("sluice_to_pod", &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(fields(&out), ("10.96.0.10".parse().expect("ip"), 80, "10.244.1.5".parse().expect("ip"), 40000));
    assert!(checksums_valid(&out));

    // Port reuse: the same client port later connects to the backend directly. Its SYN clears
    // the stale reverse entry, so the direct reply is not rewritten to the VIP.
    let (v, _) = lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 40000, "10.244.2.7", 8080));
    assert_eq!(v, PASS);
    let (v, out) = lb.run("sluice_to_pod", &reply);
    assert_eq!((v, out), (PASS, reply.clone()), "direct reply left alone");

    // Conntrack entries exist for both directions.
    let ct: HashMap<_, FlowKey, NatVal> = HashMap::try_from(lb.bpf().map("sluice_ct").expect("map")).expect("ct");
    assert_eq!(ct.iter().count(), 1);
}

#[test]
fn udp_and_passthrough_and_no_endpoints() {
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    lb.service("10.96.0.53", 53, 17, 7, &[("10.244.3.3", 5353)], 0);
    let q = packet(17, "10.244.1.5", 33000, "10.96.0.53", 53);
    let (v, out) = lb.run("sluice_from_pod", &q);
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(fields(&out).2, "10.244.3.3".parse::<Ipv4Addr>().expect("ip"));
    assert_eq!(fields(&out).3, 5353);
    assert!(checksums_valid(&out), "UDP checksum fixed");

    // Not a frontend: untouched, byte for byte.
    let other = packet(6, "10.244.1.5", 40001, "10.244.2.9", 80);
    let (v, out) = lb.run("sluice_from_pod", &other);
    assert_eq!((v, out), (PASS, other.clone()));
    // A reply nobody NATed: untouched.
    let (v, out) = lb.run("sluice_to_pod", &other);
    assert_eq!((v, out), (PASS, other));
    // A frontend without endpoints refuses.
    lb.service("10.96.0.99", 80, 6, 9, &[], 0);
    let (v, _) = lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 40002, "10.96.0.99", 80));
    assert_eq!(v, TC_ACT_SHOT);
    // Non-IP frames pass.
    let mut arp = vec![0u8; 60];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(lb.run("sluice_from_pod", &arp).0, PASS);
    // A mid-stream TCP packet without a flow entry is left to kernel conntrack (another
    // dataplane NATed that connection).
    let mut ack = packet(6, "10.244.1.5", 40009, "10.96.0.53", 53);
    ack[47] = 0x10; // ACK, no SYN
    assert_eq!(lb.run("sluice_from_pod", &ack).0, PASS);
}

#[test]
fn load_balancing_and_client_ip_affinity() {
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    let backends = [("10.244.2.1", 8080), ("10.244.2.2", 8080), ("10.244.2.3", 8080)];
    lb.service("10.96.0.20", 80, 6, 2, &backends, 0);
    let mut seen = std::collections::BTreeSet::new();
    for sport in 0..60u16 {
        let (_, out) = lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 41000 + sport, "10.96.0.20", 80));
        seen.insert(fields(&out).2);
    }
    assert_eq!(seen.len(), 3, "new flows spread over every backend: {seen:?}");
    // The rest of a flow keeps its backend (conntrack); a new SYN on the same ports re-picks.
    let p = packet(6, "10.244.1.5", 41000, "10.96.0.20", 80);
    let first = fields(&lb.run("sluice_from_pod", &p).1).2;
    let mut ack = p.clone();
    ack[47] = 0x10;
    for _ in 0..10 {
        assert_eq!(fields(&lb.run("sluice_from_pod", &ack).1).2, first);
    }
    // ClientIP affinity: every new flow of one client goes to one backend.
    lb.service("10.96.0.21", 80, 6, 3, &backends, 600);
    let mut sticky = std::collections::BTreeSet::new();
    for sport in 0..30u16 {
        let (_, out) = lb.run("sluice_from_pod", &packet(6, "10.244.1.6", 42000 + sport, "10.96.0.21", 80));
        sticky.insert(fields(&out).2);
    }
    assert_eq!(sticky.len(), 1, "{sticky:?}");
}

#[test]
fn a_pod_reaches_itself_only_as_the_only_backend_by_hairpin() {
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    lb.service("10.96.0.40", 80, 6, 5, &[("10.244.1.5", 8080), ("10.244.2.5", 8080)], 0);
    for sport in 0..40u16 {
        let (v, out) = lb.run("sluice_from_pod", &packet(6, "10.244.1.5", 43000 + sport, "10.96.0.40", 80));
        assert_eq!(v, TC_ACT_OK);
        assert_eq!(fields(&out).2, "10.244.2.5".parse::<Ipv4Addr>().expect("ip"), "hairpin avoided");
    }
    // The only backend is the client itself: hairpin. To itself, from the link-local hairpin
    // address, straight back into the pod; the reply is translated back to come from the VIP.
    lb.service("10.96.0.41", 80, 6, 6, &[("10.244.1.5", 8080)], 0);
    let mut syn = packet(6, "10.244.1.5", 44000, "10.96.0.41", 80);
    syn[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xaa]); // to the host side of the veth
    syn[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xbb]); // from the pod
    let (v, out) = lb.run("sluice_from_pod", &syn);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(fields(&out), (ip("169.254.42.1"), 44000, ip("10.244.1.5"), 8080));
    assert!(checksums_valid(&out));
    assert_eq!((&out[0..6], &out[6..12]), (&syn[6..12], &syn[0..6]), "addressed to the pod again");
    let reply = with_flags(packet(6, "10.244.1.5", 8080, "169.254.42.1", 44000), 0x12);
    assert_eq!(lb.run("sluice_to_pod", &reply), (PASS, reply.clone()), "not the veth egress's to translate");
    let (v, out) = lb.run("sluice_from_pod", &reply);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(fields(&out), (ip("10.96.0.41"), 80, ip("10.244.1.5"), 44000));
    assert!(checksums_valid(&out));
    // The rest of the flow follows the same path.
    let ack = with_flags(packet(6, "10.244.1.5", 44000, "10.96.0.41", 80), 0x10);
    assert_eq!(fields(&lb.run("sluice_from_pod", &ack).1), (ip("169.254.42.1"), 44000, ip("10.244.1.5"), 8080));
}

#[test]
fn maps_are_pinned_and_survive_the_loader() {
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    lb.service("10.96.0.30", 80, 6, 4, &[("10.244.2.4", 8080)], 0);
    assert!(lb.dir.join("sluice_svc").exists() && lb.dir.join("sluice_ct").exists());
    // A second load (as after an agent restart) reuses the pinned maps and sees the service.
    drop(lb.bpf.take());
    let mut again = sluice_ebpf::loader::load(&lb.dir).expect("reload");
    let svc: HashMap<_, SvcKey, SvcVal> = HashMap::try_from(again.map_mut("sluice_svc").expect("map")).expect("svc");
    assert_eq!(svc.iter().count(), 1, "service restored from the pinned map");
}

#[test]
fn node_port_to_an_l7_policed_local_backend_goes_to_the_proxy_untranslated() {
    use sluice_ebpf::policy::{POL_INGRESS, PolEpKey, PolEpVal, PolRule};
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    lb.frontend("198.51.100.11", 30080, 6, 1, &[("10.244.1.2", 8080, BE_F_LOCAL)], 0, SVC_F_TC | SVC_F_EXTERNAL);
    // The backend (host veth 7): its ingress rules send TCP 8080 to the L7 proxy.
    let mut addrs: HashMap<_, u32, u32> =
        HashMap::try_from(lb.bpf().map_mut("sluice_pol_addr").expect("map")).expect("hash");
    addrs.insert(addr(ip("10.244.1.2")), 7, 0).expect("insert");
    let mut val = PolEpVal { enforced: 1, count: 1, ..Default::default() };
    val.rules[0] = PolRule { action: 3, proto: 6, lo: 8080, hi: 8080, ..Default::default() };
    let mut eps: HashMap<_, PolEpKey, PolEpVal> =
        HashMap::try_from(lb.bpf().map_mut("sluice_pol_ep").expect("map")).expect("hash");
    eps.insert(PolEpKey { ifindex: 7, dir: POL_INGRESS }, val, 0).expect("insert");
    let recorded = |lb: &mut Lb, sport: u16| {
        let l7: HashMap<_, FlowKey, u8> = HashMap::try_from(lb.bpf().map_mut("sluice_l7").expect("map")).expect("hash");
        let k = FlowKey {
            saddr: addr(ip("198.51.100.201")),
            daddr: addr(ip("198.51.100.11")),
            sport: port(sport),
            dport: port(30080),
            proto: 6,
            pad: [0; 3],
        };
        l7.get(&k, 0).is_ok()
    };
    // No proxy (port 0): translated as before (the pod's ingress then drops it at its veth).
    let (v, out) = lb.run("sluice_from_net", &packet(6, "198.51.100.201", 50000, "198.51.100.11", 30080));
    assert_eq!((v, fields(&out)), (TC_ACT_OK, (ip("198.51.100.201"), 50000, ip("10.244.1.2"), 8080)));
    assert!(!recorded(&mut lb, 50000));
    // A proxy port: the SYN is recorded as it is, not translated, and handed to the proxy (here
    // dropped: nothing listens on 127.0.0.1:1 in this namespace, never let through).
    let mut l7_port: Array<_, u32> = Array::try_from(lb.bpf().map_mut("sluice_l7_port").expect("map")).expect("array");
    l7_port.set(0, 1, 0).expect("set");
    let syn = packet(6, "198.51.100.201", 50001, "198.51.100.11", 30080);
    assert_eq!(lb.run("sluice_from_net", &syn).0, TC_ACT_SHOT, "no listener: dropped");
    assert!(recorded(&mut lb, 50001), "the untranslated connection is recorded for the proxy");
    // Its later packets go to the proxy untranslated too (marked for local delivery).
    let ack = with_flags(packet(6, "198.51.100.201", 50001, "198.51.100.11", 30080), 0x10);
    let (v, out) = lb.run("sluice_from_net", &ack);
    assert_eq!((v, fields(&out)), (TC_ACT_OK, fields(&ack)), "not translated");
}

#[test]
fn node_port_to_a_local_backend_keeps_the_client_address() {
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    lb.frontend("198.51.100.11", 30080, 6, 1, &[("10.244.1.2", 8080, BE_F_LOCAL)], 0, SVC_F_TC | SVC_F_EXTERNAL);
    let (v, out) = lb.run("sluice_from_net", &packet(6, "198.51.100.201", 50000, "198.51.100.11", 30080));
    assert_eq!(v, TC_ACT_OK, "DNAT only; the stack routes it to the pod");
    assert_eq!(fields(&out), (ip("198.51.100.201"), 50000, ip("10.244.1.2"), 8080));
    assert!(checksums_valid(&out));
    // The pod's reply is translated as it leaves the pod (not on the way into the client pod).
    let reply = with_flags(packet(6, "10.244.1.2", 8080, "198.51.100.201", 50000), 0x12);
    assert!(checksums_valid(&reply));
    assert_eq!(lb.run("sluice_to_pod", &reply), (PASS, reply.clone()));
    let (v, out) = lb.run("sluice_from_pod", &reply);
    assert!(v == TC_ACT_REDIRECT || v == TC_ACT_OK, "sent out directly: {v}");
    assert_eq!(fields(&out), (ip("198.51.100.11"), 30080, ip("198.51.100.201"), 50000));
    assert!(checksums_valid(&out));
    // The same address and port later open a connection to the pod itself (another node SNATing
    // a flow of its own to its address picked the port its host had used for the NodePort
    // flow): the SYN clears the reverse entry, so the pod's reply keeps its own address.
    assert_eq!(lb.run("sluice_from_net", &packet(6, "198.51.100.201", 50000, "10.244.1.2", 8080)).0, PASS);
    let (v, out) = lb.run("sluice_from_pod", &reply);
    assert_eq!(
        (v, fields(&out)),
        (PASS, fields(&reply)),
        "a direct connection's reply is not rewritten to the frontend"
    );
}

#[test]
fn node_port_to_a_remote_backend_is_snated_and_the_reply_translated_back() {
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    lb.node_ip("198.51.100.11");
    lb.frontend("198.51.100.11", 30080, 6, 1, &[("10.244.2.2", 8080, 0)], 0, SVC_F_TC | SVC_F_EXTERNAL);
    let (v, out) = lb.run("sluice_from_net", &packet(6, "198.51.100.201", 50000, "198.51.100.11", 30080));
    assert!(v == TC_ACT_REDIRECT || v == TC_ACT_OK, "{v}");
    let (src, sport, dst, dport) = fields(&out);
    assert_eq!((src, dst, dport), (ip("198.51.100.11"), ip("10.244.2.2"), 8080), "DNAT + SNAT to the node IP");
    assert_eq!(sport, 50000, "the client's own port first (no host socket holds it), as MASQUERADE");
    assert!(checksums_valid(&out));
    // The rest of the flow keeps its backend and SNAT port.
    let ack = with_flags(packet(6, "198.51.100.201", 50000, "198.51.100.11", 30080), 0x10);
    assert_eq!(fields(&lb.run("sluice_from_net", &ack).1), (src, sport, dst, dport));
    // The backend's reply comes back to the node and goes to the client from the frontend.
    let reply = with_flags(packet(6, "10.244.2.2", 8080, "198.51.100.11", sport), 0x12);
    let (v, out) = lb.run("sluice_from_net", &reply);
    assert!(v == TC_ACT_REDIRECT || v == TC_ACT_OK, "{v}");
    assert_eq!(fields(&out), (ip("198.51.100.11"), 30080, ip("198.51.100.201"), 50000));
    assert!(checksums_valid(&out));
    // Without a node IP the node cannot SNAT: refuse rather than send an unroutable packet.
    let mut lb2 = Lb::new();
    lb2.frontend("198.51.100.11", 30080, 6, 1, &[("10.244.2.2", 8080, 0)], 0, SVC_F_TC | SVC_F_EXTERNAL);
    assert_eq!(lb2.run("sluice_from_net", &packet(6, "198.51.100.201", 50001, "198.51.100.11", 30080)).0, TC_ACT_SHOT);
}

/// The device frontends went to another dataplane (NODE_F_DEVICES_DRAIN, frontend gone): the
/// device program still carries the flow it translated, passes new ones, and leaves replies on
/// a closed flow's port to netfilter (whose masquerade may have picked that port since).
#[test]
fn a_draining_device_carries_its_flows_and_leaves_closed_ports_to_netfilter() {
    if !require_root() {
        return;
    }
    for draining in [false, true] {
        let mut lb = Lb::new();
        lb.node_ip("198.51.100.11");
        lb.frontend("198.51.100.11", 30080, 6, 1, &[("10.244.2.2", 8080, 0)], 0, SVC_F_TC | SVC_F_EXTERNAL);
        let syn = packet(6, "198.51.100.201", 50000, "198.51.100.11", 30080);
        let (_, out) = lb.run("sluice_from_net", &syn);
        let natted = fields(&out);
        assert_eq!(natted, (ip("198.51.100.11"), 50000, ip("10.244.2.2"), 8080));
        // The hand-over: the frontend leaves eBPF's maps, the node is marked draining.
        {
            let mut svc: HashMap<_, SvcKey, SvcVal> =
                HashMap::try_from(lb.bpf().map_mut("sluice_svc").expect("map")).expect("svc");
            svc.remove(&SvcKey { vip: addr(ip("198.51.100.11")), port: port(30080), proto: 6, pad: 0 }).expect("rm");
            let mut a: Array<_, NodeCfg> =
                Array::try_from(lb.bpf().map_mut("sluice_node").expect("map")).expect("node");
            let flags = if draining { NODE_F_DEVICES_DRAIN } else { 0 };
            a.set(0, NodeCfg { node_ip: addr(ip("198.51.100.11")), flags, ..Default::default() }, 0).expect("set");
        }
        // The established flow keeps its backend and SNAT port, both ways.
        let ack = with_flags(syn.clone(), 0x10);
        assert_eq!(fields(&lb.run("sluice_from_net", &ack).1), natted);
        let reply = with_flags(packet(6, "10.244.2.2", 8080, "198.51.100.11", 50000), 0x10);
        assert_eq!(
            fields(&lb.run("sluice_from_net", &reply).1),
            (ip("198.51.100.11"), 30080, ip("198.51.100.201"), 50000)
        );
        // A new flow is the new owner's.
        let other = packet(6, "198.51.100.201", 50001, "198.51.100.11", 30080);
        assert_eq!(lb.run("sluice_from_net", &other), (PASS, other.clone()));
        // The backend closes (its FIN is still translated); a later reply on that port is
        // ours only while eBPF serves the frontends.
        let fin = with_flags(packet(6, "10.244.2.2", 8080, "198.51.100.11", 50000), 0x11);
        assert_eq!(fields(&lb.run("sluice_from_net", &fin).1).3, 50000);
        let (v, out) = lb.run("sluice_from_net", &reply);
        if draining {
            assert_eq!((v, out), (PASS, reply.clone()), "left to netfilter");
        } else {
            assert_eq!(fields(&out), (ip("198.51.100.11"), 30080, ip("198.51.100.201"), 50000));
        }
    }
}

#[test]
fn source_ranges_and_ownership_flags() {
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    let flags = SVC_F_TC | SVC_F_EXTERNAL | SVC_F_SRC_RANGES;
    lb.frontend("203.0.113.101", 80, 6, 3, &[("10.244.1.2", 8080, BE_F_LOCAL)], 0, flags);
    lb.allow_range(3, "198.51.100.200", 29);
    let (v, out) = lb.run("sluice_from_net", &packet(6, "198.51.100.201", 50000, "203.0.113.101", 80));
    assert_eq!((v, fields(&out).2), (TC_ACT_OK, ip("10.244.1.2")), "inside the range");
    let (v, _) = lb.run("sluice_from_net", &packet(6, "198.51.100.192", 50000, "203.0.113.101", 80));
    assert_eq!(v, TC_ACT_SHOT, "outside the range");
    // A frontend served only at the pod veths (ClusterIP) is not served from outside...
    lb.frontend("10.96.0.10", 80, 6, 4, &[("10.244.1.2", 8080, BE_F_LOCAL)], 0, SVC_F_TC);
    let p = packet(6, "198.51.100.201", 50000, "10.96.0.10", 80);
    assert_eq!(lb.run("sluice_from_net", &p), (PASS, p.clone()));
    // ...and one that eBPF serves only by socket LB is left to the owner of per-packet NAT.
    lb.frontend("10.96.0.11", 80, 6, 5, &[("10.244.1.2", 8080, BE_F_LOCAL)], 0, SVC_F_SOCK_TCP);
    let p = packet(6, "10.244.1.9", 50000, "10.96.0.11", 80);
    assert_eq!(lb.run("sluice_from_pod", &p), (PASS, p.clone()));
}

#[test]
fn maglev_picks_by_flow_hash_the_same_on_every_node() {
    if !require_root() {
        return;
    }
    let backends = [("10.244.1.2", 8080, 0), ("10.244.2.2", 8080, 0), ("10.244.3.2", 8080, 0)];
    let names: Vec<String> = backends.iter().map(|(ip, p, _)| format!("{ip}:{p}")).collect();
    let table: Vec<u32> = sluice_core::maglev_table(&names, 251).into_iter().map(|i| i + 1).collect();
    // Two "nodes": separate maps, the same Service and table.
    let mut nodes = [Lb::new(), Lb::new()];
    for lb in &mut nodes {
        lb.node("198.51.100.11", 251);
        lb.frontend("10.96.0.50", 80, 6, 8, &backends, 0, SVC_F_TC | SVC_F_MAGLEV);
        lb.maglev(8, &table);
    }
    let mut seen = std::collections::BTreeSet::new();
    for sport in 0..60u16 {
        let p = packet(6, "10.244.9.5", 45000 + sport, "10.96.0.50", 80);
        let a = fields(&nodes[0].run("sluice_from_pod", &p).1).2;
        // Again on the same node (a new SYN re-picks): the hash, not chance, decides.
        let again = fields(&nodes[0].run("sluice_from_pod", &p).1).2;
        let b = fields(&nodes[1].run("sluice_from_pod", &p).1).2;
        assert_eq!((a, again), (b, b), "flow {sport}: every pick of one flow lands on one backend");
        seen.insert(a);
    }
    assert_eq!(seen.len(), 3, "flows spread over every backend: {seen:?}");
    // A table naming slot 2 everywhere sends every flow to the second backend.
    nodes[0].maglev(8, &[2; 251]);
    for sport in 0..20u16 {
        let p = packet(6, "10.244.9.6", 46000 + sport, "10.96.0.50", 80);
        assert_eq!(fields(&nodes[0].run("sluice_from_pod", &p).1).2, ip("10.244.2.2"));
    }
}

#[test]
fn external_ip_and_host_port_frontends_with_their_replies() {
    if !require_root() {
        return;
    }
    let mut lb = Lb::new();
    lb.node_ip("198.51.100.11");
    let ext = SVC_F_TC | SVC_F_EXTERNAL;
    // An ExternalIP over a backend on another node: DNAT + SNAT, reply translated back.
    lb.frontend("203.0.113.10", 80, 6, 1, &[("10.244.2.2", 8080, 0)], 0, ext);
    let (_, out) = lb.run("sluice_from_net", &packet(6, "198.51.100.201", 51000, "203.0.113.10", 80));
    let (src, sport, dst, dport) = fields(&out);
    assert_eq!((src, dst, dport), (ip("198.51.100.11"), ip("10.244.2.2"), 8080));
    let reply = with_flags(packet(6, "10.244.2.2", 8080, "198.51.100.11", sport), 0x12);
    assert_eq!(fields(&lb.run("sluice_from_net", &reply).1), (ip("203.0.113.10"), 80, ip("198.51.100.201"), 51000));
    // A hostPort (node IP:18080 -> the local pod's 8080), UDP: DNAT only, reply from the node port.
    lb.frontend("198.51.100.11", 18080, 17, 2, &[("10.244.1.7", 8080, BE_F_LOCAL)], 0, ext);
    let (v, out) = lb.run("sluice_from_net", &packet(17, "198.51.100.202", 52000, "198.51.100.11", 18080));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!(fields(&out), (ip("198.51.100.202"), 52000, ip("10.244.1.7"), 8080));
    assert!(checksums_valid(&out));
    let (_, out) = lb.run("sluice_from_pod", &packet(17, "10.244.1.7", 8080, "198.51.100.202", 52000));
    assert_eq!(fields(&out), (ip("198.51.100.11"), 18080, ip("198.51.100.202"), 52000));
    assert!(checksums_valid(&out));
}
