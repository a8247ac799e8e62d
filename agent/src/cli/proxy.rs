//! `sluice proxy`: the node's L7 proxy as its own process (docs/design/l7.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct ProxyArgs {
    /// The agent's config file: the control socket and port come from its `l7` section
    /// (`l7.control_socket`, `l7.proxy_port`) unless given below.
    #[arg(long, short = 'c', env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// The control socket the agent connects to (created mode 0600).
    #[arg(long)]
    control: Option<PathBuf>,
    /// The listener's port on 127.0.0.1 (where TPROXY and the eBPF redirect deliver).
    #[arg(long)]
    port: Option<u16>,
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    super::agent::init_logging();
    let cfg = match &args.config {
        Some(p) => sluice_config::load(Some(p), None).context("invalid configuration")?,
        None => sluice_config::Config::default(),
    };
    let opts = sluice_proxy::process::Options {
        control: args.control.unwrap_or_else(|| cfg.l7_control_socket()),
        port: args.port.unwrap_or(cfg.l7.proxy_port),
    };
    if opts.port == 0 {
        anyhow::bail!("--port 0: the proxy needs a fixed port 1 to 65535 (the redirects name it)");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-l7")
        .enable_all()
        .build()?
        .block_on(sluice_proxy::process::run(opts))?;
    Ok(())
}
