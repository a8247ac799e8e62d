//! The floor of a single change on iptables-legacy: what restoring ONE rule costs when the nat
//! table holds nothing but the DNAT rules any per-endpoint iptables proxy needs (N x 10
//! endpoints, each `-m statistic` + DNAT, one chain per Service, no dispatch, no masquerade).
//! iptables-legacy replaces the whole table on every restore, so no layout of the same
//! endpoints can change one of them faster than this; the bench prints it beside sluice's and
//! the peer's change times so the goal can be read against it.

use std::fmt::Write;

use anyhow::bail;

use crate::bench_services::{ENDPOINTS, Options, flush_all, ms, restore};

/// The restore input: `n` chains of ENDPOINTS DNAT rules each.
pub fn floor_table(n: usize) -> String {
    let mut s = String::from("*nat\n");
    for i in 0..n {
        let _ = writeln!(s, ":FLOOR-{i} - [0:0]");
    }
    for j in 0..n * ENDPOINTS {
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 100, 0, 0)) + j as u32);
        let stat =
            if j % ENDPOINTS + 1 < ENDPOINTS { "-m statistic --mode random --probability 0.50000000000 " } else { "" };
        let _ = writeln!(s, "-A FLOOR-{} -p tcp {stat}-j DNAT --to-destination {ip}:8080", j / ENDPOINTS);
    }
    s.push_str("COMMIT\n");
    s
}

/// Median of five one-rule restores (`--noflush`) into the floor table of `n` Services, in ms;
/// None when even loading the floor table did not finish in time.
pub fn single_change_floor(n: usize, o: &Options) -> anyhow::Result<Option<f64>> {
    flush_all()?;
    let bin = "iptables-legacy-restore";
    if restore(bin, &["--noflush", "--wait"], floor_table(n).as_bytes(), o.restore_timeout)?.is_none() {
        flush_all()?;
        return Ok(None);
    }
    let mut times = Vec::new();
    for i in 0..5 {
        let one = format!(
            "*nat\n:FLOOR-{i} - [0:0]\n-A FLOOR-{i} -p tcp -j DNAT --to-destination 10.99.0.{i}:8080\nCOMMIT\n"
        );
        match restore(bin, &["--noflush", "--wait"], one.as_bytes(), o.restore_timeout)? {
            Some(d) => times.push(ms(d)),
            None => bail!("a one-rule restore did not finish in {:?}", o.restore_timeout),
        }
    }
    flush_all()?;
    times.sort_by(f64::total_cmp);
    Ok(times.get(times.len() / 2).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_holds_exactly_the_endpoint_rules() {
        let t = floor_table(3);
        assert_eq!(t.lines().filter(|l| l.starts_with("-A ")).count(), 3 * ENDPOINTS);
        assert_eq!(t.lines().filter(|l| l.starts_with(':')).count(), 3);
        // As any random-choice proxy: every endpoint but the last of a Service has a statistic match.
        assert_eq!(t.lines().filter(|l| l.contains("statistic")).count(), 3 * (ENDPOINTS - 1));
        assert!(t.ends_with("COMMIT\n"));
    }
}
