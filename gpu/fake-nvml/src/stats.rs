//! Counts of the calls the library served, per symbol, with the time spent in each (lock wait
//! and the `GetPcieThroughput` block included), written as JSON to a stats file so that tests and
//! benchmarks can report NVML calls per second and NVML time per interval.
//!
//! The file is rewritten every 250 ms by a thread the library starts at the first `nvmlInit` and
//! joins at the last `nvmlShutdown` (which writes it once more), so a process killed without
//! shutting NVML down still leaves figures at most 250 ms old.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

macro_rules! symbols {
    ($($variant:ident => $name:literal,)*) => {
        /// The NVML symbols the fake exports.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(non_camel_case_types)]
        pub enum Sym { $($variant,)* }

        /// Their names, in `Sym` order.
        pub const SYMBOLS: &[&str] = &[$($name,)*];
    };
}

symbols! {
    InitV2 => "nvmlInit_v2",
    InitWithFlags => "nvmlInitWithFlags",
    Shutdown => "nvmlShutdown",
    ErrorString => "nvmlErrorString",
    SystemGetDriverVersion => "nvmlSystemGetDriverVersion",
    SystemGetNvmlVersion => "nvmlSystemGetNVMLVersion",
    SystemGetCudaDriverVersion => "nvmlSystemGetCudaDriverVersion",
    SystemGetCudaDriverVersionV2 => "nvmlSystemGetCudaDriverVersion_v2",
    DeviceGetCountV2 => "nvmlDeviceGetCount_v2",
    DeviceGetHandleByIndexV2 => "nvmlDeviceGetHandleByIndex_v2",
    DeviceGetHandleByUuid => "nvmlDeviceGetHandleByUUID",
    DeviceGetName => "nvmlDeviceGetName",
    DeviceGetUuid => "nvmlDeviceGetUUID",
    DeviceGetIndex => "nvmlDeviceGetIndex",
    DeviceGetPciInfoV3 => "nvmlDeviceGetPciInfo_v3",
    DeviceGetArchitecture => "nvmlDeviceGetArchitecture",
    DeviceGetCudaComputeCapability => "nvmlDeviceGetCudaComputeCapability",
    DeviceGetSamples => "nvmlDeviceGetSamples",
    DeviceGetUtilizationRates => "nvmlDeviceGetUtilizationRates",
    DeviceGetProcessUtilization => "nvmlDeviceGetProcessUtilization",
    DeviceGetComputeRunningProcessesV3 => "nvmlDeviceGetComputeRunningProcesses_v3",
    DeviceGetComputeRunningProcessesV2 => "nvmlDeviceGetComputeRunningProcesses_v2",
    DeviceGetMemoryInfo => "nvmlDeviceGetMemoryInfo",
    DeviceGetMemoryInfoV2 => "nvmlDeviceGetMemoryInfo_v2",
    DeviceGetTotalEnergyConsumption => "nvmlDeviceGetTotalEnergyConsumption",
    DeviceGetPowerUsage => "nvmlDeviceGetPowerUsage",
    DeviceGetFieldValues => "nvmlDeviceGetFieldValues",
    DeviceGetPcieThroughput => "nvmlDeviceGetPcieThroughput",
    GpmQueryDeviceSupport => "nvmlGpmQueryDeviceSupport",
    GpmSampleAlloc => "nvmlGpmSampleAlloc",
    GpmSampleFree => "nvmlGpmSampleFree",
    GpmSampleGet => "nvmlGpmSampleGet",
    GpmMetricsGet => "nvmlGpmMetricsGet",
}

impl Sym {
    pub fn name(self) -> &'static str {
        SYMBOLS[self as usize]
    }
}

