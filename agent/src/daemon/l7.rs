//! Wiring of the L7 proxy process (`sluice proxy`, `sluice_proxy::process`): the agent connects
//! to it on its control socket the first time this node's policy has an L7 rule (and
//! `l7.enabled`), starting it when nothing answers, and sends it every new policy view. The
//! proxy outlives the agent: a crash or an upgrade of the agent leaves its connections open and
//! its last view in force, and the next agent connects to it again. Until the agent is
//! connected, the view says no proxy and nothing is redirected: L7 ports let nothing through.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sluice_config::L7Config;
use sluice_core::flow::enrich::Directory;
use sluice_core::flow::l7::ObservedHttp;
use sluice_core::policy::{Action, PolicyView};
use sluice_proxy::RequestRecord;
use sluice_proxy::control::{self, FromProxy, Settings, ToProxyRef};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;

/// A failed start is tried again after this long (not every pass).
const RETRY: Duration = Duration::from_secs(5);

struct Connected {
    pid: u32,
    port: u16,
    /// The proxy's listening socket, for a backend that steers connections to the socket
    /// itself (eBPF). Closed as soon as the proxy drains or goes: it must not keep the port
    /// listening.
    listener: OwnedFd,
    writer: OwnedWriteHalf,
    /// Cleared by the reader when the proxy drains or the connection ends.
    alive: Arc<AtomicBool>,
    /// The (generation, settings) last sent.
    sent: Option<(u64, Settings)>,
}

pub struct L7Proxy {
    control: PathBuf,
    hub: Arc<sluice_observer::server::Hub>,
    directory: Arc<RwLock<Directory>>,
    /// Wakes the agent's loop when the proxy goes (the next pass stops redirecting to it and
    /// starts another).
    wake: Arc<tokio::sync::Notify>,
    conn: Option<Connected>,
    last_attempt: Option<Instant>,
    /// Why the proxy is not running although L7 rules need it (status shows it).
    pub error: Option<String>,
}

fn needs_proxy(view: &PolicyView) -> bool {
    view.endpoints.iter().any(|e| {
        [&e.policy.ingress, &e.policy.egress].iter().any(|d| d.rules.iter().any(|r| r.action == Action::Proxy))
    })
}

fn settings(cfg: &L7Config) -> Settings {
    Settings {
        flow_headers: cfg.flow_headers.clone(),
        max_header_bytes: cfg.max_header_bytes,
        header_timeout_s: cfg.header_timeout_s,
        max_connections: cfg.max_connections,
        drain_timeout_s: cfg.drain_timeout_s,
    }
}

impl L7Proxy {
    pub fn new(
        control: PathBuf,
        hub: Arc<sluice_observer::server::Hub>,
        directory: Arc<RwLock<Directory>>,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        L7Proxy { control, hub, directory, wake, conn: None, last_attempt: None, error: None }
    }

    fn live(&self) -> Option<&Connected> {
        self.conn.as_ref().filter(|c| c.alive.load(Ordering::Relaxed))
    }

    /// The port `Proxy` rules redirect to, while a proxy is connected.
    pub fn port(&self) -> Option<u16> {
        self.live().map(|c| c.port)
    }

    /// For `sluice status`, while connected.
    pub fn status(&self) -> Option<crate::api::types::L7ProxyStatus> {
        self.live().map(|c| crate::api::types::L7ProxyStatus {
            pid: c.pid,
            port: c.port,
            control: self.control.display().to_string(),
        })
    }

