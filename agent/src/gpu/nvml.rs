//! The NVML sampler: one thread, every GPU polled once per tick (default 100 ms) at its own
//! offset in the tick, each call timed and its cadence backed off when it is slow.
//!
//! | figure | call | cadence |
//! |---|---|---|
//! | GPU and memory utilisation | `nvmlDeviceGetSamples`, incremental by the last timestamp seen (`NOT_FOUND`: nothing new, an idle GPU) | every tick |
//! | energy | `nvmlDeviceGetTotalEnergyConsumption` (mJ counter) | every tick |
//! | instant power | `nvmlDeviceGetFieldValues(POWER_INSTANT)` | every tick |
//! | GPM: DRAM bandwidth, SM utilisation and occupancy, tensor activity | `nvmlGpmSampleGet` + `nvmlGpmMetricsGet` over two samples ≥ 100 ms apart (Hopper or newer) | every tick |
//! | memory | `nvmlDeviceGetMemoryInfo_v2` | 1 s |
//! | per-process utilisation | `nvmlDeviceGetProcessUtilization`, incremental | every tick |
//! | compute processes | `nvmlDeviceGetComputeRunningProcesses_v3` (slow) | 5 s, and when a process of interest appears or exits |
//!
//! `nvmlDeviceGetPcieThroughput` blocks ~20 ms and is never called. A symbol missing from the
//! library (`FailedToLoadSymbol`) switches off only its figure, once, with the reason in
//! [`SourceStatus::disabled`](super::SourceStatus). NVML timestamps are wall-clock µs; the sampler
//! checks which clock they follow and converts them to `CLOCK_MONOTONIC`.
//!
//! NVML is shut down explicitly (`nvmlShutdown`) when the thread ends; a library without that
//! symbol is left loaded rather than letting nvml-wrapper's `Drop` panic on it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvml_wrapper::enum_wrappers::device::Sampling;
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::gpm::{gpm_metrics_get, GpmSample};
use nvml_wrapper::struct_wrappers::device::Sample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::Nvml;

use super::{CallCost, Device, Figure, GpuProcess, Hub, Memory, Origin};
use crate::capture::clock::WallClock;
use crate::stats::Stats;

/// Time between two polls of the same GPU.
pub const DEFAULT_TICK: Duration = Duration::from_millis(100);
/// The driver's utilisation sample period until one is measured (about 1/6 s).
const DEFAULT_PERIOD_NS: u64 = 166_666_667;
/// GPM metrics need two samples at least this far apart.
const GPM_MIN_SPACING: Duration = Duration::from_millis(100);
/// A call slower than this has its cadence doubled (up to [`MAX_CADENCE`]).
const SLOW_CALL: Duration = Duration::from_millis(20);
const MAX_CADENCE: Duration = Duration::from_secs(10);
/// How early a poll may run a call that is due.
const CADENCE_SLACK: Duration = Duration::from_millis(30);
const MEMORY_EVERY: Duration = Duration::from_secs(1);
const PROCESS_UTIL_EVERY: Duration = Duration::from_millis(100);
const PROCESSES_EVERY: Duration = Duration::from_secs(5);
/// Most per-process utilisation series kept per GPU.
const MAX_PROCESS_SERIES: usize = 64;
/// `NVML_FI_DEV_POWER_INSTANT` (mW).
const FI_POWER_INSTANT: u32 = 186;

/// The NVML library the agent loads unless `--nvml-lib` says otherwise.
pub const DEFAULT_LIB: &str = "libnvidia-ml.so.1";

/// Why the sampler could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot load the NVML library {lib}: {source}; install the NVIDIA driver (it ships \
         libnvidia-ml.so.1), or point --nvml-lib at the library, or run with --gpu off"
    )]
    Load {
        lib: String,
        #[source]
        source: NvmlError,
    },
    #[error("NVML loaded from {lib} but {what} failed: {source}")]
    Init {
        lib: String,
        what: &'static str,
        #[source]
        source: NvmlError,
    },
    #[error("NVML loaded from {lib} but it sees no GPU")]
    NoDevices { lib: String },
    #[error("cannot start the GPU sampler thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// How the sampler runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub lib: Option<PathBuf>,
    pub tick: Duration,
    /// Where failed calls are counted (`gpu_nvml_call_errors`).
    pub stats: Arc<Stats>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lib: None,
            tick: DEFAULT_TICK,
            stats: Arc::default(),
        }
    }
}

