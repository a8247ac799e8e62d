//! `cargo xtask bench services`: sluice's iptables backend against the reference peer (the
//! ruleset kube-proxy's iptables mode writes, from ../shared/bench/kube-proxy-iptables.py,
//! loaded with `iptables-restore --noflush` as kube-proxy does), side by side in one run, on
//! each iptables variant. Runs inside a lab node's netns; the client and the real backend are
//! lab pods on that node.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use sluice_core::{Backend, BackendState, Feature, Frontend, FrontendKind, Protocol, Service, ServiceName};
use sluice_iptables::incremental::Renderer;
use sluice_iptables::ruleset::Ruleset;
use sluice_iptables::services::NodeInput;
use sluice_iptables::sync::RuleSyncer;
use sluice_iptables::{Iptables, Variant};

use crate::Lab;

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub backend: String,
    pub variant: String,
    pub services: usize,
    pub program_all_ms: Option<f64>,
    pub single_change_ms: Option<f64>,
    pub conn_per_s: Option<f64>,
    pub direct_conn_per_s: Option<f64>,
    pub rules: Option<usize>,
    /// One TCP stream through the ClusterIP, and the same to the pod IP (Gbit/s).
    pub stream_gbit_s: Option<f64>,
    pub direct_stream_gbit_s: Option<f64>,
    /// Direct connections with nothing installed, measured just before these N Services were
    /// programmed: the untaxed baseline for `direct_conn_per_s`, minutes closer in time than
    /// the N = 0 record (the machine drifts by more than the effect being measured).
    pub baseline_direct_conn_per_s: Option<f64>,
    /// The whole agent's RSS with these N Services from its manifest source (sluice backends;
    /// filled in by `cargo xtask bench services`, which runs the agent per backend and N).
    pub agent_rss_mb: Option<f64>,
    /// sluice iptables at the largest N only: the goals' comparisons measured in alternation,
    /// seconds apart, each deployment alone (`bench_paired`), one pair of rates per round.
    pub paired: Option<Vec<crate::bench_paired::Pairs>>,
    pub note: Option<String>,
}

impl Record {
    fn new(backend: &str, variant: &str, services: usize) -> Self {
        Record {
            backend: backend.into(),
            variant: variant.into(),
            services,
            program_all_ms: None,
            single_change_ms: None,
            conn_per_s: None,
            direct_conn_per_s: None,
            rules: None,
            stream_gbit_s: None,
            direct_stream_gbit_s: None,
            baseline_direct_conn_per_s: None,
            agent_rss_mb: None,
            paired: None,
            note: None,
        }
    }
}

pub struct Options {
    pub services: Vec<usize>,
    pub variants: Vec<Variant>,
    pub backends: Vec<String>,
    pub peer_script: PathBuf,
    pub load_secs: u64,
    pub connections: usize,
    /// Give up on one restore after this long (the peer's nft full sync at 10k does not finish).
    pub restore_timeout: Duration,
}

pub(crate) const ENDPOINTS: usize = 10;

pub(crate) fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32)
}

/// The same Services the peer script generates: N x 10 endpoints, NodePorts for the first 2768,
/// one real target placed in the middle.
pub(crate) fn services(n: usize, backend: Ipv4Addr) -> Vec<Service> {
    (0..n)
        .map(|i| {
            let target = i == n / 2;
            let mut fes = vec![Frontend {
                kind: FrontendKind::ClusterIp,
                ip: Some(IpAddr::V4(vip(i))),
                port: 80,
                protocol: Protocol::Tcp,
                port_name: "http".into(),
                target_port: 8080,
            }];
            if i < 2768 {
                fes.push(Frontend { kind: FrontendKind::NodePort, ip: None, port: 30000 + i as u16, ..fes[0].clone() });
            }
            let eps: Vec<Ipv4Addr> = if target {
                vec![backend]
            } else {
                (0..ENDPOINTS)
                    .map(|j| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 2)) + (i * ENDPOINTS + j) as u32))
                    .collect()
            };
            Service {
                name: ServiceName { namespace: "default".into(), name: format!("svc-{i}") },
                frontends: fes,
                backends: eps
                    .into_iter()
                    .map(|ip| Backend {
                        ip: IpAddr::V4(ip),
                        port: 8080,
                        port_name: "http".into(),
                        protocol: Protocol::Tcp,
                        state: BackendState::Active,
                        node: Some("elsewhere".into()),
                    })
                    .collect(),
                affinity_timeout_s: None,
                external_local: false,
                internal_local: false,
                source_ranges: vec![],
                health_check_node_port: None,
            }
        })
        .collect()
}

