use std::net::Ipv4Addr;

use super::filter::{FilterSet, FlowFilter};
use super::ring::{FlowRing, Query, QueryError};
use super::*;

pub(crate) fn ep(ns: &str, pod: &str, identity: u32, labels: &[&str]) -> Endpoint {
    Endpoint {
        id: identity,
        identity,
        namespace: ns.into(),
        pod_name: pod.into(),
        labels: labels.iter().map(|l| format!("k8s:{l}")).collect(),
        workload: None,
    }
}

/// client (default, app=client) -> web (default, app=web) port 80, at `t`.
pub(crate) fn flow(t: u64, verdict: Verdict) -> Flow {
    Flow {
        time_ns: t,
        verdict,
        drop_reason: (verdict == Verdict::Dropped).then_some(DropReason::PolicyDenied),
        event: if verdict == Verdict::Dropped { EventKind::Drop } else { EventKind::Trace },
        observation: (verdict != Verdict::Dropped).then_some(ObservationPoint::ToEndpoint),
        source_ip: Ipv4Addr::new(10, 244, 1, 3),
        destination_ip: Ipv4Addr::new(10, 244, 2, 2),
        l4: Some(L4::Tcp { source_port: 40000, destination_port: 80, flags: TcpFlags::from_byte(0x02) }),
        source: ep("default", "client-7d4f", 101, &["app=client"]),
        destination: ep("default", "web-1", 202, &["app=web", "tier=front"]),
        node_name: "node-1".into(),
        direction: TrafficDirection::Ingress,
        is_reply: Some(false),
        source_service: None,
        destination_service: Some(ServiceRef { namespace: "default".into(), name: "web".into() }),
        policy: PolicyMatch::default(),
        l7: None,
        sock: None,
    }
}

fn admits(white: &[FlowFilter], black: &[FlowFilter], f: &Flow) -> bool {
    FilterSet::compile(white, black).expect("valid").admits(f)
}

#[test]
fn fields_and_within_a_filter_values_or_within_a_field_filters_or_across() {
    let f = flow(1, Verdict::Forwarded);
    let pod = FlowFilter { source_pod: vec!["default/client".into()], ..Default::default() };
    assert!(admits(std::slice::from_ref(&pod), &[], &f));
    // AND: the pod matches but the verdict does not.
    let both = FlowFilter { verdict: vec![Verdict::Dropped], ..pod.clone() };
    assert!(!admits(std::slice::from_ref(&both), &[], &f));
    // OR within a field.
    let either = FlowFilter { verdict: vec![Verdict::Dropped, Verdict::Forwarded], ..pod.clone() };
    assert!(admits(&[either], &[], &f));
    // OR across filters.
    assert!(admits(&[both.clone(), pod.clone()], &[], &f));
    // Blacklist wins.
    assert!(!admits(
        std::slice::from_ref(&pod),
        &[FlowFilter { destination_port: vec!["80".into()], ..Default::default() }],
        &f
    ));
    assert!(admits(&[], &[FlowFilter { destination_port: vec!["443".into()], ..Default::default() }], &f));
}

