//! The timeline file: what the fake driver reports, over time. Pure data with serde; the figures
//! derived from it (samples, counters, means) live in [`crate::model`].
//!
//! Times in the file are seconds relative to the anchor (`anchor_unix_us`, default: the first
//! `nvmlInit`), may be negative (the driver has history before the agent started) and are held
//! internally as whole microseconds. The format is described with an example in
//! `gpu/fake-nvml/README.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Microseconds relative to the anchor.
pub type RelUs = i64;

/// Seconds (file) → microseconds (model), rounded to the nearest microsecond.
pub fn secs_to_us(s: f64) -> RelUs {
    (s * 1e6).round() as RelUs
}

/// Everything the fake driver reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Timeline {
    /// Unix time (µs, `CLOCK_REALTIME`) of timeline time 0; default: the first `nvmlInit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_unix_us: Option<u64>,
    /// `nvmlSystemGetDriverVersion`.
    #[serde(default = "default_driver_version")]
    pub driver_version: String,
    /// `nvmlSystemGetNVMLVersion`.
    #[serde(default = "default_nvml_version")]
    pub nvml_version: String,
    /// How often the driver records a utilisation/power sample (real drivers: 1/6 s).
    #[serde(default = "default_sample_period_us")]
    pub sample_period_us: u64,
    /// How many recorded samples the driver's buffer holds (older ones are overwritten).
    #[serde(default = "default_buffer_samples")]
    pub buffer_samples: u32,
    /// The window `nvmlDeviceGetPowerUsage` averages over (real boards: about 1 s).
    #[serde(default = "default_power_average_us")]
    pub power_average_us: u64,
    /// How long `nvmlDeviceGetPcieThroughput` blocks (real drivers: about 20 ms).
    #[serde(default = "default_pcie_throughput_block_us")]
    pub pcie_throughput_block_us: u64,
    /// Extra time a call takes, by symbol (µs, spent holding the driver lock), to imitate a real
    /// driver's latencies; default: none (calls take about a microsecond).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub call_latency_us: BTreeMap<String, u64>,
    /// NVML symbols absent from the installed library (`dlsym` fails: nvml-wrapper reports
    /// `FailedToLoadSymbol` for those calls only). Applied by [`crate::install`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_symbols: Vec<String>,
    /// Return codes to inject into calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<InjectedError>,
    pub devices: Vec<Device>,
}

impl Default for Timeline {
    /// No devices, the file's defaults for the rest.
    fn default() -> Timeline {
        Timeline::new(Vec::new())
    }
}

impl Timeline {
    /// A timeline of `devices` with the file's defaults for the rest.
    pub fn new(devices: Vec<Device>) -> Timeline {
        Timeline {
            anchor_unix_us: None,
            driver_version: default_driver_version(),
            nvml_version: default_nvml_version(),
            sample_period_us: default_sample_period_us(),
            buffer_samples: default_buffer_samples(),
            power_average_us: default_power_average_us(),
            pcie_throughput_block_us: default_pcie_throughput_block_us(),
            call_latency_us: BTreeMap::new(),
            missing_symbols: Vec::new(),
            errors: Vec::new(),
            devices,
        }
    }
}

fn default_driver_version() -> String {
    "570.124.06".into()
}
fn default_nvml_version() -> String {
    "12.570.124.06".into()
}
fn default_sample_period_us() -> u64 {
    166_667
}
fn default_buffer_samples() -> u32 {
    30
}
fn default_power_average_us() -> u64 {
    1_000_000
}
fn default_pcie_throughput_block_us() -> u64 {
    20_000
}

/// A GPU architecture as `nvmlDeviceGetArchitecture` numbers it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    Kepler,
    Maxwell,
    Pascal,
    Volta,
    Turing,
    Ampere,
    Ada,
    #[default]
    Hopper,
    Blackwell,
}

