//! The readers behind flows: the loop every reader thread runs, the conntrack reader, and the
//! eBPF ring's records as flows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sluice_core::flow::enrich::Directory;
use sluice_core::flow::metrics::LostSource;
use sluice_iptables::ct_events::CtEventSocket;
use sluice_observer::server::{Hub, now_ns};

pub(crate) type RuleTagMap =
    std::collections::HashMap<sluice_core::flow::drop::TagKey, sluice_core::flow::drop::RuleTags>;

/// How long the reader lets events gather after a batch (the kernel queues them meanwhile; the
/// 4 MiB socket buffer holds far more than arrives in this time).
const COALESCE: Duration = Duration::from_millis(5);

/// A reader thread's loop: read a burst, turn it into flows, push them, let the next burst
/// gather; a kernel overrun (ENOBUFS) is counted as lost, never silent; other errors end it.
pub(crate) fn read_loop<T>(
    stop: &AtomicBool,
    hub: &Hub,
    lost: &AtomicU64,
    mut recv: impl FnMut() -> std::io::Result<Vec<T>>,
    mut to_flows: impl FnMut(&[T]) -> Vec<sluice_core::flow::Flow>,
) -> std::io::Result<()> {
    while !stop.load(Ordering::SeqCst) {
        match recv() {
            Ok(batch) => {
                let flows = to_flows(&batch);
                if !flows.is_empty() {
                    hub.push(flows);
                }
                // Let a burst gather: the next read takes it whole (one wake-up per batch, not
                // per connection); flows are at most this late.
                std::thread::sleep(COALESCE);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            // The socket overran: the kernel dropped events (how many it does not say).
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                lost.fetch_add(1, Ordering::Relaxed);
                hub.metrics().lost(LostSource::Kernel, 1);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The conntrack reader on its own OS thread in the agent's netns (netlink sockets stay where
/// they are made; a 1 s receive timeout lets it see `stop`). `translated_only`: only connections
/// netfilter translated (on a node whose other connections an eBPF datapath traces).
pub(crate) fn spawn_conntrack(
    hub: Arc<Hub>,
    dir: Arc<RwLock<Directory>>,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
    translated_only: bool,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut sock = CtEventSocket::open(sluice_iptables::ct_events::GROUP_NEW)?;
    sock.set_read_timeout(Duration::from_secs(1))?;
    let name = if translated_only { "flows-ct-nat" } else { "flows-conntrack" };
    Ok(std::thread::Builder::new().name(name.into()).spawn(move || {
        let res = read_loop(
            &stop,
            &hub,
            &lost,
            || sock.recv_batch(),
            |events| {
                dir.read()
                    .map(|d| sluice_iptables::ct_events::flows_from(events, &d, now_ns(), translated_only))
                    .unwrap_or_default()
            },
        );
        if let (Err(e), Ok(mut g)) = (res, error.lock()) {
            *g = Some(format!("reading conntrack events: {e}"));
        }
    })?)
}

/// The name of this netns's interface `ifindex` (a pod's host veth), if it still exists.
fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    name.to_str().ok().map(str::to_string)
}

/// One record of the eBPF ring as a flow: a trace named through the directory (the frontend
/// and the backend it was translated to), or a policy event attributed with the rule tags.
pub(crate) fn ring_flow(d: &Directory, t: &RuleTagMap, e: &sluice_ebpf::events::Event) -> sluice_core::flow::Flow {
    use sluice_core::flow::drop::{TagKey, policy_drop_flow};
    use sluice_core::flow::enrich::Observed;
    use sluice_core::flow::{ObservationPoint, TrafficDirection};
    use sluice_ebpf::events::{Event, TracePoint};
    match e {
        Event::Trace(tr) => {
            // At a pod veth the direction is the pod's; at a device, relative to this node's
            // pods (into a local backend: ingress), as the directory computes it.
            let (observation, direction) = match tr.point {
                TracePoint::FromEndpoint => (ObservationPoint::FromEndpoint, Some(TrafficDirection::Egress)),
                TracePoint::ToEndpoint => (ObservationPoint::ToEndpoint, Some(TrafficDirection::Ingress)),
                TracePoint::FromNetwork => (ObservationPoint::FromNetwork, None),
                TracePoint::ToNetwork => (ObservationPoint::ToNetwork, None),
                TracePoint::ToStack => (ObservationPoint::ToStack, Some(TrafficDirection::Egress)),
            };
            let mut f = d.trace(&Observed {
                time_ns: now_ns(),
                proto: tr.proto,
                src: tr.src,
                sport: tr.sport,
                dst: tr.dst,
                dport: tr.dport,
                translated_to: tr.translated_to,
                observation,
            });
            if let Some(d) = direction {
                f.direction = d;
            }
            f
        }
        Event::Sock(x) => d.sock_translation(now_ns(), x.proto, x.front, x.backend, x.cookie),
        Event::LbDrop(x) => sluice_core::flow::drop::service_drop_flow(d, &x.packet, x.reason, now_ns()),
        Event::Policy(p) => {
            let tag = interface_name(p.ifindex).and_then(|interface| {
                let key = TagKey { interface, ingress: p.ingress, audit: p.audit };
                let rt = t.get(&key)?;
                let tag = match p.rule {
                    None => Some(&rt.default),
                    Some(i) => rt.rules.get(usize::from(i))?.as_ref(),
                }?;
                // An allow verdict names an allow rule, a drop or audit never does: a rule
                // list rewritten since the packet is not guessed at.
                (tag.allow == p.allow).then_some(tag)
            });
            let mut f = policy_drop_flow(d, &p.packet, p.ingress, p.audit, tag, now_ns());
            if p.allow && tag.is_none() {
                // Admitted, but the rule is no longer known: a verdict without its policies.
                f.verdict = sluice_core::flow::Verdict::Forwarded;
                f.event = sluice_core::flow::EventKind::PolicyVerdict;
                f.drop_reason = None;
                f.policy = Default::default();
            }
            f
        }
    }
}
