//! Tier 3: a real container runtime (podman 4 with its CNI backend) starts a container on a
//! lab node with sluice-cni. The container gets an address, reaches a pod on another node,
//! and its removal leaves no interface and no allocation behind.

mod common;

use std::process::Command;

use common::{TestLab, require_root};
use sluice_lab::proc;

/// A busybox-static rootfs, so no image registry is needed.
fn rootfs(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed by cargo xtask setup");
    // (busybox-static 1.35's `wget -T` segfaults here; the test uses plain `wget -q`.)
    for applet in ["sh", "wget", "ip", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    root
}

#[test]
fn podman_container_gets_address_and_reaches_remote_pod() {
    if !require_root() {
        return;
    }
    let t = TestLab::up("t-podman", 2, &[]);
    let b = t.lab.pod_add("node-2", "b", Default::default(), Some(8080)).expect("pod b");
    let st = t.lab.state().expect("state");
    let node = st.node("node-1").expect("node-1").clone();
    let w = tempfile::tempdir().expect("tmp");
    let root = rootfs(w.path());
    for d in ["storage", "run", "tmp"] {
        std::fs::create_dir_all(w.path().join(d)).expect("mkdir");
    }
    // Podman's own settings: CNI backend reading the conflist the node's agent wrote, sluice-cni
    // found in the build directory, no systemd (cgroupfs, file events), runc.
    let conf = w.path().join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{bin}\", \"/usr/lib/cni\"]\n\
             network_config_dir = \"{netd}\"\ndefault_network = \"sluice\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\ntmp_dir = \"{tmp}\"\n",
            bin = t.lab.bin_dir.display(),
            netd = node.dir.join("net.d").display(),
            tmp = w.path().join("tmp").display(),
        ),
    )
    .expect("containers.conf");
    let storage = w.path().join("storage.conf");
    std::fs::write(
        &storage,
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            w.path().join("storage").display(),
            w.path().join("run").display()
        ),
    )
    .expect("storage.conf");

    // podman runs in node-1's netns, as a kubelet's runtime would on that node.
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", &conf)
        .env("CONTAINERS_STORAGE_CONF", &storage)
        .args(["run", "--rm", "--network", "sluice", "--rootfs"])
        .arg(&root)
        .args(["/bin/busybox", "sh", "-c", &format!("ip -4 -o addr show eth0; wget -q -O - http://{}:8080/", b.ip)]);
    proc::in_netns(&mut cmd, &node.netns).expect("netns");
    let out = cmd.output().expect("podman");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "podman run failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("inet 10.244.1."), "container got a node-1 pod address: {stdout}");
    assert_eq!(stdout.lines().last().map(str::trim), Some("b"), "container reached pod b on node-2: {stdout}");

    // --rm: podman called DEL; nothing of the container remains.
    let links = t.exec("node-1", &["ip", "-o", "link"]);
    assert!(!links.contains("slc"), "host veth left behind: {links}");
    let ipam = node.dir.join("cni-data/sluice");
    let left: Vec<_> = std::fs::read_dir(&ipam)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<std::net::Ipv4Addr>().is_ok())
        .collect();
    assert!(left.is_empty(), "allocation left behind: {left:?}");
}
