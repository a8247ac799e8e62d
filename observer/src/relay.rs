//! `sluice relay`: one Observer API for the whole cluster. It follows a node's
//! `peer.Peer/Notify` to learn every node's Observer address, and answers each call by asking
//! all nodes at once: `GetFlows` merges their flows (the last N of the cluster, oldest first, or
//! the first N; followed streams are put in time order over a short window, and a node that
//! joins while a stream is followed is followed too), `GetNodes` says which nodes
//! answered (`NODE_CONNECTED`) and which did not (`NODE_UNAVAILABLE`), `ServerStatus` sums them.
//! A node that does not answer never blocks the others: it is named in a `node_status` event.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::pb::observer::observer_client::ObserverClient;
use crate::pb::observer::observer_server::{Observer, ObserverServer};
use crate::pb::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest, GetNodesResponse,
    Namespace, Node, ServerStatusRequest, ServerStatusResponse, get_flows_response::ResponseTypes,
};
use crate::pb::peer::peer_client::PeerClient;
use crate::pb::peer::{ChangeNotification, ChangeNotificationType, NotifyRequest};
use crate::pb::relay::{NodeState, NodeStatusEvent};

/// How long a node may take to answer a call (or start a stream) before it counts as unavailable.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(3);

struct NodeConn {
    address: String,
    channel: Channel,
}

pub struct Relay {
    nodes: RwLock<BTreeMap<String, NodeConn>>,
    /// How to reach nodes over TCP: plaintext (`None`) or TLS checked against these files.
    tls: Option<crate::tls::ClientFiles>,
    /// Bumped on every change of `nodes`: followed streams pick up nodes that join.
    changed: tokio::sync::watch::Sender<u64>,
    started: Instant,
}

/// How long a followed flow may wait for flows of other nodes with an earlier time (Hubble's
/// relay sorts followed streams the same way, with a buffer drained on a timeout).
pub const SORT_WINDOW: Duration = Duration::from_millis(500);
/// At most this many followed flows wait; past it the oldest goes out at once.
pub const SORT_MAX: usize = 1000;

/// A lazily connected channel to a peer: `host:port`, or `unix:///path` (Hubble's form for an
/// Observer on the relay's own node).
fn channel(address: &str, tls: Option<&crate::tls::ClientFiles>) -> Result<Channel, String> {
    if let Some(path) = address.strip_prefix("unix://") {
        return Ok(crate::client::unix_lazy(path.into()));
    }
    tcp_channel(address, tls).map_err(|e| format!("peer address {address:?}: {e}"))
}

/// A lazily connected channel to `HOST:PORT`, with TLS when `tls` is given (the certificate is
/// checked for the host's name unless the files name another).
pub fn tcp_channel(address: &str, tls: Option<&crate::tls::ClientFiles>) -> Result<Channel, String> {
    Ok(crate::tls::endpoint(address, tls)?.connect_timeout(NODE_TIMEOUT).connect_lazy())
}

impl Relay {
    pub fn new() -> Arc<Self> {
        Self::with_tls(None)
    }

    /// A relay that reaches the nodes' TCP Observers over TLS (`tls`), or in plaintext.
    pub fn with_tls(tls: Option<crate::tls::ClientFiles>) -> Arc<Self> {
        Arc::new(Relay {
            nodes: RwLock::default(),
            tls,
            changed: tokio::sync::watch::Sender::new(0),
            started: Instant::now(),
        })
    }

    /// Apply one peer notification (connections are made lazily, on first use).
    pub fn apply(&self, n: &ChangeNotification) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        match ChangeNotificationType::try_from(n.r#type) {
            Ok(ChangeNotificationType::PeerAdded | ChangeNotificationType::PeerUpdated) => {
                match channel(&n.address, self.tls.as_ref()) {
                    Ok(channel) => {
                        tracing::info!(node = %n.name, address = %n.address, "relay: node added");
                        nodes.insert(n.name.clone(), NodeConn { address: n.address.clone(), channel });
                    }
                    Err(e) => tracing::warn!(node = %n.name, error = %e, "relay: node skipped"),
                }
            }
            Ok(ChangeNotificationType::PeerDeleted) => {
                tracing::info!(node = %n.name, "relay: node gone");
                nodes.remove(&n.name);
            }
            _ => tracing::warn!(node = %n.name, r#type = n.r#type, "relay: unknown peer notification ignored"),
        }
        drop(nodes);
        self.changed.send_modify(|g| *g += 1);
    }

