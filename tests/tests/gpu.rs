//! GPU telemetry end to end, as root: the real agent loads the fake `libnvidia-ml.so.1`
//! (gpu/fake-nvml, scripted by a timeline) through `--nvml-lib` while the vLLM stand-in serves
//! the real `openai` client; each span's GPU attributes are checked against the numbers the
//! timeline implies, computed here independently of the agent's alignment code.
//!
//! Run: `cargo xtask build && cargo test --release -p infertap-tests --test gpu` (as root).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use infertap_tests::fake_nvml::{Device, FakeNvml, Process, RelUs, SampleKind, Series, Timeline};
use infertap_tests::harness::{self, attr, client, Agent, StandIn, StandInOpts};
use serde_json::Value;

const SPANS_WAIT: Duration = Duration::from_secs(30);
const GIB: u64 = 1 << 30;
const PERIOD_US: RelUs = 166_667;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Utilisation changing every 0.25 s (values 10–95 %), from 30 s before the anchor to 10 min after.
fn busy_util(seed: u64) -> Series {
    let points: Vec<(f64, f64)> = (0..2_520u64)
        .map(|k| {
            let t = k as f64 * 0.25 - 30.0;
            (t, 10.0 + ((k * 37 + seed * 11) % 86) as f64)
        })
        .collect();
    Series::steps(&points)
}

/// Power stepping between 200 and 300 W every second.
fn power() -> Series {
    let points: Vec<(f64, f64)> = (0..660u64)
        .map(|k| {
            (
                k as f64 - 30.0,
                if k % 2 == 0 { 200_000.0 } else { 300_000.0 },
            )
        })
        .collect();
    Series::steps(&points)
}

/// Two Hopper GPUs: GPU 0 runs `pid` (20 GiB), GPU 1 another process.
fn timeline(pid: u32) -> Timeline {
    let gpu0 = Device {
        gpu_util: busy_util(0),
        mem_util: Series::constant(35.0),
        power_mw: power(),
        energy_start_mj: 5_000_000,
        dram_bw_util: Series::constant(55.0),
        sm_util: Series::constant(70.0),
        sm_occupancy: Series::constant(30.0),
        tensor_util: Series::constant(40.0),
        processes: vec![Process {
            pid,
            used_memory_bytes: Series::constant((20 * GIB) as f64),
            sm_util: Series::constant(60.0),
            ..Process::default()
        }],
        ..Device::default()
    };
    let gpu1 = Device {
        gpu_util: Series::constant(5.0),
        power_mw: Series::constant(70_000.0),
        processes: vec![Process {
            pid: 999_999,
            used_memory_bytes: Series::constant((3 * GIB) as f64),
            ..Process::default()
        }],
        ..Device::default()
    };
    let mut t = Timeline::new(vec![gpu0, gpu1]);
    t.sample_period_us = PERIOD_US as u64;
    t.anchor_unix_us = Some(now_us());
    t
}

fn f(span: &Value, key: &str) -> f64 {
    attr(span, key)
        .as_f64()
        .unwrap_or_else(|| panic!("span has no numeric {key}: {span:#}"))
}

/// A span's window in timeline µs.
fn window(fake: &FakeNvml, span: &Value) -> (RelUs, RelUs) {
    let s = span["start_time_unix_nano"].as_u64().unwrap() / 1000;
    let e = span["end_time_unix_nano"].as_u64().unwrap() / 1000;
    (fake.rel(s), fake.rel(e))
}

/// The driver's samples at `k·p` cover `((k−1)·p, k·p]`: the time-weighted mean and the max of
/// the samples overlapping `[a, b]`.
fn expected_util(fake: &FakeNvml, gpu: usize, a: RelUs, b: RelUs) -> (f64, f64) {
    let m = fake.device(gpu);
    let (mut sum, mut covered, mut max) = (0.0, 0i64, 0.0f64);
    let mut k = a.div_euclid(PERIOD_US);
    while (k - 1) * PERIOD_US < b {
        let (s, e) = ((k - 1) * PERIOD_US, k * PERIOD_US);
        let o = e.min(b) - s.max(a);
        if o > 0 {
            let v = f64::from(m.sample_value(SampleKind::GpuUtil, e)) / 100.0;
            sum += v * o as f64;
            covered += o;
            max = max.max(v);
        }
        k += 1;
    }
    (sum / covered as f64, max)
}

/// Joules the timeline's power integrates to over `[a, b]`.
fn expected_energy(fake: &FakeNvml, gpu: usize, a: RelUs, b: RelUs) -> f64 {
    let m = fake.device(gpu);
    (m.energy_mj_unwrapped(b) - m.energy_mj_unwrapped(a)) / 1000.0
}

/// The agent interpolates the energy counter linearly between reads about 100 ms apart: across a
/// power step of 100 W that is off by at most 100 W × 0.12 s / 4 at each end.
const ENERGY_TOLERANCE_J: f64 = 2.0 * 100.0 * 0.12 / 4.0 + 0.05;

