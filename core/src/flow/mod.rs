//! Flow records: what the datapath saw, in Hubble's shape (so the Observer API, `sluice observe`,
//! the metrics and the service map all read one type), plus the pure parts that serve them: the
//! filter semantics of `GetFlows` ([`filter`]) and the per-node ring of recent flows whose
//! losses are counted, never silent ([`ring`]).
//!
//! Enum discriminants are Hubble's wire numbers (flow.proto): a record converts to the protobuf
//! message field by field. Nothing here does I/O; the backends produce records, the agent serves
//! them.

pub mod compact;
pub mod drop;
pub mod enrich;
pub mod filter;
pub mod graph;
pub mod l7;
pub mod metrics;
pub mod ring;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// What happened to the packet or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(i32)]
pub enum Verdict {
    Forwarded = 1,
    Dropped = 2,
    Error = 3,
    /// Would have been dropped by policy (audit mode).
    Audit = 4,
    Redirected = 5,
    Traced = 6,
    Translated = 7,
}

/// The monitor event a flow came from (Hubble's `event_type.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(i32)]
pub enum EventKind {
    Drop = 1,
    Trace = 4,
    PolicyVerdict = 5,
    /// Socket-LB translation (Hubble's trace-sock).
    TraceSock = 7,
    L7 = 129,
}

/// Where a trace was observed (Hubble's TraceObservationPoint; the trace event's sub_type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(i32)]
pub enum ObservationPoint {
    ToHost = 2,
    ToStack = 3,
    FromEndpoint = 5,
    FromHost = 7,
    FromStack = 8,
    FromNetwork = 10,
    ToNetwork = 11,
    ToEndpoint = 101,
}

/// Why a packet was dropped (Hubble's DropReason numbers; only those sluice's datapaths emit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(i32)]
pub enum DropReason {
    /// No policy rule allowed it (default deny of a selected pod).
    PolicyDenied = 133,
    InvalidPacketDropped = 134,
    UnknownL4Protocol = 142,
    ServiceBackendNotFound = 158,
    FibLookupFailed = 169,
    /// A LoadBalancer's `loadBalancerSourceRanges` refused the client.
    DeniedByLbSrcRangeCheck = 177,
    SocketLookupFailed = 178,
    /// An explicit deny rule matched.
    PolicyDeny = 181,
}

/// `Self::ALL` and the variant with a given wire number.
macro_rules! wire_enum {
    ($t:ty, [$($v:ident),+ $(,)?]) => {
        impl $t {
            pub const ALL: &'static [$t] = &[$(<$t>::$v),+];

            /// The variant whose wire number is `n` (None: not one this build knows).
            pub fn from_number(n: i32) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| *v as i32 == n)
            }
        }
    };
}

wire_enum!(Verdict, [Forwarded, Dropped, Error, Audit, Redirected, Traced, Translated]);
wire_enum!(EventKind, [Drop, Trace, PolicyVerdict, TraceSock, L7]);
wire_enum!(ObservationPoint, [ToHost, ToStack, FromEndpoint, FromHost, FromStack, FromNetwork, ToNetwork, ToEndpoint]);
wire_enum!(
    DropReason,
    [
        PolicyDenied,
        InvalidPacketDropped,
        UnknownL4Protocol,
        ServiceBackendNotFound,
        FibLookupFailed,
        DeniedByLbSrcRangeCheck,
        SocketLookupFailed,
        PolicyDeny,
    ]
);
wire_enum!(TrafficDirection, [Unknown, Ingress, Egress]);

impl DropReason {
    /// Hubble's enum name (the `reason` label of `hubble_drop_total`).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::PolicyDenied => "POLICY_DENIED",
            DropReason::InvalidPacketDropped => "INVALID_PACKET_DROPPED",
            DropReason::UnknownL4Protocol => "UNKNOWN_L4_PROTOCOL",
            DropReason::ServiceBackendNotFound => "SERVICE_BACKEND_NOT_FOUND",
            DropReason::FibLookupFailed => "FIB_LOOKUP_FAILED",
            DropReason::DeniedByLbSrcRangeCheck => "DENIED_BY_LB_SRC_RANGE_CHECK",
            DropReason::SocketLookupFailed => "SOCKET_LOOKUP_FAILED",
            DropReason::PolicyDeny => "POLICY_DENY",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(i32)]
pub enum TrafficDirection {
    #[default]
    #[serde(rename = "TRAFFIC_DIRECTION_UNKNOWN")]
    Unknown = 0,
    Ingress = 1,
    Egress = 2,
}

/// TCP header flags seen on the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct TcpFlags {
    pub fin: bool,
    pub syn: bool,
    pub rst: bool,
    pub psh: bool,
    pub ack: bool,
    pub urg: bool,
}

impl TcpFlags {
    /// From the TCP header's flag byte.
    pub fn from_byte(b: u8) -> Self {
        TcpFlags {
            fin: b & 0x01 != 0,
            syn: b & 0x02 != 0,
            rst: b & 0x04 != 0,
            psh: b & 0x08 != 0,
            ack: b & 0x10 != 0,
            urg: b & 0x20 != 0,
        }
    }

