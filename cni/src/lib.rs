//! sluice-cni: the CNI plugin that wires pods for sluice.
//!
//! Layout (pure parts apart from syscalls, as aya does):
//! - [`spec`]: CNI wire types (network config, env, results per version). Pure.
//! - [`ipam`]: the on-disk, flock-protected address store. Filesystem only.
//! - [`netns`], [`plumbing`]: netlink work, on the host side and inside the pod netns.
//! - [`cmd`]: the verbs, with rollback so a failure leaves nothing half-made.
//! - [`error`]: every error, and the one place that maps errors to CNI error codes.

pub mod cmd;
pub mod conflist;
pub mod error;
pub mod ipam;
pub mod netns;
pub mod plumbing;
pub mod spec;

pub use error::CniError;

#[cfg(test)]
mod fuzz_tests;
