//! Embeds the eBPF object built by `cargo xtask build` (ebpf/probes, nightly, bpfel-unknown-none).
//! Without it the agent still compiles (unit tests, clippy), and says at start how to build it.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../ebpf/probes/target/bpfel-unknown-none/release/infertap-probes");
    let src = env::var_os("INFERTAP_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or(default);
    println!("cargo:rerun-if-env-changed=INFERTAP_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo::rustc-check-cfg=cfg(infertap_no_ebpf)");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("infertap-probes.o");
    // A new file rather than a rewrite in place: a target/ directory copied with hard links
    // (one per git worktree) must not see another tree's object.
    let _ = fs::remove_file(&out);
    match fs::read(&src) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            fs::write(&out, b"").unwrap();
            println!("cargo:rustc-cfg=infertap_no_ebpf");
        }
    }
}
