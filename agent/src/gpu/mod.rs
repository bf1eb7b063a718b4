//! GPU telemetry: sampling (NVML, a dcgm-exporter endpoint), bounded per-GPU time series, which
//! GPUs serve a targeted process, and each finished request's GPU figures over its own window.
//!
//! Data flows one way: a source (the [`nvml`] sampler thread, the [`dcgm`] scraper task) writes
//! samples into the [`Hub`]; the [`enricher`] (on the pipeline) and the view in `export::gpu` (the debug
//! endpoint, `/metrics`, OTLP gauges) only read it. Every time in the hub is kernel
//! `CLOCK_MONOTONIC` nanoseconds, the clock spans use; each source converts its own timestamps.
//!
//! Must never: call NVML from more than one thread, block the pipeline (the hub's lock is held only
//! to copy values in or out), or stop the agent: without a GPU, an NVML library or a DCGM endpoint,
//! GPU features are off and [`SourceStatus`] says why.

pub mod dcgm;
pub mod enricher;
pub mod nvml;
pub mod placement;
pub mod series;
pub mod share;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use series::{Counter, Series};

/// A figure kept as a time series per device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Figure {
    /// Share of time a kernel ran (NVML GetSamples GPU_UTILIZATION, DCGM_FI_DEV_GPU_UTIL), 0–1.
    GpuUtilization,
    /// Share of time device memory was read or written (NVML MEMORY_UTILIZATION,
    /// DCGM_FI_DEV_MEM_COPY_UTIL), 0–1: time busy, not bandwidth.
    MemoryBusy,
    /// DRAM bandwidth used over peak (GPM DRAM_BW_UTIL, DCGM_FI_PROF_DRAM_ACTIVE), 0–1.
    DramBandwidth,
    /// SM activity (GPM SM_UTIL, DCGM_FI_PROF_SM_ACTIVE), 0–1.
    SmActive,
    /// SM occupancy (GPM SM_OCCUPANCY, DCGM_FI_PROF_SM_OCCUPANCY), 0–1.
    SmOccupancy,
    /// Tensor pipe activity (GPM ANY_TENSOR_UTIL, DCGM_FI_PROF_PIPE_TENSOR_ACTIVE), 0–1.
    TensorActive,
    /// Instant power, watts (NVML field POWER_INSTANT, DCGM_FI_DEV_POWER_USAGE).
    Power,
}

impl Figure {
    pub const ALL: [Figure; 7] = [
        Figure::GpuUtilization,
        Figure::MemoryBusy,
        Figure::DramBandwidth,
        Figure::SmActive,
        Figure::SmOccupancy,
        Figure::TensorActive,
        Figure::Power,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Figure::GpuUtilization => "gpu_utilization",
            Figure::MemoryBusy => "memory_busy",
            Figure::DramBandwidth => "dram_bandwidth",
            Figure::SmActive => "sm_active",
            Figure::SmOccupancy => "sm_occupancy",
            Figure::TensorActive => "tensor_active",
            Figure::Power => "power",
        }
    }
}

/// Where a device's figure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Nvml,
    NvmlGpm,
    Dcgm,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Nvml => "nvml",
            Origin::NvmlGpm => "nvml_gpm",
            Origin::Dcgm => "dcgm",
        }
    }
}

/// A figure's series and its source.
#[derive(Clone, Debug)]
pub struct Track {
    pub origin: Origin,
    pub series: Series,
}

/// Memory of a device, bytes, as last read.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Memory {
    pub used: u64,
    pub total: u64,
    pub at_ns: u64,
}

/// One process holding a compute context on a device (host PID), with its memory.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_bytes: Option<u64>,
}

/// Everything known about one GPU.
#[derive(Clone, Debug, Default)]
pub struct Device {
    /// NVML index (or the `gpu` label of dcgm-exporter).
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub pci_bus_id: String,
    pub tracks: BTreeMap<Figure, Track>,
    /// Total energy, mJ (NVML TotalEnergyConsumption or DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION).
    pub energy: Counter,
    pub energy_origin: Option<Origin>,
    pub memory: Option<Memory>,
    pub memory_origin: Option<Origin>,
    /// Compute processes, as of `processes_at_ns` (`None`: never listed).
    pub processes: Vec<GpuProcess>,
    pub processes_at_ns: Option<u64>,
    /// SM utilisation per process (NVML process utilisation), 0–1.
    pub process_sm: BTreeMap<u32, Series>,
}

