//! Every input under `fuzz/regressions/<target>/` replayed through that fuzz target's own entry
//! point (`fuzz/src/<target>.rs`, included here as the cargo-fuzz binaries call it), so plain
//! `cargo test` runs them without cargo-fuzz. A folder without a target, or a target without a
//! folder, fails.

#[allow(dead_code, clippy::all)]
#[path = "../../fuzz/src/lib.rs"]
mod fuzz;

use std::path::Path;

type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 8] = [
    ("dcgm_text", fuzz::dcgm_text::run),
    ("grpc_ext_proc", fuzz::grpc_ext_proc::run),
    ("http1", fuzz::http1::run),
    ("http2", fuzz::http2::run),
    ("json_scan", fuzz::json_scan::run),
    ("records", fuzz::records::run),
    ("sse", fuzz::sse::run),
    ("tls_sites", fuzz::tls_sites::run),
];

#[test]
fn every_regression_input_replays_through_its_fuzz_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut folders: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(folders, names, "fuzz/regressions/ folders vs fuzz targets");
    let mut replayed = 0;
    for (name, run) in TARGETS {
        let mut inputs: Vec<_> = std::fs::read_dir(root.join(name))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no inputs for {name}");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            println!("{name}: {} ({} bytes)", input.display(), data.len());
            run(&data);
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}
