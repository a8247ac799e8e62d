//! Deleting the conntrack entries of closed TCP connections (TIME_WAIT) over ctnetlink, each
//! delete naming the entry's id.
//!
//! Why not `conntrack -D --state TIME_WAIT`: it dumps, then deletes by tuple. Under load a
//! client port is reused within that gap; the kernel replaces the closed entry with the new
//! connection's (same tuple, new id), and a delete by tuple removes the live one: its next
//! packets are tracked afresh mid-stream and NATed again, possibly to another backend (measured
//! in the migration lab: 1-3 connections reset or silent per switch at ~15k connections/s).
//! With `CTA_ID` the kernel deletes only the entry that was dumped (ENOENT otherwise).
//!
//! Encoding and parsing are pure; `flush_time_wait` is the one function doing I/O.

use std::io;

use crate::ct_events::{CTA_TUPLE_ORIG, MSG_CT_NEW, Tuple, message, tuple, tuple_attr};
use crate::nfnl::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, attr, attrs, messages};

const MSG_CT_GET: u16 = (1 << 8) | 1;
const MSG_CT_DELETE: u16 = (1 << 8) | 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_ID: u16 = 12;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// `enum tcp_conntrack`: TCP_CONNTRACK_TIME_WAIT.
pub const TCP_TIME_WAIT: u8 = 7;

/// One entry of a dump: what a delete needs, and the TCP state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub id: u32,
    pub tcp_state: Option<u8>,
}

/// The request that dumps this netns's IPv4 table.
pub fn dump_request() -> Vec<u8> {
    message(MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, &[])
}

/// Entries in one datagram of a dump, and whether it ended the dump (NLMSG_DONE or an error).
pub fn parse_dump(buf: &[u8]) -> (Vec<Entry>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    for (ty, _, msg) in messages(buf) {
        match ty {
            NLMSG_DONE | NLMSG_ERROR => done = true,
            MSG_CT_NEW => {
                // After the 4-byte nfgenmsg.
                let (mut orig, mut id, mut tcp_state) = (None, None, None);
                for (ty, p) in attrs(msg.get(4..).unwrap_or(&[])) {
                    match ty {
                        CTA_TUPLE_ORIG => orig = Some(tuple(p)),
                        CTA_ID => id = p.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes),
                        CTA_PROTOINFO => {
                            tcp_state = attrs(p)
                                .find(|(t, _)| *t == CTA_PROTOINFO_TCP)
                                .and_then(|(_, tcp)| attrs(tcp).find(|(t, _)| *t == CTA_PROTOINFO_TCP_STATE))
                                .and_then(|(_, v)| v.first().copied());
                        }
                        _ => {}
                    }
                }
                if let (Some(orig), Some(id)) = (orig, id) {
                    out.push(Entry { orig, id, tcp_state });
                }
            }
            _ => {}
        }
    }
    (out, done)
}

/// Delete `e` if it is still the entry of that id.
pub fn delete_message(e: &Entry) -> Vec<u8> {
    let body = [tuple_attr(CTA_TUPLE_ORIG, &e.orig), attr(CTA_ID, &e.id.to_be_bytes())].concat();
    message(MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, &body)
}

/// Acks in one datagram: (acks seen, of which succeeded). An error code ENOENT is an entry
/// already gone or replaced: not deleted, as intended.
pub fn parse_acks(buf: &[u8]) -> (usize, usize) {
    let (mut seen, mut ok) = (0, 0);
    for (ty, _, msg) in messages(buf) {
        if ty == NLMSG_ERROR {
            seen += 1;
            let code = msg.get(..4).and_then(|b| b.try_into().ok()).map(i32::from_ne_bytes).unwrap_or(-1);
            if code == 0 {
                ok += 1;
            }
        }
    }
    (seen, ok)
}

/// Deletes sent per datagram.
const BATCH: usize = 128;