impl Architecture {
    /// The `NVML_DEVICE_ARCH_*` value.
    pub fn nvml(self) -> u32 {
        use nvml_wrapper_sys::bindings as b;
        match self {
            Architecture::Kepler => b::NVML_DEVICE_ARCH_KEPLER,
            Architecture::Maxwell => b::NVML_DEVICE_ARCH_MAXWELL,
            Architecture::Pascal => b::NVML_DEVICE_ARCH_PASCAL,
            Architecture::Volta => b::NVML_DEVICE_ARCH_VOLTA,
            Architecture::Turing => b::NVML_DEVICE_ARCH_TURING,
            Architecture::Ampere => b::NVML_DEVICE_ARCH_AMPERE,
            Architecture::Ada => b::NVML_DEVICE_ARCH_ADA,
            Architecture::Hopper => b::NVML_DEVICE_ARCH_HOPPER,
            Architecture::Blackwell => b::NVML_DEVICE_ARCH_BLACKWELL,
        }
    }

    /// A typical CUDA compute capability of the architecture.
    pub fn compute_capability(self) -> [i32; 2] {
        match self {
            Architecture::Kepler => [3, 5],
            Architecture::Maxwell => [5, 2],
            Architecture::Pascal => [6, 0],
            Architecture::Volta => [7, 0],
            Architecture::Turing => [7, 5],
            Architecture::Ampere => [8, 0],
            Architecture::Ada => [8, 9],
            Architecture::Hopper => [9, 0],
            Architecture::Blackwell => [10, 0],
        }
    }
}

/// One GPU.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Device {
    /// Default: "NVIDIA H100 80GB HBM3".
    pub name: Option<String>,
    /// Default: `GPU-fa4e0000-0000-0000-0000-0000000000NN` (NN = index).
    pub uuid: Option<String>,
    pub architecture: Architecture,
    /// Default: the architecture's.
    pub cuda_compute_capability: Option<[i32; 2]>,
    /// Default: `00000000:NN:00.0`, NN = 0x18 + index.
    pub pci_bus_id: Option<String>,
    /// Default: 80 GiB.
    pub memory_total_bytes: Option<u64>,
    /// Memory the driver reserves (reported by `nvmlDeviceGetMemoryInfo_v2`); default 0.5 GiB.
    pub memory_reserved_bytes: Option<u64>,
    /// Memory used by processes; default: the sum of the running processes' memory.
    pub memory_used_bytes: Option<Series>,
    /// GPU utilisation, % of time a kernel ran.
    pub gpu_util: Series,
    /// Memory utilisation, % of time memory was read or written.
    pub mem_util: Series,
    /// Board power in mW; the energy counter integrates it.
    pub power_mw: Series,
    /// Energy counter (mJ) at timeline time 0.
    pub energy_start_mj: u64,
    /// The energy counter wraps to 0 at this value (scripted wrap; real counters are 64-bit).
    pub energy_wrap_mj: Option<u64>,
    /// The energy counter advances in steps of this many µs (real drivers: 20–100 ms); 0 = smooth.
    pub energy_update_us: u64,
    /// PCIe bytes per second, integrated into the TX/RX counters (field ids 197/198).
    pub pcie_tx_bytes_per_s: Series,
    pub pcie_rx_bytes_per_s: Series,
    /// The PCIe byte counters wrap to 0 at this value.
    pub pcie_counter_wrap: Option<u64>,
    /// Whether GPM is supported; default: Hopper or newer.
    pub gpm_supported: Option<bool>,
    /// GPM `DRAM_BW_UTIL`, %.
    pub dram_bw_util: Series,
    /// GPM `SM_UTIL`, %.
    pub sm_util: Series,
    /// GPM `SM_OCCUPANCY`, %.
    pub sm_occupancy: Series,
    /// GPM `ANY_TENSOR_UTIL`, %.
    pub tensor_util: Series,
    /// Windows in which the driver records no samples (an idle GPU): `GetSamples` and
    /// `GetProcessUtilization` return `NOT_FOUND` when nothing newer is buffered.
    pub idle: Vec<Window>,
    pub processes: Vec<Process>,
}

impl Device {
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| "NVIDIA H100 80GB HBM3".into())
    }

    pub fn uuid(&self, index: usize) -> String {
        self.uuid
            .clone()
            .unwrap_or_else(|| format!("GPU-fa4e0000-0000-0000-0000-{index:012}"))
    }

    pub fn pci_bus_id(&self, index: usize) -> String {
        self.pci_bus_id
            .clone()
            .unwrap_or_else(|| format!("00000000:{:02X}:00.0", 0x18 + index))
    }

    pub fn memory_total_bytes(&self) -> u64 {
        self.memory_total_bytes.unwrap_or(80 << 30)
    }

    pub fn memory_reserved_bytes(&self) -> u64 {
        self.memory_reserved_bytes.unwrap_or(512 << 20)
    }

    pub fn compute_capability(&self) -> [i32; 2] {
        self.cuda_compute_capability
            .unwrap_or_else(|| self.architecture.compute_capability())
    }

    pub fn gpm_supported(&self) -> bool {
        self.gpm_supported
            .unwrap_or(self.architecture >= Architecture::Hopper)
    }
}

