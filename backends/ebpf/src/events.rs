//! Events the datapath sends to user space through the `sluice_events` ring buffer
//! (bpf/lib/layout.h): policy drops, audits and allow verdicts (`struct ev_drop`, written by
//! `pol_report` in bpf/lib/policy.h) naming the endpoint's host veth, the direction and the rule
//! that decided; traces of new connections at the pod veths and the node devices (`struct
//! ev_trace`, written by `trace_new` in bpf/lib/trace.h) with the Service translation; and
//! socket-LB translations of host processes' sockets (`struct ev_sock`, `trace_sock`); and
//! packets a Service frontend dropped (`struct ev_drop` of kind `EV_LB_DROP`, `lb_drop`).
//!
//! Parsing is pure ([`parse`]); [`EventReader`] opens the pinned ring and the per-CPU budget
//! maps by path, so a reader thread needs nothing of the loaded object. Events over the
//! datapath's budgets (or that found the ring full) are counted there, and the reader reports
//! them as lost: a loss is never silent.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use sluice_core::flow::drop::DroppedPacket;

use crate::datapath::DatapathError;

/// `EV_POLICY_DROP`.
pub const EV_POLICY_DROP: u8 = 1;
/// `EV_POLICY_AUDIT`: an audit-mode policy would have dropped the packet; it passed.
pub const EV_POLICY_AUDIT: u8 = 2;
/// `EV_TRACE`: a new connection seen at a pod veth.
pub const EV_TRACE: u8 = 3;
/// `EV_POLICY_ALLOW`: an allow rule admitted a new flow.
pub const EV_POLICY_ALLOW: u8 = 4;
/// `EV_TRACE_SOCK`: socket LB translated a host process's connection.
pub const EV_TRACE_SOCK: u8 = 5;
/// `EV_LB_DROP`: a Service frontend dropped the packet (no backend, source ranges).
pub const EV_LB_DROP: u8 = 6;
/// `EV_RULE_DEFAULT`: no rule matched, the endpoint's default deny dropped the packet.
pub const RULE_DEFAULT: u8 = 0xff;
/// `sizeof(struct ev_drop)`.
pub const EV_DROP_LEN: usize = 24;
/// `sizeof(struct ev_trace)`.
pub const EV_TRACE_LEN: usize = 28;
/// `sizeof(struct ev_sock)`.
pub const EV_SOCK_LEN: usize = 24;
pub const EVENTS_MAP: &str = "sluice_events";
pub const BUDGET_MAP: &str = "sluice_ev_budget";
pub const TRACE_BUDGET_MAP: &str = "sluice_trace_budget";

/// A packet a pod-veth program dropped for policy (or, `audit`, would have dropped for an
/// audit-mode policy; or, `allow`, a new flow an allow rule admitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyDrop {
    /// From the audit list: the packet passed.
    pub audit: bool,
    /// An allow rule's verdict: the packet passed.
    pub allow: bool,
    /// The endpoint's host-side veth.
    pub ifindex: u32,
    pub ingress: bool,
    /// The rule's index in the endpoint's lowered list; `None`: default deny.
    pub rule: Option<u8>,
    /// The packet's headers, as the program met them.
    pub packet: DroppedPacket,
}

/// Where a trace was taken (`TRACE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracePoint {
    /// Leaving a pod (its host veth's ingress), before Service translation.
    FromEndpoint,
    /// Entering a pod (its host veth's egress).
    ToEndpoint,
    /// Arriving on a node device for an external frontend (NodePort, ExternalIP, ...).
    FromNetwork,
    /// An external frontend's connection leaving for a backend on another node, SNATed.
    ToNetwork,
    /// A pod's connection entering the host stack, after Service translation
    /// (`NODE_F_TO_STACK`).
    ToStack,
}

/// A new connection a pod-veth program saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    pub point: TracePoint,
    /// The pod's host-side veth, or the node device (network points).
    pub ifindex: u32,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub sport: u16,
    /// The destination the packet carried (a Service frontend when translated).
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// The backend a frontend was translated to.
    pub translated_to: Option<(Ipv4Addr, u16)>,
    pub tcp_flags: u8,
}

