//! Pods, external hosts, exec and apply.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::{Lab, UNDERLAY_NET, pod_manifest};
use crate::cnirun;
use crate::proc;
use crate::state::{ExternalRec, PodRec};
use crate::topo;

/// What `exec` runs in.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    pub netns: String,
    pub env: Vec<(String, String)>,
    /// Nodes: the node's own cgroup (socket LB acts on host processes in it).
    pub cgroup: Option<PathBuf>,
}

fn valid_name(kind: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 30
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if !ok {
        bail!("{kind} name {name:?} is invalid: 1-30 lowercase letters, digits or '-'");
    }
    Ok(())
}

impl Lab {
    pub fn pod_add(
        &self,
        node: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        serve: Option<u16>,
    ) -> anyhow::Result<PodRec> {
        self.pod_add_with(node, name, labels, serve, None)
    }

    /// `pod_add` with a hostPort for the echo server's TCP port.
    pub fn pod_add_with(
        &self,
        node: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        serve: Option<u16>,
        host_port: Option<u16>,
    ) -> anyhow::Result<PodRec> {
        self.pod_add_ports(node, name, labels, &serve.into_iter().collect::<Vec<_>>(), host_port)
    }

    /// Create pod `NS/NAME` (or `NAME` in default) on `node`, with an echo server on each of
    /// `ports` (TCP and UDP); the manifest names them `serve-<port>-tcp` / `serve-<port>-udp`.
    pub fn pod_add_ports(
        &self,
        node: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        ports: &[u16],
        host_port: Option<u16>,
    ) -> anyhow::Result<PodRec> {
        let (ns, short, key) = crate::state::pod_key(name);
        valid_name("namespace", &ns)?;
        valid_name("pod", &short)?;
        if host_port.is_some() && ports.is_empty() {
            bail!("--host-port needs --serve PORT (the hostPort maps to the echo server's port)");
        }
        let _l = self.lock()?;
        let mut st = self.state()?;
        if st.pods.iter().any(|p| p.name == key) {
            bail!("pod {key} already exists (delete it with `sluice-lab pod del {key}`)");
        }
        let n = st.node(node)?.clone();
        let flat = key.replace('/', ".");
        let netns = format!("{}pod-{flat}", self.prefix());
        let container_id = format!("lab-{}-{flat}", self.name);
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={short};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID=uid-{flat}"
        );
        topo::add_netns(&netns)?;
        let inv = match self.invocation(&n, &container_id, &format!("/run/netns/{netns}"), args) {
            Ok(i) => i,
            Err(e) => {
                topo::del_netns(&netns);
                return Err(e);
            }
        };
        let result = match cnirun::add(&inv) {
            Ok(r) => r,
            Err(e) => {
                topo::del_netns(&netns);
                return Err(e.context(format!("wiring pod {key} on {node} with sluice-cni")));
            }
        };
        let ip =
            result["ips"][0]["address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_string();
        let mut rec = PodRec {
            name: key.clone(),
            namespace: ns,
            node: node.into(),
            netns: netns.clone(),
            container_id,
            ip,
            labels,
            serve_port: ports.first().copied(),
            serve_ports: ports.to_vec(),
            host_port,
            serve_pid: None,
            cni_result: result,
        };
        if !ports.is_empty() {
            let mut args = vec!["serve".into(), "--name".into(), key.clone()];
            for p in ports {
                args.extend(["--port".to_string(), p.to_string()]);
            }
            let log = self.dir.join(format!("pod-{flat}.log"));
            rec.serve_pid = Some(proc::spawn_daemon(&netns, None, &self.bin_dir.join("sluice-lab"), &args, &[], &log)?);
        }
        self.write_pod_manifest(&rec)?;
        st.pods.push(rec.clone());
        st.save(&self.state_path())?;
        for p in ports {
            wait_listening(&netns, *p)?;
        }
        // Like a kubelet waiting for the pod to be reported: the node's agent lists it.
        self.wait_endpoint(&n, &rec.ip, true)?;
        Ok(rec)
    }

    fn pod_manifest_path(&self, p: &PodRec) -> PathBuf {
        self.manifests_dir().join("pods").join(format!("{}.yaml", p.name.replace('/', "_")))
    }

    fn write_pod_manifest(&self, p: &PodRec) -> anyhow::Result<()> {
        let path = self.pod_manifest_path(p);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, pod_manifest(p))?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Replace a pod's labels (as `kubectl label --overwrite` with the whole set).
    pub fn pod_label(&self, name: &str, labels: BTreeMap<String, String>) -> anyhow::Result<PodRec> {
        let (_, _, key) = crate::state::pod_key(name);
        let _l = self.lock()?;
        let mut st = self.state()?;
        let p = st.pods.iter_mut().find(|p| p.name == key).with_context(|| format!("no pod {key:?} in this lab"))?;
        for (k, v) in labels {
            p.labels.insert(k, v);
        }
        let rec = p.clone();
        self.write_pod_manifest(&rec)?;
        st.save(&self.state_path())?;
        Ok(rec)
    }