    /// The nodes known now, by name.
    pub fn nodes(&self) -> Vec<(String, String, Channel)> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.iter().map(|(n, c)| (n.clone(), c.address.clone(), c.channel.clone())).collect()
    }

    /// Follow a peer service for ever: a broken stream is opened again after a second. A
    /// reconnect starts from scratch (the stream replays every node as PEER_ADDED), so nodes
    /// deleted meanwhile are dropped.
    pub async fn discover(self: Arc<Self>, peer: Channel) {
        loop {
            match PeerClient::new(peer.clone()).notify(NotifyRequest {}).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    let mut seen = Vec::new();
                    let mut first = true;
                    loop {
                        // The initial burst arrives at once; after a quiet moment the relay
                        // knows every node and forgets the ones the peer no longer lists.
                        let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
                        match next {
                            Ok(Some(Ok(n))) => {
                                seen.push(n.name.clone());
                                self.apply(&n);
                            }
                            Ok(Some(Err(e))) => {
                                tracing::warn!(error = %e, "relay: peer stream failed");
                                break;
                            }
                            Ok(None) => break,
                            Err(_) if first => {
                                first = false;
                                let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
                                nodes.retain(|n, _| seen.contains(n));
                                drop(nodes);
                                self.changed.send_modify(|g| *g += 1);
                            }
                            Err(_) => {}
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "relay: cannot reach the peer service"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

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
        b.add_service(ObserverServer::new(RelayObserver { relay: self.clone() }))
            .add_service(crate::server::health().await)
    }
}

pub struct RelayObserver {
    relay: Arc<Relay>,
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

fn node_status(state: NodeState, names: Vec<String>, message: &str) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: String::new(),
        time: Some(crate::convert::timestamp(crate::server::now_ns())),
        response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state as i32,
            node_names: names,
            message: message.into(),
        })),
    }
}

fn time_key(r: &GetFlowsResponse) -> (i64, i32) {
    r.time.as_ref().map_or((0, 0), |t| (t.seconds, t.nanos))
}

/// What one node sent: its responses, or why it could not be asked.
enum FromNode {
    Item(Box<GetFlowsResponse>),
    Failed(String, String),
    Done,
}

async fn from_node(name: String, ch: Channel, req: GetFlowsRequest, tx: mpsc::Sender<FromNode>) {
    let started = tokio::time::timeout(NODE_TIMEOUT, ObserverClient::new(ch).get_flows(req)).await;
    let mut stream = match started {
        Ok(Ok(s)) => s.into_inner(),
        Ok(Err(e)) => {
            let _ = tx.send(FromNode::Failed(name, e.message().to_string())).await;
            return;
        }
        Err(_) => {
            let _ = tx.send(FromNode::Failed(name, format!("no answer within {}s", NODE_TIMEOUT.as_secs()))).await;
            return;
        }
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(mut r) => {
                if r.node_name.is_empty() {
                    r.node_name = name.clone();
                }
                if tx.send(FromNode::Item(Box::new(r))).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(FromNode::Failed(name, e.message().to_string())).await;
                return;
            }
        }
    }
    let _ = tx.send(FromNode::Done).await;
}

/// The cluster's answer to a bounded request: every node's flows in time order, cut to the
/// request's `number` (the last N, or the first N with `first`).
pub fn merge(mut flows: Vec<GetFlowsResponse>, number: u64, first: bool) -> Vec<GetFlowsResponse> {
    flows.sort_by_key(time_key);
    let n = number as usize;
    if n > 0 && flows.len() > n {
        if first {
            flows.truncate(n);
        } else {
            flows.drain(..flows.len() - n);
        }
    }
    flows
}

/// Followed flows waiting for their turn, in time order (then arrival).
#[derive(Default)]
pub struct SortBuffer {
    items: BTreeMap<((i64, i32), u64), (Instant, GetFlowsResponse)>,
    seq: u64,
}

impl SortBuffer {
    pub fn push(&mut self, r: GetFlowsResponse, now: Instant) {
        self.seq += 1;
        self.items.insert((time_key(&r), self.seq), (now, r));
    }

    /// The flows that may go now, oldest first: the earliest while it has waited `SORT_WINDOW`
    /// (or while more than `SORT_MAX` wait). A flow never overtakes an earlier one still here.
    pub fn ready(&mut self, now: Instant) -> Vec<GetFlowsResponse> {
        let mut out = Vec::new();
        loop {
            let full = self.items.len() > SORT_MAX;
            let Some(entry) = self.items.first_entry() else { break };
            if !full && now.duration_since(entry.get().0) < SORT_WINDOW {
                break;
            }
            out.push(entry.remove().1);
        }
        out
    }
}

