//! The Observer API through a real gRPC connection, with the client generated from the protos
//! (not sluice's CLI): a unix socket in a temp dir, no root, no network.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::flow::*;
use sluice_observer::pb::flow as pbf;
use sluice_observer::pb::observer::observer_client::ObserverClient;
use sluice_observer::pb::observer::{
    GetFlowsRequest, GetNamespacesRequest, GetNodesRequest, ServerStatusRequest, get_flows_response::ResponseTypes,
};
use sluice_observer::server::Hub;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn flow(t: u64, ns: &str, pod: &str, port: u16, verdict: Verdict) -> Flow {
    let ep = |ns: &str, pod: &str, id: u32| Endpoint {
        id,
        identity: id,
        namespace: ns.into(),
        pod_name: pod.into(),
        labels: vec![format!("k8s:app={}", pod.split('-').next().unwrap_or(pod))],
        workload: None,
    };
    Flow {
        time_ns: t,
        verdict,
        drop_reason: (verdict == Verdict::Dropped).then_some(DropReason::PolicyDenied),
        event: if verdict == Verdict::Dropped { EventKind::Drop } else { EventKind::Trace },
        observation: (verdict != Verdict::Dropped).then_some(ObservationPoint::ToEndpoint),
        source_ip: Ipv4Addr::new(10, 244, 1, 3),
        destination_ip: Ipv4Addr::new(10, 244, 2, 2),
        l4: Some(L4::Tcp { source_port: 40000, destination_port: port, flags: TcpFlags::from_byte(0x02) }),
        source: ep(ns, "client-1", 300),
        destination: ep(ns, pod, 400),
        node_name: "node-1".into(),
        direction: TrafficDirection::Ingress,
        is_reply: Some(false),
        source_service: None,
        destination_service: Some(ServiceRef { namespace: ns.into(), name: "web".into() }),
        policy: PolicyMatch {
            allowed_by: vec![],
            denied_by: if verdict == Verdict::Dropped { vec![format!("{ns}/deny-all")] } else { vec![] },
        },
        l7: None,
        sock: None,
    }
}

struct Served {
    hub: Arc<Hub>,
    channel: Channel,
    _dir: tempfile::TempDir,
}

async fn serve(capacity: usize) -> Served {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hubble.sock");
    let hub = Hub::new("node-1", "unix://hubble.sock", capacity, Vec::new());
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let router = hub.router().await;
    tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    let channel = sluice_observer::client::connect_unix(path).await.expect("connect");
    Served { hub, channel, _dir: dir }
}

async fn collect(c: &mut ObserverClient<Channel>, req: GetFlowsRequest) -> Vec<pbf::Flow> {
    let mut s = c.get_flows(req).await.expect("get_flows").into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.next().await {
        if let Some(ResponseTypes::Flow(f)) = r.expect("item").response_types {
            out.push(f);
        }
    }
    out
}

fn secs(f: &[pbf::Flow]) -> Vec<i64> {
    f.iter().map(|f| f.time.as_ref().map_or(-1, |t| t.seconds)).collect()
}

const S: u64 = 1_000_000_000;

