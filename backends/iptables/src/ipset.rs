//! ipsets, driven through `ipset restore` in one batch per sync (never one process per
//! entry) and read back with `ipset save`. Every set sluice makes is named `sluice-<hash>`;
//! only those are read, changed or destroyed.
//!
//! Sets are `hash:net`: single addresses, networks, and `nomatch` entries (an ipBlock's
//! `except` inside its `cidr` is one set: the most specific entry decides).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

pub const SET_PREFIX: &str = "sluice-";
/// Entries per set (the kernel's default is 65536; a pod network's worth of pods fits).
pub const MAXELEM: usize = 262_144;

/// Set name -> entries (`10.0.0.1/32`, `10.1.0.0/16 nomatch`).
pub type Sets = BTreeMap<String, BTreeSet<String>>;

#[derive(Debug, thiserror::Error)]
pub enum IpsetError {
    #[error("could not run ipset: {source} (install the ipset package)")]
    Spawn { source: std::io::Error },
    #[error("ipset {op} failed (exit {status}): {stderr}")]
    Failed { op: &'static str, status: String, stderr: String },
    #[error("set {set} would hold {entries} entries, more than {max}; its endpoint keeps its last complete policy")]
    Overflow { set: String, entries: usize, max: usize },
}

/// Parse `ipset save` output: sluice's sets only.
pub fn parse_save(text: &str) -> Sets {
    let mut out = Sets::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("create"), Some(name)) if name.starts_with(SET_PREFIX) => {
                out.entry(name.to_string()).or_default();
            }
            (Some("add"), Some(name)) if name.starts_with(SET_PREFIX) => {
                let rest: Vec<&str> = w.collect();
                out.entry(name.to_string()).or_default().insert(normalize(&rest.join(" ")));
            }
            _ => {}
        }
    }
    out
}

/// `ipset save` prints host entries without `/32`; entries compare in one form.
fn normalize(e: &str) -> String {
    let (addr, rest) = e.split_once(' ').map(|(a, r)| (a, Some(r))).unwrap_or((e, None));
    let addr = if addr.contains('/') { addr.to_string() } else { format!("{addr}/32") };
    match rest {
        Some(r) if r.contains("nomatch") => format!("{addr} nomatch"),
        _ => addr,
    }
}

/// The batch that creates and fills sets: new sets are created, changed ones get the entries
/// that differ. Sets to destroy go in [`destroy_batch`], after the rules using them are gone.
pub fn update_batch(want: &Sets, have: &Sets) -> Result<String, IpsetError> {
    let mut b = String::new();
    for (name, entries) in want {
        if entries.len() > MAXELEM {
            return Err(IpsetError::Overflow { set: name.clone(), entries: entries.len(), max: MAXELEM });
        }
        let old = have.get(name);
        if old.is_none() {
            let _ = writeln!(b, "create {name} hash:net family inet maxelem {MAXELEM} -exist");
        }
        let empty = BTreeSet::new();
        let old = old.unwrap_or(&empty);
        for e in old.difference(entries) {
            let _ = writeln!(b, "del {name} {} -exist", e.trim_end_matches(" nomatch"));
        }
        for e in entries.difference(old) {
            let _ = writeln!(b, "add {name} {e} -exist");
        }
    }
    Ok(b)
}

pub fn destroy_batch(want: &Sets, have: &Sets) -> String {
    have.keys().filter(|n| !want.contains_key(*n)).map(|n| format!("destroy {n}\n")).collect()
}

pub fn save() -> Result<Sets, IpsetError> {
    let out = Command::new("ipset").arg("save").output().map_err(|source| IpsetError::Spawn { source })?;
    if !out.status.success() {
        return Err(IpsetError::Failed {
            op: "save",
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(parse_save(&String::from_utf8_lossy(&out.stdout)))
}

pub fn restore(batch: &str) -> Result<(), IpsetError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ipset")
        .arg("restore")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IpsetError::Spawn { source })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(batch.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| IpsetError::Spawn { source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(IpsetError::Failed {
            op: "restore",
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_is_parsed_into_sluice_sets_only_and_batches_carry_only_differences() {
        let have = parse_save(
            "create other hash:ip family inet\nadd other 1.2.3.4\ncreate sluice-a hash:net family inet\nadd sluice-a 10.0.0.1\nadd sluice-a 10.1.0.0/16 nomatch\ncreate sluice-gone hash:net\n",
        );
        assert_eq!(have.len(), 2);
        assert!(have["sluice-a"].contains("10.0.0.1/32") && have["sluice-a"].contains("10.1.0.0/16 nomatch"));
        let want: Sets = [
            ("sluice-a".to_string(), ["10.0.0.1/32".to_string(), "10.0.0.2/32".to_string()].into()),
            ("sluice-b".to_string(), ["10.9.0.0/16".to_string()].into()),
        ]
        .into();
        let b = update_batch(&want, &have).expect("batch");
        assert_eq!(
            b,
            "del sluice-a 10.1.0.0/16 -exist\nadd sluice-a 10.0.0.2/32 -exist\ncreate sluice-b hash:net family inet maxelem 262144 -exist\nadd sluice-b 10.9.0.0/16 -exist\n"
        );
        assert_eq!(destroy_batch(&want, &have), "destroy sluice-gone\n");
    }
}