/// A followed stream over every node, including the ones that join while it runs (asked for
/// new flows only), in time order over `SORT_WINDOW`. Ends when the client goes away.
async fn follow_flows(relay: Arc<Relay>, req: GetFlowsRequest, out: mpsc::Sender<Result<GetFlowsResponse, Status>>) {
    let (tx, mut rx) = mpsc::channel(256);
    let mut changes = relay.changed.subscribe();
    let mut following = std::collections::BTreeSet::new();
    for (name, _, ch) in relay.nodes() {
        following.insert(name.clone());
        tokio::spawn(from_node(name, ch, req.clone(), tx.clone()));
    }
    let mut sorter = SortBuffer::default();
    let mut tick = tokio::time::interval(SORT_WINDOW / 5);
    loop {
        let mut now_out = Vec::new();
        tokio::select! {
            m = rx.recv() => match m {
                Some(FromNode::Item(r)) => sorter.push(*r, Instant::now()),
                Some(FromNode::Failed(name, why)) => {
                    // Asked again when the peer service next says something.
                    following.remove(&name);
                    now_out.push(node_status(NodeState::NodeUnavailable, vec![name], &why));
                }
                Some(FromNode::Done) | None => {}
            },
            Ok(()) = changes.changed() => {
                for (name, _, ch) in relay.nodes() {
                    if following.insert(name.clone()) {
                        tracing::info!(node = %name, "relay: a followed stream takes in a node that joined");
                        let new_only = GetFlowsRequest { number: 0, first: false, ..req.clone() };
                        tokio::spawn(from_node(name.clone(), ch, new_only, tx.clone()));
                        now_out.push(node_status(NodeState::NodeConnected, vec![name], "joined the cluster"));
                    }
                }
            },
            _ = tick.tick() => {}
            _ = out.closed() => return,
        }
        for r in now_out.into_iter().chain(sorter.ready(Instant::now())) {
            if out.send(Ok(r)).await.is_err() {
                return;
            }
        }
    }
}

async fn relay_flows(
    nodes: Vec<(String, String, Channel)>,
    req: GetFlowsRequest,
    out: mpsc::Sender<Result<GetFlowsResponse, Status>>,
) {
    let (tx, mut rx) = mpsc::channel(256);
    let count = nodes.len();
    for (name, _, ch) in nodes {
        tokio::spawn(from_node(name, ch, req.clone(), tx.clone()));
    }
    drop(tx);
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut done = 0;
    let mut flows = Vec::new();
    let mut other = Vec::new();
    while let Some(m) = rx.recv().await {
        match m {
            FromNode::Item(r) if matches!(r.response_types, Some(ResponseTypes::Flow(_))) => flows.push(*r),
            FromNode::Item(r) => other.push(*r),
            FromNode::Failed(name, why) => failed.push((name, why)),
            FromNode::Done => done += 1,
        }
    }
    let mut head = Vec::new();
    if !failed.is_empty() {
        let why: Vec<String> = failed.iter().map(|(n, w)| format!("{n}: {w}")).collect();
        head.push(node_status(
            NodeState::NodeUnavailable,
            failed.into_iter().map(|(n, _)| n).collect(),
            &why.join("; "),
        ));
    }
    tracing::debug!(nodes = count, answered = done, "relay: flows merged");
    for r in head.into_iter().chain(other).chain(merge(flows, req.number, req.first)) {
        if out.send(Ok(r)).await.is_err() {
            return;
        }
    }
}

/// Ask every node the same unary question at once; each answer or its failure.
async fn ask_all<T, F, Fut>(nodes: Vec<(String, String, Channel)>, call: F) -> Vec<(String, String, Result<T, String>)>
where
    F: Fn(ObserverClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<T>, Status>>,
{
    let calls = nodes.into_iter().map(|(name, address, ch)| {
        let fut = call(ObserverClient::new(ch));
        async move {
            let r = match tokio::time::timeout(NODE_TIMEOUT, fut).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(e)) => Err(e.message().to_string()),
                Err(_) => Err(format!("no answer within {}s", NODE_TIMEOUT.as_secs())),
            };
            (name, address, r)
        }
    });
    futures::future::join_all(calls).await
}

#[tonic::async_trait]
impl Observer for RelayObserver {
    type GetFlowsStream = FlowStream;