/// A running sampler; dropping it does not stop it, [`Sampler::stop`] does.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Loads NVML, lists the GPUs into `hub`, and starts the sampling thread. Returns once NVML
    /// is initialised (or failed to).
    pub fn start(options: Options, hub: Hub) -> Result<Sampler, StartError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(), StartError>>(1);
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("infertap-gpu".into())
                .spawn(move || run(options, hub, stop, tx))
                .map_err(StartError::Thread)?
        };
        match rx.recv() {
            Ok(Ok(())) => Ok(Sampler {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(StartError::Thread(std::io::Error::other(
                    "the sampler thread ended during start",
                )))
            }
        }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// When a call is next due, and how often.
#[derive(Clone, Copy, Debug)]
struct Cadence {
    every: Duration,
    next: Instant,
}

impl Cadence {
    fn new(every: Duration, now: Instant) -> Self {
        Self { every, next: now }
    }

    /// Due at the poll nearest its time (polls come once per tick, give or take scheduling).
    fn due(&self, now: Instant) -> bool {
        now + CADENCE_SLACK >= self.next
    }

    /// A call ran at `now` and took `took`: schedule the next, at half the rate when it was slow,
    /// and back towards `base` when it was not.
    fn ran(&mut self, now: Instant, took: Duration, base: Duration) {
        self.every = if took > SLOW_CALL {
            (self.every.max(DEFAULT_TICK) * 2).min(MAX_CADENCE)
        } else {
            base.max(self.every / 2)
        };
        self.next = now + self.every;
    }
}

/// The kind of clock NVML's timestamps follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TsClock {
    Realtime,
    Monotonic,
}

/// The per-GPU state of the sampler.
struct Gpu<'n> {
    dev: nvml_wrapper::Device<'n>,
    pos: usize,
    last_util_us: u64,
    last_mem_us: u64,
    last_proc_us: u64,
    /// Previous sample per figure (mono ns), to make intervals.
    prev_ns: BTreeMap<Figure, u64>,
    prev_proc_ns: BTreeMap<u32, u64>,
    period_ns: u64,
    gpm: Option<(GpmSample<'n>, Instant, u64)>,
    /// Calls switched off on this GPU (not supported), by call name.
    off: BTreeSet<&'static str>,
    memory: Cadence,
    proc_util: Cadence,
    procs: Cadence,
    every_tick: BTreeMap<&'static str, Cadence>,
}

/// The calls' names, as shown in the cost table and `disabled`.
mod call {
    pub const SAMPLES_GPU: &str = "nvmlDeviceGetSamples(GPU_UTILIZATION)";
    pub const SAMPLES_MEM: &str = "nvmlDeviceGetSamples(MEMORY_UTILIZATION)";
    pub const ENERGY: &str = "nvmlDeviceGetTotalEnergyConsumption";
    pub const FIELDS: &str = "nvmlDeviceGetFieldValues(POWER_INSTANT)";
    pub const MEMORY: &str = "nvmlDeviceGetMemoryInfo_v2";
    pub const PROC_UTIL: &str = "nvmlDeviceGetProcessUtilization";
    pub const PROCS: &str = "nvmlDeviceGetComputeRunningProcesses_v3";
    pub const GPM_SAMPLE: &str = "nvmlGpmSampleGet";
    pub const GPM_METRICS: &str = "nvmlGpmMetricsGet";
    pub const GPM_SUPPORT: &str = "nvmlGpmQueryDeviceSupport";
}

