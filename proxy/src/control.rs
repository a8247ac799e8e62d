//! The control socket between the agent and its node's proxy process (`sluice proxy`): a
//! root-only unix stream socket carrying length-prefixed JSON frames (a little-endian u32 length,
//! then the message).
//!
//! A connection goes: the proxy sends [`FromProxy::Hello`] with its listening socket attached
//! (SCM_RIGHTS: the eBPF backend puts that socket in its sockmap); the agent sends a
//! [`ToProxy::View`] and a new one whenever its policy view changes; the proxy then sends a
//! [`FromProxy::Record`] for each request it handled. One agent at a time: a new connection
//! replaces the previous one (a restarted agent). The proxy keeps the last view when the agent
//! goes, as the kernel keeps the last policy maps.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::policy::PolicyView;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::RequestRecord;

/// Frames larger than this are refused (a policy view of 10,000 pods is well under 10 MiB).
pub const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum ToProxy {
    /// The node's policy view and the proxy's settings (`l7` in the agent's config).
    View { view: Box<PolicyView>, settings: Settings },
    /// Drain and exit (`sluice cleanup`).
    Stop,
}

/// [`ToProxy::View`] as the agent sends it: the same frame, serialized from borrowed parts (no
/// copy of a view of thousands of pods per change).
#[derive(Debug, Serialize)]
pub enum ToProxyRef<'a> {
    View { view: &'a PolicyView, settings: &'a Settings },
}

/// What the agent's `l7` config says to a running proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Header names recorded in flows.
    pub flow_headers: Vec<String>,
    pub max_header_bytes: usize,
    pub header_timeout_s: u64,
    /// Taken from the first view only: the connection limit is fixed while the proxy runs.
    pub max_connections: usize,
    /// How long the proxy drains on SIGTERM or [`ToProxy::Stop`].
    pub drain_timeout_s: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FromProxy {
    /// The first frame of a connection, sent with the listening socket attached.
    Hello {
        pid: u32,
        port: u16,
    },
    Record(Box<RequestRecord>),
    /// The proxy stopped accepting and finishes what it holds: the agent closes its copy of the
    /// listener and starts the next proxy.
    Draining,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the L7 proxy's control socket: {0}")]
    Io(std::io::Error),
    #[error("control frame of {len} bytes (at most {MAX_FRAME})")]
    TooLarge { len: usize },
    #[error("control frame: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the proxy's hello came without its listening socket")]
    NoSocket,
    #[error("the proxy sent no hello within {0:?}")]
    Timeout(Duration),
}

fn io(source: std::io::Error) -> ControlError {
    ControlError::Io(source)
}

fn frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ControlError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(ControlError::TooLarge { len: body.len() });
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// `msg` as a frame at the end of `buf` (frames written together in one write).
pub fn append<T: Serialize>(buf: &mut Vec<u8>, msg: &T) -> Result<(), ControlError> {
    buf.extend_from_slice(&frame(msg)?);
    Ok(())
}

pub async fn write<T: Serialize>(w: &mut (impl AsyncWrite + Unpin), msg: &T) -> Result<(), ControlError> {
    w.write_all(&frame(msg)?).await.map_err(io)
}

/// The next frame; `None` at the end of the stream.
pub async fn read<T: for<'de> Deserialize<'de>>(r: &mut (impl AsyncRead + Unpin)) -> Result<Option<T>, ControlError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io(e)),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ControlError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(io)?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// The proxy's side: the hello frame with `listener` attached, in one message (the agent reads
/// nothing else until it answers, so the hello arrives alone).
pub async fn send_hello(s: &UnixStream, hello: &FromProxy, listener: RawFd) -> Result<(), ControlError> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let bytes = frame(hello)?;
    let mut sent = 0;
    while sent < bytes.len() {
        s.writable().await.map_err(io)?;
        let fds = [listener];
        // The socket rides with the first bytes only.
        let cmsgs = if sent == 0 { vec![ControlMessage::ScmRights(&fds)] } else { Vec::new() };
        let r = s.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(&bytes[sent..])];
            sendmsg::<()>(s.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None).map_err(std::io::Error::from)
        });
        match r {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io(e)),
        }
    }
    Ok(())
}

/// The agent's side: the hello and the proxy's listening socket.
pub async fn recv_hello(s: &UnixStream, timeout: Duration) -> Result<(u32, u16, OwnedFd), ControlError> {
    tokio::time::timeout(timeout, recv_hello_now(s)).await.map_err(|_| ControlError::Timeout(timeout))?
}

