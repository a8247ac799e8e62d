//! Wiring of the L7 proxy (`sluice-proxy`): started the first time this node's policy has an
//! L7 rule (and `l7.enabled`), with the policy routing TPROXY needs; it reads the latest
//! policy view for every new connection. Until it runs (or when it cannot start), the view says
//! no proxy and the iptables backend redirects nothing: L7 ports let nothing through.

use std::net::SocketAddrV4;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_config::L7Config;
use sluice_core::flow::enrich::Directory;
use sluice_core::flow::l7::ObservedHttp;
use sluice_core::policy::{Action, HttpMatcher, HttpRule, PolicyView, l7::connection_checks};
use sluice_proxy::{Check, Decide, Limits, RequestRecord, Verdict};

/// The latest view, shared with the proxy's connection handlers, and the rule sets compiled
/// under it (regexes compile once per view, not per connection).
#[derive(Default)]
struct Current {
    view: Arc<PolicyView>,
    /// `l7.flow_headers`, lowercase.
    flow_headers: Arc<[String]>,
    matchers: std::sync::Mutex<std::collections::HashMap<Vec<HttpRule>, Arc<HttpMatcher>>>,
}

struct SharedView(RwLock<Arc<Current>>);

impl Decide for SharedView {
    fn decide(&self, client: SocketAddrV4, dst: SocketAddrV4) -> Verdict {
        let cur = self.0.read().map(|v| v.clone()).unwrap_or_default();
        let matcher = |rules: &Vec<HttpRule>| -> Arc<HttpMatcher> {
            let Ok(mut m) = cur.matchers.lock() else { return Arc::new(HttpMatcher::new(rules)) };
            m.entry(rules.clone()).or_insert_with(|| Arc::new(HttpMatcher::new(rules))).clone()
        };
        // A ClusterIP taken as it is (netfilter Services translate after the redirect): the
        // proxy picks the backend, and the checks are the backend's.
        let frontend = cur.view.l7_frontends.iter().find(|f| f.vip == *dst.ip() && f.port == dst.port());
        let dst = match frontend.map(|f| f.pick(client.port())) {
            None => dst,
            Some(Some((ip, port))) => SocketAddrV4::new(ip, port),
            Some(None) => return Verdict::Refuse { reason: format!("{dst}: the Service has no backend") },
        };
        match connection_checks(&cur.view, *client.ip(), *dst.ip(), dst.port()) {
            Ok(checks) => Verdict::Http {
                checks: checks
                    .into_iter()
                    .map(|c| Check { matcher: matcher(&c.rules), policies: c.policies, ingress: c.ingress })
                    .collect(),
                upstream: dst,
                source: Some(*client.ip()),
                record_headers: cur.flow_headers.clone(),
            },
            Err(reason) => Verdict::Refuse { reason },
        }
    }
}

pub struct L7Proxy {
    cfg: L7Config,
    hub: Arc<sluice_observer::server::Hub>,
    directory: Arc<RwLock<Directory>>,
    shared: Arc<SharedView>,
    generation: Option<u64>,
    /// The proxy's own thread and runtime: the agent's loop blocks its workers during kernel
    /// writes, which must not stall requests in flight.
    task: Option<std::thread::JoinHandle<()>>,
    /// Ends the proxy's accepting (it then drains); dropped with the agent otherwise.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// A duplicate of the proxy's listening socket, for a backend that steers connections to the
    /// socket itself (eBPF). Closed before the proxy drains: it must not keep the port listening.
    listener: Option<std::os::fd::OwnedFd>,
    /// Why the proxy is not running although L7 rules need it (status shows it).
    pub error: Option<String>,
}

fn needs_proxy(view: &PolicyView) -> bool {
    view.endpoints.iter().any(|e| {
        [&e.policy.ingress, &e.policy.egress].iter().any(|d| d.rules.iter().any(|r| r.action == Action::Proxy))
    })
}

impl L7Proxy {
    pub fn new(cfg: &L7Config, hub: Arc<sluice_observer::server::Hub>, directory: Arc<RwLock<Directory>>) -> Self {
        L7Proxy {
            cfg: cfg.clone(),
            hub,
            directory,
            shared: Arc::new(SharedView(RwLock::new(Arc::default()))),
            generation: None,
            task: None,
            stop: None,
            listener: None,
            error: None,
        }
    }

    /// The port `Proxy` rules redirect to, while the proxy runs.
    pub fn port(&self) -> Option<u16> {
        self.task.as_ref().map(|_| self.cfg.proxy_port)
    }

    /// The proxy's listening socket, while it runs.
    pub fn listener(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.listener.as_ref().map(|l| l.as_fd())
    }

