//! The per-node flow hub and the Observer service over it.
//!
//! The datapath side pushes into the ring under a short lock and never waits for a reader; each
//! `GetFlows` stream runs in its own task with its own cursor, so a slow client only falls behind
//! (and is told how many flows it lost, `lost_events`), never blocks the writer or other clients.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sluice_core::flow::Flow;
use sluice_core::flow::filter::FilterSet;
use sluice_core::flow::ring::{FlowRing, Query};
use tokio::sync::{Notify, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::metrics::FlowMetrics;
use crate::pb::flow::{LostEvent, LostEventSource};
use crate::pb::observer::observer_server::{Observer, ObserverServer};
use crate::pb::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse,
    Namespace, Node, ServerStatusRequest, ServerStatusResponse, get_flows_response,
};
use crate::pb::relay::NodeState;
use sluice_core::flow::metrics::{LostSource, MetricSpec};

/// Flows per stream buffered towards one client before its task waits (and falls behind).
const STREAM_BUFFER: usize = 256;

pub struct Hub {
    ring: Mutex<FlowRing>,
    notify: Notify,
    node_name: String,
    /// Where this node's Observer is reachable (GetNodes' `address`).
    address: String,
    started: Instant,
    metrics: FlowMetrics,
    /// Every node's Observer, for `peer.Peer/Notify` (the agent sets it from its source).
    peers: tokio::sync::watch::Sender<crate::peer::PeerMap>,
}

/// Wall-clock nanoseconds since the epoch (flow and event times).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Hub {
    /// `metrics`: the Hubble metrics to count (`metrics.enabled`, parsed).
    pub fn new(node_name: &str, address: &str, capacity: usize, metrics: Vec<MetricSpec>) -> Arc<Self> {
        Arc::new(Hub {
            ring: Mutex::new(FlowRing::new(capacity)),
            notify: Notify::new(),
            node_name: node_name.into(),
            address: address.into(),
            started: Instant::now(),
            metrics: FlowMetrics::new(metrics),
            peers: tokio::sync::watch::Sender::new(Default::default()),
        })
    }

    pub fn metrics(&self) -> &FlowMetrics {
        &self.metrics
    }

    /// The cluster's nodes and their Observer addresses (streams see only real changes).
    pub fn set_peers(&self, peers: crate::peer::PeerMap) {
        self.peers.send_if_modified(|cur| {
            let changed = *cur != peers;
            *cur = peers;
            changed
        });
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, FlowRing> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record flows and wake the followers.
    pub fn push(&self, flows: impl IntoIterator<Item = Flow>) {
        // Counted before the ring's lock: readers wait for the copy only.
        let flows: Vec<Flow> = flows.into_iter().inspect(|f| self.metrics.observe(f)).collect();
        {
            let mut r = self.ring();
            for f in flows {
                r.push(f);
            }
        }
        self.notify.notify_waiters();
    }

    /// (flows held, capacity, seen, overwritten).
    pub fn counts(&self) -> (usize, usize, u64, u64) {
        let r = self.ring();
        (r.len(), r.capacity(), r.seen(), r.overwritten())
    }

    pub fn service(self: &Arc<Self>) -> ObserverServer<ObserverService> {
        ObserverServer::new(ObserverService { hub: self.clone() })
    }

    /// The Observer and health services, ready to serve on a listener's connections.
    pub async fn router(self: &Arc<Self>) -> tonic::transport::server::Router {
        self.services(tonic::transport::Server::builder()).await
    }

    /// The same services behind TLS (`crate::tls::server`).
    pub async fn router_tls(
        self: &Arc<Self>,
        tls: tonic::transport::ServerTlsConfig,
    ) -> Result<tonic::transport::server::Router, tonic::transport::Error> {
        Ok(self.services(tonic::transport::Server::builder().tls_config(tls)?).await)
    }

    async fn services(self: &Arc<Self>, mut b: tonic::transport::Server) -> tonic::transport::server::Router {
        b.add_service(self.service())
            .add_service(crate::peer::PeerService::server(self.peers.subscribe()))
            .add_service(health().await)
    }
}

