//! sluice's node-local L7 proxy. Connections reach it by netfilter TPROXY (the iptables
//! backend's `l7` chains): the accepted socket's local address is the connection's original
//! destination and its peer the client, as the kernel saw them, never as the client claims.
//! For each connection the agent's [`Decide`] says whether it may be served at all and which
//! HTTP rules its requests must pass; each request that passes is forwarded over one upstream
//! connection per downstream connection, opened from the client's own address (a transparent
//! socket), so the destination's own policy sees the real client. A request no rule matches
//! gets `403` naming the policies; bodies stream both ways.
//!
//! HTTP/1.1 (keep-alive) and HTTP/2 without TLS (prior knowledge, h2c) are served, each
//! forwarded in the protocol it came in. Header size and the time to send them are limited
//! (slowloris), and so is the number of connections.

pub mod control;
pub mod process;
mod serve;
mod socket;
mod view;

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::policy::HttpMatcher;

pub use serve::{run, run_until};
pub use socket::{bind, bind_transparent};
pub use view::PolicyDecide;

/// One set of HTTP rules a request must pass, and whose they are (the 403 names them).
#[derive(Clone)]
pub struct Check {
    pub matcher: Arc<HttpMatcher>,
    /// `Kind ns/name` of each policy behind the rules.
    pub policies: Vec<String>,
    /// The server's ingress rules (else the client's egress rules): who reports the request.
    pub ingress: bool,
}

/// What the proxy may do with a connection.
#[derive(Clone)]
pub enum Verdict {
    /// Serve HTTP: a request is forwarded when every check passes it (the source's egress rules
    /// and the destination's ingress rules, where each has L7 rules on this node).
    Http {
        checks: Vec<Check>,
        /// Where passing requests go: the original destination.
        upstream: SocketAddrV4,
        /// The address upstream connections come from: the client's own (transparent), or
        /// `None` for the node's.
        source: Option<std::net::Ipv4Addr>,
        /// Header names (lowercase) whose values go into the records.
        record_headers: Arc<[String]>,
    },
    /// Close it at once: L3/L4 policy does not allow it, or nothing here knows it (fails closed).
    Refuse { reason: String },
}

/// The agent's policy, as the proxy asks it (kept current by the agent): decided when a
/// connection is accepted, and again for its next request whenever the policy changed.
pub trait Decide: Send + Sync + 'static {
    fn decide(&self, client: SocketAddrV4, original_dst: SocketAddrV4) -> Verdict;

    /// Changes whenever the policy does (the view's generation).
    fn generation(&self) -> u64 {
        0
    }

    /// The checks for a connection already forwarded to `upstream`, under the current policy;
    /// `Err(reason)` when L3/L4 policy no longer allows it.
    fn recheck(&self, client: SocketAddrV4, upstream: SocketAddrV4) -> Result<Vec<Check>, String> {
        match self.decide(client, upstream) {
            Verdict::Http { checks, .. } => Ok(checks),
            Verdict::Refuse { reason } => Err(reason),
        }
    }
}

/// One request as it was decided and answered (the agent turns these into L7 flows).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RequestRecord {
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
    pub method: String,
    pub url: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// `None`: the upstream failed before answering (502 sent).
    pub code: Option<u16>,
    pub latency: Duration,
    /// Refused by policy (403 sent, nothing forwarded): the policies that had rules for it.
    pub denied_by: Option<Vec<String>>,
    /// The policies whose HTTP rules were checked (and passed, unless `denied_by`).
    pub checked_by: Vec<String>,
    /// The request's and the response's headers named in `record_headers`.
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    /// When the request arrived (wall clock, ns since the epoch).
    pub time_ns: u64,
    /// Decided by the server's ingress rules (the refusing ones when denied); else the client's
    /// egress rules.
    pub ingress: bool,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (bytes); more gets 431.
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Open downstream connections at most; more are closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_header_bytes: 64 * 1024, header_timeout: Duration::from_secs(10), max_connections: 10_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "binding the L7 proxy's transparent listener on 127.0.0.1:{port}: {source} (needs CAP_NET_ADMIN; pick a free port with l7.proxy_port)"
    )]
    Bind { port: u16, source: std::io::Error },
}