    /// Create or relabel a Namespace object (with `kubernetes.io/metadata.name`, as the API
    /// server sets it). `replace`: the labels given are the whole set.
    pub fn namespace_set(&self, ns: &str, labels: BTreeMap<String, String>, replace: bool) -> anyhow::Result<()> {
        valid_name("namespace", ns)?;
        let dir = self.manifests_dir().join("namespaces");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{ns}.yaml"));
        let mut all: BTreeMap<String, String> = if replace {
            BTreeMap::new()
        } else {
            let text = std::fs::read_to_string(&path).with_context(|| format!("no namespace {ns} (add it first)"))?;
            let v: Value = serde_saphyr::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
        };
        all.extend(labels);
        all.insert("kubernetes.io/metadata.name".into(), ns.into());
        let labels: String = all.iter().map(|(k, v)| format!("    {k}: \"{v}\"\n")).collect();
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"{ns}\"\n  labels:\n{labels}"),
        )?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    pub fn pod_del(&self, name: &str) -> anyhow::Result<()> {
        let (_, _, name) = crate::state::pod_key(name);
        let _l = self.lock()?;
        let mut st = self.state()?;
        let i = st.pods.iter().position(|p| p.name == name).with_context(|| format!("no pod {name:?} in this lab"))?;
        let p = st.pods.remove(i);
        if let Some(pid) = p.serve_pid {
            proc::stop(pid, Duration::from_secs(3));
        }
        let _ = std::fs::remove_file(self.pod_manifest_path(&p));
        let n = st.node(&p.node)?.clone();
        let inv = self.invocation(&n, &p.container_id, &format!("/run/netns/{}", p.netns), String::new())?;
        let res = cnirun::del(&inv, Some(&p.cni_result));
        topo::del_netns(&p.netns);
        st.save(&self.state_path())?;
        res?;
        self.wait_endpoint(&n, &p.ip, false)
    }

    pub fn external_add(&self, name: &str, serve: Option<u16>) -> anyhow::Result<ExternalRec> {
        valid_name("external host", name)?;
        let _l = self.lock()?;
        let mut st = self.state()?;
        if st.externals.iter().any(|e| e.name == name) {
            bail!("external host {name} already exists");
        }
        let k = st.externals.len() as u32 + 1;
        if k > 50 {
            bail!("at most 50 external hosts per lab");
        }
        let rec = ExternalRec {
            name: name.into(),
            netns: format!("{}ext-{name}", self.prefix()),
            ip: format!("{UNDERLAY_NET}.{}", 200 + k),
        };
        topo::add_netns(&rec.netns)?;
        st.externals.push(rec.clone());
        st.save(&self.state_path())?;
        topo::plug(&st.underlay_netns, "br0", &format!("x{k}"), &rec.netns, &format!("{}/24", rec.ip))?;
        if let Some(port) = serve {
            let args = vec!["serve".into(), "--name".into(), name.into(), "--port".into(), port.to_string()];
            let log = self.dir.join(format!("ext-{name}.log"));
            let pid = proc::spawn_daemon(&rec.netns, None, &self.bin_dir.join("sluice-lab"), &args, &[], &log)?;
            st.extra_pids.push((pid, format!("echo server on external {name}")));
            st.save(&self.state_path())?;
            wait_listening(&rec.netns, port)?;
        }
        Ok(rec)
    }

    /// Resolve a node, pod or external host name to its namespace (and, for nodes, the env
    /// that points `sluice` at that node's agent).
    pub fn target(&self, name: &str) -> anyhow::Result<ExecTarget> {
        let st = self.state()?;
        let path = std::env::var("PATH").unwrap_or_default();
        let mut env = vec![("PATH".to_string(), format!("{}:{path}", self.bin_dir.display()))];
        if let Some(n) = st.nodes.iter().find(|n| n.name == name) {
            env.push(("SLUICE_SOCKET_PATH".into(), n.dir.join("sluice.sock").display().to_string()));
            env.push(("SLUICE_CONFIG".into(), n.dir.join("config.yaml").display().to_string()));
            return Ok(ExecTarget { netns: n.netns.clone(), env, cgroup: Some(self.node_cgroup(&n.name)) });
        }
        let (_, _, key) = crate::state::pod_key(name);
        if let Some(p) = st.pods.iter().find(|p| p.name == key) {
            return Ok(ExecTarget { netns: p.netns.clone(), env, cgroup: None });
        }
        if let Some(e) = st.externals.iter().find(|e| e.name == name) {
            return Ok(ExecTarget { netns: e.netns.clone(), env, cgroup: None });
        }
        let all: Vec<&str> = st
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(st.pods.iter().map(|p| p.name.as_str()))
            .chain(st.externals.iter().map(|e| e.name.as_str()))
            .collect();
        bail!("no node, pod or external host named {name:?}; targets: {}", all.join(", "))
    }

    pub fn command(&self, target: &str, argv: &[String]) -> anyhow::Result<Command> {
        let t = self.target(target)?;
        let (prog, args) = argv.split_first().context("exec needs a command after --")?;
        let mut cmd = Command::new(prog);
        cmd.args(args);
        for (k, v) in &t.env {
            cmd.env(k, v);
        }
        proc::in_netns(&mut cmd, &t.netns)?;
        if let Some(cg) = &t.cgroup {
            proc::in_cgroup(&mut cmd, cg)?;
        }
        Ok(cmd)
    }

    /// Run a command in a target and return its stdout (error with stderr on failure).
    pub fn exec_output(&self, target: &str, argv: &[&str]) -> anyhow::Result<String> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let out = self.command(target, &argv)?.output()?;
        if !out.status.success() {
            bail!(
                "`{}` on {target} failed ({}): {}{}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Probe targets (`IP:PORT/tcp|udp`) from a pod, node or external host, all at once.
    pub fn probe(
        &self,
        from: &str,
        targets: &[String],
        timeout_ms: u64,
    ) -> anyhow::Result<Vec<crate::http::ProbeResult>> {
        let mut argv =
            vec!["sluice-lab".to_string(), "probe-local".into(), "--timeout-ms".into(), timeout_ms.to_string()];
        argv.extend(targets.iter().cloned());
        let out = self.command(from, &argv)?.output()?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("probing from {from}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }

    /// Copy Kubernetes YAML into the standalone source every agent reads.
    pub fn apply(&self, path: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let dest = self.manifests_dir().join("applied");
        if !dest.is_dir() {
            bail!("no lab is up (missing {})", dest.display());
        }
        let mut files = Vec::new();
        if path.is_dir() {
            for e in std::fs::read_dir(path)? {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json") {
                    files.push(p);
                }
            }
        } else if path.is_file() {
            files.push(path.to_path_buf());
        } else {
            bail!("{} is neither a file nor a directory", path.display());
        }
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            // Refuse what the agents could not parse, instead of letting them report it later.
            // Limits as the agent's manifest source sets them (a cluster's worth in one file).
            let mut budget = serde_saphyr::Budget::default();
            budget.max_documents = 1_000_000;
            budget.max_nodes = 100_000_000;
            budget.max_events = 200_000_000;
            let mut opts = serde_saphyr::Options::default();
            opts.budget = Some(budget);
            serde_saphyr::from_multiple_with_options::<Value>(&text, opts)
                .with_context(|| format!("{} is not valid YAML", f.display()))?;
            let name = f.file_name().context("file name")?;
            let target = dest.join(name);
            let tmp = dest.join(format!(".{}.tmp", name.to_string_lossy()));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &target)?;
            out.push(target);
        }
        Ok(out)
    }

    /// Remove what `apply` copied from `path` (a file, or every YAML file of a directory).
    pub fn delete(&self, path: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let dest = self.manifests_dir().join("applied");
        let names: Vec<std::ffi::OsString> = if path.is_dir() {
            std::fs::read_dir(path)?.flatten().map(|e| e.file_name()).collect()
        } else {
            vec![path.file_name().with_context(|| format!("{} names no file", path.display()))?.to_os_string()]
        };
        let mut out = Vec::new();
        for n in names {
            let target = dest.join(&n);
            match std::fs::remove_file(&target) {
                Ok(()) => out.push(target),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", target.display())),
            }
        }
        if out.is_empty() {
            bail!(
                "nothing applied from {} (sluice-lab apply copies files by name into {})",
                path.display(),
                dest.display()
            );
        }
        Ok(out)
    }
}

impl Lab {
    /// Wait until the node's agent reports (or no longer reports) an endpoint with `ip`.
    fn wait_endpoint(&self, n: &crate::state::NodeRec, ip: &str, present: bool) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(s) = self.agent_status(n) {
                let listed = s["local_endpoints"].as_array().is_some_and(|eps| eps.iter().any(|e| e["ip"] == ip));
                if listed == present {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the agent on {} did not {} endpoint {ip} within 10s (is it running? see its agent.log)",
            n.name,
            if present { "report" } else { "drop" }
        )
    }
}

/// Wait until something listens on TCP `port` inside `netns` (the echo server started).
fn wait_listening(netns: &str, port: u16) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let needle = format!(":{port:04X} ");
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(s) = proc::run_in(netns, "cat", &["/proc/net/tcp"])
            && s.lines().any(|l| {
                l.split_whitespace().nth(1).is_some_and(|a| format!("{a} ").ends_with(&needle))
                    && l.split_whitespace().nth(3) == Some("0A")
            })
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("echo server in {netns} did not listen on port {port} within 10s")
}
