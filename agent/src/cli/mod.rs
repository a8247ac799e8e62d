//! One module per CLI command; each returns anyhow errors that name what failed and how to fix it.

pub mod agent;
pub mod bpf;
pub mod cleanup;
pub mod migrate;
pub mod migrate_apply;
pub mod migrate_programmed;
pub mod migrate_rollout;
pub mod observe;
pub mod observe_print;
mod observe_time;
pub mod plan;
pub mod policy;
pub mod probe;
pub mod proxy;
pub mod relay;
pub mod service;
pub mod status;
pub mod ui;

/// A small runtime for the short-lived CLI commands.
pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f))
}
