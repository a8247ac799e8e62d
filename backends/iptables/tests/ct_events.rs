//! Tier 2: conntrack events from a real kernel, in a fresh network namespace: a connection DNATed
//! by an iptables rule arrives as NEW with its translation, and as DESTROY when it is gone.

mod common;

use common::{Ns, require_root, sh};

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_iptables::ct_events::{CtEventSocket, CtKind};

#[test]
fn a_dnated_connection_arrives_as_new_with_its_translation_then_destroy() {
    if !require_root() {
        return;
    }
    let ns = Ns(format!("slct-{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().expect("ip").success());
    sh(&ns.0, &["ip", "link", "set", "lo", "up"]);
    sh(&ns.0, &["ip", "addr", "add", "10.96.0.10/32", "dev", "lo"]);
    // The rule is what makes this netns track connections at all.
    sh(
        &ns.0,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "10.96.0.10/32",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            "10.96.0.10:8080",
        ],
    );
    let path = format!("/run/netns/{}", ns.0);
    let events = std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut sub = CtEventSocket::open(sluice_iptables::ct_events::GROUPS_NEW_AND_DESTROY).expect("subscribe");
        sub.set_read_timeout(Duration::from_millis(500)).expect("timeout");
        let server = TcpListener::bind("10.96.0.10:8080").expect("listen");
        let mut c = TcpStream::connect("10.96.0.10:80").expect("connect through the DNAT");
        let (mut s, _) = server.accept().expect("accept");
        c.write_all(b"x").expect("write");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("read");
        let port = c.local_addr().expect("addr").port();
        drop((c, s));
        // DESTROY comes when the entry leaves the table: flush it rather than wait for TIME_WAIT.
        let _ = Command::new("conntrack").args(["-D", "-p", "tcp", "--orig-port-src", &port.to_string()]).output();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && !seen.iter().any(|e: &sluice_iptables::ct_events::CtEvent| e.kind == CtKind::Destroy)
        {
            match sub.recv() {
                Ok(evs) => seen.extend(evs.into_iter().filter(|e| e.orig.sport == port)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
        seen
    })
    .join()
    .expect("thread");
    let new = events.iter().find(|e| e.kind == CtKind::New).expect("a NEW event");
    assert_eq!(new.orig.dst, Some(Ipv4Addr::new(10, 96, 0, 10)));
    assert_eq!((new.orig.proto, new.orig.dport), (6, 80));
    assert_eq!(new.dnat(), Some((Ipv4Addr::new(10, 96, 0, 10), 8080)), "{new:?}");
    assert!(events.iter().any(|e| e.kind == CtKind::Destroy), "{events:?}");
}
