//! The kubernetes source without an apiserver: kube's real `Client` and watchers over a
//! `tower_test` mock that answers list and watch requests with real Kubernetes JSON (lists,
//! watch events, bookmarks, a 410 Gone, an outage), exactly as an apiserver would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use super::KubeSource;
use crate::source::Objects;
use crate::source::manifests::{classify, parse_documents};
use crate::source::translate::translate;

const CLUSTER: &str = include_str!("fixtures/cluster.json");

fn items(kind: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(CLUSTER).expect("fixture");
    v["items"].as_array().expect("items").iter().filter(|i| i["kind"] == kind).cloned().collect()
}

fn kind_of(path: &str) -> &'static str {
    match path {
        p if p.ends_with("/nodes") => "Node",
        p if p.ends_with("/pods") => "Pod",
        p if p.ends_with("/services") => "Service",
        p if p.ends_with("/endpointslices") => "EndpointSlice",
        p if p.ends_with("/networkpolicies") => "NetworkPolicy",
        p if p.ends_with("/namespaces") => "Namespace",
        p if p.ends_with("/sluicenetworkpolicies") => "SluiceNetworkPolicy",
        p if p.ends_with("/sluiceclusterwidenetworkpolicies") => "SluiceClusterwideNetworkPolicy",
        _ => "Unknown",
    }
}

/// What the fake apiserver serves, per kind; tests change it while the watchers run.
#[derive(Default)]
struct Api {
    lists: BTreeMap<&'static str, (Vec<Value>, u64)>,
    /// Watch event lines served once to the next watch of that kind (then watches hang open).
    watch_events: BTreeMap<&'static str, Vec<Value>>,
    /// While true every request fails with 503, as during an API outage.
    down: bool,
    requests: Vec<String>,
    /// Open watches per kind, answered when a test pushes events.
    hanging: BTreeMap<&'static str, Vec<tower_test::mock::SendResponse<Response<Body>>>>,
}

fn watch_body(lines: &[Value]) -> Response<Body> {
    let body: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
    Response::builder().status(200).body(Body::from(body)).expect("response")
}

/// Deliver watch events for `kind`: to the open watch now, or to the next one.
fn push_watch(api: &Arc<Mutex<Api>>, kind: &'static str, lines: Vec<Value>) {
    let mut a = api.lock().expect("lock");
    match a.hanging.get_mut(kind).and_then(Vec::pop) {
        Some(send) => send.send_response(watch_body(&lines)),
        None => {
            a.watch_events.insert(kind, lines);
        }
    }
}

fn respond(status: u16, body: Value) -> Response<Body> {
    Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).expect("json"))).expect("response")
}

fn start(api: Arc<Mutex<Api>>) -> KubeSource {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let kind = kind_of(&path);
            let mut a = api.lock().expect("lock");
            a.requests.push(format!("{path}?{query}"));
            if a.down {
                send.send_response(respond(503, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "the server is currently unable to handle the request", "reason": "ServiceUnavailable", "code": 503})));
                continue;
            }
            if query.contains("watch=true") {
                match a.watch_events.remove(kind) {
                    Some(lines) => send.send_response(watch_body(&lines)),
                    // No news: keep the watch open, as an apiserver does until its timeout.
                    None => a.hanging.entry(kind).or_default().push(send),
                }
                continue;
            }
            let (list, rv) = a.lists.get(kind).cloned().unwrap_or_default();
            let api_version = list.first().and_then(|i| i["apiVersion"].as_str()).unwrap_or("v1").to_string();
            send.send_response(respond(
                200,
                json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": rv.to_string()}, "items": list}),
            ));
        }
    });
    let client = kube::Client::new(svc, "default");
    KubeSource::start(client, "mock apiserver".into(), Default::default())
}

