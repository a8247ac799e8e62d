use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct AgentArgs {
    /// Config file (YAML, or TOML by extension). Keys and defaults: docs/configuration.md.
    #[arg(long, short = 'c', env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// This node's name (overrides `node_name`).
    #[arg(long)]
    node_name: Option<String>,
    /// Manifest directory for the standalone source (overrides `source.manifests_dir`).
    #[arg(long)]
    manifests: Option<PathBuf>,
}

/// Logs of the long-running commands (agent, relay) to stderr, filtered by `SLUICE_LOG`.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    init_logging();
    let mut flags = serde_json::Map::new();
    if let Some(n) = args.node_name {
        flags.insert("node_name".into(), n.into());
    }
    if let Some(m) = args.manifests {
        flags.insert("source".into(), serde_json::json!({ "manifests_dir": m }));
    }
    let flags = serde_json::Value::from(flags);
    let cfg = sluice_config::load(args.config.as_deref(), Some(flags.clone())).context("invalid configuration")?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let source = crate::daemon::features::ConfigSource { path: args.config.clone(), flags };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(crate::daemon::run(cfg, source))
}