/// A process with a compute context on a device.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Process {
    /// Host PID (what NVML reports).
    pub pid: u32,
    /// When the context was created (s); default: always.
    pub start_s: Option<f64>,
    /// When it went away (s); default: never.
    pub end_s: Option<f64>,
    pub used_memory_bytes: Series,
    /// The process's SM utilisation, % (per-process samples).
    pub sm_util: Series,
    /// The process's memory utilisation, %.
    pub mem_util: Series,
}

impl Process {
    pub fn alive_at(&self, t: RelUs) -> bool {
        self.start_s.is_none_or(|s| secs_to_us(s) <= t)
            && self.end_s.is_none_or(|e| t < secs_to_us(e))
    }
}

/// `[from_s, to_s)`; a missing end is open.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Window {
    pub from_s: Option<f64>,
    pub to_s: Option<f64>,
}

impl Window {
    pub fn contains(&self, t: RelUs) -> bool {
        self.from_s.is_none_or(|a| secs_to_us(a) <= t)
            && self.to_s.is_none_or(|b| t < secs_to_us(b))
    }
}

/// A return code a call gives instead of its result.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InjectedError {
    /// The NVML symbol, e.g. `nvmlDeviceGetSamples`.
    pub symbol: String,
    /// Only calls on this device index; default: all (and calls without a device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u32>,
    /// The `NVML_ERROR_*` name without the prefix (`GPU_IS_LOST`) or the number.
    pub code: ErrorCode,
    /// The window the injection applies in (s); default: always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_s: Option<f64>,
    /// At most this many times; default: every call in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

impl InjectedError {
    pub fn window(&self) -> Window {
        Window {
            from_s: self.from_s,
            to_s: self.to_s,
        }
    }
}

/// An `nvmlReturn_t`, written by name or number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

/// `NVML_ERROR_*` names (without the prefix) and numbers, from nvml.h.
pub const ERROR_NAMES: &[(&str, u32)] = &[
    ("SUCCESS", 0),
    ("UNINITIALIZED", 1),
    ("INVALID_ARGUMENT", 2),
    ("NOT_SUPPORTED", 3),
    ("NO_PERMISSION", 4),
    ("ALREADY_INITIALIZED", 5),
    ("NOT_FOUND", 6),
    ("INSUFFICIENT_SIZE", 7),
    ("INSUFFICIENT_POWER", 8),
    ("DRIVER_NOT_LOADED", 9),
    ("TIMEOUT", 10),
    ("IRQ_ISSUE", 11),
    ("LIBRARY_NOT_FOUND", 12),
    ("FUNCTION_NOT_FOUND", 13),
    ("CORRUPTED_INFOROM", 14),
    ("GPU_IS_LOST", 15),
    ("RESET_REQUIRED", 16),
    ("OPERATING_SYSTEM", 17),
    ("LIB_RM_VERSION_MISMATCH", 18),
    ("IN_USE", 19),
    ("MEMORY", 20),
    ("NO_DATA", 21),
    ("VGPU_ECC_NOT_SUPPORTED", 22),
    ("INSUFFICIENT_RESOURCES", 23),
    ("FREQ_NOT_SUPPORTED", 24),
    ("ARGUMENT_VERSION_MISMATCH", 25),
    ("DEPRECATED", 26),
    ("NOT_READY", 27),
    ("GPU_NOT_FOUND", 28),
    ("INVALID_STATE", 29),
    ("RESET_TYPE_NOT_SUPPORTED", 30),
    ("UNKNOWN", 999),
];

