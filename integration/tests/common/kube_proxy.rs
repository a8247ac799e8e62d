//! kube-proxy's rules for the lab's `web` Service (ClusterIP 10.96.0.10:80, NodePort 30080,
//! target port 8080) over some backends, in its iptables and nftables-mode layouts, written as
//! kube-proxy writes them (comments, chain names, probabilities, masquerade marks) so sluice's
//! readers see what they would see on a real node.

/// iptables mode (`iptables-restore --noflush` input), hooked from PREROUTING and OUTPUT like
/// kube-proxy's, appended (a kube-proxy started after sluice would find sluice's hooks first).
pub fn iptables(backends: &[&str]) -> String {
    let mut chains = String::from(
        ":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-EXT-WEB - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-SVC-WEB - [0:0]\n",
    );
    let mut svc = String::new();
    let mut seps = String::new();
    let n = backends.len();
    for (i, ip) in backends.iter().enumerate() {
        let sep = format!("KUBE-SEP-{}", (b'A' + i as u8) as char);
        chains.push_str(&format!(":{sep} - [0:0]\n"));
        let pick = if i + 1 < n {
            format!(" -m statistic --mode random --probability {:.11}", 1.0 / (n - i) as f64)
        } else {
            String::new()
        };
        svc.push_str(&format!(
            "-A KUBE-SVC-WEB -m comment --comment \"default/web:http -> {ip}:8080\"{pick} -j {sep}\n"
        ));
        seps.push_str(&format!(
            "-A {sep} -s {ip}/32 -j KUBE-MARK-MASQ\n-A {sep} -p tcp -m tcp -j DNAT --to-destination {ip}:8080\n"
        ));
    }
    format!(
        "*nat\n{chains}\
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
-A KUBE-POSTROUTING -j MASQUERADE --random-fully\n\
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-WEB\n\
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
-A KUBE-NODEPORTS -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 30080 -j KUBE-EXT-WEB\n\
-A KUBE-EXT-WEB -j KUBE-MARK-MASQ\n\
-A KUBE-EXT-WEB -j KUBE-SVC-WEB\n\
{svc}{seps}COMMIT\n"
    )
}

/// nftables mode (`nft -f` input): its own table, base chains as its hooks; `node_ip` is the
/// node's address NodePorts answer on.
pub fn nftables(backends: &[&str], node_ip: &str) -> String {
    let svc = "service-WEB00001-default/web/tcp/http";
    let eps: Vec<(String, &str)> = backends
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            (format!("endpoint-EP{}0000{}-default/web/tcp/http__{ip}/8080", (b'A' + i as u8) as char, i + 1), *ip)
        })
        .collect();
    let ep_chains: String = eps
        .iter()
        .map(|(c, ip)| {
            format!("\tchain {c} {{ ip saddr {ip} jump mark-for-masquerade; meta l4proto tcp dnat to {ip}:8080; }}\n")
        })
        .collect();
    let vmap: Vec<String> = eps.iter().enumerate().map(|(i, (c, _))| format!("{i} : goto {c}")).collect();
    format!(
        "table ip kube-proxy {{\n\
\tset nodeport-ips {{ type ipv4_addr; elements = {{ {node_ip} }}; }}\n\
\tmap service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; elements = {{ 10.96.0.10 . tcp . 80 : goto {svc} }}; }}\n\
\tmap service-nodeports {{ type inet_proto . inet_service : verdict; elements = {{ tcp . 30080 : goto external-WEB00001-default/web/tcp/http }}; }}\n\
\tchain mark-for-masquerade {{ meta mark set meta mark or 0x4000; }}\n\
\tchain masquerading {{ meta mark & 0x4000 == 0 return; meta mark set meta mark xor 0x4000; masquerade fully-random; }}\n\
\tchain services {{ ip daddr . meta l4proto . th dport vmap @service-ips; ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports; }}\n\
\tchain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}\n\
\tchain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}\n\
\tchain nat-postrouting {{ type nat hook postrouting priority srcnat; policy accept; jump masquerading; }}\n\
{ep_chains}\
\tchain {svc} {{ ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade; numgen random mod {} vmap {{ {} }}; }}\n\
\tchain external-WEB00001-default/web/tcp/http {{ jump mark-for-masquerade; goto {svc}; }}\n\
}}\n",
        eps.len(),
        vmap.join(", ")
    )
}
