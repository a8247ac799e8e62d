use std::path::Path;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

use crate::Output;

/// Probe this node's kernel directly (no agent needed; needs root for the BPF probes).
pub fn run(config: Option<&Path>, out: Output) -> anyhow::Result<()> {
    let (probed, took) = sluice_probes::probe();
    let assume = match config {
        Some(p) => sluice_config::load(Some(p), None)?.assume_missing()?,
        None => Vec::new(),
    };
    let caps = probed.assume_missing(&assume);
    if out == Output::Json {
        let list: Vec<_> = caps
            .results
            .iter()
            .map(|(c, r)| {
                json!({"capability": c.name(), "found": r.found, "assumed_missing": r.assumed_missing,
                       "detail": r.detail, "needed_for": sluice_probes::enables(*c, &crate::daemon::registry::specs())})
            })
            .collect();
        let v = json!({
            "kernel": caps.kernel, "probe_ms": took.as_secs_f64() * 1000.0,
            "kube_proxy": {"active": caps.kube_proxy_active, "evidence": caps.kube_proxy_evidence},
            "tc_attach": caps.tc_attach(),
            "capabilities": list,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["CAPABILITY", "FOUND", "DETAIL", "NEEDED FOR"]);
    for (c, r) in &caps.results {
        let found = match (r.found, r.assumed_missing) {
            (true, _) => "yes",
            (false, true) => "no (assumed)",
            (false, false) => "NO",
        };
        let needed = sluice_probes::enables(*c, &crate::daemon::registry::specs());
        let needed = match needed.len() {
            0 => "(not used by any feature yet)".to_string(),
            n if n == sluice_core::Feature::ALL.len() => "all features".to_string(),
            n if n > 4 => format!("{}, +{} more", needed[..3].join(", "), n - 3),
            _ => needed.join(", "),
        };
        t.add_row([c.name().to_string(), found.to_string(), r.detail.clone(), needed]);
    }
    let found = caps.results.values().filter(|r| r.found).count();
    println!("Kernel:     {}", caps.kernel);
    println!(
        "kube-proxy: {} ({})",
        if caps.kube_proxy_active { "active" } else { "not detected" },
        caps.kube_proxy_evidence
    );
    println!("tc attach:  {}", caps.tc_attach().describe());
    println!("{t}");
    println!("{found}/{} capabilities found, probed in {:.1} ms", caps.results.len(), took.as_secs_f64() * 1000.0);
    Ok(())
}
