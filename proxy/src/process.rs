//! `sluice proxy`: the proxy as its own process, so that it outlives the agent (a crash, an
//! upgrade): the connections it holds go on, and new ones are decided by the last policy view
//! the agent sent, as the kernel keeps enforcing the last policy maps. The agent starts it when
//! nothing answers on the control socket (or it runs as its own container); see [`crate::control`].
//!
//! Until the first view arrives nothing is accepted (connections wait in the backlog; the agent
//! redirects to the proxy only after sending one). On SIGTERM, SIGINT or [`ToProxy::Stop`] it
//! drains: the control socket and the listener close first (the agent is told, closes its copy
//! of the listener and starts the next proxy), open connections finish the requests in flight,
//! for at most `drain_timeout_s`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, watch};

use crate::control::{self, FromProxy, Settings, ToProxy};
use crate::{Limits, PolicyDecide, ProxyError, RequestRecord};

#[derive(Debug, Clone)]
pub struct Options {
    /// The control socket (created root-only).
    pub control: PathBuf,
    /// The listener's port on 127.0.0.1.
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "creating the control socket {path}: {source} (its directory must be writable by root; choose another with l7.control_socket or --control)"
    )]
    Control { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Bind(#[from] ProxyError),
    #[error("installing the signal handlers: {0}")]
    Signal(std::io::Error),
}

/// Run the proxy until it is told to stop and has drained.
pub async fn run(opts: Options) -> Result<(), ProcessError> {
    let path = opts.control.clone();
    // Another proxy answers (the agent's own, started before this container): this one takes
    // over once that one goes (drains, or its container stops).
    let mut said = false;
    while UnixStream::connect(&path).await.is_ok() {
        if !said {
            tracing::info!(control = %path.display(), "another L7 proxy answers on the control socket: waiting for it to go");
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let control_err = |source| ProcessError::Control { path: path.clone(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(control_err)?;
    }
    // A stale socket file of a proxy that died (nothing answered above).
    let _ = std::fs::remove_file(&path);
    // Root-only: the socket file is created 0600.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let control = UnixListener::bind(&path).map_err(control_err)?;
    let listener = bind_retrying(opts.port).await?;
    let dup = listener.as_fd().try_clone_to_owned().map_err(|source| ProxyError::Bind { port: opts.port, source })?;
    let listener_copy = Arc::new(Mutex::new(Some(dup)));
    let decide = Arc::new(PolicyDecide::default());
    let (settings_tx, mut settings) = watch::channel::<Option<Settings>>(None);
    let stop = Arc::new(Notify::new());
    let (records_tx, records_rx) = mpsc::channel::<RequestRecord>(4096);
    let (agents_tx, agents_rx) = mpsc::channel::<OwnedWriteHalf>(4);
    let (draining_tx, draining_rx) = watch::channel(false);
    tokio::spawn(forward(records_rx, agents_rx, draining_rx));
    let agents = Agents {
        listener: listener_copy.clone(),
        port: opts.port,
        decide: decide.clone(),
        settings: settings_tx,
        stop: stop.clone(),
        to_forward: agents_tx,
    };
    let accepting = tokio::spawn(agents.accept(control));
    tracing::info!(port = opts.port, control = %path.display(), pid = std::process::id(), "L7 proxy up, waiting for the agent's policy view");

    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(ProcessError::Signal)?;
    let stop_wait = stop.clone();
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = stop_wait.notified() => {}
        }
    };
    tokio::pin!(shutdown);
    let first = tokio::select! {
        s = settings.wait_for(Option::is_some) => s.ok().and_then(|s| s.clone()),
        _ = &mut shutdown => None,
    };
    let Some(first) = first else {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    };
    let limits = Limits {
        max_header_bytes: first.max_header_bytes,
        header_timeout: Duration::from_secs(first.header_timeout_s),
        max_connections: first.max_connections,
    };
    tracing::info!(generation = ?decide.generation(), "L7 proxy serving");
    let drain_timeout = Arc::new(AtomicU64::new(first.drain_timeout_s));
    let dt = drain_timeout.clone();
    tokio::spawn(async move {
        while settings.changed().await.is_ok() {
            if let Some(s) = settings.borrow().as_ref() {
                dt.store(s.drain_timeout_s, Ordering::Relaxed);
            }
        }
    });
    let control_path = path.clone();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let on_stop = async move {
        shutdown.await;
        // Before the listener closes: nothing new reaches this proxy; the agent starts the next.
        let _ = std::fs::remove_file(&control_path);
        accepting.abort();
        listener_copy.lock().map(|mut l| l.take()).ok();
        let _ = draining_tx.send(true);
        let _ = drain_tx.send(());
    };
    let serving = crate::run_until(listener, decide, limits, Some(records_tx), on_stop);
    // The drain is bounded from the moment it starts; run_until returns once drained.
    let bound = async {
        match drain_rx.await {
            Ok(()) => tokio::time::sleep(Duration::from_secs(drain_timeout.load(Ordering::Relaxed))).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = serving => {}
        _ = bound => tracing::warn!("L7 proxy: connections still open after drain_timeout_s; closed"),
    }
    tracing::info!("L7 proxy stopped");
    Ok(())
}

/// The port may still be held for a moment by the proxy this one replaces (closing its listener
/// as it starts draining).
async fn bind_retrying(port: u16) -> Result<tokio::net::TcpListener, ProxyError> {
    let mut tries = 0;
    loop {
        match crate::bind_transparent(port) {
            Err(ProxyError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

struct Agents {
    listener: Arc<Mutex<Option<OwnedFd>>>,
    port: u16,
    decide: Arc<PolicyDecide>,
    settings: watch::Sender<Option<Settings>>,
    stop: Arc<Notify>,
    to_forward: mpsc::Sender<OwnedWriteHalf>,
}

impl Agents {
    async fn accept(self, control: UnixListener) {
        let me = Arc::new(self);
        loop {
            let s = match control.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "L7 proxy: accepting on the control socket failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let me = me.clone();
            tokio::spawn(async move {
                if let Err(e) = me.serve(s).await {
                    tracing::warn!(error = %e, "L7 proxy: agent connection ended");
                }
            });
        }
    }

    /// One agent's connection: hello with the listener, then its views.
    async fn serve(&self, s: UnixStream) -> Result<(), control::ControlError> {
        let raw = match self.listener.lock().ok().and_then(|l| l.as_ref().map(|l| l.as_raw_fd())) {
            Some(raw) => raw,
            None => return Ok(()), // draining
        };
        let hello = FromProxy::Hello { pid: std::process::id(), port: self.port };
        control::send_hello(&s, &hello, raw).await?;
        let (mut rd, wr) = s.into_split();
        let mut attached = Some(wr);
        while let Some(msg) = control::read::<ToProxy>(&mut rd).await? {
            match msg {
                ToProxy::View { view, settings } => {
                    tracing::debug!(generation = view.generation, "L7 proxy: new policy view");
                    self.decide.set(*view, &settings.flow_headers);
                    self.settings.send_replace(Some(settings));
                    // Records go to the agent that sent the latest view.
                    if let Some(wr) = attached.take() {
                        let _ = self.to_forward.send(wr).await;
                    }
                }
                ToProxy::Stop => {
                    tracing::info!("L7 proxy: told to stop");
                    self.stop.notify_one();
                }
            }
        }
        Ok(())
    }
}

/// Request records to the current agent, batched (one write per batch of up to
/// [`BATCH`] records or [`BATCH_WAIT`]: a syscall and a wake-up of the agent per request cost
/// the proxy a third of its CPU per request); dropped while no agent is connected (the flows of
/// that time are lost, never the requests). On the drain, the agent is told first.
async fn forward(
    mut records: mpsc::Receiver<RequestRecord>,
    mut agents: mpsc::Receiver<OwnedWriteHalf>,
    mut draining: watch::Receiver<bool>,
) {
    let mut agent: Option<OwnedWriteHalf> = None;
    let mut told = false;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let first = tokio::select! {
            a = agents.recv() => {
                agent = a;
                told = false;
                if agent.is_none() { return; }
                if !*draining.borrow() { continue; }
                FromProxy::Draining
            }
            r = records.recv() => match r {
                Some(r) => FromProxy::Record(Box::new(r)),
                None => return,
            },
            Ok(()) = draining.changed(), if !told => FromProxy::Draining,
        };
        if matches!(first, FromProxy::Draining) {
            told = true;
        }
        buf.clear();
        let _ = control::append(&mut buf, &first);
        if matches!(first, FromProxy::Record(_)) {
            let deadline = tokio::time::Instant::now() + BATCH_WAIT;
            for _ in 1..BATCH {
                match tokio::time::timeout_at(deadline, records.recv()).await {
                    Ok(Some(r)) => {
                        let _ = control::append(&mut buf, &FromProxy::Record(Box::new(r)));
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        if let Some(w) = agent.as_mut()
            && tokio::io::AsyncWriteExt::write_all(w, &buf).await.is_err()
        {
            agent = None;
        }
    }
}

/// Records per write to the agent, at most.
const BATCH: usize = 512;
/// How long a record waits for others to share its write.
const BATCH_WAIT: Duration = Duration::from_millis(20);
