//! TLS plaintext capture, end to end as root: a Go HTTPS server (`tests/peers/go/tlspeer`, built
//! here with Debian's Go toolchain, normal and stripped) and the vLLM stand-in under uvicorn with
//! TLS (OpenSSL), traced by the real agent; spans must come from the decrypted bytes.
//!
//! The site-finding tests (symbols, `.gopclntab`, RET offsets) need only `go`, not root.
//!
//! Run: `cargo test --release -p infertap-tests --test tls -- --test-threads=1`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use infertap::probes::uprobe::golang::{self, GoTlsSites};
use infertap_tests::harness::{self, attr, poll, Agent, Proc, TestCtx};
use serde_json::Value;

const SPANS_WAIT: Duration = Duration::from_secs(20);

fn peers_go() -> PathBuf {
    harness::paths().peers.join("go")
}

/// Builds tlspeer into `dir` (`-ldflags=-s -w` when `stripped`) and returns the binary's path.
fn build_tlspeer(dir: &Path, stripped: bool) -> PathBuf {
    let out = dir.join(if stripped {
        "tlspeer-stripped"
    } else {
        "tlspeer"
    });
    let mut cmd = Command::new("go");
    cmd.current_dir(peers_go())
        .env("GOCACHE", std::env::temp_dir().join("infertap-gocache"))
        .env("GOPATH", std::env::temp_dir().join("infertap-gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .args(["build", "-o"])
        .arg(&out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    cmd.arg("./tlspeer");
    let result = cmd.output().unwrap_or_else(|e| {
        panic!("running {cmd:?} failed ({e}): install Go with `cargo xtask setup` (Debian's golang-go)")
    });
    assert!(
        result.status.success(),
        "go build of tlspeer failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

fn analyze(path: &Path) -> GoTlsSites {
    let data = fs::read(path).unwrap();
    golang::analyze(&data)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .unwrap_or_else(|| panic!("{}: no crypto/tls found", path.display()))
}

/// `go tool objdump -s REGEX binary`: the addresses of RET instructions Go's own disassembler
/// lists for one function.
fn objdump_rets(binary: &Path, func: &str) -> Vec<u64> {
    let re = format!("^{}$", regex_escape(func));
    let out = Command::new("go")
        .args(["tool", "objdump", "-s", &re])
        .arg(binary)
        .output()
        .expect("go tool objdump");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.split_whitespace().any(|w| w == "RET"))
        .filter_map(|l| {
            let addr = l.split_whitespace().nth(1)?;
            u64::from_str_radix(addr.trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if "()*.[]".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Symbols from the symbol table and from `.gopclntab` (stripped build) give the same sites, and
/// the RET sites are exactly the RETs Go's own disassembler lists.
#[test]
fn go_tls_sites_from_symtab_and_gopclntab_agree_with_go_objdump() {
    let dir = std::env::temp_dir().join(format!("infertap-tls-sites-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let normal = build_tlspeer(&dir, false);
    let stripped = build_tlspeer(&dir, true);
    let a = analyze(&normal);
    let b = analyze(&stripped);
    assert_eq!(a.symbols, "symtab");
    assert_eq!(
        b.symbols, "gopclntab",
        "the stripped build has no symbol table"
    );
    assert!(a.version.starts_with("go1."), "{}", a.version);
    assert_eq!(a.version, b.version);
    // The two builds differ in layout (no DWARF, no symtab) but not in code: the functions' sizes
    // and their RETs' offsets from the entry are the same.
    let rel = |s: &golang::FuncSites| s.rets.iter().map(|r| r - s.entry).collect::<Vec<_>>();
    assert_eq!(rel(&a.read), rel(&b.read));
    assert_eq!(rel(&a.write), rel(&b.write));
    assert!(!a.read.rets.is_empty() && !a.write.rets.is_empty());

    // Cross-check against `go tool objdump` (virtual addresses; the text segment of a non-PIE Go
    // binary maps file offset 0 at 0x400000).
    let text_base = 0x400000;
    for (name, sites) in [(golang::READ, &a.read), (golang::WRITE, &a.write)] {
        let want = objdump_rets(&normal, name);
        assert!(!want.is_empty(), "go tool objdump listed no RET in {name}");
        let got: Vec<u64> = sites.rets.iter().map(|o| o + text_base).collect();
        assert_eq!(got, want, "{name}");
    }
    let _ = fs::remove_dir_all(&dir);
}
