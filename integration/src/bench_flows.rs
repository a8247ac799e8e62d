//! `cargo xtask bench flows`: what flow visibility costs and how much it can take.
//!
//! - Connection rate through a ClusterIP with flows on vs off, on one node's real agent, in ABBA
//!   rounds (bench_paired's method): the agent's `flows.enabled` is switched in its config file
//!   between measurements (it applies without a restart). Once per node dataplane: on iptables
//!   flows come from conntrack events (one a connection), on eBPF from the pod veths' traces
//!   (two: from the client, to the backend). In the "on" rounds, every connection the load made
//!   must show up as its flows, or the reported losses must say events were lost.
//! - The agent's CPU and RSS while the load runs with flows on.
//! - The flow pipeline's own rate (the code the agent's reader thread runs: parse a conntrack
//!   event, name it through the directory, count its metrics, push it into the ring), fed with
//!   the kernel's encoding of distinct events on one thread: the events per second one agent
//!   processes, which the lab's load (a few thousand connections a second on this machine)
//!   cannot reach.
//! - `GetFlows` latency for the last 20 flows from a full ring, over the agent's unix socket.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use sluice_core::flow::enrich::Directory;
use sluice_iptables::ct_events::{Tuple, encode_new, flows_from, parse};
use sluice_observer::server::Hub;

use crate::Lab;
use crate::bench_paired::{ROUNDS, Summary, summarize};
use crate::bench_services::{Options, load_counts};

#[derive(Debug, Clone, Serialize)]
pub struct OnOff {
    pub dataplane: String,
    /// [flows on, flows off] conn/s per round.
    pub conn_per_s: Vec<[f64; 2]>,
    /// Per "on" round: (connections made, flows recorded, kernel overruns).
    pub accounted: Vec<(u64, u64, u64)>,
    /// Flows each connection makes: 1 from conntrack (iptables node), 2 from an eBPF node's
    /// pod veths (the client's from-endpoint and the backend's to-endpoint trace).
    pub flows_per_connection: u64,
    pub agent_cpu_percent: f64,
    pub agent_rss_mb: f64,
}

impl OnOff {
    pub fn summary(&self) -> Option<Summary> {
        summarize(&self.conn_per_s)
    }

    /// Connections that are neither a flow nor covered by a reported kernel overrun.
    pub fn unreported_loss(&self) -> u64 {
        self.accounted
            .iter()
            .filter(|(_, _, overruns)| *overruns == 0)
            .map(|(made, seen, _)| {
                (made * self.flows_per_connection).saturating_sub(*seen).div_ceil(self.flows_per_connection)
            })
            .sum()
    }
}

fn node_config_path(lab: &Lab) -> anyhow::Result<(PathBuf, crate::state::NodeRec)> {
    let st = lab.state()?;
    let n = st.node("node-1")?.clone();
    Ok((n.dir.join("config.yaml"), n))
}

/// The arm `ebpf+to-stack`: eBPF with `flows.trace_to_stack` (a third trace per connection).
const TO_STACK_ARM: &str = "ebpf+to-stack";