/// What the stats file holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsReport {
    pub pid: u32,
    pub written_unix_us: u64,
    /// The first and last call served (0 before any).
    pub first_call_unix_us: u64,
    pub last_call_unix_us: u64,
    /// Per symbol that was called at least once.
    pub symbols: BTreeMap<String, SymbolStats>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SymbolStats {
    pub calls: u64,
    /// Calls that returned something other than `NVML_SUCCESS`.
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

impl StatsReport {
    /// Reads a stats file.
    pub fn read(path: &Path) -> std::io::Result<StatsReport> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    /// Calls of `symbol` (0 when never called).
    pub fn calls(&self, symbol: &str) -> u64 {
        self.symbols.get(symbol).map_or(0, |s| s.calls)
    }

    pub fn total_calls(&self) -> u64 {
        self.symbols.values().map(|s| s.calls).sum()
    }

    pub fn total_ns(&self) -> u64 {
        self.symbols.values().map(|s| s.total_ns).sum()
    }
}

struct Counters {
    calls: AtomicU64,
    errors: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Counters = Counters {
    calls: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    total_ns: AtomicU64::new(0),
    max_ns: AtomicU64::new(0),
};

static COUNTERS: [Counters; SYMBOLS.len()] = [ZERO; SYMBOLS.len()];
static FIRST_CALL_US: AtomicU64 = AtomicU64::new(0);
static LAST_CALL_US: AtomicU64 = AtomicU64::new(0);

pub(crate) fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Counts one call of `sym` that took `elapsed` and returned `rc`.
pub(crate) fn record(sym: Sym, elapsed: Duration, rc: u32) {
    let c = &COUNTERS[sym as usize];
    let ns = elapsed.as_nanos() as u64;
    c.calls.fetch_add(1, Ordering::Relaxed);
    if rc != 0 {
        c.errors.fetch_add(1, Ordering::Relaxed);
    }
    c.total_ns.fetch_add(ns, Ordering::Relaxed);
    c.max_ns.fetch_max(ns, Ordering::Relaxed);
    let now = now_unix_us();
    let _ = FIRST_CALL_US.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    LAST_CALL_US.store(now, Ordering::Relaxed);
}

/// The counters now.
pub fn snapshot() -> StatsReport {
    let symbols = COUNTERS
        .iter()
        .zip(SYMBOLS)
        .filter(|(c, _)| c.calls.load(Ordering::Relaxed) > 0)
        .map(|(c, name)| {
            (
                name.to_string(),
                SymbolStats {
                    calls: c.calls.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                    total_ns: c.total_ns.load(Ordering::Relaxed),
                    max_ns: c.max_ns.load(Ordering::Relaxed),
                },
            )
        })
        .collect();
    StatsReport {
        pid: std::process::id(),
        written_unix_us: now_unix_us(),
        first_call_unix_us: FIRST_CALL_US.load(Ordering::Relaxed),
        last_call_unix_us: LAST_CALL_US.load(Ordering::Relaxed),
        symbols,
    }
}

/// Writes the counters to `path` (through a temporary file and a rename, so readers never see
/// half a file). Errors are reported on stderr once per writer, not returned into NVML calls.
fn write(path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(&snapshot()).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The thread that rewrites the stats file.
pub(crate) struct Writer {
    path: PathBuf,
    stop: &'static (Mutex<bool>, Condvar),
    thread: Option<JoinHandle<()>>,
}

static STOP: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

impl Writer {
    pub(crate) fn start(path: PathBuf) -> Writer {
        if let Ok(mut s) = STOP.0.lock() {
            *s = false;
        }
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("fake-nvml-stats".into())
            .spawn(move || {
                let mut warned = false;
                loop {
                    if let Err(e) = write(&p) {
                        if !warned {
                            eprintln!("fake-nvml: cannot write stats to {}: {e}", p.display());
                            warned = true;
                        }
                    }
                    let Ok(guard) = STOP.0.lock() else { return };
                    let Ok((guard, _)) =
                        STOP.1
                            .wait_timeout_while(guard, Duration::from_millis(250), |stop| !*stop)
                    else {
                        return;
                    };
                    if *guard {
                        return;
                    }
                }
            })
            .ok();
        Writer {
            path,
            stop: &STOP,
            thread,
        }
    }

    /// Stops the thread and writes the final figures.
    pub(crate) fn finish(mut self) {
        if let Ok(mut s) = self.stop.0.lock() {
            *s = true;
        }
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = write(&self.path) {
            eprintln!(
                "fake-nvml: cannot write stats to {}: {e}",
                self.path.display()
            );
        }
    }
}
