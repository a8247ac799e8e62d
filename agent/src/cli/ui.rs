//! `sluice ui`: the service map in a browser. A small HTTP server (only on the address given)
//! serving one page and two JSON endpoints computed from the Observer's recent flows (a node's
//! socket or TCP Observer, or `sluice relay` for the cluster): `/api/map` (core's service map)
//! and `/api/flows` (the flow table). The page polls them every second.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sluice_core::flow::{Flow, Verdict};
use sluice_observer::pb::observer::GetFlowsRequest;
use sluice_observer::pb::observer::get_flows_response::ResponseTypes;
use sluice_observer::pb::observer::observer_client::ObserverClient;
use tokio_stream::StreamExt;

const PAGE: &str = include_str!("ui_page.html");

#[derive(Debug, Clone, clap::Args)]
pub struct UiArgs {
    /// Where to serve the page, e.g. 127.0.0.1:12000 (nothing listens anywhere else).
    #[arg(long)]
    pub listen_address: SocketAddr,
    /// The Observer to read: a unix socket path (default: this node's hubble.sock) or HOST:PORT
    /// of a node (4244) or of `sluice relay` (4245) for the whole cluster.
    #[arg(long)]
    pub server: Option<String>,
    /// How many recent flows the map and the table are computed from.
    #[arg(long, default_value_t = 2000)]
    pub flows: u64,
}

struct Ctx {
    channel: tonic::transport::Channel,
    flows: u64,
}

#[derive(Debug, Default, Deserialize)]
struct Params {
    namespace: Option<String>,
    verdict: Option<String>,
    q: Option<String>,
}

#[derive(Serialize)]
struct Row {
    time: String,
    node: String,
    source: String,
    destination: String,
    service: String,
    port: u16,
    protocol: String,
    verdict: String,
    policy: String,
    /// The map edge(s) this flow is on, `from|to|port`.
    edges: Vec<String>,
}

fn bad(e: impl std::fmt::Display) -> Response {
    let msg = format!(
        "reading flows from the Observer: {e} (is it running? a node needs flows on, see `sluice status`; `sluice ui --server` picks a socket, a node's HOST:4244 or the relay's HOST:4245)"
    );
    (axum::http::StatusCode::BAD_GATEWAY, msg).into_response()
}

async fn recent(ctx: &Ctx) -> Result<Vec<Flow>, tonic::Status> {
    let mut c = ObserverClient::new(ctx.channel.clone());
    let mut s = c.get_flows(GetFlowsRequest { number: ctx.flows, ..Default::default() }).await?.into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.next().await {
        if let Some(ResponseTypes::Flow(f)) = r?.response_types
            && let Some(f) = sluice_observer::convert::flow_back(&f)
        {
            out.push(f);
        }
    }
    Ok(out)
}

fn label(ep: &sluice_core::flow::Endpoint, ip: std::net::Ipv4Addr) -> String {
    if ep.pod_name.is_empty() {
        match sluice_core::policy::Identity(ep.identity).reserved_name() {
            Some(n) => format!("{ip} ({n})"),
            None => ip.to_string(),
        }
    } else {
        format!("{}/{}", ep.namespace, ep.pod_name)
    }
}

fn row(f: &Flow) -> Row {
    Row {
        time: super::observe_time::rfc3339(Some(&sluice_observer::convert::timestamp(f.time_ns))),
        node: f.node_name.clone(),
        source: label(&f.source, f.source_ip),
        destination: label(&f.destination, f.destination_ip),
        service: f.destination_service.as_ref().map(|s| format!("{}/{}", s.namespace, s.name)).unwrap_or_default(),
        port: f.l4.and_then(|l| l.ports()).map_or(0, |p| p.1),
        protocol: f.l4.map_or("IP", |l| l.protocol()).to_string(),
        verdict: if f.verdict == Verdict::Dropped { "DROPPED" } else { "FORWARDED" }.into(),
        policy: f.policy.allowed_by.iter().chain(&f.policy.denied_by).cloned().collect::<Vec<_>>().join(", "),
        edges: sluice_core::flow::graph::edge_keys(f),
    }
}

async fn map(State(ctx): State<Arc<Ctx>>, Query(p): Query<Params>) -> Response {
    match recent(&ctx).await {
        Ok(flows) => {
            axum::Json(sluice_core::flow::graph::build(&flows, p.namespace.as_deref().filter(|n| !n.is_empty())))
                .into_response()
        }
        Err(e) => bad(e.message()),
    }
}

async fn flows(State(ctx): State<Arc<Ctx>>, Query(p): Query<Params>) -> Response {
    let flows = match recent(&ctx).await {
        Ok(f) => f,
        Err(e) => return bad(e.message()),
    };
    let ns = p.namespace.as_deref().filter(|n| !n.is_empty());
    let q = p.q.as_deref().unwrap_or("").to_lowercase();
    let rows: Vec<Row> = flows
        .iter()
        .rev()
        .filter(|f| ns.is_none_or(|n| f.source.namespace == n || f.destination.namespace == n))
        .map(row)
        .filter(|r| p.verdict.as_deref().is_none_or(|v| v.is_empty() || r.verdict.eq_ignore_ascii_case(v)))
        .filter(|r| {
            q.is_empty()
                || [&r.source, &r.destination, &r.service, &r.policy, &r.node]
                    .iter()
                    .any(|s| s.to_lowercase().contains(&q))
        })
        .take(200)
        .collect();
    axum::Json(rows).into_response()
}

pub fn run(agent_socket: &std::path::Path, a: UiArgs) -> anyhow::Result<()> {
    super::agent::init_logging();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(async move {
        let channel = match a.server.as_deref() {
            Some(s) if !s.starts_with('/') && !s.starts_with("unix://") => {
                tonic::transport::Endpoint::from_shared(format!("http://{}", s.trim_start_matches("http://")))
                    .with_context(|| format!("--server {s:?}: expected a socket path or HOST:PORT"))?
                    .connect_lazy()
            }
            s => sluice_observer::client::unix_lazy(
                s.map(|s| s.trim_start_matches("unix://").into())
                    .unwrap_or_else(|| agent_socket.with_file_name("hubble.sock")),
            ),
        };
        let ctx = Arc::new(Ctx { channel, flows: a.flows });
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { Html(PAGE) }))
            .route("/api/map", axum::routing::get(map))
            .route("/api/flows", axum::routing::get(flows))
            .with_state(ctx);
        let listener = tokio::net::TcpListener::bind(a.listen_address).await.with_context(|| {
            format!("listening on --listen-address {} (an address of this host and a free port)", a.listen_address)
        })?;
        tracing::info!(listen = %a.listen_address, "sluice ui serving the service map");
        axum::serve(listener, app).await.context("ui server")
    })
}