fn fixture_api() -> Arc<Mutex<Api>> {
    let mut a = Api::default();
    for k in [
        "Node",
        "Pod",
        "Service",
        "EndpointSlice",
        "NetworkPolicy",
        "Namespace",
        "SluiceNetworkPolicy",
        "SluiceClusterwideNetworkPolicy",
    ] {
        a.lists.insert(k, (items(k), 5000));
    }
    Arc::new(Mutex::new(a))
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn manifest_objects() -> Objects {
    let mut o = Objects::default();
    classify(parse_documents(std::path::Path::new("cluster.json"), CLUSTER).expect("parse"), &mut o);
    o
}

#[tokio::test]
async fn same_objects_give_the_same_desired_state_from_both_sources() {
    let src = start(fixture_api());
    let objects = wait_for("initial list of every kind", || src.snapshot().objects).await;
    let from_kube = translate(&objects);
    let from_manifests = translate(&manifest_objects());
    assert_eq!(from_kube, from_manifests);
    assert_eq!(from_kube.services.len(), 1);
    assert_eq!(from_kube.host_ports.len(), 1);
    assert_eq!(from_kube.nodes["node-1"].labels.get("sluice.io/node-config").map(String::as_str), Some("old-kernel"));
    // Policy kinds too: the Namespace's labels, a NetworkPolicy and a Sluice CRD.
    assert_eq!(from_kube.policies.len(), 2, "{:?}", from_kube.rejected);
    assert_eq!(from_kube.namespaces["default"].get("team").map(String::as_str), Some("web"));
}

#[tokio::test]
async fn not_synced_until_every_kind_is_listed() {
    let api = fixture_api();
    api.lock().expect("lock").down = true;
    let src = start(api.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = src.snapshot();
    assert!(s.objects.is_none() && !s.synced, "nothing may be programmed or pruned before the initial lists");
    assert!(!s.errors.is_empty());
    api.lock().expect("lock").down = false;
    wait_for("sync after the API came up", || src.snapshot().objects).await;
}

#[tokio::test]
async fn watch_events_bookmarks_and_410_relist() {
    let api = fixture_api();
    let src = start(api.clone());
    wait_for("synced", || src.snapshot().objects).await;
    let mut node3 = items("Node")[1].clone();
    node3["metadata"]["name"] = json!("node-3");
    node3["metadata"]["resourceVersion"] = json!("5001");
    node3["spec"]["podCIDR"] = json!("10.244.3.0/24");
    node3["status"]["addresses"][0]["address"] = json!("198.51.100.13");
    push_watch(
        &api,
        "Node",
        vec![
            json!({"type": "ADDED", "object": node3}),
            json!({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": "5005"}}}),
            json!({"type": "DELETED", "object": items("Node")[1]}),
        ],
    );
    let names = || -> Option<Vec<String>> {
        let o = src.snapshot().objects?;
        let mut n: Vec<String> = o.nodes.iter().filter_map(|n| n.metadata.name.clone()).collect();
        n.sort();
        Some(n)
    };
    wait_for("ADDED and DELETED applied", || names().filter(|n| n == &["node-1", "node-3"])).await;

    // 410 Gone on the Service watch: the watcher relists; the new list replaces the old at once.
    let mut svc2 = items("Service")[0].clone();
    svc2["metadata"]["name"] = json!("web2");
    svc2["spec"]["clusterIP"] = json!("10.96.0.20");
    svc2["spec"]["ports"][0]["nodePort"] = json!(30081);
    api.lock().expect("lock").lists.insert("Service", (vec![svc2], 6000));
    push_watch(
        &api,
        "Service",
        vec![
            json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version: 5000 (5999)", "reason": "Expired", "code": 410}}),
        ],
    );
    let svcs = wait_for("relist after 410 Gone", || {
        let o = src.snapshot().objects?;
        let names: Vec<String> = o.services.iter().filter_map(|s| s.metadata.name.clone()).collect();
        (names == ["web2"]).then_some(names)
    })
    .await;
    assert_eq!(svcs, ["web2"]);
}

#[tokio::test]
async fn api_outage_during_endpoint_churn_changes_nothing_until_back() {
    let api = fixture_api();
    let src = start(api.clone());
    let before = translate(&wait_for("synced", || src.snapshot().objects).await);
    // The API goes away; meanwhile the endpoints change there (node-2's endpoint becomes ready).
    let mut slice = items("EndpointSlice")[0].clone();
    slice["endpoints"][1]["conditions"] = json!({"ready": true, "serving": true, "terminating": false});
    slice["metadata"]["resourceVersion"] = json!("7000");
    {
        let mut a = api.lock().expect("lock");
        a.down = true;
        a.lists.insert("EndpointSlice", (vec![slice], 7000));
    }
    // The open EndpointSlice watch ends (the connection drops): its relist meets the outage.
    push_watch(&api, "EndpointSlice", vec![]);
    wait_for("source reported stale", || src.snapshot().stale_secs.map(|_| ())).await;
    for _ in 0..10 {
        let s = src.snapshot();
        assert_eq!(
            translate(&s.objects.expect("last view kept")),
            before,
            "dataplane input unchanged during the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back: the apiserver serves what changed since the watched resourceVersion; converge.
    let current = api.lock().expect("lock").lists["EndpointSlice"].0[0].clone();
    api.lock().expect("lock").down = false;
    push_watch(&api, "EndpointSlice", vec![json!({"type": "MODIFIED", "object": current})]);
    let after = wait_for("converged after the outage", || {
        let t = translate(&src.snapshot().objects?);
        (t != before).then_some(t)
    })
    .await;
    let states: Vec<_> = after.services[0].backends.iter().map(|b| b.state).collect();
    assert_eq!(states, [sluice_core::BackendState::Active, sluice_core::BackendState::Active]);
    assert!(src.snapshot().stale_secs.is_none());
}
