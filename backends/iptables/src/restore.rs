//! Running `iptables-save` / `iptables-restore`. One process per table batch, never per rule.

use std::io::Write;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::save::{self, TableDump};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Nft,
    Legacy,
}

impl Variant {
    /// The variant a node uses, from the rules each holds (iptables-wrappers' rule).
    pub fn in_use(nft_rules: usize, legacy_rules: usize) -> Self {
        if legacy_rules > nft_rules { Variant::Legacy } else { Variant::Nft }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("could not run {binary}: {source} (install the iptables package)")]
    Spawn { binary: String, source: std::io::Error },
    #[error("{binary} failed (exit {status}) for table {table}: {stderr}")]
    Failed {
        binary: String,
        table: String,
        status: String,
        stderr: String,
        /// The input line the tool names as failing (`line N`), when it names one: what lets
        /// a caller tell which object's rules the kernel refused.
        line: Option<String>,
    },
}

/// The batch line a failed restore names: both variants say `line N` (nft: `line 5:
/// CHAIN_DEL failed (Device or resource busy): chain X`; legacy: `line 5 failed`), 1-based.
pub fn failed_line<'b>(stderr: &str, batch: &'b str) -> Option<&'b str> {
    let at = stderr.find("line ")?;
    let digits: String = stderr[at + 5..].chars().take_while(char::is_ascii_digit).collect();
    let n: usize = digits.parse().ok()?;
    batch.lines().nth(n.checked_sub(1)?)
}

#[derive(Debug, Clone, Copy)]
pub struct Iptables {
    pub variant: Variant,
}

fn count_rules(binary: &str) -> Option<usize> {
    let out = Command::new(binary).stdout(Stdio::piped()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("-A ")).count())
}

/// Rules present in each variant now: (nft, legacy); a variant not installed counts 0.
pub fn rule_counts() -> (usize, usize) {
    (count_rules("iptables-nft-save").unwrap_or(0), count_rules("iptables-legacy-save").unwrap_or(0))
}

impl Iptables {
    /// Use the variant the node already uses, as kube-proxy's iptables-wrappers decide: the one
    /// holding more rules wins; with no rules anywhere, nft (the default of current distros).
    pub fn detect() -> Self {
        let (nft, legacy) = rule_counts();
        Iptables { variant: Variant::in_use(nft, legacy) }
    }

    fn bin(&self, tool: &str) -> String {
        format!("iptables-{}-{tool}", self.variant.as_str())
    }

    /// Dump one table.
    pub fn save(&self, table: &str) -> Result<TableDump, IptablesError> {
        let binary = self.bin("save");
        let out = Command::new(&binary)
            .args(["-t", table])
            .output()
            .map_err(|source| IptablesError::Spawn { binary: binary.clone(), source })?;
        if !out.status.success() {
            return Err(IptablesError::Failed {
                binary,
                table: table.into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
                line: None,
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(save::parse_save(&text)
            .into_iter()
            .find(|t| t.name == table)
            .unwrap_or_else(|| TableDump { name: table.into(), ..Default::default() }))
    }

    /// Apply one batch atomically: `iptables-restore --noflush --wait`. Either the whole batch
    /// lands or none of it does.
    pub fn restore(&self, table: &str, batch: &str) -> Result<(), IptablesError> {
        let binary = self.bin("restore");
        let mut child = Command::new(&binary)
            .args(["--noflush", "--wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| IptablesError::Spawn { binary: binary.clone(), source })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(batch.as_bytes())
                .map_err(|source| IptablesError::Spawn { binary: binary.clone(), source })?;
        }
        let out = child.wait_with_output().map_err(|source| IptablesError::Spawn { binary: binary.clone(), source })?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr: String = String::from_utf8_lossy(&out.stderr).trim().into();
            let line = failed_line(&stderr, batch).map(str::to_string);
            Err(IptablesError::Failed { binary, table: table.into(), status: out.status.to_string(), stderr, line })
        }
    }

    /// Remove every sluice chain and hook from the given tables; returns the tables touched.
    pub fn cleanup(&self, tables: &[&str]) -> Result<Vec<String>, IptablesError> {
        let mut touched = Vec::new();
        for table in tables {
            let dump = self.save(table)?;
            if let Some(batch) = save::cleanup_batch(&dump) {
                self.restore(table, &batch)?;
                touched.push((*table).to_string());
            }
        }
        Ok(touched)
    }
}

#[cfg(test)]
mod tests {
    use super::failed_line;

    #[test]
    fn the_line_a_failed_restore_names_is_found_in_the_batch() {
        let batch = "*nat\n:SLUICE-C - [0:0]\n-A SLUICE-C -j RETURN\n-F SLUICE-A\n-X SLUICE-A\nCOMMIT\n";
        let nft =
            "iptables-restore v1.8.9 (nf_tables): \nline 5: CHAIN_DEL failed (Device or resource busy): chain SLUICE-A";
        assert_eq!(failed_line(nft, batch), Some("-X SLUICE-A"));
        assert_eq!(failed_line("iptables-restore: line 5 failed", batch), Some("-X SLUICE-A"));
        for stderr in ["line 0 failed", "line 99 failed", "line x", "Another app holds the xtables lock", ""] {
            assert_eq!(failed_line(stderr, batch), None, "{stderr}");
        }
    }
}