fn start(ctx: &harness::TestCtx, opts: StandInOpts) -> (StandIn, FakeNvml) {
    let server = StandIn::start(ctx, opts);
    let fake = FakeNvml::install(&ctx.file("nvml"), timeline(server.pid()));
    (server, fake)
}

fn nvml_args(fake: &FakeNvml) -> Vec<String> {
    vec!["--nvml-lib".into(), fake.lib.display().to_string()]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn each_span_carries_the_gpu_figures_the_timeline_implies() {
    let Some(ctx) = harness::begin("each_span_carries_the_gpu_figures_the_timeline_implies") else {
        return;
    };
    let (server, fake) = start(
        &ctx,
        StandInOpts {
            ttft_ms: 80,
            token_interval_ms: 40,
            ..StandInOpts::default()
        },
    );
    let a = nvml_args(&fake);
    let agent = Agent::start(&ctx, &server, &args(&a), &[]);
    let records = client(
        &ctx,
        &server,
        &[
            "--scenario",
            "chat-stream",
            "--count",
            "6",
            "--max-tokens",
            "10",
        ],
    );
    let spans = agent.wait_spans_for(&records, SPANS_WAIT);
    let uuid0 = fake.timeline.devices[0].uuid(0);
    for span in spans.iter().filter(|s| s["kind"] == "server") {
        let (a, b) = window(&fake, span);
        assert!(b - a > 300_000, "a request of ≥ 0.3 s: {span:#}");
        assert_eq!(
            attr(span, "infertap.gpu.ids"),
            &Value::from(vec![uuid0.clone()])
        );
        assert_eq!(attr(span, "infertap.gpu.attribution"), "nvml_processes");
        assert_eq!(attr(span, "infertap.gpu.source"), "nvml");
        let (mean, _) = expected_util(&fake, 0, a, b);
        let got = f(span, "infertap.gpu.utilization.mean");
        assert!(
            (got - mean).abs() < 0.005,
            "utilisation {got} vs {mean} over [{a}, {b}] µs"
        );
        // The max may take in a sample the window touches by a few µs of clock offset.
        let (_, max_in) = expected_util(&fake, 0, a + 1_000, b - 1_000);
        let (_, max_out) = expected_util(&fake, 0, a - 1_000, b + 1_000);
        let got = f(span, "infertap.gpu.utilization.max");
        assert!(
            got >= max_in - 1e-9 && got <= max_out + 1e-9,
            "max {got} vs {max_in}..{max_out}"
        );
        assert!(f(span, "infertap.gpu.coverage") > 0.99, "{span:#}");
        let res = f(span, "infertap.gpu.sample_resolution");
        assert!((res - 0.166_667).abs() < 0.002, "resolution {res}");
        assert_eq!(attr(span, "infertap.gpu.resolution_limited"), false);
        // GPM (Hopper): DRAM bandwidth and the SM figures.
        assert!((f(span, "infertap.gpu.memory_bandwidth.utilization") - 0.55).abs() < 1e-6);
        assert_eq!(
            attr(span, "infertap.gpu.memory_bandwidth.source"),
            "nvml_gpm"
        );
        assert!((f(span, "infertap.gpu.sm_active") - 0.70).abs() < 1e-6);
        assert!((f(span, "infertap.gpu.tensor_active") - 0.40).abs() < 1e-6);
        let want = expected_energy(&fake, 0, a, b);
        let got = f(span, "infertap.gpu.energy");
        assert!(
            (got - want).abs() < ENERGY_TOLERANCE_J,
            "energy {got} J vs {want} J"
        );
        assert_eq!(f(span, "infertap.gpu.energy.coverage"), 1.0);
        // The process's memory, and GPU 0's (only its processes), not GPU 1's.
        assert_eq!(
            attr(span, "infertap.gpu.process.memory.usage"),
            (20 * GIB) as i64
        );
        assert_eq!(attr(span, "infertap.gpu.memory.usage"), (20 * GIB) as i64);
        assert_eq!(attr(span, "infertap.gpu.memory.limit"), (80 * GIB) as i64);
        assert!((f(span, "infertap.gpu.process.utilization") - 0.60).abs() < 1e-6);
        // Requests one after another: each alone, its share is the GPU's busy time and energy.
        assert_eq!(attr(span, "infertap.gpu.share.concurrent_requests"), 1);
        let busy = f(span, "infertap.gpu.share.busy_time");
        assert!(
            (busy - mean * (b - a) as f64 / 1e6).abs() < 0.005,
            "busy {busy}"
        );
        assert!((f(span, "infertap.gpu.share.energy") - want).abs() < ENERGY_TOLERANCE_J);
    }

    // /gpu: both devices, their latest figures and the sampler's cost per call.
    let gpu: Value = serde_json::from_str(&agent.get("/gpu")).unwrap();
    assert_eq!(gpu["source"]["source"], "nvml");
    assert_eq!(gpu["source"]["state"], "ok");
    assert_eq!(gpu["source"]["timestamp_clock"], "realtime");
    assert_eq!(
        gpu["source"]["driver_version"],
        fake.timeline.driver_version.as_str()
    );
    let devices = gpu["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0]["uuid"], uuid0.as_str());
    assert_eq!(devices[1]["figures"]["gpu_utilization"]["value"], 0.05);
    assert_eq!(devices[1]["figures"]["gpu_utilization"]["origin"], "nvml");
    assert_eq!(
        devices[0]["figures"]["dram_bandwidth"]["origin"],
        "nvml_gpm"
    );
    assert_eq!(devices[1]["memory"]["used_bytes"], 3 * GIB);
    assert_eq!(devices[0]["processes"][0]["pid"], server.pid());
    let calls = &gpu["sampler"]["calls"];
    assert!(
        calls["nvmlDeviceGetSamples(GPU_UTILIZATION)"]["calls"]
            .as_u64()
            .unwrap()
            > 10
    );
    assert!(
        gpu["sampler"]["nvml_ms_per_100ms_per_gpu"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // The fake's own counters: the blocking PCIe call is never made.
    let stats = fake.stats().expect("the fake wrote its stats");
    assert!(stats.symbols["nvmlDeviceGetSamples"].calls > 10);
    assert!(!stats.symbols.contains_key("nvmlDeviceGetPcieThroughput"));

    // /metrics: the hw.gpu.* gauges per device.
    let metrics = agent.metrics();
    let line = |name: &str, uuid: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("hw_id=\"{uuid}\"")))
            .unwrap_or_else(|| panic!("no {name} for {uuid} in /metrics:\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let uuid1 = fake.timeline.devices[1].uuid(1);
    assert_eq!(line("hw_gpu_utilization_ratio{", &uuid1), 0.05);
    assert_eq!(
        line("hw_gpu_memory_usage_bytes{", &uuid0),
        (20 * GIB) as f64
    );
    assert_eq!(
        line("hw_gpu_memory_limit_bytes{", &uuid0),
        (80 * GIB) as f64
    );
    assert_eq!(line("hw_power_watts{", &uuid1), 70.0);
    assert!(line("hw_energy_joules_total{", &uuid0) > 5_000.0);
    assert_eq!(
        line("infertap_gpu_memory_bandwidth_utilization_ratio{", &uuid0),
        0.55
    );

    let status = agent.status();
    assert_eq!(status["gpu"]["state"], "ok");
    assert_eq!(status["gpu"]["source"], "nvml");
    assert_eq!(status["gpu"]["devices"], 2);
}

#[test]
fn concurrent_requests_share_the_gpu_and_the_shares_add_up() {
    let Some(ctx) = harness::begin("concurrent_requests_share_the_gpu_and_the_shares_add_up")
    else {
        return;
    };
    let server = StandIn::start(
        &ctx,
        StandInOpts {
            ttft_ms: 60,
            token_interval_ms: 30,
            ..StandInOpts::default()
        },
    );
    // A steady 250 W and an energy counter that wraps every 0.6 s (at 150 J): the agent sees
    // several wraps during the requests.
    let mut t = timeline(server.pid());
    t.devices[0].power_mw = Series::constant(250_000.0);
    t.devices[0].energy_start_mj = 0;
    t.devices[0].energy_wrap_mj = Some(150_000);
    let fake = FakeNvml::install(&ctx.file("nvml"), t);
    let a = nvml_args(&fake);
    let agent = Agent::start(&ctx, &server, &args(&a), &[]);
    let records = client(
        &ctx,
        &server,
        &[
            "--scenario",
            "chat-stream",
            "--count",
            "12",
            "--concurrency",
            "4",
            "--max-tokens",
            "12",
        ],
    );
    let spans: Vec<Value> = agent
        .wait_spans_for(&records, SPANS_WAIT)
        .into_iter()
        .filter(|s| s["kind"] == "server")
        .collect();
    assert_eq!(spans.len(), 12);
    assert!(
        spans
            .iter()
            .any(|s| attr(s, "infertap.gpu.share.concurrent_requests").as_i64() > Some(1)),
        "no span saw another request in flight"
    );
    // Every request's share is at most the GPU's busy time over its window; all shares together
    // are the busy time and energy of the union of the windows.
    let mut windows: Vec<(RelUs, RelUs)> = Vec::new();
    let (mut busy, mut joules) = (0.0, 0.0);
    for s in &spans {
        let (a, b) = window(&fake, s);
        let (mean, _) = expected_util(&fake, 0, a, b);
        let share = f(s, "infertap.gpu.share.busy_time");
        assert!(
            share <= mean * (b - a) as f64 / 1e6 + 0.002,
            "{share} > the whole"
        );
        busy += share;
        joules += f(s, "infertap.gpu.share.energy");
        windows.push((a, b));
    }
    windows.sort();
    let mut union: Vec<(RelUs, RelUs)> = Vec::new();
    for (a, b) in windows {
        match union.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => union.push((a, b)),
        }
    }
    let (mut want_busy, mut want_j) = (0.0, 0.0);
    for &(a, b) in &union {
        want_busy += expected_util(&fake, 0, a, b).0 * (b - a) as f64 / 1e6;
        want_j += expected_energy(&fake, 0, a, b);
    }
    assert!(
        (busy - want_busy).abs() < 0.01 * want_busy.max(1.0),
        "shares {busy} s vs union busy time {want_busy} s ({} pieces)",
        union.len()
    );
    assert!(
        (joules - want_j).abs() < 0.01 * want_j,
        "energy shares {joules} J vs {want_j} J"
    );
    let gpu: Value = serde_json::from_str(&agent.get("/gpu")).unwrap();
    let wraps = gpu["devices"][0]["energy"]["wraps"].as_u64().unwrap();
    assert!(wraps >= 3, "the energy counter wrapped {wraps} times");
}

#[test]
fn a_missing_nvml_symbol_turns_off_only_its_figure() {
    let Some(ctx) = harness::begin("a_missing_nvml_symbol_turns_off_only_its_figure") else {
        return;
    };
    let server = StandIn::start(&ctx, StandInOpts::default());
    let mut t = timeline(server.pid());
    t.missing_symbols = vec![
        "nvmlDeviceGetTotalEnergyConsumption".into(),
        "nvmlGpmSampleGet".into(),
    ];
    let fake = FakeNvml::install(&ctx.file("nvml"), t);
    let a = nvml_args(&fake);
    let mut agent = Agent::start(&ctx, &server, &args(&a), &[]);
    let records = client(
        &ctx,
        &server,
        &["--scenario", "chat-stream", "--count", "2"],
    );
    let spans = agent.wait_spans_for(&records, SPANS_WAIT);
    for span in spans.iter().filter(|s| s["kind"] == "server") {
        assert!(f(span, "infertap.gpu.utilization.mean") > 0.0);
        let attrs = span["attributes"].as_object().unwrap();
        assert!(!attrs.contains_key("infertap.gpu.energy"), "{span:#}");
        // Without GPM the bandwidth figure, where there is one, is NVML's memory-busy time.
        if attrs.contains_key("infertap.gpu.memory_bandwidth.utilization") {
            assert_eq!(
                attr(span, "infertap.gpu.memory_bandwidth.source"),
                "nvml_memory_busy"
            );
        }
    }
    let status = agent.status();
    assert_eq!(status["gpu"]["state"], "ok");
    let disabled: BTreeMap<String, String> =
        serde_json::from_value(status["gpu"]["disabled"].clone()).unwrap();
    let energy = &disabled["nvmlDeviceGetTotalEnergyConsumption"];
    assert!(
        energy.contains("missing") && energy.contains(&fake.lib.display().to_string()),
        "{energy}"
    );
    assert!(disabled.contains_key("nvmlGpmSampleGet"), "{disabled:?}");
    assert!(agent.alive());
    let log = agent.proc.log_text();
    assert_eq!(
        log.matches("GPU figure disabled").count(),
        disabled.len(),
        "once each:\n{log}"
    );
}

#[test]
fn a_bad_nvml_library_path_leaves_gpu_off_and_the_agent_tracing() {
    let Some(ctx) = harness::begin("a_bad_nvml_library_path_leaves_gpu_off_and_the_agent_tracing")
    else {
        return;
    };
    let server = StandIn::start(&ctx, StandInOpts::default());
    let bad = ctx.file("no-such-dir/libnvidia-ml.so.1");
    let bad = bad.display().to_string();
    let mut agent = Agent::start(&ctx, &server, &["--nvml-lib", &bad], &[]);
    let records = client(&ctx, &server, &["--scenario", "chat", "--count", "1"]);
    let spans = agent.wait_spans_for(&records, SPANS_WAIT);
    assert!(spans
        .iter()
        .all(|s| s["attributes"].get("infertap.gpu.ids").is_none()));
    let status = agent.status();
    assert_eq!(status["gpu"]["state"], "failed");
    let reason = status["gpu"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot load the NVML library") && reason.contains(&bad),
        "{reason}"
    );
    let gpu: Value = serde_json::from_str(&agent.get("/gpu")).unwrap();
    assert_eq!(gpu["source"]["state"], "failed");
    assert_eq!(gpu["devices"], Value::Array(vec![]));
    assert!(agent
        .proc
        .log_text()
        .contains("cannot load the NVML library"));
    assert!(agent.alive());
}

/// Serves `body` as the answer to every HTTP request on a loopback port (a recorded exporter).
fn serve_forever(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn without_nvml_a_dcgm_exporter_is_the_source_at_30_s_resolution() {
    let Some(ctx) = harness::begin("without_nvml_a_dcgm_exporter_is_the_source_at_30_s_resolution")
    else {
        return;
    };
    const RECORDED: &str = include_str!("../../agent/src/gpu/testdata/dcgm-exporter.prom");
    let port = serve_forever(RECORDED);
    let server = StandIn::start(&ctx, StandInOpts::default());
    let url = format!("http://127.0.0.1:{port}/metrics");
    let bad = ctx.file("none/libnvidia-ml.so.1").display().to_string();
    let agent = Agent::start(
        &ctx,
        &server,
        &["--nvml-lib", &bad, "--dcgm-exporter-url", &url],
        &[],
    );
    let gpu = harness::poll(Duration::from_secs(20), || {
        let v: Value = serde_json::from_str(&agent.get("/gpu")).ok()?;
        (v["source"]["dcgm_state"] == "ok").then_some(v)
    })
    .expect("/gpu shows a successful dcgm-exporter scrape within 20 s");
    assert_eq!(gpu["source"]["source"], "dcgm");
    assert_eq!(gpu["source"]["state"], "ok");
    let reason = gpu["source"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("update cadence (30 s until learned)") && reason.contains("cannot load"),
        "{reason}"
    );
    let d0 = gpu["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["uuid"] == "GPU-5fa4c8a2-3b1e-7d4c-9e0f-1a2b3c4d5e6f")
        .expect("GPU 0 from the exporter");
    assert_eq!(d0["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(d0["figures"]["gpu_utilization"]["value"], 0.87);
    assert_eq!(d0["figures"]["gpu_utilization"]["origin"], "dcgm");
    assert_eq!(d0["figures"]["gpu_utilization"]["resolution_seconds"], 30.0);
    assert_eq!(d0["figures"]["dram_bandwidth"]["value"], 0.615833);
    let metrics = agent.metrics();
    assert!(
        metrics.contains("hw_gpu_utilization_ratio{hw_id=\"GPU-5fa4c8a2-3b1e-7d4c-9e0f-1a2b3c4d5e6f\",hw_name=\"NVIDIA H100 80GB HBM3\",gpu=\"0\"} 0.87"),
        "{metrics}"
    );
    assert_eq!(agent.status()["gpu"]["source"], "dcgm");
}

/// A stand-in for dcgm-exporter on one A100 that collects every `cadence` (as dcgm-exporter's
/// `-c` does): between collections it serves the same values, whatever the scrape rate.
/// Collection `k` reports utilisation `util_pct(k)` and an energy counter growing at 300 W.
struct FakeExporter {
    port: u16,
    cadence: Duration,
}

const A100_UUID: &str = "GPU-a100a100-0000-4000-8000-000000000001";
const EXPORTER_WATTS: f64 = 300.0;

fn util_pct(k: u64) -> u64 {
    10 + 10 * (k % 9)
}

impl FakeExporter {
    fn start(cadence: Duration) -> FakeExporter {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let born = std::time::Instant::now();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let k = (born.elapsed().as_nanos() / cadence.as_nanos()) as u64;
                let energy_mj = 5_000_000_000
                    + (k as f64 * cadence.as_secs_f64() * EXPORTER_WATTS * 1e3) as u64;
                let labels = format!(
                    "gpu=\"0\",UUID=\"{A100_UUID}\",pci_bus_id=\"00000000:07:00.0\",device=\"nvidia0\",modelName=\"NVIDIA A100-SXM4-40GB\",Hostname=\"node-1\""
                );
                let body = format!(
                    "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n\
                     DCGM_FI_DEV_GPU_UTIL{{{labels}}} {}\n\
                     # TYPE DCGM_FI_DEV_MEM_COPY_UTIL gauge\n\
                     DCGM_FI_DEV_MEM_COPY_UTIL{{{labels}}} {}\n\
                     # TYPE DCGM_FI_DEV_POWER_USAGE gauge\n\
                     DCGM_FI_DEV_POWER_USAGE{{{labels}}} {EXPORTER_WATTS}\n\
                     # TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n\
                     DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels}}} {energy_mj}\n\
                     DCGM_FI_DEV_FB_USED{{{labels}}} 30000\n\
                     DCGM_FI_DEV_FB_FREE{{{labels}}} 10000\n",
                    util_pct(k),
                    util_pct(k) / 2,
                );
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeExporter { port, cadence }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }
}

/// dcgm-exporter as the only GPU source, collecting every 2 s and scraped every 0.5 s: the agent
/// learns the cadence, and every ordinary short request between two collections gets the
/// reading in effect, with its age and its measured coverage, instead of nothing.
#[test]
fn dcgm_only_short_requests_between_readings_all_get_figures_with_age_and_coverage() {
    let Some(ctx) = harness::begin(
        "dcgm_only_short_requests_between_readings_all_get_figures_with_age_and_coverage",
    ) else {
        return;
    };
    let exporter = FakeExporter::start(Duration::from_secs(2));
    let scrape_s = 0.5;
    let server = StandIn::start(
        &ctx,
        StandInOpts {
            ttft_ms: 40,
            token_interval_ms: 10,
            env: vec![("CUDA_VISIBLE_DEVICES".into(), "0".into())],
            ..StandInOpts::default()
        },
    );
    let url = exporter.url();
    let agent = Agent::start(
        &ctx,
        &server,
        &[
            "--gpu",
            "dcgm",
            "--dcgm-exporter-url",
            &url,
            "--dcgm-scrape-interval",
            &scrape_s.to_string(),
        ],
        &[],
    );
    // The cadence is learned from two changes of the values.
    let gpu = harness::poll(Duration::from_secs(20), || {
        let v: Value = serde_json::from_str(&agent.get("/gpu")).ok()?;
        v["source"]["dcgm_update_cadence_seconds"]
            .as_f64()
            .is_some()
            .then_some(v)
    })
    .expect("/gpu shows a learned dcgm-exporter cadence within 20 s");
    let cadence_s = exporter.cadence.as_secs_f64();
    let learned = gpu["source"]["dcgm_update_cadence_seconds"]
        .as_f64()
        .unwrap();
    assert!(
        (learned - cadence_s).abs() <= scrape_s,
        "learned cadence {learned} s, the exporter's {cadence_s} s"
    );
    assert_eq!(gpu["source"]["source"], "dcgm");
    assert_eq!(gpu["source"]["dcgm_scrape_interval_seconds"], scrape_s);
    // Short requests (≈ 0.1 s) one after another, 0.3 s apart: most fall between two readings.
    let records = client(
        &ctx,
        &server,
        &[
            "--scenario",
            "chat-stream",
            "--count",
            "10",
            "--max-tokens",
            "5",
            "--pause-ms",
            "300",
        ],
    );
    let spans: Vec<Value> = agent
        .wait_spans_for(&records, SPANS_WAIT)
        .into_iter()
        .filter(|s| s["kind"] == "server")
        .collect();
    assert_eq!(spans.len(), 10);
    let served: Vec<f64> = (0..9).map(|k| util_pct(k) as f64 / 100.0).collect();
    let mut held = 0;
    for span in &spans {
        let attrs = span["attributes"].as_object().unwrap();
        assert_eq!(attr(span, "infertap.gpu.source"), "dcgm", "{span:#}");
        assert_eq!(attr(span, "infertap.gpu.attribution"), "visible_devices");
        assert_eq!(
            attr(span, "infertap.gpu.ids"),
            &Value::from(vec![A100_UUID.to_string()])
        );
        // Figures, whatever the request's place between readings.
        let mean = f(span, "infertap.gpu.utilization.mean");
        let max = f(span, "infertap.gpu.utilization.max");
        assert!(
            served.iter().any(|v| (v - max).abs() < 1e-9),
            "max {max} is a served value"
        );
        assert!((0.1..=0.9).contains(&mean), "{span:#}");
        assert!(attrs.contains_key("infertap.gpu.memory_bandwidth.utilization"));
        assert_eq!(
            attr(span, "infertap.gpu.memory_bandwidth.source"),
            "dcgm_mem_copy_util"
        );
        // With their age (at most one cadence and one scrape interval, plus scheduling slack)
        // and their measured coverage.
        let age = f(span, "infertap.gpu.sample_age");
        assert!(
            (0.0..=cadence_s + scrape_s + 1.0).contains(&age),
            "age {age} s: {span:#}"
        );
        let coverage = f(span, "infertap.gpu.coverage");
        assert!((0.0..=1.0).contains(&coverage));
        if age > 0.0 {
            held += 1;
            assert!(coverage < 1.0, "a held reading is not measured coverage");
        }
        let res = f(span, "infertap.gpu.sample_resolution");
        assert!(
            (res - cadence_s).abs() <= scrape_s + 1e-9,
            "resolution {res}"
        );
        assert_eq!(attr(span, "infertap.gpu.resolution_limited"), true);
        // Energy at the power in effect: 300 W, the rate between two readings seen at scrapes
        // (each up to one scrape interval late), so within a quarter or so.
        let (a, b) = (
            span["start_time_unix_nano"].as_u64().unwrap(),
            span["end_time_unix_nano"].as_u64().unwrap(),
        );
        let watts = f(span, "infertap.gpu.energy") / ((b - a) as f64 / 1e9);
        assert!(
            (EXPORTER_WATTS * 0.6..=EXPORTER_WATTS * 1.5).contains(&watts),
            "{watts} W"
        );
        assert!(attrs.contains_key("infertap.gpu.energy.coverage"));
        assert_eq!(attr(span, "infertap.gpu.share.estimated"), true);
        assert!(attrs.contains_key("infertap.gpu.energy_per_output_token"));
    }
    assert!(
        held >= 5,
        "only {held} of 10 requests fell after the last reading"
    );
}

/// The cost attributes against the fake NVML's known energy: a constant 250 W, so each stream's
/// energy, its split at the first token, joules per token and the GPU-hour price are known.
#[test]
fn cost_attributes_match_the_known_energy_split_at_the_first_token() {
    let Some(ctx) =
        harness::begin("cost_attributes_match_the_known_energy_split_at_the_first_token")
    else {
        return;
    };
    let server = StandIn::start(
        &ctx,
        StandInOpts {
            ttft_ms: 300,
            token_interval_ms: 40,
            ..StandInOpts::default()
        },
    );
    const WATTS: f64 = 250.0;
    let mut t = timeline(server.pid());
    t.devices[0].power_mw = Series::constant(WATTS * 1e3);
    let fake = FakeNvml::install(&ctx.file("nvml"), t);
    let mut a = nvml_args(&fake);
    a.extend(["--gpu-hour-cost".to_string(), "3.6".to_string()]);
    let agent = Agent::start(&ctx, &server, &args(&a), &[]);
    let records = client(
        &ctx,
        &server,
        &[
            "--scenario",
            "chat-stream",
            "--count",
            "4",
            "--max-tokens",
            "10",
        ],
    );
    let spans: Vec<Value> = agent
        .wait_spans_for(&records, SPANS_WAIT)
        .into_iter()
        .filter(|s| s["kind"] == "server")
        .collect();
    assert_eq!(spans.len(), 4);
    // Constant power: the counter is linear, so interpolation is exact but for the clock
    // conversion (µs) and the first-token instant (the chunk's write): 2 ms at 250 W.
    let tolerance = |j: f64| 0.5 + 0.005 * j;
    let mut sum_j_per_token = 0.0;
    for span in &spans {
        let (a, b) = window(&fake, span);
        let ttft = f(span, "gen_ai.latency.time_to_first_token");
        assert!(ttft >= 0.3, "{span:#}");
        let first = a + (ttft * 1e6) as RelUs;
        let want_total = expected_energy(&fake, 0, a, b);
        let want_prefill = expected_energy(&fake, 0, a, first);
        let want_decode = expected_energy(&fake, 0, first, b);
        assert!((want_total - WATTS * (b - a) as f64 / 1e6).abs() < 0.01);
        let check = |key: &str, want: f64| {
            let got = f(span, key);
            assert!(
                (got - want).abs() < tolerance(want),
                "{key}: {got} J vs {want} J"
            );
        };
        check("infertap.gpu.energy", want_total);
        // Alone on the GPU: the share is all of it, split at the first token.
        check("infertap.gpu.share.energy", want_total);
        check("infertap.gpu.share.energy.prefill", want_prefill);
        check("infertap.gpu.share.energy.decode", want_decode);
        let busy = f(span, "infertap.gpu.share.busy_time");
        let split = f(span, "infertap.gpu.share.busy_time.prefill")
            + f(span, "infertap.gpu.share.busy_time.decode");
        assert!((busy - split).abs() < 1e-9, "{busy} vs {split}");
        let tokens = attr(span, "gen_ai.usage.output_tokens").as_i64().unwrap();
        assert_eq!(tokens, 10);
        let per_token = f(span, "infertap.gpu.energy_per_output_token");
        assert!(
            (per_token - want_total / tokens as f64).abs() < tolerance(want_total) / tokens as f64,
            "{per_token} J/token vs {want_total} J / {tokens}"
        );
        sum_j_per_token += per_token;
        // 3.6 per GPU-hour: the request's GPU wall time (alone: its whole window) / 1000.
        let gpu_s = f(span, "infertap.gpu.share.gpu_time");
        assert!((gpu_s - (b - a) as f64 / 1e6).abs() < 0.002, "{gpu_s}");
        let cost = f(span, "infertap.gpu.share.cost");
        assert!((cost - gpu_s / 1000.0).abs() < 1e-12);
        let per_million = f(span, "infertap.cost.per_million_output_tokens");
        assert!((per_million - cost / tokens as f64 * 1e6).abs() < 1e-9);
        assert_eq!(attr(span, "infertap.gpu.share.estimated"), false);
    }
    // The per-model histogram: one observation per stream, summing the spans' J/token.
    let metrics = agent.metrics();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains("gen_ai_request_model=\"standin-model\""))
            .unwrap_or_else(|| panic!("no {name} for standin-model in /metrics:\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("infertap_gpu_energy_per_output_token_count{"), 4.0);
    let sum = value("infertap_gpu_energy_per_output_token_sum{");
    assert!(
        (sum - sum_j_per_token).abs() < 1e-6 * sum_j_per_token.max(1.0),
        "histogram sum {sum} vs spans {sum_j_per_token}"
    );
}

/// The GPU check (`cargo xtask gpu-check`) against the fake: it must report the timeline's sample
/// spacing, the clock of its timestamps, every call it made and its cost.
#[test]
fn the_gpu_check_reports_spacing_clock_and_calls() {
    let Some(ctx) = harness::begin("the_gpu_check_reports_spacing_clock_and_calls") else {
        return;
    };
    let mut t = timeline(1);
    t.sample_period_us = 100_000;
    let fake = FakeNvml::install(&ctx.file("nvml"), t);
    let check = harness::paths().agent.with_file_name("infertap-gpu-check");
    let out = std::process::Command::new(&check)
        .arg("--nvml-lib")
        .arg(&fake.lib)
        .args(["--seconds", "3", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", check.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("NVML sample timestamps follow: realtime"),
        "{text}"
    );
    assert!(text.contains("min 100.0 ms, median 100.0 ms"), "{text}");
    for call in [
        "nvmlDeviceGetSamples(GPU_UTILIZATION)",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlGpmMetricsGet",
        "nvmlDeviceGetComputeRunningProcesses_v3",
    ] {
        assert!(text.contains(call), "{call} missing:\n{text}");
    }
    assert!(text.contains("NVML time per 100 ms per GPU:"), "{text}");
    assert!(text.contains("dram_bandwidth=0.550 (nvml_gpm)"), "{text}");
    let failing = std::process::Command::new(&check)
        .args([
            "--nvml-lib",
            "/nonexistent/libnvidia-ml.so.1",
            "--seconds",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!failing.status.success());
    assert!(String::from_utf8_lossy(&failing.stderr).contains("cannot load the NVML library"));
}

/// The per-GPU gauges over OTLP, with the `hw.*` names and attributes, from the real agent.
#[test]
fn gpu_gauges_reach_an_otlp_receiver() {
    let Some(ctx) = harness::begin("gpu_gauges_reach_an_otlp_receiver") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = rt
        .block_on(infertap_tests::otlp_receiver::OtlpReceiver::start())
        .unwrap();
    let (server, fake) = start(&ctx, StandInOpts::default());
    let a = nvml_args(&fake);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_string()),
    ];
    let _agent = Agent::start(&ctx, &server, &args(&a), &env);
    let uuid0 = fake.timeline.devices[0].uuid(0);
    let uuid1 = fake.timeline.devices[1].uuid(1);
    let point = |name: &'static str, uuid: String| {
        rt.block_on(receiver.wait_for_metric(Duration::from_secs(20), move |p| {
            p.name == name && p.attributes.get("hw.id").and_then(Value::as_str) == Some(&uuid)
        }))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let util = point("hw.gpu.utilization", uuid1.clone());
    assert_eq!(util.kind, "gauge");
    assert_eq!(util.unit, "1");
    assert_eq!(util.value, Some(0.05));
    assert_eq!(util.attributes["hw.type"], "gpu");
    assert_eq!(util.attributes["hw.name"], "NVIDIA H100 80GB HBM3");
    let mem = point("hw.gpu.memory.usage", uuid0.clone());
    assert_eq!(mem.unit, "By");
    assert_eq!(mem.value, Some((20 * GIB) as f64));
    let limit = point("hw.gpu.memory.limit", uuid0.clone());
    assert_eq!(limit.value, Some((80 * GIB) as f64));
    assert_eq!(point("hw.power", uuid1.clone()).value, Some(70.0));
    let energy = point("hw.energy", uuid0.clone());
    assert_eq!(energy.kind, "sum");
    assert!(energy.is_monotonic);
    assert_eq!(energy.unit, "J");
    let bw = point("infertap.gpu.memory_bandwidth.utilization", uuid0);
    assert_eq!(bw.value, Some(0.55));
}

/// A process in no NVML process list is placed by its `CUDA_VISIBLE_DEVICES`.
#[test]
fn without_a_process_list_entry_the_visible_devices_say_which_gpu() {
    let Some(ctx) =
        harness::begin("without_a_process_list_entry_the_visible_devices_say_which_gpu")
    else {
        return;
    };
    // The timeline's process lists hold other PIDs only; the server sees GPU 1 by UUID.
    let uuid1 = timeline(1).devices[1].uuid(1);
    let server = StandIn::start(
        &ctx,
        StandInOpts {
            env: vec![("CUDA_VISIBLE_DEVICES".into(), uuid1.clone())],
            ..StandInOpts::default()
        },
    );
    let fake = FakeNvml::install(&ctx.file("nvml"), timeline(1));
    let a = nvml_args(&fake);
    let agent = Agent::start(&ctx, &server, &args(&a), &[]);
    let records = client(
        &ctx,
        &server,
        &["--scenario", "chat-stream", "--count", "2"],
    );
    let spans = agent.wait_spans_for(&records, SPANS_WAIT);
    for span in spans.iter().filter(|s| s["kind"] == "server") {
        assert_eq!(
            attr(span, "infertap.gpu.ids"),
            &Value::from(vec![uuid1.clone()])
        );
        assert_eq!(attr(span, "infertap.gpu.attribution"), "visible_devices");
        assert!((f(span, "infertap.gpu.utilization.mean") - 0.05).abs() < 1e-9);
        assert_eq!(attr(span, "infertap.gpu.memory.usage"), (3 * GIB) as i64);
        // Its own memory is not known: it holds no context NVML lists.
        assert!(span["attributes"]
            .get("infertap.gpu.process.memory.usage")
            .is_none());
    }
}
