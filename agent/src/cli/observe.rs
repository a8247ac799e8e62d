//! `sluice observe`: flows from this node's Observer API (Hubble's wire format), printed as
//! `hubble observe` prints them (`observe_print`): one compact line a flow, one
//! `GetFlowsResponse` a line as JSON with proto field names and enum names, a table, or a dict.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};
use sluice_observer::pb::flow as pb;
use sluice_observer::pb::observer::observer_client::ObserverClient;
use sluice_observer::pb::observer::{GetFlowsRequest, GetFlowsResponse, get_flows_response::ResponseTypes};
use tokio_stream::StreamExt;

pub use super::observe_print::Format;
use super::observe_print::Printer;
use super::observe_time::rfc3339;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ObserveArgs {
    /// Where to read flows: a unix socket path (default: hubble.sock beside the agent's
    /// socket) or HOST:PORT of a node's Observer (4244) or of `sluice relay` (4245).
    #[arg(long, env = "SLUICE_HUBBLE_SERVER")]
    pub server: Option<String>,
    /// With --server HOST:PORT: speak TLS, checking the server's certificate against this PEM
    /// CA bundle (a node's `flows.tls`, or the relay's --tls-server-cert-file).
    #[arg(long)]
    pub tls_ca_cert_file: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the HOST of --server).
    #[arg(long, requires = "tls_ca_cert_file")]
    pub tls_server_name: Option<String>,
    /// This client's certificate and key, for servers that require one (mutual TLS).
    #[arg(long, requires_all = ["tls_ca_cert_file", "tls_client_key_file"])]
    pub tls_client_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_client_cert_file")]
    pub tls_client_key_file: Option<PathBuf>,
    /// The last N flows (oldest first); 20 unless --since/--until give a range.
    #[arg(long)]
    pub last: Option<u64>,
    /// Flows from this time on: RFC 3339 (2026-12-05T09:00:00Z) or a duration ago (5m, 2h).
    #[arg(long)]
    pub since: Option<String>,
    /// Flows up to this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// The first N flows in the buffer instead.
    #[arg(long)]
    pub first: Option<u64>,
    /// Every flow in the buffer.
    #[arg(long)]
    pub all: bool,
    /// Keep streaming new flows (after the last N; with --last 0 only new ones).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Source pod: POD-PREFIX, NS/ or NS/POD-PREFIX (repeatable: any of them).
    #[arg(long)]
    pub from_pod: Vec<String>,
    #[arg(long)]
    pub to_pod: Vec<String>,
    #[arg(long)]
    pub from_namespace: Vec<String>,
    #[arg(long)]
    pub to_namespace: Vec<String>,
    /// Source IP or CIDR.
    #[arg(long)]
    pub from_ip: Vec<String>,
    #[arg(long)]
    pub to_ip: Vec<String>,
    /// Source label selector, e.g. app=web.
    #[arg(long)]
    pub from_label: Vec<String>,
    #[arg(long)]
    pub to_label: Vec<String>,
    /// Source security identity (numeric, as `sluice identity list` shows; 2 = world).
    #[arg(long)]
    pub from_identity: Vec<u32>,
    #[arg(long)]
    pub to_identity: Vec<u32>,
    /// Source Service: NS/NAME.
    #[arg(long)]
    pub from_service: Vec<String>,
    /// Destination Service: NS/NAME.
    #[arg(long)]
    pub to_service: Vec<String>,
    /// Source port.
    #[arg(long)]
    pub from_port: Vec<String>,
    /// Destination port.
    #[arg(long)]
    pub to_port: Vec<String>,
    /// Either port, source or destination (as hubble observe's --port).
    #[arg(long)]
    pub port: Vec<String>,
    /// FORWARDED, DROPPED, ... (case-insensitive).
    #[arg(long)]
    pub verdict: Vec<String>,
    /// tcp, udp, icmpv4.
    #[arg(long)]
    pub protocol: Vec<String>,
    /// trace, drop, policy-verdict, l7.
    #[arg(long = "type")]
    pub kind: Vec<String>,
    /// HTTP request method of L7 flows (GET, POST, ...).
    #[arg(long)]
    pub http_method: Vec<String>,
    /// HTTP path of L7 flows: a regular expression (`^/api/`).
    #[arg(long)]
    pub http_path: Vec<String>,
    /// HTTP status of L7 responses: a code (403) or a class (5+).
    #[arg(long)]
    pub http_status: Vec<String>,
    /// Negate the next filter, as `hubble observe --not`: `--not --verdict FORWARDED` shows
    /// every flow but forwarded ones. Negated filters form one blacklist filter (a flow is
    /// left out when it matches all of them); repeat --not before each filter to negate.
    #[arg(long = "not")]
    pub not: bool,
    /// The negated filters' flags and values (what `--not` rewrites to; see `rewrite_not`).
    #[arg(long, hide = true, allow_hyphen_values = true)]
    pub negated: Vec<String>,
}

