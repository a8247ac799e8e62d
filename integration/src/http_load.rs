//! Keep-alive HTTP for the L7 benchmark: a hyper server answering every request with a short
//! body over HTTP/1.1 keep-alive (the echo server closes after each answer), and a closed-loop
//! client with N concurrent connections, either one keep-alive connection each or a new
//! connection per request, recording every request's latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Serve `ok` to every request on `port` (all addresses of the pod), until killed.
pub fn serve(port: u16) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let l = TcpListener::bind(("0.0.0.0", port)).await.with_context(|| format!("binding {port}"))?;
        loop {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    })
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    pub req_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

async fn one(
    sender: &mut Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    target: SocketAddr,
    path: &str,
    keep_alive: bool,
) -> anyhow::Result<()> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) || !keep_alive {
        let s = TcpStream::connect(target).await?;
        s.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(conn);
        *sender = Some(tx);
    }
    let tx = sender.as_mut().context("connected above")?;
    tx.ready().await?;
    let mut req = Request::get(path).header("host", target.to_string());
    if !keep_alive {
        req = req.header("connection", "close");
    }
    let resp = tx.send_request(req.body(Empty::new())?).await?;
    let ok = resp.status().is_success();
    resp.into_body().collect().await?;
    anyhow::ensure!(ok, "status not 2xx");
    Ok(())
}

/// `conns` closed loops against `target` for `secs`.
pub fn load(target: SocketAddr, path: &str, conns: usize, secs: f64, keep_alive: bool) -> anyhow::Result<LoadReport> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let path: Arc<str> = path.into();
    rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                let mut sender = None;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(2), one(&mut sender, target, &path, keep_alive))
                        .await
                    {
                        Ok(Ok(())) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                        _ => {
                            errors += 1;
                            sender = None;
                        }
                    }
                }
                (lat, errors)
            }));
        }
        let start = Instant::now();
        let (mut all, mut errors) = (Vec::new(), 0);
        for t in tasks {
            let (l, e) = t.await?;
            all.extend(l);
            errors += e;
        }
        let wall = start.elapsed().as_secs_f64().max(secs);
        all.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0.0)
        };
        Ok(LoadReport {
            requests: all.len() as u64,
            errors,
            req_per_s: all.len() as f64 / wall,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
        })
    })
}

/// Open `conns` keep-alive connections to `target`, one request each, and hold them for `secs`.
pub fn hold_many(target: SocketAddr, conns: usize, secs: f64) -> anyhow::Result<usize> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut held = Vec::new();
        for _ in 0..conns {
            let mut s = None;
            if one(&mut s, target, "/hold", true).await.is_ok() {
                held.push(s);
            }
        }
        let n = held.len();
        println!("{n}");
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        drop(held);
        Ok(n)
    })
}
