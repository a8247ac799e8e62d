//! healthCheckNodePort: for each `externalTrafficPolicy: Local` Service, an HTTP server on its
//! health check port answering `/healthz` with the node's local endpoint count, as kube-proxy
//! does (200 with endpoints, 503 without), so load balancers skip nodes without endpoints.

use std::collections::BTreeMap;

use sluice_core::{ServiceName, ServiceView};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub service: ServiceName,
    pub local_endpoints: usize,
}

/// Health check ports this node should serve.
pub fn desired(view: &ServiceView<'_>) -> BTreeMap<u16, Health> {
    let mut out = BTreeMap::new();
    for s in view.services.iter().filter(|s| s.external_local) {
        let Some(port) = s.health_check_node_port else { continue };
        out.insert(port, Health { service: s.name.clone(), local_endpoints: view.local_endpoint_count(s) });
    }
    out
}

pub fn response(h: &Health) -> String {
    let body = format!(
        "{{\"service\":{{\"namespace\":\"{}\",\"name\":\"{}\"}},\"localEndpoints\":{},\"serviceProxyHealthy\":true}}",
        h.service.namespace, h.service.name, h.local_endpoints
    );
    let status = if h.local_endpoints > 0 { "200 OK" } else { "503 Service Unavailable" };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[derive(Default)]
pub struct HealthServers {
    servers: BTreeMap<u16, (JoinHandle<()>, watch::Sender<Health>)>,
}

impl HealthServers {
    pub async fn reconcile(&mut self, want: BTreeMap<u16, Health>) -> Vec<String> {
        let mut errors = Vec::new();
        self.servers.retain(|port, (task, _)| {
            let keep = want.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, h) in want {
            if let Some((_, tx)) = self.servers.get(&port) {
                tx.send_if_modified(|cur| {
                    let changed = *cur != h;
                    *cur = h.clone();
                    changed
                });
                continue;
            }
            match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
                Ok(l) => {
                    let (tx, rx) = watch::channel(h);
                    self.servers.insert(port, (tokio::spawn(serve(l, rx)), tx));
                }
                Err(e) => errors.push(format!("healthCheckNodePort {port} of {}: cannot listen: {e}", h.service)),
            }
        }
        errors
    }
}

async fn serve(l: tokio::net::TcpListener, rx: watch::Receiver<Health>) {
    loop {
        let Ok((mut s, _)) = l.accept().await else { continue };
        let text = response(&rx.borrow());
        tokio::spawn(async move {
            // Read the whole request head before answering: closing with unread data would
            // reset the connection under the client.
            let read_head = async {
                let mut buf = [0u8; 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 8192 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), read_head).await;
            let _ = s.write_all(text.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_local_endpoints() {
        let h = Health { service: ServiceName { namespace: "default".into(), name: "web".into() }, local_endpoints: 0 };
        assert!(response(&h).starts_with("HTTP/1.1 503"));
        let h = Health { local_endpoints: 2, ..h };
        let r = response(&h);
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("\"localEndpoints\":2,\"serviceProxyHealthy\":true}"));
    }
}
