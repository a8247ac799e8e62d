//! `sluice`: the node agent (`sluice agent`) and the operator CLI in one binary.

mod api;
mod cli;
mod daemon;
#[cfg(test)]
mod deploy_tests;
mod files;
mod services;
mod source;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc returns freed memory to the system far better than glibc's malloc after the large,
/// interleaved allocations of parsing a cluster's worth of manifests.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// What `-o` accepts: every command prints `table` or `json`; `sluice observe` also `compact`
/// (its default, one line a flow) and `dict` (one block a flow), as `hubble observe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputArg {
    Table,
    Json,
    Compact,
    Dict,
}

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "sluice: Kubernetes pod networking and service dataplane (eBPF or iptables, chosen per feature)",
    long_about = "sluice: Kubernetes pod networking and service dataplane.\n\n\
Run `sluice agent --config FILE` on every node; the other commands talk to that node's agent over\n\
its root-only unix socket (default /run/sluice/sluice.sock; override with --socket or SLUICE_SOCKET_PATH).\n\n\
Examples:\n  sluice agent --config /etc/sluice/config.yaml --node-name node-1\n  sluice status\n  sluice status -o json\n  sluice probe\n  sluice plan --config new.yaml\n  sluice service list\n  sluice bpf lb list -o json\n  sluice cleanup"
)]
struct Cli {
    /// The agent's socket.
    #[arg(long, global = true, env = "SLUICE_SOCKET_PATH", default_value = "/run/sluice/sluice.sock")]
    socket: PathBuf,
    /// Output format: table (the default) or json; `sluice observe` also compact (its
    /// default) and dict.
    #[arg(short = 'o', long, global = true, value_enum)]
    output: Option<OutputArg>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent (foreground; stop with SIGTERM — kernel state stays for the next start).
    Agent(cli::agent::AgentArgs),
    /// Run this node's L7 (HTTP policy) proxy. The agent starts it when a policy first has HTTP
    /// rules and nothing answers on `l7.control_socket`; it outlives the agent (its connections
    /// and the last policy view go on) and drains on SIGTERM. Run it yourself (or as a second
    /// container of the DaemonSet) to keep it apart from the agent's lifecycle.
    ///
    /// Example: sluice proxy --config /etc/sluice/config.yaml
    Proxy(cli::proxy::ProxyArgs),
    /// Show this node's agent: node, pod CIDR, source sync, feature plan, routes, local endpoints.
    Status,
    /// Probe this node's kernel: each capability, found or not, and the features that need it.
    Probe {
        /// Apply this config's `probes.assume_missing` to the result.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the feature plan: who serves each feature and why. With --config, the plan that file
    /// would give on this kernel (no node_name needed) and how features would move from the
    /// running plan, make before break; nothing is applied.
    Plan {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// eBPF maps: `sluice bpf lb list` shows the service maps of the eBPF datapath.
    #[command(subcommand)]
    Bpf(BpfCmd),
    /// Services: `sluice service list` shows every frontend, its owner and its backends.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Pods on this node as policy endpoints: identity, labels, and whether each direction is
    /// isolated and by which policies (`sluice endpoint list`).
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Security identities in use: reserved ones (host 1, world 2, ... kube-apiserver 7) and one
    /// per distinct label set (pod labels, namespace labels, namespace), from 256.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Network policy: `get` lists the policies in force (and refused ones, with why) and the
    /// pods they select here; `trace` decides a connection with the rules the datapath enforces.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Flows on this node (Hubble's Observer API): the last 20 by default, as `hubble observe`
    /// prints them; `-o json` prints one GetFlowsResponse a line.
    ///
    /// Examples: sluice observe --last 50 --to-service default/web
    ///           sluice observe -f --from-namespace x --verdict DROPPED
    Observe(Box<cli::observe::ObserveArgs>),
    /// The cluster-wide Observer (Hubble relay, port 4245): follows one node's peer service to
    /// find every node's Observer and answers GetFlows, GetNodes, GetNamespaces and ServerStatus
    /// over all of them. Hubble's CLI and `sluice observe --server HOST:PORT` read from it.
    ///
    /// Example: sluice relay --listen-address 0.0.0.0:4245 --peer-service 10.0.0.1:4244
    Relay(cli::relay::RelayArgs),
    /// The service map in a browser: workloads, Services and world/host/remote-node as nodes,
    /// edges per port and protocol coloured by verdict, a namespace picker, a live flow table
    /// with verdict and text filters; click an edge for its flows and the policies that decided
    /// them. Reads a node's Observer or, with --server, `sluice relay` for the whole cluster.
    ///
    /// Example: sluice ui --listen-address 127.0.0.1:12000 --server 10.0.0.5:4245
    Ui(cli::ui::UiArgs),
    /// Taking this node off kube-proxy and back: plan, apply, verify, rollback, release (docs/design/migration.md).
    #[command(subcommand)]
    Migrate(MigrateCmd),
    /// Remove every kernel object sluice owns on this node: each registered backend's (iptables:
    /// SLUICE-* chains and hooks, both variants; eBPF: pinned maps and links), then sluice routes.
    /// Pod interfaces are left to the runtime. Safe to run twice. `-o json` counts per backend.
    Cleanup {
        /// The agent's config, for its BPF pin directory (default: all of /sys/fs/bpf/sluice).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MigrateCmd {
    /// Compare kube-proxy's live rules on this node (KUBE-* chains in either iptables variant, or
    /// its nftables-mode table `ip kube-proxy`) with what sluice programs here, frontend by frontend: what sluice takes over as is, what
    /// differs (with both values), what only one side serves, kube-proxy rules of a shape sluice
    /// does not recognise, and whether anything blocks cutover. Changes nothing. Run as root on
    /// the node, beside its agent.
    ///
    /// Example: sluice migrate plan -o json
    Plan,
    /// The plan's comparison again, plus a TCP connect from this node to every frontend sluice
    /// serves here (ClusterIPs, external and LoadBalancer IPs with endpoints; NodePorts on every
    /// node's address, so run on a neighbour it checks this node's from outside) and the count
    /// of conntrack entries to them. Exit status 1 on any blocker, difference or frontend that
    /// did not answer; run it before and after a cutover.
    ///
    /// Example: sluice migrate verify -o json
    Verify,
    /// Take this node off kube-proxy: refuse if it is not ready (source not synced, a Service
    /// rejected or failing, a blocker of `plan`); pin kube_proxy_replacement to strict and wait
    /// until sluice serves every Service feature; write the marker that keeps kube-proxy off the
    /// node (<state_dir>/kube-proxy-replaced; with the kubernetes source the agent also labels
    /// the Node sluice.io/kube-proxy=replaced) and wait for a running kube-proxy to stop;
    /// snapshot kube-proxy's rules into the migration record; remove them in one atomic batch
    /// per table (jumps before chains; conntrack untouched, so open connections keep their
    /// translation); verify. Rerun it after any failure: every step checks the node first.
    /// Exit status 1 if the verification after it fails.
    ///
    /// With --nodes, the cluster rollout instead, driven from anywhere: one node at a time, in
    /// the order given, `plan` there (a blocker stops before anything changes), `apply` there,
    /// then `verify` on a neighbour (the next node in the list, or --verify-from), which probes
    /// the migrated node's NodePorts from outside it; the first failure stops the rollout and
    /// names the node, the step and the ways out. Rerunning the same command rechecks migrated
    /// nodes and goes on where it stopped.
    ///
    /// Example: sluice migrate apply --wait 120
    /// Example: sluice migrate apply --nodes node-1,node-2,node-3 --via 'ssh root@{node}'
    Apply {
        /// Go past rules in kube-proxy's chains of a shape sluice does not recognise (they are
        /// still kept, in chains that are not removed only if someone else jumps to them).
        #[arg(long)]
        force: bool,
        /// Seconds to wait for each hand-over (sluice serving everything, kube-proxy stopping).
        #[arg(long, default_value_t = 60)]
        wait: u64,
        /// Migrate these nodes one at a time, in this order (comma-separated), instead of this
        /// node. Needs --via.
        #[arg(long, value_delimiter = ',', requires = "via")]
        nodes: Vec<String>,
        /// How to run `sluice` on a node: a shell command prefix containing {node}, e.g.
        /// 'ssh root@{node}', 'sluice-lab exec {node} --', or a `kubectl exec` into the node's
        /// agent pod (docs/design/migration.md).
        #[arg(long, requires = "nodes")]
        via: Option<String>,
        /// Probe each migrated node from this node (default: the next node of --nodes).
        #[arg(long, requires = "nodes")]
        verify_from: Option<String>,
    },
    /// Give this node back to kube-proxy, make-before-break: remove the marker and the label, put kube-proxy's
    /// rules back from the snapshot `apply` took (unless kube-proxy's own rules are already
    /// there), refuse if they leave a frontend sluice serves uncovered, then pin
    /// kube_proxy_replacement to disabled and wait until sluice has handed
    /// every Service feature over; verify. Exit status 1 if the verification fails.
    ///
    /// Example: sluice migrate rollback
    Rollback {
        /// Hand over even if kube-proxy's rules do not serve every frontend sluice serves now
        /// (those frontends stop answering).
        #[arg(long)]
        force: bool,
        /// Seconds to wait for sluice to hand its Service features over.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Stop pinning kube_proxy_replacement on this node: the config file decides again.
    Release,
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Every pod on this node: identity, ingress/egress enforcement and the policies behind it.
    List,
}

#[derive(Subcommand)]
enum IdentityCmd {
    /// Every identity: number, labels, how many pods carry it.
    List,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// The policies in force, in audit or enforce mode, and which pods on this node each selects;
    /// refused policies follow with the field, the value and what is accepted.
    Get,
    /// Would a new connection FROM -> TO on PORT pass? Prints each direction's decision and the
    /// rule or policy that made it (a drop names the policy, or the policies whose default deny
    /// applies). Exit status 0 when allowed, 1 when denied.
    ///
    /// Example: sluice policy trace --from x/a --to y/b --port 80/TCP
    Trace {
        /// NS/POD (plain POD: default/POD) or an IPv4 address.
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// PORT or PORT/PROTO (TCP, UDP, SCTP; default TCP).
        #[arg(long)]
        port: String,
    },
}

#[derive(Subcommand)]
enum BpfCmd {
    /// Load-balancing maps.
    #[command(subcommand)]
    Lb(BpfLbCmd),
}

#[derive(Subcommand)]
enum BpfLbCmd {
    /// Every eBPF service frontend with its backends by slot (as `cilium bpf lb list`).
    List,
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Every Service frontend on this node: type, owner (eBPF, iptables, kube-proxy), backends.
    ///
    /// Also lists what is not served and why: Services refused by validation or a frontend
    /// conflict (owner `rejected`, with the field, the value and what is accepted), and
    /// frontends whose dataplane could not program them (owner `eBPF (failed)`, e.g. a full map,
    /// with the `bpf_map_sizes` key to raise). Each stays listed until it is fixed.
    List,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(cli::observe::rewrite_not(std::env::args()));
    let observe_format = match cli.output {
        None | Some(OutputArg::Compact) => cli::observe::Format::Compact,
        Some(OutputArg::Table) => cli::observe::Format::Table,
        Some(OutputArg::Json) => cli::observe::Format::Json,
        Some(OutputArg::Dict) => cli::observe::Format::Dict,
    };
    let output = match cli.output {
        None | Some(OutputArg::Table) => Output::Table,
        Some(OutputArg::Json) => Output::Json,
        Some(o @ (OutputArg::Compact | OutputArg::Dict)) => {
            if !matches!(cli.cmd, Cmd::Observe(_)) {
                let name = if o == OutputArg::Compact { "compact" } else { "dict" };
                eprintln!("error: -o {name} is a format of `sluice observe` only; this command prints table or json");
                return std::process::ExitCode::from(2);
            }
            Output::Table
        }
    };
    let result = match cli.cmd {
        Cmd::Agent(args) => cli::agent::run(args),
        Cmd::Proxy(args) => cli::proxy::run(args),
        Cmd::Status => cli::status::run(&cli.socket, output),
        Cmd::Cleanup { config } => cli::cleanup::run(config.as_deref(), output),
        Cmd::Service(ServiceCmd::List) => cli::service::list(&cli.socket, output),
        Cmd::Migrate(MigrateCmd::Plan) => cli::migrate::plan(&cli.socket, output),
        Cmd::Migrate(MigrateCmd::Verify) => match cli::migrate::verify(&cli.socket, output) {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::from(1),
            Err(e) => Err(e),
        },
        Cmd::Migrate(MigrateCmd::Apply { force, wait, nodes, via: Some(via), verify_from }) => {
            let targets = cli::migrate_rollout::Targets { nodes, via, verify_from, force, wait };
            match cli::migrate_rollout::run(&targets, output) {
                Ok(true) => Ok(()),
                Ok(false) => return std::process::ExitCode::from(1),
                Err(e) => Err(e),
            }
        }
        Cmd::Migrate(MigrateCmd::Apply { force, wait, .. }) => {
            match cli::migrate_apply::apply(&cli.socket, force, std::time::Duration::from_secs(wait), output) {
                Ok(true) => Ok(()),
                Ok(false) => return std::process::ExitCode::from(1),
                Err(e) => Err(e),
            }
        }
        Cmd::Migrate(MigrateCmd::Rollback { force, wait }) => {
            match cli::migrate_apply::rollback(&cli.socket, force, std::time::Duration::from_secs(wait), output) {
                Ok(true) => Ok(()),
                Ok(false) => return std::process::ExitCode::from(1),
                Err(e) => Err(e),
            }
        }
        Cmd::Migrate(MigrateCmd::Release) => cli::migrate_apply::release(&cli.socket),
        Cmd::Bpf(BpfCmd::Lb(BpfLbCmd::List)) => cli::bpf::lb_list(&cli.socket, output),
        Cmd::Endpoint(EndpointCmd::List) => cli::policy::endpoints(&cli.socket, output),
        Cmd::Identity(IdentityCmd::List) => cli::policy::identities(&cli.socket, output),
        Cmd::Policy(PolicyCmd::Get) => cli::policy::get(&cli.socket, output),
        Cmd::Policy(PolicyCmd::Trace { from, to, port }) => {
            match cli::policy::trace(&cli.socket, &from, &to, &port, output) {
                Ok(true) => Ok(()),
                Ok(false) => return std::process::ExitCode::from(1),
                Err(e) => Err(e),
            }
        }
        Cmd::Probe { config } => cli::probe::run(config.as_deref(), output),
        Cmd::Relay(args) => cli::relay::run(args),
        Cmd::Ui(args) => cli::ui::run(&cli.socket, args),
        Cmd::Observe(args) => cli::observe::run(&cli.socket, &args, observe_format),
        Cmd::Plan { config } => cli::plan::run(&cli.socket, config.as_deref(), output),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
