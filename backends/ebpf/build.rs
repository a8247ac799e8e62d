//! Compiles the BPF programs in bpf/ with Debian's clang (clang-19, else clang). `cargo xtask
//! setup` installs clang-19 and libbpf-dev; set CLANG to use another compiler.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let candidates: Vec<String> = match std::env::var("CLANG") {
        Ok(c) => vec![c],
        Err(_) => vec!["clang-19".into(), "clang".into()],
    };
    let clang = candidates
        .iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .unwrap_or_else(|| panic!("no clang found ({candidates:?}): install clang-19 and libbpf-dev (`cargo xtask setup` does), or set CLANG"));
    let multiarch = format!(
        "/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let status = Command::new(clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", "bpf/lb.bpf.c", "-o"])
        .arg(out.join("lb.bpf.o"))
        .status()
        .expect("running clang");
    assert!(status.success(), "clang failed to compile bpf/lb.bpf.c (is libbpf-dev installed?)");
}
