//! A small closed-loop HTTP load generator (new connection per request, `Connection: close`,
//! as wrk with that header does), so benchmarks need nothing installed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub connections: usize,
    pub seconds: f64,
    pub ok: u64,
    pub failed: u64,
    pub conn_per_s: f64,
}

fn one(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    let mut got = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => return false,
        }
    }
    got > 0
}

/// Run `connections` concurrent loops against `addr` for `duration`.
pub fn run(addr: SocketAddr, connections: usize, duration: Duration) -> LoadResult {
    let stop = AtomicBool::new(false);
    let ok = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..connections {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if one(addr) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    });
    let seconds = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    LoadResult { connections, seconds, ok, failed: failed.load(Ordering::Relaxed), conn_per_s: ok as f64 / seconds }
}

/// Single-stream throughput: one TCP connection to an echo server in sink mode, sending for
/// `secs`; the server's byte count over the time until it answered.
#[derive(Debug, Serialize)]
pub struct Stream {
    pub bytes: u64,
    pub secs: f64,
    pub gbit_per_s: f64,
}

pub fn stream(addr: SocketAddr, secs: Duration) -> anyhow::Result<Stream> {
    use anyhow::Context;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| format!("connecting to {addr}"))?;
    s.write_all(b"SINK\n")?;
    let buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    while start.elapsed() < secs {
        s.write_all(&buf).with_context(|| format!("sending to {addr}"))?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).with_context(|| format!("reading the byte count from {addr}"))?;
    let elapsed = start.elapsed().as_secs_f64();
    let bytes: u64 = answer.trim().parse().with_context(|| format!("{addr} answered {answer:?}, not a byte count"))?;
    Ok(Stream { bytes, secs: elapsed, gbit_per_s: bytes as f64 * 8.0 / elapsed / 1e9 })
}
