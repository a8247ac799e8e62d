//! The relay over real gRPC connections, with clients generated from the protos: two node hubs
//! on unix sockets (no root, no network), the peer service of one of them listing both, and the
//! relay finding them through it and answering for the cluster.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::flow::*;
use sluice_observer::pb::flow::FlowFilter;
use sluice_observer::pb::observer::observer_client::ObserverClient;
use sluice_observer::pb::observer::{
    GetFlowsRequest, GetNodesRequest, ServerStatusRequest, get_flows_response::ResponseTypes,
};
use sluice_observer::pb::peer::peer_client::PeerClient;
use sluice_observer::pb::peer::{ChangeNotificationType, NotifyRequest};
use sluice_observer::pb::relay::NodeState;
use sluice_observer::relay::Relay;
use sluice_observer::server::Hub;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const S: u64 = 1_000_000_000;

fn flow(t: u64, node: &str) -> Flow {
    let ep = |pod: &str, id: u32| Endpoint {
        id,
        identity: id,
        namespace: "default".into(),
        pod_name: pod.into(),
        labels: vec![format!("k8s:app={pod}")],
        workload: None,
    };
    Flow {
        time_ns: t,
        verdict: Verdict::Forwarded,
        drop_reason: None,
        event: EventKind::Trace,
        observation: Some(ObservationPoint::ToStack),
        source_ip: Ipv4Addr::new(10, 244, 1, 3),
        destination_ip: Ipv4Addr::new(10, 244, 2, 2),
        l4: Some(L4::Tcp { source_port: 40000, destination_port: 80, flags: TcpFlags::from_byte(0x02) }),
        source: ep(&format!("client-{node}"), 300),
        destination: ep("web", 400),
        node_name: node.into(),
        direction: TrafficDirection::Egress,
        is_reply: Some(false),
        source_service: None,
        destination_service: None,
        policy: PolicyMatch::default(),
        l7: None,
        sock: None,
    }
}

async fn serve_unix(router: tonic::transport::server::Router, path: &Path) {
    let listener = tokio::net::UnixListener::bind(path).expect("bind");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
}

struct Cluster {
    hubs: Vec<Arc<Hub>>,
    relay: Channel,
    sockets: Vec<String>,
    _dir: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tmp");
    let mut hubs = Vec::new();
    let mut sockets = Vec::new();
    for n in ["node-1", "node-2"] {
        let path = dir.path().join(format!("{n}.sock"));
        let hub = Hub::new(n, &format!("unix://{}", path.display()), 100, Vec::new());
        serve_unix(hub.router().await, &path).await;
        sockets.push(format!("unix://{}", path.display()));
        hubs.push(hub);
    }
    hubs[0].set_peers(
        [("node-1", &sockets[0]), ("node-2", &sockets[1])]
            .iter()
            .map(|(n, a)| (n.to_string(), a.to_string()))
            .collect(),
    );
    let relay = Relay::new();
    tokio::spawn(relay.clone().discover(sluice_observer::client::unix_lazy(dir.path().join("node-1.sock"))));
    let rpath = dir.path().join("relay.sock");
    serve_unix(relay.router().await, &rpath).await;
    let relay = sluice_observer::client::connect_unix(rpath).await.expect("relay");
    Cluster { hubs, relay, sockets, _dir: dir }
}

async fn nodes(c: &Channel) -> Vec<(String, i32)> {
    let r = ObserverClient::new(c.clone()).get_nodes(GetNodesRequest {}).await.expect("nodes").into_inner();
    r.nodes.into_iter().map(|n| (n.name, n.state)).collect()
}