#[test]
fn pods_services_ips_labels_identities_ports_flags_nodes() {
    let f = flow(1, Verdict::Forwarded);
    let one = |ff: FlowFilter| admits(&[ff], &[], &f);
    assert!(one(FlowFilter { source_pod: vec!["client".into()], ..Default::default() }), "prefix, any namespace");
    assert!(one(FlowFilter { destination_pod: vec!["default/".into()], ..Default::default() }), "namespace only");
    assert!(!one(FlowFilter { destination_pod: vec!["kube-system/".into()], ..Default::default() }));
    assert!(one(FlowFilter { destination_service: vec!["default/web".into()], ..Default::default() }));
    assert!(!one(FlowFilter { source_service: vec!["default/web".into()], ..Default::default() }));
    assert!(one(FlowFilter { source_ip: vec!["10.244.1.0/24".into()], ..Default::default() }));
    assert!(one(FlowFilter { destination_ip: vec!["10.244.2.2".into()], ..Default::default() }));
    assert!(!one(FlowFilter { destination_ip: vec!["10.244.2.3".into()], ..Default::default() }));
    assert!(one(FlowFilter { destination_label: vec!["app=web,tier in (front,back)".into()], ..Default::default() }));
    assert!(one(FlowFilter { destination_label: vec!["k8s:app=web".into()], ..Default::default() }));
    assert!(!one(FlowFilter { destination_label: vec!["app=web,!tier".into()], ..Default::default() }));
    assert!(one(FlowFilter { source_label: vec!["app!=web".into()], ..Default::default() }));
    assert!(one(FlowFilter { source_identity: vec![101], ..Default::default() }));
    assert!(!one(FlowFilter { destination_identity: vec![101], ..Default::default() }));
    assert!(one(FlowFilter { protocol: vec!["TCP".into()], ..Default::default() }));
    assert!(!one(FlowFilter { protocol: vec!["udp".into()], ..Default::default() }));
    assert!(one(FlowFilter { tcp_flags: vec![vec!["SYN".into()]], ..Default::default() }));
    assert!(!one(FlowFilter { tcp_flags: vec![vec!["SYN".into(), "ACK".into()]], ..Default::default() }));
    assert!(one(FlowFilter { node_name: vec!["node-*".into()], ..Default::default() }));
    assert!(!one(FlowFilter { node_name: vec!["*-2".into()], ..Default::default() }));
    assert!(one(FlowFilter { event_type: vec![(4, Some(101))], ..Default::default() }), "trace at to-endpoint");
    assert!(!one(FlowFilter { event_type: vec![(1, None)], ..Default::default() }));
    assert!(one(FlowFilter {
        reply: vec![false],
        traffic_direction: vec![TrafficDirection::Ingress],
        ..Default::default()
    }));
}

#[test]
fn bad_filters_name_the_field_the_value_and_what_is_accepted() {
    let cases: [(FlowFilter, &str, &str); 6] = [
        (FlowFilter { source_ip: vec!["10.0.0.300".into()], ..Default::default() }, "source_ip", "10.0.0.300"),
        (FlowFilter { destination_port: vec!["http".into()], ..Default::default() }, "destination_port", "http"),
        (FlowFilter { protocol: vec!["sctp".into()], ..Default::default() }, "protocol", "sctp"),
        (FlowFilter { source_label: vec!["app in web".into()], ..Default::default() }, "source_label", "app in web"),
        (FlowFilter { source_pod: vec!["a/b/c".into()], ..Default::default() }, "source_pod", "a/b/c"),
        (FlowFilter { tcp_flags: vec![vec!["SYNACK".into()]], ..Default::default() }, "tcp_flags", "SYNACK"),
    ];
    for (f, field, value) in cases {
        let e = FilterSet::compile(&[], &[FlowFilter::default(), f]).expect_err(field);
        assert_eq!((e.field, e.value.as_str(), e.index), (field, value, 1));
        assert!(e.to_string().contains("accepted:"), "{e}");
    }
}

#[test]
fn ring_returns_last_or_first_n_oldest_first_and_time_ranges() {
    let mut r = FlowRing::new(5);
    for t in 1..=8 {
        r.push(flow(t * 10, if t % 2 == 0 { Verdict::Dropped } else { Verdict::Forwarded }));
    }
    let all = FilterSet::default();
    let times = |v: Vec<Flow>| v.iter().map(|f| f.time_ns).collect::<Vec<_>>();
    assert_eq!((r.len(), r.seen(), r.overwritten()), (5, 8, 3));
    assert_eq!(times(r.query(&Query { number: Some(2), ..Default::default() }, &all)), [70, 80]);
    assert_eq!(times(r.query(&Query { number: Some(2), first: true, ..Default::default() }, &all)), [40, 50]);
    assert_eq!(times(r.query(&Query { since_ns: Some(55), until_ns: Some(75), ..Default::default() }, &all)), [60, 70]);
    let drops =
        FilterSet::compile(&[FlowFilter { verdict: vec![Verdict::Dropped], ..Default::default() }], &[]).expect("ok");
    assert_eq!(times(r.query(&Query { number: Some(2), ..Default::default() }, &drops)), [60, 80]);
    assert_eq!(
        Query { since_ns: Some(2), until_ns: Some(1), ..Default::default() }.validate(),
        Err(QueryError::SinceAfterUntil { since_ns: 2, until_ns: 1 })
    );
}

