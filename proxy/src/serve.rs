//! Accepting, deciding and forwarding.

use std::convert::Infallible;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sluice_core::policy::l7::Request as RuleRequest;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore, mpsc, watch};

use crate::socket::connect_as;
use crate::{Check, Decide, Limits, RequestRecord, Verdict};

type Body = BoxBody<Bytes, hyper::Error>;

enum Upstream {
    H1(http1::SendRequest<Incoming>),
    H2(http2::SendRequest<Incoming>),
}

struct Conn {
    client: SocketAddrV4,
    server: SocketAddrV4,
    upstream_addr: SocketAddrV4,
    source: Option<std::net::Ipv4Addr>,
    /// The checks in force and the policy generation they were made under: a request after a
    /// policy change is checked by the new policy (keep-alive connections included).
    checks: std::sync::RwLock<(u64, Arc<Vec<Check>>)>,
    decide: Arc<dyn Decide>,
    record_headers: Arc<[String]>,
    upstream: Mutex<Option<Upstream>>,
    records: Option<mpsc::Sender<RequestRecord>>,
}

fn v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

/// Serve connections from `listener` until the task is dropped.
pub async fn run(
    listener: TcpListener,
    decide: Arc<dyn Decide>,
    limits: Limits,
    records: Option<mpsc::Sender<RequestRecord>>,
) {
    run_until(listener, decide, limits, records, std::future::pending()).await
}

/// Serve connections from `listener` until `shutdown` completes, then drain: the listener
/// closes (new connections are not accepted: the redirect finds no socket and drops them, and
/// the client's SYN is retried against the next proxy), every open connection finishes the
/// requests it has in flight and closes (HTTP/1.1 after the current response, HTTP/2 with
/// GOAWAY; idle ones at once). Returns when the last connection is gone; the caller bounds the
/// wait.
pub async fn run_until(
    listener: TcpListener,
    decide: Arc<dyn Decide>,
    limits: Limits,
    records: Option<mpsc::Sender<RequestRecord>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "L7 proxy accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, max = limits.max_connections, "L7 proxy at its connection limit: closed");
            continue;
        };
        let (Some(client), Some(server)) = (v4(peer), stream.local_addr().ok().and_then(v4)) else { continue };
        let (limits, records, decide, mut drain) = (limits.clone(), records.clone(), decide.clone(), drain_rx.clone());
        // Decided in the connection's own task: the accept loop only accepts.
        tokio::spawn(async move {
            let _permit = permit;
            let generation = decide.generation();
            let (checks, upstream_addr, source, record_headers) = match decide.decide(client, server) {
                Verdict::Http { checks, upstream, source, record_headers } => {
                    (checks, upstream, source, record_headers)
                }
                Verdict::Refuse { reason } => {
                    tracing::info!(%client, %server, %reason, "L7 proxy refused a connection");
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let conn = Arc::new(Conn {
                client,
                server,
                upstream_addr,
                source,
                checks: std::sync::RwLock::new((generation, Arc::new(checks))),
                decide,
                record_headers,
                upstream: Mutex::new(None),
                records,
            });
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192));
            b.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32);
            let svc = hyper::service::service_fn(move |req| handle(conn.clone(), req));
            let served = b.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(served);
            let result = tokio::select! {
                r = served.as_mut() => r,
                _ = async { drain.wait_for(|d| *d).await.map(|_| ()) } => {
                    served.as_mut().graceful_shutdown();
                    served.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%client, error = %e, "L7 proxy connection ended");
            }
        });
    }
    drop(listener);
    let open = limits.max_connections - slots.available_permits();
    tracing::info!(open, "L7 proxy draining: finishing the requests in flight");
    let _ = drain_tx.send(true);
    // Every connection's permit back: all of them finished.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    r
}

/// Headers that describe one hop, not the message (RFC 9110 7.6.1): never forwarded.
const HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

