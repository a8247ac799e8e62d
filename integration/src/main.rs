//! `sluice-lab`: a virtual sluice cluster from network namespaces.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;
use sluice_lab::Lab;
use sluice_lab::lab::parse_labels;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Parser)]
#[command(
    name = "sluice-lab",
    version,
    about = "A virtual sluice cluster on one machine, built from network namespaces",
    long_about = "A virtual sluice cluster on one machine, built from network namespaces.\n\n\
Nodes, pods and external hosts are namespaces named sl-<lab>--*; nothing is added to the\n\
machine's own network namespace. Needs root.\n\n\
Example:\n  sluice-lab up --nodes 2\n  sluice-lab pod add node-1 a --serve 8080\n  sluice-lab pod add node-2 b\n  \
sluice-lab exec b -- sluice-lab curl http://10.244.1.2:8080/\n  sluice-lab exec node-1 -- sluice status\n  sluice-lab down"
)]
struct Cli {
    /// Lab name (several labs can be up at once).
    #[arg(long, global = true, env = "SLUICE_LAB", default_value = "lab")]
    lab: String,
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the underlay, N nodes and start one agent per node.
    Up {
        #[arg(long, default_value_t = 2)]
        nodes: u32,
        /// Merge a YAML config file over a node's generated agent config (repeatable).
        #[arg(long = "node-config", value_name = "NODE=FILE")]
        node_config: Vec<String>,
    },
    /// Stop every lab process and delete every lab namespace (also after a crashed run).
    Down,
    /// Nodes (underlay IP, pod CIDR, agent state), pods and external hosts.
    Status,
    /// Pods: network namespaces wired by sluice-cni exactly as a runtime does.
    #[command(subcommand)]
    Pod(PodCmd),
    /// Hosts outside the cluster, on the underlay.
    #[command(subcommand)]
    External(ExtCmd),
    /// Run a command inside a node, pod or external host. On a node, `sluice` talks to that node's agent.
    Exec {
        target: String,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Apply Kubernetes YAML (file or directory) to the standalone source all agents read.
    Apply { path: PathBuf },
    /// Remove the objects `apply` took from this file (or directory), as `kubectl delete -f`.
    Delete { path: PathBuf },
    /// Restart a node's agent (`--kill` sends SIGKILL, like a crash).
    RestartAgent {
        node: String,
        #[arg(long)]
        kill: bool,
    },
    /// HTTP GET a URL and print the body (a curl for lab hosts).
    Curl {
        url: String,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// The request method.
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// An extra request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Connect from this local port (e.g. to reuse a port an earlier connection had).
        #[arg(long)]
        local_port: Option<u16>,
    },
    /// Send one UDP datagram to IP:PORT and print the reply.
    Udp {
        addr: String,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Send from this local port (to reuse one UDP flow across calls).
        #[arg(long, default_value_t = 0)]
        source_port: u16,
    },
    /// CNI ADD/DEL latency of sluice-cni vs ptp+host-local on node-1 (use `cargo xtask bench cni`).
    #[command(hide = true)]
    BenchCni {
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// Also write the report here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Hold one TCP connection to an echo server, a round trip every --interval-ms, for --secs;
    /// fails if the connection breaks.
    Hold {
        addr: String,
        #[arg(long, default_value_t = 5)]
        secs: u64,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// End early (successfully) when this file appears.
        #[arg(long)]
        stop_file: Option<PathBuf>,
        /// Instead of echo lines: HTTP/1.1 GET this path on the one keep-alive connection, each
        /// answered 200 (an L7 proxy in between).
        #[arg(long)]
        http: Option<String>,
    },
    /// Closed-loop HTTP load (new connection per request) against IP:PORT; prints JSON.
    Load {
        addr: std::net::SocketAddr,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 3)]
        secs: u64,
        /// Also print successes and failures per bucket of this many ms (`timeline`).
        #[arg(long)]
        bucket_ms: Option<u64>,
        /// End early when this file appears (--secs is then the longest it runs).
        #[arg(long)]
        stop_file: Option<PathBuf>,
        /// Each loop waits this long between connections (0: as fast as it can).
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// Single-stream TCP throughput to an echo server (sink mode) at IP:PORT; prints JSON.
    Stream {
        addr: std::net::SocketAddr,
        #[arg(long, default_value_t = 3)]
        secs: u64,
    },
    /// Service programming and connection-rate benchmark (use `cargo xtask bench services`).
    #[command(hide = true)]
    BenchServices {
        #[arg(long, default_value = "0,100,1000,10000", value_delimiter = ',')]
        services: Vec<usize>,
        #[arg(long, default_value = "legacy,nft", value_delimiter = ',')]
        variants: Vec<String>,
        #[arg(long, default_value = "ebpf,iptables,kube-proxy-iptables", value_delimiter = ',')]
        backends: Vec<String>,
        #[arg(long)]
        peer_script: PathBuf,
        #[arg(long, default_value_t = 3)]
        load_secs: u64,
        #[arg(long, default_value_t = 300)]
        restore_timeout_s: u64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The flows benchmark (run by `cargo xtask bench flows` inside node-1's netns): conn/s with
    /// flows on vs off per dataplane, the agent's CPU and RSS, the flow pipeline's events/s and
    /// GetFlows latency.
    #[command(hide = true)]
    BenchFlows {
        /// The ClusterIP:port to load (a Service over the bench-backend pod).
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long, default_value_t = 3)]
        load_secs: u64,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The L7 benchmark (run by `cargo xtask bench l7` on its lab).
    #[command(hide = true)]
    BenchL7 {
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A keep-alive HTTP server answering `ok` (the L7 benchmark's backend).
    #[command(hide = true)]
    HttpServe {
        #[arg(long)]
        port: u16,
    },
    /// Closed-loop HTTP load with N clients; prints JSON (req/s, p50, p99).
    #[command(hide = true)]
    HttpLoad {
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        #[arg(long)]
        keep_alive: bool,
    },
    /// Open N keep-alive connections (one request each), print how many, hold them.
    #[command(hide = true)]
    HttpHold {
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        #[arg(long, default_value_t = 4.0)]
        secs: f64,
    },
    /// Run the echo server (what `pod add --serve` starts inside the pod).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        name: String,
        /// Repeatable: every port is served on TCP and UDP.
        #[arg(long, required = true)]
        port: Vec<u16>,
    },
    /// Namespaces (Namespace objects in the standalone source, for policy selectors).
    #[command(subcommand)]
    Namespace(NsCmd),
    /// Can FROM (a pod `NS/NAME`, node or external host) reach IP:PORT? Exit 0 when something
    /// answered, 1 when nothing did within the timeout (a policy drop looks like this).
    Probe {
        from: String,
        /// IP:PORT.
        addr: std::net::SocketAddr,
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: ProbeProto,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Connect to IP:PORT over and over until the answer changes (answering -> silent with
    /// `--until silent`, or back); prints JSON with the Unix time (ms) the first probe of the
    /// new state started. For `cargo xtask bench policy`.
    #[command(hide = true)]
    FlipWatch {
        addr: std::net::SocketAddr,
        #[arg(long, value_parser = ["silent", "answer"])]
        until: String,
        /// A probe unanswered after this long counts as silent.
        #[arg(long, default_value_t = 150)]
        timeout_ms: u64,
        /// A new probe starts this often, each on its own (so a silent probe's wait does not
        /// hide a flip to "answer": the resolution is this, not the timeout).
        #[arg(long, default_value_t = 5)]
        every_ms: u64,
        #[arg(long, default_value_t = 60)]
        max_secs: u64,
    },
    /// Probe targets (`IP:PORT/tcp|udp`) from here, all at once; prints JSON (what `probe` runs
    /// inside FROM).
    #[command(hide = true)]
    ProbeLocal {
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        targets: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PodCmd {
    /// Create pod NS/NAME (plain NAME: default/NAME) on NODE.
    Add {
        node: String,
        name: String,
        /// Pod labels, k=v,k2=v2.
        #[arg(long, default_value = "")]
        labels: String,
        /// Run an HTTP (and UDP) echo server on these ports (80,81) that answers with the pod
        /// name; the manifest names them serve-<port>-tcp and serve-<port>-udp.
        #[arg(long, value_delimiter = ',')]
        serve: Vec<u16>,
        /// Declare a hostPort (TCP) for the echo server's port in the pod's manifest.
        #[arg(long)]
        host_port: Option<u16>,
    },
    /// Delete a pod (CNI DEL through the whole chain, then its namespace).
    Del { name: String },
    /// Add or change labels of pod NS/NAME (k=v,k2=v2).
    Label { name: String, labels: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProbeProto {
    Tcp,
    Udp,
}

#[derive(Subcommand)]
enum NsCmd {
    /// Create namespace NS (with `kubernetes.io/metadata.name`, as the API server sets it).
    Add {
        ns: String,
        /// Namespace labels, k=v,k2=v2.
        #[arg(long, default_value = "")]
        labels: String,
    },
    /// Add or change labels of namespace NS (k=v,k2=v2).
    Label { ns: String, labels: String },
}

#[derive(Subcommand)]
enum ExtCmd {
    /// Add an outside host on the underlay (198.51.100.201 and up).
    Add {
        name: String,
        /// Run the echo server on this port (answers with the host name).
        #[arg(long)]
        serve: Option<u16>,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<u8> {
    let cli = Cli::parse();
    let json_out = cli.output == Output::Json;
    match cli.cmd {
        Cmd::Serve { name, port } => sluice_lab::http::serve(&name, &port).map(|_| 0),
        Cmd::FlipWatch { addr, until, timeout_ms, every_ms, max_secs } => {
            let timing = sluice_lab::flip::Timing {
                timeout: Duration::from_millis(timeout_ms),
                every: Duration::from_millis(every_ms.max(1)),
                max: Duration::from_secs(max_secs),
            };
            let f = sluice_lab::flip::watch(addr, until == "answer", timing)?;
            println!("{}", serde_json::to_string(&f)?);
            Ok(0)
        }
        Cmd::ProbeLocal { timeout_ms, targets } => {
            let res = sluice_lab::http::probe_many(&targets, Duration::from_millis(timeout_ms));
            println!("{}", serde_json::to_string(&res)?);
            Ok(0)
        }
        Cmd::HttpServe { port } => sluice_lab::http_load::serve(port).map(|_| 0),
        Cmd::HttpLoad { target, conns, secs, keep_alive } => {
            let r = sluice_lab::http_load::load(target, "/bench", conns, secs, keep_alive)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(0)
        }
        Cmd::HttpHold { target, conns, secs } => sluice_lab::http_load::hold_many(target, conns, secs).map(|_| 0),
        Cmd::Curl { url, timeout_ms, method, headers, local_port } => {
            let timeout = Duration::from_millis(timeout_ms);
            print!("{}", sluice_lab::http::request_from(&method, &url, &headers, timeout, local_port)?);
            Ok(0)
        }
        Cmd::Hold { addr, secs, interval_ms, stop_file, http } => {
            let (secs, interval) = (Duration::from_secs(secs), Duration::from_millis(interval_ms));
            let trips = match http {
                Some(path) => sluice_lab::http::hold_http(&addr, &path, secs, interval, stop_file.as_deref())?,
                None => sluice_lab::http::hold(&addr, secs, interval, stop_file.as_deref())?,
            };
            println!("{trips} round trips on one connection");
            Ok(0)
        }
        Cmd::Load { addr, connections, secs, bucket_ms, stop_file, pause_ms } => {
            let bucket = bucket_ms.map(Duration::from_millis);
            let r = sluice_lab::load::run_with_timeline(
                addr,
                connections,
                Duration::from_secs(secs),
                bucket,
                stop_file.as_deref(),
                Duration::from_millis(pause_ms),
            );
            println!("{}", serde_json::to_string(&r)?);
            Ok(0)
        }
        Cmd::Stream { addr, secs } => {
            let r = sluice_lab::load::stream(addr, Duration::from_secs(secs))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(0)
        }
        Cmd::Udp { addr, timeout_ms, source_port } => {
            print!("{}", sluice_lab::http::udp_from(&addr, source_port, Duration::from_millis(timeout_ms))?);
            Ok(0)
        }
        cmd => {
            let lab = Lab::new(&cli.lab)?;
            lab_cmd(&lab, cmd, json_out)
        }
    }
}

fn lab_cmd(lab: &Lab, cmd: Cmd, json_out: bool) -> anyhow::Result<u8> {
    match cmd {
        Cmd::Up { nodes, node_config } => {
            let mut cfgs = Vec::new();
            for nc in node_config {
                let (n, f) = nc.split_once('=').with_context(|| format!("--node-config {nc:?}: expected NODE=FILE"))?;
                cfgs.push((n.to_string(), PathBuf::from(f)));
            }
            eprintln!("bringing up lab {:?} with {nodes} node(s)...", lab.name);
            let st = match lab.up(nodes, &cfgs) {
                Ok(st) => st,
                Err(e) => {
                    eprintln!("up failed; removing what was made");
                    let _ = lab.down();
                    return Err(e);
                }
            };
            for n in &st.nodes {
                eprintln!(
                    "  {}: underlay {} pod CIDR {} agent pid {}",
                    n.name,
                    n.underlay_ip,
                    n.pod_cidr,
                    n.agent_pid.unwrap_or(0)
                );
            }
            eprintln!("lab {:?} is up; try `sluice-lab status`", lab.name);
        }
        Cmd::Down => println!("{}", lab.down()?),
        Cmd::Status => status(lab, json_out)?,
        Cmd::Pod(PodCmd::Add { node, name, labels, serve, host_port }) => {
            let p = lab.pod_add_ports(&node, &name, parse_labels(&labels)?, &serve, host_port)?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!(
                    "pod {} on {}: {}{}",
                    p.name,
                    p.node,
                    p.ip,
                    if serve.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (echo server on {})",
                            serve.iter().map(|s| format!(":{s}")).collect::<Vec<_>>().join(" ")
                        )
                    }
                );
            }
        }
        Cmd::Pod(PodCmd::Del { name }) => {
            lab.pod_del(&name)?;
            println!("pod {name} deleted");
        }
        Cmd::Pod(PodCmd::Label { name, labels }) => {
            let p = lab.pod_label(&name, parse_labels(&labels)?)?;
            let l: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("pod {} labels: {}", p.name, l.join(","));
        }
        Cmd::Namespace(NsCmd::Add { ns, labels }) => {
            lab.namespace_set(&ns, parse_labels(&labels)?, true)?;
            println!("namespace {ns} added");
        }
        Cmd::Namespace(NsCmd::Label { ns, labels }) => {
            lab.namespace_set(&ns, parse_labels(&labels)?, false)?;
            println!("namespace {ns} labelled");
        }
        Cmd::Probe { from, addr, protocol, timeout_ms } => {
            let proto = match protocol {
                ProbeProto::Tcp => "tcp",
                ProbeProto::Udp => "udp",
            };
            let res = lab.probe(&from, &[format!("{addr}/{proto}")], timeout_ms)?;
            let r = res.first().context("no probe result")?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(r)?);
            } else if r.answered {
                println!("{from} -> {addr}/{proto}: answered by {}", r.detail);
            } else {
                println!("{from} -> {addr}/{proto}: no answer ({})", r.detail);
            }
            return Ok(if r.answered { 0 } else { 1 });
        }
        Cmd::External(ExtCmd::Add { name, serve }) => {
            let e = lab.external_add(&name, serve)?;
            println!("external host {} at {}", e.name, e.ip);
        }
        Cmd::Exec { target, argv } => {
            let status =
                lab.command(&target, &argv)?.status().with_context(|| format!("running {argv:?} on {target}"))?;
            return Ok(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1));
        }
        Cmd::Apply { path } => {
            for f in lab.apply(&path)? {
                println!("applied {}", f.display());
            }
        }
        Cmd::Delete { path } => {
            for f in lab.delete(&path)? {
                println!("deleted {}", f.display());
            }
        }
        Cmd::RestartAgent { node, kill } => {
            let pid = lab.restart_agent(&node, kill)?;
            let st = lab.state()?;
            lab.wait_agent_ready(st.node(&node)?, Duration::from_secs(30))?;
            println!("agent on {node} restarted (pid {pid})");
        }
        Cmd::BenchCni { iterations, json } => {
            let r = sluice_lab::bench::cni(lab, iterations)?;
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED).set_header([
                "PLUGIN",
                "ADD p50 ms",
                "ADD p99 ms",
                "DEL p50 ms",
                "DEL p99 ms",
            ]);
            for l in &r.results {
                t.add_row([
                    l.plugin.clone(),
                    format!("{:.2}", l.add_p50_ms),
                    format!("{:.2}", l.add_p99_ms),
                    format!("{:.2}", l.del_p50_ms),
                    format!("{:.2}", l.del_p99_ms),
                ]);
            }
            println!("CNI latency, {} interleaved iterations each\n{t}", r.iterations);
            println!(
                "ADD p50: sluice-cni is {:.2}x the speed of ptp+host-local; DEL p50: {:.2}x",
                r.add_p50_speedup, r.del_p50_speedup
            );
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
            }
        }
        Cmd::BenchL7 { json } => {
            let report = sluice_lab::bench_l7::run(lab)?;
            for l in sluice_lab::bench_l7::lines(&report) {
                println!("{l}");
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            }
        }
        Cmd::BenchFlows { target, load_secs, json } => {
            let opts = sluice_lab::bench_services::Options {
                services: Vec::new(),
                variants: Vec::new(),
                backends: Vec::new(),
                peer_script: PathBuf::new(),
                load_secs,
                connections: 16,
                restore_timeout: Duration::from_secs(60),
            };
            let report = sluice_lab::bench_flows::run(lab, target, &opts)?;
            for l in sluice_lab::bench_flows::lines(&report) {
                println!("{l}");
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
            }
        }
        Cmd::BenchServices { services, variants, backends, peer_script, load_secs, restore_timeout_s, json } => {
            let variants = variants
                .iter()
                .map(|v| match v.as_str() {
                    "legacy" => Ok(sluice_iptables::Variant::Legacy),
                    "nft" => Ok(sluice_iptables::Variant::Nft),
                    o => Err(anyhow::anyhow!("--variants: {o:?} is not legacy or nft")),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let opts = sluice_lab::bench_services::Options {
                services,
                variants,
                backends,
                peer_script,
                load_secs,
                connections: 16,
                restore_timeout: Duration::from_secs(restore_timeout_s),
            };
            let fmt = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
            let gbit = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
            eprintln!(
                "{:<20} {:<7} {:>6} {:>8} {:>11} {:>10} {:>9} {:>9} {:>9} {:>8} {:>8}  note",
                "backend",
                "variant",
                "N",
                "rules",
                "program ms",
                "change ms",
                "conn/s",
                "direct/s",
                "base/s",
                "Gbit/s",
                "direct"
            );
            let records = sluice_lab::bench_services::run(lab, &opts, |r| {
                eprintln!(
                    "{:<20} {:<7} {:>6} {:>8} {:>11} {:>10} {:>9} {:>9} {:>9} {:>8} {:>8}  {}",
                    r.backend,
                    r.variant,
                    r.services,
                    r.rules.map(|x| x.to_string()).unwrap_or_default(),
                    fmt(r.program_all_ms),
                    r.single_change_ms.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into()),
                    fmt(r.conn_per_s),
                    fmt(r.direct_conn_per_s),
                    fmt(r.baseline_direct_conn_per_s),
                    gbit(r.stream_gbit_s),
                    gbit(r.direct_stream_gbit_s),
                    r.note.clone().unwrap_or_default()
                );
            })?;
            for line in sluice_lab::bench_services::ratios(&records) {
                eprintln!("{line}");
            }
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&records)?)?;
            }
        }
        Cmd::Serve { .. }
        | Cmd::ProbeLocal { .. }
        | Cmd::FlipWatch { .. }
        | Cmd::Curl { .. }
        | Cmd::HttpServe { .. }
        | Cmd::HttpLoad { .. }
        | Cmd::HttpHold { .. }
        | Cmd::Load { .. }
        | Cmd::Hold { .. }
        | Cmd::Stream { .. }
        | Cmd::Udp { .. } => {
            unreachable!("handled before the lab is opened")
        }
    }
    Ok(0)
}

fn status(lab: &Lab, json_out: bool) -> anyhow::Result<()> {
    let st = lab.state()?;
    let mut nodes = Vec::new();
    for n in &st.nodes {
        let alive = n.agent_pid.is_some_and(sluice_lab::proc::alive);
        let agent = lab.agent_status(n).ok();
        let state = match (&agent, alive) {
            (Some(a), _) if a["source"]["synced"] == true && a["errors"].as_array().is_some_and(|e| e.is_empty()) => {
                "ready"
            }
            (Some(_), _) => "degraded",
            (None, true) => "starting",
            (None, false) => "down",
        };
        nodes.push(json!({
            "name": n.name, "underlay_ip": n.underlay_ip, "pod_cidr": n.pod_cidr,
            "agent": state, "agent_pid": n.agent_pid,
            "local_endpoints": agent.as_ref().and_then(|a| a["local_endpoints"].as_array().map(Vec::len)),
        }));
    }
    let pods: Vec<_> = st
        .pods
        .iter()
        .map(|p| json!({"name": p.name, "node": p.node, "ip": p.ip, "labels": p.labels, "serve_ports": p.ports()}))
        .collect();
    let ext: Vec<_> = st.externals.iter().map(|e| json!({"name": e.name, "ip": e.ip})).collect();
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"lab": st.name, "nodes": nodes, "pods": pods, "externals": ext}))?
        );
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["NODE", "UNDERLAY IP", "POD CIDR", "AGENT", "PID", "ENDPOINTS"]);
    for n in &nodes {
        t.add_row(
            [&n["name"], &n["underlay_ip"], &n["pod_cidr"], &n["agent"], &n["agent_pid"], &n["local_endpoints"]]
                .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())),
        );
    }
    println!("lab {}\n{t}", st.name);
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["POD", "NODE", "IP", "LABELS", "SERVES"]);
    for p in &st.pods {
        let labels: Vec<_> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.add_row([
            p.name.clone(),
            p.node.clone(),
            p.ip.clone(),
            labels.join(","),
            p.ports().iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
        ]);
    }
    println!("{t}");
    if !st.externals.is_empty() {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_header(["EXTERNAL", "IP"]);
        for e in &st.externals {
            t.add_row([e.name.clone(), e.ip.clone()]);
        }
        println!("{t}");
    }
    Ok(())
}
