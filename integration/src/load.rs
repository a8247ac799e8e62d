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
    /// With a bucket size: (ok, failed) per bucket since the start, and the bucket in ms.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<(u64, u64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_ms: Option<u64>,
    /// Unix time (ms) of the start, to line the timeline up with events elsewhere.
    pub start_unix_ms: u64,
    /// Failures by kind (`connect: TimedOut`, `read: ConnectionReset`, ...).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub errors: std::collections::BTreeMap<String, u64>,
    /// The first few failures in detail (client port, timing), to line up with conntrack and
    /// agent logs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
}

/// One failed attempt.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Failure {
    pub kind: String,
    /// When the attempt started, ms after the run's start.
    pub start_ms: u64,
    /// How long connect took (None: it failed).
    pub connect_ms: Option<u64>,
    pub client_port: Option<u16>,
}

/// Failures kept in detail.
const DETAILED: usize = 20;

/// One request; the failure's kind (`connect: ...`, `read: ...`), connect time and client port
/// when it fails.
fn one(addr: SocketAddr) -> Result<(), (String, Option<u64>, Option<u16>)> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| (format!("connect: {:?}", e.kind()), None, None))?;
    let connect_ms = Some(t.elapsed().as_millis() as u64);
    let port = s.local_addr().ok().map(|a| a.port());
    let kind = |at: &str, e: std::io::Error| (format!("{at}: {:?}", e.kind()), connect_ms, port);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n").map_err(|e| kind("write", e))?;
    let mut buf = [0u8; 512];
    let mut got = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(kind("read", e)),
        }
    }
    if got > 0 { Ok(()) } else { Err(("read: empty answer".into(), connect_ms, port)) }
}

/// Run `connections` concurrent loops against `addr` for `duration`.
pub fn run(addr: SocketAddr, connections: usize, duration: Duration) -> LoadResult {
    run_with_timeline(addr, connections, duration, None, None, Duration::ZERO)
}

/// [`run`], also counting successes and failures per `bucket` (by when each attempt ended);
/// ends early when `stop_file` appears; each loop waits `pause` between attempts (a steady
/// trickle instead of all the machine can do).
pub fn run_with_timeline(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    bucket: Option<Duration>,
    stop_file: Option<&std::path::Path>,
    pause: Duration,
) -> LoadResult {
    let stop = AtomicBool::new(false);
    let ok = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let buckets = bucket.map(|b| (duration.as_millis() / b.as_millis().max(1)) as usize + 2).unwrap_or(0);
    let timeline: Vec<(AtomicU64, AtomicU64)> = (0..buckets).map(|_| (AtomicU64::new(0), AtomicU64::new(0))).collect();
    let start_unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let start = Instant::now();
    let errors = std::sync::Mutex::new(std::collections::BTreeMap::<String, u64>::new());
    let failures = std::sync::Mutex::new(Vec::<Failure>::new());
    std::thread::scope(|s| {
        for _ in 0..connections {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let start_ms = start.elapsed().as_millis() as u64;
                    let res = one(addr);
                    let good = res.is_ok();
                    if let Err((kind, connect_ms, client_port)) = res {
                        if let Ok(mut f) = failures.lock()
                            && f.len() < DETAILED
                        {
                            f.push(Failure { kind: kind.clone(), start_ms, connect_ms, client_port });
                        }
                        if let Ok(mut m) = errors.lock() {
                            *m.entry(kind).or_default() += 1;
                        }
                    }
                    let counter = if good { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Some(b) = bucket {
                        let i = (start.elapsed().as_millis() / b.as_millis().max(1)) as usize;
                        if let Some((o, f)) = timeline.get(i) {
                            if good { o } else { f }.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
            });
        }
        while start.elapsed() < duration && !stop_file.is_some_and(std::path::Path::exists) {
            std::thread::sleep(Duration::from_millis(50).min(duration.saturating_sub(start.elapsed())));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let seconds = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    let mut timeline: Vec<(u64, u64)> =
        timeline.iter().map(|(o, f)| (o.load(Ordering::Relaxed), f.load(Ordering::Relaxed))).collect();
    while timeline.last() == Some(&(0, 0)) {
        timeline.pop();
    }
    LoadResult {
        connections,
        seconds,
        ok,
        failed: failed.load(Ordering::Relaxed),
        conn_per_s: ok as f64 / seconds,
        timeline,
        bucket_ms: bucket.map(|b| b.as_millis() as u64),
        start_unix_ms,
        errors: errors.into_inner().unwrap_or_default(),
        failures: failures.into_inner().unwrap_or_default(),
    }
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
