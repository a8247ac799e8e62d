//! NFLOG: the packets sluice's policy chains drop, handed to the agent by the kernel. Each DROP
//! rule of a policy chain is preceded by an NFLOG rule with the same match and a prefix naming
//! it (`sluice-drop:<tag>`, see `policy::drop_tags`), so every drop arrives with what decided
//! it. The parser is pure (bytes in, packets out); the socket is a blocking reader the agent
//! runs on its own thread in the node's netns.

use std::net::Ipv4Addr;

use crate::nfnl::{NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, Reader, attr, attrs, message, messages};

/// The NFLOG group sluice's rules log to (one listener per group and netns).
pub const GROUP: u16 = 4242;
/// What every sluice drop prefix starts with.
pub const PREFIX: &str = "sluice-drop:";
/// The prefix of audit-mode policies' would-be drops (the packet passed).
pub const AUDIT_PREFIX: &str = "sluice-audit:";
/// The prefix of allow rules' verdicts on new flows.
pub const ALLOW_PREFIX: &str = "sluice-allow:";
/// The prefixes of the Service rules' drops: a frontend without endpoints (rejected), a source
/// outside a LoadBalancer's `loadBalancerSourceRanges` (dropped).
pub const NO_ENDPOINTS_PREFIX: &str = "sluice-svc:noep";
pub const SOURCE_RANGE_PREFIX: &str = "sluice-svc:range";

/// `NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET` and `... | NFULNL_MSG_CONFIG`.
const MSG_PACKET: u16 = 4 << 8;
const MSG_CONFIG: u16 = (4 << 8) | 1;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const CFG_CMD_BIND: u8 = 1;
const COPY_PACKET: u8 = 2;
/// Bytes of each packet copied: IPv4 and TCP headers with options.
const COPY_RANGE: u32 = 128;

/// The headers of a logged IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP).
    pub proto: u8,
    /// Ports for TCP/UDP/SCTP; ICMP type and code.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub prefix: String,
    pub packet: Packet,
}

/// An IPv4 header (and the L4 ports / ICMP type) from the start of a packet.
pub fn parse_ipv4(p: &[u8]) -> Option<Packet> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let proto = p[9];
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let l4 = p.get(ihl..).unwrap_or(&[]);
    let be16 = |i: usize| l4.get(i..i + 2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let (sport, dport, tcp_flags) = match proto {
        6 => (be16(0), be16(2), l4.get(13).copied().unwrap_or(0)),
        17 | 132 => (be16(0), be16(2), 0),
        1 => (l4.first().copied().unwrap_or(0).into(), l4.get(1).copied().unwrap_or(0).into(), 0),
        _ => (0, 0, 0),
    };
    Some(Packet { src, dst, proto, sport, dport, tcp_flags })
}

/// Every logged IPv4 packet in one datagram; other messages and non-IPv4 payloads are skipped.
pub fn parse(buf: &[u8]) -> Vec<Logged> {
    let mut out = Vec::new();
    for (ty, _, msg) in messages(buf) {
        if ty != MSG_PACKET || msg.len() < 4 {
            continue;
        }
        let (mut prefix, mut packet) = (String::new(), None);
        for (ty, p) in attrs(&msg[4..]) {
            match ty {
                NFULA_PREFIX => prefix = String::from_utf8_lossy(p.split(|b| *b == 0).next().unwrap_or(&[])).into(),
                NFULA_PAYLOAD => packet = parse_ipv4(p),
                _ => {}
            }
        }
        if let Some(packet) = packet {
            out.push(Logged { prefix, packet });
        }
    }
    out
}

/// A packet message as the kernel sends it (tests and benchmarks feed the parser with it).
pub fn encode_packet(prefix: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = prefix.as_bytes().to_vec();
    p.push(0);
    let attrs = [attr(NFULA_PREFIX, &p), attr(NFULA_PAYLOAD, payload)].concat();
    message(MSG_PACKET, 0, 0, 2, GROUP, &attrs)
}

/// The two requests that make the kernel send `group`'s packets here: bind, copy packets.
pub fn config_requests(group: u16) -> [Vec<u8>; 2] {
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend([COPY_PACKET, 0]);
    [
        message(MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, 1, 0, group, &attr(NFULA_CFG_CMD, &[CFG_CMD_BIND])),
        message(MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, 2, 0, group, &attr(NFULA_CFG_MODE, &mode)),
    ]
}

/// The errno of a netlink ack (0: success), if `buf` holds one.
fn ack_errno(buf: &[u8]) -> Option<i32> {
    let ty = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
    if ty != NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes(buf.get(16..20)?.try_into().ok()?))
}

/// A listener on one NFLOG group in this netns.
pub struct NflogSocket(Reader);

