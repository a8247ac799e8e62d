//! The demo's network policy step: a NetworkPolicy lets only the client reach the echo pods,
//! through their Service too (policy applies after Service translation); an intruder is dropped
//! and the trace names the policy that drops it.

use anyhow::bail;

use crate::demo::{curl, lab, step};

pub fn policy() -> anyhow::Result<()> {
    println!("\n-- network policy: only pods labelled role=client may reach the echo pods (on 8080) --");
    step("label the client", &["pod", "label", "client", "role=client"])?;
    step("an intruder pod on node-2", &["pod", "add", "node-2", "intruder"])?;
    let np = std::env::temp_dir().join("sluice-demo-policy.yaml");
    std::fs::write(
        &np,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: echo-from-clients, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: echo}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: client}}}]\n    ports: [{port: 8080}]\n",
    )?;
    step("before: the intruder reaches the Service", &["probe", "intruder", "10.96.0.10:80"])?;
    step("apply the policy", &["apply", &np.display().to_string()])?;
    // Both agents pick the policy up on their next poll.
    let mut denied = false;
    for _ in 0..50 {
        let out = lab().args(["probe", "intruder", "10.96.0.10:80", "--timeout-ms", "300"]).output()?;
        if out.status.code() == Some(1) {
            denied = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if !denied {
        bail!("the intruder still reaches the echo Service after the policy");
    }
    println!("$ sluice-lab probe intruder 10.96.0.10:80\nintruder -> 10.96.0.10:80/tcp: no answer (dropped by policy)");
    step(
        "the client still does (policy follows the backend pod after Service translation)",
        &["probe", "client", "10.96.0.10:80"],
    )?;
    let out = lab()
        .args([
            "exec", "node-1", "--", "sluice", "policy", "trace", "--from", "intruder", "--to", "a", "--port",
            "8080/TCP",
        ])
        .output()?;
    println!(
        "\n$ sluice-lab exec node-1 -- sluice policy trace --from intruder --to a --port 8080/TCP\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    if out.status.code() != Some(1) {
        bail!("policy trace did not deny the intruder");
    }
    step("endpoints on node-1: identity and enforcement", &["exec", "node-1", "--", "sluice", "endpoint", "list"])?;
    step("the policy in force", &["exec", "node-1", "--", "sluice", "policy", "get"])?;
    step("remove the policy", &["delete", &np.display().to_string()])?;
    let _ = std::fs::remove_file(&np);
    Ok(())
}

/// The demo's L7 step (node-1 is on iptables by now): an HTTP rule lets the client `GET /public`
/// on pod a and nothing else; the node's proxy answers 403 naming the policy, and each request
/// shows up as an L7 flow.
pub fn l7() -> anyhow::Result<()> {
    println!("\n-- L7 policy: the client may only GET /public on pod a (node-1's proxy decides each request) --");
    let st: serde_json::Value = serde_json::from_slice(&lab().args(["status", "-o", "json"]).output()?.stdout)?;
    let a = st["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "default/a" || p["name"] == "a")
        .and_then(|p| p["ip"].as_str())
        .map(str::to_string);
    let Some(a) = a else { bail!("pod a's address is not in the lab status: {st}") };
    let p = std::env::temp_dir().join("sluice-demo-l7.yaml");
    std::fs::write(
        &p,
        "apiVersion: sluice.io/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: echo-http, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: echo}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {role: client}}]\n    toPorts:\n    - ports: [{port: '8080'}]\n      rules: {http: [{method: GET, path: /public}]}\n",
    )?;
    step("apply the HTTP policy", &["apply", &p.display().to_string()])?;
    let public = format!("http://{a}:8080/public");
    let private = format!("http://{a}:8080/private");
    // In force once the proxy answers /private with 403 (the agents read the policy first).
    let mut refused = None;
    for _ in 0..100 {
        let out = curl("client", &private, 500)?;
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if err.contains("403") {
            refused = Some(err);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let Some(refused) = refused else { bail!("the proxy never refused GET /private") };
    step("GET /public passes", &["exec", "client", "--", "sluice-lab", "curl", &public])?;
    println!("\n$ sluice-lab exec client -- sluice-lab curl {private}\n{refused}");
    step(
        "the requests as L7 flows on node-1",
        &["exec", "node-1", "--", "sluice", "observe", "--type", "l7", "--last", "4"],
    )?;
    // The proxy is its own process: an agent crash leaves it serving, with the last policy.
    step("node-1's agent crashes (kill -9) and restarts", &["restart-agent", "node-1", "--kill"])?;
    step(
        "GET /public still passes (the proxy outlived the agent)",
        &["exec", "client", "--", "sluice-lab", "curl", &public],
    )?;
    let out = curl("client", &private, 2000)?;
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !err.contains("403") {
        bail!("GET /private after the agent's restart was not refused with 403: {err}");
    }
    println!("\n$ sluice-lab exec client -- sluice-lab curl {private}\n{err}");
    step("remove the HTTP policy", &["delete", &p.display().to_string()])?;
    let _ = std::fs::remove_file(&p);
    Ok(())
}