/// The sampling loop's context.
struct Ctx<'a> {
    nvml: &'a Nvml,
    hub: &'a Hub,
    lib: &'a str,
    costs: BTreeMap<&'static str, CallCost>,
    /// Calls whose symbol is missing: off on every GPU.
    missing: BTreeSet<&'static str>,
    clock: WallClock,
    ts_clock: Option<TsClock>,
    stats: &'a Stats,
}

impl Ctx<'_> {
    /// Runs one NVML call, timing it; a missing symbol switches the call off everywhere.
    fn call<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<T, NvmlError>,
    ) -> (Result<T, NvmlError>, Duration) {
        let t0 = Instant::now();
        let r = f();
        let took = t0.elapsed();
        let ok = matches!(r, Ok(_) | Err(NvmlError::NotFound));
        self.costs
            .entry(name)
            .or_default()
            .record(took.as_nanos() as u64, ok);
        if !ok {
            Stats::add(&self.stats.gpu_nvml_call_errors, 1);
        }
        if let Err(NvmlError::FailedToLoadSymbol(sym)) = &r {
            if self.missing.insert(name) {
                let lib = self.lib.to_string();
                let reason =
                    format!("{sym} is missing from {lib}: this figure is off (an older driver?)");
                self.hub.write(|s| s.disable(name, reason));
            }
        }
        (r, took)
    }

    /// NVML µs timestamp → kernel monotonic ns.
    fn monotonic_of(&mut self, ts_us: u64) -> u64 {
        let ns = ts_us.saturating_mul(1000);
        let clock = *self.ts_clock.get_or_insert_with(|| {
            let mono = WallClock::monotonic_now();
            let real = self.clock.to_unix_nanos(mono);
            let kind = if ns.abs_diff(real) <= ns.abs_diff(mono) {
                TsClock::Realtime
            } else {
                TsClock::Monotonic
            };
            let name = match kind {
                TsClock::Realtime => "realtime",
                TsClock::Monotonic => "monotonic",
            };
            self.hub
                .write(|s| s.status.timestamp_clock = Some(name.to_string()));
            kind
        });
        match clock {
            TsClock::Realtime => self.clock.to_monotonic_nanos(ns),
            TsClock::Monotonic => ns,
        }
    }

    fn off(&self, gpu: &Gpu, name: &'static str) -> bool {
        self.missing.contains(name) || gpu.off.contains(name)
    }

    /// `NotSupported` (and other permanent refusals) switch a call off on one GPU.
    fn refuse(&mut self, gpu: &mut Gpu, name: &'static str, e: &NvmlError) {
        if matches!(
            e,
            NvmlError::NotSupported | NvmlError::NoPermission | NvmlError::FunctionNotFound
        ) && gpu.off.insert(name)
        {
            let key = format!("{name} (GPU {})", gpu.pos);
            self.hub
                .write(|s| s.disable(&key, format!("the driver refused it: {e}")));
        }
    }
}

fn run(
    options: Options,
    hub: Hub,
    stop: Arc<AtomicBool>,
    started: std::sync::mpsc::SyncSender<Result<(), StartError>>,
) {
    let lib_name = options
        .lib
        .as_deref()
        .map_or_else(|| DEFAULT_LIB.to_string(), |p| p.display().to_string());
    let lib_os: &OsStr = options
        .lib
        .as_deref()
        .map_or(OsStr::new(DEFAULT_LIB), Path::as_os_str);
    let has_shutdown = has_symbol(lib_os, b"nvmlShutdown\0");
    let nvml = match Nvml::builder().lib_path(lib_os).init() {
        Ok(n) => n,
        Err(source) => {
            let err = match source {
                NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => StartError::Load {
                    lib: lib_name,
                    source,
                },
                source => StartError::Init {
                    lib: lib_name,
                    what: "nvmlInit_v2",
                    source,
                },
            };
            let _ = started.send(Err(err));
            return;
        }
    };
    match sample(&nvml, &options, &hub, &stop, &lib_name, &started) {
        Ok(()) => {}
        Err(e) => {
            let _ = started.send(Err(e));
        }
    }
    if has_shutdown {
        if let Err(e) = nvml.shutdown() {
            tracing::warn!(error = %e, "nvmlShutdown failed.");
        }
    } else {
        tracing::warn!(lib = %lib_name, "The NVML library has no nvmlShutdown; left loaded.");
        std::mem::forget(nvml);
    }
}

