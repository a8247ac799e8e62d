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

/// Run `f` on a thread inside the network namespace `/run/netns/<name>` (netlink, sockets,
/// if_nametoindex and `/proc/thread-self/ns/net` follow the thread), with `pin` handed over.
#[allow(dead_code)] // not every test binary creates namespaces
pub fn in_netns<T: Send + 'static>(
    name: &str,
    pin: std::path::PathBuf,
    f: impl FnOnce(std::path::PathBuf) -> T + Send + 'static,
) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f(pin)
    })
    .join()
    .expect("thread")
}
