//! `gpu::dcgm::parse_text` (Prometheus text from dcgm-exporter) on any input. Line-oriented:
//! the text parsed whole must give the samples of its lines parsed one by one; no panic.
#![no_main]

use infertap::gpu::dcgm::{gpus_from, parse_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
