//! The L7 redirect: connections an endpoint's `Proxy` rules match are handed to the node's L7
//! proxy with TPROXY in mangle PREROUTING (before routing: the packet keeps its addresses, the
//! proxy's socket sees the original destination and the client's address).
//!
//! ```text
//! mangle PREROUTING -> SLUICE-POL-L7
//!   -p tcp ! --syn -m socket --transparent -> MARK     replies to the proxy's own upstream
//!   -m mark --mark 0x40000 -> RETURN                    connections (they carry the client's
//!                                                       address): delivered to the proxy
//!   -d <ClusterIP> -p tcp --dport <port> --syn -> CONNMARK, TPROXY
//!                                                       a Service whose backends have Proxy
//!                                                       rules here (`l7_frontends`); later
//!                                                       packets: connmark -> MARK, RETURN
//!   -i <pod veth> -> SLUICE-POL-L7-E-<hash>             egress of a pod with Proxy rules
//!   -d <pod ip>   -> SLUICE-POL-L7-I-<hash>             ingress of a pod with Proxy rules
//! SLUICE-POL-L7-I-<hash>: the lowered list in order (first match decides, as in FORWARD):
//!   deny, allow -> RETURN (FORWARD decides: drop, pass)
//!   proxy      -> --syn: CONNMARK; TPROXY --on-ip 127.0.0.1 --on-port <proxy> --tproxy-mark 0x40000
//! ```
//! Only a connection's SYN is TPROXYed; its later packets take the connmark's MARK and are
//! routed locally, where the kernel finds the proxy's socket after nat. TPROXY looks sockets up
//! before nat: when conntrack gave the connection another source port (its reply tuple clashed
//! with a ClusterIP connection's from the same client port, DNATed to this pod), the SYN still
//! reached the listener, but TPROXY's lookup of the ACK missed the new connection under the
//! client's own port and handed it to the listener, which reset it (the demo saw new
//! connections reset for ~30 s after a dataplane switch).
//! A marked packet is routed locally by the node's rule `fwmark 0x40000 lookup 2004` (table
//! 2004: `local 0.0.0.0/0 dev lo`), which the agent keeps while the proxy runs. What is not
//! redirected meets the FORWARD chains, where `Proxy` rules are absent: without the proxy
//! (`PolicyView::l7_proxy` is `None`) an L7-policed port lets nothing through.
//! The chains are `SLUICE-POL-*`: the policy syncer owns them; `sluice cleanup` removes them.

use sluice_core::policy::{Action, EndpointRules, PolicyView, lower};

use crate::ipset::Sets;
use crate::policy::{peer_match, proto_match};
use crate::ruleset::Ruleset;
use crate::services::quote;

pub const L7_CHAIN: &str = "SLUICE-POL-L7";
/// The packet mark bit of connections for the proxy (services use 0x10000 and 0x20000).
pub const PROXY_MARK: u32 = 0x40000;
/// The routing table that delivers marked packets locally.
pub const PROXY_TABLE: u32 = 2004;

fn chain(ep: &EndpointRules, ingress: bool) -> String {
    crate::policy::endpoint_chain_of("L7-", &ep.interface, ingress)
}