#[test]
fn a_slow_follower_is_told_how_many_flows_it_lost() {
    let mut r = FlowRing::new(4);
    let all = FilterSet::default();
    let q = Query::default();
    let cursor = r.tail();
    r.push(flow(1, Verdict::Forwarded));
    let read = r.read_from(cursor, &all, &q);
    assert_eq!((read.flows.len(), read.lost, read.next), (1, 0, 1));
    // The follower falls behind by more than the ring holds.
    for t in 2..=10 {
        r.push(flow(t, Verdict::Forwarded));
    }
    let read = r.read_from(read.next, &all, &q);
    assert_eq!(read.lost, 5, "flows 2..=6 were overwritten unread");
    assert_eq!(read.flows.iter().map(|f| f.time_ns).collect::<Vec<_>>(), [7, 8, 9, 10]);
    assert_eq!(r.read_from(read.next, &all, &q), super::ring::Read { flows: vec![], lost: 0, next: 10 });
}

#[test]
fn wire_numbers_are_hubbles() {
    assert_eq!(Verdict::Forwarded as i32, 1);
    assert_eq!(Verdict::Translated as i32, 7);
    assert_eq!(EventKind::PolicyVerdict as i32, 5);
    assert_eq!(ObservationPoint::ToEndpoint as i32, 101);
    assert_eq!(DropReason::PolicyDeny as i32, 181);
    let f = flow(1, Verdict::Dropped);
    assert_eq!((f.event as i32, f.sub_type(), f.flow_type()), (1, 133, 1));
    assert_eq!(TcpFlags::from_byte(0x12).names(), ["SYN", "ACK"]);
}

pub(crate) fn pod(ns: &str, name: &str, ip: &str, node: &str, app: &str) -> crate::model::PodInfo {
    crate::model::PodInfo {
        namespace: ns.into(),
        name: name.into(),
        node: Some(node.into()),
        ip: Some(ip.parse().expect("ip")),
        labels: [("app".to_string(), app.to_string())].into(),
        ready: true,
        ports: Vec::new(),
        workload: None,
    }
}

fn directory() -> enrich::Directory {
    let pods = [
        pod("default", "client", "10.244.1.3", "node-1", "client"),
        pod("default", "web-b", "10.244.2.2", "node-2", "web"),
    ];
    let svc = crate::testing::ServiceBuilder::new("default", "web")
        .cluster_ip("10.96.0.10", 80)
        .backend(crate::testing::backend("10.244.2.2", 8080, "node-2"))
        .build();
    let identity = |ip: Ipv4Addr| Some(if ip.octets()[2] == 1 { 1001 } else { 2002 });
    let nodes = [(Ipv4Addr::new(198, 51, 100, 11), true), (Ipv4Addr::new(198, 51, 100, 12), false)];
    enrich::Directory::new("node-1", &pods, &[svc], identity, &nodes)
}

/// The client's SYN to the `web` ClusterIP, translated to web-b, as a trace sees it.
fn client_to_web() -> enrich::Observed {
    enrich::Observed {
        time_ns: 5,
        proto: 6,
        src: Ipv4Addr::new(10, 244, 1, 3),
        sport: 40000,
        dst: Ipv4Addr::new(10, 96, 0, 10),
        dport: 80,
        translated_to: Some((Ipv4Addr::new(10, 244, 2, 2), 8080)),
        observation: ObservationPoint::ToStack,
    }
}

