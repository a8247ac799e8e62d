//! The proxy against a real HTTP server over loopback (no TPROXY in front, no root): keep-alive
//! and h2c forwarding, 403 without closing the connection, streamed bodies, malformed and
//! oversized requests, slow clients and the connection limit.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_core::policy::{HttpMatcher, HttpRule};
use sluice_proxy::{Check, Decide, Limits, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream answering `METHOD PATH <body length>` (after 400 ms when the path says `slow`),
/// counting the connections it accepted.
async fn backend() -> (SocketAddrV4, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let SocketAddr::V4(addr) = l.local_addr().expect("addr") else { panic!("v4") };
    let conns = Arc::new(AtomicUsize::new(0));
    let n = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let head = format!("{} {}", req.method(), req.uri().path());
                    if head.contains("slow") {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                    }
                    let body = req.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(format!("{head} {}", body.len())))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

struct Rules {
    upstream: SocketAddrV4,
    refuse: bool,
}

impl Decide for Rules {
    fn decide(&self, _client: SocketAddrV4, _dst: SocketAddrV4) -> Verdict {
        if self.refuse {
            return Verdict::Refuse { reason: "test".into() };
        }
        let rules = [
            HttpRule { method: Some("GET".into()), path: Some("/public.*".into()), ..Default::default() },
            HttpRule { method: Some("POST".into()), path: Some("/upload".into()), ..Default::default() },
        ];
        Verdict::Http {
            checks: vec![Check {
                matcher: Arc::new(HttpMatcher::new(&rules)),
                policies: vec!["SluiceNetworkPolicy x/p".into()],
                ingress: true,
            }],
            upstream: self.upstream,
            source: None,
            record_headers: ["x-team".to_string(), "content-length".to_string()].into(),
        }
    }
}

async fn proxy(limits: Limits, refuse: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, conns, _) = proxy_recording(limits, refuse).await;
    (addr, conns)
}

async fn proxy_recording(
    limits: Limits,
    refuse: bool,
) -> (SocketAddr, Arc<AtomicUsize>, tokio::sync::mpsc::Receiver<sluice_proxy::RequestRecord>) {
    let (upstream, conns) = backend().await;
    let l = sluice_proxy::bind(0).expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(sluice_proxy::run(l, Arc::new(Rules { upstream, refuse }), limits, Some(tx)));
    (addr, conns, rx)
}

#[tokio::test]
async fn records_carry_only_the_headers_named_for_flows() {
    let (addr, _, mut rx) = proxy_recording(Limits::default(), false).await;
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
    tokio::spawn(conn);
    for path in ["/public", "/private"] {
        let req = Request::get(path)
            .header("host", "echo")
            .header("X-Team", "blue")
            .header("Authorization", "Bearer secret")
            .body(Full::new(Bytes::new()))
            .expect("request");
        text(tx.send_request(req).await.expect("send")).await;
    }
    let ok = rx.recv().await.expect("a record");
    assert_eq!(ok.request_headers, vec![("x-team".to_string(), "blue".to_string())], "no authorization");
    assert_eq!(ok.response_headers, vec![("content-length".to_string(), "13".to_string())], "{ok:?}");
    let refused = rx.recv().await.expect("a record");
    assert_eq!((refused.code, refused.request_headers.len()), (Some(403), 1));
    assert!(refused.response_headers.is_empty(), "the proxy's own 403 is not recorded as upstream headers");
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", "echo").body(Full::new(Bytes::new())).expect("request")
}

async fn text(r: Response<Incoming>) -> (u16, String) {
    let code = r.status().as_u16();
    (code, String::from_utf8_lossy(&r.into_body().collect().await.expect("body").to_bytes()).into_owned())
}