/// Add the redirect chains for `view`'s Proxy rules (nothing while no proxy runs or no rule
/// needs one).
pub fn render(view: &PolicyView, r: &mut Ruleset, sets: &mut Sets) {
    let Some(port) = view.l7_proxy else { return };
    let mark = format!("{PROXY_MARK:#x}/{PROXY_MARK:#x}");
    // Replies are never a bare SYN: a client's SYN must not match the TIME_WAIT the proxy's
    // earlier connection on the same ports left (it would meet that socket, not the proxy's
    // listener, and be answered with a stale ACK).
    let mut dispatch = vec![format!(
        "-p tcp -m tcp ! --tcp-flags SYN,RST,ACK SYN -m socket --transparent -m comment --comment \"sluice: replies to the L7 proxy\" -j MARK --set-xmark {mark}"
    )];
    dispatch.push(format!(
        "-m connmark --mark {mark} -m comment --comment \"sluice: a connection the L7 proxy took\" -j MARK --set-xmark {mark}"
    ));
    dispatch.push(format!("-m mark --mark {mark} -j RETURN"));
    // ClusterIPs with HTTP-policed backends: the SYN goes to the proxy's listener before nat
    // translates it (the proxy's socket then holds the backend's address); the connection is
    // marked, so its later packets, translated by conntrack, are delivered locally too, where
    // the kernel finds the proxy's socket by the translated addresses.
    // External frontends (NodePort, ExternalIPs, LoadBalancer IPs) likewise when nat can only
    // send them to local L7-policed backends (`externalTrafficPolicy: Local`, or no other
    // backend); otherwise a connection nat sends to another node must not meet the proxy, and
    // those to a local L7-policed pod are dropped in FORWARD (fails closed).
    for f in view.l7_frontends.iter().filter(|f| !f.external || f.only_local) {
        let m = format!("-d {}/32 -p tcp -m tcp --dport {} --tcp-flags SYN,RST,ACK SYN", f.vip, f.port);
        let by = quote(&f.service);
        let what = if f.external { "frontend" } else { "ClusterIP" };
        dispatch.push(format!(
            "{m} -m comment --comment \"sluice: {what} of {by}, its L7 proxy connection\" -j CONNMARK --set-xmark {mark}"
        ));
        dispatch.push(format!(
            "{m} -m comment --comment \"sluice: {what} of {by} to the L7 proxy\" -j TPROXY --on-ip 127.0.0.1 --on-port {port} --tproxy-mark {mark}"
        ));
    }
    let mut eps: Vec<&EndpointRules> = view.endpoints.iter().collect();
    eps.sort_by(|a, b| a.interface.cmp(&b.interface));
    for ep in eps {
        for ingress in [false, true] {
            let d = if ingress { &ep.policy.ingress } else { &ep.policy.egress };
            if !d.enforced || !d.rules.iter().any(|r| r.action == Action::Proxy && !r.audit) {
                continue;
            }
            let name = chain(ep, ingress);
            let mut rules = Vec::new();
            for lr in lower(&crate::policy::endpoint_chain(&ep.interface, ingress), d, view) {
                let m = format!("{}{}", peer_match(&lr, ingress, sets), proto_match(lr.protocol, lr.ports));
                let by = quote(&lr.policies.join(", "));
                let rule = match lr.action {
                    Action::Deny | Action::Allow => {
                        format!("{m}-m comment --comment \"sluice: L4 rule of {by}, FORWARD decides\" -j RETURN")
                    }
                    Action::Proxy => {
                        // The connection is marked too: its later packets are delivered by the
                        // mark, after nat (see the module doc), not by TPROXY's lookup.
                        let tcp = if m.contains("-m tcp ") { "" } else { "-m tcp " };
                        rules.push(format!(
                            "{m}{tcp}--tcp-flags SYN,RST,ACK SYN -m comment --comment \"sluice: L7 proxy connection by {by}\" -j CONNMARK --set-xmark {mark}"
                        ));
                        format!(
                            "{m}-m comment --comment \"sluice: to the L7 proxy by {by}\" -j TPROXY --on-ip 127.0.0.1 --on-port {port} --tproxy-mark {mark}"
                        )
                    }
                };
                rules.push(rule);
            }
            *r.chain("mangle", &name) = rules;
            let (what, matches) = if ingress {
                ("ingress of", format!("-d {}", ep.ip))
            } else {
                ("egress of", format!("-i {}", ep.interface))
            };
            dispatch.push(format!("{matches} -m comment --comment \"sluice: L7 {what} {}\" -j {name}", quote(&ep.pod)));
        }
    }
    if dispatch.iter().any(|r| r.contains("-j TPROXY") || r.contains("-j SLUICE-POL-L7-")) {
        *r.chain("mangle", L7_CHAIN) = dispatch;
        r.hook("mangle", "PREROUTING", L7_CHAIN, "");
    }
}
