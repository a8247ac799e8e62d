//! Tier 2: the TIME_WAIT flush against a real kernel, in a fresh network namespace: closed
//! connections' entries go, an open connection's entry stays.

mod common;

use common::{Ns, require_root, sh};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;

/// `conntrack -L` lines in the namespace with `state`.
fn count(ns: &str, state: &str) -> usize {
    let out =
        Command::new("ip").args(["netns", "exec", ns, "conntrack", "-L", "-p", "tcp"]).output().expect("conntrack");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(state)).count()
}

#[test]
fn closed_connections_go_and_an_open_one_stays() {
    if !require_root() {
        return;
    }
    let ns = Ns(format!("slcf-{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().expect("ip").success());
    sh(&ns.0, &["ip", "link", "set", "lo", "up"]);
    // A rule that needs conntrack makes this netns track connections.
    sh(&ns.0, &["iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"]);
    let path = format!("/run/netns/{}", ns.0);
    let (deleted, _open) = std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let server = TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = server.local_addr().expect("addr");
        for _ in 0..5 {
            let mut c = TcpStream::connect(addr).expect("connect");
            let (mut s, _) = server.accept().expect("accept");
            c.write_all(b"x").expect("write");
            let mut b = [0u8; 1];
            s.read_exact(&mut b).expect("read");
            drop(s); // the server closes first, as an HTTP/1.0 server does
            let _ = c.read(&mut b);
        }
        let open = TcpStream::connect(addr).expect("connect");
        let accepted = server.accept().expect("accept");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let deleted = sluice_iptables::ct_flush::flush_time_wait().expect("flush");
        (deleted, (open, accepted))
    })
    .join()
    .expect("thread");
    assert_eq!(deleted, 5, "the five closed connections");
    assert_eq!(count(&ns.0, "TIME_WAIT"), 0);
    assert_eq!(count(&ns.0, "ESTABLISHED"), 1, "the open connection keeps its entry");
}
