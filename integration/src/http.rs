//! A tiny HTTP echo server for lab pods and a matching client, so the lab needs no curl.
//! `GET /` answers the pod name; `GET /client` answers the caller's address as seen by the
//! server (to check masquerading and source-IP preservation). UDP on the same port answers
//! the pod name too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

pub fn serve(name: &str, ports: &[u16]) -> anyhow::Result<()> {
    let mut workers = Vec::new();
    for &port in ports {
        let tcp = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding TCP port {port}"))?;
        let udp = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("binding UDP port {port}"))?;
        let uname = name.to_string();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("{uname}\n").as_bytes(), peer);
            }
        });
        // A pool of acceptors answering short requests inline: a thread per connection would
        // cost the server more than the network path being measured at thousands of
        // connections a second. Long-lived modes (ECHO, SINK) move to a thread of their own.
        let tcp = std::sync::Arc::new(tcp);
        for _ in 0..8 {
            let tcp = tcp.clone();
            let name = name.to_string();
            workers.push(std::thread::spawn(move || {
                for conn in tcp.incoming() {
                    let Ok(stream) = conn else { continue };
                    let _ = answer(stream, &name);
                }
            }));
        }
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// One probe target: `IP:PORT/tcp` or `IP:PORT/udp`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeResult {
    pub target: String,
    /// Whether anything answered.
    pub answered: bool,
    /// The echo server's name (who answered), or the error.
    pub detail: String,
}

pub fn parse_target(t: &str) -> anyhow::Result<(SocketAddr, bool)> {
    let (addr, proto) = t.rsplit_once('/').unwrap_or((t, "tcp"));
    let udp = match proto {
        "tcp" => false,
        "udp" => true,
        other => bail!("protocol {other:?} in {t:?}: accepted tcp, udp"),
    };
    Ok((addr.parse().with_context(|| format!("{addr:?} is not IP:PORT"))?, udp))
}

/// Probe every target at once (each on its own thread): a new connection (TCP: an HTTP
/// request) or one datagram (UDP), answered within `timeout` or not.
pub fn probe_many(targets: &[String], timeout: Duration) -> Vec<ProbeResult> {
    let handles: Vec<_> = targets
        .iter()
        .cloned()
        .map(|t| {
            std::thread::spawn(move || {
                let res = parse_target(&t).and_then(|(addr, udp)| {
                    if udp { udp_from(&addr.to_string(), 0, timeout) } else { get(&format!("http://{addr}/"), timeout) }
                });
                match res {
                    Ok(body) => ProbeResult { target: t, answered: true, detail: body.trim().to_string() },
                    Err(e) => ProbeResult { target: t, answered: false, detail: format!("{e:#}") },
                }
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| ProbeResult {
                target: String::new(),
                answered: false,
                detail: "probe thread panicked".into(),
            })
        })
        .collect()
}

fn answer(mut s: TcpStream, name: &str) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = s.peer_addr()?;
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && !got.starts_with(b"ECHO\n") && !got.starts_with(b"SINK\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > 16 * 1024 {
            break;
        }
    }
    if got.starts_with(b"SINK\n") || got.starts_with(b"ECHO\n") {
        std::thread::spawn(move || long_lived(s, got));
        return Ok(());
    }
    let req = String::from_utf8_lossy(&got);
    let path = req.split_whitespace().nth(1).unwrap_or("/");
    let body = if path.starts_with("/client") { format!("{}\n", peer.ip()) } else { format!("{name}\n") };
    write!(
        s,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

/// ECHO (echo every line until the peer closes) and SINK (count bytes until the peer stops
/// sending, answer the count) connections.
fn long_lived(mut s: TcpStream, got: Vec<u8>) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    if got.starts_with(b"SINK\n") {
        // Throughput mode: count everything until the peer stops sending, answer the count.
        s.set_read_timeout(None)?;
        let mut total = (got.len() - 5) as u64;
        let mut big = vec![0u8; 256 * 1024];
        loop {
            let n = s.read(&mut big)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        return writeln!(s, "{total}");
    }
    if got.starts_with(b"ECHO\n") {
        // Long-lived mode for connection-survival tests: echo every line until the peer closes.
        s.set_read_timeout(None)?;
        let mut rest = got[5..].to_vec();
        loop {
            while let Some(i) = rest.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = rest.drain(..=i).collect();
                s.write_all(&line)?;
            }
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            rest.extend_from_slice(&buf[..n]);
        }
    }
    Ok(())
}

/// GET `url` (http://IP:PORT/path) and return the body.
pub fn get(url: &str, timeout: Duration) -> anyhow::Result<String> {
    request("GET", url, &[], timeout)
}

/// `method` `url` with extra `headers` (`Name: value`) and return the body of a 200 (any other
/// status is an error naming the status line and the body).
pub fn request(method: &str, url: &str, headers: &[String], timeout: Duration) -> anyhow::Result<String> {
    request_from(method, url, headers, timeout, None)
}

