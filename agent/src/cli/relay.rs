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
    /// Serve TLS on --listen-address with this PEM certificate chain (and --tls-server-key-file).
    #[arg(long, requires = "tls_server_key_file")]
    pub tls_server_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_server_cert_file")]
    pub tls_server_key_file: Option<PathBuf>,
    /// Require client certificates signed by these PEM CAs (mutual TLS on --listen-address).
    #[arg(long, requires = "tls_server_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Reach the nodes' Observers (and --peer-service) over TLS, checking their certificates
    /// against this PEM CA bundle (the nodes' `flows.tls`).
    #[arg(long)]
    pub tls_hubble_server_ca_file: Option<PathBuf>,
    /// The name every node's certificate must carry (default: the host the peer service gives).
    #[arg(long, requires = "tls_hubble_server_ca_file")]
    pub tls_hubble_server_name: Option<String>,
    /// The relay's client certificate and key, for nodes that require one (mutual TLS).
    #[arg(long, requires_all = ["tls_hubble_server_ca_file", "tls_hubble_client_key_file"])]
    pub tls_hubble_client_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_hubble_client_cert_file")]
    pub tls_hubble_client_key_file: Option<PathBuf>,
}

pub fn run(a: RelayArgs) -> anyhow::Result<()> {
    super::agent::init_logging();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(serve(a))
}

async fn serve(a: RelayArgs) -> anyhow::Result<()> {
    let nodes_tls = a.tls_hubble_server_ca_file.as_ref().map(|ca| sluice_observer::tls::ClientFiles {
        ca_file: ca.clone(),
        server_name: a.tls_hubble_server_name.clone(),
        cert_file: a.tls_hubble_client_cert_file.clone(),
        key_file: a.tls_hubble_client_key_file.clone(),
    });
    if let Some(t) = &nodes_tls {
        // Read the files now: a bad one stops the relay here, not each node's connection later.
        t.config("check").context("--tls-hubble-server-ca-file")?;
    }
    let peer = match (&a.peer_service, &a.peer_socket) {
        (Some(addr), _) => sluice_observer::relay::tcp_channel(addr, nodes_tls.as_ref())
            .map_err(|e| anyhow::anyhow!("--peer-service {addr:?}: {e}"))?,
        (None, Some(path)) => sluice_observer::client::unix_lazy(path.clone()),
        (None, None) => anyhow::bail!("give --peer-service HOST:PORT or --peer-socket PATH"),
    };
    let relay = sluice_observer::relay::Relay::with_tls(nodes_tls);
    tokio::spawn(relay.clone().discover(peer));
    let listener = tokio::net::TcpListener::bind(a.listen_address).await.with_context(|| {
        format!("listening on --listen-address {} (an address of this host and a free port)", a.listen_address)
    })?;
    tracing::info!(listen = %a.listen_address, peer_service = ?a.peer_service, peer_socket = ?a.peer_socket, "sluice relay serving");
    let router = match (&a.tls_server_cert_file, &a.tls_server_key_file) {
        (Some(cert), Some(key)) => {
            let tls = sluice_observer::tls::server(cert, key, a.tls_client_ca_file.as_deref())
                .context("--tls-server-cert-file")?;
            relay.router_tls(tls).await.context("--tls-server-cert-file")?
        }
        _ => relay.router().await,
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)) => r.context("relay server")?,
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