/// A socket-LB translation: a host process's connect() (or first sendmsg() to a backend) to a
/// frontend, after translation (Hubble's post-xlate-fwd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockTrace {
    pub proto: u8,
    pub front: (Ipv4Addr, u16),
    pub backend: (Ipv4Addr, u16),
    pub cookie: u64,
}

/// A packet a Service frontend dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbDrop {
    /// At a node device (from outside), or at a pod's veth (the pod sending).
    pub at_device: bool,
    pub ifindex: u32,
    /// SERVICE_BACKEND_NOT_FOUND or DENIED_BY_LB_SRC_RANGE_CHECK (a number this build does not
    /// know makes the record unknown, not a guess).
    pub reason: sluice_core::flow::DropReason,
    /// The packet's headers, as the program met them.
    pub packet: DroppedPacket,
}

/// One record of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Policy(PolicyDrop),
    Trace(Trace),
    Sock(SockTrace),
    LbDrop(LbDrop),
}

fn ip(buf: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(buf[at], buf[at + 1], buf[at + 2], buf[at + 3])
}

fn port(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// The packet of a drop record (`struct ev_drop`: policy and Service drops share the layout).
fn drop_packet(buf: &[u8]) -> DroppedPacket {
    DroppedPacket {
        proto: buf[3],
        src: ip(buf, 8),
        dst: ip(buf, 12),
        sport: port(buf, 16),
        dport: port(buf, 18),
        tcp_flags: buf[20],
    }
}

/// One ring record; `None` for a kind this build does not know, or a short record.
pub fn parse(buf: &[u8]) -> Option<Event> {
    match *buf.first()? {
        EV_POLICY_DROP | EV_POLICY_AUDIT | EV_POLICY_ALLOW if buf.len() >= EV_DROP_LEN => {
            Some(Event::Policy(PolicyDrop {
                audit: buf[0] == EV_POLICY_AUDIT,
                allow: buf[0] == EV_POLICY_ALLOW,
                ifindex: u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
                ingress: u32::from(buf[1]) == crate::policy::POL_INGRESS,
                rule: (buf[2] != RULE_DEFAULT).then_some(buf[2]),
                packet: drop_packet(buf),
            }))
        }
        EV_TRACE if buf.len() >= EV_TRACE_LEN => {
            let point = match buf[1] {
                0 => TracePoint::FromEndpoint,
                1 => TracePoint::ToEndpoint,
                2 => TracePoint::FromNetwork,
                3 => TracePoint::ToNetwork,
                4 => TracePoint::ToStack,
                _ => return None,
            };
            let x = ip(buf, 20);
            Some(Event::Trace(Trace {
                point,
                ifindex: u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
                proto: buf[3],
                src: ip(buf, 8),
                sport: port(buf, 16),
                dst: ip(buf, 12),
                dport: port(buf, 18),
                translated_to: (!x.is_unspecified()).then(|| (x, port(buf, 24))),
                tcp_flags: buf[2],
            }))
        }
        EV_LB_DROP if buf.len() >= EV_DROP_LEN => Some(Event::LbDrop(LbDrop {
            at_device: buf[1] == 1,
            ifindex: u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
            reason: sluice_core::flow::DropReason::from_number(i32::from(buf[2]))?,
            packet: drop_packet(buf),
        })),
        // Only the post-translation point is written (SOCK_XLATE_POST_FWD).
        EV_TRACE_SOCK if buf.len() >= EV_SOCK_LEN && buf[1] == 2 => Some(Event::Sock(SockTrace {
            proto: buf[2],
            front: (ip(buf, 4), port(buf, 12)),
            backend: (ip(buf, 8), port(buf, 14)),
            cookie: u64::from_ne_bytes(buf[16..24].try_into().ok()?),
        })),
        _ => None,
    }
}

/// `struct ev_budget`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EvBudget {
    pub window_ns: u64,
    pub sent: u64,
    pub suppressed: u64,
}

