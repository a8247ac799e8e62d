//! Change detection for the backends' incremental syncs (eBPF map writes, iptables rendering):
//! a 64-bit fingerprint of everything a Service is programmed from, compared with the last
//! sync's. Fast rather than collision-proof: it only tells two versions of one Service apart
//! within one process (a miss needs a 2^-64 collision).

use crate::Service;

/// A fast, non-cryptographic 64-bit hasher (the Fx rotate-multiply scheme): fingerprints only
/// detect change between two calls in one process.
#[derive(Default)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        }
        // The last word always carries the length: adjacent strings cannot trade bytes.
        let rest = chunks.remainder();
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        self.write_u64(u64::from_le_bytes(last) ^ (bytes.len() as u64).rotate_right(8));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

impl Service {
    /// Everything of the Service but its name (callers key their caches by name), fed to the
    /// hasher as few wide words as the fields allow: this runs for every Service on every change.
    pub fn fingerprint(&self) -> u64 {
        fingerprint(self)
    }
}

fn fingerprint(s: &Service) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = Fx::default();
    let ip = |ip: &std::net::IpAddr| match ip {
        std::net::IpAddr::V4(a) => u64::from(u32::from(*a)),
        std::net::IpAddr::V6(a) => u128::from(*a) as u64 ^ (u128::from(*a) >> 64) as u64 ^ 1 << 63,
    };
    h.write_u64(s.frontends.len() as u64 | (s.backends.len() as u64) << 32);
    for f in &s.frontends {
        h.write_u64(f.ip.as_ref().map_or(u64::MAX, ip));
        h.write_u64(
            u64::from(f.port) | u64::from(f.target_port) << 16 | (f.kind as u64) << 32 | (f.protocol as u64) << 40,
        );
        h.write(f.port_name.as_bytes());
    }
    for b in &s.backends {
        h.write_u64(ip(&b.ip));
        h.write_u64(u64::from(b.port) | (b.protocol as u64) << 16 | (b.state as u64) << 24);
        h.write(b.port_name.as_bytes());
        match &b.node {
            Some(n) => h.write(n.as_bytes()),
            None => h.write_u64(u64::MAX),
        }
    }
    h.write_u64(
        u64::from(s.affinity_timeout_s.unwrap_or(u32::MAX))
            | u64::from(s.external_local) << 32
            | u64::from(s.internal_local) << 33
            | u64::from(s.health_check_node_port.unwrap_or(0)) << 34,
    );
    s.source_ranges.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::fingerprint;
    use crate::testing::{ServiceBuilder, backend};
    use crate::{BackendState, FrontendKind, Service};

    fn svc() -> Service {
        ServiceBuilder::new("default", "web")
            .cluster_ip("10.96.0.10", 80)
            .backend(backend("10.244.1.2", 8080, "node-1"))
            .build()
    }

    #[test]
    fn every_field_that_is_programmed_changes_the_fingerprint() {
        let base = fingerprint(&svc());
        assert_eq!(base, fingerprint(&svc()), "same content, same fingerprint");
        type Edit = (&'static str, fn(&mut Service));
        let edits: Vec<Edit> = vec![
            ("frontend port", |s| s.frontends[0].port = 81),
            ("frontend kind", |s| s.frontends[0].kind = FrontendKind::ExternalIp),
            ("target port", |s| s.frontends[0].target_port = 8081),
            ("backend ip", |s| s.backends[0].ip = "10.244.1.3".parse().expect("ip")),
            ("backend state", |s| s.backends[0].state = BackendState::Terminating),
            ("backend node", |s| s.backends[0].node = None),
            ("affinity", |s| s.affinity_timeout_s = Some(10)),
            ("external local", |s| s.external_local = true),
            ("source ranges", |s| s.source_ranges = vec!["10.0.0.0/8".parse().expect("net")]),
            ("backend removed", |s| {
                s.backends.pop();
            }),
            // Adjacent strings trading bytes: port name "http" + node "node-1" vs "httpn" + "ode-1".
            ("string boundary", |s| {
                s.backends[0].port_name = "httpn".into();
                s.backends[0].node = Some("ode-1".into());
            }),
        ];
        for (what, edit) in edits {
            let mut s = svc();
            edit(&mut s);
            assert_ne!(fingerprint(&s), base, "{what}");
        }
    }
}
