//! Classic tc vs TCX on one kernel: the same programs over the same maps (N Services), the
//! client pod's veth attached one way, then the other, in ABBA rounds (bench_paired's method):
//! conn/s through the ClusterIP, each pair seconds apart. Only where the kernel has TCX (else
//! there is one path and nothing to compare).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use sluice_core::TcAttach;

use crate::Lab;
use crate::bench_paired::{Deploy, Pairs, ROUNDS, SETTLE_TIME, Target};
use crate::bench_services::{Options, ebpf_inputs, load, vip};

pub fn classic_vs_tcx(
    lab: &Lab,
    o: &Options,
    n: usize,
    backend: Ipv4Addr,
    client_if: &str,
) -> anyhow::Result<Option<Pairs>> {
    if n == 0 || !sluice_ebpf::probe::tcx().0 {
        return Ok(None);
    }
    let pin = PathBuf::from(format!("/sys/fs/bpf/sluice-bench-attach-{}", std::process::id()));
    let _ = sluice_ebpf::datapath::remove_all(&pin);
    let res = (|| -> anyhow::Result<Pairs> {
        let mut dp = sluice_ebpf::datapath::Datapath::open(&pin, &Default::default())?;
        let (svcs, ctx) = ebpf_inputs(n, backend);
        dp.update(&svcs, &[], &ctx)?;
        let target = SocketAddr::new(IpAddr::V4(vip(n / 2)), 80);
        let mut pairs = Pairs {
            a: Deploy::EbpfClassic(n),
            b: Deploy::EbpfTcx(n),
            target: Target::ClusterIp,
            conn_per_s: Vec::new(),
        };
        for round in 0..ROUNDS {
            let order = if round % 4 == 0 || round % 4 == 3 {
                [TcAttach::Classic, TcAttach::Tcx]
            } else {
                [TcAttach::Tcx, TcAttach::Classic]
            };
            let mut pair = [0.0; 2];
            for path in order {
                // The new path is attached before the other is released: no gap, and only one
                // path carries the traffic while measuring.
                dp.attach(client_if, path)?;
                std::thread::sleep(SETTLE_TIME);
                pair[usize::from(path == TcAttach::Tcx)] = load(lab, target, o)?;
            }
            eprintln!("attach round {}: classic {:.0} conn/s, tcx {:.0} conn/s", round + 1, pair[0], pair[1]);
            pairs.conn_per_s.push(pair);
        }
        Ok(pairs)
    })();
    sluice_ebpf::datapath::remove_all(&pin)?;
    res.map(Some)
}
