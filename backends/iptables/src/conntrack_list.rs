//! The kernel's conntrack table as `conntrack -L` prints it, and what `sluice migrate verify`
//! counts in it: entries to each Service frontend, and how many of those a NAT rule translated
//! (kube-proxy's or sluice's iptables DNAT; eBPF translates before netfilter, so its flows are
//! tracked to the backend, not the frontend). Parsing is pure; one `conntrack -L` per count.

use std::net::IpAddr;
use std::process::Command;

use crate::sync::ConntrackError;

/// One entry: the original direction's destination and the reply's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtEntry {
    pub protocol: String,
    pub orig_dst: IpAddr,
    pub orig_dport: Option<u16>,
    pub reply_src: IpAddr,
}

impl CtEntry {
    /// Did NAT rewrite the destination (the reply comes from elsewhere)?
    pub fn translated(&self) -> bool {
        self.reply_src != self.orig_dst
    }
}

/// Entries of `conntrack -L` output; lines of another shape are skipped.
pub fn parse(text: &str) -> Vec<CtEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<CtEntry> {
    let protocol = line.split_whitespace().next()?.to_string();
    let (mut dst, mut dport, mut src2) = (None, None, None);
    let mut srcs = 0;
    for w in line.split_whitespace() {
        let Some((k, v)) = w.split_once('=') else { continue };
        match k {
            "src" => {
                srcs += 1;
                if srcs == 2 {
                    src2 = v.parse().ok();
                }
            }
            "dst" if dst.is_none() => dst = v.parse().ok(),
            "dport" if dport.is_none() && srcs == 1 => dport = v.parse().ok(),
            _ => {}
        }
    }
    Some(CtEntry { protocol, orig_dst: dst?, orig_dport: dport, reply_src: src2? })
}

/// The whole IPv4 table, one process.
pub fn list() -> Result<Vec<CtEntry>, ConntrackError> {
    let err = |detail: String| ConntrackError::Tool { args: vec!["-L".into()], detail };
    let out = Command::new("conntrack").arg("-L").output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_give_the_original_destination_and_the_reply_source() {
        let text = "tcp      6 431999 ESTABLISHED src=10.244.1.3 dst=10.96.0.10 sport=40000 dport=80 src=10.244.2.2 dst=10.244.1.3 sport=8080 dport=40000 [ASSURED] mark=0 use=1\n\
udp      17 29 src=10.244.1.3 dst=10.96.0.53 sport=5000 dport=53 [UNREPLIED] src=10.96.0.53 dst=10.244.1.3 sport=53 dport=5000 mark=0 use=1\n\
icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=7 mark=0 use=1\n\
conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n";
        let e = parse(text);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].orig_dst, "10.96.0.10".parse::<IpAddr>().expect("ip"));
        assert_eq!(e[0].orig_dport, Some(80));
        assert!(e[0].translated());
        assert!(!e[1].translated(), "an untranslated datagram");
        assert_eq!(e[1].protocol, "udp");
        assert_eq!(e[2].orig_dport, None);
    }
}
