//! The root-only unix socket the CLI talks to.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{RwLock, mpsc, oneshot};

use crate::api::types::{AgentStatus, LbEntry, ServiceEntry};
use crate::api::{Request, Response};

pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    // A socket file left by a killed agent would make bind fail; nobody can be listening on it
    // if connecting fails.
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding {} (is another agent running on this node?)", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

fn gone() -> Response {
    Response::Error("the agent is shutting down; try again when it is back".into())
}

/// Questions only the reconcile loop can answer (it owns the state and the datapath).
pub enum Query {
    Services(oneshot::Sender<Vec<ServiceEntry>>),
    /// This node's name and the Services the source holds (translated, validated).
    DesiredServices(oneshot::Sender<(String, Vec<sluice_core::Service>, Vec<sluice_core::NodeInfo>)>),
    BpfLb(oneshot::Sender<Vec<LbEntry>>),
    /// Policy questions: answered from the loop's state (endpoints, identities, policies, trace).
    Policy(Request, oneshot::Sender<Response>),
    /// `sluice migrate`: pin or release kube_proxy_replacement (the loop re-plans).
    Migration(Option<sluice_core::KprMode>, String, oneshot::Sender<Result<(), String>>),
    /// `sluice migrate`: label this node's Node object (whether it did, and what happened).
    MarkNode(bool, oneshot::Sender<(bool, String)>),
}

/// Ask the reconcile loop; None when it is gone (the agent is stopping).
async fn ask<T>(queries: &mpsc::Sender<Query>, query: impl FnOnce(oneshot::Sender<T>) -> Query) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    queries.send(query(tx)).await.ok()?;
    rx.await.ok()
}

/// A request is one JSON line of a few dozen bytes; anything longer is refused unread.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// A client that does not finish its request line in this time is dropped.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 64;

/// Read one request line, bounded in size and time.
async fn read_request(r: &mut tokio::net::unix::OwnedReadHalf) -> Result<String, String> {
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(r, MAX_REQUEST_BYTES + 1));
    let read = reader.read_line(&mut line);
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Err(_) => Err(format!("no complete request line within {}s", REQUEST_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Ok(Ok(n)) if n as u64 > MAX_REQUEST_BYTES => Err(format!("request longer than {MAX_REQUEST_BYTES} bytes")),
        Ok(Ok(_)) => Ok(line),
    }
}

pub async fn serve(
    l: UnixListener,
    status: Arc<RwLock<AgentStatus>>,
    wake: Arc<tokio::sync::Notify>,
    queries: mpsc::Sender<Query>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = l.accept().await else {
            continue;
        };
        let status = status.clone();
        let wake = wake.clone();
        let queries = queries.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (mut r, mut w) = stream.into_split();
            let line = match read_request(&mut r).await {
                Ok(line) => line,
                Err(why) => {
                    let out = serde_json::to_string(&Response::Error(why)).unwrap_or_default() + "\n";
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, w.write_all(out.as_bytes())).await;
                    let _ = w.shutdown().await;
                    // Closing with unread input would reset the connection before the client
                    // reads the answer: discard what it still sends, bounded in time and size.
                    let (mut rest, mut sink) = (tokio::io::AsyncReadExt::take(r, 1 << 24), tokio::io::sink());
                    let drain = tokio::io::copy(&mut rest, &mut sink);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
                    return;
                }
            };
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(Request::Status) => Response::Status(Box::new(status.read().await.clone())),
                Ok(Request::Services) => ask(&queries, Query::Services).await.map_or_else(gone, Response::Services),
                Ok(Request::DesiredServices) => ask(&queries, Query::DesiredServices)
                    .await
                    .map_or_else(gone, |(node, services, nodes)| Response::DesiredServices { node, services, nodes }),
                Ok(Request::BpfLb) => ask(&queries, Query::BpfLb).await.map_or_else(gone, Response::BpfLb),
                Ok(req @ (Request::Endpoints | Request::Identities | Request::Policies | Request::Trace { .. })) => {
                    ask(&queries, |tx| Query::Policy(req, tx)).await.unwrap_or_else(gone)
                }
                Ok(Request::Migration { kube_proxy_replacement, set_by }) => {
                    match ask(&queries, |tx| Query::Migration(kube_proxy_replacement, set_by, tx)).await {
                        None => gone(),
                        Some(Ok(())) => Response::Ok,
                        Some(Err(e)) => Response::Error(e),
                    }
                }
                Ok(Request::MarkNode { replaced }) => match ask(&queries, |tx| Query::MarkNode(replaced, tx)).await {
                    None => gone(),
                    Some((labelled, detail)) => Response::NodeLabel { labelled, detail },
                },
                Ok(Request::EndpointsChanged) => {
                    wake.notify_one();
                    Response::Ok
                }
                Err(e) => Response::Error(format!(
                    "bad request {:?}: {e}; accepted: one JSON request line (the sluice CLI sends them)",
                    sluice_core::validate::escape(&line)
                )),
            };
            let mut out = serde_json::to_string(&resp).unwrap_or_default();
            out.push('\n');
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, w.write_all(out.as_bytes())).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn answer(path: &Path, request: &[u8]) -> String {
        let s = tokio::net::UnixStream::connect(path).await.expect("connect");
        let (mut r, mut w) = s.into_split();
        let request = request.to_vec();
        // The server may stop reading early (oversized request): a failed write is fine.
        tokio::spawn(async move { w.write_all(&request).await });
        let mut out = String::new();
        let _ = r.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn requests_are_bounded_and_a_good_one_still_answers() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.sock");
        let l = bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "root-only socket");
        let (q, _rx) = mpsc::channel(1);
        tokio::spawn(serve(l, Arc::default(), Arc::default(), q));
        // 1 MiB without a newline: refused after the limit, not buffered whole.
        let big = vec![b'x'; 1 << 20];
        let out = answer(&path, &big).await;
        assert!(out.contains("request longer than 65536 bytes"), "{out}");
        let out = answer(&path, b"{\"bogus\":\n").await;
        assert!(out.contains("bad request") && out.contains("accepted"), "{out}");
        let out = answer(&path, b"\"Status\"\n").await;
        assert!(out.contains("Status"), "{out}");
    }
}
