//! Tier 3: the service-map UI in a real headless Chromium (Debian's, driven over WebDriver by
//! chromedriver). `sluice relay` and `sluice ui` run on an external host of the lab; the browser
//! and chromedriver run there too, and the WebDriver client runs on a thread that entered that
//! host's network namespace, so nothing touches the machine's own network.
//! The page loads, shows the lab's pods and Service with their edges, lists flows, updates when
//! new traffic flows, and a click on an edge lists its flows.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{KillOnDrop, eventually, require_root, two_node_web_lab};
use serde_json::{Value, json};

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n";

/// HTTP rules on the web pods: only `GET /` from the client.
const L7: &str = r#"
apiVersion: sluice.io/v1
kind: SluiceNetworkPolicy
metadata: {name: web-l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET, path: /}]}
"#;

/// One WebDriver call to chromedriver on 127.0.0.1:9515 (HTTP/1.1, JSON, connection closed).
fn wd(method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", 9515))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    // One write: chromedriver answers what the first segment holds.
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:9515\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    // Read the head, then exactly Content-Length bytes (chromedriver may keep the socket open).
    let mut resp = Vec::new();
    let mut buf = [0u8; 8192];
    let (head, body) = loop {
        let n = s.read(&mut buf)?;
        anyhow::ensure!(n > 0, "chromedriver closed the connection mid-response");
        resp.extend_from_slice(&buf[..n]);
        let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&resp[..end]).into_owned();
        let len = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.trim().to_string())
            })
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| anyhow::anyhow!("no Content-Length in {head}"))?;
        if resp.len() >= end + 4 + len {
            break (head, String::from_utf8_lossy(&resp[end + 4..end + 4 + len]).into_owned());
        }
    };
    let v: Value = serde_json::from_str(&body)?;
    if head.starts_with("HTTP/1.1 2") { Ok(v["value"].clone()) } else { anyhow::bail!("{method} {path}: {head}: {v}") }
}

/// Run `f` on a thread inside the network namespace `netns` (sockets it opens live there).
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("browser thread")
}

fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_service_map_shows_pods_services_and_edges_and_updates_live() {
    if !require_root() {
        return;
    }
    let (t, dir) = two_node_web_lab("t-ui", "dataplane: iptables\n", "dataplane: iptables\n");
    t.lab.pod_add("node-1", "client", [("app".to_string(), "client".to_string())].into(), None).expect("client");
    let ext = t.lab.external_add("ui", None).expect("external host for relay, UI and browser");
    let f = dir.path().join("web.yaml");
    std::fs::write(&f, WEB).expect("write");
    t.lab.apply(&f).expect("apply");
    eventually("service programmed", Duration::from_secs(15), || {
        t.curl("client", "http://10.96.0.10/").ok().filter(|b| b == "a" || b == "b")
    });
    for _ in 0..3 {
        let _ = t.curl("client", "http://10.96.0.10/");
    }
    let spawn = |argv: &[&str], log: &str| {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let log = std::fs::File::create(dir.path().join(log)).expect("log");
        KillOnDrop(
            t.lab.command("ui", &argv).expect("command").stdout(Stdio::null()).stderr(log).spawn().expect("spawn"),
        )
    };
    let _relay = spawn(
        &["sluice", "relay", "--listen-address", "127.0.0.1:4245", "--peer-service", "198.51.100.11:4244"],
        "relay.log",
    );
    let _ui = spawn(&["sluice", "ui", "--listen-address", "127.0.0.1:12000", "--server", "127.0.0.1:4245"], "ui.log");
    let _driver = spawn(&["chromedriver", "--port=9515"], "chromedriver.log");
    let netns = ext.netns.clone();

    // The browser session: load the page and read what it shows.
    let session = in_netns(&netns, || {
        until("chromedriver up", Duration::from_secs(20), || {
            wd("GET", "/status", None).ok().filter(|v| v["ready"] == true)
        });
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}}}});
        let s = wd("POST", "/session", Some(caps)).expect("session");
        let id = s["sessionId"].as_str().expect("session id").to_string();
        wd("POST", &format!("/session/{id}/url"), Some(json!({"url": "http://127.0.0.1:12000/"}))).expect("navigate");
        id
    });
    let sid = session.clone();
    let script = move |netns: &str, js: &'static str| -> Value {
        let id = session.clone();
        in_netns(netns, move || {
            wd("POST", &format!("/session/{id}/execute/sync"), Some(json!({"script": js, "args": []})))
                .unwrap_or(Value::Null)
        })
    };
    const EDGES: &str = "return [...document.querySelectorAll('.edge')].map(e => e.dataset.from + ' > ' + e.dataset.to + ' ' + e.dataset.port + ' ' + e.getAttribute('class'))";
    const NODES: &str = "return [...document.querySelectorAll('.node')].map(n => n.dataset.id)";
    let edges_of = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|e| e.as_str().map(String::from)).collect()
    };
    let edges = until("the client's edges on the map", Duration::from_secs(30), || {
        let e = edges_of(&script(&netns, EDGES));
        // The port is the flow's destination port: after translation, the backend's.
        e.iter()
            .any(|e| e.starts_with("workload:default/client > service:default/web 8080 edge verdict-forwarded"))
            .then_some(e)
    });
    assert!(
        edges.iter().any(|e| e.starts_with("service:default/web > workload:default/web 8080")),
        "the Service's edge to its backends: {edges:?}"
    );
    let nodes = edges_of(&script(&netns, NODES));
    for want in ["workload:default/client", "workload:default/web", "service:default/web"] {
        assert!(nodes.iter().any(|n| n == want), "{want} in {nodes:?}");
    }
    let rows = script(&netns, "return [...document.querySelectorAll('#flows tr.flow')].map(r => r.textContent)");
    assert!(edges_of(&rows).iter().any(|r| r.contains("default/client") && r.contains("FORWARDED")), "{rows}");
    let namespaces = script(&netns, "return [...document.getElementById('namespace').options].map(o => o.value)");
    assert!(edges_of(&namespaces).contains(&"default".to_string()), "{namespaces}");

    // New traffic: a new workload appears on the open page without a reload.
    let before =
        script(&netns, "return Number(document.getElementById('status').dataset.updates)").as_u64().unwrap_or(0);
    t.lab.pod_add("node-2", "other", [("app".to_string(), "other".to_string())].into(), None).expect("other");
    let updated = eventually("a new edge from the new pod", Duration::from_secs(30), || {
        let _ = t.curl("other", "http://10.96.0.10/");
        let e = edges_of(&script(&netns, EDGES));
        e.iter().find(|e| e.starts_with("workload:default/other > service:default/web")).cloned()
    });
    assert!(updated.contains("verdict-forwarded"), "{updated}");
    let after =
        script(&netns, "return Number(document.getElementById('status').dataset.updates)").as_u64().unwrap_or(0);
    assert!(after > before, "the page polled: {before} -> {after} updates");

    // A click on an edge lists its flows.
    let detail = script(
        &netns,
        "document.querySelector('.edge[data-from=\"workload:default/client\"][data-to=\"service:default/web\"]').dispatchEvent(new MouseEvent('click')); return document.getElementById('edge-detail').textContent",
    );
    let text = detail.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("workload:default/client -> service:default/web 8080/TCP") && text.contains("FORWARDED"),
        "{text}"
    );
    assert!(text.contains("no policy decided these flows"), "{text}");

    // HTTP rules on the web pods: the client -> web edge shows the statuses of its requests
    // (200 for GET /, 403 for what the proxy refused), from the L7 flows of b's node.
    let l7 = dir.path().join("l7.yaml");
    std::fs::write(&l7, L7).expect("write");
    t.lab.apply(&l7).expect("apply");
    let st = t.lab.state().expect("state");
    let b = st.pods.iter().find(|p| p.name == "b").expect("pod b").ip.clone();
    const HTTP: &str = "return [...document.querySelectorAll('.edge')].map(e => e.dataset.from + ' > ' + e.dataset.to + ' ' + e.dataset.port + ' ' + e.dataset.http)";
    let http = eventually("HTTP statuses on the client -> web edge", Duration::from_secs(40), || {
        let _ = t.curl("client", &format!("http://{b}:8080/"));
        let _ = t.curl("client", &format!("http://{b}:8080/private"));
        let e = edges_of(&script(&netns, HTTP));
        e.into_iter().find(|e| {
            e.starts_with("workload:default/client > workload:default/web 8080 ")
                && e.contains("200x")
                && e.contains("403x")
        })
    });
    let label = script(&netns, "return [...document.querySelectorAll('.edge-label')].map(l => l.textContent)");
    assert!(edges_of(&label).iter().any(|l| l.starts_with("8080/TCP HTTP 200x")), "{http}: {label}");
    // The browser goes with its session (chromedriver itself is stopped by its PID).
    in_netns(&netns, move || {
        let _ = wd("DELETE", &format!("/session/{sid}"), None);
    });
}