/// Whether the library at `path` exports `symbol` (NUL-terminated).
fn has_symbol(path: &OsStr, symbol: &[u8]) -> bool {
    // SAFETY: loading the same library NVML loads; its initialisers run once either way.
    unsafe {
        libloading::Library::new(path)
            .and_then(|l| l.get::<unsafe extern "C" fn() -> i32>(symbol).map(|_| ()))
            .is_ok()
    }
}

fn sample(
    nvml: &Nvml,
    options: &Options,
    hub: &Hub,
    stop: &AtomicBool,
    lib: &str,
    started: &std::sync::mpsc::SyncSender<Result<(), StartError>>,
) -> Result<(), StartError> {
    let init_err = |what, source| StartError::Init {
        lib: lib.to_string(),
        what,
        source,
    };
    let count = nvml
        .device_count()
        .map_err(|e| init_err("nvmlDeviceGetCount_v2", e))?;
    if count == 0 {
        return Err(StartError::NoDevices {
            lib: lib.to_string(),
        });
    }
    let mut ctx = Ctx {
        nvml,
        hub,
        lib,
        costs: BTreeMap::new(),
        missing: BTreeSet::new(),
        clock: WallClock::measure(),
        ts_clock: None,
        stats: &options.stats,
    };
    let now = Instant::now();
    let mut gpus = Vec::new();
    let mut devices = Vec::new();
    for i in 0..count {
        let dev = nvml
            .device_by_index(i)
            .map_err(|e| init_err("nvmlDeviceGetHandleByIndex_v2", e))?;
        let uuid = dev.uuid().unwrap_or_else(|_| format!("GPU-index-{i}"));
        devices.push(Device {
            index: i,
            uuid,
            name: dev.name().unwrap_or_default(),
            pci_bus_id: dev.pci_info().map(|p| p.bus_id).unwrap_or_default(),
            ..Device::default()
        });
        let mut gpu = Gpu {
            dev,
            pos: i as usize,
            last_util_us: 0,
            last_mem_us: 0,
            last_proc_us: 0,
            prev_ns: BTreeMap::new(),
            prev_proc_ns: BTreeMap::new(),
            period_ns: DEFAULT_PERIOD_NS,
            gpm: None,
            off: BTreeSet::new(),
            memory: Cadence::new(MEMORY_EVERY, now),
            proc_util: Cadence::new(PROCESS_UTIL_EVERY, now),
            procs: Cadence::new(PROCESSES_EVERY, now),
            every_tick: BTreeMap::new(),
        };
        let (support, _) = ctx.call(call::GPM_SUPPORT, || gpu.dev.gpm_support());
        match support {
            Ok(true) => {}
            Ok(false) => {
                gpu.off.insert(call::GPM_SAMPLE);
                let reason = "GPM needs a Hopper or newer GPU; memory bandwidth comes from \
                              DCGM_FI_PROF_DRAM_ACTIVE when --dcgm-exporter-url is set"
                    .to_string();
                hub.write(|s| s.disable(&format!("gpm (GPU {i})"), reason));
            }
            Err(e) => {
                gpu.off.insert(call::GPM_SAMPLE);
                if !matches!(e, NvmlError::FailedToLoadSymbol(_)) {
                    hub.write(|s| s.disable(&format!("gpm (GPU {i})"), e.to_string()));
                }
            }
        }
        gpus.push(gpu);
    }
    // The wall-clock µs "now" NVML would stamp: start incremental reads from here, not from 0
    // (0 averages the whole buffer).
    let start_us =
        (ctx.clock.to_unix_nanos(WallClock::monotonic_now()) / 1000).saturating_sub(1_000_000);
    for g in &mut gpus {
        g.last_proc_us = start_us;
    }
    hub.write(|s| {
        s.devices = devices;
        s.status.source = "nvml".into();
        s.status.state = "ok".into();
        s.status.reason = None;
        s.status.driver_version = nvml.sys_driver_version().ok();
        s.status.nvml_version = nvml.sys_nvml_version().ok();
    });
    tracing::info!(gpus = count, %lib, "NVML sampler started.");
    let _ = started.send(Ok(()));

    let t_start = Instant::now();
    let cpu_start = thread_cpu_ns();
    let mut known_interest = BTreeSet::new();
    let mut last_clock = Instant::now();
    let mut ticks = 0u64;
    let n = gpus.len() as u32;
    while !stop.load(Ordering::Acquire) {
        let tick_start = Instant::now();
        if tick_start.duration_since(last_clock) >= Duration::from_secs(1) {
            ctx.clock = WallClock::measure();
            last_clock = tick_start;
        }
        // A new process of interest, or one gone: list the compute processes now.
        let interest = hub.interest();
        if interest != known_interest {
            for g in &mut gpus {
                g.procs.next = tick_start;
            }
            known_interest = interest;
        }
        for (k, gpu) in gpus.iter_mut().enumerate() {
            let at = tick_start + options.tick * k as u32 / n;
            sleep_until(at, stop);
            poll(&mut ctx, gpu);
        }
        ticks += 1;
        let cpu = thread_cpu_ns().saturating_sub(cpu_start);
        hub.write(|s| {
            s.cost.ticks = ticks;
            s.cost.nvml_ns = ctx.costs.values().map(|c| c.total_ns).sum();
            s.cost.thread_cpu_ns = cpu;
            s.cost.running_ns = t_start.elapsed().as_nanos() as u64;
            s.cost.calls = ctx.costs.clone();
        });
        sleep_until(tick_start + options.tick, stop);
    }
    Ok(())
}

