//! `infertap-gpu-check`: runs the agent's NVML sampler for a while and prints what it cost and what
//! it saw — per-call latency, the real spacing of `nvmlDeviceGetSamples` samples, GPM figures, and
//! which clock NVML timestamps follow (compared with CLOCK_REALTIME and CLOCK_MONOTONIC). Run it
//! through `cargo xtask gpu-check` on a GPU machine (under three minutes), or against the fake
//! library with `--nvml-lib`. See docs/gpu.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use infertap::export::gpu as view;
use infertap::gpu::nvml::{Options, Sampler};
use infertap::gpu::{Figure, Hub};

#[derive(Parser, Debug)]
#[command(name = "infertap-gpu-check")]
struct Args {
    /// The NVML library (default: libnvidia-ml.so.1 from the library path).
    #[arg(long)]
    nvml_lib: Option<PathBuf>,
    /// How long to sample, seconds (at most 170, to stay under three minutes).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Time between two polls of the same GPU, ms.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Also print the `/gpu` JSON at the end.
    #[arg(long)]
    json: bool,
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.seconds > 170 {
        bail!(
            "--seconds {} is over 170: the check must finish in three minutes",
            args.seconds
        );
    }
    let hub = Hub::default();
    let options = Options {
        lib: args.nvml_lib.clone(),
        tick: Duration::from_millis(args.tick_ms.max(10)),
        ..Options::default()
    };
    let t0 = Instant::now();
    let sampler = match Sampler::start(options, hub.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "NVML initialised in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let end = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(10).min(end - Instant::now()));
        let (ticks, nvml) = hub.read(|s| (s.cost.ticks, s.cost.nvml_ns));
        println!(
            "  {:>4.0} s: {ticks} ticks, {:.1} ms in NVML",
            t0.elapsed().as_secs_f64(),
            nvml as f64 / 1e6
        );
    }
    sampler.stop();
    hub.read(|s| {
        let st = &s.status;
        println!("\n== source");
        println!(
            "driver {} / NVML {}",
            st.driver_version.as_deref().unwrap_or("?"),
            st.nvml_version.as_deref().unwrap_or("?")
        );
        for d in &s.devices {
            println!("GPU {}: {} {} ({})", d.index, d.name, d.uuid, d.pci_bus_id);
        }
        println!("\n== timestamps");
        println!(
            "NVML sample timestamps follow: {}",
            st.timestamp_clock.as_deref().unwrap_or("unknown (no sample seen)")
        );
        if let (Some(r), Some(m)) = (st.timestamp_lag_realtime_ms, st.timestamp_lag_monotonic_ms) {
            println!("newest sample, read time minus its timestamp: CLOCK_REALTIME {r:.1} ms, CLOCK_MONOTONIC {m:.1} ms");
        }
        let mut sp: Vec<u64> = s.cost.sample_spacing_us.iter().copied().collect();
        sp.sort_unstable();
        println!("\n== GetSamples(GPU_UTILIZATION) spacing ({} gaps)", sp.len());
        if !sp.is_empty() {
            println!(
                "min {:.1} ms, median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
                pct(&sp, 0.0) as f64 / 1e3,
                pct(&sp, 0.5) as f64 / 1e3,
                pct(&sp, 0.9) as f64 / 1e3,
                pct(&sp, 1.0) as f64 / 1e3
            );
        }
        let secs = s.cost.running_ns as f64 / 1e9;
        println!("\n== per call ({secs:.1} s, {} ticks)", s.cost.ticks);
        println!("{:<48} {:>8} {:>7} {:>10} {:>10} {:>8}", "call", "calls", "errors", "mean µs", "max µs", "calls/s");
        for (name, c) in &s.cost.calls {
            println!(
                "{name:<48} {:>8} {:>7} {:>10.1} {:>10.1} {:>8.1}",
                c.calls,
                c.errors,
                c.mean_ns() as f64 / 1e3,
                c.max_ns as f64 / 1e3,
                c.calls as f64 / secs.max(1e-9)
            );
        }
        println!("\n== cost");
        println!(
            "NVML time per 100 ms per GPU: {:.3} ms",
            view::nvml_ms_per_100ms_per_gpu(s).unwrap_or(0.0)
        );
        println!(
            "sampler thread CPU: {:.3} s over {secs:.1} s = {:.2}% of one core",
            s.cost.thread_cpu_ns as f64 / 1e9,
            s.cost.thread_cpu_ns as f64 / 1e7 / secs.max(1e-9)
        );
        println!("\n== latest figures");
        for d in &s.devices {
            let mut parts = Vec::new();
            for f in Figure::ALL {
                if let Some(t) = d.track(f) {
                    if let Some(i) = t.series.latest() {
                        parts.push(format!("{}={:.3} ({})", f.as_str(), i.value, t.origin.as_str()));
                    }
                }
            }
            if let Some(m) = d.memory {
                parts.push(format!("memory={}/{} MiB", m.used >> 20, m.total >> 20));
            }
            if let Some(w) = d.energy.recent_rate(1_000_000_000) {
                parts.push(format!("energy rate={:.1} W", w / 1000.0));
            }
            println!("GPU {}: {}", d.index, parts.join(", "));
            let gpm: Vec<_> = [Figure::DramBandwidth, Figure::SmActive, Figure::SmOccupancy, Figure::TensorActive]
                .iter()
                .filter(|f| d.track(**f).is_some())
                .collect();
            if gpm.is_empty() {
                println!("  GPM: none");
            }
            println!("  processes: {:?}", d.processes.iter().map(|p| p.pid).collect::<Vec<_>>());
        }
        if !st.disabled.is_empty() {
            println!("\n== disabled");
            for (k, v) in &st.disabled {
                println!("{k}: {v}");
            }
        }
    });
    if args.json {
        println!("\n{}", serde_json::to_string_pretty(&view::gpu_json(&hub))?);
    }
    Ok(())
}