/// Filter flags `--not` may negate (each takes one value).
const FILTER_FLAGS: [&str; 21] = [
    "--from-pod",
    "--to-pod",
    "--from-namespace",
    "--to-namespace",
    "--from-ip",
    "--to-ip",
    "--from-label",
    "--to-label",
    "--from-identity",
    "--to-identity",
    "--from-service",
    "--to-service",
    "--from-port",
    "--to-port",
    "--port",
    "--verdict",
    "--protocol",
    "--type",
    "--http-method",
    "--http-path",
    "--http-status",
];

/// `--not FLAG VALUE` (or `--not FLAG=VALUE`) after `observe` becomes `--negated=FLAG
/// --negated=VALUE`: clap has no "applies to the next flag", so the order is kept here. A
/// `--not` followed by no filter flag is left as it is (`request` refuses it by name).
pub fn rewrite_not(argv: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = argv.into_iter().peekable();
    let mut observing = false;
    while let Some(a) = it.next() {
        if !observing {
            observing = a == "observe";
            out.push(a);
            continue;
        }
        let next_is_filter =
            it.peek().is_some_and(|n| FILTER_FLAGS.iter().any(|f| n == f || n.starts_with(&format!("{f}="))));
        if a != "--not" || !next_is_filter {
            out.push(a);
            continue;
        }
        let flag = it.next().unwrap_or_default();
        let has_value = flag.contains('=');
        out.push(format!("--negated={flag}"));
        if !has_value && let Some(v) = it.next() {
            out.push(format!("--negated={v}"));
        }
    }
    out
}

/// The blacklist filters of the negated flags (a flow is left out when it matches one).
fn negated_filters(a: &ObserveArgs) -> anyhow::Result<Vec<pb::FlowFilter>> {
    #[derive(clap::Parser)]
    #[command(no_binary_name = true)]
    struct Negated {
        #[command(flatten)]
        a: ObserveArgs,
    }
    if a.not {
        anyhow::bail!(
            "--not must come right before a filter flag ({}), e.g. --not --verdict FORWARDED",
            FILTER_FLAGS.join(", ")
        );
    }
    if a.negated.is_empty() {
        return Ok(Vec::new());
    }
    let n = <Negated as clap::Parser>::try_parse_from(&a.negated)
        .map_err(|e| anyhow::anyhow!("--not {}: {}", a.negated.join(" "), e.kind()))?;
    filters(&n.a)
}

/// The filters of the flags: one, or two when `--port` asks for either port (a flow passes
/// either: the source port's copy or the destination port's).
fn filters(a: &ObserveArgs) -> anyhow::Result<Vec<pb::FlowFilter>> {
    let f = filter(a)?;
    if a.port.is_empty() {
        return Ok(if f == pb::FlowFilter::default() { Vec::new() } else { vec![f] });
    }
    let mut to = f.clone();
    to.destination_port.extend(a.port.iter().cloned());
    let mut from = f;
    from.source_port.extend(a.port.iter().cloned());
    Ok(vec![to, from])
}

const VERDICTS: [&str; 7] = ["FORWARDED", "DROPPED", "ERROR", "AUDIT", "REDIRECTED", "TRACED", "TRANSLATED"];