fn sleep_until(at: Instant, stop: &AtomicBool) {
    let now = Instant::now();
    if at > now && !stop.load(Ordering::Acquire) {
        std::thread::sleep(at - now);
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn value_f64(v: &SampleValue) -> f64 {
    match *v {
        SampleValue::F64(x) => x,
        SampleValue::U32(x) => x as f64,
        SampleValue::U64(x) => x as f64,
        SampleValue::I64(x) => x as f64,
    }
}

/// One GPU's calls for this tick.
fn poll(ctx: &mut Ctx, gpu: &mut Gpu) {
    let now = Instant::now();
    utilisation(
        ctx,
        gpu,
        Sampling::GpuUtilization,
        Figure::GpuUtilization,
        call::SAMPLES_GPU,
    );
    utilisation(
        ctx,
        gpu,
        Sampling::MemoryUtilization,
        Figure::MemoryBusy,
        call::SAMPLES_MEM,
    );
    energy_and_power(ctx, gpu);
    gpm(ctx, gpu, now);
    if gpu.memory.due(now) && !ctx.off(gpu, call::MEMORY) {
        let (r, took) = ctx.call(call::MEMORY, || gpu.dev.memory_info());
        gpu.memory.ran(now, took, MEMORY_EVERY);
        match r {
            Ok(m) => {
                let at_ns = WallClock::monotonic_now();
                let pos = gpu.pos;
                ctx.hub.write(|s| {
                    if let Some(d) = s.devices.get_mut(pos) {
                        d.memory = Some(Memory {
                            used: m.used,
                            total: m.total,
                            at_ns,
                        });
                        d.memory_origin = Some(Origin::Nvml);
                    }
                });
            }
            Err(e) => ctx.refuse(gpu, call::MEMORY, &e),
        }
    }
    if gpu.procs.due(now) && !ctx.off(gpu, call::PROCS) {
        let (r, took) = ctx.call(call::PROCS, || gpu.dev.running_compute_processes());
        gpu.procs.ran(now, took, PROCESSES_EVERY);
        match r {
            Ok(list) => {
                let procs: Vec<GpuProcess> = list
                    .iter()
                    .map(|p| GpuProcess {
                        pid: p.pid,
                        used_bytes: match p.used_gpu_memory {
                            UsedGpuMemory::Used(b) => Some(b),
                            UsedGpuMemory::Unavailable => None,
                        },
                    })
                    .collect();
                let at = WallClock::monotonic_now();
                let pos = gpu.pos;
                ctx.hub.write(|s| {
                    if let Some(d) = s.devices.get_mut(pos) {
                        d.processes = procs;
                        d.processes_at_ns = Some(at);
                    }
                });
            }
            Err(e) => ctx.refuse(gpu, call::PROCS, &e),
        }
    }
    if gpu.proc_util.due(now) && !ctx.off(gpu, call::PROC_UTIL) {
        let last = gpu.last_proc_us;
        let (r, took) = ctx.call(call::PROC_UTIL, || gpu.dev.process_utilization_stats(last));
        gpu.proc_util.ran(now, took, PROCESS_UTIL_EVERY);
        match r {
            Ok(samples) => {
                let mut pushes = Vec::new();
                for p in samples {
                    if p.timestamp <= last {
                        continue;
                    }
                    gpu.last_proc_us = gpu.last_proc_us.max(p.timestamp);
                    let end = ctx.monotonic_of(p.timestamp);
                    let start = gpu
                        .prev_proc_ns
                        .insert(p.pid, end)
                        .filter(|s| {
                            end.saturating_sub(*s) <= 3 * PROCESS_UTIL_EVERY.as_nanos() as u64
                        })
                        .unwrap_or(end.saturating_sub(gpu.period_ns));
                    pushes.push((p.pid, start, end, p.sm_util as f64 / 100.0));
                }
                if gpu.prev_proc_ns.len() > MAX_PROCESS_SERIES {
                    let keep: BTreeSet<u32> = pushes.iter().map(|p| p.0).collect();
                    gpu.prev_proc_ns.retain(|pid, _| keep.contains(pid));
                }
                let pos = gpu.pos;
                ctx.hub.write(|s| {
                    if let Some(d) = s.devices.get_mut(pos) {
                        for (pid, start, end, v) in pushes {
                            if d.process_sm.len() >= MAX_PROCESS_SERIES
                                && !d.process_sm.contains_key(&pid)
                            {
                                d.process_sm.pop_first();
                            }
                            d.process_sm.entry(pid).or_default().push(start, end, v);
                        }
                    }
                });
            }
            Err(NvmlError::NotFound) => {}
            Err(e) => ctx.refuse(gpu, call::PROC_UTIL, &e),
        }
    }
}

/// GetSamples for one utilisation figure, incremental by the last timestamp seen.
fn utilisation(ctx: &mut Ctx, gpu: &mut Gpu, kind: Sampling, figure: Figure, name: &'static str) {
    if ctx.off(gpu, name) {
        return;
    }
    let now = Instant::now();
    let cad = gpu
        .every_tick
        .entry(name)
        .or_insert_with(|| Cadence::new(Duration::ZERO, now));
    if !cad.due(now) {
        return;
    }
    let last = match figure {
        Figure::GpuUtilization => gpu.last_util_us,
        _ => gpu.last_mem_us,
    };
    let (r, took) = ctx.call(name, || gpu.dev.samples(kind, last));
    if let Some(c) = gpu.every_tick.get_mut(name) {
        c.ran(now, took, Duration::ZERO);
    }
    let samples: Vec<Sample> = match r {
        Ok(s) => s,
        Err(NvmlError::NotFound) => Vec::new(),
        Err(e) => {
            ctx.refuse(gpu, name, &e);
            return;
        }
    };
    let mut fresh: Vec<(u64, f64)> = samples
        .iter()
        .filter(|s| s.timestamp > last)
        .map(|s| (s.timestamp, value_f64(&s.value) / 100.0))
        .collect();
    fresh.sort_by_key(|s| s.0);
    let mut pushes = Vec::new();
    let mut prev = gpu.prev_ns.get(&figure).copied();
    let mut spacings = Vec::new();
    for (ts, v) in &fresh {
        let end = ctx.monotonic_of(*ts);
        let start = match prev {
            Some(p) if end > p && end - p <= 3 * gpu.period_ns => {
                spacings.push(end - p);
                p
            }
            _ => end.saturating_sub(gpu.period_ns),
        };
        pushes.push((start, end, *v));
        prev = Some(end);
    }
    if figure == Figure::GpuUtilization {
        let raw: Vec<u64> = fresh.iter().map(|s| s.0).collect();
        let prev_raw = last;
        let spacing: Vec<u64> = std::iter::once(prev_raw)
            .chain(raw.iter().copied())
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] > 0)
            .map(|w| w[1] - w[0])
            .collect();
        if let Some(&newest) = raw.last() {
            let mono = WallClock::monotonic_now();
            let real = ctx.clock.to_unix_nanos(mono);
            let newest_ns = newest.saturating_mul(1000);
            let lag = |now: u64| (now as f64 - newest_ns as f64) / 1e6;
            ctx.hub.write(|s| {
                s.status.timestamp_lag_realtime_ms = Some(lag(real));
                s.status.timestamp_lag_monotonic_ms = Some(lag(mono));
                for sp in spacing {
                    if s.cost.sample_spacing_us.len() >= 512 {
                        s.cost.sample_spacing_us.pop_front();
                    }
                    s.cost.sample_spacing_us.push_back(sp);
                }
            });
        }
    }
    if let Some(&(ts, _)) = fresh.last() {
        match figure {
            Figure::GpuUtilization => gpu.last_util_us = ts,
            _ => gpu.last_mem_us = ts,
        }
    }
    if !spacings.is_empty() && figure == Figure::GpuUtilization {
        spacings.sort_unstable();
        // Follow the driver's real spacing, smoothed.
        let m = spacings[spacings.len() / 2];
        gpu.period_ns = (gpu.period_ns * 3 + m) / 4;
    }
    // Nothing new for over two periods: the GPU is idle (the driver stops filling the buffer).
    let now_mono = WallClock::monotonic_now();
    if fresh.is_empty() {
        if let Some(p) = prev {
            let idle_until = now_mono.saturating_sub(gpu.period_ns);
            if idle_until > p + gpu.period_ns {
                pushes.push((p, idle_until, 0.0));
                prev = Some(idle_until);
            }
        }
    }
    if let Some(p) = prev {
        gpu.prev_ns.insert(figure, p);
    }
    if pushes.is_empty() {
        return;
    }
    let pos = gpu.pos;
    ctx.hub.write(|s| {
        if let Some(d) = s.devices.get_mut(pos) {
            for (a, b, v) in pushes {
                d.push(figure, Origin::Nvml, a, b, v);
            }
        }
    });
}

