//! Rule rendering: desired state in, `iptables-restore` input out. Pure.

use ipnet::Ipv4Net;

pub const POSTROUTING_CHAIN: &str = "SLUICE-POSTROUTING";

/// What the masquerade manager wants in the nat table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradeSpec {
    /// Traffic from here to outside `cluster_cidr` is masqueraded...
    pub pod_cidr: Ipv4Net,
    /// ...and traffic that stays inside it keeps its pod source address.
    pub cluster_cidr: Ipv4Net,
}

/// The nat-table batch for masquerading. Declaring the chain (`:CHAIN - [0:0]`) in a
/// `--noflush` restore flushes just that chain, so the batch is idempotent. `hook_present`
/// says whether POSTROUTING already jumps to our chain (from `iptables-save`); the jump is
/// added only when missing so it stays a single rule.
pub fn masquerade_batch(spec: &MasqueradeSpec, hook_present: bool) -> String {
    let mut s = String::from("*nat\n");
    s.push_str(&format!(":{POSTROUTING_CHAIN} - [0:0]\n"));
    s.push_str(&format!(
        "-A {POSTROUTING_CHAIN} -s {pod} -d {cluster} -m comment --comment \"sluice: pod traffic inside the cluster keeps its source\" -j RETURN\n",
        pod = spec.pod_cidr,
        cluster = spec.cluster_cidr
    ));
    s.push_str(&format!(
        "-A {POSTROUTING_CHAIN} -s {pod} -m comment --comment \"sluice: masquerade pod traffic leaving the cluster\" -j MASQUERADE\n",
        pod = spec.pod_cidr
    ));
    if !hook_present {
        s.push_str(&hook_rule("-I", "POSTROUTING", POSTROUTING_CHAIN));
    }
    s.push_str("COMMIT\n");
    s
}

/// The single jump from a built-in chain into a sluice chain.
pub fn hook_rule(op: &str, builtin: &str, target: &str) -> String {
    format!("{op} {builtin} -m comment --comment \"sluice: hook {target}\" -j {target}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MasqueradeSpec {
        MasqueradeSpec {
            pod_cidr: "10.244.1.0/24".parse().expect("net"),
            cluster_cidr: "10.244.0.0/16".parse().expect("net"),
        }
    }

    #[test]
    fn batch_with_and_without_hook() {
        let with = masquerade_batch(&spec(), false);
        assert!(with.starts_with("*nat\n:SLUICE-POSTROUTING - [0:0]\n"));
        assert!(with.contains("-s 10.244.1.0/24 -d 10.244.0.0/16"));
        assert!(with.contains("-j MASQUERADE"));
        assert!(
            with.contains(
                "-I POSTROUTING -m comment --comment \"sluice: hook SLUICE-POSTROUTING\" -j SLUICE-POSTROUTING"
            )
        );
        assert!(with.ends_with("COMMIT\n"));
        let without = masquerade_batch(&spec(), true);
        assert!(!without.contains("-I POSTROUTING"));
        // RETURN for in-cluster traffic must precede MASQUERADE.
        assert!(with.find("-j RETURN") < with.find("-j MASQUERADE"));
    }
}
