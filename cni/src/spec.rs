//! CNI wire types: environment, network config and results for every supported version.
//! Pure: parsing takes the environment as a lookup function, so it is tested without a process.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::CniError;

/// Oldest first. 0.3.1 is the oldest version whose result shape (interfaces + ips) we emit.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST_VERSION: &str = "1.1.0";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/sluice/cni";
pub const DEFAULT_AGENT_SOCKET: &str = "/run/sluice/sluice.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(CniError::InvalidEnv {
                    var: "CNI_COMMAND",
                    value: other.to_string(),
                    accepted: "one of ADD, DEL, CHECK, VERSION, GC, STATUS".into(),
                });
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// The CNI_* environment, validated for the command it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// `None` when CNI_NETNS is empty (allowed for DEL, as containerd's CRI sends it).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
}

impl Env {
    pub fn from_lookup(get: impl Fn(&'static str) -> Option<String>) -> Result<Self, CniError> {
        let command = Command::parse(
            &get("CNI_COMMAND").ok_or(CniError::MissingEnv { var: "CNI_COMMAND", command: "any command".into() })?,
        )?;
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |var: &'static str| -> Result<String, CniError> {
            match get(var).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v),
                None => Err(CniError::MissingEnv { var, command: command.as_str().into() }),
            }
        };
        let (container_id, ifname) = if needs_attachment {
            let id = required("CNI_CONTAINERID")?;
            validate_container_id(&id)?;
            let ifname = required("CNI_IFNAME")?;
            validate_ifname(&ifname)?;
            (id, ifname)
        } else {
            (String::new(), String::new())
        };
        let netns = match command {
            Command::Add | Command::Check => Some(PathBuf::from(required("CNI_NETNS")?)),
            Command::Del => get("CNI_NETNS").filter(|v| !v.is_empty()).map(PathBuf::from),
            _ => None,
        };
        let args = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Env { command, container_id, netns, ifname, args })
    }

    pub fn pod_namespace(&self) -> Option<&str> {
        self.args.get("K8S_POD_NAMESPACE").map(String::as_str)
    }

    pub fn pod_name(&self) -> Option<&str> {
        self.args.get("K8S_POD_NAME").map(String::as_str)
    }
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    // The spec restricts IDs to alphanumerics plus `_.-`; they become file contents and names.
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidEnv {
            var: "CNI_CONTAINERID",
            value: id.into(),
            accepted: "letters, digits, '_', '.', '-', starting with a letter or digit".into(),
        })
    }
}

fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidEnv {
            var: "CNI_IFNAME",
            value: name.into(),
            accepted: "1-15 characters, no '/', ':' or whitespace, not '.' or '..'".into(),
        })
    }
}

/// `K=V;K2=V2`, as runtimes pass it. `IgnoreUnknown` is accepted and dropped.
pub fn parse_cni_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::InvalidEnv {
                var: "CNI_ARGS",
                value: raw.into(),
                accepted: "KEY=VALUE pairs separated by ';'".into(),
            });
        };
        if k != "IgnoreUnknown" {
            out.insert(k.to_string(), v.to_string());
        }
    }
    Ok(out)
}

/// The network config as it arrives on stdin (one plugin's entry of a conflist, with `name`
/// and `cniVersion` injected by the runtime). Unknown fields are ignored, as the spec asks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawNetConf {
    pub cni_version: Option<String>,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    /// The node's pod CIDR; the agent writes it into the conflist it installs.
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub mtu: Option<u32>,
    pub data_dir: Option<String>,
    pub agent_socket: Option<String>,
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// A validated network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: Option<u32>,
    pub data_dir: PathBuf,
    pub agent_socket: PathBuf,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

pub fn decode(stdin: &[u8]) -> Result<RawNetConf, CniError> {
    serde_json::from_slice(stdin).map_err(|source| CniError::Decode { source })
}