    /// The proxy's listening socket, while connected.
    pub fn listener(&self) -> Option<BorrowedFd<'_>> {
        self.live().map(|c| c.listener.as_fd())
    }

    /// After each pass: hand the proxy the new view; connect to it (starting it where nothing
    /// answers) when L7 rules need it. `true` when it was connected now (the caller runs
    /// another pass to redirect to it).
    pub async fn after_pass(&mut self, view: &PolicyView, cfg: &L7Config) -> bool {
        if self.conn.as_ref().is_some_and(|c| !c.alive.load(Ordering::Relaxed)) {
            let c = self.conn.take();
            tracing::warn!(pid = c.map(|c| c.pid), "L7 proxy went away (drained or exited): its redirects go");
        }
        let needed = needs_proxy(view);
        if needed && !cfg.enabled {
            self.conn = None;
            self.error = Some("l7.enabled is false: ports with HTTP rules let nothing through".into());
            return false;
        }
        let mut connected_now = false;
        if needed && self.conn.is_none() && self.last_attempt.is_none_or(|t| t.elapsed() >= RETRY) {
            self.last_attempt = Some(Instant::now());
            match self.connect(cfg).await {
                Ok(c) => {
                    tracing::info!(pid = c.pid, port = c.port, control = %self.control.display(), "L7 proxy connected");
                    self.conn = Some(c);
                    self.error = None;
                    connected_now = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "L7 proxy not running: ports with HTTP rules let nothing through");
                    self.error = Some(format!("{e:#}"));
                }
            }
        }
        if let Some(c) = self.conn.as_mut() {
            let want = (view.generation, settings(cfg));
            if c.sent.as_ref() != Some(&want) {
                let msg = ToProxyRef::View { view, settings: &want.1 };
                match control::write(&mut c.writer, &msg).await {
                    Ok(()) => c.sent = Some(want),
                    Err(e) => {
                        tracing::warn!(error = %e, "L7 proxy: sending the policy view failed");
                        c.alive.store(false, Ordering::Relaxed);
                        return false;
                    }
                }
            }
        }
        connected_now
    }

    async fn connect(&self, cfg: &L7Config) -> anyhow::Result<Connected> {
        use anyhow::Context;
        // The policy routing that delivers marked packets locally (TPROXY, the eBPF redirect).
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        sluice_iptables::l7_route::ensure(&handle).await?;
        let stream = match UnixStream::connect(&self.control).await {
            Ok(s) => s,
            Err(_) => {
                self.spawn(cfg.proxy_port)?;
                let t0 = Instant::now();
                loop {
                    match UnixStream::connect(&self.control).await {
                        Ok(s) => break s,
                        Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                            return Err(e).with_context(|| {
                                format!("the started proxy did not answer on {} within 10 s", self.control.display())
                            });
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        };
        let (pid, port, listener) = control::recv_hello(&stream, Duration::from_secs(5))
            .await
            .with_context(|| format!("the L7 proxy's hello on {}", self.control.display()))?;
        let (rd, writer) = stream.into_split();
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(read_records(rd, alive.clone(), self.wake.clone(), self.hub.clone(), self.directory.clone()));
        Ok(Connected { pid, port, listener, writer, alive, sent: None })
    }

    /// `sluice proxy` from this binary, in its own process group (it outlives the agent); its
    /// logs go where the agent's go.
    fn spawn(&self, port: u16) -> anyhow::Result<()> {
        use anyhow::Context;
        let exe = std::env::current_exe().context("finding the sluice binary to start the L7 proxy")?;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("proxy")
            .arg("--control")
            .arg(&self.control)
            .arg("--port")
            .arg(port.to_string())
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().with_context(|| format!("starting {} proxy", exe.display()))?;
        tracing::info!(pid = child.id(), "L7 proxy started");
        // Reaped here while the agent runs (reparented when the agent goes).
        tokio::spawn(async move {
            if let Ok(st) = child.wait().await {
                tracing::warn!(status = %st, "L7 proxy exited");
            }
        });
        Ok(())
    }
}

/// The proxy's messages: each request it handled becomes Hubble's L7 flows (request, and
/// response unless refused) in this node's flow buffer and metrics; a drain or the end of the
/// connection ends this proxy's use.
async fn read_records(
    rd: tokio::net::unix::OwnedReadHalf,
    alive: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    hub: Arc<sluice_observer::server::Hub>,
    directory: Arc<RwLock<Directory>>,
) {
    // Records come in batches: read them through a buffer, not two reads a frame.
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    loop {
        match control::read::<FromProxy>(&mut rd).await {
            Ok(Some(FromProxy::Record(r))) => record(*r, &hub, &directory),
            Ok(Some(FromProxy::Hello { .. })) => {}
            Ok(Some(FromProxy::Draining)) => {
                // Records of the requests it finishes still come, until the connection ends.
                alive.store(false, Ordering::Relaxed);
                wake.notify_one();
            }
            Ok(None) | Err(_) => {
                alive.store(false, Ordering::Relaxed);
                wake.notify_one();
                return;
            }
        }
    }
}

fn record(r: RequestRecord, hub: &sluice_observer::server::Hub, directory: &RwLock<Directory>) {
    let o = ObservedHttp {
        time_ns: r.time_ns,
        ingress: r.ingress,
        client: (*r.client.ip(), r.client.port()),
        server: (*r.server.ip(), r.server.port()),
        method: r.method,
        url: r.url,
        protocol: r.protocol,
        code: r.code.unwrap_or(502),
        latency_ns: r.latency.as_nanos() as u64,
        allowed_by: if r.denied_by.is_some() { Vec::new() } else { r.checked_by.clone() },
        denied_by: r.denied_by,
        request_headers: r.request_headers,
        response_headers: r.response_headers,
    };
    let flows = match directory.read() {
        Ok(d) => d.http(&o),
        Err(_) => return,
    };
    hub.push(flows);
}
