//! `cargo xtask bench l7`: requests through the node's L7 proxy vs straight to the pod, side by
//! side in one run. One node (iptables: TPROXY, or eBPF: bpf_sk_assign); the backend pod serves keep-alive HTTP on two ports of the
//! same pod: 8081 behind an HTTP rule (redirected to the proxy) and 8082 allowed at L4 only (the
//! same policy chain, no proxy). For keep-alive and new-connection-per-request, with 1 and 64
//! concurrent clients, rounds alternate direct/proxied (ABBA); the medians are compared. Then
//! 1,000 idle keep-alive connections are held through the proxy and the agent's RSS growth
//! is reported per 1,000 connections.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::Lab;
use crate::http_load::LoadReport;

const ROUNDS: usize = 4;
const SECS: f64 = 2.0;

const POLICY: &str = "apiVersion: sluice.io/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: bench-l7, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: bench-backend}}\n  ingress:\n  - toPorts: [{ports: [{port: '8081'}], rules: {http: [{method: GET}]}}]\n  - toPorts: [{ports: [{port: '8082'}]}]\n";

#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub keep_alive: bool,
    pub clients: usize,
    pub direct: Vec<LoadReport>,
    pub proxied: Vec<LoadReport>,
    /// CPU time per request, each measurement: who spends the machine's 2 cores.
    pub direct_cpu: Vec<Cpu>,
    pub proxied_cpu: Vec<Cpu>,
}

/// CPU microseconds per request over one measurement, by party, and how busy the machine was.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cpu {
    pub client_us: f64,
    pub server_us: f64,
    pub proxy_us: f64,
    /// Everything the machine ran (softirq included) per request.
    pub machine_us: f64,
    /// Share of all cores busy during the measurement.
    pub busy: f64,
}

