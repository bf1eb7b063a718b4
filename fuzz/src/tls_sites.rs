//! TLS uprobe site finding on any bytes: the `.gopclntab` parser, the Go and OpenSSL analyses
//! over the `object` ELF reader, the RET finder. They read binaries of processes the agent does not
//! control: never a panic, and every site found lies inside the file.

use infertap::probes::uprobe::golang::{self, ret_addresses};
use infertap::probes::uprobe::gopclntab::Pclntab;
use infertap::probes::uprobe::openssl;

/// The fuzz target's entry point (also replayed on `fuzz/regressions/` by `cargo test`).
pub fn run(data: &[u8]) {
    if let Ok(t) = Pclntab::parse(data) {
        for (_, f) in t.functions().take(64) {
            let _ = f.end.checked_sub(f.entry);
        }
        let _ = t.find(golang::READ);
    }
    for r in ret_addresses(data, 0x1000) {
        assert!(r >= 0x1000 && r < 0x1000 + data.len() as u64);
    }
    if let Ok(Some(s)) = golang::analyze(data) {
        for off in [s.read.entry, s.write.entry, s.handshake]
            .into_iter()
            .chain(s.read.rets)
            .chain(s.write.rets)
        {
            assert!(off < data.len() as u64, "site outside the file");
        }
    }
    if let Ok(s) = openssl::analyze(data) {
        for (_, off) in s.functions {
            assert!(off < data.len() as u64, "site outside the file");
        }
    }
}
