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