pub fn check_version(v: Option<&str>) -> Result<String, CniError> {
    let v = v.unwrap_or("0.1.0");
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(v.to_string())
    } else {
        Err(CniError::IncompatibleVersion { version: v.into(), supported: SUPPORTED_VERSIONS.join(", ") })
    }
}

fn invalid(field: &str, value: impl Into<String>, accepted: &str) -> CniError {
    CniError::InvalidConfig { field: field.into(), value: value.into(), accepted: accepted.into() }
}

impl NetConf {
    pub fn validate(raw: RawNetConf) -> Result<Self, CniError> {
        let cni_version = check_version(raw.cni_version.as_deref())?;
        let name = raw.name.unwrap_or_default();
        let name_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !name_ok {
            return Err(invalid("name", name, "a non-empty network name of letters, digits, '_', '.', '-'"));
        }
        let subnet_s = raw
            .subnet
            .ok_or_else(|| invalid("subnet", "", "an IPv4 CIDR such as 10.244.1.0/24 (the node's pod CIDR)"))?;
        let subnet: Ipv4Net =
            subnet_s.parse().map_err(|_| invalid("subnet", subnet_s.clone(), "an IPv4 CIDR such as 10.244.1.0/24"))?;
        if subnet.prefix_len() > 30 {
            return Err(invalid("subnet", subnet_s, "a prefix of /30 or shorter (room for a gateway and pods)"));
        }
        if subnet.prefix_len() < 16 {
            return Err(invalid(
                "subnet",
                subnet_s,
                "a prefix of /16 or longer: the IPAM store keeps one record per address (at most 65536)",
            ));
        }
        let subnet = subnet.trunc();
        let gateway = match raw.gateway {
            None => first_host(subnet),
            Some(g) => {
                let ip: Ipv4Addr =
                    g.parse().map_err(|_| invalid("gateway", g.clone(), "an IPv4 address inside subnet"))?;
                if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
                    return Err(invalid("gateway", g, &format!("a host address inside subnet {subnet}")));
                }
                ip
            }
        };
        if let Some(mtu) = raw.mtu
            && !(576..=65535).contains(&mtu)
        {
            return Err(invalid("mtu", mtu.to_string(), "576..=65535"));
        }
        Ok(NetConf {
            cni_version,
            name,
            subnet,
            gateway,
            mtu: raw.mtu,
            data_dir: raw.data_dir.map(PathBuf::from).unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            agent_socket: raw.agent_socket.map(PathBuf::from).unwrap_or_else(|| DEFAULT_AGENT_SOCKET.into()),
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }
}

pub fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

/// What ADD made, independent of the version it is reported in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub host_ifname: String,
    pub host_mac: String,
    pub ifname: String,
    pub mac: String,
    pub sandbox: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// Render the ADD result in the requested version. 0.3.x/0.4.0 carry `"version": "4"` on each
/// IP; 1.0.0 dropped it. Address is /32: pods reach everything via the gateway route.
pub fn render_result(version: &str, a: &Attached) -> Value {
    let mut ip = json!({
        "address": format!("{}/32", a.ip),
        "gateway": a.gateway.to_string(),
        "interface": 1,
    });
    if version.starts_with("0.") {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            { "name": a.host_ifname, "mac": a.host_mac },
            { "name": a.ifname, "mac": a.mac, "sandbox": a.sandbox },
        ],
        "ips": [ip],
        "routes": [ { "dst": "0.0.0.0/0", "gw": a.gateway.to_string() } ],
        "dns": {},
    })
}

pub fn render_version(requested: Option<&str>) -> Value {
    let v = requested.filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(LATEST_VERSION);
    json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })
}

/// The container IP a prevResult reports on `ifname`'s interface, for CHECK.
pub fn prev_result_ip(prev: &Value) -> Option<Ipv4Addr> {
    prev.get("ips")?.as_array()?.iter().find_map(|ip| {
        let addr = ip.get("address")?.as_str()?;
        addr.parse::<Ipv4Net>().ok().map(|n| n.addr())
    })
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