#[test]
fn an_observed_service_connection_gets_pods_identities_the_service_and_a_direction() {
    let d = directory();
    let f = d.trace(&client_to_web());
    assert_eq!(
        (f.source.namespace.as_str(), f.source.pod_name.as_str(), f.source.identity),
        ("default", "client", 1001)
    );
    assert_eq!((f.destination.pod_name.as_str(), f.destination.identity), ("web-b", 2002));
    assert_eq!(f.destination_ip, Ipv4Addr::new(10, 244, 2, 2));
    assert_eq!(f.l4.and_then(|l| l.ports()), Some((40000, 8080)));
    assert_eq!(f.destination_service, Some(ServiceRef { namespace: "default".into(), name: "web".into() }));
    assert_eq!(f.direction, TrafficDirection::Egress, "it leaves this node's pod");
    assert!(f.source.labels.contains(&"k8s:app=client".to_string()), "{:?}", f.source.labels);
    assert_eq!(f.node_name, "node-1");
    // Hubble's compact line.
    let line = compact::line("Dec  5 07:00:00.000", &f);
    assert_eq!(
        line,
        "Dec  5 07:00:00.000: default/client:40000 (ID:1001) -> default/web-b:8080 (ID:2002) (service default/web) to-stack FORWARDED (TCP Flags: SYN)"
    );
}

#[test]
fn nodes_and_the_world_get_reserved_identities() {
    let d = directory();
    let host = d.endpoint(Ipv4Addr::new(198, 51, 100, 11));
    assert_eq!((host.identity, host.labels.clone()), (1, vec!["reserved:host".to_string()]));
    assert_eq!(d.endpoint(Ipv4Addr::new(198, 51, 100, 12)).identity, 6);
    let world = d.endpoint(Ipv4Addr::new(8, 8, 8, 8));
    assert_eq!((world.identity, world.labels), (2, vec!["reserved:world".to_string()]));
    // Into a local pod from outside: ingress, no Service when nothing was translated.
    let o = enrich::Observed {
        time_ns: 1,
        proto: 17,
        src: Ipv4Addr::new(198, 51, 100, 201),
        sport: 5353,
        dst: Ipv4Addr::new(10, 244, 1, 3),
        dport: 53,
        translated_to: None,
        observation: ObservationPoint::FromNetwork,
    };
    let f = d.trace(&o);
    assert_eq!(f.direction, TrafficDirection::Ingress);
    assert_eq!(f.destination_service, None);
    assert_eq!(
        compact::line("t", &f),
        "t: 198.51.100.201:5353 (world) -> default/client:53 (ID:1001) from-network FORWARDED"
    );
}

#[test]
fn a_drop_line_names_its_reason_and_policy() {
    let mut f = flow(1, Verdict::Dropped);
    f.policy.denied_by = vec!["default/deny-all".into()];
    let line = compact::line("t", &f);
    assert!(
        line.ends_with("DROPPED (POLICY_DENIED) (default deny: default/deny-all selects this pod) (TCP Flags: SYN)"),
        "{line}"
    );
    f.drop_reason = Some(DropReason::PolicyDeny);
    f.policy.denied_by = vec!["default/no-ssh".into()];
    let line = compact::line("t", &f);
    assert!(line.ends_with("DROPPED (POLICY_DENY) by default/no-ssh (TCP Flags: SYN)"), "{line}");
}