/// Rewrite the node's config (the lab writes JSON, which is YAML) and wait until the agent
/// applied it: its flows running as asked, and `arm`'s dataplane as given.
fn set_config(lab: &Lab, arm: &str, flows: bool) -> anyhow::Result<()> {
    let (path, node) = node_config_path(lab)?;
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path)?).context("node config")?;
    let dataplane = if arm == TO_STACK_ARM { "ebpf" } else { arm };
    cfg["dataplane"] = dataplane.into();
    cfg["flows"]["enabled"] = flows.into();
    cfg["flows"]["trace_to_stack"] = (arm == TO_STACK_ARM).into();
    let text = serde_json::to_string_pretty(&cfg)? + "\n";
    // A changed file is applied when the agent's config generation moves past this one.
    let applied_after = (std::fs::read_to_string(&path)? != text)
        .then(|| lab.agent_status(&node).map(|st| st["config"]["generation"].as_u64().unwrap_or(0)))
        .transpose()?;
    std::fs::write(&path, text)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = lab.agent_status(&node)?;
        let running = st["flows"]["running"].as_bool() == Some(flows);
        let planned = st["plan"]["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["feature"] == "cluster-ip")
            .is_some_and(|e| e["owner"].to_string().contains(dataplane));
        let settled = st["features"].as_array().into_iter().flatten().all(|f| f["state"] != "moving");
        let applied = applied_after.is_none_or(|g| st["config"]["generation"].as_u64().unwrap_or(0) > g);
        if running && planned && settled && applied {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the agent did not apply dataplane={dataplane} flows.enabled={flows}: {}", st["config"]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn flow_counts(lab: &Lab) -> anyhow::Result<(u64, u64)> {
    let (_, node) = node_config_path(lab)?;
    let st = lab.agent_status(&node)?;
    Ok((st["flows"]["seen"].as_u64().unwrap_or(0), st["flows"]["lost_in_kernel"].as_u64().unwrap_or(0)))
}

/// (CPU seconds, RSS MB) of a process so far.
fn usage(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Ok((ticks / hz, rss_kb / 1024.0))
}

/// Flows on vs off through `addr`, ABBA rounds, on a node whose dataplane is `dataplane`.
pub fn on_off(lab: &Lab, dataplane: &str, addr: SocketAddr, o: &Options) -> anyhow::Result<OnOff> {
    let (_, node) = node_config_path(lab)?;
    let pid = node.agent_pid.context("the node's agent is not running")?;
    let mut out = OnOff {
        dataplane: dataplane.into(),
        conn_per_s: Vec::new(),
        accounted: Vec::new(),
        // (to-stack: the client's from-endpoint and to-stack, the backend's to-endpoint)
        flows_per_connection: match dataplane {
            "ebpf" => 2,
            TO_STACK_ARM => 3,
            _ => 1,
        },
        agent_cpu_percent: 0.0,
        agent_rss_mb: 0.0,
    };
    let (mut cpu_s, mut wall_s) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let order = if round % 4 == 0 || round % 4 == 3 { [true, false] } else { [false, true] };
        let mut pair = [0.0; 2];
        for on in order {
            set_config(lab, dataplane, on)?;
            if round == 0 {
                // The first switch to this dataplane moves every feature: one unmeasured run
                // lets that finish (conntrack settling, programs attaching).
                load_counts(lab, addr, o)?;
            }
            std::thread::sleep(crate::bench_paired::SETTLE_TIME);
            let before = flow_counts(lab)?;
            let (cpu0, _) = usage(pid)?;
            let t = Instant::now();
            let (rate, made) = load_counts(lab, addr, o)?;
            if on {
                let (cpu1, rss) = usage(pid)?;
                cpu_s += cpu1 - cpu0;
                wall_s += t.elapsed().as_secs_f64();
                out.agent_rss_mb = out.agent_rss_mb.max(rss);
                // The reader drains what the kernel queued during the load.
                std::thread::sleep(Duration::from_secs(1));
                let after = flow_counts(lab)?;
                out.accounted.push((made, after.0 - before.0, after.1 - before.1));
            }
            pair[usize::from(!on)] = rate;
        }
        eprintln!(
            "flows {dataplane} round {}/{ROUNDS}: on {:.0} conn/s, off {:.0} conn/s ({:.2}x)",
            round + 1,
            pair[0],
            pair[1],
            pair[0] / pair[1].max(1.0)
        );
        out.conn_per_s.push(pair);
    }
    out.agent_cpu_percent = if wall_s > 0.0 { 100.0 * cpu_s / wall_s } else { 0.0 };
    set_config(lab, dataplane, true)?;
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    pub events: usize,
    pub events_per_s: f64,
    pub flows_held: usize,
}

/// The reader's work for `events` distinct conntrack NEW events on this thread.
pub fn pipeline(events: usize) -> Pipeline {
    // 200 pods on 4 nodes, 50 Services: enough that lookups are not trivially cached.
    let pods: Vec<sluice_core::PodInfo> = (0..200u32)
        .map(|i| sluice_core::PodInfo {
            namespace: format!("ns-{}", i % 10),
            name: format!("pod-{i}"),
            node: Some(format!("node-{}", i % 4)),
            ip: Some(IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 2)) + i))),
            labels: [("app".to_string(), format!("app-{}", i % 20))].into_iter().collect(),
            ready: true,
            ports: Vec::new(),
            workload: None,
        })
        .collect();
    let services = crate::bench_services::services(50, Ipv4Addr::new(10, 244, 0, 2));
    let dir = Directory::new("node-0", &pods, &services, |ip| Some(256 + (u32::from(ip) & 0xff)), &[]);
    let hub =
        Hub::new("node-0", "unix://bench", 4095, sluice_config::Config::default().hubble_metrics().unwrap_or_default());
    let ip = |i: usize| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 2)) + (i % 200) as u32);
    let msgs: Vec<Vec<u8>> = (0..4096)
        .map(|i| {
            let orig = Tuple {
                src: Some(ip(i)),
                dst: Some(crate::bench_services::vip(i % 50)),
                proto: 6,
                sport: 30000 + (i % 30000) as u16,
                dport: 80,
            };
            let reply = Tuple { src: Some(ip(i + 7)), dst: Some(ip(i)), proto: 6, sport: 8080, dport: orig.sport };
            encode_new(&orig, &reply, 1 << 5)
        })
        .collect();
    let start = Instant::now();
    for i in 0..events {
        let evs = parse(&msgs[i % msgs.len()]);
        let flows = flows_from(&evs, &dir, sluice_observer::server::now_ns(), false);
        hub.push(flows);
    }
    let secs = start.elapsed().as_secs_f64();
    Pipeline { events, events_per_s: events as f64 / secs, flows_held: hub.counts().0 }
}

