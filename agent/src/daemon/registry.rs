//! The backend registry: which backends this build has, in `dataplane: auto` preference order
//! (core's `KNOWN_BACKENDS`), and how each is constructed. Adding a backend is its crate, one
//! entry in `KNOWN_BACKENDS` and one arm here.

use sluice_config::Config;
use sluice_core::{BackendId, BackendSpec, Dataplane, KNOWN_BACKENDS};
use sluice_iptables::Iptables;

fn spec(id: BackendId) -> Option<BackendSpec> {
    match id {
        BackendId::EBPF => Some(sluice_ebpf::SPEC),
        BackendId::IPTABLES => Some(sluice_iptables::SPEC),
        _ => None,
    }
}

/// The specs of every backend of this build, best first.
pub fn specs() -> Vec<BackendSpec> {
    KNOWN_BACKENDS.iter().filter_map(|k| spec(k.id)).collect()
}

/// Every backend, constructed for this node (nothing touches the kernel before `restore`).
pub fn build(cfg: &Config, ipt: Iptables) -> Vec<Box<dyn Dataplane + Send>> {
    let maglev = (cfg.lb_algorithm == sluice_core::LbAlgorithm::Maglev).then_some(cfg.lb_maglev_table_size);
    KNOWN_BACKENDS
        .iter()
        .filter_map(|k| -> Option<Box<dyn Dataplane + Send>> {
            match k.id {
                BackendId::EBPF => {
                    Some(Box::new(sluice_ebpf::EbpfDataplane::new(cfg.bpf_pin_dir(), cfg.bpf_map_sizes, maglev)))
                }
                BackendId::IPTABLES => Some(Box::new(sluice_iptables::IptablesDataplane::new(ipt))),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_backend_is_registered() {
        assert_eq!(specs().len(), KNOWN_BACKENDS.len());
        let cfg = sluice_config::from_yaml_str("node_name: node-1").expect("cfg");
        let built = build(&cfg, Iptables { variant: sluice_iptables::Variant::Nft });
        let ids: Vec<BackendId> = built.iter().map(|b| b.id()).collect();
        assert_eq!(ids, KNOWN_BACKENDS.iter().map(|k| k.id).collect::<Vec<_>>());
    }
}
