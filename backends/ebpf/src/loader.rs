//! Loading the programs with aya, with maps pinned (LIBBPF_PIN_BY_NAME) under a directory of
//! bpffs, so their contents outlive the agent.

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};
use sluice_core::MapSizes;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bpffs: cannot mount at {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("creating pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: std::io::Error },
    #[error("loading the BPF object {object}: {source}")]
    Load { object: &'static str, source: Box<aya::EbpfError> },
    #[error("program {name} missing from the BPF object")]
    MissingProgram { name: &'static str },
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: Box<aya::programs::ProgramError> },
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mount bpffs at /sys/fs/bpf unless it already is (as Cilium does).
pub fn ensure_bpffs() -> Result<(), LoadError> {
    let path = Path::new("/sys/fs/bpf");
    #[allow(clippy::unnecessary_cast)]
    let mounted = nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 as i64 == BPF_FS_MAGIC).unwrap_or(false);
    if mounted {
        return Ok(());
    }
    nix::mount::mount(Some("bpf"), path, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|source| LoadError::Mount { path: path.into(), source })
}

/// The tc programs: pod veth ingress and egress, node device ingress.
pub const TC_PROGRAMS: [&str; 3] = ["sluice_from_pod", "sluice_to_pod", "sluice_from_net"];
/// The socket-LB programs (cgroup v2 sock_addr hooks).
pub const SOCK_PROGRAMS: [&str; 4] =
    ["sluice_sock_connect4", "sluice_sock_sendmsg4", "sluice_sock_recvmsg4", "sluice_sock_getpeername4"];

/// The node's socket-lookup program (the L7 proxy's listener for redirected connections).
pub const LOOKUP_PROGRAM: &str = "sluice_l7_lookup";

/// The loaded objects (`crate::OBJECTS`), used as one: a program is found in the object that
/// has it; a map in the first object (every object declares every map, and pinning by name makes
/// them the same kernel maps).
pub struct Loaded {
    objects: Vec<Ebpf>,
}

impl Loaded {
    pub fn program_mut(&mut self, name: &str) -> Option<&mut aya::programs::Program> {
        self.objects.iter_mut().find_map(|o| o.program_mut(name))
    }

    pub fn map_mut(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.objects.first_mut().and_then(|o| o.map_mut(name))
    }

    pub fn map(&self, name: &str) -> Option<&aya::maps::Map> {
        self.objects.first().and_then(|o| o.map(name))
    }
}

/// Load the objects with their maps pinned in `pin_dir` (reused if already there) and load
/// every program into the kernel (not attached).
pub fn load(pin_dir: &Path) -> Result<Loaded, LoadError> {
    load_with(pin_dir, &MapSizes::default())
}

/// Each map with the entries `sizes` asks for (as `EbpfLoader::set_max_entries`).
pub fn map_sizes(sizes: &MapSizes) -> [(&'static str, u32); 10] {
    [
        ("sluice_svc", sizes.services),
        ("sluice_backends", sizes.backends),
        ("sluice_ct", sizes.conntrack),
        ("sluice_rnat", sizes.conntrack),
        ("sluice_snat", sizes.nat),
        ("sluice_sock_rnat", sizes.nat),
        ("sluice_affinity", sizes.affinity),
        ("sluice_src_ranges", sizes.source_ranges),
        ("sluice_maglev", sizes.maglev),
        ("sluice_node", 1),
    ]
}

/// `load` with map sizes from the config. A map already pinned keeps the size it was created
/// with (the kernel cannot resize): `Datapath::open` reports the difference.
pub fn load_with(pin_dir: &Path, sizes: &MapSizes) -> Result<Loaded, LoadError> {
    ensure_bpffs()?;
    std::fs::create_dir_all(pin_dir).map_err(|source| LoadError::PinDir { path: pin_dir.into(), source })?;
    let mut objects = Vec::with_capacity(crate::OBJECTS.len());
    for (object, bytes) in crate::OBJECTS {
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        for (name, n) in map_sizes(sizes) {
            loader.map_max_entries(name, n);
        }
        objects.push(loader.load(bytes).map_err(|e| LoadError::Load { object, source: Box::new(e) })?);
    }
    let mut bpf = Loaded { objects };
    for name in TC_PROGRAMS {
        let prog: &mut aya::programs::SchedClassifier = bpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram { name })?
            .try_into()
            .map_err(|e| LoadError::Program { name, source: Box::new(e) })?;
        prog.load().map_err(|e| LoadError::Program { name, source: Box::new(e) })?;
    }
    for name in SOCK_PROGRAMS {
        let prog: &mut aya::programs::CgroupSockAddr = bpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram { name })?
            .try_into()
            .map_err(|e| LoadError::Program { name, source: Box::new(e) })?;
        // A kernel without one of these hooks (the plan then keeps socket LB off eBPF) must not
        // lose the tc datapath: a program that does not load fails only its own attach.
        let _ = prog.load();
    }
    // Likewise (5.9+): without it only L7 redirects are unavailable (`policy_l7::steer` reports it).
    if let Some(Ok(prog)) = bpf.program_mut(LOOKUP_PROGRAM).map(<&mut aya::programs::SkLookup>::try_from) {
        let _ = prog.load();
    }
    Ok(bpf)
}