#[tokio::test]
async fn number_first_since_until_and_filters() {
    let s = serve(100).await;
    s.hub.push((1..=6).map(|i| {
        flow(
            i * S,
            if i % 2 == 0 { "prod" } else { "dev" },
            "web-1",
            80,
            if i == 6 { Verdict::Dropped } else { Verdict::Forwarded },
        )
    }));
    let mut c = ObserverClient::new(s.channel.clone());
    let last = collect(&mut c, GetFlowsRequest { number: 2, ..Default::default() }).await;
    assert_eq!(secs(&last), [5, 6], "the last 2, oldest first");
    let first = collect(&mut c, GetFlowsRequest { number: 2, first: true, ..Default::default() }).await;
    assert_eq!(secs(&first), [1, 2]);
    let range = GetFlowsRequest {
        since: Some(prost_types_ts(2)),
        until: Some(prost_types_ts(4)),
        field_mask: Some(Default::default()),
        ..Default::default()
    };
    assert_eq!(secs(&collect(&mut c, range).await), [2, 3, 4]);
    // Whitelist: prod pods; blacklist: drops.
    let prod = pbf::FlowFilter { destination_pod: vec!["prod/".into()], ..Default::default() };
    let drops = pbf::FlowFilter { verdict: vec![pbf::Verdict::Dropped as i32], ..Default::default() };
    let r = GetFlowsRequest {
        number: 10,
        whitelist: vec![prod.clone()],
        blacklist: vec![drops.clone()],
        ..Default::default()
    };
    assert_eq!(secs(&collect(&mut c, r).await), [2, 4]);
    // The drop as Hubble's clients read it.
    let r = GetFlowsRequest { number: 10, whitelist: vec![drops], ..Default::default() };
    let d = collect(&mut c, r).await;
    assert_eq!(d.len(), 1);
    let d = &d[0];
    assert_eq!((d.verdict, d.drop_reason_desc, d.r#type), (pbf::Verdict::Dropped as i32, 133, 1));
    assert_eq!(d.event_type.as_ref().map(|e| (e.r#type, e.sub_type)), Some((1, 133)));
    assert_eq!(d.traffic_direction, pbf::TrafficDirection::Ingress as i32);
    assert_eq!(d.node_name, "node-1");
    assert_eq!(d.is_reply, Some(false));
    assert_eq!(
        d.ingress_denied_by.first().map(|p| (p.namespace.as_str(), p.name.as_str())),
        Some(("prod", "deny-all"))
    );
    let dst = d.destination.as_ref().expect("destination");
    assert!(dst.identity != 0 && dst.labels.iter().all(|l| l.starts_with("k8s:")), "{dst:?}");
    assert_eq!(d.destination_service.as_ref().map(|s| s.name.as_str()), Some("web"));
}

fn prost_types_ts(s: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: s as i64, nanos: 0 }
}

#[tokio::test]
async fn follow_streams_new_flows_and_reports_what_a_slow_reader_lost() {
    let s = serve(8).await;
    s.hub.push([flow(S, "dev", "web-1", 80, Verdict::Forwarded)]);
    let mut c = ObserverClient::new(s.channel.clone());
    let mut stream =
        c.get_flows(GetFlowsRequest { follow: true, ..Default::default() }).await.expect("follow").into_inner();
    // Let the stream start, then push: only new flows come (number 0 with follow).
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.hub.push([flow(2 * S, "dev", "web-1", 80, Verdict::Forwarded)]);
    let first =
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("in time").expect("item").expect("ok");
    match first.response_types {
        Some(ResponseTypes::Flow(f)) => assert_eq!(f.time.map(|t| t.seconds), Some(2)),
        other => panic!("{other:?}"),
    }
    // 100 flows at once into a ring of 8: the follower is told it lost 92, then gets the 8.
    s.hub.push((100..200).map(|i| flow(i * S, "dev", "web-1", 80, Verdict::Forwarded)));
    let mut lost = 0;
    let mut got = Vec::new();
    while got.len() < 8 {
        let r = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("in time")
            .expect("item")
            .expect("ok");
        match r.response_types {
            Some(ResponseTypes::LostEvents(l)) => {
                assert_eq!(l.source, pbf::LostEventSource::HubbleRingBuffer as i32);
                lost += l.num_events_lost;
            }
            Some(ResponseTypes::Flow(f)) => got.push(f.time.map_or(0, |t| t.seconds)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(lost, 92);
    assert_eq!(got, (192..200).collect::<Vec<i64>>());
    let st = c.server_status(ServerStatusRequest {}).await.expect("status").into_inner();
    assert_eq!((st.num_flows, st.max_flows, st.seen_flows), (8, 8, 102));
    assert_eq!(st.num_connected_nodes, Some(1));
    // The loss is counted where Prometheus sees it too.
    let text = s.hub.metrics().render();
    assert!(text.contains("hubble_lost_events_total{source=\"hubble_ring_buffer\"} 92"), "{text}");
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_naming_the_field_and_value() {
    let s = serve(10).await;
    let mut c = ObserverClient::new(s.channel.clone());
    let cases = [
        (
            GetFlowsRequest { since: Some(prost_types_ts(5)), until: Some(prost_types_ts(1)), ..Default::default() },
            "since",
        ),
        (
            GetFlowsRequest {
                whitelist: vec![pbf::FlowFilter { source_ip: vec!["10.0.0.999".into()], ..Default::default() }],
                ..Default::default()
            },
            "10.0.0.999",
        ),
        (
            GetFlowsRequest {
                blacklist: vec![pbf::FlowFilter { verdict: vec![99], ..Default::default() }],
                ..Default::default()
            },
            "verdict: 99",
        ),
        (
            GetFlowsRequest {
                whitelist: vec![pbf::FlowFilter { destination_port: vec!["http".into()], ..Default::default() }],
                ..Default::default()
            },
            "destination_port",
        ),
        (GetFlowsRequest { first: true, follow: true, ..Default::default() }, "first and follow"),
    ];
    for (req, want) in cases {
        let e = c.get_flows(req).await.expect_err(want);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(want), "{want}: {}", e.message());
    }
}

#[tokio::test]
async fn nodes_namespaces_and_health_as_hubble_clients_expect() {
    let s = serve(10).await;
    s.hub.push([flow(S, "dev", "web-1", 80, Verdict::Forwarded), flow(2 * S, "prod", "web-1", 80, Verdict::Forwarded)]);
    let mut c = ObserverClient::new(s.channel.clone());
    let nodes = c.get_nodes(GetNodesRequest {}).await.expect("nodes").into_inner().nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0].name.as_str(), nodes[0].state),
        ("node-1", sluice_observer::pb::relay::NodeState::NodeConnected as i32)
    );
    let ns = c.get_namespaces(GetNamespacesRequest {}).await.expect("ns").into_inner().namespaces;
    assert_eq!(ns.iter().map(|n| n.namespace.as_str()).collect::<Vec<_>>(), ["dev", "prod"]);
    let mut h = tonic_health::pb::health_client::HealthClient::new(s.channel.clone());
    let r = h
        .check(tonic_health::pb::HealthCheckRequest { service: sluice_observer::HEALTH_SERVICE.into() })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}
