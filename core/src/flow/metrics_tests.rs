use super::*;
use crate::flow::tests::flow;
use crate::flow::{DropReason, TcpFlags, Workload};

fn spec(s: &str) -> MetricSpec {
    parse(&[s.to_string()]).expect("valid").remove(0)
}

fn labels(s: &Sample) -> Vec<(&str, &str)> {
    s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn parses_hubbles_enabled_strings_and_prints_them_back() {
    let specs = parse(&[
        "flow".into(),
        "drop:sourceContext=namespace;destinationContext=pod|ip".into(),
        "port-distribution".into(),
    ])
    .expect("valid");
    assert_eq!(specs.len(), 3);
    assert_eq!(specs[1].source, vec![Context::Namespace]);
    assert_eq!(specs[1].destination, vec![Context::Pod, Context::Ip]);
    assert_eq!(specs[1].to_string(), "drop:sourceContext=namespace;destinationContext=pod|ip");
    assert_eq!(specs[1].label_names(), vec!["reason", "protocol", "source", "destination"]);
}

#[test]
fn bad_entries_name_the_index_the_value_and_what_is_accepted() {
    let e = parse(&["flow".into(), "dns".into()]).expect_err("unknown");
    assert_eq!(e, MetricsSpecError::UnknownMetric { index: 1, name: "dns".into() });
    assert!(e.to_string().contains("metrics.enabled[1]") && e.to_string().contains("port-distribution"));
    let e = parse(&["flow:labelsContext=source_ip".into()]).expect_err("invalid");
    assert!(matches!(e, MetricsSpecError::UnknownOption { ref option, .. } if option == "labelsContext"));
    let e = parse(&["flow:sourceContext=pod|galaxy".into()]).expect_err("invalid");
    assert!(e.to_string().contains("\"pod|galaxy\"") && e.to_string().contains("workload-name"), "{e}");
    let e = parse(&["tcp".into(), "tcp".into()]).expect_err("invalid");
    assert_eq!(e, MetricsSpecError::Duplicate { index: 1, name: "tcp".into(), first: 0 });
}

#[test]
fn flow_metric_uses_hubbles_type_subtype_and_verdict_names() {
    let s = spec("flow");
    let f = flow(1, Verdict::Forwarded);
    let out = s.samples(&f);
    assert_eq!(
        labels(&out[0]),
        vec![("protocol", "TCP"), ("type", "Trace"), ("subtype", "to-endpoint"), ("verdict", "FORWARDED")]
    );
    let d = flow(2, Verdict::Dropped);
    assert_eq!(
        labels(&s.samples(&d)[0]),
        vec![("protocol", "TCP"), ("type", "Drop"), ("subtype", ""), ("verdict", "DROPPED")]
    );
}

#[test]
fn drop_counts_only_drops_with_the_reason_name() {
    let s = spec("drop");
    assert!(s.samples(&flow(1, Verdict::Forwarded)).is_empty());
    let mut d = flow(2, Verdict::Dropped);
    assert_eq!(labels(&s.samples(&d)[0]), vec![("reason", "POLICY_DENIED"), ("protocol", "TCP")]);
    d.drop_reason = Some(DropReason::PolicyDeny);
    assert_eq!(s.samples(&d)[0].labels[0].1, "POLICY_DENY");
}

#[test]
fn tcp_flags_counts_forwarded_syn_synack_fin_rst() {
    let s = spec("tcp");
    let mut f = flow(1, Verdict::Forwarded);
    assert_eq!(labels(&s.samples(&f)[0]), vec![("flag", "SYN"), ("family", "IPv4")]);
    f.l4 = Some(L4::Tcp { source_port: 1, destination_port: 2, flags: TcpFlags::from_byte(0x12) });
    assert_eq!(s.samples(&f)[0].labels[0].1, "SYN-ACK");
    f.l4 = Some(L4::Tcp { source_port: 1, destination_port: 2, flags: TcpFlags::from_byte(0x05) });
    let flags: Vec<_> = s.samples(&f).iter().map(|x| x.labels[0].1.clone()).collect();
    assert_eq!(flags, vec!["FIN", "RST"]);
    assert!(s.samples(&flow(2, Verdict::Dropped)).is_empty());
}

#[test]
fn port_distribution_skips_replies_and_drops() {
    let s = spec("port-distribution");
    let mut f = flow(1, Verdict::Forwarded);
    assert_eq!(labels(&s.samples(&f)[0]), vec![("protocol", "TCP"), ("port", "80")]);
    f.is_reply = Some(true);
    assert!(s.samples(&f).is_empty());
    assert!(s.samples(&flow(2, Verdict::Dropped)).is_empty());
}

#[test]
fn icmp_names_the_type() {
    let s = spec("icmp");
    let mut f = flow(1, Verdict::Forwarded);
    assert!(s.samples(&f).is_empty());
    f.l4 = Some(L4::Icmpv4 { r#type: 8, code: 0 });
    assert_eq!(labels(&s.samples(&f)[0]), vec![("family", "IPv4"), ("type", "EchoRequest")]);
    f.l4 = Some(L4::Icmpv4 { r#type: 3, code: 3 });
    assert_eq!(s.samples(&f)[0].labels[1].1, "DestinationUnreachable(Port)");
}

#[test]
fn policy_counts_policy_verdict_events_only() {
    let s = spec("policy");
    assert!(s.samples(&flow(1, Verdict::Forwarded)).is_empty());
    let mut f = flow(1, Verdict::Dropped);
    f.event = EventKind::PolicyVerdict;
    f.policy.denied_by = vec!["default/deny-all".into()];
    assert_eq!(labels(&s.samples(&f)[0]), vec![("direction", "ingress"), ("match", "l3-l4"), ("action", "dropped")]);
}

#[test]
fn context_alternatives_take_the_first_that_says_something() {
    let s = spec("flow:sourceContext=workload|ip;destinationContext=pod");
    let mut f = flow(1, Verdict::Forwarded);
    let out = &s.samples(&f)[0];
    assert_eq!(out.labels[4], ("source", "10.244.1.3".to_string()));
    assert_eq!(out.labels[5], ("destination", "default/web-1".to_string()));
    f.source.workload = Some(Workload { name: "client".into(), kind: "Deployment".into() });
    assert_eq!(s.samples(&f)[0].labels[4].1, "default/client");
    // A world endpoint has no pod: its destination label is empty, not made up.
    f.destination = Default::default();
    f.destination.identity = 2;
    assert_eq!(s.samples(&f)[0].labels[5].1, "");
    let r = spec("flow:destinationContext=reserved-identity;sourceContext=app");
    let out = &r.samples(&f)[0];
    assert_eq!(out.labels[4], ("source", "client".to_string()));
    assert_eq!(out.labels[5], ("destination", "reserved:world".to_string()));
}

#[test]
fn http_counts_requests_and_responses_with_their_duration_by_reporter() {
    let spec = spec("http:destinationContext=pod");
    assert_eq!(spec.label_names(), vec!["method", "protocol", "reporter", "destination"]);
    let dir = crate::flow::enrich::Directory::new("node-1", &[], &[], |_| None, &[]);
    let o = crate::flow::l7::ObservedHttp {
        time_ns: 1,
        ingress: true,
        client: (std::net::Ipv4Addr::new(10, 244, 2, 2), 40000),
        server: (std::net::Ipv4Addr::new(10, 244, 1, 2), 80),
        method: "GET".into(),
        url: "http://10.244.1.2/public".into(),
        protocol: "HTTP/1.1".into(),
        code: 200,
        latency_ns: 30_000_000,
        denied_by: None,
        allowed_by: vec![],
        request_headers: vec![],
        response_headers: vec![],
    };
    let flows = dir.http(&o);
    let req = spec.samples(&flows[0]);
    assert_eq!(labels(&req[0])[..3], [("method", "GET"), ("protocol", "HTTP/1.1"), ("reporter", "server")]);
    assert!(spec.samples(&flows[1]).is_empty(), "a response is not a request");
    let r = spec.http_response(&flows[1]).expect("response");
    assert_eq!(r.responses[..3], [("method", "GET".into()), ("status", "200".into()), ("reporter", "server".into())]);
    assert!((r.seconds - 0.03).abs() < 1e-9);
    assert!(spec.http_response(&flows[0]).is_none());
    assert!(spec.samples(&flow(1, Verdict::Forwarded)).is_empty(), "L3/L4 flows count nothing here");
}