/// `GetFlows` for the last 20 flows, `n` times, over the agent's socket: (p50, p99) in ms.
pub fn getflows_latency(socket: &Path, n: usize) -> anyhow::Result<(f64, f64)> {
    use sluice_observer::pb::observer::GetFlowsRequest;
    use sluice_observer::pb::observer::observer_client::ObserverClient;
    use tokio_stream::StreamExt;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut ms = rt.block_on(async {
        let ch = sluice_observer::client::connect_unix(socket.into()).await?;
        let mut c = ObserverClient::new(ch);
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let mut s = c.get_flows(GetFlowsRequest { number: 20, ..Default::default() }).await?.into_inner();
            let mut got = 0;
            while let Some(r) = s.next().await {
                r?;
                got += 1;
            }
            anyhow::ensure!(got == 20, "GetFlows returned {got} flows, not 20");
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::Ok(ms)
    })?;
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[(ms.len() * 99 / 100).min(ms.len() - 1)]))
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub on_off: Vec<OnOff>,
    pub pipeline: Pipeline,
    pub getflows_last20_ms: (f64, f64),
    pub ring_flows: u64,
}

pub fn run(lab: &Lab, addr: SocketAddr, o: &Options) -> anyhow::Result<Report> {
    let mut on_off_all = Vec::new();
    for dp in ["iptables", "ebpf", TO_STACK_ARM] {
        on_off_all.push(on_off(lab, dp, addr, o)?);
    }
    let (_, node) = node_config_path(lab)?;
    let st = lab.agent_status(&node)?;
    let socket = st["flows"]["socket"].as_str().context("the agent serves no Observer socket")?.to_string();
    let ring_flows = st["flows"]["flows"].as_u64().unwrap_or(0);
    let getflows_last20_ms = getflows_latency(Path::new(&socket), 200)?;
    let pipeline = pipeline(1_000_000);
    Ok(Report { on_off: on_off_all, pipeline, getflows_last20_ms, ring_flows })
}

/// The lines the benchmark prints (and docs/benchmarks.md quotes).
pub fn lines(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for o in &r.on_off {
        let made: u64 = o.accounted.iter().map(|a| a.0).sum();
        let seen: u64 = o.accounted.iter().map(|a| a.1).sum();
        let overruns: u64 = o.accounted.iter().map(|a| a.2).sum();
        match o.summary() {
            Some(s) => out.push(format!(
                "{} node: conn/s with flows on / off: median {:.3}x, geomean {:.3}x (range {:.3}-{:.3}, {} ABBA rounds); goal >= {}",
                o.dataplane,
                s.median,
                s.geomean,
                s.min,
                s.max,
                o.conn_per_s.len(),
                match o.dataplane.as_str() {
                    "ebpf" => "0.95x",
                    TO_STACK_ARM => "none (opt-in)",
                    _ => "0.9x",
                }
            )),
            None => out.push(format!("{} node: no rates measured", o.dataplane)),
        }
        out.push(format!(
            "{} node, flows on: {made} connections, {seen} flows recorded ({} a connection), {overruns} losses reported, {} connections neither recorded nor covered by a reported overrun; agent CPU {:.1}% of one core, RSS {:.1} MB",
            o.dataplane,
            o.flows_per_connection,
            o.unreported_loss(),
            o.agent_cpu_percent,
            o.agent_rss_mb
        ));
    }
    out.push(format!(
        "flow pipeline (parse, name, count, ring) on one thread: {:.0} events/s over {} distinct-event iterations (goal >= 200000)",
        r.pipeline.events_per_s, r.pipeline.events
    ));
    out.push(format!(
        "GetFlows last 20 of a ring holding {} flows, over the agent's unix socket: p50 {:.2} ms, p99 {:.2} ms",
        r.ring_flows, r.getflows_last20_ms.0, r.getflows_last20_ms.1
    ));
    out
}