/// sluice's rules for `svcs` on the benchmark node (node-1, cluster CIDR 10.244.0.0/16).
/// Through `renderer`, as the agent renders: only Services changed since its last call.
pub(crate) fn sluice_rules(renderer: &mut Renderer, svcs: &[Service], owned: &BTreeSet<Feature>) -> Ruleset {
    renderer
        .render(&NodeInput {
            node_name: "node-1",
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            services: svcs,
            host_ports: &[],
            owned,
            log_group: None,
        })
        .0
}

/// How kube-proxy links its chains into the built-in ones (once, outside its syncs).
pub(crate) const PEER_JUMPS: &str = "*nat\n-I PREROUTING -j KUBE-SERVICES\n-I OUTPUT -j KUBE-SERVICES\n-I POSTROUTING -j KUBE-POSTROUTING\nCOMMIT\n*filter\n-I FORWARD -j KUBE-FORWARD\nCOMMIT\n";

/// Empty both variants' nat and filter tables of this (lab node) netns.
pub(crate) fn flush_all() -> anyhow::Result<()> {
    for v in ["nft", "legacy"] {
        let empty = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        restore(&format!("iptables-{v}-restore"), &[], empty.as_bytes(), Duration::from_secs(600))?;
    }
    Ok(())
}

/// Run a restore with a deadline; Ok(None) when it did not finish in time.
pub(crate) fn restore(bin: &str, args: &[&str], input: &[u8], timeout: Duration) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    let mut child =
        Command::new(bin).args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    loop {
        if let Some(st) = child.try_wait()? {
            let _ = writer.join();
            if !st.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("{bin} failed: {st}: {err}");
            }
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn peer_input(o: &Options, n: usize, mode: &str, target: &str) -> anyhow::Result<Vec<u8>> {
    let mut cmd = Command::new("python3");
    cmd.arg(&o.peer_script).args(["--services", &n.to_string(), "--endpoints", &ENDPOINTS.to_string(), "--mode", mode]);
    if n > 0 {
        cmd.args(["--target", target]);
    }
    let out = cmd.output().with_context(|| format!("running {}", o.peer_script.display()))?;
    if !out.status.success() {
        bail!("peer script failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

pub(crate) fn load(lab: &Lab, addr: SocketAddr, o: &Options) -> anyhow::Result<f64> {
    load_counts(lab, addr, o).map(|(rate, _)| rate)
}

/// (conn/s, connections completed) of one load run from the bench-client pod.
pub(crate) fn load_counts(lab: &Lab, addr: SocketAddr, o: &Options) -> anyhow::Result<(f64, u64)> {
    // Each measurement starts from an empty conntrack table (this runs in the node's netns),
    // so earlier runs' TIME_WAIT entries do not slow later ones.
    let _ = Command::new("conntrack").arg("-F").stderr(Stdio::null()).output();
    let out = lab.exec_output(
        "bench-client",
        &[
            "sluice-lab",
            "load",
            &addr.to_string(),
            "--connections",
            &o.connections.to_string(),
            "--secs",
            &o.load_secs.to_string(),
        ],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("load output {out:?}"))?;
    if v["failed"].as_u64().unwrap_or(0) > v["ok"].as_u64().unwrap_or(0) / 100 {
        bail!("too many failed connections to {addr}: {v}");
    }
    Ok((v["conn_per_s"].as_f64().unwrap_or(0.0), v["ok"].as_u64().unwrap_or(0)))
}

/// Connection rates and single-stream throughput to the Service (`vip`, when there is one) and
/// to the pod directly, measured alternately three times each; the medians. Alternating puts
/// both under the same machine conditions, so their ratio is what to read.
fn rates(lab: &Lab, vip: Option<SocketAddr>, direct: SocketAddr, o: &Options, rec: &mut Record) -> anyhow::Result<()> {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let (mut c, mut d, mut sc, mut sd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        if let Some(vip) = vip {
            c.push(load(lab, vip, o)?);
        }
        d.push(load(lab, direct, o)?);
    }
    for _ in 0..3 {
        if let Some(vip) = vip {
            sc.push(stream(lab, vip, o)?);
        }
        sd.push(stream(lab, direct, o)?);
    }
    rec.conn_per_s = median(c);
    rec.direct_conn_per_s = median(d);
    rec.stream_gbit_s = median(sc);
    rec.direct_stream_gbit_s = median(sd);
    Ok(())
}

/// Median of three direct connection-rate runs (nothing installed: the caller flushed).
fn baseline(lab: &Lab, direct: SocketAddr, o: &Options, n: usize) -> anyhow::Result<Option<f64>> {
    if n == 0 {
        return Ok(None);
    }
    let mut v = [load(lab, direct, o)?, load(lab, direct, o)?, load(lab, direct, o)?];
    v.sort_by(f64::total_cmp);
    Ok(Some(v[1]))
}

/// Single-stream throughput from the client pod to `addr` (Gbit/s).
fn stream(lab: &Lab, addr: SocketAddr, o: &Options) -> anyhow::Result<f64> {
    let out = lab.exec_output(
        "bench-client",
        &["sluice-lab", "stream", &addr.to_string(), "--secs", &o.load_secs.to_string()],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("stream output {out:?}"))?;
    v["gbit_per_s"].as_f64().with_context(|| format!("stream output {out:?}"))
}

/// N Services sorted by name (as the agent's translation hands them over) and a node context
/// giving eBPF the ClusterIPs only.
pub(crate) fn ebpf_inputs(n: usize, backend: Ipv4Addr) -> (Vec<Service>, sluice_ebpf::maps::NodeCtx) {
    let mut svcs = services(n, backend);
    svcs.sort_by(|a, b| a.name.cmp(&b.name));
    let ctx = sluice_ebpf::maps::NodeCtx {
        node_name: "node-1".into(),
        node_ips: Vec::new(),
        owned: [sluice_core::Feature::ClusterIp].into(),
        maglev_m: None,
        allowed_verdicts: false,
        trace_to_stack: false,
    };
    (svcs, ctx)
}

/// The eBPF datapath: programs on the client pod's veth, N services in the maps.
fn ebpf_record(
    lab: &Lab,
    o: &Options,
    n: usize,
    backend: Ipv4Addr,
    client_if: &str,
    direct: SocketAddr,
    path: sluice_core::TcAttach,
) -> anyhow::Result<Record> {
    let pin = PathBuf::from(format!("/sys/fs/bpf/sluice-bench-{}", std::process::id()));
    let _ = sluice_ebpf::datapath::remove_all(&pin);
    let name = if path == sluice_core::TcAttach::Classic { "ebpf-classic" } else { "ebpf" };
    let mut rec = Record::new(name, if path == sluice_core::TcAttach::Classic { "classic" } else { "tcx" }, n);
    let res = (|| -> anyhow::Result<()> {
        let mut dp = sluice_ebpf::datapath::Datapath::open(&pin, &Default::default())?;
        dp.attach(client_if, path)?;
        let (mut svcs, ctx) = ebpf_inputs(n, backend);
        let t = Instant::now();
        dp.update(&svcs, &[], &ctx)?;
        rec.program_all_ms = Some(ms(t.elapsed()));
        rec.rules = Some(dp.entries().services.len() + dp.entries().backends.len());
        if n >= 2 {
            // Five Services other than the target (svc-{n/2}) lose an endpoint, one change at a
            // time: the median, since one sub-10 ms sample on a shared 2-core machine is noise.
            let target = format!("svc-{}", n / 2);
            let mut times = Vec::new();
            let picks: Vec<usize> = (0..svcs.len()).filter(|i| svcs[*i].name.name != target).take(5).collect();
            for i in picks {
                svcs[i].backends.pop();
                let t = Instant::now();
                dp.update(&svcs, &[], &ctx)?;
                times.push(ms(t.elapsed()));
            }
            times.sort_by(f64::total_cmp);
            rec.single_change_ms = times.get(times.len() / 2).copied();
        }
        let target = (n > 0).then(|| SocketAddr::new(IpAddr::V4(vip(n / 2)), 80));
        rates(lab, target, direct, o, &mut rec)?;
        rec.note = Some("rules = map entries (services + backends)".into());
        Ok(())
    })();
    sluice_ebpf::datapath::remove_all(&pin)?;
    res.map(|_| rec)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn run(lab: &Lab, o: &Options, mut progress: impl FnMut(&Record)) -> anyhow::Result<Vec<Record>> {
    let st = lab.state()?;
    let backend: Ipv4Addr =
        st.pods.iter().find(|p| p.name == "bench-backend").context("no bench-backend pod")?.ip.parse()?;
    let direct = SocketAddr::new(IpAddr::V4(backend), 8080);
    // The client opens thousands of connections a second: give it the whole port range and
    // reuse. The server closes first, so TIME_WAIT piles up on its side, run after run, and
    // slows every later measurement: cap it, so each run starts from the same state.
    lab.exec_output(
        "bench-client",
        &["sysctl", "-w", "net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1"],
    )?;
    lab.exec_output("bench-backend", &["sysctl", "-w", "net.ipv4.tcp_max_tw_buckets=2048"])?;
    let owned: std::collections::BTreeSet<Feature> = sluice_iptables::SPEC.implemented();
    let mut records = Vec::new();
    // `ebpf`: the node's own path (TCX where the kernel has it, classic tc otherwise);
    // `ebpf-classic`: classic tc whatever the kernel has.
    let node_path =
        if sluice_ebpf::probe::tcx().0 { sluice_core::TcAttach::Tcx } else { sluice_core::TcAttach::Classic };
    let ebpf_paths: Vec<sluice_core::TcAttach> = o
        .backends
        .iter()
        .filter_map(|b| match b.as_str() {
            "ebpf" => Some(node_path),
            "ebpf-classic" => Some(sluice_core::TcAttach::Classic),
            _ => None,
        })
        .collect();
    if !ebpf_paths.is_empty() {
        let client_if = st
            .pods
            .iter()
            .find(|p| p.name == "bench-client")
            .and_then(|p| p.cni_result["interfaces"][0]["name"].as_str().map(str::to_string))
            .context("no bench-client pod")?;
        for &path in &ebpf_paths {
            for &n in &o.services {
                flush_all()?;
                let base = baseline(lab, direct, o, n)?;
                let mut rec = ebpf_record(lab, o, n, backend, &client_if, direct, path)?;
                rec.baseline_direct_conn_per_s = base;
                progress(&rec);
                records.push(rec);
            }
        }
        // Both paths asked for: the two compared in alternation at the largest N.
        let max = o.services.iter().copied().max().unwrap_or(0);
        if ebpf_paths.len() == 2 && ebpf_paths[0] != ebpf_paths[1] {
            flush_all()?;
            if let Some(pairs) = crate::bench_attach::classic_vs_tcx(lab, o, max, backend, &client_if)?
                && let Some(rec) = records.iter_mut().find(|r| r.backend == "ebpf-classic" && r.services == max)
            {
                rec.paired = Some(vec![pairs]);
            }
        }
    }
    for &variant in &o.variants {
        for backend_name in o.backends.iter().filter(|b| !b.starts_with("ebpf")) {
            for &n in &o.services {
                flush_all()?;
                let mut rec = Record::new(backend_name, variant.as_str(), n);
                rec.baseline_direct_conn_per_s = baseline(lab, direct, o, n)?;
                let target_vip = SocketAddr::new(IpAddr::V4(vip(n / 2)), 80);
                let bin = format!("iptables-{}-restore", variant.as_str());
                let programmed = match backend_name.as_str() {
                    "iptables" => {
                        let mut svcs = services(n, backend);
                        let mut syncer =
                            RuleSyncer::new(Iptables { variant }, sluice_iptables::ruleset::ChainOwner::Services);
                        let mut renderer = Renderer::default();
                        let t = Instant::now();
                        let rs = sluice_rules(&mut renderer, &svcs, &owned);
                        rec.rules = Some(rs.rule_count());
                        let rep = syncer.sync(&rs, true)?;
                        if std::env::var_os("SLUICE_BENCH_DEBUG").is_some() {
                            eprintln!("sync: {rep:?} rules {}", rs.rule_count());
                        }
                        rec.program_all_ms = Some(ms(t.elapsed()));
                        // Service 0 loses an endpoint (the target sits at n/2, so n >= 2).
                        if n >= 2 {
                            svcs[0].backends.pop();
                            let t = Instant::now();
                            let rs = sluice_rules(&mut renderer, &svcs, &owned);
                            let rendered = t.elapsed();
                            let rep = syncer.sync(&rs, false)?;
                            rec.single_change_ms = Some(ms(t.elapsed()));
                            if std::env::var_os("SLUICE_BENCH_DEBUG").is_some() {
                                eprintln!("single change: render {:.1} ms, sync {rep:?}", ms(rendered));
                            }
                        }
                        true
                    }
                    "kube-proxy-iptables" => {
                        let target = format!("{target_vip}={backend}:8080");
                        let full = peer_input(o, n, "full", &target)?;
                        rec.rules = Some(full.split(|b| *b == b'\n').filter(|l| l.starts_with(b"-A ")).count());
                        match restore(&bin, &["--noflush", "--wait"], &full, o.restore_timeout)? {
                            Some(d) => {
                                rec.program_all_ms = Some(ms(d));
                                // kube-proxy links its chains once, outside the sync (not timed).
                                restore(&bin, &["--noflush", "--wait"], PEER_JUMPS.as_bytes(), o.restore_timeout)?;
                                if n >= 2 {
                                    let partial = peer_input(o, n, "partial", &target)?;
                                    match restore(&bin, &["--noflush", "--wait"], &partial, o.restore_timeout)? {
                                        Some(d) => rec.single_change_ms = Some(ms(d)),
                                        None => {
                                            rec.note =
                                                Some(format!("partial sync did not finish in {:?}", o.restore_timeout))
                                        }
                                    }
                                }
                                true
                            }
                            None => {
                                rec.note = Some(format!("full sync did not finish in {:?}", o.restore_timeout));
                                false
                            }
                        }
                    }
                    other => bail!("unknown backend {other:?}; available: iptables, kube-proxy-iptables"),
                };
                if programmed {
                    rates(lab, (n > 0).then_some(target_vip), direct, o, &mut rec)?;
                }
                progress(&rec);
                records.push(rec);
            }
        }
        // The goals' ratios, measured again with the drift taken out (bench_paired).
        let max = o.services.iter().copied().max().unwrap_or(0);
        let smallest = o.services.iter().copied().filter(|n| *n > 0).min().unwrap_or(0);
        if o.backends.iter().any(|b| b == "iptables") {
            let with_peer = o.backends.iter().any(|b| b == "kube-proxy-iptables");
            let pairs = crate::bench_paired::paired(lab, o, variant, max, smallest, backend, with_peer)?;
            if let Some(rec) = records
                .iter_mut()
                .find(|r| r.backend == "iptables" && r.variant == variant.as_str() && r.services == max)
                .filter(|_| !pairs.is_empty())
            {
                rec.paired = Some(pairs);
            }
        }
        if variant == Variant::Legacy && o.backends.iter().any(|b| b == "iptables") && max >= 2 {
            let mut rec = Record::new("dnat-floor", variant.as_str(), max);
            rec.rules = Some(max * ENDPOINTS);
            rec.single_change_ms = crate::bench_floor::single_change_floor(max, o)?;
            rec.note = Some("only the endpoint DNAT rules; one-rule restore (bench_floor)".into());
            progress(&rec);
            records.push(rec);
        }
    }
    flush_all()?;
    Ok(records)
}

/// The side-by-side ratios the goals are stated in, from one run's records: at the largest N,
/// each sluice backend against its own smaller N and direct connections, and sluice iptables
/// against the peer on the same variant.
pub fn ratios(records: &[Record]) -> Vec<String> {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    };
    let inv = |a: Option<f64>, b: Option<f64>| ratio(b, a); // "faster by": peer time / our time
    let mut out = Vec::new();
    let Some(max) = records.iter().map(|r| r.services).max() else { return out };
    let find =
        |b: &str, v: &str, n: usize| records.iter().find(|r| r.backend == b && r.variant == v && r.services == n);
    let smallest = records.iter().map(|r| r.services).filter(|n| *n > 0).min().unwrap_or(max);
    let mut keys: Vec<(String, String)> = records.iter().map(|r| (r.backend.clone(), r.variant.clone())).collect();
    keys.dedup();
    for (b, v) in keys.iter().filter(|(b, _)| b != "kube-proxy-iptables" && b != "dnat-floor") {
        let (Some(big), Some(small), Some(zero)) = (find(b, v, max), find(b, v, smallest), find(b, v, 0)) else {
            continue;
        };
        out.push(format!(
            "{b} {v} at {max}: conn/s {} of direct, {} of its own at {smallest}; direct {} of N=0, {} of its baseline; stream {} of direct",
            ratio(big.conn_per_s, big.direct_conn_per_s),
            ratio(big.conn_per_s, small.conn_per_s),
            ratio(big.direct_conn_per_s, zero.direct_conn_per_s),
            ratio(big.direct_conn_per_s, big.baseline_direct_conn_per_s),
            ratio(big.stream_gbit_s, big.direct_stream_gbit_s),
        ));
        if let Some(peer) = find("kube-proxy-iptables", v, max).filter(|_| b == "iptables") {
            out.push(format!(
                "{b} {v} at {max} vs kube-proxy-iptables: program {} faster, change {} faster, conn/s {}",
                inv(big.program_all_ms, peer.program_all_ms),
                inv(big.single_change_ms, peer.single_change_ms),
                ratio(big.conn_per_s, peer.conn_per_s),
            ));
        }
        if let (Some(floor), Some(peer)) =
            (find("dnat-floor", v, max).filter(|_| b == "iptables"), find("kube-proxy-iptables", v, max))
        {
            out.push(format!(
                "{v} floor at {max} (a table of only the endpoint DNAT rules): one change {} faster than the peer's partial sync at best; sluice is at {} of that floor's speed",
                inv(floor.single_change_ms, peer.single_change_ms),
                inv(big.single_change_ms, floor.single_change_ms),
            ));
        }
        for p in big.paired.iter().flatten() {
            if let Some(sm) = p.summary() {
                out.push(format!(
                    "{b} {v} paired ({} ABBA rounds, each deployment alone): {:?} vs {:?} to the {:?}: median {:.2}x, geometric mean {:.2}x (rounds {:.2}x to {:.2}x)",
                    p.conn_per_s.len(),
                    p.a,
                    p.b,
                    p.target,
                    sm.median,
                    sm.geomean,
                    sm.min,
                    sm.max
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_compare_like_with_like() {
        let rec = |b: &str, n: usize, prog: f64, conn: f64, direct: f64| Record {
            program_all_ms: Some(prog),
            single_change_ms: Some(prog / 10.0),
            conn_per_s: (n > 0).then_some(conn),
            direct_conn_per_s: Some(direct),
            ..Record::new(b, "legacy", n)
        };
        let r = vec![
            rec("iptables", 0, 1.0, 0.0, 1000.0),
            rec("iptables", 100, 10.0, 900.0, 1000.0),
            rec("iptables", 10000, 100.0, 900.0, 950.0),
            rec("kube-proxy-iptables", 10000, 800.0, 600.0, 700.0),
        ];
        let lines = ratios(&r);
        assert!(lines[0].contains("conn/s 0.95x of direct, 1.00x of its own at 100; direct 0.95x of N=0"), "{lines:?}");
        assert!(lines[1].contains("program 8.00x faster, change 8.00x faster, conn/s 1.50x"), "{lines:?}");
        assert_eq!(lines.len(), 2, "no line for the peer itself: {lines:?}");
    }

    #[test]
    fn benchmark_services_render_a_reachable_target() {
        for n in [1, 2, 100] {
            let svcs = services(n, Ipv4Addr::new(10, 244, 1, 2));
            let owned = sluice_iptables::SPEC.implemented();
            let r = sluice_iptables::services::render(&NodeInput {
                node_name: "node-1",
                cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
                services: &svcs,
                host_ports: &[],
                owned: &owned,
                log_group: None,
            });
            let nat = &r.chains["nat"];
            assert!(nat.keys().any(|k| k.starts_with("SLUICE-D-")), "n={n}: {:?}", nat.keys().collect::<Vec<_>>());
        }
    }
}
