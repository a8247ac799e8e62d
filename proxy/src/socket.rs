//! Transparent sockets: the listener TPROXY hands connections to, and upstream connections
//! opened from the client's address (IP_TRANSPARENT lets a socket use an address that is not
//! the node's; the replies come back to it by the `-m socket --transparent` mark).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::ProxyError;

/// Listen on 127.0.0.1:`port` (loopback only: TPROXY delivers to it, nothing else reaches it).
pub fn bind_transparent(port: u16) -> Result<TcpListener, ProxyError> {
    listen(port, true)
}

/// A plain loopback listener (no TPROXY in front: the proxy's own tests). Port 0: any.
pub fn bind(port: u16) -> Result<TcpListener, ProxyError> {
    listen(port, false)
}

fn listen(port: u16, transparent: bool) -> Result<TcpListener, ProxyError> {
    let err = |source| ProxyError::Bind { port, source };
    let s = TcpSocket::new_v4().map_err(err)?;
    if transparent {
        setsockopt(&s, sockopt::IpTransparent, &true).map_err(|e| err(e.into()))?;
    }
    s.set_reuseaddr(true).map_err(err)?;
    s.bind(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))).map_err(err)?;
    s.listen(1024).map_err(err)
}

/// Upstream source ports: above the kernel's default ephemeral range (32768-60999). The client
/// picks its own ports from that range with the same connect-time hash the kernel would use
/// here, so a port chosen by the kernel for the client's address collides with the client's
/// own connections to the same destination (one conntrack tuple for two connections).
const UPSTREAM_PORT_LO: u16 = 61000;
const UPSTREAM_PORTS: u16 = 4535;
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// Connect to `dst` from `client`'s address (a port of [`UPSTREAM_PORT_LO`]..), or from the
/// node's (`None`).
pub async fn connect_as(client: Option<Ipv4Addr>, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    let Some(client) = client else {
        let stream = TcpSocket::new_v4()?.connect(SocketAddr::V4(dst)).await?;
        stream.set_nodelay(true)?;
        return Ok(stream);
    };
    let mut last = std::io::Error::from(std::io::ErrorKind::AddrInUse);
    for _ in 0..16 {
        // In turn through the range: a port comes back only after every other one was taken.
        let port = UPSTREAM_PORT_LO + (NEXT_PORT.fetch_add(1, Ordering::Relaxed) % u32::from(UPSTREAM_PORTS)) as u16;
        let s = TcpSocket::new_v4()?;
        setsockopt(&s, sockopt::IpTransparent, &true)?;
        s.set_reuseaddr(true)?;
        if let Err(e) = s.bind(SocketAddr::V4(SocketAddrV4::new(client, port))) {
            last = e;
            continue;
        }
        match s.connect(SocketAddr::V4(dst)).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            // The tuple is still held (a TIME_WAIT of an earlier upstream): the next port.
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable || e.kind() == std::io::ErrorKind::AddrInUse => {
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}