impl NflogSocket {
    /// Bind `group` in the calling thread's netns. EBUSY: another program listens on it.
    pub fn open(group: u16) -> std::io::Result<Self> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        let r = Reader::new(sock);
        let mut buf = vec![0; 4096];
        for req in config_requests(group) {
            r.sock.send(&req, 0)?;
            let n = r.sock.recv(&mut &mut buf[..], 0)?;
            match ack_errno(&buf[..n]) {
                Some(0) => {}
                Some(e) => return Err(std::io::Error::from_raw_os_error(-e)),
                None => return Err(std::io::Error::other("no acknowledgement from nfnetlink_log")),
            }
        }
        Ok(NflogSocket(r))
    }

    pub fn set_read_timeout(&self, d: std::time::Duration) -> std::io::Result<()> {
        self.0.set_read_timeout(d)
    }

    /// Block for the next datagram, then take every one already queued (ENOBUFS: the kernel
    /// dropped log messages).
    pub fn recv_batch(&mut self) -> std::io::Result<Vec<Logged>> {
        self.0.recv_batch(parse)
    }
}

/// The flows of logged drops: each named through `dir` and attributed through `tags` (what the
/// prefix's rule stands for). A sluice prefix no longer in `tags` (the policy changed between the
/// drop and its reading) is still a policy drop, attributed to that.
pub fn drop_flows(
    logged: &[Logged],
    tags: &std::collections::HashMap<String, crate::policy::DropTag>,
    dir: &sluice_core::flow::enrich::Directory,
    time_ns: u64,
) -> Vec<sluice_core::flow::Flow> {
    use sluice_core::flow::DropReason;
    use sluice_core::flow::drop::{DroppedPacket, policy_drop_flow, service_drop_flow};
    logged
        .iter()
        .filter_map(|l| {
            let p = l.packet;
            let packet = DroppedPacket {
                proto: p.proto,
                src: p.src,
                sport: p.sport,
                dst: p.dst,
                dport: p.dport,
                tcp_flags: p.tcp_flags,
            };
            let service = match l.prefix.as_str() {
                NO_ENDPOINTS_PREFIX => Some(DropReason::ServiceBackendNotFound),
                SOURCE_RANGE_PREFIX => Some(DropReason::DeniedByLbSrcRangeCheck),
                _ => None,
            };
            if let Some(reason) = service {
                return Some(service_drop_flow(dir, &packet, reason, time_ns));
            }
            if ![PREFIX, AUDIT_PREFIX, ALLOW_PREFIX].iter().any(|x| l.prefix.starts_with(x)) {
                return None;
            }
            let tag = tags.get(&l.prefix);
            let audit = l.prefix.starts_with(AUDIT_PREFIX);
            Some(policy_drop_flow(dir, &packet, tag.is_none_or(|t| t.ingress), audit, tag, time_ns))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend([0; 8]);
        p.extend([0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        p
    }

    #[test]
    fn a_logged_syn_with_its_prefix() {
        let buf = [
            encode_packet("sluice-drop:0123456789ab", &tcp_syn([10, 244, 1, 3], [10, 244, 2, 2], 40000, 8080)),
            encode_packet("other", &[0x60, 0, 0, 0]),
        ]
        .concat();
        let got = parse(&buf);
        assert_eq!(got.len(), 1, "the IPv6 payload is skipped");
        assert_eq!(got[0].prefix, "sluice-drop:0123456789ab");
        let p = got[0].packet;
        assert_eq!((p.src, p.dst), (Ipv4Addr::new(10, 244, 1, 3), Ipv4Addr::new(10, 244, 2, 2)));
        assert_eq!((p.proto, p.sport, p.dport, p.tcp_flags), (6, 40000, 8080, 0x02));
    }

    #[test]
    fn service_drops_name_the_frontend_and_the_reason() {
        use sluice_core::flow::{DropReason, EventKind, TrafficDirection};
        let svc = sluice_core::testing::ServiceBuilder::new("default", "empty").cluster_ip("10.96.0.13", 80).build();
        let dir = sluice_core::flow::enrich::Directory::new("n1", &[], &[svc], |_| None, &[]);
        let syn = tcp_syn([198, 51, 100, 201], [10, 96, 0, 13], 40000, 80);
        let logged: Vec<Logged> = [NO_ENDPOINTS_PREFIX, SOURCE_RANGE_PREFIX]
            .iter()
            .map(|p| Logged { prefix: p.to_string(), packet: parse_ipv4(&syn).expect("ipv4") })
            .collect();
        let f = drop_flows(&logged, &Default::default(), &dir, 7);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].event, f[0].drop_reason), (EventKind::Drop, Some(DropReason::ServiceBackendNotFound)));
        assert_eq!(f[0].destination_service.as_ref().map(|s| s.name.as_str()), Some("empty"));
        assert_eq!(f[0].direction, TrafficDirection::Ingress, "from outside, to the Service");
        assert_eq!(f[1].drop_reason, Some(DropReason::DeniedByLbSrcRangeCheck));
    }

    #[test]
    fn drops_are_named_and_attributed() {
        use crate::policy::DropTag;
        use sluice_core::flow::{DropReason, EventKind, TrafficDirection, Verdict};
        let pods = vec![sluice_core::PodInfo {
            namespace: "x".into(),
            name: "b".into(),
            node: Some("n1".into()),
            ip: Some(std::net::IpAddr::V4(Ipv4Addr::new(10, 244, 2, 2))),
            labels: Default::default(),
            ready: true,
            ports: Vec::new(),
            workload: None,
        }];
        let dir = sluice_core::flow::enrich::Directory::new("n1", &pods, &[], |_| Some(300), &[]);
        let tags = [
            (
                "sluice-drop:a".to_string(),
                DropTag {
                    pod: "x/b".into(),
                    ingress: true,
                    policies: vec!["x/deny-all".into()],
                    default_deny: true,
                    audit: false,
                    allow: false,
                },
            ),
            (
                "sluice-allow:c".to_string(),
                DropTag {
                    pod: "x/b".into(),
                    ingress: true,
                    policies: vec!["x/web".into()],
                    default_deny: false,
                    audit: false,
                    allow: true,
                },
            ),
            (
                "sluice-drop:b".to_string(),
                DropTag {
                    pod: "x/b".into(),
                    ingress: true,
                    policies: vec!["x/no-ssh".into()],
                    default_deny: false,
                    audit: false,
                    allow: false,
                },
            ),
        ]
        .into();
        let syn = tcp_syn([10, 244, 1, 3], [10, 244, 2, 2], 40000, 8080);
        let logged: Vec<Logged> =
            ["sluice-drop:a", "sluice-drop:b", "sluice-drop:gone", "someone-else", "sluice-allow:c"]
                .iter()
                .map(|p| Logged { prefix: p.to_string(), packet: parse_ipv4(&syn).expect("ipv4") })
                .collect();
        let mut f = drop_flows(&logged, &tags, &dir, 7);
        assert_eq!(f.len(), 4, "other programs' NFLOG prefixes are not sluice's drops");
        // The allow rule's verdict: a policy verdict, FORWARDED, naming what allowed it.
        let allowed = f.pop().expect("allow");
        assert_eq!((allowed.verdict, allowed.event), (Verdict::Forwarded, EventKind::PolicyVerdict));
        assert_eq!(allowed.policy.allowed_by, ["x/web"]);
        assert!(allowed.policy.denied_by.is_empty() && allowed.drop_reason.is_none());
        assert_eq!(allowed.direction, TrafficDirection::Ingress);
        assert!(f.iter().all(|f| f.verdict == Verdict::Dropped
            && f.event == EventKind::Drop
            && f.direction == TrafficDirection::Ingress));
        assert_eq!(
            (f[0].drop_reason, f[0].policy.denied_by.clone()),
            (Some(DropReason::PolicyDenied), vec!["x/deny-all".to_string()])
        );
        assert_eq!(
            (f[1].drop_reason, f[1].policy.denied_by.clone()),
            (Some(DropReason::PolicyDeny), vec!["x/no-ssh".to_string()])
        );
        assert_eq!(f[0].destination.pod_name, "b");
        assert!(!f[2].policy.denied_by.is_empty(), "even a stale prefix is attributed");
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let whole = encode_packet("sluice-drop:x", &tcp_syn([1, 1, 1, 1], [2, 2, 2, 2], 1, 2));
        for cut in 0..whole.len() {
            let _ = parse(&whole[..cut]);
        }
        assert!(parse(&[0xff; 64]).is_empty());
        assert_eq!(parse_ipv4(&[0x45; 19]), None);
    }

    #[test]
    fn config_requests_bind_the_group_then_copy_packets() {
        let [bind, mode] = config_requests(GROUP);
        assert_eq!(u16::from_ne_bytes([bind[4], bind[5]]), MSG_CONFIG);
        assert_eq!(u16::from_be_bytes([bind[18], bind[19]]), GROUP, "res_id is the group, big-endian");
        assert_eq!(&bind[20..25], &[5, 0, NFULA_CFG_CMD as u8, 0, CFG_CMD_BIND]);
        assert_eq!(&mode[24..30], &[0, 0, 0, COPY_RANGE as u8, COPY_PACKET, 0]);
        assert_eq!(
            ack_errno(&[[36u8, 0, 0, 0, 2, 0, 0, 0].as_slice(), &[0; 8], &(-16i32).to_ne_bytes()].concat()),
            Some(-16)
        );
    }
}
