//! The conflist the agent installs, as types: the sluice entry is the same shape the plugin
//! decodes ([`crate::spec::RawNetConf`]), so what the agent writes is what the plugin accepts
//! (tested by round trip). Chained plugins are the operator's, passed through as JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// cniVersion of the installed conflist: 1.0.0, the newest the container runtimes here
/// accept (libcni 1.1 rejects 1.1.0 conflists).
pub const CONFLIST_VERSION: &str = "1.0.0";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SluicePlugin {
    #[serde(rename = "type")]
    pub plugin_type: String,
    pub subnet: String,
    pub data_dir: String,
    pub agent_socket: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Plugin {
    Sluice(SluicePlugin),
    /// A chained plugin (portmap, bandwidth, ...), as configured.
    Chained(Value),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfList {
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<Plugin>,
}

impl ConfList {
    /// sluice-cni first, then the chain.
    pub fn new(name: &str, sluice: SluicePlugin, chain: &[Value]) -> Self {
        let plugins =
            std::iter::once(Plugin::Sluice(sluice)).chain(chain.iter().cloned().map(Plugin::Chained)).collect();
        ConfList { cni_version: CONFLIST_VERSION.into(), name: name.into(), plugins }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{NetConf, decode};

    /// The runtime hands each plugin its entry with `name` and `cniVersion` injected: the
    /// plugin must accept what the agent wrote.
    #[test]
    fn the_plugin_accepts_what_the_agent_writes() {
        let sluice = SluicePlugin {
            plugin_type: "sluice-cni".into(),
            subnet: "10.244.1.0/24".into(),
            data_dir: "/var/lib/sluice/cni".into(),
            agent_socket: "/run/sluice/sluice.sock".into(),
            mtu: Some(1400),
        };
        let list = ConfList::new("sluice", sluice, &[serde_json::json!({"type": "portmap"})]);
        let v = serde_json::to_value(&list).expect("json");
        let mut entry = v["plugins"][0].clone();
        entry["name"] = v["name"].clone();
        entry["cniVersion"] = v["cniVersion"].clone();
        let conf = NetConf::validate(decode(entry.to_string().as_bytes()).expect("decode")).expect("valid");
        assert_eq!(conf.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(conf.mtu, Some(1400));
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(serde_json::from_value::<ConfList>(v).expect("back"), list);
    }
}
