//! Tier 2: the L7 steering (`sluice_l7_lookup`, an sk_lookup program, and the proxy's listener
//! in `sluice_l7_sock`) in a fresh network namespace with real sockets: a connection the tc
//! programs recorded reaches the proxy's listener with its original destination, the next one on
//! the same ports does too while the first's TIME_WAIT is still there (what bpf_sk_assign at tc
//! got wrong), unrecorded connections reach their own destination, and without the proxy a
//! recorded one is refused, never delivered to the destination's own socket.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, FromRawFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use common::require_root;
use sluice_ebpf::datapath::Datapath;
use sluice_ebpf::maps::{FlowKey, addr, port};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);

/// A named netns with the two addresses on its loopback, deleted on drop (also on failure).
struct Ns {
    name: String,
    pin: PathBuf,
}

impl Ns {
    fn new() -> Self {
        let name = format!("sl-l7lookup-{}", std::process::id());
        let ns = Ns { name: name.clone(), pin: PathBuf::from(format!("/sys/fs/bpf/sluice-test-{name}")) };
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(std::process::Stdio::null()).status();
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
            vec!["-n", &name, "addr", "add", "10.9.0.1/32", "dev", "lo"],
            vec!["-n", &name, "addr", "add", "10.9.0.2/32", "dev", "lo"],
        ] {
            let st = Command::new("ip").args(&args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        }
        ns
    }

    /// Run `f` on a thread inside the namespace (sockets and the program's netns follow it).
    fn within<T: Send + 'static>(&self, f: impl FnOnce(PathBuf) -> T + Send + 'static) -> T {
        common::in_netns(&self.name, self.pin.clone(), f)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = sluice_ebpf::datapath::remove_all(&self.pin);
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A connection from CLIENT:`sport` to SERVER:`dport` (the port reusable at once, as a client
/// that picks the same ephemeral port again).
fn connect(sport: u16, dport: u16) -> std::io::Result<TcpStream> {
    // SAFETY: plain socket calls on a socket this function owns; the fd is wrapped at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let sockaddr = |ip: Ipv4Addr, p: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: p.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), 4);
        // A connect that gets no answer ends after 3 s (EINPROGRESS) instead of retrying.
        let tv = libc::timeval { tv_sec: 3, tv_usec: 0 };
        let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, (&tv as *const libc::timeval).cast(), tv_len);
        let local = sockaddr(CLIENT, sport);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(SERVER, dport);
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(stream)
    }
}

/// Accept within 3 s, or fail the test naming `what`.
fn accept(l: &TcpListener, what: &str) -> (TcpStream, std::net::SocketAddr) {
    l.set_nonblocking(true).expect("nonblocking");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match l.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
                return (s, peer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{what}: no connection accepted: {e}"),
        }
    }
}

fn record(pin: &std::path::Path, sport: u16, dport: u16) {
    let data = MapData::from_pin(pin.join("sluice_l7")).expect("sluice_l7 pinned");
    let mut m: HashMap<_, FlowKey, u8> = HashMap::try_from(Map::LruHashMap(data)).expect("lru hash");
    let k = FlowKey {
        saddr: addr(CLIENT),
        daddr: addr(SERVER),
        sport: port(sport),
        dport: port(dport),
        proto: 6,
        ..Default::default()
    };
    m.insert(k, 1, 0).expect("record the flow");
}

/// One round trip on an accepted connection; the proxy's side closes first (the TIME_WAIT
/// stays with it, as when a client sent `Connection: close`).
fn exchange(proxy: &TcpListener, mut client: TcpStream, want_local: SocketAddrV4) {
    let (mut accepted, peer) = accept(proxy, "the proxy's listener");
    assert_eq!(accepted.local_addr().expect("local"), want_local.into(), "the original destination");
    assert_eq!(peer, client.local_addr().expect("client"), "the client's own address");
    client.write_all(b"x").expect("write");
    let mut b = [0u8; 1];
    accepted.read_exact(&mut b).expect("read");
    drop(accepted);
    assert_eq!(client.read(&mut b).expect("eof"), 0, "closed by the proxy's side");
}

#[test]
fn recorded_connections_reach_the_proxy_also_over_a_time_wait_and_nothing_else_does() {
    if !require_root() {
        return;
    }
    let ns = Ns::new();
    ns.within(|pin| {
        let mut dp = Datapath::open(&pin, &sluice_core::MapSizes::default()).expect("open");
        let proxy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("proxy listener");
        // The destination's own server, on the port the redirected connections name.
        let own = TcpListener::bind((SERVER, 8080)).expect("own listener");
        sluice_ebpf::policy_l7::steer(&mut dp, proxy.as_fd()).expect("steer");
        let to = SocketAddrV4::new(SERVER, 8080);

        record(&pin, 40001, 8080);
        exchange(&proxy, connect(40001, 8080).expect("first connection"), to);
        // Same ports again at once: the proxy's TIME_WAIT is there; the SYN reopens it.
        let again = connect(40001, 8080).expect("the next connection on the same ports over the TIME_WAIT");
        exchange(&proxy, again, to);

        // Not recorded: its own destination.
        let c = connect(40002, 8080).expect("unrecorded connection");
        let (_, peer) = accept(&own, "the destination's own socket");
        assert_eq!(peer, c.local_addr().expect("client"));

        // The proxy gone: a recorded connection is refused, never given to the destination.
        drop(proxy);
        record(&pin, 40003, 8080);
        let e = connect(40003, 8080).expect_err("no proxy: refused");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        std::thread::sleep(Duration::from_millis(50));
        assert!(own.accept().is_err(), "the destination's own socket got a connection meant for the proxy");
    });
}
