//! `sluice-lab flip-watch`: when does a TCP port turn from answering to silent (a policy now
//! denies) or back (it allows again)?
//!
//! Probes start every `every` on their own threads, each waiting up to `timeout`, so the answer's
//! resolution is `every`: with one probe at a time, a flip to "answer" is seen only when the
//! silent probe in flight gives up (its SYN was dropped and is not resent within the timeout),
//! which rounded every such figure up to the timeout.

use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A probe unanswered this long counts as silent.
    pub timeout: Duration,
    /// A new probe starts this often.
    pub every: Duration,
    /// Give up after this long.
    pub max: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Flip {
    /// Unix ms at which the earliest probe with the awaited outcome started.
    pub flipped_unix_ms: u64,
    pub probes: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Probe `addr` until a probe's outcome is `answer` (connected) or its opposite (silent); every
/// probe started before that one is waited for, and the earliest start with that outcome wins.
pub fn watch(addr: SocketAddr, answer: bool, t: Timing) -> anyhow::Result<Flip> {
    let (tx, rx) = mpsc::channel::<(u64, bool)>();
    let start = Instant::now();
    let mut probes = 0u64;
    let mut handles = Vec::new();
    let first = loop {
        let (tx, timeout) = (tx.clone(), t.timeout);
        handles.push(std::thread::spawn(move || {
            let at = now_ms();
            let ok = TcpStream::connect_timeout(&addr, timeout).is_ok();
            let _ = tx.send((at, ok));
        }));
        probes += 1;
        let deadline = Instant::now() + t.every;
        let mut hit = None;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok((at, ok)) if ok == answer => {
                    hit = Some(at);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if let Some(at) = hit {
            break at;
        }
        handles.retain(|h| !h.is_finished());
        if start.elapsed() > t.max {
            let until = if answer { "answer" } else { "silent" };
            anyhow::bail!("{addr} did not turn {until} within {:?} ({probes} probes)", t.max);
        }
    };
    // Probes still in flight started earlier may have the same outcome.
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    let earliest = rx.try_iter().filter(|(_, ok)| *ok == answer).map(|(at, _)| at).fold(first, u64::min);
    Ok(Flip { flipped_unix_ms: earliest, probes })
}
