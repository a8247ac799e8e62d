//! A virtual cluster on one machine: an underlay namespace with a bridge, one namespace per
//! node running its own `sluice agent`, pods as namespaces wired by the real sluice-cni, and
//! external hosts on the underlay. Every name starts with `sl-<lab>--`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use serde_json::{Value, json};

use crate::cnirun::Invocation;
use crate::proc;
use crate::state::{LabState, NodeRec, PodRec};
use crate::topo;

pub const UNDERLAY_NET: &str = "198.51.100";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const DEFAULT_CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
}

/// Where the sluice binaries are: `SLUICE_BIN_DIR`, else next to this executable (or its
/// parent, for test binaries in target/*/deps).
pub fn default_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.join("sluice").is_file() { dir } else { dir.parent().map(Path::to_path_buf).unwrap_or(dir) }
}

fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                deep_merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

impl Lab {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        if name.is_empty()
            || name.len() > 12
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || name.contains("--")
            || name.starts_with('-')
            || name.ends_with('-')
        {
            bail!("lab name {name:?} is invalid: 1-12 letters, digits or single '-' inside");
        }
        let root = std::env::var_os("SLUICE_LAB_DIR").map(PathBuf::from).unwrap_or_else(|| "/run/sluice-lab".into());
        Ok(Lab { name: name.into(), dir: root.join(name), bin_dir: default_bin_dir() })
    }

    /// Where this lab's agents pin their BPF maps and links (one directory per node).
    pub fn bpf_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf/sluice-lab").join(&self.name)
    }

    /// This lab's cgroup v2 directory (one sub-directory per node: the node's host processes,
    /// where its agent attaches socket LB).
    pub fn cgroup_dir(&self) -> PathBuf {
        sluice_config::cgroup2_mount().join("sluice-lab").join(&self.name)
    }

    pub fn node_cgroup(&self, node: &str) -> PathBuf {
        self.cgroup_dir().join(node)
    }

    /// Namespace name prefix. The double dash cannot occur in a lab name, so one lab's prefix
    /// is never a prefix of another's (`down` of lab "a" must not touch lab "a-b").
    pub fn prefix(&self) -> String {
        format!("sl-{}--", self.name)
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn state(&self) -> anyhow::Result<LabState> {
        LabState::load(&self.state_path())
    }

    /// Serialize mutating commands run in parallel from a shell.
    fn lock(&self) -> anyhow::Result<Flock<File>> {
        std::fs::create_dir_all(&self.dir)?;
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(self.dir.join("lock"))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| anyhow::anyhow!("locking lab: {e}"))
    }

    pub fn cni_path(&self) -> Vec<PathBuf> {
        vec![self.bin_dir.clone(), PathBuf::from(DEFAULT_CNI_PLUGIN_DIR)]
    }

    fn node_config(&self, node: &NodeRec, over: Option<&Path>) -> anyhow::Result<String> {
        let d = &node.dir;
        let mut cfg = json!({
            "node_name": node.name,
            "cluster_cidr": CLUSTER_CIDR,
            "socket_path": d.join("sluice.sock"),
            "state_dir": d.join("state"),
            "source": { "manifests_dir": self.manifests_dir(), "poll_interval_ms": 300 },
            "cni": { "conflist_path": d.join("net.d/05-sluice.conflist"), "data_dir": d.join("cni-data") },
            "bpf_pin_dir": self.bpf_dir().join(&node.name),
            "cgroup_root": self.node_cgroup(&node.name),
            // The Observer, for relays, and metrics on the node's own underlay address (Hubble's
            // and Cilium's ports).
            "flows": { "listen_address": format!("{}:4244", node.underlay_ip) },
            "metrics": {
                "listen_address": format!("{}:9962", node.underlay_ip),
                "hubble_listen_address": format!("{}:9965", node.underlay_ip),
            },
        });
        if let Some(p) = over {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading node config {}", p.display()))?;
            let v: Value =
                serde_saphyr::from_str(&text).with_context(|| format!("parsing node config {}", p.display()))?;
            deep_merge(&mut cfg, v);
        }
        Ok(serde_json::to_string_pretty(&cfg)? + "\n")
    }

    pub fn up(&self, nodes: u32, node_configs: &[(String, PathBuf)]) -> anyhow::Result<LabState> {
        if !(1..=50).contains(&nodes) {
            bail!("--nodes {nodes} is out of range: 1..=50");
        }
        for (n, _) in node_configs {
            let idx = n.strip_prefix("node-").and_then(|i| i.parse::<u32>().ok());
            if !idx.is_some_and(|i| (1..=nodes).contains(&i)) {
                bail!("--node-config {n}=...: no such node; nodes are node-1..node-{nodes}");
            }
        }
        if self.state_path().exists() || !topo::list_netns(&self.prefix()).is_empty() {
            bail!("lab {:?} is already up (or left over from a crashed run); run `sluice-lab down` first", self.name);
        }
        for b in ["sluice", "sluice-cni"] {
            if !self.bin_dir.join(b).is_file() {
                bail!(
                    "{} not found in {}; build with `cargo build --workspace` or set SLUICE_BIN_DIR",
                    b,
                    self.bin_dir.display()
                );
            }
        }
        let _l = self.lock()?;
        let mut st = LabState {
            name: self.name.clone(),
            underlay_netns: format!("{}underlay", self.prefix()),
            ..Default::default()
        };
        std::fs::create_dir_all(self.manifests_dir().join("nodes"))?;
        std::fs::create_dir_all(self.manifests_dir().join("pods"))?;
        std::fs::create_dir_all(self.manifests_dir().join("applied"))?;
        st.save(&self.state_path())?; // from here on, `down` can undo a partial `up`
        topo::add_netns(&st.underlay_netns)?;
        topo::make_bridge(&st.underlay_netns, "br0")?;
        for i in 1..=nodes {
            let name = format!("node-{i}");
            let rec = NodeRec {
                name: name.clone(),
                index: i,
                netns: format!("{}{name}", self.prefix()),
                underlay_ip: format!("{UNDERLAY_NET}.{}", 10 + i),
                pod_cidr: format!("10.244.{i}.0/24"),
                agent_pid: None,
                dir: self.dir.join("nodes").join(&name),
            };
            std::fs::create_dir_all(&rec.dir)?;
            let cg = self.node_cgroup(&name);
            std::fs::create_dir_all(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
            topo::add_netns(&rec.netns)?;
            st.nodes.push(rec.clone());
            st.save(&self.state_path())?;
            topo::plug(&st.underlay_netns, "br0", &format!("n{i}"), &rec.netns, &format!("{}/24", rec.underlay_ip))?;
            // Real nodes have a default route; without one, host processes cannot even start a
            // connection to a Service VIP (the route lookup precedes the OUTPUT DNAT).
            topo::ip(&["-n", &rec.netns, "route", "add", "default", "dev", "eth0"])?;
            let over = node_configs.iter().find(|(n, _)| *n == name).map(|(_, p)| p.as_path());
            std::fs::write(rec.dir.join("config.yaml"), self.node_config(&rec, over)?)?;
            std::fs::write(self.manifests_dir().join("nodes").join(format!("{name}.yaml")), node_manifest(&rec))?;
        }
        for i in 0..st.nodes.len() {
            let pid = self.spawn_agent(&st.nodes[i])?;
            st.nodes[i].agent_pid = Some(pid);
            st.save(&self.state_path())?;
        }
        for n in &st.nodes {
            self.wait_agent_ready(n, Duration::from_secs(30))?;
        }
        Ok(st)
    }

    fn spawn_agent(&self, n: &NodeRec) -> anyhow::Result<u32> {
        let args = vec!["agent".to_string(), "--config".into(), n.dir.join("config.yaml").display().to_string()];
        let envs = vec![("SLUICE_LOG".to_string(), std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info".into()))];
        // Append, so the log of an agent killed on purpose survives its restart.
        let log = n.dir.join("agent.log");
        let mut prev = std::fs::read(&log).unwrap_or_default();
        let cg = self.node_cgroup(&n.name);
        let pid = proc::spawn_daemon(&n.netns, Some(&cg), &self.bin_dir.join("sluice"), &args, &envs, &log)?;
        if !prev.is_empty() {
            prev.extend_from_slice(b"--- agent restarted ---\n");
            let _ = std::fs::write(n.dir.join("agent.log.prev"), prev);
        }
        Ok(pid)
    }

    /// The agent's status over its socket (raw JSON, so the lab does not link the agent).
    pub fn agent_status(&self, n: &NodeRec) -> anyhow::Result<Value> {
        let sock = n.dir.join("sluice.sock");
        let mut s = std::os::unix::net::UnixStream::connect(&sock)
            .with_context(|| format!("connecting to {}", sock.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"{\"op\":\"status\"}\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        let v: Value = serde_json::from_str(&line)?;
        v.get("status").cloned().with_context(|| format!("agent answered {line}"))
    }

    pub fn wait_agent_ready(&self, n: &NodeRec, timeout: Duration) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let last = self.agent_status(n);
            if let Ok(s) = &last {
                let routes = s["routes"].as_array().map(Vec::len).unwrap_or(0);
                let others = self.state().map(|st| st.nodes.len().saturating_sub(1)).unwrap_or(0);
                if s["source"]["synced"] == true && !s["conflist"].is_null() && routes >= others {
                    return Ok(s.clone());
                }
            }
            if start.elapsed() > timeout {
                let log = std::fs::read_to_string(n.dir.join("agent.log")).unwrap_or_default();
                let tail: Vec<_> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
                bail!(
                    "agent on {} not ready after {timeout:?} (last status: {last:?}); log tail:\n{}",
                    n.name,
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop a node's agent (`kill9` for a crash) and start it again; returns the new PID.
    pub fn restart_agent(&self, node: &str, kill9: bool) -> anyhow::Result<u32> {
        let _l = self.lock()?;
        let mut st = self.state()?;
        let i = st.nodes.iter().position(|n| n.name == node).with_context(|| format!("no node {node}"))?;
        if let Some(pid) = st.nodes[i].agent_pid {
            if kill9 { proc::kill9(pid) } else { proc::stop(pid, Duration::from_secs(5)) }
        }
        let pid = self.spawn_agent(&st.nodes[i])?;
        st.nodes[i].agent_pid = Some(pid);
        st.save(&self.state_path())?;
        Ok(pid)
    }

    /// Stop a node's agent and forget its PID (a later `restart_agent` starts a new one).
    /// Kernel state stays, as when the agent stops in production.
    pub fn stop_agent(&self, node: &str) -> anyhow::Result<()> {
        let _l = self.lock()?;
        let mut st = self.state()?;
        let i = st.nodes.iter().position(|n| n.name == node).with_context(|| format!("no node {node}"))?;
        if let Some(pid) = st.nodes[i].agent_pid.take() {
            proc::stop(pid, Duration::from_secs(5));
        }
        st.save(&self.state_path())?;
        Ok(())
    }

    pub fn down(&self) -> anyhow::Result<String> {
        let prefix = self.prefix();
        let st = self.state().ok();
        let mut namespaces = topo::list_netns(&prefix);
        // Pods first (their veths go with them), the underlay last.
        namespaces.sort_by_key(|n| (n.ends_with("underlay"), n.contains("-node-"), n.clone()));
        let mut stopped = 0;
        for ns in &namespaces {
            for pid in proc::pids_in_netns(ns) {
                proc::stop(pid, Duration::from_secs(3));
                stopped += 1;
            }
        }
        if let Some(st) = &st {
            for (pid, _) in &st.extra_pids {
                if proc::alive(*pid) {
                    proc::stop(*pid, Duration::from_secs(3));
                    stopped += 1;
                }
            }
        }
        for ns in &namespaces {
            topo::del_netns(ns);
        }
        // Pinned BPF maps and links of the lab's agents (unlinking releases them).
        if self.bpf_dir().exists() {
            std::fs::remove_dir_all(self.bpf_dir())
                .with_context(|| format!("removing {}", self.bpf_dir().display()))?;
        }
        // The shared parent goes with the last lab (fails harmlessly while others are up).
        if let Some(parent) = self.bpf_dir().parent() {
            let _ = std::fs::remove_dir(parent);
        }
        // The nodes' cgroups (empty now: their processes were stopped above).
        if let Ok(rd) = std::fs::read_dir(self.cgroup_dir()) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                // An exiting process leaves its cgroup a moment after it is gone.
                let mut tries = 0;
                while let Err(err) = std::fs::remove_dir(e.path()) {
                    tries += 1;
                    if tries > 50 {
                        return Err(err).with_context(|| format!("removing cgroup {}", e.path().display()));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            std::fs::remove_dir(self.cgroup_dir())
                .with_context(|| format!("removing cgroup {}", self.cgroup_dir().display()))?;
            let _ = std::fs::remove_dir(self.cgroup_dir().parent().unwrap_or(Path::new("/")));
        }
        let left = topo::list_netns(&prefix);
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))?;
        }
        if !left.is_empty() {
            bail!("could not delete namespaces: {}", left.join(", "));
        }
        Ok(format!(
            "lab {}: stopped {stopped} process(es), removed {} namespace(s) and {}",
            self.name,
            namespaces.len(),
            self.dir.display()
        ))
    }
}

fn node_manifest(n: &NodeRec) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\nspec:\n  podCIDR: {cidr}\n  podCIDRs: [{cidr}]\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n  - type: Hostname\n    address: {name}\n",
        name = n.name,
        cidr = n.pod_cidr,
        ip = n.underlay_ip
    )
}

pub(crate) fn pod_manifest(p: &PodRec) -> String {
    let labels: String = p.labels.iter().map(|(k, v)| format!("    {k}: \"{v}\"\n")).collect();
    let mut ports = String::new();
    for (i, port) in p.ports().iter().enumerate() {
        let host = match p.host_port {
            Some(hp) if i == 0 => format!("      hostPort: {hp}\n"),
            _ => String::new(),
        };
        ports.push_str(&format!(
            "    - name: serve-{port}-tcp\n      containerPort: {port}\n      protocol: TCP\n{host}    - name: serve-{port}-udp\n      containerPort: {port}\n      protocol: UDP\n"
        ));
    }
    let ports = if ports.is_empty() { ports } else { format!("    ports:\n{ports}") };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: \"{name}\"\n  namespace: \"{ns}\"\n  labels:\n{labels}spec:\n  nodeName: \"{node}\"\n  containers:\n  - name: main\n    image: sluice-lab/echo\n{ports}status:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n  conditions:\n  - type: Ready\n    status: \"True\"\n",
        name = p.short(),
        ns = p.namespace,
        node = p.node,
        ip = p.ip,
        labels = if labels.is_empty() { "    {}\n".to_string() } else { labels },
    )
    .replace("  labels:\n    {}\n", "  labels: {}\n")
}

pub fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for kv in s.split(',').filter(|x| !x.is_empty()) {
        let (k, v) = kv.split_once('=').with_context(|| format!("label {kv:?} is not key=value"))?;
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

#[path = "lab_pods.rs"]
mod pods;
pub use pods::ExecTarget;

impl Lab {
    pub fn invocation(
        &self,
        node: &NodeRec,
        container_id: &str,
        netns_path: &str,
        args: String,
    ) -> anyhow::Result<Invocation> {
        let path = node.dir.join("net.d/05-sluice.conflist");
        let conflist: Value = serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| {
            format!("the agent on {} has not written its CNI config {} yet", node.name, path.display())
        })?)?;
        Ok(Invocation {
            runtime_netns: node.netns.clone(),
            cni_path: self.cni_path(),
            conflist,
            container_id: container_id.into(),
            netns_path: netns_path.into(),
            ifname: "eth0".into(),
            args,
            runtime_config: json!({}),
        })
    }
}