#[tokio::test]
async fn keep_alive_requests_share_one_upstream_and_a_403_keeps_the_connection() {
    let (addr, conns) = proxy(Limits::default(), false).await;
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
    tokio::spawn(conn);
    for (path, want) in
        [("/public", (200, "GET /public 0")), ("/private", (403, "")), ("/public/2", (200, "GET /public/2 0"))]
    {
        let (code, body) = text(tx.send_request(get(path)).await.expect("send")).await;
        assert_eq!(code, want.0, "{path}: {body}");
        if code == 403 {
            assert!(body.contains("SluiceNetworkPolicy x/p"), "the 403 names the policy: {body}");
        } else {
            assert_eq!(body, want.1);
        }
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one upstream connection for the keep-alive connection");
}

#[tokio::test]
async fn h2c_is_served_and_forwarded_as_http2_with_concurrent_streams() {
    let (addr, conns) = proxy(Limits::default(), false).await;
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let path = if i % 2 == 0 { format!("/public/{i}") } else { format!("/private/{i}") };
            let req = Request::get(format!("http://echo{path}")).body(Full::new(Bytes::new())).expect("req");
            (i, text(tx.send_request(req).await.expect("send")).await)
        }));
    }
    for t in tasks {
        let (i, (code, body)) = t.await.expect("task");
        if i % 2 == 0 {
            assert_eq!((code, body), (200, format!("GET /public/{i} 0")));
        } else {
            assert_eq!(code, 403, "{body}");
        }
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "streams share one upstream HTTP/2 connection");
}

#[tokio::test]
async fn request_bodies_stream_through() {
    let (addr, _) = proxy(Limits::default(), false).await;
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
    tokio::spawn(conn);
    // 64 chunks of 64 KiB, sent as they are produced (chunked: no length known up front).
    let chunks = futures_stream(64, 64 * 1024);
    let req = Request::post("/upload").header("host", "echo").body(chunks).expect("req");
    let (code, body) = text(tx.send_request(req).await.expect("send")).await;
    assert_eq!((code, body), (200, format!("POST /upload {}", 64 * 64 * 1024)));
}

fn futures_stream(n: usize, size: usize) -> impl hyper::body::Body<Data = Bytes, Error = std::io::Error> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
    tokio::spawn(async move {
        for _ in 0..n {
            if tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; size])))).await.is_err() {
                return;
            }
        }
    });
    StreamBody::new(tokio_stream_from(rx))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Write `raw`, read until the peer closes or 5 s pass; what came back.