    /// Hubble's names of the set flags, in header order (`SYN`, `ACK`, ...).
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.fin, "FIN"),
            (self.syn, "SYN"),
            (self.rst, "RST"),
            (self.psh, "PSH"),
            (self.ack, "ACK"),
            (self.urg, "URG"),
        ]
        .into_iter()
        .filter_map(|(set, n)| set.then_some(n))
        .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L4 {
    Tcp { source_port: u16, destination_port: u16, flags: TcpFlags },
    Udp { source_port: u16, destination_port: u16 },
    Icmpv4 { r#type: u8, code: u8 },
}

impl L4 {
    /// The protocol name `--protocol` and the metrics use.
    pub fn protocol(&self) -> &'static str {
        match self {
            L4::Tcp { .. } => "TCP",
            L4::Udp { .. } => "UDP",
            L4::Icmpv4 { .. } => "ICMPv4",
        }
    }

    pub fn ports(&self) -> Option<(u16, u16)> {
        match *self {
            L4::Tcp { source_port, destination_port, .. } | L4::Udp { source_port, destination_port } => {
                Some((source_port, destination_port))
            }
            L4::Icmpv4 { .. } => None,
        }
    }
}

/// One side of a flow. For pods: the pod, its namespace, identity and labels; for anything else
/// a reserved identity and a `reserved:` label (world, host, remote-node), as Hubble shows them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Endpoint {
    /// Local endpoint id (0 when not a local pod).
    pub id: u32,
    /// Security identity (non-zero on pod endpoints).
    pub identity: u32,
    pub namespace: String,
    pub pod_name: String,
    /// `k8s:key=value`, sorted.
    pub labels: Vec<String>,
    /// The owning workload (Deployment, DaemonSet, ...), when known.
    pub workload: Option<Workload>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

/// The policies that decided a verdict: allowed by these, or denied by these. A drop is never
/// unattributed: a default deny names the policies selecting the pod (`default deny: policy X
/// selects this pod`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PolicyMatch {
    pub allowed_by: Vec<String>,
    pub denied_by: Vec<String>,
}

/// One flow event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Wall-clock nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub verdict: Verdict,
    pub drop_reason: Option<DropReason>,
    pub event: EventKind,
    /// Trace events only.
    pub observation: Option<ObservationPoint>,
    pub source_ip: Ipv4Addr,
    pub destination_ip: Ipv4Addr,
    pub l4: Option<L4>,
    pub source: Endpoint,
    pub destination: Endpoint,
    pub node_name: String,
    pub direction: TrafficDirection,
    /// None: not known whether this packet is a reply.
    pub is_reply: Option<bool>,
    pub source_service: Option<ServiceRef>,
    /// The Service whose frontend was translated to `destination_ip`.
    pub destination_service: Option<ServiceRef>,
    pub policy: PolicyMatch,
    /// L7 flows (the proxy's HTTP requests and responses) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<l7::L7>,
    /// Socket-LB translations (trace-sock flows) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sock: Option<SockXlate>,
}

/// Where socket LB translated (Hubble's SocketTranslationPoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(i32)]
pub enum SockXlatePoint {
    /// Before the frontend was translated.
    PreDirectionFwd = 1,
    /// After: the destination is the backend.
    PostDirectionFwd = 2,
    PreDirectionRev = 3,
    PostDirectionRev = 4,
}

wire_enum!(SockXlatePoint, [PreDirectionFwd, PostDirectionFwd, PreDirectionRev, PostDirectionRev]);

impl SockXlatePoint {
    /// How `hubble observe` names the point.
    pub fn name(self) -> &'static str {
        match self {
            SockXlatePoint::PreDirectionFwd => "pre-xlate-fwd",
            SockXlatePoint::PostDirectionFwd => "post-xlate-fwd",
            SockXlatePoint::PreDirectionRev => "pre-xlate-rev",
            SockXlatePoint::PostDirectionRev => "post-xlate-rev",
        }
    }
}

/// A socket-LB translation of one socket, before any packet exists: the socket has no source
/// address yet (the flow's `source_ip` is unspecified), only its cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SockXlate {
    pub point: SockXlatePoint,
    pub socket_cookie: u64,
}

impl Flow {
    /// Hubble's `event_type.sub_type`: the observation point of a trace, the drop reason of a drop.
    pub fn sub_type(&self) -> i32 {
        match self.event {
            EventKind::Trace => self.observation.map_or(0, |o| o as i32),
            EventKind::Drop => self.drop_reason.map_or(0, |r| r as i32),
            _ => 0,
        }
    }

    /// Hubble's flow `Type`: 1 (L3_L4), 2 (L7) or 3 (SOCK).
    pub fn flow_type(&self) -> i32 {
        match self.event {
            EventKind::L7 => 2,
            EventKind::TraceSock => 3,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests;