impl Device {
    /// Adds a figure's interval; a figure already fed by another source is left to it (NVML
    /// wins over DCGM: finer resolution).
    pub fn push(&mut self, figure: Figure, origin: Origin, start_ns: u64, end_ns: u64, v: f64) {
        let track = self.tracks.entry(figure).or_insert_with(|| Track {
            origin,
            series: Series::default(),
        });
        if track.origin == Origin::Dcgm && origin != Origin::Dcgm {
            *track = Track {
                origin,
                series: Series::default(),
            };
        }
        if track.origin == origin {
            track.series.push(start_ns, end_ns, v);
        }
    }

    pub fn track(&self, figure: Figure) -> Option<&Track> {
        self.tracks.get(&figure)
    }

    /// Sets the minimum resolution of a figure's series (coarse sources).
    pub fn set_min_resolution(&mut self, figure: Figure, origin: Origin, ns: u64) {
        if let Some(t) = self.tracks.get_mut(&figure) {
            if t.origin == origin {
                t.series.set_min_resolution(ns);
            }
        }
    }

    /// Keeps a figure's latest value in effect for `ns` after it (a source that reports seldom).
    pub fn set_hold(&mut self, figure: Figure, origin: Origin, ns: u64) {
        if let Some(t) = self.tracks.get_mut(&figure) {
            if t.origin == origin {
                t.series.set_hold(ns);
            }
        }
    }

    /// A copy of what the figures over `[a, b]` read (the process series of `tree` only):
    /// bounded, so that a request's figures are computed outside the hub's lock.
    pub fn clip(&self, a: u64, b: u64, tree: &BTreeSet<u32>) -> Device {
        Device {
            index: self.index,
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            pci_bus_id: self.pci_bus_id.clone(),
            tracks: self
                .tracks
                .iter()
                .map(|(&f, t)| {
                    let series = t.series.clip(a, b);
                    (
                        f,
                        Track {
                            origin: t.origin,
                            series,
                        },
                    )
                })
                .collect(),
            energy: self.energy.clip(a, b),
            energy_origin: self.energy_origin,
            memory: self.memory,
            memory_origin: self.memory_origin,
            processes: self.processes.clone(),
            processes_at_ns: self.processes_at_ns,
            process_sm: self
                .process_sm
                .iter()
                .filter(|(pid, _)| tree.contains(pid))
                .map(|(&pid, s)| (pid, s.clip(a, b)))
                .collect(),
        }
    }
}

/// The cost of one kind of NVML call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CallCost {
    pub calls: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

impl CallCost {
    pub fn record(&mut self, ns: u64, ok: bool) {
        self.calls += 1;
        self.errors += u64::from(!ok);
        self.total_ns += ns;
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn mean_ns(&self) -> u64 {
        self.total_ns.checked_div(self.calls).unwrap_or(0)
    }
}

/// What the sampler costs: per call kind, per tick, and its thread's CPU time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SamplerCost {
    pub ticks: u64,
    /// NVML time spent in all calls since start, ns.
    pub nvml_ns: u64,
    /// The sampler thread's CPU time (user + system) since start, ns.
    pub thread_cpu_ns: u64,
    /// Since the sampler started, ns of wall time.
    pub running_ns: u64,
    pub calls: BTreeMap<&'static str, CallCost>,
    /// The spacing of consecutive GPU utilisation samples as the driver stamped them, µs (the
    /// last few hundred, all GPUs).
    pub sample_spacing_us: std::collections::VecDeque<u64>,
}

/// The GPU source's state, shown in `/status` and `/gpu`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceStatus {
    /// `off`, `nvml` or `dcgm`.
    pub source: String,
    /// `off`, `starting`, `ok` or `failed`.
    pub state: String,
    /// Why the source is off or failed (what to do about it).
    pub reason: Option<String>,
    /// Figures switched off (a missing NVML symbol, not supported on the device), with the reason.
    pub disabled: BTreeMap<String, String>,
    pub driver_version: Option<String>,
    pub nvml_version: Option<String>,
    /// The clock NVML timestamps were found to use (`realtime` or `monotonic`), once seen.
    pub timestamp_clock: Option<String>,
    /// How far behind CLOCK_REALTIME and CLOCK_MONOTONIC the newest GPU utilisation sample's
    /// timestamp was when it was read, ms (the smaller one names the clock).
    pub timestamp_lag_realtime_ms: Option<f64>,
    pub timestamp_lag_monotonic_ms: Option<f64>,
    pub dcgm_url: Option<String>,
    /// `ok`, or why the last scrape failed.
    pub dcgm_state: Option<String>,
    pub dcgm_scrapes: u64,
    pub dcgm_failures: u64,
    /// `--dcgm-scrape-interval`, seconds.
    pub dcgm_scrape_interval_seconds: Option<f64>,
    /// How often the exporter's values change, learned from its scrapes (at least the scrape
    /// interval; `None` until two changes were seen, and 30 s is assumed).
    pub dcgm_update_cadence_seconds: Option<f64>,
}