fn energy_and_power(ctx: &mut Ctx, gpu: &mut Gpu) {
    let pos = gpu.pos;
    if !ctx.off(gpu, call::ENERGY) {
        let (r, _) = ctx.call(call::ENERGY, || gpu.dev.total_energy_consumption());
        match r {
            Ok(mj) => {
                let t = WallClock::monotonic_now();
                ctx.hub.write(|s| {
                    if let Some(d) = s.devices.get_mut(pos) {
                        if d.energy_origin != Some(Origin::Dcgm) {
                            d.energy.push(t, mj);
                            d.energy_origin = Some(Origin::Nvml);
                        }
                    }
                });
            }
            Err(e) => ctx.refuse(gpu, call::ENERGY, &e),
        }
    }
    if !ctx.off(gpu, call::FIELDS) {
        let (r, _) = ctx.call(call::FIELDS, || {
            gpu.dev.field_values_for(&[FieldId(FI_POWER_INSTANT)])
        });
        let watts = match r {
            Ok(values) => values
                .into_iter()
                .next()
                .and_then(|v| v.ok())
                .and_then(|v| v.value.ok())
                .map(|v| value_f64(&v) / 1000.0),
            Err(e) => {
                ctx.refuse(gpu, call::FIELDS, &e);
                None
            }
        };
        if let Some(w) = watts {
            let t = WallClock::monotonic_now();
            let start = gpu
                .prev_ns
                .insert(Figure::Power, t)
                .unwrap_or(t.saturating_sub(DEFAULT_TICK.as_nanos() as u64));
            ctx.hub.write(|s| {
                if let Some(d) = s.devices.get_mut(pos) {
                    d.push(Figure::Power, Origin::Nvml, start, t, w);
                }
            });
        }
    }
}