/// Delete every TIME_WAIT TCP entry of this netns that is still the one dumped; returns how
/// many went.
pub fn flush_time_wait() -> io::Result<usize> {
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    let _ = sock.set_rx_buf_sz(4 << 20);
    sock.send(&dump_request(), 0)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut closed = Vec::new();
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let (entries, done) = parse_dump(&buf[..n]);
        closed.extend(entries.into_iter().filter(|e| e.orig.proto == 6 && e.tcp_state == Some(TCP_TIME_WAIT)));
        if done {
            break;
        }
    }
    let mut deleted = 0;
    for chunk in closed.chunks(BATCH) {
        let batch: Vec<u8> = chunk.iter().flat_map(delete_message).collect();
        sock.send(&batch, 0)?;
        let mut acked = 0;
        while acked < chunk.len() {
            let n = sock.recv(&mut &mut buf[..], 0)?;
            let (seen, ok) = parse_acks(&buf[..n]);
            if seen == 0 {
                break;
            }
            acked += seen;
            deleted += ok;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: u8, id: u32) -> Vec<u8> {
        let orig = Tuple {
            src: Some([10, 244, 1, 3].into()),
            dst: Some([10, 96, 0, 10].into()),
            proto: 6,
            sport: 40000,
            dport: 80,
        };
        let proto = crate::ct_events::nested(
            CTA_PROTOINFO,
            &[crate::ct_events::nested(CTA_PROTOINFO_TCP, &[attr(CTA_PROTOINFO_TCP_STATE, &[state])])],
        );
        let body = [tuple_attr(CTA_TUPLE_ORIG, &orig), proto, attr(CTA_ID, &id.to_be_bytes())].concat();
        message(MSG_CT_NEW, 2, &body)
    }

    #[test]
    fn a_dump_gives_tuple_id_and_state_and_ends_at_done() {
        let done = {
            let mut m = message(NLMSG_DONE, 2, &[]);
            m.truncate(16 + 4);
            m
        };
        let buf = [entry(TCP_TIME_WAIT, 7), entry(3, 8), done].concat();
        let (e, finished) = parse_dump(&buf);
        assert!(finished);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].id, e[0].tcp_state), (7, Some(TCP_TIME_WAIT)));
        assert_eq!((e[1].id, e[1].tcp_state), (8, Some(3)));
        assert_eq!(e[0].orig.dport, 80);
        let (more, finished) = parse_dump(&entry(3, 9));
        assert!(!finished && more.len() == 1);
    }

    #[test]
    fn a_delete_names_the_entry_by_tuple_and_id() {
        let (e, _) = parse_dump(&entry(TCP_TIME_WAIT, 0xdead_beef));
        let m = delete_message(&e[0]);
        let (ty, flags, body) = messages(&m).next().expect("one message");
        assert_eq!(ty, MSG_CT_DELETE);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
        let got: Vec<u16> = attrs(&body[4..]).map(|(t, _)| t).collect();
        assert_eq!(got, [CTA_TUPLE_ORIG, CTA_ID]);
        let id = attrs(&body[4..]).find(|(t, _)| *t == CTA_ID).map(|(_, p)| p.to_vec());
        assert_eq!(id, Some(0xdead_beefu32.to_be_bytes().to_vec()));
    }

    #[test]
    fn acks_count_successes_and_enoent_apart() {
        let ack = |code: i32| {
            let mut m = Vec::new();
            m.extend(36u32.to_ne_bytes());
            m.extend(NLMSG_ERROR.to_ne_bytes());
            m.extend(0u16.to_ne_bytes());
            m.extend([0u8; 8]);
            m.extend(code.to_ne_bytes());
            m.extend([0u8; 16]);
            m
        };
        let buf = [ack(0), ack(-libc::ENOENT), ack(0)].concat();
        assert_eq!(parse_acks(&buf), (3, 2));
        assert_eq!(parse_acks(&[]), (0, 0));
    }
}