/// A connection from `local_port` (`None`: any), as the kernel's connect would pick one.
fn connect_from(addr: SocketAddr, timeout: Duration, local_port: Option<u16>) -> anyhow::Result<TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt};
    let Some(port) = local_port else { return Ok(TcpStream::connect_timeout(&addr, timeout)?) };
    let SocketAddr::V4(v4) = addr else { anyhow::bail!("{addr}: --local-port takes IPv4 addresses") };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    // connect(2) gives up after the send timeout.
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64),
    )?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(0, 0, 0, 0, port))
        .with_context(|| format!("binding local port {port}"))?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))?;
    Ok(TcpStream::from(fd))
}

/// [`request`] from a given local port.
pub fn request_from(
    method: &str,
    url: &str,
    headers: &[String],
    timeout: Duration,
    local_port: Option<u16>,
) -> anyhow::Result<String> {
    let rest =
        url.strip_prefix("http://").with_context(|| format!("{url:?}: only http://IP:PORT/path URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") };
    let addr: SocketAddr = with_port.parse().with_context(|| format!("{hostport:?} is not IP or IP:PORT"))?;
    let mut s = connect_from(addr, timeout, local_port).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    // One write: a server that answers after the first segment must not see a second one.
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: {hostport}\r\n{extra}\r\n").as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).with_context(|| format!("reading from {addr}"))?;
    let Some((head, body)) = resp.split_once("\r\n\r\n") else { bail!("malformed response from {addr}: {resp:?}") };
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("{addr} answered {}: {}", head.lines().next().unwrap_or_default(), body.trim());
    }
    Ok(body.to_string())
}

/// Hold one TCP connection open for `duration`, exchanging a line every `interval`; returns the
/// number of round trips. Any failure (reset, timeout, wrong echo) is an error: the connection
/// did not survive.
/// Ends early (successfully) when `stop_file` appears.
pub fn hold(addr: &str, duration: Duration, interval: Duration, stop_file: Option<&Path>) -> anyhow::Result<u64> {
    let with_port = if addr.contains(':') { addr.to_string() } else { format!("{addr}:80") };
    let addr: SocketAddr = with_port.parse().with_context(|| format!("{addr:?} is not IP:PORT"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"ECHO\n")?;
    let start = std::time::Instant::now();
    let mut trips = 0u64;
    let mut buf = [0u8; 64];
    while start.elapsed() < duration && !stop_file.is_some_and(Path::exists) {
        let msg = format!("ping {trips}\n");
        s.write_all(msg.as_bytes()).with_context(|| format!("write after {trips} round trips"))?;
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            let n = s.read(&mut buf).with_context(|| format!("read after {trips} round trips"))?;
            if n == 0 {
                bail!("connection closed after {trips} round trips");
            }
            got.extend_from_slice(&buf[..n]);
        }
        if got != msg.as_bytes() {
            bail!("echo mismatch after {trips} round trips: {:?}", String::from_utf8_lossy(&got));
        }
        trips += 1;
        std::thread::sleep(interval);
    }
    Ok(trips)
}

/// [`hold`] for HTTP: one keep-alive HTTP/1.1 connection, `GET path` every `interval`, each
/// answered 200 with a `Content-Length` body (the lab's servers close after one response, so
/// the connection is held by something in between: an L7 proxy). Returns the requests answered.
pub fn hold_http(
    addr: &str,
    path: &str,
    duration: Duration,
    interval: Duration,
    stop_file: Option<&Path>,
) -> anyhow::Result<u64> {
    let with_port = if addr.contains(':') { addr.to_string() } else { format!("{addr}:80") };
    let addr: SocketAddr = with_port.parse().with_context(|| format!("{addr:?} is not IP:PORT"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let start = std::time::Instant::now();
    let mut answered = 0u64;
    let mut buf = [0u8; 4096];
    let mut got: Vec<u8> = Vec::new();
    while start.elapsed() < duration && !stop_file.is_some_and(Path::exists) {
        let at = |n: u64| format!("after {n} answered requests");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .with_context(|| format!("write {}", at(answered)))?;
        let head_end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut buf).with_context(|| format!("read {}", at(answered)))?;
            if n == 0 {
                bail!("connection closed {}", at(answered));
            }
            got.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 200") {
            bail!("answered {:?} {}", head.lines().next().unwrap_or_default(), at(answered));
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-length")))
            .and_then(|(_, v)| v.trim().parse().ok())
            .with_context(|| format!("no Content-Length in {head:?}"))?;
        while got.len() < head_end + len {
            let n = s.read(&mut buf).with_context(|| format!("reading a body {}", at(answered)))?;
            if n == 0 {
                bail!("connection closed in a body {}", at(answered));
            }
            got.extend_from_slice(&buf[..n]);
        }
        got.drain(..head_end + len);
        answered += 1;
        std::thread::sleep(interval);
    }
    Ok(answered)
}

/// Send one UDP datagram from `source_port` (0: any) and return the reply.
pub fn udp_from(addr: &str, source_port: u16, timeout: Duration) -> anyhow::Result<String> {
    let addr: SocketAddr = addr.parse().with_context(|| format!("{addr:?} is not IP:PORT"))?;
    let s =
        UdpSocket::bind(("0.0.0.0", source_port)).with_context(|| format!("binding UDP source port {source_port}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(b"ping", addr)?;
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).with_context(|| format!("no UDP reply from {addr}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