impl ErrorCode {
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        let name = name.strip_prefix("NVML_ERROR_").unwrap_or(name);
        ERROR_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, c)| ErrorCode(c))
    }

    pub fn name(self) -> Option<&'static str> {
        ERROR_NAMES
            .iter()
            .find(|(_, c)| *c == self.0)
            .map(|&(n, _)| n)
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(n) => s.serialize_str(n),
            None => s.serialize_u32(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(u32),
            Name(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(n) => Ok(ErrorCode(n)),
            Repr::Name(s) => ErrorCode::from_name(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown NVML error name {s:?}; use a name from nvml.h without NVML_ERROR_ (e.g. GPU_IS_LOST) or the number"
                ))
            }),
        }
    }
}

/// A value over time: a step function. In the file either a number (constant) or a list of
/// `[t_s, value]` points; each value holds from its time until the next point, the first one
/// also before it. An empty series is 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// (time, value), sorted by time.
    points: Vec<(RelUs, f64)>,
}

impl Series {
    pub fn constant(v: f64) -> Series {
        Series {
            points: vec![(0, v)],
        }
    }

    /// From `(t_s, value)` points in any order.
    pub fn steps(points: &[(f64, f64)]) -> Series {
        let mut points: Vec<(RelUs, f64)> =
            points.iter().map(|&(t, v)| (secs_to_us(t), v)).collect();
        points.sort_by_key(|&(t, _)| t);
        Series { points }
    }

    pub fn points(&self) -> &[(RelUs, f64)] {
        &self.points
    }

    /// The value at `t`.
    pub fn value_at(&self, t: RelUs) -> f64 {
        match self.points.partition_point(|&(pt, _)| pt <= t) {
            0 => self.points.first().map_or(0.0, |&(_, v)| v),
            i => self.points[i - 1].1,
        }
    }

    /// ∫ value dt over `[a, b]`, in value × seconds (0 when `b <= a`).
    pub fn integral(&self, a: RelUs, b: RelUs) -> f64 {
        if b <= a {
            return 0.0;
        }
        let mut total = 0.0;
        let mut t = a;
        let mut v = self.value_at(a);
        for &(pt, pv) in self.points.iter().filter(|&&(pt, _)| pt > a && pt < b) {
            total += v * (pt - t) as f64;
            t = pt;
            v = pv;
        }
        total += v * (b - t) as f64;
        total / 1e6
    }

    /// The time-weighted mean over `[a, b]`; the value at `a` when the window is empty.
    pub fn mean(&self, a: RelUs, b: RelUs) -> f64 {
        if b <= a {
            return self.value_at(a);
        }
        self.integral(a, b) * 1e6 / (b - a) as f64
    }

