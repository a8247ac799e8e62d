//! Sluice's kernel state on a lab node, for comparisons: its iptables chains (both variants)
//! and every entry of the eBPF service maps as the kernel holds them (read with bpftool from
//! the pins, not from the agent). Traffic state (conntrack, NAT, affinity maps) is left out.

use std::collections::BTreeMap;

use serde_json::Value;

use std::time::Duration;

use super::{TestLab, eventually};

/// Chain name -> its rules in order, for sluice's chains and hooks, per iptables variant.
pub fn iptables_state(t: &TestLab, node: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for save in ["iptables-legacy-save", "iptables-nft-save"] {
        let Ok(out) = t.lab.exec_output(node, &[save]) else { continue };
        let mut table = String::new();
        for l in out.lines() {
            if let Some(name) = l.strip_prefix('*') {
                table = name.to_string();
            } else if let Some(decl) = l.strip_prefix(':').filter(|d| d.starts_with("SLUICE")) {
                let name = decl.split_whitespace().next().unwrap_or_default();
                chains.entry(format!("{save} {table} {name}")).or_default();
            } else if let Some(rule) = l.strip_prefix("-A ").filter(|r| r.contains("SLUICE")) {
                let chain = rule.split_whitespace().next().unwrap_or_default();
                chains.entry(format!("{save} {table} {chain}")).or_default().push(rule.to_string());
            }
        }
    }
    chains
}

/// Every entry of the eBPF service maps, as the kernel holds them (bpftool reads the pins).
pub fn bpf_state(t: &TestLab, node: &str, normalize: bool) -> BTreeMap<String, Vec<String>> {
    let mut maps = BTreeMap::new();
    let pins = t.lab.bpf_dir().join(node);
    for map in ["sluice_svc", "sluice_backends", "sluice_src_ranges", "sluice_maglev", "sluice_node"] {
        let path = pins.join(map);
        if !path.exists() {
            continue;
        }
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&path)
            .output()
            .expect("bpftool (installed by cargo xtask setup)");
        assert!(out.status.success(), "bpftool {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        let entries: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool json");
        maps.insert(map.to_string(), entries);
    }
    let names: BTreeMap<u64, String> = maps
        .get("sluice_svc")
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["formatted"]["value"]["service_id"].as_u64()?, e["formatted"]["key"].to_string())))
        .collect();
    maps.into_iter()
        .map(|(m, entries)| {
            let mut lines: Vec<String> = entries
                .into_iter()
                .map(|e| if normalize { renumber(e["formatted"].clone(), &names).to_string() } else { e.to_string() })
                .collect();
            lines.sort();
            (m, lines)
        })
        .collect()
}

/// Every `service_id` field replaced by the frontend key it belongs to.
fn renumber(v: Value, names: &BTreeMap<u64, String>) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| {
                    let x = match (k.as_str(), x.as_u64()) {
                        ("service_id", Some(id)) => Value::String(names.get(&id).cloned().unwrap_or(format!("?{id}"))),
                        _ => renumber(x, names),
                    };
                    (k, x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(|x| renumber(x, names)).collect()),
        other => other,
    }
}

/// `normalize`: service IDs replaced by the frontend they name (IDs depend on history; two
/// agents programming the same Services may number them differently).
pub fn kernel_state(t: &TestLab, node: &str, normalize: bool) -> String {
    serde_json::to_string_pretty(
        &serde_json::json!({"iptables": iptables_state(t, node), "bpf": bpf_state(t, node, normalize)}),
    )
    .expect("json")
}

/// The node's kernel state once it stops changing (two equal reads `gap` apart).
pub fn settled(t: &TestLab, node: &str, normalize: bool, gap: Duration) -> String {
    eventually(&format!("{node}: kernel state settles"), Duration::from_secs(30), || {
        let a = kernel_state(t, node, normalize);
        std::thread::sleep(gap);
        (kernel_state(t, node, normalize) == a).then_some(a)
    })
}
