//! `sluice relay`: the cluster-wide Observer (Hubble relay's port 4245). It learns the nodes from
//! one node's `peer.Peer/Notify` and serves Hubble's Observer API over all of them.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Where to serve the merged Observer API, e.g. 0.0.0.0:4245 (Hubble relay's port). Nothing
    /// listens anywhere else.
    #[arg(long, env = "SLUICE_RELAY_LISTEN_ADDRESS")]
    pub listen_address: SocketAddr,
    /// A node's Observer (HOST:PORT, its `flows.listen_address`) whose peer service lists the
    /// cluster's nodes.
    #[arg(
        long,
        env = "SLUICE_RELAY_PEER_SERVICE",
        conflicts_with = "peer_socket",
        required_unless_present = "peer_socket"
    )]
    pub peer_service: Option<String>,
    /// The same through a node's unix socket (the relay then runs on that node).
    #[arg(long)]
    pub peer_socket: Option<PathBuf>,
}

pub fn run(a: RelayArgs) -> anyhow::Result<()> {
    super::agent::init_logging();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(serve(a))
}

async fn serve(a: RelayArgs) -> anyhow::Result<()> {
    let peer = match (&a.peer_service, &a.peer_socket) {
        (Some(addr), _) => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .with_context(|| format!("--peer-service {addr:?} is not HOST:PORT"))?
            .connect_lazy(),
        (None, Some(path)) => sluice_observer::client::unix_lazy(path.clone()),
        (None, None) => anyhow::bail!("give --peer-service HOST:PORT or --peer-socket PATH"),
    };
    let relay = sluice_observer::relay::Relay::new();
    tokio::spawn(relay.clone().discover(peer));
    let listener = tokio::net::TcpListener::bind(a.listen_address).await.with_context(|| {
        format!("listening on --listen-address {} (an address of this host and a free port)", a.listen_address)
    })?;
    tracing::info!(listen = %a.listen_address, peer_service = ?a.peer_service, peer_socket = ?a.peer_socket, "sluice relay serving");
    let router = relay.router().await;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)) => r.context("relay server")?,
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
