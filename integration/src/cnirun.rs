//! Calling CNI plugins exactly as a runtime (libcni) does: one process per plugin of the
//! conflist, `name`/`cniVersion`/`prevResult`/`runtimeConfig` injected into each plugin's
//! config, CNI_* environment, result JSON on stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::proc::in_netns;

#[derive(Debug, Clone)]
pub struct Invocation {
    /// The netns the runtime runs in (the node); host-side veths land here.
    pub runtime_netns: String,
    pub cni_path: Vec<PathBuf>,
    pub conflist: Value,
    pub container_id: String,
    /// Empty for a DEL without a netns, as containerd's CRI sends on sandbox removal.
    pub netns_path: String,
    pub ifname: String,
    pub args: String,
    /// Capability arguments (e.g. `{"portMappings": [...]}`), passed to plugins that declare them.
    pub runtime_config: Value,
}

/// The error object a plugin printed, or a description of how it failed.
#[derive(Debug, Clone)]
pub struct PluginError {
    pub plugin: String,
    pub code: Option<u64>,
    pub msg: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin {} failed (code {:?}): {}", self.plugin, self.code, self.msg)
    }
}

impl std::error::Error for PluginError {}

fn find_plugin(paths: &[PathBuf], ty: &str) -> anyhow::Result<PathBuf> {
    paths
        .iter()
        .map(|p| p.join(ty))
        .find(|p| p.is_file())
        .with_context(|| format!("CNI plugin {ty:?} not found in {paths:?}"))
}

fn plugin_config(inv: &Invocation, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut c = plugin.clone();
    c["name"] = inv.conflist["name"].clone();
    c["cniVersion"] = inv.conflist["cniVersion"].clone();
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    // libcni passes a capability argument only to plugins that declare that capability.
    if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
        let mut rc = serde_json::Map::new();
        for (k, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = inv.runtime_config.get(k)
            {
                rc.insert(k.clone(), v.clone());
            }
        }
        if !rc.is_empty() {
            c["runtimeConfig"] = Value::Object(rc);
        }
    }
    c
}

/// Run one plugin; `Ok(Some(result))` when it printed one.
pub fn exec(inv: &Invocation, command: &str, config: &Value) -> Result<Option<Value>, PluginError> {
    let ty = config["type"].as_str().unwrap_or_default().to_string();
    let perr = |msg: String| PluginError { plugin: ty.clone(), code: None, msg };
    let bin = find_plugin(&inv.cni_path, &ty).map_err(|e| perr(e.to_string()))?;
    let mut cmd = Command::new(&bin);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns_path)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", &inv.args)
        .env("CNI_PATH", inv.cni_path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"))
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    in_netns(&mut cmd, &inv.runtime_netns).map_err(|e| perr(e.to_string()))?;
    let mut child = cmd.spawn().map_err(|e| perr(format!("spawning {}: {e}", bin.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(config.to_string().as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| perr(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let v: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        return Err(PluginError {
            plugin: ty,
            code: v.get("code").and_then(Value::as_u64),
            msg: v.get("msg").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| {
                format!("exit {}: {} {}", out.status, stdout.trim(), String::from_utf8_lossy(&out.stderr).trim())
            }),
        });
    }
    if stdout.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&stdout).map(Some).map_err(|e| perr(format!("unreadable result {stdout:?}: {e}")))
}

fn plugins(inv: &Invocation) -> anyhow::Result<Vec<Value>> {
    match inv.conflist.get("plugins").and_then(Value::as_array) {
        Some(p) if !p.is_empty() => Ok(p.clone()),
        _ => bail!("conflist has no plugins: {}", inv.conflist),
    }
}

/// ADD through the whole chain; on failure, DEL the chain (as runtimes do) and return the error.
pub fn add(inv: &Invocation) -> anyhow::Result<Value> {
    let mut prev: Option<Value> = None;
    for p in plugins(inv)? {
        let cfg = plugin_config(inv, &p, prev.as_ref());
        match exec(inv, "ADD", &cfg) {
            Ok(Some(r)) => prev = Some(r),
            Ok(None) => {}
            Err(e) => {
                let _ = del(inv, prev.as_ref());
                return Err(e.into());
            }
        }
    }
    prev.context("chain produced no result")
}

/// DEL through the chain in reverse order.
pub fn del(inv: &Invocation, cached: Option<&Value>) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for p in plugins(inv)?.iter().rev() {
        let cfg = plugin_config(inv, p, cached);
        if let Err(e) = exec(inv, "DEL", &cfg) {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() { Ok(()) } else { bail!("DEL: {}", errors.join("; ")) }
}

/// CHECK through the chain with the cached ADD result.
pub fn check(inv: &Invocation, cached: &Value) -> anyhow::Result<()> {
    for p in plugins(inv)? {
        exec(inv, "CHECK", &plugin_config(inv, &p, Some(cached)))?;
    }
    Ok(())
}
