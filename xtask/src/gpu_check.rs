//! `cargo xtask gpu-check`: runs the agent's NVML sampler (`infertap-gpu-check`) for a while and
//! prints per-call latency, the real spacing of `nvmlDeviceGetSamples` samples, GPM figures, the
//! clock NVML timestamps follow, and the sampler's cost. On a GPU machine it loads the driver's
//! `libnvidia-ml.so.1` (or `--nvml-lib`); with `--fake-gpus N` it builds the fake library
//! (gpu/fake-nvml) and runs against N scripted GPUs. See docs/gpu.md.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{root, run};

pub struct Options {
    pub nvml_lib: Option<PathBuf>,
    pub seconds: u64,
    pub fake_gpus: Option<u32>,
    pub json: bool,
}

/// A timeline of `n` busy Hopper GPUs for the fake library: utilisation, power and GPM figures
/// that change every few seconds, a 64-bit energy counter.
fn fake_timeline(n: u32) -> serde_json::Value {
    let devices: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let steps = |lo: f64, hi: f64| -> Vec<[f64; 2]> {
                (0..60)
                    .map(|k| {
                        let t = k as f64 * 3.0 - 10.0;
                        [
                            t,
                            if (k + i as usize).is_multiple_of(2) {
                                lo
                            } else {
                                hi
                            },
                        ]
                    })
                    .collect()
            };
            serde_json::json!({
                "architecture": "hopper",
                "gpu_util": steps(15.0, 90.0),
                "mem_util": steps(5.0, 45.0),
                "power_mw": steps(90_000.0, 550_000.0),
                "energy_start_mj": 1_000_000_000u64 + i as u64,
                "energy_update_us": 20_000,
                "dram_bw_util": steps(10.0, 70.0),
                "sm_util": steps(20.0, 95.0),
                "sm_occupancy": steps(10.0, 40.0),
                "tensor_util": steps(5.0, 60.0),
            })
        })
        .collect();
    serde_json::json!({ "devices": devices })
}

pub fn gpu_check(o: Options) -> Result<()> {
    let root = root();
    // The same environment as `cargo xtask build`, so neither build undoes the other.
    run(Command::new("cargo")
        .current_dir(&root)
        .env("INFERTAP_EBPF_OBJECT", crate::ebpf_object())
        .args(["build", "--locked", "--release", "-p", "infertap"])
        .args(["--bin", "infertap-gpu-check"]))?;
    let mut lib = o.nvml_lib.clone();
    if let Some(n) = o.fake_gpus {
        if lib.is_some() {
            bail!("--fake-gpus and --nvml-lib exclude each other");
        }
        run(Command::new("cargo").current_dir(&root).args([
            "build",
            "--locked",
            "--release",
            "-p",
            "fake-nvml",
        ]))
        .context("building the fake NVML library (gpu/fake-nvml)")?;
        let dir = root.join("target/gpu-check-fake");
        std::fs::create_dir_all(&dir)?;
        let installed = dir.join("libnvidia-ml.so.1");
        std::fs::copy(root.join("target/release/libnvidia_ml.so"), &installed)
            .context("copying target/release/libnvidia_ml.so")?;
        std::fs::write(
            dir.join("fake-nvml-timeline.json"),
            serde_json::to_vec_pretty(&fake_timeline(n))?,
        )?;
        eprintln!("fake NVML with {n} GPUs in {}", dir.display());
        lib = Some(installed);
    }
    let mut cmd = Command::new(root.join("target/release/infertap-gpu-check"));
    cmd.args(["--seconds", &o.seconds.to_string()]);
    if let Some(l) = &lib {
        cmd.arg("--nvml-lib").arg(l);
    }
    if o.json {
        cmd.arg("--json");
    }
    run(&mut cmd)
}