    async fn get_flows(&self, req: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        let r = req.into_inner();
        crate::server::check_request(&r)?;
        let (tx, rx) = mpsc::channel(256);
        if r.follow {
            tokio::spawn(follow_flows(self.relay.clone(), r, tx));
        } else {
            tokio::spawn(relay_flows(self.relay.nodes(), r, tx));
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        let answers =
            ask_all(self.relay.nodes(), |mut c| async move { c.server_status(ServerStatusRequest {}).await }).await;
        let nodes = answers
            .into_iter()
            .map(|(name, address, r)| match r {
                Ok(s) => Node {
                    name,
                    version: s.version,
                    address,
                    state: NodeState::NodeConnected as i32,
                    tls: None,
                    uptime_ns: s.uptime_ns,
                    num_flows: s.num_flows,
                    max_flows: s.max_flows,
                    seen_flows: s.seen_flows,
                },
                Err(_) => Node { name, address, state: NodeState::NodeUnavailable as i32, ..Default::default() },
            })
            .collect();
        Ok(Response::new(GetNodesResponse { nodes }))
    }

    async fn get_namespaces(
        &self,
        _: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let answers =
            ask_all(self.relay.nodes(), |mut c| async move { c.get_namespaces(GetNamespacesRequest {}).await }).await;
        let mut all: Vec<Namespace> =
            answers.into_iter().filter_map(|(_, _, r)| r.ok()).flat_map(|r| r.namespaces).collect();
        all.sort_by(|a, b| (&a.cluster, &a.namespace).cmp(&(&b.cluster, &b.namespace)));
        all.dedup();
        Ok(Response::new(GetNamespacesResponse { namespaces: all }))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        let answers =
            ask_all(self.relay.nodes(), |mut c| async move { c.server_status(ServerStatusRequest {}).await }).await;
        let mut out = ServerStatusResponse {
            uptime_ns: self.relay.started.elapsed().as_nanos() as u64,
            version: concat!("sluice-relay ", env!("CARGO_PKG_VERSION")).into(),
            ..Default::default()
        };
        let (mut up, mut down) = (0, 0);
        for (name, _, r) in answers {
            match r {
                Ok(s) => {
                    up += 1;
                    out.num_flows += s.num_flows;
                    out.max_flows += s.max_flows;
                    out.seen_flows += s.seen_flows;
                }
                Err(_) => {
                    down += 1;
                    out.unavailable_nodes.push(name);
                }
            }
        }
        out.num_connected_nodes = Some(up);
        out.num_unavailable_nodes = Some(down);
        Ok(Response::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64, node: &str) -> GetFlowsResponse {
        GetFlowsResponse {
            node_name: node.into(),
            time: Some(prost_types::Timestamp { seconds: s, nanos: 0 }),
            response_types: Some(ResponseTypes::Flow(Default::default())),
        }
    }

    #[test]
    fn merge_orders_by_time_and_keeps_the_last_or_first_n() {
        let all = vec![at(5, "a"), at(1, "b"), at(3, "a"), at(4, "b"), at(2, "a")];
        let secs = |v: Vec<GetFlowsResponse>| v.iter().map(|r| time_key(r).0).collect::<Vec<_>>();
        assert_eq!(secs(merge(all.clone(), 3, false)), [3, 4, 5]);
        assert_eq!(secs(merge(all.clone(), 2, true)), [1, 2]);
        assert_eq!(secs(merge(all, 0, false)), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn the_sort_buffer_waits_its_window_and_never_lets_a_flow_overtake_an_earlier_one() {
        let t0 = Instant::now();
        let mut b = SortBuffer::default();
        b.push(at(9, "a"), t0);
        b.push(at(8, "b"), t0 + Duration::from_millis(100));
        assert!(b.ready(t0 + Duration::from_millis(200)).is_empty(), "inside the window");
        // At 500 ms the first arrival (9) has waited long enough, but 8 is earlier and has not:
        // nothing goes until 8 may; then both, in time order.
        assert!(b.ready(t0 + SORT_WINDOW).is_empty());
        let out = b.ready(t0 + SORT_WINDOW + Duration::from_millis(100));
        assert_eq!(out.iter().map(|r| time_key(r).0).collect::<Vec<_>>(), [8, 9]);
        // Past SORT_MAX waiting, the oldest goes at once.
        for i in 0..=SORT_MAX as i64 {
            b.push(at(100 + i, "a"), t0);
        }
        let out = b.ready(t0);
        assert_eq!(out.iter().map(|r| time_key(r).0).collect::<Vec<_>>(), [100]);
    }
}