#[test]
fn table_and_dict_columns_carry_what_the_compact_line_does() {
    let mut f = flow(1, Verdict::Dropped);
    f.policy.denied_by = vec!["default/deny-all".into()];
    let c = compact::columns(&f);
    assert_eq!(c.kind, "drop");
    assert_eq!(c.verdict, "DROPPED");
    assert_eq!(
        c.summary,
        "POLICY_DENIED; default deny: default/deny-all selects this pod; service default/web; TCP Flags: SYN"
    );
    assert!(!c.source.contains("ID:"), "no identity column in Hubble's table: {}", c.source);
    let c = compact::columns(&directory().trace(&client_to_web()));
    assert_eq!(
        (c.source.as_str(), c.destination.as_str(), c.kind.as_str(), c.verdict, c.summary.as_str()),
        ("default/client:40000", "default/web-b:8080", "to-stack", "FORWARDED", "service default/web; TCP Flags: SYN")
    );
}

#[test]
fn a_pods_workload_is_on_its_flows() {
    let mut p = pod("default", "client", "10.244.1.3", "node-1", "client");
    let w = crate::flow::Workload { name: "client".into(), kind: "Deployment".into() };
    p.workload = Some(w.clone());
    let d = enrich::Directory::new("node-1", &[p], &[], |_| Some(1001), &[]);
    assert_eq!(d.trace(&client_to_web()).source.workload, Some(w));
}

/// A renewed directory names every pod as a fresh one would: entries of unchanged pods are
/// kept, a changed pod (a new translation) or a changed identity is named anew.
#[test]
fn a_renewed_directory_names_pods_as_a_new_one_would() {
    use std::sync::Arc;
    let a = Arc::new(pod("default", "a", "10.244.1.2", "node-1", "a"));
    let b = Arc::new(pod("default", "b", "10.244.1.3", "node-1", "b"));
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().expect("ip");
    let first =
        enrich::Directory::renew(&Default::default(), "node-1", &[a.clone(), b.clone()], &[], |_| Some(300), &[]);
    let mut b2 = (*b).clone();
    b2.labels.insert("tier".into(), "db".into());
    let pods = [a.clone(), Arc::new(b2)];
    let id = |i: std::net::Ipv4Addr| Some(if i == ip("10.244.1.2") { 301 } else { 300 });
    let renewed = enrich::Directory::renew(&first, "node-1", &pods, &[], id, &[]);
    let fresh = enrich::Directory::new("node-1", pods.iter().map(|p| &**p), &[], id, &[]);
    for addr in ["10.244.1.2", "10.244.1.3", "10.244.1.9"] {
        assert_eq!(renewed.endpoint(ip(addr)), fresh.endpoint(ip(addr)), "{addr}");
    }
    assert_eq!(renewed.endpoint(ip("10.244.1.2")).identity, 301, "a new identity is not kept from before");
    assert!(renewed.endpoint(ip("10.244.1.3")).labels.contains(&"k8s:tier=db".to_string()));
}

fn http_exchange(method: &str, path: &str, code: u16, denied: bool) -> l7::ObservedHttp {
    l7::ObservedHttp {
        time_ns: 1_000,
        ingress: true,
        client: (Ipv4Addr::new(10, 244, 2, 2), 40000),
        server: (Ipv4Addr::new(10, 244, 1, 2), 80),
        method: method.into(),
        url: format!("http://10.244.1.2{path}?q=1"),
        protocol: "HTTP/1.1".into(),
        code,
        latency_ns: 2_000_000,
        denied_by: denied.then(|| vec!["SluiceNetworkPolicy x/echo-l7".into()]),
        allowed_by: if denied { vec![] } else { vec!["SluiceNetworkPolicy x/echo-l7".into()] },
        request_headers: vec![("x-team".into(), "blue".into())],
        response_headers: vec![("content-type".into(), "text/plain".into())],
    }
}

