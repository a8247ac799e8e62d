//! The `sluice-cni` binary: read the CNI environment and stdin, run the verb, print the result
//! or the spec's error object. Errors are mapped to CNI codes only in `CniError::code`.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use sluice_cni::spec::{Env, LATEST_VERSION};

const HELP: &str = "sluice-cni: the sluice CNI plugin (CNI spec 0.3.1, 0.4.0, 1.0.0, 1.1.0)

Container runtimes call this binary; it is not meant to be run by hand. It reads
CNI_COMMAND (ADD, DEL, CHECK, VERSION, GC, STATUS), CNI_CONTAINERID, CNI_NETNS,
CNI_IFNAME and CNI_ARGS from the environment and the network config on stdin.

Network config fields (besides cniVersion, name, type):
  subnet        the node's pod CIDR, e.g. 10.244.1.0/24 (required; the agent writes it)
  gateway       gateway address for pods (default: first host of subnet)
  mtu           pod interface MTU (default: kernel default)
  dataDir       IPAM state directory (default /var/lib/sluice/cni)

Try: echo '{\"cniVersion\":\"1.1.0\"}' | CNI_COMMAND=VERSION sluice-cni
";

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let no_command = std::env::var_os("CNI_COMMAND").is_none();
    if no_command && (std::io::stdin().is_terminal() || std::env::args().any(|a| a == "--help" || a == "-h")) {
        print!("{HELP}");
        return ExitCode::from(if std::env::args().any(|a| a == "--help" || a == "-h") { 0 } else { 2 });
    }
    let _ = std::io::stdin().read_to_end(&mut stdin);
    // Errors are reported in the caller's version when it can be read at all.
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    let outcome = Env::from_lookup(|k| std::env::var(k).ok()).and_then(|env| sluice_cni::cmd::run(&env, &stdin));
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let wire = e.to_wire(&version);
            let _ = writeln!(out, "{}", serde_json::to_string(&wire).unwrap_or_default());
            ExitCode::from(1)
        }
    }
}
