//! The policy maps the L7 redirect reads (bpf/lib/l7.h): local endpoint addresses by host veth
//! (`sluice_pol_addr`: whose ingress rules a destination names) and the proxy's port
//! (`sluice_l7_port`, 0 while no proxy runs: proxy rules then drop), and the steering of
//! redirected connections to the proxy's listener (`sluice_l7_sock`, `sluice_l7_lookup`).

use std::collections::BTreeMap;

use std::os::fd::BorrowedFd;

use aya::maps::{Array, HashMap, SockMap};
use aya::programs::SkLookup;

use crate::datapath::{Datapath, DatapathError, map_err, missing};

const ADDRS: &str = "sluice_pol_addr";
const SOCK: &str = "sluice_l7_sock";
/// The pinned sk_lookup link, in the pin directory.
pub const LOOKUP_LINK: &str = "l7_lookup";

fn addrs(dp: &mut Datapath) -> Result<HashMap<&mut aya::maps::MapData, u32, u32>, DatapathError> {
    let m = dp.bpf.map_mut(ADDRS).ok_or(missing(ADDRS))?;
    HashMap::try_from(m).map_err(map_err(ADDRS))
}

/// What the maps hold: (address -> ifindex, proxy port).
pub fn read(dp: &mut Datapath) -> Result<(BTreeMap<u32, u32>, u32), DatapathError> {
    let addrs = addrs(dp)?.iter().flatten().collect();
    let m = dp.bpf.map_mut("sluice_l7_port").ok_or(missing("sluice_l7_port"))?;
    let a: Array<_, u32> = Array::try_from(m).map_err(map_err("sluice_l7_port"))?;
    Ok((addrs, a.get(&0, 0).map_err(map_err("sluice_l7_port"))?))
}

/// New and changed addresses (before the endpoint entries that may name them).
pub fn add_addrs(
    dp: &mut Datapath,
    have: &BTreeMap<u32, u32>,
    want: &BTreeMap<u32, u32>,
) -> Result<usize, DatapathError> {
    let mut h = addrs(dp)?;
    let mut n = 0;
    for (k, v) in want.iter().filter(|(k, v)| have.get(k) != Some(v)) {
        h.insert(k, v, 0).map_err(map_err(ADDRS))?;
        n += 1;
    }
    Ok(n)
}

/// Addresses no endpoint has any more (after the endpoint entries).
pub fn prune_addrs(
    dp: &mut Datapath,
    have: &BTreeMap<u32, u32>,
    want: &BTreeMap<u32, u32>,
) -> Result<usize, DatapathError> {
    let mut h = addrs(dp)?;
    let stale: Vec<u32> = have.keys().filter(|k| !want.contains_key(k)).copied().collect();
    for k in &stale {
        let _ = h.remove(k);
    }
    Ok(stale.len())
}

/// The proxy's port (0: none).
pub fn set_port(dp: &mut Datapath, have: u32, want: u32) -> Result<usize, DatapathError> {
    if have == want {
        return Ok(0);
    }
    let m = dp.bpf.map_mut("sluice_l7_port").ok_or(missing("sluice_l7_port"))?;
    let mut a: Array<_, u32> = Array::try_from(m).map_err(map_err("sluice_l7_port"))?;
    a.set(0, want, 0).map_err(map_err("sluice_l7_port"))?;
    Ok(1)
}

/// Steer redirected connections to the proxy's `listener`: the socket-lookup program on this
/// network namespace and the listener in `sluice_l7_sock`. Without both, the caller writes no
/// proxy port, and proxy rules drop. The program's link is pinned (`l7_lookup` in the pin
/// directory), so that it stays while the agent restarts: the proxy process outlives the agent,
/// and so does the steering to it (the sockmap drops the listener when the proxy closes it).
/// A new agent attaches its own program before it unpins the old link: never a moment without.
pub fn steer(dp: &mut Datapath, listener: BorrowedFd<'_>) -> Result<(), DatapathError> {
    use crate::loader::LOOKUP_PROGRAM;
    let attach_err = |detail: String| DatapathError::Attach { prog: LOOKUP_PROGRAM, target: "netns".into(), detail };
    if !dp.l7_lookup {
        let netns = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(|source| DatapathError::Io { path: "/proc/thread-self/ns/net".into(), source })?;
        let prog: &mut SkLookup = dp
            .bpf
            .program_mut(LOOKUP_PROGRAM)
            .ok_or_else(|| attach_err("not in the loaded objects".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| attach_err(e.to_string()))?;
        if prog.fd().is_err() {
            return Err(attach_err(
                "the kernel did not load the sk_lookup program (BPF_PROG_TYPE_SK_LOOKUP needs Linux 5.9); \
                 for HTTP rules on this node give its policy to iptables (`dataplane: iptables` in its node config)"
                    .into(),
            ));
        }
        let id = prog.attach(&netns).map_err(|e| attach_err(e.to_string()))?;
        let link = prog.take_link(id).map_err(|e| attach_err(e.to_string()))?;
        let link: aya::programs::links::FdLink = link.into();
        let path = dp.pin_dir.join(LOOKUP_LINK);
        if let Ok(old) = aya::programs::links::PinnedLink::from_pin(&path) {
            let _ = old.unpin();
        }
        link.pin(&path).map_err(|e| attach_err(format!("pinning {}: {e}", path.display())))?;
        dp.l7_lookup = true;
    }
    let m = dp.bpf.map_mut(SOCK).ok_or(missing(SOCK))?;
    let mut socks: SockMap<_> = SockMap::try_from(m).map_err(map_err(SOCK))?;
    socks.set(0, &listener, 0).map_err(map_err(SOCK))
}