    /// The largest value taken in `[a, b)` (the value at `a` when the window is empty).
    pub fn max(&self, a: RelUs, b: RelUs) -> f64 {
        self.points
            .iter()
            .filter(|&&(pt, _)| pt > a && pt < b)
            .map(|&(_, v)| v)
            .fold(self.value_at(a), f64::max)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SeriesRepr {
    Constant(f64),
    Steps(Vec<(f64, f64)>),
}

impl Serialize for Series {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let repr = match self.points.as_slice() {
            [] => SeriesRepr::Steps(Vec::new()),
            [(0, v)] => SeriesRepr::Constant(*v),
            points => SeriesRepr::Steps(points.iter().map(|&(t, v)| (t as f64 / 1e6, v)).collect()),
        };
        repr.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Series {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match SeriesRepr::deserialize(d)? {
            SeriesRepr::Constant(v) => Ok(Series::constant(v)),
            SeriesRepr::Steps(points) => Ok(Series::steps(&points)),
        }
    }
}

/// Why a timeline could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("cannot read the fake NVML timeline {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the fake NVML timeline {path} is not valid: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the fake NVML timeline is not valid: {0}")]
    Invalid(String),
}

impl Timeline {
    /// Reads and checks a timeline file.
    pub fn load(path: &Path) -> Result<Timeline, TimelineError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TimelineError::Read {
            path: shown.clone(),
            source,
        })?;
        let timeline: Timeline =
            serde_json::from_str(&text).map_err(|source| TimelineError::Parse {
                path: shown,
                source,
            })?;
        timeline.check()?;
        Ok(timeline)
    }

    /// Rejects values the model cannot work with.
    pub fn check(&self) -> Result<(), TimelineError> {
        let bad = |m: String| Err(TimelineError::Invalid(m));
        if self.sample_period_us == 0 {
            return bad("sample_period_us must be > 0".into());
        }
        if self.buffer_samples == 0 {
            return bad("buffer_samples must be > 0".into());
        }
        for (i, d) in self.devices.iter().enumerate() {
            if d.energy_wrap_mj == Some(0) || d.pcie_counter_wrap == Some(0) {
                return bad(format!("device {i}: a counter wrap must be > 0"));
            }
        }
        for e in &self.errors {
            if let Some(dev) = e.device {
                if dev as usize >= self.devices.len() {
                    return bad(format!(
                        "error injection for {} names device {dev}, but the timeline has {} devices",
                        e.symbol,
                        self.devices.len()
                    ));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "NVML_ERROR_{n}"),
            None => write!(f, "nvmlReturn {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(points: &[(f64, f64)]) -> Series {
        Series::steps(points)
    }

    #[test]
    fn step_values_hold_until_the_next_point_and_before_the_first() {
        let x = s(&[(1.0, 10.0), (2.0, 30.0)]);
        assert_eq!(x.value_at(-5_000_000), 10.0);
        assert_eq!(x.value_at(1_000_000), 10.0);
        assert_eq!(x.value_at(1_999_999), 10.0);
        assert_eq!(x.value_at(2_000_000), 30.0);
        assert_eq!(Series::default().value_at(7), 0.0);
    }

    #[test]
    fn integral_and_mean_are_time_weighted() {
        let x = s(&[(0.0, 0.0), (1.0, 100.0), (1.5, 0.0)]);
        // 100 for 0.5 s inside [0.5, 2.5]: 50 value·s, mean 25.
        assert!((x.integral(500_000, 2_500_000) - 50.0).abs() < 1e-9);
        assert!((x.mean(500_000, 2_500_000) - 25.0).abs() < 1e-9);
        assert_eq!(x.max(500_000, 2_500_000), 100.0);
        assert_eq!(x.max(1_600_000, 2_500_000), 0.0);
        assert_eq!(x.mean(1_200_000, 1_200_000), 100.0);
    }

    #[test]
    fn file_form_round_trips() {
        let text = r#"{"devices":[{"gpu_util":[[0,10],[2.5,90]],"power_mw":300000,
            "processes":[{"pid":42,"start_s":1,"used_memory_bytes":1000}]}],
            "errors":[{"symbol":"nvmlDeviceGetSamples","code":"GPU_IS_LOST","from_s":3}]}"#;
        let t: Timeline = serde_json::from_str(text).unwrap();
        assert_eq!(t.sample_period_us, 166_667);
        assert_eq!(t.devices[0].gpu_util.value_at(2_500_000), 90.0);
        assert_eq!(t.devices[0].power_mw.value_at(-1), 300000.0);
        assert!(!t.devices[0].processes[0].alive_at(999_999));
        assert!(t.devices[0].processes[0].alive_at(1_000_000));
        assert_eq!(t.errors[0].code, ErrorCode(15));
        assert!(!t.errors[0].window().contains(2_999_999));
        let again: Timeline = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(again, t);
    }

    #[test]
    fn the_readme_example_is_a_valid_timeline() {
        let readme = include_str!("../README.md");
        let start = readme.find("```json\n").unwrap() + "```json\n".len();
        let end = start + readme[start..].find("\n```").unwrap();
        let t: Timeline = serde_json::from_str(&readme[start..end]).unwrap();
        t.check().unwrap();
        let d = &t.devices[0];
        assert_eq!(d.gpu_util.value_at(secs_to_us(3.0)), 85.0);
        assert_eq!(
            t.errors[1].code,
            ErrorCode::from_name("DRIVER_NOT_LOADED").unwrap()
        );
        assert!(d.processes[0].alive_at(secs_to_us(-59.0)));
    }

    #[test]
    fn typos_are_rejected_with_the_field_name() {
        let err = serde_json::from_str::<Timeline>(r#"{"devices":[{"gpu_utl":5}]}"#).unwrap_err();
        assert!(err.to_string().contains("gpu_utl"), "{err}");
        let err = serde_json::from_str::<Timeline>(
            r#"{"devices":[],"errors":[{"symbol":"x","code":"GPU_LOST"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("GPU_LOST"), "{err}");
    }
}