async fn until_nodes(c: &Channel, want: &[(&str, NodeState)]) {
    let want: Vec<(String, i32)> = want.iter().map(|(n, s)| (n.to_string(), *s as i32)).collect();
    for _ in 0..100 {
        if nodes(c).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nodes never became {want:?}: {:?}", nodes(c).await);
}

async fn collect(c: &Channel, req: GetFlowsRequest) -> Vec<sluice_observer::pb::observer::GetFlowsResponse> {
    let mut s = ObserverClient::new(c.clone()).get_flows(req).await.expect("get_flows").into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.next().await {
        out.push(r.expect("item"));
    }
    out
}

fn flows(rs: &[sluice_observer::pb::observer::GetFlowsResponse]) -> Vec<(i64, String)> {
    rs.iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::Flow(f)) => Some((f.time.as_ref().map_or(0, |t| t.seconds), r.node_name.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_peer_service_lists_every_node_once() {
    let c = cluster().await;
    let ch = sluice_observer::client::unix_lazy(c.sockets[0].trim_start_matches("unix://").into());
    let mut s = PeerClient::new(ch).notify(NotifyRequest {}).await.expect("notify").into_inner();
    let mut got = Vec::new();
    for _ in 0..2 {
        let n =
            tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("in time").expect("item").expect("ok");
        got.push((n.name, n.address, n.r#type));
    }
    let added = ChangeNotificationType::PeerAdded as i32;
    assert_eq!(
        got,
        vec![("node-1".into(), c.sockets[0].clone(), added), ("node-2".into(), c.sockets[1].clone(), added)]
    );
    // A node leaving is one PEER_DELETED.
    c.hubs[0].set_peers([("node-1".to_string(), c.sockets[0].clone())].into_iter().collect());
    let n = tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("in time").expect("item").expect("ok");
    assert_eq!((n.name.as_str(), n.r#type), ("node-2", ChangeNotificationType::PeerDeleted as i32));
}

#[tokio::test]
async fn the_relay_merges_every_node_and_names_the_ones_that_do_not_answer() {
    let c = cluster().await;
    until_nodes(&c.relay, &[("node-1", NodeState::NodeConnected), ("node-2", NodeState::NodeConnected)]).await;
    c.hubs[0].push([1, 3, 5].map(|t| flow(t * S, "node-1")));
    c.hubs[1].push([2, 4, 6].map(|t| flow(t * S, "node-2")));
    // The cluster's last 4, oldest first, each with the node it came from.
    let last = flows(&collect(&c.relay, GetFlowsRequest { number: 4, ..Default::default() }).await);
    let n = |s: &str| s.to_string();
    assert_eq!(last, vec![(3, n("node-1")), (4, n("node-2")), (5, n("node-1")), (6, n("node-2"))]);
    let first = flows(&collect(&c.relay, GetFlowsRequest { number: 2, first: true, ..Default::default() }).await);
    assert_eq!(first, vec![(1, n("node-1")), (2, n("node-2"))]);
    // Filters go to every node.
    let only2 = FlowFilter { source_pod: vec!["default/client-node-2".into()], ..Default::default() };
    let got =
        flows(&collect(&c.relay, GetFlowsRequest { number: 10, whitelist: vec![only2], ..Default::default() }).await);
    assert_eq!(got.iter().map(|f| f.0).collect::<Vec<_>>(), [2, 4, 6]);
    // A bad request is refused by the relay itself, naming the field.
    let bad = GetFlowsRequest { first: true, follow: true, ..Default::default() };
    let e = ObserverClient::new(c.relay.clone()).get_flows(bad).await.expect_err("first+follow");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let st =
        ObserverClient::new(c.relay.clone()).server_status(ServerStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(
        (st.num_connected_nodes, st.num_unavailable_nodes, st.num_flows, st.max_flows),
        (Some(2), Some(0), 6, 200)
    );

    // Follow: new flows from either node come through.
    let mut follow = ObserverClient::new(c.relay.clone())
        .get_flows(GetFlowsRequest { follow: true, ..Default::default() })
        .await
        .expect("follow")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.hubs[1].push([flow(7 * S, "node-2")]);
    let r =
        tokio::time::timeout(Duration::from_secs(5), follow.next()).await.expect("in time").expect("item").expect("ok");
    assert_eq!(flows(&[r]), vec![(7, n("node-2"))]);

    // A node that does not answer: listed unavailable, named in the stream, the rest still served.
    let mut peers: std::collections::BTreeMap<String, String> = [("node-1", &c.sockets[0]), ("node-2", &c.sockets[1])]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    peers.insert("node-3".into(), "unix:///nonexistent/sluice-test.sock".into());
    c.hubs[0].set_peers(peers);
    until_nodes(
        &c.relay,
        &[
            ("node-1", NodeState::NodeConnected),
            ("node-2", NodeState::NodeConnected),
            ("node-3", NodeState::NodeUnavailable),
        ],
    )
    .await;
    let rs = collect(&c.relay, GetFlowsRequest { number: 2, ..Default::default() }).await;
    match &rs[0].response_types {
        Some(ResponseTypes::NodeStatus(s)) => {
            assert_eq!((s.state_change, s.node_names.clone()), (NodeState::NodeUnavailable as i32, vec![n("node-3")]));
        }
        other => panic!("the first response names the unavailable node: {other:?}"),
    }
    assert_eq!(flows(&rs), vec![(6, n("node-2")), (7, n("node-2"))]);
    let st =
        ObserverClient::new(c.relay.clone()).server_status(ServerStatusRequest {}).await.expect("status").into_inner();
    assert_eq!((st.num_connected_nodes, st.unavailable_nodes), (Some(2), vec![n("node-3")]));
    // And a node that leaves is gone from the relay.
    c.hubs[0].set_peers([("node-1".to_string(), c.sockets[0].clone())].into_iter().collect());
    until_nodes(&c.relay, &[("node-1", NodeState::NodeConnected)]).await;
}

async fn next_flow(s: &mut tonic::Streaming<sluice_observer::pb::observer::GetFlowsResponse>) -> (i64, String) {
    loop {
        let r =
            tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("in time").expect("item").expect("ok");
        if let Some(f) = flows(&[r]).pop() {
            return f;
        }
    }
}

#[tokio::test]
async fn a_followed_stream_takes_in_a_joining_node_and_keeps_time_order() {
    let c = cluster().await;
    until_nodes(&c.relay, &[("node-1", NodeState::NodeConnected), ("node-2", NodeState::NodeConnected)]).await;
    let mut follow = ObserverClient::new(c.relay.clone())
        .get_flows(GetFlowsRequest { follow: true, ..Default::default() })
        .await
        .expect("follow")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Two nodes' flows arriving out of time order (node-1's later one first) leave in time order.
    c.hubs[0].push([flow(9 * S, "node-1")]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.hubs[1].push([flow(8 * S, "node-2")]);
    let n = |s: &str| s.to_string();
    assert_eq!(next_flow(&mut follow).await, (8, n("node-2")));
    assert_eq!(next_flow(&mut follow).await, (9, n("node-1")));
    // A third node joins while the stream is open: it is named connected, and its new flows
    // come through the same stream.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("node-3.sock");
    let hub3 = Hub::new("node-3", &format!("unix://{}", path.display()), 100, Vec::new());
    hub3.push([flow(5 * S, "node-3")]); // before it joined: not replayed into a followed stream
    serve_unix(hub3.router().await, &path).await;
    let mut peers: std::collections::BTreeMap<String, String> = [("node-1", &c.sockets[0]), ("node-2", &c.sockets[1])]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    peers.insert("node-3".into(), format!("unix://{}", path.display()));
    c.hubs[0].set_peers(peers);
    let joined = loop {
        let r = tokio::time::timeout(Duration::from_secs(5), follow.next()).await.expect("in time").expect("item");
        if let Some(ResponseTypes::NodeStatus(s)) = r.expect("ok").response_types {
            break s;
        }
    };
    assert_eq!((joined.state_change, joined.node_names), (NodeState::NodeConnected as i32, vec![n("node-3")]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub3.push([flow(10 * S, "node-3")]);
    assert_eq!(next_flow(&mut follow).await, (10, n("node-3")));
}