const GPM_METRICS: [(GpmMetricId, Figure); 4] = [
    (GpmMetricId::DramBwUtil, Figure::DramBandwidth),
    (GpmMetricId::SmUtil, Figure::SmActive),
    (GpmMetricId::SmOccupancy, Figure::SmOccupancy),
    (GpmMetricId::AnyTensorUtil, Figure::TensorActive),
];

fn gpm(ctx: &mut Ctx, gpu: &mut Gpu, now: Instant) {
    if ctx.off(gpu, call::GPM_SAMPLE) {
        return;
    }
    if gpu
        .gpm
        .as_ref()
        .is_some_and(|(_, at, _)| now.duration_since(*at) < GPM_MIN_SPACING)
    {
        return;
    }
    let (r, _) = ctx.call(call::GPM_SAMPLE, || gpu.dev.gpm_sample());
    let sample = match r {
        Ok(s) => s,
        Err(e) => {
            ctx.refuse(gpu, call::GPM_SAMPLE, &e);
            return;
        }
    };
    let t = WallClock::monotonic_now();
    let Some((prev, _, prev_t)) = gpu.gpm.replace((sample, now, t)) else {
        return;
    };
    if ctx.off(gpu, call::GPM_METRICS) {
        return;
    }
    let ids: Vec<GpmMetricId> = GPM_METRICS.iter().map(|(id, _)| *id).collect();
    let nvml = ctx.nvml;
    let cur = &gpu.gpm.as_ref().expect("just set").0;
    let (r, _) = ctx.call(call::GPM_METRICS, || {
        gpm_metrics_get(nvml, &prev, cur, &ids)
    });
    match r {
        Ok(results) => {
            let values: Vec<(Figure, f64)> = results
                .into_iter()
                .zip(GPM_METRICS.iter())
                .filter_map(|(r, (_, f))| r.ok().map(|m| (*f, m.value / 100.0)))
                .collect();
            let pos = gpu.pos;
            ctx.hub.write(|s| {
                if let Some(d) = s.devices.get_mut(pos) {
                    for (f, v) in values {
                        d.push(f, Origin::NvmlGpm, prev_t, t, v);
                    }
                }
            });
        }
        Err(e) => ctx.refuse(gpu, call::GPM_METRICS, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_call_is_polled_half_as_often_and_recovers() {
        let t0 = Instant::now();
        let mut c = Cadence::new(Duration::ZERO, t0);
        assert!(c.due(t0));
        c.ran(t0, Duration::from_millis(1), Duration::ZERO);
        assert!(c.due(t0 + Duration::from_millis(1)));
        c.ran(t0, Duration::from_millis(50), Duration::ZERO);
        assert_eq!(c.every, Duration::from_millis(200));
        assert!(!c.due(t0 + Duration::from_millis(100)));
        assert!(c.due(t0 + Duration::from_millis(190)));
        for _ in 0..10 {
            c.ran(t0, Duration::from_secs(1), Duration::ZERO);
        }
        assert_eq!(c.every, MAX_CADENCE);
        c.ran(t0, Duration::from_millis(1), Duration::ZERO);
        assert_eq!(c.every, MAX_CADENCE / 2);
        let mut m = Cadence::new(MEMORY_EVERY, t0);
        m.ran(t0, Duration::from_millis(1), MEMORY_EVERY);
        assert_eq!(m.every, MEMORY_EVERY);
        assert!(!m.due(t0 + Duration::from_millis(500)));
    }
}