// SAFETY: plain #[repr(C)] u64 fields; any bit pattern is valid.
unsafe impl aya::Pod for EvBudget {}

const _: () = assert!(std::mem::size_of::<EvBudget>() == 24);

/// The ring and the budget counters of one node's datapath, opened from its pin directory.
pub struct EventReader {
    ring: RingBuf<MapData>,
    /// The drops' budget and the traces'.
    budgets: Vec<PerCpuArray<MapData, EvBudget>>,
    suppressed_seen: u64,
}

fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Map, DatapathError> {
    let data = MapData::from_pin(pin_dir.join(name))
        .map_err(|e| DatapathError::Map { map: name, detail: format!("opening the pin: {e}") })?;
    Map::from_map_data(data).map_err(|e| DatapathError::Map { map: name, detail: e.to_string() })
}

impl EventReader {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let ring = RingBuf::try_from(open_pinned(pin_dir, EVENTS_MAP)?)
            .map_err(|e| DatapathError::Map { map: EVENTS_MAP, detail: e.to_string() })?;
        let mut budgets = Vec::new();
        for name in [BUDGET_MAP, TRACE_BUDGET_MAP] {
            budgets.push(
                PerCpuArray::try_from(open_pinned(pin_dir, name)?)
                    .map_err(|e| DatapathError::Map { map: name, detail: e.to_string() })?,
            );
        }
        let mut r = EventReader { ring, budgets, suppressed_seen: 0 };
        // Count only what is lost from now on.
        r.suppressed_seen = r.suppressed_total();
        Ok(r)
    }

    fn suppressed_total(&self) -> u64 {
        self.budgets
            .iter()
            .map(|m| m.get(&0, 0).map(|v| v.iter().map(|b| b.suppressed).sum::<u64>()).unwrap_or(0))
            .sum()
    }

    /// Events suppressed in the datapath since the last call (over budget, or the ring full).
    pub fn lost_since_last(&mut self) -> u64 {
        let total = self.suppressed_total();
        let n = total.saturating_sub(self.suppressed_seen);
        self.suppressed_seen = total;
        n
    }

    /// Wait up to `timeout` for events, then take every record queued. Records of kinds this
    /// build does not know are skipped.
    pub fn recv_batch(&mut self, timeout: Duration) -> std::io::Result<Vec<Event>> {
        let mut out = self.drain();
        if out.is_empty() {
            let mut pfd = libc::pollfd { fd: self.ring.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            out = self.drain();
        }
        if out.is_empty() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        Ok(out)
    }

    fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(d) = parse(&item) {
                out.push(d);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dir: u8, rule: u8) -> Vec<u8> {
        let mut b = vec![EV_POLICY_DROP, dir, rule, 6];
        b.extend(7u32.to_ne_bytes());
        b.extend([10, 244, 1, 3]);
        b.extend([10, 244, 2, 2]);
        b.extend(40000u16.to_be_bytes());
        b.extend(8080u16.to_be_bytes());
        b.extend([0x02, 0, 0, 0]);
        b
    }

    fn trace(obs: u8, x: [u8; 4], xport: u16) -> Vec<u8> {
        let mut b = vec![EV_TRACE, obs, 0x02, 6];
        b.extend(9u32.to_ne_bytes());
        b.extend([10, 244, 1, 3]);
        b.extend([10, 96, 0, 10]);
        b.extend(40000u16.to_be_bytes());
        b.extend(80u16.to_be_bytes());
        b.extend(x);
        b.extend(xport.to_be_bytes());
        b.extend([0, 0]);
        b
    }

    #[test]
    fn a_drop_record_as_the_datapath_writes_it() {
        let d = parse(&record(1, 3)).expect("parsed");
        assert_eq!(
            d,
            Event::Policy(PolicyDrop {
                audit: false,
                allow: false,
                ifindex: 7,
                ingress: false,
                rule: Some(3),
                packet: DroppedPacket {
                    proto: 6,
                    src: Ipv4Addr::new(10, 244, 1, 3),
                    dst: Ipv4Addr::new(10, 244, 2, 2),
                    sport: 40000,
                    dport: 8080,
                    tcp_flags: 0x02,
                },
            })
        );
        let policy = |r: &[u8]| match parse(r) {
            Some(Event::Policy(p)) => p,
            other => panic!("{other:?}"),
        };
        let d = policy(&record(0, RULE_DEFAULT));
        assert!(d.ingress);
        assert_eq!(d.rule, None, "default deny");
        let mut audit = record(0, 1);
        audit[0] = EV_POLICY_AUDIT;
        assert!(policy(&audit).audit);
        let mut allow = record(0, 2);
        allow[0] = EV_POLICY_ALLOW;
        let a = policy(&allow);
        assert!(a.allow && !a.audit && a.rule == Some(2));
    }

    #[test]
    fn a_trace_record_with_and_without_translation() {
        let t = parse(&trace(0, [10, 244, 2, 7], 8080)).expect("parsed");
        assert_eq!(
            t,
            Event::Trace(Trace {
                point: TracePoint::FromEndpoint,
                ifindex: 9,
                proto: 6,
                src: Ipv4Addr::new(10, 244, 1, 3),
                sport: 40000,
                dst: Ipv4Addr::new(10, 96, 0, 10),
                dport: 80,
                translated_to: Some((Ipv4Addr::new(10, 244, 2, 7), 8080)),
                tcp_flags: 0x02,
            })
        );
        match parse(&trace(1, [0; 4], 0)) {
            Some(Event::Trace(t)) => assert_eq!((t.point, t.translated_to), (TracePoint::ToEndpoint, None)),
            other => panic!("{other:?}"),
        }
        match parse(&trace(2, [10, 244, 2, 7], 8080)) {
            Some(Event::Trace(t)) => assert_eq!(t.point, TracePoint::FromNetwork),
            other => panic!("{other:?}"),
        }
        match parse(&trace(3, [0; 4], 0)) {
            Some(Event::Trace(t)) => assert_eq!(t.point, TracePoint::ToNetwork),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&trace(7, [0; 4], 0)), None, "an observation point this build does not know");
    }

    #[test]
    fn a_service_drop_record() {
        let mut r = record(1, 158);
        r[0] = EV_LB_DROP;
        match parse(&r) {
            Some(Event::LbDrop(d)) => {
                assert!(
                    d.at_device && d.reason as i32 == 158 && d.packet.dport == 8080 && d.packet.tcp_flags == 0x02,
                    "{d:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        r[2] = 1;
        assert_eq!(parse(&r), None, "a drop reason this build does not know is not guessed at");
    }

    #[test]
    fn a_socket_translation_record() {
        let mut b = vec![EV_TRACE_SOCK, 2, 6, 0];
        b.extend([10, 96, 0, 10]);
        b.extend([10, 244, 2, 7]);
        b.extend(80u16.to_be_bytes());
        b.extend(8080u16.to_be_bytes());
        b.extend(0x1234_5678_9abc_u64.to_ne_bytes());
        assert_eq!(
            parse(&b),
            Some(Event::Sock(SockTrace {
                proto: 6,
                front: (Ipv4Addr::new(10, 96, 0, 10), 80),
                backend: (Ipv4Addr::new(10, 244, 2, 7), 8080),
                cookie: 0x1234_5678_9abc,
            }))
        );
        assert_eq!(parse(&b[..EV_SOCK_LEN - 1]), None);
        b[1] = 3;
        assert_eq!(parse(&b), None, "a translation point this build does not write");
    }

    #[test]
    fn short_and_unknown_records_are_skipped() {
        let r = record(0, 0);
        assert_eq!(parse(&r[..EV_DROP_LEN - 1]), None);
        let mut unknown = r.clone();
        unknown[0] = 9;
        assert_eq!(parse(&unknown), None);
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&trace(0, [0; 4], 0)[..EV_TRACE_LEN - 1]), None);
    }
}
