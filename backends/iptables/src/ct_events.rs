//! Conntrack events over netlink (NFNLGRP_CONNTRACK_NEW / _DESTROY): every connection netfilter
//! tracks, with the NAT translation it got. The flow source for netfilter nodes: a new entry whose
//! reply source differs from the original destination was DNATed to a Service backend.
//!
//! The parser is pure (bytes in, events out; unit-tested with hand-built messages); the socket
//! is a thin blocking reader the agent runs on its own thread, in the node's netns.

use std::net::Ipv4Addr;

use crate::nfnl::{self, Reader, attr, attrs, messages};

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW` and `... | IPCTNL_MSG_CT_DELETE`.
pub(crate) const MSG_CT_NEW: u16 = 1 << 8;
const MSG_CT_DELETE: u16 = (1 << 8) | 2;
const NLM_F_CREATE: u16 = 0x400;
/// Multicast groups (bit = group - 1): NEW = 1, DESTROY = 3.
pub const GROUP_NEW: u32 = 1;
pub const GROUPS_NEW_AND_DESTROY: u32 = GROUP_NEW | (1 << 2);

pub(crate) const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKind {
    /// A connection entered the table (its first packet passed).
    New,
    /// It left the table (closed or timed out).
    Destroy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tuple {
    pub src: Option<Ipv4Addr>,
    pub dst: Option<Ipv4Addr>,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP).
    pub proto: u8,
    /// Ports for TCP/UDP; for ICMP (type, code).
    pub sport: u16,
    pub dport: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEvent {
    pub kind: CtKind,
    pub orig: Tuple,
    pub reply: Tuple,
    /// `IPS_*` status bits (IPS_DST_NAT = 1 << 5, IPS_SRC_NAT = 1 << 4).
    pub status: u32,
}

impl CtEvent {
    /// Where the destination was translated to (a Service frontend DNATed to a backend).
    pub fn dnat(&self) -> Option<(Ipv4Addr, u16)> {
        let to = self.reply.src?;
        (Some(to) != self.orig.dst || self.reply.sport != self.orig.dport).then_some((to, self.reply.sport))
    }
}

fn be16(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

pub(crate) fn tuple(buf: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (ty, p) in attrs(buf) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, p) in attrs(p) {
                    let addr = p.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(Ipv4Addr::from);
                    match ty {
                        CTA_IP_V4_SRC => t.src = addr,
                        CTA_IP_V4_DST => t.dst = addr,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, p) in attrs(p) {
                    match ty {
                        CTA_PROTO_NUM => t.proto = p.first().copied().unwrap_or(0),
                        CTA_PROTO_SRC_PORT => t.sport = be16(p).unwrap_or(0),
                        CTA_PROTO_DST_PORT => t.dport = be16(p).unwrap_or(0),
                        CTA_PROTO_ICMP_TYPE => t.sport = p.first().copied().unwrap_or(0).into(),
                        CTA_PROTO_ICMP_CODE => t.dport = p.first().copied().unwrap_or(0).into(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// Every conntrack NEW (creating) and DELETE message in one datagram; other messages (updates,
/// errors, other families) are skipped. Truncated input yields what was complete.
pub fn parse(buf: &[u8]) -> Vec<CtEvent> {
    let mut out = Vec::new();
    for (ty, flags, msg) in messages(buf) {
        let kind = match ty {
            MSG_CT_NEW if flags & NLM_F_CREATE != 0 => CtKind::New,
            MSG_CT_DELETE => CtKind::Destroy,
            _ => continue,
        };
        // nfgenmsg: family (AF_INET = 2), version, res_id.
        if msg.first() != Some(&2) || msg.len() < 4 {
            continue;
        }
        let mut ev = CtEvent { kind, orig: Tuple::default(), reply: Tuple::default(), status: 0 };
        for (ty, p) in attrs(&msg[4..]) {
            match ty {
                CTA_TUPLE_ORIG => ev.orig = tuple(p),
                CTA_TUPLE_REPLY => ev.reply = tuple(p),
                CTA_STATUS => {
                    ev.status = p.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_be_bytes)
                }
                _ => {}
            }
        }
        if ev.orig.src.is_some() && ev.orig.dst.is_some() {
            out.push(ev);
        }
    }
    out
}

// The kernel's encoding, for the tests and the flows benchmark, which feed the parser with it.

pub(crate) fn nested(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    attr(ty | 0x8000, &parts.concat())
}

pub(crate) fn tuple_attr(ty: u16, t: &Tuple) -> Vec<u8> {
    let (src, dst) = (t.src.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(), t.dst.unwrap_or(Ipv4Addr::UNSPECIFIED).octets());
    let (sport, dport, proto) = (t.sport, t.dport, t.proto);
    nested(
        ty,
        &[
            nested(CTA_TUPLE_IP, &[attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)]),
            nested(
                CTA_TUPLE_PROTO,
                &[
                    attr(CTA_PROTO_NUM, &[proto]),
                    attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
                    attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
                ],
            ),
        ],
    )
}

/// A conntrack message of the AF_INET family.
pub(crate) fn message(ty: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    nfnl::message(ty, flags, 0, 2, 0, body)
}

/// A conntrack NEW event for a TCP/UDP connection as the kernel sends it (`status`: `IPS_*` bits).
pub fn encode_new(orig: &Tuple, reply: &Tuple, status: u32) -> Vec<u8> {
    let body =
        [tuple_attr(CTA_TUPLE_ORIG, orig), tuple_attr(CTA_TUPLE_REPLY, reply), attr(CTA_STATUS, &status.to_be_bytes())]
            .concat();
    message(MSG_CT_NEW, NLM_F_CREATE | 0x200, &body)
}

/// What the agent records for each event: a trace flow per new connection (observed where
/// netfilter tracks it: to the stack, forwarded), named through `dir`; loopback is left out.
/// `translated_only`: only connections netfilter DNATed (where a BPF datapath traces the rest).
pub fn flows_from(
    events: &[CtEvent],
    dir: &sluice_core::flow::enrich::Directory,
    time_ns: u64,
    translated_only: bool,
) -> Vec<sluice_core::flow::Flow> {
    use sluice_core::flow::ObservationPoint;
    use sluice_core::flow::enrich::Observed;
    events
        .iter()
        .filter(|e| e.kind == CtKind::New && (!translated_only || e.dnat().is_some()))
        .filter_map(|e| {
            let (src, dst) = (e.orig.src?, e.orig.dst?);
            (!src.is_loopback() && !dst.is_loopback()).then(|| {
                dir.trace(&Observed {
                    time_ns,
                    proto: e.orig.proto,
                    src,
                    sport: e.orig.sport,
                    dst,
                    dport: e.orig.dport,
                    translated_to: e.dnat(),
                    observation: ObservationPoint::ToStack,
                })
            })
        })
        .collect()
}

/// A subscription to this netns's conntrack NEW and DESTROY events.
pub struct CtEventSocket(Reader);

impl CtEventSocket {
    /// Open in the calling thread's netns (a netlink socket stays in the netns it was made in),
    /// subscribed to `groups` (the agent takes NEW only: each subscribed group costs the kernel
    /// a message per connection).
    pub fn open(groups: u32) -> std::io::Result<Self> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
        sock.bind(&netlink_sys::SocketAddr::new(0, groups))?;
        Ok(CtEventSocket(Reader::new(sock)))
    }

    /// Make `recv` give up (EAGAIN) after `d` without events, so a reader can check for shutdown.
    pub fn set_read_timeout(&self, d: std::time::Duration) -> std::io::Result<()> {
        self.0.set_read_timeout(d)
    }

    /// Block for the next datagram. `Err` with ENOBUFS means events were lost in the kernel
    /// (the caller counts that as lost events, never silently).
    pub fn recv(&mut self) -> std::io::Result<Vec<CtEvent>> {
        self.0.recv(parse)
    }

    /// Block for the next datagram, then take every one already queued without blocking: one
    /// wake-up for a burst instead of one per connection. `Err` as `recv`.
    pub fn recv_batch(&mut self) -> std::io::Result<Vec<CtEvent>> {
        self.0.recv_batch(parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Tuple {
        Tuple { src: Some(src.into()), dst: Some(dst.into()), proto: 6, sport, dport }
    }

    /// client 10.244.1.3:40000 -> ClusterIP 10.96.0.10:80, DNATed to 10.244.2.2:8080.
    fn dnat_body() -> Vec<u8> {
        [
            tuple_attr(CTA_TUPLE_ORIG, &tcp([10, 244, 1, 3], [10, 96, 0, 10], 40000, 80)),
            tuple_attr(CTA_TUPLE_REPLY, &tcp([10, 244, 2, 2], [10, 244, 1, 3], 8080, 40000)),
            attr(CTA_STATUS, &(1u32 << 5).to_be_bytes()),
        ]
        .concat()
    }

    #[test]
    fn new_and_destroy_with_their_translation() {
        let buf =
            [message(MSG_CT_NEW, NLM_F_CREATE | 0x200, &dnat_body()), message(MSG_CT_DELETE, 0, &dnat_body())].concat();
        let evs = parse(&buf);
        assert_eq!(evs.len(), 2);
        assert_eq!((evs[0].kind, evs[1].kind), (CtKind::New, CtKind::Destroy));
        let e = evs[0];
        assert_eq!((e.orig.src, e.orig.dst), (Some(Ipv4Addr::new(10, 244, 1, 3)), Some(Ipv4Addr::new(10, 96, 0, 10))));
        assert_eq!((e.orig.proto, e.orig.sport, e.orig.dport), (6, 40000, 80));
        assert_eq!(e.dnat(), Some((Ipv4Addr::new(10, 244, 2, 2), 8080)));
        assert_eq!(e.status, 1 << 5);
    }

    #[test]
    fn updates_other_families_and_garbage_are_skipped() {
        // An update (no NLM_F_CREATE) is not a new connection.
        assert!(parse(&message(MSG_CT_NEW, 0, &dnat_body())).is_empty());
        let mut v6 = message(MSG_CT_NEW, NLM_F_CREATE, &dnat_body());
        v6[16] = 10; // AF_INET6
        assert!(parse(&v6).is_empty());
        // Truncated and random bytes never panic; what was complete is kept.
        let whole = message(MSG_CT_NEW, NLM_F_CREATE, &dnat_body());
        for cut in 0..whole.len() {
            let _ = parse(&whole[..cut]);
        }
        let mut x: u32 = 7;
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = parse(&junk);
        }
        // An unpadded last attribute (length 5 at the very end) ends the list, no panic.
        assert_eq!(attrs(&[5, 0, 1, 0, 9]).count(), 1);
        let two = [whole.clone(), whole[..20].to_vec()].concat();
        assert_eq!(parse(&two).len(), 1);
    }

    #[test]
    fn an_untranslated_connection_has_no_dnat() {
        let body = [
            tuple_attr(CTA_TUPLE_ORIG, &tcp([10, 244, 1, 3], [10, 244, 2, 2], 40000, 8080)),
            tuple_attr(CTA_TUPLE_REPLY, &tcp([10, 244, 2, 2], [10, 244, 1, 3], 8080, 40000)),
        ]
        .concat();
        let e = parse(&message(MSG_CT_NEW, NLM_F_CREATE, &body));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].dnat(), None);
    }

    #[test]
    fn encode_new_is_what_parse_reads() {
        let orig = Tuple { proto: 17, ..tcp([10, 244, 1, 3], [10, 96, 0, 53], 5353, 53) };
        let reply = Tuple { proto: 17, ..tcp([10, 244, 2, 9], [10, 244, 1, 3], 53, 5353) };
        let e = parse(&encode_new(&orig, &reply, 1 << 5));
        assert_eq!(e, vec![CtEvent { kind: CtKind::New, orig, reply, status: 1 << 5 }]);
    }

    #[test]
    fn translated_only_keeps_the_connections_netfilter_dnated() {
        let natted = encode_new(
            &tcp([10, 244, 1, 3], [10, 96, 0, 10], 40000, 80),
            &tcp([10, 244, 2, 2], [10, 244, 1, 3], 8080, 40000),
            1 << 5,
        );
        // Pod to pod, untranslated (what a BPF datapath already traced).
        let plain = encode_new(
            &tcp([10, 244, 1, 3], [10, 244, 2, 2], 40001, 8080),
            &tcp([10, 244, 2, 2], [10, 244, 1, 3], 8080, 40001),
            0,
        );
        let evs = parse(&[natted, plain].concat());
        let dir = sluice_core::flow::enrich::Directory::default();
        assert_eq!(flows_from(&evs, &dir, 1, false).len(), 2);
        let only = flows_from(&evs, &dir, 1, true);
        assert_eq!(only.len(), 1);
        assert_eq!(
            (only[0].destination_ip, only[0].l4.and_then(|l| l.ports())),
            (Ipv4Addr::new(10, 244, 2, 2), Some((40000, 8080)))
        );
    }
}
