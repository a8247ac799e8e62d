//! Hubble's flow metrics as Prometheus reads them: the exposition text checked by the real
//! `promtool check metrics` (Debian's prometheus package, installed by `cargo xtask setup`) and
//! counted the way Hubble counts them. No root, no network.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use sluice_core::flow::metrics::parse;
use sluice_core::flow::*;
use sluice_observer::server::Hub;

fn flow(verdict: Verdict, port: u16, flags: u8) -> Flow {
    let ep = |ns: &str, pod: &str, id: u32| Endpoint {
        id,
        identity: id,
        namespace: ns.into(),
        pod_name: pod.into(),
        labels: vec![format!("k8s:app={pod}")],
        workload: None,
    };
    Flow {
        time_ns: 1,
        verdict,
        drop_reason: (verdict == Verdict::Dropped).then_some(DropReason::PolicyDenied),
        event: if verdict == Verdict::Dropped { EventKind::Drop } else { EventKind::Trace },
        observation: (verdict != Verdict::Dropped).then_some(ObservationPoint::ToStack),
        source_ip: Ipv4Addr::new(10, 244, 1, 3),
        destination_ip: Ipv4Addr::new(10, 244, 2, 2),
        l4: Some(L4::Tcp { source_port: 40000, destination_port: port, flags: TcpFlags::from_byte(flags) }),
        source: ep("dev", "client", 300),
        destination: ep("prod", "web", 400),
        node_name: "node-1".into(),
        direction: TrafficDirection::Ingress,
        is_reply: Some(false),
        source_service: None,
        destination_service: None,
        policy: PolicyMatch::default(),
        l7: None,
        sock: None,
    }
}

fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool ran");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn hubble_metrics_count_as_hubble_does_and_pass_promtool() {
    let specs = parse(
        &["flow", "drop:sourceContext=namespace;destinationContext=pod", "tcp", "port-distribution", "icmp", "policy"]
            .map(String::from),
    )
    .expect("valid");
    let hub = Hub::new("node-1", "unix://hubble.sock", 64, specs);
    hub.push([
        flow(Verdict::Forwarded, 80, 0x02),
        flow(Verdict::Forwarded, 80, 0x02),
        flow(Verdict::Dropped, 443, 0x02),
    ]);
    hub.metrics().lost(metrics::LostSource::Kernel, 3);
    let text = hub.metrics().render();
    for want in [
        r#"hubble_flows_processed_total{protocol="TCP",type="Trace",subtype="to-stack",verdict="FORWARDED"} 2"#,
        r#"hubble_flows_processed_total{protocol="TCP",type="Drop",subtype="",verdict="DROPPED"} 1"#,
        r#"hubble_drop_total{reason="POLICY_DENIED",protocol="TCP",source="dev",destination="prod/web"} 1"#,
        r#"hubble_tcp_flags_total{flag="SYN",family="IPv4"} 2"#,
        r#"hubble_port_distribution_total{protocol="TCP",port="80"} 2"#,
        r#"hubble_lost_events_total{source="perf_event_ring_buffer"} 3"#,
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    assert!(!text.contains(r#"port="443""#), "a dropped flow is no port-distribution sample:\n{text}");
    // What curl and promtool get (Prometheus itself asks for OpenMetrics).
    let classic = sluice_observer::metrics::to_classic(&text);
    assert!(classic.contains("# TYPE hubble_drop_total counter") && !classic.contains("# EOF"), "{classic}");
    let (ok, out) = promtool(&classic);
    assert!(ok, "promtool check metrics:\n{out}\n{classic}");
}

#[test]
fn promtool_is_a_real_check() {
    // The same tool refuses a malformed exposition: the check above can fail.
    let (ok, _) = promtool("hubble_flows_processed_total{protocol=\"TCP\" 1\n");
    assert!(!ok);
}