async fn handle(c: Arc<Conn>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let method = req.method().as_str().to_string();
    let version = req.version();
    let rr = RuleRequest { method: &method, path: &path, host: &host, headers: &headers };
    let url = format!("http://{host}{}", req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let protocol = if version == Version::HTTP_2 { "HTTP/2" } else { "HTTP/1.1" };
    let time_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // `gone`: L3/L4 policy no longer allows this connection (refused, and the connection ends).
    let (checks, gone) = match c.current_checks() {
        Ok(checks) => (checks, None),
        Err(reason) => (Arc::new(Vec::new()), Some(reason)),
    };
    let refused = checks.iter().find(|k| !k.matcher.allows(&rr));
    let ingress = gone.is_some() || refused.map_or_else(|| checks.iter().any(|k| k.ingress), |k| k.ingress);
    let recorded = |h: &hyper::HeaderMap| -> Vec<(String, String)> {
        if c.record_headers.is_empty() {
            return Vec::new();
        }
        h.iter()
            .filter(|(n, _)| c.record_headers.iter().any(|r| r == n.as_str()))
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect()
    };
    let request_headers = recorded(req.headers());
    let record = |code: Option<u16>, denied_by: Option<Vec<String>>, response_headers| RequestRecord {
        request_headers: request_headers.clone(),
        response_headers,
        time_ns,
        ingress,
        checked_by: checks.iter().flat_map(|k| k.policies.iter().cloned()).collect(),
        client: c.client,
        // The server reached (a backend the proxy picked, for a ClusterIP it balances).
        server: c.upstream_addr,
        method: method.clone(),
        url: url.clone(),
        protocol: protocol.to_string(),
        code,
        latency: start.elapsed(),
        denied_by,
    };
    if let Some(reason) = gone {
        tracing::info!(client = %c.client, server = %c.server, %reason, "L7 proxy: a connection the policy no longer allows");
        send(&c, record(Some(403), Some(Vec::new()), Vec::new()));
        let mut r = text(StatusCode::FORBIDDEN, format!("Access denied by sluice L7 policy ({reason})\n"));
        if version != Version::HTTP_2 {
            r.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
        }
        return Ok(r);
    }
    if let Some(refused) = refused {
        let r = text(
            StatusCode::FORBIDDEN,
            format!("Access denied by sluice L7 policy ({})\n", refused.policies.join(", ")),
        );
        send(&c, record(Some(403), Some(refused.policies.clone()), Vec::new()));
        return Ok(r);
    }
    // A client that closes after this request: so does the upstream connection, closed by the
    // server as it would be without the proxy (the TIME_WAIT stays off the node, and the
    // upstream's source port can be reused at once).
    let closing = version != Version::HTTP_2
        && req
            .headers()
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))));
    for h in HOP {
        req.headers_mut().remove(h);
    }
    if closing {
        req.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    }
    match forward(&c, req, version).await {
        Ok(resp) => {
            send(&c, record(Some(resp.status().as_u16()), None, recorded(resp.headers())));
            let (mut parts, body) = resp.into_parts();
            for h in HOP {
                parts.headers.remove(h);
            }
            // The version is the hop's: an HTTP/1.0 server's answer goes to an HTTP/1.1 client
            // as HTTP/1.1 (else the client's keep-alive connection would end with it).
            parts.version = version;
            Ok(Response::from_parts(parts, body.boxed()))
        }
        Err(e) => {
            tracing::info!(client = %c.client, server = %c.server, error = %e, "L7 proxy upstream failed");
            send(&c, record(None, None, Vec::new()));
            Ok(text(StatusCode::BAD_GATEWAY, format!("sluice L7 proxy: upstream {} failed: {e}\n", c.upstream_addr)))
        }
    }
}

impl Conn {
    /// The checks for the next request: those of the policy in force now.
    fn current_checks(&self) -> Result<Arc<Vec<Check>>, String> {
        let now = self.decide.generation();
        if let Ok(cur) = self.checks.read()
            && cur.0 == now
        {
            return Ok(cur.1.clone());
        }
        let checks = Arc::new(self.decide.recheck(self.client, self.upstream_addr)?);
        if let Ok(mut cur) = self.checks.write() {
            *cur = (now, checks.clone());
        }
        Ok(checks)
    }
}

fn send(c: &Conn, r: RequestRecord) {
    if let Some(tx) = &c.records {
        let _ = tx.try_send(r); // a full channel drops the record, never the request
    }
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Send `req` over this connection's upstream (opened on first use, in the request's protocol).
async fn forward(c: &Conn, req: Request<Incoming>, version: Version) -> Result<Response<Incoming>, ForwardError> {
    let mut up = c.upstream.lock().await;
    if up.as_ref().is_none_or(|u| match u {
        Upstream::H1(s) => s.is_closed(),
        Upstream::H2(s) => s.is_closed(),
    }) {
        let stream = connect_as(c.source, c.upstream_addr).await.map_err(ForwardError::Connect)?;
        let io = TokioIo::new(stream);
        *up = Some(if version == Version::HTTP_2 {
            let (s, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Upstream::H2(s)
        } else {
            let (s, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Upstream::H1(s)
        });
    }
    let Some(u) = up.as_mut() else { return Err(ForwardError::Connect(std::io::ErrorKind::NotConnected.into())) };
    match u {
        Upstream::H2(s) => {
            // Multiplexed: release the lock, many requests share the connection.
            let mut s = s.clone();
            drop(up);
            s.ready().await?;
            Ok(s.send_request(req).await?)
        }
        Upstream::H1(s) => {
            s.ready().await?;
            Ok(s.send_request(req).await?)
        }
    }
}