async fn recv_hello_now(s: &UnixStream) -> Result<(u32, u16, OwnedFd), ControlError> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = Vec::new();
    let mut fd: Option<OwnedFd> = None;
    loop {
        s.readable().await.map_err(io)?;
        let mut chunk = [0u8; 4096];
        let r = s.try_io(tokio::io::Interest::READABLE, || {
            let mut cmsg = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [std::io::IoSliceMut::new(&mut chunk)];
            let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(std::io::Error::from)?;
            let mut got = Vec::new();
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    got.extend(fds);
                }
            }
            Ok((msg.bytes, got))
        });
        let (n, fds) = match r {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io(e)),
        };
        for raw in fds {
            // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
            fd.get_or_insert(owned);
        }
        if n == 0 {
            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= 4 {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > MAX_FRAME {
                return Err(ControlError::TooLarge { len });
            }
            if buf.len() >= 4 + len {
                let FromProxy::Hello { pid, port } = serde_json::from_slice(&buf[4..4 + len])? else {
                    return Err(ControlError::NoSocket);
                };
                return Ok((pid, port, fd.ok_or(ControlError::NoSocket)?));
            }
        }
    }
}

/// Tell the proxy on `path` to drain and exit (`sluice cleanup`; the caller names `path` in its
/// errors). `false`: nothing answered.
pub async fn stop(path: &std::path::Path) -> Result<bool, ControlError> {
    let Ok(s) = UnixStream::connect(path).await else { return Ok(false) };
    // Its hello comes first (the listener attached: closed here at once).
    recv_hello(&s, Duration::from_secs(5)).await?;
    let (_, mut w) = s.into_split();
    write(&mut w, &ToProxy::Stop).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn the_hello_carries_the_listener_and_frames_follow_it() {
        let (a, b) = UnixStream::pair().expect("pair");
        // Any descriptor travels; a pipe's read end stands for the listener.
        let (pipe_r, pipe_w) = nix::unistd::pipe().expect("pipe");
        send_hello(&a, &FromProxy::Hello { pid: 42, port: 15001 }, pipe_r.as_raw_fd()).await.expect("send");
        let (pid, port, fd) = recv_hello(&b, Duration::from_secs(2)).await.expect("hello");
        assert_eq!((pid, port), (42, 15001));
        // The received descriptor is the same pipe: what is written to its other end reads here.
        nix::unistd::write(pipe_w.as_fd(), b"x").expect("write");
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(fd.as_fd(), &mut buf).expect("read"), 1);
        let (mut ar, mut aw) = a.into_split();
        let (mut br, mut bw) = b.into_split();
        let view = PolicyView { generation: 9, ..Default::default() };
        let settings = Settings {
            flow_headers: vec!["X-Team".into()],
            max_header_bytes: 8192,
            header_timeout_s: 1,
            max_connections: 2,
            drain_timeout_s: 3,
        };
        // The agent sends borrowed parts; the proxy reads the owned message.
        write(&mut bw, &ToProxyRef::View { view: &view, settings: &settings }).await.expect("w");
        match read::<ToProxy>(&mut ar).await.expect("read") {
            Some(ToProxy::View { view: v, settings: s }) => assert_eq!((*v, s), (view, settings)),
            other => panic!("{other:?}"),
        }
        write(&mut aw, &FromProxy::Draining).await.expect("w");
        drop(aw);
        assert!(matches!(read::<FromProxy>(&mut br).await, Ok(Some(FromProxy::Draining))));
        assert!(matches!(read::<FromProxy>(&mut br).await, Ok(None)), "the end of the stream");
    }

    #[tokio::test]
    async fn a_hello_without_a_socket_and_oversized_frames_are_refused() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (_, mut aw) = a.into_split();
        write(&mut aw, &FromProxy::Hello { pid: 1, port: 1 }).await.expect("w");
        assert!(matches!(recv_hello(&b, Duration::from_secs(2)).await, Err(ControlError::NoSocket)));
        let (c, d) = UnixStream::pair().expect("pair");
        let (_, mut cw) = c.into_split();
        tokio::io::AsyncWriteExt::write_all(&mut cw, &u32::MAX.to_le_bytes()).await.expect("w");
        let (mut dr, _) = d.into_split();
        assert!(matches!(read::<ToProxy>(&mut dr).await, Err(ControlError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn nothing_answering_is_not_an_error_for_stop() {
        let dir = std::env::temp_dir().join(format!("sluice-control-test-{}", std::process::id()));
        assert!(!stop(&dir.join("none.sock")).await.expect("stop"));
    }
}
