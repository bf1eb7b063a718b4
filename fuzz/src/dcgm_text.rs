//! `gpu::dcgm::parse_text` (Prometheus text from dcgm-exporter) on any input. Line-oriented:
//! the text parsed whole must give the samples of its lines parsed one by one; no panic.

use infertap::gpu::dcgm::{gpus_from, parse_text};

/// The fuzz target's entry point (also replayed on `fuzz/regressions/` by `cargo test`).
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let whole = parse_text(&text);
    let mut samples = 0;
    let mut bad = 0;
    for line in text.lines() {
        let p = parse_text(line);
        samples += p.samples.len();
        bad += p.bad_lines;
    }
    assert_eq!(whole.samples.len(), samples);
    assert_eq!(whole.bad_lines, bad);
    let _ = gpus_from(&whole);
}
