//! Shared by the privileged BPF test binaries.

pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var_os("SLUICE_SKIP_PRIVILEGED").is_some() {
        return false;
    }
    panic!("BPF tests need root; run `cargo xtask test` as root or set SLUICE_SKIP_PRIVILEGED=1 to skip");
}
