//! CNI latency benchmark: sluice-cni against Debian's reference `ptp` + `host-local`, called
//! the same way (one runtime-style process per plugin, from the node's netns), interleaved
//! iteration by iteration so machine noise hits both alike.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use crate::Lab;
use crate::cnirun::{self, Invocation};
use crate::topo;

#[derive(Debug, Serialize)]
pub struct Latency {
    pub plugin: String,
    pub add_p50_ms: f64,
    pub add_p99_ms: f64,
    pub del_p50_ms: f64,
    pub del_p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct CniReport {
    pub iterations: usize,
    pub results: Vec<Latency>,
    /// reference ADD p50 / sluice ADD p50 (> 1 means sluice is faster).
    pub add_p50_speedup: f64,
    pub del_p50_speedup: f64,
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN)
}

pub fn cni(lab: &Lab, iterations: usize) -> anyhow::Result<CniReport> {
    let st = lab.state()?;
    let node = st.nodes.first().context("bench lab has no node")?.clone();
    let sluice = lab.invocation(&node, "x", "", String::new())?;
    let mut reference = sluice.clone();
    reference.conflist = json!({
        "cniVersion": "1.0.0", "name": "ref",
        "plugins": [{ "type": "ptp", "ipam": { "type": "host-local",
            "ranges": [[{ "subnet": "10.250.0.0/16" }]], "dataDir": node.dir.join("ref-ipam") } }]
    });
    let mut times: Vec<(Vec<Duration>, Vec<Duration>)> = vec![(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    let netns = format!("{}pod-bench", lab.prefix());
    // Warm-up: first runs pay page-cache misses for the binaries.
    for i in 0..(iterations + 4) {
        for (k, base) in [&sluice, &reference].into_iter().enumerate() {
            topo::add_netns(&netns)?;
            let inv = Invocation {
                container_id: format!("bench-{k}-{i}"),
                netns_path: format!("/run/netns/{netns}"),
                ..base.clone()
            };
            let t = Instant::now();
            let res = cnirun::add(&inv);
            let add = t.elapsed();
            let t = Instant::now();
            let del = cnirun::del(&inv, res.as_ref().ok());
            let del_t = t.elapsed();
            topo::del_netns(&netns);
            res.with_context(|| format!("ADD with {}", base.conflist["plugins"][0]["type"]))?;
            del?;
            if i >= 4 {
                times[k].0.push(add);
                times[k].1.push(del_t);
            }
        }
    }
    let mut results = Vec::new();
    for (k, name) in ["sluice-cni", "ptp+host-local"].into_iter().enumerate() {
        let (a, d) = &mut times[k];
        results.push(Latency {
            plugin: name.into(),
            add_p50_ms: pct(a, 0.5),
            add_p99_ms: pct(a, 0.99),
            del_p50_ms: pct(d, 0.5),
            del_p99_ms: pct(d, 0.99),
        });
    }
    Ok(CniReport {
        iterations,
        add_p50_speedup: results[1].add_p50_ms / results[0].add_p50_ms,
        del_p50_speedup: results[1].del_p50_ms / results[0].del_p50_ms,
        results,
    })
}