fn filter(a: &ObserveArgs) -> anyhow::Result<pb::FlowFilter> {
    let verdict = a
        .verdict
        .iter()
        .map(|v| {
            VERDICTS
                .iter()
                .position(|n| n.eq_ignore_ascii_case(v))
                .map(|i| i as i32 + 1)
                .with_context(|| format!("--verdict {v:?} is not a verdict; accepted: {}", VERDICTS.join(", ")))
        })
        .collect::<anyhow::Result<_>>()?;
    let event_type = a
        .kind
        .iter()
        .map(|t| {
            sluice_core::flow::filter::event_kind(t)
                .map(|k| pb::EventTypeFilter { r#type: k as i32, match_sub_type: false, sub_type: 0 })
                .with_context(|| {
                    format!("--type {t:?} is not an event type; accepted: trace, drop, policy-verdict, l7")
                })
        })
        .collect::<anyhow::Result<_>>()?;
    let ns = |v: &[String]| v.iter().map(|n| format!("{n}/")).collect::<Vec<_>>();
    Ok(pb::FlowFilter {
        source_pod: [a.from_pod.clone(), ns(&a.from_namespace)].concat(),
        destination_pod: [a.to_pod.clone(), ns(&a.to_namespace)].concat(),
        source_ip: a.from_ip.clone(),
        destination_ip: a.to_ip.clone(),
        source_label: a.from_label.clone(),
        destination_label: a.to_label.clone(),
        source_identity: a.from_identity.clone(),
        destination_identity: a.to_identity.clone(),
        source_service: a.from_service.clone(),
        destination_service: a.to_service.clone(),
        source_port: a.from_port.clone(),
        destination_port: a.to_port.clone(),
        verdict,
        protocol: a.protocol.clone(),
        event_type,
        http_method: a.http_method.clone(),
        http_path: a.http_path.clone(),
        http_status_code: a.http_status.clone(),
        ..Default::default()
    })
}

fn endpoint(e: Option<&pb::Endpoint>) -> Value {
    e.map(|e| json!({"ID": e.id, "identity": e.identity, "namespace": e.namespace, "labels": e.labels, "pod_name": e.pod_name}))
        .unwrap_or(Value::Null)
}

/// One response as `hubble observe -o json` prints it.
pub fn json_line(r: &GetFlowsResponse) -> Value {
    let mut out = json!({"node_name": r.node_name, "time": rfc3339(r.time.as_ref())});
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => {
            let l4 = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
                Some(pb::layer4::Protocol::Tcp(t)) => {
                    let flags: serde_json::Map<String, Value> = t
                        .flags
                        .as_ref()
                        .map(|x| {
                            [
                                ("FIN", x.fin),
                                ("SYN", x.syn),
                                ("RST", x.rst),
                                ("PSH", x.psh),
                                ("ACK", x.ack),
                                ("URG", x.urg),
                            ]
                            .into_iter()
                            .filter(|(_, set)| *set)
                            .map(|(n, _)| (n.to_string(), Value::Bool(true)))
                            .collect()
                        })
                        .unwrap_or_default();
                    json!({"TCP": {"source_port": t.source_port, "destination_port": t.destination_port, "flags": flags}})
                }
                Some(pb::layer4::Protocol::Udp(u)) => {
                    json!({"UDP": {"source_port": u.source_port, "destination_port": u.destination_port}})
                }
                Some(pb::layer4::Protocol::IcmPv4(i)) => json!({"ICMPv4": {"type": i.r#type, "code": i.code}}),
                None => Value::Null,
            };
            let name = |n: Option<&str>| n.unwrap_or("").to_string();
            let mut flow = json!({
                "time": rfc3339(f.time.as_ref()),
                "verdict": name(pb::Verdict::try_from(f.verdict).ok().map(|v| v.as_str_name())),
                "IP": f.ip.as_ref().map(|ip| json!({"source": ip.source, "destination": ip.destination, "ipVersion": "IPv4"})),
                "l4": l4,
                "source": endpoint(f.source.as_ref()),
                "destination": endpoint(f.destination.as_ref()),
                "Type": name(pb::FlowType::try_from(f.r#type).ok().map(|v| v.as_str_name())),
                "node_name": f.node_name,
                "event_type": f.event_type.as_ref().map(|e| json!({"type": e.r#type, "sub_type": e.sub_type})),
                "traffic_direction": name(pb::TrafficDirection::try_from(f.traffic_direction).ok().map(|v| v.as_str_name())),
                "is_reply": f.is_reply,
            });
            if f.trace_observation_point != 0 {
                flow["trace_observation_point"] = json!(name(
                    pb::TraceObservationPoint::try_from(f.trace_observation_point).ok().map(|v| v.as_str_name())
                ));
            }
            if f.sock_xlate_point != 0 {
                flow["sock_xlate_point"] =
                    json!(name(pb::SocketTranslationPoint::try_from(f.sock_xlate_point).ok().map(|v| v.as_str_name())));
                // Hubble's JSON writes 64-bit integers as strings (protobuf's JSON mapping).
                flow["socket_cookie"] = json!(f.socket_cookie.to_string());
            }
            if f.drop_reason_desc != 0 {
                flow["drop_reason_desc"] =
                    json!(name(pb::DropReason::try_from(f.drop_reason_desc).ok().map(|v| v.as_str_name())));
            }
            if let Some(s) = &f.destination_service {
                flow["destination_service"] = json!({"name": s.name, "namespace": s.namespace});
            }
            if let Some(l7) = &f.l7 {
                let mut v = json!({
                    "type": pb::L7FlowType::try_from(l7.r#type).map(|t| t.as_str_name()).unwrap_or(""),
                    "latency_ns": l7.latency_ns,
                });
                if let Some(pb::layer7::Record::Http(h)) = &l7.record {
                    let headers: Vec<Value> =
                        h.headers.iter().map(|x| json!({"key": x.key, "value": x.value})).collect();
                    v["http"] = json!({"code": h.code, "method": h.method, "url": h.url, "protocol": h.protocol, "headers": headers});
                }
                flow["l7"] = v;
            }
            // The policies that decided it, as Hubble prints them.
            for (key, list) in [
                ("ingress_allowed_by", &f.ingress_allowed_by),
                ("egress_allowed_by", &f.egress_allowed_by),
                ("ingress_denied_by", &f.ingress_denied_by),
                ("egress_denied_by", &f.egress_denied_by),
            ] {
                if !list.is_empty() {
                    flow[key] = list
                        .iter()
                        .map(|p| json!({"name": p.name, "namespace": p.namespace, "labels": p.labels, "kind": p.kind}))
                        .collect();
                }
            }
            out["flow"] = flow;
        }
        Some(ResponseTypes::LostEvents(l)) => {
            out["lost_events"] = json!({
                "source": pb::LostEventSource::try_from(l.source).map(|s| s.as_str_name()).unwrap_or(""),
                "num_events_lost": l.num_events_lost
            });
        }
        Some(ResponseTypes::NodeStatus(n)) => {
            out["node_status"] = json!({
                "state_change": sluice_observer::pb::relay::NodeState::try_from(n.state_change).map(|s| s.as_str_name()).unwrap_or(""),
                "node_names": n.node_names,
                "message": n.message,
            });
        }
        _ => {}
    }
    out
}

/// Where `--server` points.
enum Server {
    Unix(PathBuf),
    Tcp(String),
}

fn server(agent_socket: &Path, s: Option<&str>) -> Server {
    match s {
        None => Server::Unix(agent_socket.with_file_name("hubble.sock")),
        Some(s) if s.starts_with('/') || s.starts_with("unix://") => {
            Server::Unix(s.trim_start_matches("unix://").into())
        }
        Some(s) => Server::Tcp(s.trim_start_matches("http://").to_string()),
    }
}

pub fn request(a: &ObserveArgs, now_s: i64) -> anyhow::Result<GetFlowsRequest> {
    let since = a.since.as_deref().map(|s| super::observe_time::parse("--since", s, now_s)).transpose()?;
    let until = a.until.as_deref().map(|s| super::observe_time::parse("--until", s, now_s)).transpose()?;
    let ranged = since.is_some() || until.is_some();
    let number = match (a.all, a.first, a.last) {
        (true, _, _) => u64::MAX,
        (_, Some(n), _) | (_, None, Some(n)) => n,
        // A range without a count: everything in it (as hubble observe does).
        (_, None, None) if ranged => 0,
        (_, None, None) => 20,
    };
    Ok(GetFlowsRequest {
        number,
        first: a.first.is_some(),
        follow: a.follow,
        since,
        until,
        whitelist: filters(a)?,
        blacklist: negated_filters(a)?,
        ..Default::default()
    })
}

pub fn run(agent_socket: &Path, a: &ObserveArgs, format: Format) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let req = request(a, now)?;
    let server = server(agent_socket, a.server.as_deref());
    super::block_on(async move {
        let channel = match &server {
            Server::Unix(socket) => sluice_observer::client::connect_unix(socket.clone()).await.with_context(|| {
                format!(
                    "cannot reach the Observer at {} (is the agent running with flows on? `sluice status` shows the Flows line; --server picks another socket or HOST:PORT)",
                    socket.display()
                )
            })?,
            Server::Tcp(addr) => {
                let tls = a.tls_ca_cert_file.as_ref().map(|ca| sluice_observer::tls::ClientFiles {
                    ca_file: ca.clone(),
                    server_name: a.tls_server_name.clone(),
                    cert_file: a.tls_client_cert_file.clone(),
                    key_file: a.tls_client_key_file.clone(),
                });
                let e = sluice_observer::tls::endpoint(addr, tls.as_ref()).map_err(|e| {
                    anyhow::anyhow!("--server {addr:?}{}: {e}", if tls.is_some() { " with --tls-ca-cert-file" } else { "" })
                })?;
                e.connect_timeout(std::time::Duration::from_secs(5)).connect().await.with_context(|| {
                    format!(
                        "cannot reach the Observer at {addr} (a node's flows.listen_address, or sluice relay's --listen-address; {})",
                        if tls.is_some() {
                            "TLS: is the certificate signed by --tls-ca-cert-file and issued for the name? --tls-server-name picks another"
                        } else {
                            "a server with TLS needs --tls-ca-cert-file"
                        }
                    )
                })?
            }
        };
        // A plaintext client meets a TLS server only at the first call (the TCP connect
        // succeeded): say what it most likely is.
        let plain_tcp = matches!(server, Server::Tcp(_)) && a.tls_ca_cert_file.is_none();
        let mut stream = ObserverClient::new(channel)
            .get_flows(req)
            .await
            .map_err(|s| {
                if plain_tcp && matches!(s.code(), tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Internal) {
                    anyhow::anyhow!(
                        "{} (if the server speaks TLS, its flows.tls or the relay's --tls-server-cert-file: give --tls-ca-cert-file)",
                        s.message()
                    )
                } else {
                    anyhow::anyhow!("{}", s.message())
                }
            })?
            .into_inner();
        let mut printer = Printer::new(format, a.follow);
        // A reader that went away (`| head`) ends the stream quietly, as hubble observe does.
        let mut out = std::io::stdout().lock();
        let write = |out: &mut std::io::StdoutLock, s: String| -> anyhow::Result<bool> {
            use std::io::Write;
            match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
                Err(e) => Err(e.into()),
            }
        };
        while let Some(item) = stream.next().await {
            let r = item.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            if !write(&mut out, printer.push(&r))? {
                return anyhow::Ok(());
            }
        }
        write(&mut out, printer.finish())?;
        anyhow::Ok(())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ranges_as_hubble_observe() {
        let req = |a: ObserveArgs| request(&a, 1000).expect("valid");
        assert_eq!(req(ObserveArgs::default()).number, 20);
        assert_eq!(req(ObserveArgs { last: Some(3), ..Default::default() }).number, 3);
        let ranged = req(ObserveArgs { since: Some("10s".into()), ..Default::default() });
        assert_eq!((ranged.number, ranged.since.map(|t| t.seconds)), (0, Some(990)));
        let both = req(ObserveArgs { since: Some("10s".into()), last: Some(5), ..Default::default() });
        assert_eq!(both.number, 5);
        let first = req(ObserveArgs { first: Some(2), ..Default::default() });
        assert_eq!((first.number, first.first), (2, true));
    }

    #[test]
    fn bad_flags_name_the_value_and_what_is_accepted() {
        let a = ObserveArgs { verdict: vec!["ALLOWED".into()], ..Default::default() };
        let e = filter(&a).expect_err("bad verdict").to_string();
        assert!(e.contains("ALLOWED") && e.contains("FORWARDED"), "{e}");
        let a = ObserveArgs { kind: vec!["flow".into()], ..Default::default() };
        assert!(filter(&a).expect_err("bad type").to_string().contains("trace, drop"));
        let a = ObserveArgs { since: Some("tomorrow".into()), ..Default::default() };
        assert!(request(&a, 0).expect_err("bad since").to_string().contains("--since \"tomorrow\""));
        let a = ObserveArgs { from_namespace: vec!["x".into()], verdict: vec!["dropped".into()], ..Default::default() };
        let f = filter(&a).expect("ok");
        assert_eq!((f.source_pod, f.verdict), (vec!["x/".to_string()], vec![2]));
        let a = ObserveArgs { to_identity: vec![2, 300], ..Default::default() };
        assert_eq!(filter(&a).expect("ok").destination_identity, vec![2, 300]);
    }

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn ports_and_services_from_and_to_and_either_port() {
        let a = ObserveArgs {
            from_port: vec!["40000".into()],
            to_port: vec!["8080".into()],
            from_service: vec!["default/web".into()],
            ..Default::default()
        };
        let f = filters(&a).expect("ok");
        assert_eq!(f.len(), 1);
        assert_eq!(
            (&f[0].source_port, &f[0].destination_port),
            (&vec!["40000".to_string()], &vec!["8080".to_string()])
        );
        assert_eq!(f[0].source_service, vec!["default/web".to_string()]);
        // --port: either side, as two filters a flow passes by matching one.
        let a = ObserveArgs { port: vec!["53".into()], from_pod: vec!["x/".into()], ..Default::default() };
        let f = filters(&a).expect("ok");
        assert_eq!(f.len(), 2);
        assert_eq!((&f[0].destination_port, f[0].source_port.is_empty()), (&vec!["53".to_string()], true));
        assert_eq!((&f[1].source_port, f[1].destination_port.is_empty()), (&vec!["53".to_string()], true));
        assert!(f.iter().all(|f| f.source_pod == vec!["x/".to_string()]));
    }

    #[test]
    fn not_negates_the_next_filter_only() {
        let a = rewrite_not(argv("sluice observe --last 5 --not --verdict FORWARDED --from-pod x/ --not --to-pod=y/b"));
        assert_eq!(
            a,
            argv(
                "sluice observe --last 5 --negated=--verdict --negated=FORWARDED --from-pod x/ --negated=--to-pod=y/b"
            )
        );
        // Parsed the way the binary parses it: one whitelist, one blacklist.
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: ObserveArgs,
        }
        let t = <T as clap::Parser>::try_parse_from(&a[1..]).expect("parses");
        let req = request(&t.a, 0).expect("valid");
        assert_eq!(req.whitelist.len(), 1);
        assert_eq!(req.whitelist[0].source_pod, vec!["x/".to_string()]);
        assert_eq!(req.blacklist.len(), 1);
        assert_eq!(
            (req.blacklist[0].verdict.clone(), req.blacklist[0].destination_pod.clone()),
            (vec![1], vec!["y/b".to_string()])
        );
        // Before anything that is not a filter, or at the end: refused with the way out.
        for bad in ["sluice observe --not --last 5", "sluice observe --not"] {
            let a = rewrite_not(argv(bad));
            let t = <T as clap::Parser>::try_parse_from(&a[1..]).expect("parses");
            let e = request(&t.a, 0).expect_err("refused").to_string();
            assert!(e.contains("--not must come right before a filter flag"), "{e}");
        }
        // A bad value behind --not is named like any other.
        let a = rewrite_not(argv("sluice observe --not --verdict ALLOWED"));
        let t = <T as clap::Parser>::try_parse_from(&a[1..]).expect("parses");
        assert!(request(&t.a, 0).expect_err("bad verdict").to_string().contains("ALLOWED"));
        // Other commands are left alone.
        assert_eq!(rewrite_not(argv("sluice status --not")), argv("sluice status --not"));
    }
}
