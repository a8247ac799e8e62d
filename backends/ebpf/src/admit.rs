//! Admission: what the eBPF maps can hold, decided before anything is written.
//!
//! A map that cannot hold every Service holds what fits: Services already in the maps first
//! (a served Service never loses its place to a newcomer), then the rest in name order. Each
//! Service that does not fit is refused by name with the map and the config key to raise, on
//! every pass for as long as it lasts; it is never listed as served. SCTP frontends are refused
//! by name too: the programs translate TCP and UDP only (the Service's other ports are served).

use std::borrow::Cow;
use std::collections::BTreeSet;

use sluice_core::{
    BackendId, DataplaneError, HostPort, MapSizes, ObjectError, ObjectRef, Protocol, Service, ServiceName,
};

use crate::maps::{Footprint, NodeCtx, footprint, footprint_bound, host_ports_footprint};

/// The Services to write (borrowed when all are admitted whole) and the refusals.
pub struct Admission<'a> {
    pub services: Cow<'a, [Service]>,
    pub refused: Vec<ObjectError>,
}

fn refuse(name: &ServiceName, error: DataplaneError) -> ObjectError {
    ObjectError { object: ObjectRef::Service(name.clone()), error }
}

/// `services` sorted by name (as sources deliver them); `written`: the Services the maps hold.
pub fn admit<'a>(
    services: &'a [Service],
    host_ports: &[HostPort],
    ctx: &NodeCtx,
    sizes: &MapSizes,
    written: &BTreeSet<ServiceName>,
) -> Admission<'a> {
    let has_sctp = |s: &Service| s.frontends.iter().any(|f| f.protocol == Protocol::Sctp);
    // Fast path (every pass with room to spare): the upper bounds fit, nothing is encoded twice.
    let mut bound = host_ports_footprint(services, host_ports, ctx);
    for s in services {
        bound.add(footprint_bound(s, ctx));
    }
    if bound.overflow(sizes).is_none() && !services.iter().any(has_sctp) {
        return Admission { services: Cow::Borrowed(services), refused: Vec::new() };
    }
    let mut refused = Vec::new();
    // SCTP frontends out first (a copy only of the Services that have one).
    let mut sctp_free: Vec<Cow<'a, Service>> = Vec::with_capacity(services.len());
    for s in services {
        if has_sctp(s) {
            let mut c = s.clone();
            c.frontends.retain(|f| f.protocol != Protocol::Sctp);
            refused.push(refuse(
                &s.name,
                DataplaneError::UnsupportedProtocol { backend: BackendId::EBPF, protocol: Protocol::Sctp },
            ));
            sctp_free.push(Cow::Owned(c));
        } else {
            sctp_free.push(Cow::Borrowed(s));
        }
    }
    let mut used: Footprint = host_ports_footprint(services, host_ports, ctx);
    let mut order: Vec<usize> = (0..sctp_free.len()).collect();
    order.sort_by_key(|i| !written.contains(&sctp_free[*i].name));
    let mut keep = vec![false; sctp_free.len()];
    for i in order {
        let mut next = used;
        next.add(footprint(&sctp_free[i], ctx));
        match next.overflow(sizes) {
            None => {
                used = next;
                keep[i] = true;
            }
            Some((map, entries)) => refused.push(refuse(
                &sctp_free[i].name,
                DataplaneError::MapFull { backend: BackendId::EBPF, map: map.into(), entries },
            )),
        }
    }
    let whole = keep.iter().all(|k| *k) && sctp_free.iter().all(|s| matches!(s, Cow::Borrowed(_)));
    let services = if whole {
        Cow::Borrowed(services)
    } else {
        Cow::Owned(sctp_free.into_iter().zip(keep).filter(|(_, k)| *k).map(|(s, _)| s.into_owned()).collect())
    };
    refused.sort_by(|a, b| a.object.cmp(&b.object));
    Admission { services, refused }
}

#[cfg(test)]
#[path = "admit_tests.rs"]
mod tests;
