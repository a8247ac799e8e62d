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
    BpfLb(oneshot::Sender<Vec<LbEntry>>),
}

/// Ask the reconcile loop; None when it is gone (the agent is stopping).
async fn ask<T>(queries: &mpsc::Sender<Query>, query: impl FnOnce(oneshot::Sender<T>) -> Query) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    queries.send(query(tx)).await.ok()?;
    rx.await.ok()
}

pub async fn serve(
    l: UnixListener,
    status: Arc<RwLock<AgentStatus>>,
    wake: Arc<tokio::sync::Notify>,
    queries: mpsc::Sender<Query>,
) {
    loop {
        let Ok((stream, _)) = l.accept().await else {
            continue;
        };
        let status = status.clone();
        let wake = wake.clone();
        let queries = queries.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
                return;
            }
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(Request::Status) => Response::Status(Box::new(status.read().await.clone())),
                Ok(Request::Services) => ask(&queries, Query::Services).await.map_or_else(gone, Response::Services),
                Ok(Request::BpfLb) => ask(&queries, Query::BpfLb).await.map_or_else(gone, Response::BpfLb),
                Ok(Request::EndpointsChanged) => {
                    wake.notify_one();
                    Response::Ok
                }
                Err(e) => Response::Error(format!("bad request {line:?}: {e}")),
            };
            let mut out = serde_json::to_string(&resp).unwrap_or_default();
            out.push('\n');
            let _ = w.write_all(out.as_bytes()).await;
        });
    }
}