#[test]
fn an_http_exchange_is_a_request_and_a_response_flow_and_a_refusal_one_dropped_request() {
    let dir = enrich::Directory::new("node-1", &[], &[], |_| None, &[]);
    let ok = dir.http(&http_exchange("GET", "/public", 200, false));
    assert_eq!(ok.len(), 2);
    let (req, resp) = (&ok[0], &ok[1]);
    assert_eq!((req.event, req.verdict, req.flow_type()), (EventKind::L7, Verdict::Forwarded, 2));
    // Each flow carries its own message's recorded headers.
    let headers = |f: &Flow| f.l7.as_ref().map(|l| l.http.headers.clone()).unwrap_or_default();
    assert_eq!(headers(req), vec![("x-team".to_string(), "blue".to_string())]);
    assert_eq!(headers(resp), vec![("content-type".to_string(), "text/plain".to_string())]);
    assert_eq!(req.l7.as_ref().map(|l| (l.r#type, l.http.code)), Some((l7::L7Type::Request, 0)));
    assert_eq!(
        resp.l7.as_ref().map(|l| (l.r#type, l.http.code, l.latency_ns)),
        Some((l7::L7Type::Response, 200, 2_000_000))
    );
    assert_eq!((resp.source_ip, resp.is_reply, resp.time_ns), (Ipv4Addr::new(10, 244, 1, 2), Some(true), 2_001_000));
    let line = compact::line("t", resp);
    assert!(line.contains("http-response FORWARDED (HTTP/1.1 200 2ms (GET http://10.244.1.2/public?q=1))"), "{line}");
    let refused = dir.http(&http_exchange("POST", "/public", 403, true));
    assert_eq!(refused.len(), 1, "nothing was forwarded: no response flow");
    assert_eq!((refused[0].verdict, refused[0].drop_reason), (Verdict::Dropped, Some(DropReason::PolicyDenied)));
    let line = compact::line("t", &refused[0]);
    assert!(
        line.contains("http-request DROPPED") && line.contains("no HTTP rule of SluiceNetworkPolicy x/echo-l7"),
        "{line}"
    );
}

#[test]
fn http_filters_match_method_path_and_status_of_l7_flows_only() {
    let dir = enrich::Directory::new("node-1", &[], &[], |_| None, &[]);
    let mut flows = dir.http(&http_exchange("GET", "/api/v1", 503, false));
    flows.extend(dir.http(&http_exchange("POST", "/public", 403, true)));
    flows.push(flow(1, Verdict::Forwarded));
    let pick = |f: FlowFilter| -> Vec<usize> {
        let s = FilterSet::compile(&[f], &[]).expect("valid");
        flows.iter().enumerate().filter(|(_, x)| s.admits(x)).map(|(i, _)| i).collect()
    };
    assert_eq!(pick(FlowFilter { http_status_code: vec!["5+".into()], ..Default::default() }), vec![1]);
    assert_eq!(pick(FlowFilter { http_status_code: vec!["503".into()], ..Default::default() }), vec![1]);
    assert_eq!(pick(FlowFilter { http_method: vec!["post".into()], ..Default::default() }), vec![2]);
    assert_eq!(
        pick(FlowFilter { http_path: vec!["^/api/".into()], ..Default::default() }),
        vec![0, 1],
        "the query is not part of the path"
    );
    for (field, bad) in [("http_status_code", "6+"), ("http_status_code", "abc"), ("http_path", "(")] {
        let f = match field {
            "http_path" => FlowFilter { http_path: vec![bad.into()], ..Default::default() },
            _ => FlowFilter { http_status_code: vec![bad.into()], ..Default::default() },
        };
        let e = FilterSet::compile(&[f], &[]).expect_err("refused");
        assert_eq!((e.field, e.value.as_str()), (field, bad));
    }
}

#[test]
fn a_node_port_connection_names_its_service_and_a_socket_translation_is_a_trace_sock_flow() {
    let mut svc = crate::testing::ServiceBuilder::new("default", "web")
        .cluster_ip("10.96.0.10", 80)
        .backend(crate::testing::backend("10.244.2.2", 8080, "node-2"))
        .build();
    svc.frontends.push(crate::service::Frontend {
        kind: crate::service::FrontendKind::NodePort,
        ip: None,
        port: 30080,
        protocol: crate::service::Protocol::Tcp,
        port_name: String::new(),
        target_port: 8080,
    });
    let pods = [pod("default", "web-b", "10.244.2.2", "node-2", "web")];
    let nodes = [(Ipv4Addr::new(198, 51, 100, 11), true), (Ipv4Addr::new(198, 51, 100, 12), false)];
    let d = enrich::Directory::new("node-1", &pods, &[svc], |_| Some(2002), &nodes);
    let mut o = enrich::Observed {
        time_ns: 1,
        proto: 6,
        src: Ipv4Addr::new(198, 51, 100, 201),
        sport: 50000,
        dst: Ipv4Addr::new(198, 51, 100, 11),
        dport: 30080,
        translated_to: Some((Ipv4Addr::new(10, 244, 2, 2), 8080)),
        observation: ObservationPoint::FromNetwork,
    };
    let web = Some(ServiceRef { namespace: "default".into(), name: "web".into() });
    assert_eq!(d.trace(&o).destination_service, web, "a NodePort on this node's address");
    o.dst = Ipv4Addr::new(198, 51, 100, 12);
    assert_eq!(d.trace(&o).destination_service, web, "and on another node's");
    o.dst = Ipv4Addr::new(203, 0, 113, 9);
    assert_eq!(d.trace(&o).destination_service, None, "the port on an address no node has is no NodePort");

    let f = d.sock_translation(7, 6, (Ipv4Addr::new(10, 96, 0, 10), 80), (Ipv4Addr::new(10, 244, 2, 2), 8080), 42);
    assert_eq!((f.event, f.verdict, f.flow_type(), f.sub_type()), (EventKind::TraceSock, Verdict::Translated, 3, 0));
    assert_eq!((f.source.identity, f.source_ip), (1, Ipv4Addr::UNSPECIFIED), "the host, not bound yet");
    assert_eq!((f.destination.pod_name.as_str(), f.destination_service.clone()), ("web-b", web));
    assert_eq!(f.sock.map(|x| (x.point as i32, x.socket_cookie)), Some((2, 42)));
    assert_eq!(
        compact::line("t", &f),
        "t: host (host) -> default/web-b:8080 (ID:2002) (service default/web) post-xlate-fwd TRANSLATED"
    );
    assert_eq!(compact::columns(&f).kind, "post-xlate-fwd");
}

#[test]
fn a_service_drop_names_the_service_and_its_reason() {
    let d = directory();
    let p = drop::DroppedPacket {
        proto: 6,
        src: Ipv4Addr::new(10, 244, 1, 3),
        sport: 40000,
        dst: Ipv4Addr::new(10, 96, 0, 10),
        dport: 80,
        tcp_flags: 0x02,
    };
    let f = drop::service_drop_flow(&d, &p, DropReason::ServiceBackendNotFound, 1);
    assert_eq!((f.verdict, f.event, f.sub_type()), (Verdict::Dropped, EventKind::Drop, 158));
    assert_eq!((f.direction, f.source.pod_name.as_str()), (TrafficDirection::Egress, "client"));
    assert_eq!(f.destination_service, Some(ServiceRef { namespace: "default".into(), name: "web".into() }));
    assert_eq!(
        compact::line("t", &f),
        "t: default/client:40000 (ID:1001) -> 10.96.0.10:80 (world) (service default/web) DROPPED (SERVICE_BACKEND_NOT_FOUND) (TCP Flags: SYN)"
    );
    let outside = drop::DroppedPacket { src: Ipv4Addr::new(198, 51, 100, 192), ..p };
    let f = drop::service_drop_flow(&d, &outside, DropReason::DeniedByLbSrcRangeCheck, 1);
    assert_eq!((f.direction, f.sub_type()), (TrafficDirection::Ingress, 177), "coming in to the Service");
}