/// A `GetFlows` request as the server runs it, or `InvalidArgument` naming the field and value
/// (the relay checks requests the same way before fanning them out).
pub fn check_request(r: &GetFlowsRequest) -> Result<(Query, FilterSet), Status> {
    let bad = |e: convert::RequestError| Status::invalid_argument(e.to_string());
    let q = convert::query(r).map_err(bad)?;
    if r.first && r.follow {
        return Err(Status::invalid_argument(
            "first and follow together: first reads the oldest flows, follow the newest; accepted: one of them",
        ));
    }
    let white = r.whitelist.iter().map(convert::filter).collect::<Result<Vec<_>, _>>().map_err(bad)?;
    let black = r.blacklist.iter().map(convert::filter).collect::<Result<Vec<_>, _>>().map_err(bad)?;
    let filters = FilterSet::compile(&white, &black).map_err(|e| bad(e.into()))?;
    Ok((q, filters))
}

pub struct ObserverService {
    hub: Arc<Hub>,
}

fn response(hub: &Hub, f: &Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: hub.node_name.clone(),
        time: Some(convert::timestamp(f.time_ns)),
        response_types: Some(get_flows_response::ResponseTypes::Flow(convert::flow(f))),
    }
}

fn lost(hub: &Hub, n: u64) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: hub.node_name.clone(),
        time: Some(convert::timestamp(now_ns())),
        response_types: Some(get_flows_response::ResponseTypes::LostEvents(LostEvent {
            source: LostEventSource::HubbleRingBuffer as i32,
            num_events_lost: n,
            cpu: None,
        })),
    }
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

async fn stream_flows(
    hub: Arc<Hub>,
    q: Query,
    filters: FilterSet,
    follow: bool,
    tx: mpsc::Sender<Result<GetFlowsResponse, Status>>,
) {
    let (initial, mut cursor) = {
        let r = hub.ring();
        // number 0 while following: only what comes from now on.
        let initial =
            if follow && q.number.is_none() && q.since_ns.is_none() { Vec::new() } else { r.query(&q, &filters) };
        (initial, r.tail())
    };
    for f in &initial {
        if tx.send(Ok(response(&hub, f))).await.is_err() {
            return;
        }
    }
    if !follow {
        return;
    }
    let live = Query { number: None, first: false, since_ns: None, until_ns: q.until_ns };
    loop {
        let woken = hub.notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let read = hub.ring().read_from(cursor, &filters, &live);
        cursor = read.next;
        if read.lost > 0 {
            hub.metrics.lost(LostSource::HubbleRingBuffer, read.lost);
            if tx.send(Ok(lost(&hub, read.lost))).await.is_err() {
                return;
            }
        }
        for f in &read.flows {
            if tx.send(Ok(response(&hub, f))).await.is_err() {
                return;
            }
        }
        if q.until_ns.is_some_and(|u| now_ns() > u) {
            return;
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = tx.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = FlowStream;

    async fn get_flows(&self, req: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        let r = req.into_inner();
        let (q, filters) = check_request(&r)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(stream_flows(self.hub.clone(), q, filters, r.follow, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        let (len, cap, seen, _) = self.hub.counts();
        Ok(Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: self.hub.node_name.clone(),
                version: concat!("sluice ", env!("CARGO_PKG_VERSION")).into(),
                address: self.hub.address.clone(),
                state: NodeState::NodeConnected as i32,
                tls: None,
                uptime_ns: self.hub.started.elapsed().as_nanos() as u64,
                num_flows: len as u64,
                max_flows: cap as u64,
                seen_flows: seen,
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        _: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let all = self.hub.ring().query(&Query::default(), &FilterSet::default());
        let mut names: Vec<String> = all
            .iter()
            .flat_map(|f| [f.source.namespace.clone(), f.destination.namespace.clone()])
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        Ok(Response::new(GetNamespacesResponse {
            namespaces: names.into_iter().map(|namespace| Namespace { cluster: String::new(), namespace }).collect(),
        }))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        let (len, cap, seen, _) = self.hub.counts();
        Ok(Response::new(ServerStatusResponse {
            num_flows: len as u64,
            max_flows: cap as u64,
            seen_flows: seen,
            uptime_ns: self.hub.started.elapsed().as_nanos() as u64,
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: Vec::new(),
            version: concat!("sluice ", env!("CARGO_PKG_VERSION")).into(),
        }))
    }
}

/// The health service Hubble's CLI checks before anything else, answering SERVING for
/// `hubble.server.Observer`.
pub async fn health() -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status(crate::HEALTH_SERVICE, tonic_health::ServingStatus::Serving).await;
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    service
}
