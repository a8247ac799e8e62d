//! Classic tc over rtnetlink, synchronously: the clsact qdisc and `cls_bpf` direct-action
//! filters, for kernels without TCX (before 6.6). Only what sluice needs: list a device's
//! qdiscs and filters, add a clsact qdisc, create-or-replace one filter at a given priority
//! and handle, delete a filter or the qdisc.
//!
//! Why not aya's netlink attach: it cannot list filters (to tell sluice's from another tc
//! user's at the same priority) and drops a filter when its link handle is dropped; here the
//! filters outlive the agent and a restart replaces their programs in place.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The direction of a clsact hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn parent(self) -> TcHandle {
        let minor = match self {
            Hook::Ingress => TcHandle::MIN_INGRESS,
            Hook::Egress => TcHandle::MIN_EGRESS,
        };
        TcHandle { major: u16::MAX, minor }
    }
}

/// One filter on a clsact hook, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// `bpf`, `u32`, `flower`, ...
    pub kind: String,
    /// For `bpf` filters: the program's name as given at attach time.
    pub name: Option<String>,
}

/// The qdisc on a device's ingress/clsact slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Empty,
    Clsact,
    /// Another qdisc (the older `ingress`): clsact cannot be added beside it.
    Other(String),
}

const ETH_P_ALL: u16 = 0x0003;

fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

/// Send one request; collect the messages of its answer until the final ACK or DONE.
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let s = socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    s.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let (data, _) = s.recv_from_full()?;
        let mut off = 0;
        while off < data.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink answer: {e}")))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        None => Ok(out), // the ACK
                    };
                }
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

fn tc_msg(ifindex: u32, handle: TcHandle, parent: TcHandle, info: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = ifindex as i32;
    m.header.handle = handle;
    m.header.parent = parent;
    m.header.info = info;
    m
}

fn kind(attrs: &[TcAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// What sits in the device's ingress/clsact slot.
pub fn slot(ifindex: u32) -> io::Result<Slot> {
    let msg = RouteNetlinkMessage::GetQueueDiscipline(tc_msg(0, TcHandle::UNSPEC, TcHandle::UNSPEC, 0));
    for m in request(msg, NLM_F_DUMP)? {
        let RouteNetlinkMessage::NewQueueDiscipline(q) = m else { continue };
        if q.header.index != ifindex as i32 || q.header.parent != TcHandle::CLSACT {
            continue;
        }
        let k = kind(&q.attributes);
        return Ok(if k == "clsact" { Slot::Clsact } else { Slot::Other(k) });
    }
    Ok(Slot::Empty)
}

/// Add a clsact qdisc (fails with EEXIST when one is there).
pub fn add_clsact(ifindex: u32) -> io::Result<()> {
    let mut m = tc_msg(ifindex, TcHandle { major: u16::MAX, minor: 0 }, TcHandle::CLSACT, 0);
    m.attributes.push(TcAttribute::Kind("clsact".into()));
    request(RouteNetlinkMessage::NewQueueDiscipline(m), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL).map(drop)
}

/// Remove the clsact qdisc (and every filter on it).
pub fn del_clsact(ifindex: u32) -> io::Result<()> {
    let m = tc_msg(ifindex, TcHandle { major: u16::MAX, minor: 0 }, TcHandle::CLSACT, 0);
    request(RouteNetlinkMessage::DelQueueDiscipline(m), NLM_F_ACK).map(drop)
}

/// The filters on one hook.
pub fn filters(ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
    let msg = RouteNetlinkMessage::GetTrafficFilter(tc_msg(ifindex, TcHandle::UNSPEC, hook.parent(), 0));
    let mut out = Vec::new();
    for m in request(msg, NLM_F_DUMP)? {
        let RouteNetlinkMessage::NewTrafficFilter(f) = m else { continue };
        let handle = u32::from(f.header.handle);
        if handle == 0 {
            continue; // the per-priority header the kernel lists before its filters
        }
        let name = f.attributes.iter().find_map(|a| match a {
            TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
                TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => Some(n.clone()),
                _ => None,
            }),
            _ => None,
        });
        out.push(Filter { priority: (f.header.info >> 16) as u16, handle, kind: kind(&f.attributes), name });
    }
    Ok(out)
}

/// Create the filter, or replace its program in place when it exists (the kernel swaps the
/// program under RCU: no packet meets an empty hook).
pub fn replace_filter(
    ifindex: u32,
    hook: Hook,
    priority: u16,
    handle: u32,
    prog: BorrowedFd<'_>,
    name: &str,
) -> io::Result<()> {
    let info = (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be());
    let mut m = tc_msg(ifindex, TcHandle::from(handle), hook.parent(), info);
    m.attributes.push(TcAttribute::Kind("bpf".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    // CREATE without EXCL: create, or change the existing filter with this handle.
    request(RouteNetlinkMessage::NewTrafficFilter(m), NLM_F_ACK | NLM_F_CREATE).map(drop)
}

/// Delete one filter.
pub fn del_filter(ifindex: u32, hook: Hook, priority: u16, handle: u32) -> io::Result<()> {
    let info = (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be());
    let mut m = tc_msg(ifindex, TcHandle::from(handle), hook.parent(), info);
    m.attributes.push(TcAttribute::Kind("bpf".into()));
    request(RouteNetlinkMessage::DelTrafficFilter(m), NLM_F_ACK).map(drop)
}
