//! Transparent sockets: the listener TPROXY hands connections to, and upstream connections
//! opened from the client's address (IP_TRANSPARENT lets a socket use an address that is not
//! the node's; the replies come back to it by the `-m socket --transparent` mark).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

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

/// Connect to `dst` from `client`'s address (any port), or from the node's (`None`).
pub async fn connect_as(client: Option<Ipv4Addr>, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    if let Some(client) = client {
        setsockopt(&s, sockopt::IpTransparent, &true)?;
        // The port is picked at connect, unique per 4-tuple: a bind to port 0 would need a port
        // free of every socket of that address, and thousands of TIME_WAITs of the client's
        // earlier connections make that search slow, then fail.
        setsockopt(&s, sockopt::IpBindAddressNoPort, &true)?;
        s.bind(SocketAddr::V4(SocketAddrV4::new(client, 0)))?;
    }
    let stream = s.connect(SocketAddr::V4(dst)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