/// Cumulative CPU seconds: the load generators this process waited for, the echo servers, the
/// proxy process (`sluice proxy`), and the machine (busy, total).
#[derive(Clone, Copy)]
struct Ticks {
    client: f64,
    server: f64,
    proxy: f64,
    busy: f64,
    total: f64,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of /proc/.../stat, in seconds.
fn stat_secs(path: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(path) else { return 0.0 };
    // Fields after the command (which may hold spaces) are after the last ')'.
    let rest: Vec<&str> = s.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let f = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (f(11) + f(12)) / clk_tck()
}

fn ticks(servers: &[u32], proxy: u32) -> Ticks {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let client = tv(ru.ru_utime) + tv(ru.ru_stime);
    let server = servers.iter().map(|p| stat_secs(&format!("/proc/{p}/stat"))).sum();
    let proxy = stat_secs(&format!("/proc/{proxy}/stat"));
    let cpu = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> =
        cpu.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    Ticks { client, server, proxy, busy: (total - idle) / clk_tck(), total: total / clk_tck() }
}

fn per_request(a: Ticks, b: Ticks, requests: u64) -> Cpu {
    let n = requests.max(1) as f64 / 1e6;
    Cpu {
        client_us: (b.client - a.client) / n,
        server_us: (b.server - a.server) / n,
        proxy_us: (b.proxy - a.proxy) / n,
        machine_us: (b.busy - a.busy) / n,
        busy: if b.total > a.total { (b.busy - a.busy) / (b.total - a.total) } else { 0.0 },
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cases: Vec<Case>,
    pub held_connections: usize,
    pub rss_mb_per_1000: f64,
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    Ok(kb / 1024.0)
}

fn load(lab: &Lab, target: SocketAddr, clients: usize, keep_alive: bool, secs: f64) -> anyhow::Result<LoadReport> {
    let mut argv: Vec<String> =
        ["sluice-lab", "http-load", "--target", &target.to_string(), "--conns", &clients.to_string()]
            .map(String::from)
            .to_vec();
    argv.extend(["--secs".into(), secs.to_string()]);
    if keep_alive {
        argv.push("--keep-alive".into());
    }
    let out = lab.command("bench-client", &argv)?.stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(out.status.success(), "http-load failed: {}", String::from_utf8_lossy(&out.stdout));
    serde_json::from_slice(&out.stdout).context("http-load output")
}

pub fn run(lab: &Lab) -> anyhow::Result<Report> {
    let st = lab.state()?;
    let backend = st.pods.iter().find(|p| p.name.ends_with("bench-backend")).context("pod bench-backend")?;
    let ip: std::net::Ipv4Addr = backend.ip.parse().context("bench-backend's address")?;
    let node = st.nodes.first().context("the lab has no node")?;
    let serve = |port: u16| -> anyhow::Result<Child> {
        let argv = ["sluice-lab", "http-serve", "--port", &port.to_string()].map(String::from).to_vec();
        Ok(Child(lab.command("bench-backend", &argv)?.stdout(Stdio::null()).spawn()?))
    };
    let servers = [serve(8081)?, serve(8082)?];
    let server_pids: Vec<u32> = servers.iter().map(|c| c.0.id()).collect();
    let dir = std::env::temp_dir().join(format!("sluice-bench-l7-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let f = dir.join("policy.yaml");
    std::fs::write(&f, POLICY)?;
    lab.apply(&f)?;
    let (proxied, direct) = (SocketAddr::new(ip.into(), 8081), SocketAddr::new(ip.into(), 8082));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = load(lab, proxied, 1, true, 0.3);
        if r.as_ref().is_ok_and(|r| r.requests > 0 && r.errors == 0) {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the proxy never answered on {proxied}: {r:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The proxy is its own process (the agent started it): its CPU and memory are its own.
    let pid = lab.agent_status(node)?["l7_proxy"]["pid"]
        .as_u64()
        .context("the agent's status names no L7 proxy process")? as u32;
    let mut cases = Vec::new();
    for (keep_alive, clients) in [(true, 1), (true, 64), (false, 1), (false, 64)] {
        let mut c = Case {
            keep_alive,
            clients,
            direct: Vec::new(),
            proxied: Vec::new(),
            direct_cpu: Vec::new(),
            proxied_cpu: Vec::new(),
        };
        for round in 0..ROUNDS {
            let order = if round % 4 == 0 || round % 4 == 3 { [false, true] } else { [true, false] };
            for through_proxy in order {
                let before = ticks(&server_pids, pid);
                let r = load(lab, if through_proxy { proxied } else { direct }, clients, keep_alive, SECS)?;
                let cpu = per_request(before, ticks(&server_pids, pid), r.requests);
                if through_proxy {
                    c.proxied.push(r);
                    c.proxied_cpu.push(cpu);
                } else {
                    c.direct.push(r);
                    c.direct_cpu.push(cpu);
                }
            }
        }
        eprintln!("{}\n{}", line(&c), cpu_line(&c));
        cases.push(c);
    }
    // Memory: 1,000 idle keep-alive connections held through the proxy.
    let before = rss_mb(pid)?;
    let argv = ["sluice-lab", "http-hold", "--target", &proxied.to_string(), "--conns", "1000", "--secs", "4"]
        .map(String::from)
        .to_vec();
    let mut holder = Child(lab.command("bench-client", &argv)?.stdout(Stdio::piped()).spawn()?);
    let mut first = String::new();
    if let Some(out) = holder.0.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut first)?;
    }
    let held: usize = first.trim().parse().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(500));
    let during = rss_mb(pid)?;
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
    let per = if held > 0 { (during - before).max(0.0) * 1000.0 / held as f64 } else { 0.0 };
    Ok(Report { cases, held_connections: held, rss_mb_per_1000: per })
}

fn line(c: &Case) -> String {
    let m = |v: &[LoadReport], f: fn(&LoadReport) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
    let (dr, pr) = (m(&c.direct, |r| r.req_per_s), m(&c.proxied, |r| r.req_per_s));
    let (d50, p50) = (m(&c.direct, |r| r.p50_ms), m(&c.proxied, |r| r.p50_ms));
    let (d99, p99) = (m(&c.direct, |r| r.p99_ms), m(&c.proxied, |r| r.p99_ms));
    let errors: u64 = c.proxied.iter().chain(&c.direct).map(|r| r.errors).sum();
    format!(
        "l7 {:<14} {:>2} clients: direct {dr:>8.0} req/s, proxied {pr:>8.0} req/s ({:.2}x); p50 {d50:.3} -> {p50:.3} ms (+{:.3}); p99 {d99:.3} -> {p99:.3} ms (+{:.3}); errors {errors}",
        if c.keep_alive { "keep-alive" } else { "new-connection" },
        c.clients,
        if dr > 0.0 { pr / dr } else { 0.0 },
        p50 - d50,
        p99 - d99,
    )
}

/// Where each request's CPU goes (medians), and the rate the proxied path could reach at most
/// with the machine as busy as the direct path kept it: direct CPU per request / proxied.
fn cpu_line(c: &Case) -> String {
    let m = |v: &[Cpu], f: fn(&Cpu) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
    let (d, p) = (&c.direct_cpu, &c.proxied_cpu);
    let (dm, pm) = (m(d, |x| x.machine_us), m(p, |x| x.machine_us));
    format!(
        "l7 {:<14} {:>2} clients: CPU per request direct {:.1} us (client {:.1}, server {:.1}; cores {:.0}% busy), proxied {:.1} us (client {:.1}, server {:.1}, proxy {:.1}; {:.0}% busy): on CPU alone the proxied rate is at most {:.2}x",
        if c.keep_alive { "keep-alive" } else { "new-connection" },
        c.clients,
        dm,
        m(d, |x| x.client_us),
        m(d, |x| x.server_us),
        m(d, |x| x.busy) * 100.0,
        pm,
        m(p, |x| x.client_us),
        m(p, |x| x.server_us),
        m(p, |x| x.proxy_us),
        m(p, |x| x.busy) * 100.0,
        if pm > 0.0 { dm / pm } else { 0.0 },
    )
}

pub fn lines(r: &Report) -> Vec<String> {
    let mut out: Vec<String> = r.cases.iter().map(line).collect();
    out.extend(r.cases.iter().map(cpu_line));
    out.push(format!(
        "l7 proxy memory: {:.2} MB RSS per 1,000 open keep-alive connections ({} held)",
        r.rss_mb_per_1000, r.held_connections
    ));
    out
}
