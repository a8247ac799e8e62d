//! Connecting to an Observer over its unix socket (the agent's CLI, the tests).

use std::path::PathBuf;

/// A channel to the Observer listening on `path`.
pub async fn connect_unix(path: PathBuf) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    // The URI is required by the API and unused: the connector below dials the socket.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
        }))
        .await
}

/// A channel to the Observer on `path`, connected on first use (and again after a failure).
pub fn unix_lazy(path: PathBuf) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
        },
    ))
}
