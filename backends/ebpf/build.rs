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
    // Every program file `bpf/*.bpf.c` becomes `$OUT_DIR/<name>.bpf.o`; `lib/` holds the shared
    // headers (layouts, maps, packet access, load balancing, NAT), `progs/` one file per hook.
    let mut sources: Vec<PathBuf> = std::fs::read_dir("bpf")
        .expect("bpf/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    assert!(!sources.is_empty(), "no bpf/*.bpf.c program files");
    for src in sources {
        let name = src.file_name().and_then(|n| n.to_str()).unwrap_or_default().trim_end_matches(".c").to_string();
        let status = Command::new(clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(out.join(format!("{name}.o")))
            .status()
            .expect("running clang");
        assert!(status.success(), "clang failed to compile {} (is libbpf-dev installed?)", src.display());
    }
}