/// Everything the sources wrote.
#[derive(Clone, Debug, Default)]
pub struct HubState {
    pub status: SourceStatus,
    pub devices: Vec<Device>,
    pub cost: SamplerCost,
}

impl HubState {
    /// Marks a figure as off for a reason, once.
    pub fn disable(&mut self, figure: &str, reason: String) -> bool {
        if self.status.disabled.contains_key(figure) {
            return false;
        }
        tracing::warn!(figure, %reason, "GPU figure disabled.");
        self.status.disabled.insert(figure.to_string(), reason);
        true
    }

    pub fn device_by_uuid_mut(&mut self, uuid: &str) -> Option<&mut Device> {
        self.devices.iter_mut().find(|d| d.uuid == uuid)
    }
}

/// Shared between the sources (writers) and the enricher and views (readers); cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    state: Arc<RwLock<HubState>>,
    /// PIDs of processes whose requests were seen (the sampler refreshes process lists when this
    /// set changes).
    interest: Arc<Mutex<BTreeSet<u32>>>,
    /// The targeted processes last synced.
    targets: Arc<Mutex<BTreeSet<u32>>>,
}

impl Hub {
    pub fn read<R>(&self, f: impl FnOnce(&HubState) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn write<R>(&self, f: impl FnOnce(&mut HubState) -> R) -> R {
        f(&mut self.state.write().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn status(&self) -> SourceStatus {
        self.read(|s| s.status.clone())
    }

    /// A process served requests; returns true when it was new.
    pub fn note_interest(&self, pid: u32) -> bool {
        let mut set = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= 1024 && !set.contains(&pid) {
            set.pop_first();
        }
        set.insert(pid)
    }

    pub fn interest(&self) -> BTreeSet<u32> {
        self.interest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes the targeted processes of interest (and forgets those no longer targeted): the
    /// sampler lists the GPUs' processes at once when a target starts or exits.
    pub fn sync_targets(&self, targets: impl IntoIterator<Item = u32>) {
        let targets: BTreeSet<u32> = targets.into_iter().collect();
        let mut set = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        let mut known = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        for gone in known.difference(&targets) {
            set.remove(gone);
        }
        set.extend(targets.iter().copied());
        *known = targets;
    }

    pub fn forget_interest(&self, pid: u32) {
        self.interest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    }
}

/// `--gpu`: which source feeds the GPU figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuMode {
    /// NVML if the library loads, else DCGM if `--dcgm-exporter-url` is set, else off.
    Auto,
    Nvml,
    Dcgm,
    Off,
}

/// The running GPU sources.
pub struct GpuRuntime {
    pub hub: Hub,
    sampler: Option<nvml::Sampler>,
    dcgm: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the sources `mode` asks for (inside the Tokio runtime: the DCGM scraper is a task).
/// Never fails: whatever cannot start leaves GPU features off, with the reason in the hub's status
/// and the log.
pub fn start(
    mode: GpuMode,
    nvml_lib: Option<std::path::PathBuf>,
    dcgm_url: Option<String>,
    dcgm_every: std::time::Duration,
    stats: Arc<crate::stats::Stats>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> GpuRuntime {
    let hub = Hub::default();
    hub.write(|s| {
        s.status.source = "off".into();
        s.status.state = "starting".into();
        s.status.dcgm_url = dcgm_url.clone();
        s.status.dcgm_scrape_interval_seconds = dcgm_url.as_ref().map(|_| dcgm_every.as_secs_f64());
    });
    let mut sampler = None;
    let mut nvml_error = None;
    // Asked for NVML explicitly (the mode or a library path): failing to load it is a failure;
    // in auto mode on a machine without NVIDIA's driver it is simply off.
    let nvml_asked = mode == GpuMode::Nvml || nvml_lib.is_some();
    if matches!(mode, GpuMode::Auto | GpuMode::Nvml) {
        let options = nvml::Options {
            lib: nvml_lib,
            stats: stats.clone(),
            ..nvml::Options::default()
        };
        match nvml::Sampler::start(options, hub.clone()) {
            Ok(s) => sampler = Some(s),
            Err(e) => nvml_error = Some(e.to_string()),
        }
    }
    let dcgm_only = sampler.is_none() && matches!(mode, GpuMode::Auto | GpuMode::Dcgm);
    let dcgm = match (&dcgm_url, mode) {
        (Some(url), GpuMode::Auto | GpuMode::Nvml | GpuMode::Dcgm) => {
            let url = url.clone();
            let h = hub.clone();
            Some(tokio::spawn(dcgm::run(
                url, dcgm_every, h, dcgm_only, stats, stop,
            )))
        }
        _ => None,
    };
    hub.write(|s| {
        if sampler.is_some() {
            tracing::info!(devices = s.devices.len(), "GPU telemetry from NVML.");
            return;
        }
        if dcgm_only && dcgm.is_some() {
            s.status.source = "dcgm".into();
            s.status.state = "starting".into();
            let how = "figures from dcgm-exporter at its update cadence (30 s until learned), \
                       each reading held until the next";
            s.status.reason = Some(match &nvml_error {
                Some(e) => format!("NVML unavailable ({e}); {how}"),
                None => how.into(),
            });
            tracing::warn!(reason = ?s.status.reason, "GPU telemetry from dcgm-exporter only.");
            return;
        }
        s.status.source = "off".into();
        let failed = nvml_asked || mode == GpuMode::Dcgm;
        s.status.state = if failed { "failed" } else { "off" }.into();
        let reason = match (mode, nvml_error) {
            (GpuMode::Off, _) => "--gpu off".to_string(),
            (GpuMode::Dcgm, _) => {
                "--gpu dcgm needs --dcgm-exporter-url (e.g. http://127.0.0.1:9400/metrics)".into()
            }
            (_, Some(e)) => format!("{e}; the agent runs on without GPU figures"),
            (_, None) => "no GPU source".into(),
        };
        if failed {
            tracing::warn!(%reason, "GPU telemetry off.");
        } else {
            tracing::info!(%reason, "GPU telemetry off.");
        }
        s.status.reason = Some(reason);
    });
    GpuRuntime { hub, sampler, dcgm }
}

impl GpuRuntime {
    /// Whether any source runs (the enricher and gauges are worth wiring).
    pub fn is_on(&self) -> bool {
        self.sampler.is_some() || self.dcgm.is_some()
    }

    pub async fn shutdown(self) {
        if let Some(s) = self.sampler {
            let _ = tokio::task::spawn_blocking(move || s.stop()).await;
        }
        if let Some(d) = self.dcgm {
            let _ = d.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_replaces_a_dcgm_figure_and_dcgm_never_replaces_nvml() {
        let mut d = Device::default();
        d.push(Figure::DramBandwidth, Origin::Dcgm, 0, 30, 0.5);
        d.push(Figure::DramBandwidth, Origin::NvmlGpm, 30, 40, 0.7);
        let t = d.track(Figure::DramBandwidth).unwrap();
        assert_eq!(t.origin, Origin::NvmlGpm);
        assert_eq!(t.series.len(), 1);
        d.push(Figure::DramBandwidth, Origin::Dcgm, 40, 70, 0.1);
        assert_eq!(d.track(Figure::DramBandwidth).unwrap().series.len(), 1);
    }

    #[tokio::test]
    async fn sources_that_cannot_start_leave_gpu_off_and_say_why() {
        let (_tx, stop) = tokio::sync::watch::channel(false);
        let rt = start(
            GpuMode::Off,
            None,
            None,
            dcgm::SCRAPE_EVERY,
            Arc::default(),
            stop.clone(),
        );
        assert!(!rt.is_on());
        let st = rt.hub.status();
        assert_eq!(
            (st.state.as_str(), st.reason.as_deref()),
            ("off", Some("--gpu off"))
        );
        let rt = start(
            GpuMode::Dcgm,
            None,
            None,
            dcgm::SCRAPE_EVERY,
            Arc::default(),
            stop.clone(),
        );
        let st = rt.hub.status();
        assert_eq!(st.state, "failed");
        assert!(st.reason.unwrap().contains("--dcgm-exporter-url"));
        let bad = std::path::PathBuf::from("/nonexistent/libnvidia-ml.so.1");
        let rt = start(
            GpuMode::Auto,
            Some(bad),
            None,
            dcgm::SCRAPE_EVERY,
            Arc::default(),
            stop,
        );
        assert!(!rt.is_on());
        let st = rt.hub.status();
        assert_eq!(st.state, "failed");
        let reason = st.reason.unwrap();
        assert!(
            reason.contains("cannot load the NVML library /nonexistent/libnvidia-ml.so.1")
                && reason.contains("--gpu off"),
            "{reason}"
        );
    }

    #[test]
    fn targets_join_and_leave_the_processes_of_interest() {
        let hub = Hub::default();
        assert!(hub.note_interest(7));
        assert!(!hub.note_interest(7));
        hub.sync_targets([1, 2]);
        assert_eq!(hub.interest(), BTreeSet::from([1, 2, 7]));
        hub.sync_targets([2]);
        assert_eq!(hub.interest(), BTreeSet::from([2, 7]));
    }
}
