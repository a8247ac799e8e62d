//! All plugin errors, and the single mapping from error to CNI error code.

use std::path::PathBuf;

use serde::Serialize;

/// Codes from the CNI spec (1.1.0, "Error" section); 100 and up are sluice's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// sluice: no free address left in the node's pod CIDR.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// sluice: CHECK found the attachment differs from what ADD made.
    pub const CHECK_FAILED: u32 = 101;
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("network config on stdin is not valid JSON: {source}")]
    Decode { source: serde_json::Error },
    #[error("environment variable {var} is required for {command}")]
    MissingEnv { var: &'static str, command: String },
    #[error("environment variable {var}={value:?} is invalid: {accepted}")]
    InvalidEnv { var: &'static str, value: String, accepted: String },
    #[error("cniVersion {version:?} is not supported; supported: {supported}")]
    IncompatibleVersion { version: String, supported: String },
    #[error("network config field {field}={value:?} is invalid: {accepted}")]
    InvalidConfig { field: String, value: String, accepted: String },
    #[error("network namespace {path} does not exist or cannot be opened: {source}")]
    NetnsUnknown { path: PathBuf, source: std::io::Error },
    #[error(
        "no free address left in {subnet} for network {network} ({used} in use); free addresses by deleting pods or run GC"
    )]
    PoolExhausted { network: String, subnet: String, used: usize },
    #[error("IPAM store {path}: {source}")]
    Store { path: PathBuf, source: std::io::Error },
    #[error("IPAM record {path} is corrupt: {source}")]
    StoreCorrupt { path: PathBuf, source: serde_json::Error },
    #[error("netlink operation '{op}' on {target} failed: {detail}")]
    Netlink { op: &'static str, target: String, detail: String },
    #[error("{what} failed: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("CHECK failed for container {container_id} interface {ifname}: {problem}")]
    CheckFailed { container_id: String, ifname: String, problem: String },
    #[error("plugin cannot serve ADD right now: {reason}")]
    Unavailable { reason: String },
}

impl CniError {
    /// The one place errors become CNI codes.
    pub fn code(&self) -> u32 {
        use code::*;
        match self {
            CniError::Decode { .. } => DECODING_FAILURE,
            CniError::MissingEnv { .. } | CniError::InvalidEnv { .. } => INVALID_ENV,
            CniError::IncompatibleVersion { .. } => INCOMPATIBLE_VERSION,
            CniError::InvalidConfig { .. } => INVALID_CONFIG,
            CniError::NetnsUnknown { .. } => CONTAINER_UNKNOWN,
            CniError::PoolExhausted { .. } => POOL_EXHAUSTED,
            CniError::Store { .. } | CniError::StoreCorrupt { .. } | CniError::Io { .. } => IO_FAILURE,
            CniError::Netlink { .. } => IO_FAILURE,
            CniError::CheckFailed { .. } => CHECK_FAILED,
            CniError::Unavailable { .. } => PLUGIN_NOT_AVAILABLE,
        }
    }

    /// Short message for the `msg` field; the full chain goes to `details`.
    pub fn short(&self) -> &'static str {
        match self {
            CniError::Decode { .. } => "failed to decode network config",
            CniError::MissingEnv { .. } => "missing environment variable",
            CniError::InvalidEnv { .. } => "invalid environment variable",
            CniError::IncompatibleVersion { .. } => "incompatible CNI version",
            CniError::InvalidConfig { .. } => "invalid network config",
            CniError::NetnsUnknown { .. } => "container network namespace unknown",
            CniError::PoolExhausted { .. } => "address pool exhausted",
            CniError::Store { .. } | CniError::StoreCorrupt { .. } => "IPAM store failure",
            CniError::Netlink { .. } => "netlink failure",
            CniError::Io { .. } => "I/O failure",
            CniError::CheckFailed { .. } => "check failed",
            CniError::Unavailable { .. } => "plugin not available",
        }
    }

    pub fn to_wire(&self, cni_version: &str) -> ErrorResult {
        ErrorResult {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: format!("{}: {}", self.short(), self),
            details: format!("{self:?}"),
        }
    }

    pub fn netlink(op: &'static str, target: impl Into<String>, e: impl std::fmt::Display) -> Self {
        CniError::Netlink { op, target: target.into(), detail: e.to_string() }
    }
}

/// The error object written to stdout.
#[derive(Debug, Serialize)]
pub struct ErrorResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}