    /// After each pass: hand the proxy the new view; start it when L7 rules first need it.
    /// `true` when it started now (the caller runs another pass to redirect to it).
    pub async fn after_pass(&mut self, view: &PolicyView, cfg: &L7Config) -> bool {
        let needed = needs_proxy(view);
        let headers_changed = cfg.flow_headers != self.cfg.flow_headers;
        if (self.generation != Some(view.generation) || headers_changed) && (needed || self.task.is_some()) {
            self.cfg.flow_headers = cfg.flow_headers.clone();
            let flow_headers = cfg.flow_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
            if let Ok(mut v) = self.shared.0.write() {
                *v = Arc::new(Current { view: Arc::new(view.clone()), flow_headers, matchers: Default::default() });
            }
            self.generation = Some(view.generation);
        }
        if !needed || self.task.is_some() || self.error.is_some() {
            return false;
        }
        if !self.cfg.enabled {
            self.error = Some("l7.enabled is false: ports with HTTP rules let nothing through".into());
            return false;
        }
        match self.start().await {
            Ok(()) => {
                tracing::info!(port = self.cfg.proxy_port, "L7 proxy started");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "L7 proxy did not start: ports with HTTP rules let nothing through");
                self.error = Some(format!("{e:#}"));
                false
            }
        }
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        sluice_iptables::l7_route::ensure(&handle).await?;
        let limits = Limits {
            max_header_bytes: self.cfg.max_header_bytes,
            header_timeout: Duration::from_secs(self.cfg.header_timeout_s),
            max_connections: self.cfg.max_connections,
        };
        let decide: Arc<dyn Decide> = self.shared.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(record_flows(rx, self.hub.clone(), self.directory.clone()));
        let port = self.cfg.proxy_port;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<std::os::fd::OwnedFd, String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("sluice-l7-proxy".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("sluice-l7")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("starting the proxy's runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                match sluice_proxy::bind_transparent(port) {
                    Ok(listener) => {
                        use std::os::fd::AsFd;
                        match listener.as_fd().try_clone_to_owned() {
                            Ok(dup) => {
                                let _ = ready_tx.send(Ok(dup));
                                let stop = async move {
                                    let _ = stop_rx.await;
                                };
                                sluice_proxy::run_until(listener, decide, limits, Some(tx), stop).await;
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("duplicating the listening socket: {e}")));
                            }
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            });
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(fd)) => self.listener = Some(fd),
            Ok(Err(e)) => anyhow::bail!(e),
            Err(_) => anyhow::bail!("the proxy's thread did not report within 10 s"),
        }
        self.task = Some(thread);
        self.stop = Some(stop_tx);
        Ok(())
    }

    /// On the agent's shutdown: the proxy stops accepting and the connections it holds finish
    /// their requests in flight (HTTP/1.1 closes after the current response, HTTP/2 sends
    /// GOAWAY), for at most `timeout`; what is still open then goes with the process.
    pub async fn drain(&mut self, timeout: Duration) {
        let (Some(stop), Some(thread)) = (self.stop.take(), self.task.take()) else { return };
        self.listener = None;
        let _ = stop.send(());
        let t0 = std::time::Instant::now();
        let joined = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + timeout;
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            thread.is_finished()
        })
        .await
        .unwrap_or(false);
        if joined {
            tracing::info!(ms = t0.elapsed().as_millis() as u64, "L7 proxy drained");
        } else {
            tracing::warn!(
                ?timeout,
                "L7 proxy: connections still open after l7.drain_timeout_s; closed with the agent"
            );
        }
    }
}

/// Each request the proxy handled becomes Hubble's L7 flows (request, and response unless
/// refused) in this node's flow buffer and metrics.
async fn record_flows(
    mut rx: tokio::sync::mpsc::Receiver<RequestRecord>,
    hub: Arc<sluice_observer::server::Hub>,
    directory: Arc<RwLock<Directory>>,
) {
    while let Some(r) = rx.recv().await {
        let o = ObservedHttp {
            time_ns: r.time_ns,
            ingress: r.ingress,
            client: (*r.client.ip(), r.client.port()),
            server: (*r.server.ip(), r.server.port()),
            method: r.method,
            url: r.url,
            protocol: r.protocol.to_string(),
            code: r.code.unwrap_or(502),
            latency_ns: r.latency.as_nanos() as u64,
            allowed_by: if r.denied_by.is_some() { Vec::new() } else { r.checked_by.clone() },
            denied_by: r.denied_by,
            request_headers: r.request_headers,
            response_headers: r.response_headers,
        };
        let flows = match directory.read() {
            Ok(d) => d.http(&o),
            Err(_) => continue,
        };
        hub.push(flows);
    }
}