async fn raw(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_answered_and_only_that_connection_closes() {
    let limits = Limits { max_header_bytes: 8192, ..Limits::default() };
    let (addr, _) = proxy(limits, false).await;
    let bad = raw(addr, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad:?}");
    let big = format!("GET /public HTTP/1.1\r\nhost: echo\r\nx-big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let over = raw(addr, big.as_bytes()).await;
    assert!(over.starts_with("HTTP/1.1 431"), "{over:?}");
    let ok = raw(addr, b"GET /public HTTP/1.1\r\nhost: echo\r\nconnection: close\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("GET /public 0"), "others still served: {ok:?}");
}

#[tokio::test]
async fn a_slow_client_is_cut_off_and_the_connection_limit_holds() {
    let limits = Limits { header_timeout: Duration::from_millis(500), max_connections: 2, ..Limits::default() };
    let (addr, _) = proxy(limits, false).await;
    // Slowloris: half a request line, then nothing. The proxy closes it (the read ends).
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /public HTTP/1.1\r\n").await.expect("write");
    let mut buf = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(cut.is_ok(), "a client that never finishes its headers is disconnected");
    // Two idle connections take both slots; a third is closed at once, unanswered.
    let _a = TcpStream::connect(addr).await.expect("a");
    let _b = TcpStream::connect(addr).await.expect("b");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = raw(addr, b"GET /public HTTP/1.1\r\nhost: echo\r\n\r\n").await;
    assert_eq!(third, "", "over the limit: closed without an answer");
}

#[tokio::test]
async fn a_refused_connection_is_closed_unanswered() {
    let (addr, conns) = proxy(Limits::default(), true).await;
    assert_eq!(raw(addr, b"GET /public HTTP/1.1\r\nhost: echo\r\n\r\n").await, "");
    assert_eq!(conns.load(Ordering::SeqCst), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn on_shutdown_requests_in_flight_finish_and_nothing_new_is_accepted() {
    let (upstream, _) = backend().await;
    let l = sluice_proxy::bind(0).expect("bind");
    let addr = l.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        let _ = stop_rx.await;
    };
    let rules = Arc::new(Rules { upstream, refuse: false });
    let proxy = tokio::spawn(sluice_proxy::run_until(l, rules, Limits::default(), None, stop));
    let connect = || async {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
        let (tx, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
        tokio::spawn(conn);
        tx
    };
    // An idle keep-alive connection, and one with a slow request in flight.
    let mut idle = connect().await;
    assert_eq!(text(idle.send_request(get("/public")).await.expect("send")).await.0, 200);
    let mut busy = connect().await;
    let slow = tokio::spawn(async move { text(busy.send_request(get("/public/slow")).await.expect("send")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_tx.send(()).expect("stop");
    assert_eq!(slow.await.expect("task"), (200, "GET /public/slow 0".to_string()), "the request in flight finishes");
    tokio::time::timeout(Duration::from_secs(5), proxy)
        .await
        .expect("drained once the last request finished")
        .expect("task");
    assert!(idle.send_request(get("/public")).await.is_err(), "the idle connection was closed");
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
}

/// A policy that changes: 0 allows `GET /public.*`, 1 allows only `GET /other`, 2 refuses the
/// connection at L3/L4.
struct Changing {
    upstream: SocketAddrV4,
    stage: std::sync::atomic::AtomicU64,
}

impl Decide for Changing {
    fn generation(&self) -> u64 {
        self.stage.load(Ordering::SeqCst)
    }

    fn decide(&self, _client: SocketAddrV4, _dst: SocketAddrV4) -> Verdict {
        let path = match self.stage.load(Ordering::SeqCst) {
            0 => "/public.*",
            1 => "/other",
            _ => return Verdict::Refuse { reason: "L3/L4 policy no longer allows it".into() },
        };
        let rules = [HttpRule { method: Some("GET".into()), path: Some(path.into()), ..Default::default() }];
        Verdict::Http {
            checks: vec![Check {
                matcher: Arc::new(HttpMatcher::new(&rules)),
                policies: vec![format!("SluiceNetworkPolicy x/p{}", self.stage.load(Ordering::SeqCst))],
                ingress: true,
            }],
            upstream: self.upstream,
            source: None,
            record_headers: Arc::new([]),
        }
    }
}

#[tokio::test]
async fn a_policy_change_applies_to_the_next_request_of_an_open_connection() {
    let (upstream, conns) = backend().await;
    let l = sluice_proxy::bind(0).expect("bind");
    let addr = l.local_addr().expect("addr");
    let policy = Arc::new(Changing { upstream, stage: 0.into() });
    tokio::spawn(sluice_proxy::run(l, policy.clone(), Limits::default(), None));
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
    let conn = tokio::spawn(conn);
    assert_eq!(text(tx.send_request(get("/public")).await.expect("send")).await.0, 200);
    // The rule changes: the same keep-alive connection's next request is checked by the new one.
    policy.stage.store(1, Ordering::SeqCst);
    let (code, body) = text(tx.send_request(get("/public")).await.expect("send")).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("x/p1"), "the new policy refused it: {body}");
    assert_eq!(text(tx.send_request(get("/other")).await.expect("send")).await.0, 200, "and allows its own");
    assert_eq!(conns.load(Ordering::SeqCst), 1, "the connection and its upstream stayed open");
    // L3/L4 no longer allows the connection: refused, and the connection ends.
    policy.stage.store(2, Ordering::SeqCst);
    let (code, body) = text(tx.send_request(get("/other")).await.expect("send")).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no longer allows"), "{body}");
    tokio::time::timeout(Duration::from_secs(5), conn).await.expect("the proxy closed it").expect("task").ok();
    assert!(tx.send_request(get("/other")).await.is_err(), "closed");
}
