//! The built fake library loaded the way the agent loads NVML: nvml-wrapper's
//! `Nvml::builder().lib_path(…)`, through `dlopen`/`dlsym`. Each test installs its own copy
//! (own directory, own timeline, own library state) and checks the answers against the figures the
//! timeline implies ([`nvidia_ml::model`]) and against NVML's protocols.

use std::path::PathBuf;
use std::ptr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nvidia_ml::install::{self, LIBRARY_FILE, STATS_FILE, TIMELINE_FILE};
use nvidia_ml::model::SampleKind;
use nvidia_ml::stats::StatsReport;
use nvidia_ml::timeline::{
    Architecture, Device, ErrorCode, InjectedError, Process, Series, Timeline, Window,
};
use nvml_wrapper::enum_wrappers::device::{PcieUtilCounter, Sampling};
use nvml_wrapper::enums::device::{DeviceArchitecture, SampleValue, UsedGpuMemory};
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::*;
use nvml_wrapper::Nvml;
use nvml_wrapper_sys::bindings as sys;

struct Fake {
    dir: tempfile::TempDir,
    lib: PathBuf,
    timeline: Timeline,
}

impl Fake {
    fn install(timeline: Timeline) -> Fake {
        let built = install::find_built().expect(
            "target/<profile>/libnvidia_ml.so is built with this test (cargo test -p fake-nvml)",
        );
        let dir = tempfile::tempdir().unwrap();
        let lib = install::install(&built, dir.path(), &timeline).unwrap();
        Fake { dir, lib, timeline }
    }

    fn nvml(&self) -> Nvml {
        Nvml::builder()
            .lib_path(self.lib.as_os_str())
            .init()
            .unwrap()
    }

    fn stats(&self) -> StatsReport {
        StatsReport::read(&self.dir.path().join(STATS_FILE)).unwrap()
    }

    fn anchor(&self) -> i64 {
        self.timeline.anchor_unix_us.unwrap() as i64
    }

    /// Timeline time now.
    fn rel_now(&self) -> i64 {
        now_us() as i64 - self.anchor()
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

const PERIOD: u64 = 10_000_000;
const S: i64 = 1_000_000;

/// Two Hopper GPUs, a 10 s sample period (so that no new sample lands during a test) and "now"
/// in the middle of period 100.
fn steady() -> Timeline {
    let gpu0 = Device {
        name: Some("NVIDIA H100 80GB HBM3".into()),
        uuid: Some("GPU-11111111-2222-3333-4444-555555555555".into()),
        // Sample at 960 s covers (950, 960]: half at 0, half at 80.
        gpu_util: Series::steps(&[(0.0, 0.0), (955.0, 80.0)]),
        mem_util: Series::constant(30.0),
        power_mw: Series::constant(250_000.0),
        energy_start_mj: 7_000,
        // 1e10 bytes sent in the first 10 s, then none: the counter holds 1e10 mod 2^32.
        pcie_tx_bytes_per_s: Series::steps(&[(0.0, 1e9), (10.0, 0.0)]),
        pcie_rx_bytes_per_s: Series::steps(&[(0.0, 5e8), (10.0, 0.0)]),
        pcie_counter_wrap: Some(1 << 32),
        processes: vec![
            Process {
                pid: 100,
                used_memory_bytes: Series::constant((1u64 << 30) as f64),
                sm_util: Series::constant(60.0),
                mem_util: Series::constant(20.0),
                ..Process::default()
            },
            Process {
                pid: 200,
                used_memory_bytes: Series::constant((2u64 << 30) as f64),
                ..Process::default()
            },
            Process {
                pid: 300,
                start_s: Some(2000.0),
                used_memory_bytes: Series::constant(1.0),
                sm_util: Series::constant(99.0),
                ..Process::default()
            },
        ],
        ..Device::default()
    };
    let gpu1 = Device {
        architecture: Architecture::Ampere,
        name: Some("NVIDIA A100-SXM4-80GB".into()),
        ..Device::default()
    };
    Timeline {
        anchor_unix_us: Some(now_us() - 1005 * S as u64),
        sample_period_us: PERIOD,
        ..Timeline::new(vec![gpu0, gpu1])
    }
}

#[test]
fn identity_of_devices_and_driver() {
    let fake = Fake::install(steady());
    let nvml = fake.nvml();
    assert_eq!(nvml.sys_driver_version().unwrap(), "570.124.06");
    assert_eq!(nvml.sys_nvml_version().unwrap(), "12.570.124.06");
    assert_eq!(nvml.device_count().unwrap(), 2);
    let d0 = nvml.device_by_index(0).unwrap();
    let d1 = nvml.device_by_index(1).unwrap();
    assert_eq!(d0.name().unwrap(), "NVIDIA H100 80GB HBM3");
    assert_eq!(d1.name().unwrap(), "NVIDIA A100-SXM4-80GB");
    assert_eq!(
        d0.uuid().unwrap(),
        "GPU-11111111-2222-3333-4444-555555555555"
    );
    assert_eq!(
        d1.uuid().unwrap(),
        "GPU-fa4e0000-0000-0000-0000-000000000001"
    );
    assert_eq!(d1.index().unwrap(), 1);
    assert_eq!(d0.architecture().unwrap(), DeviceArchitecture::Hopper);
    assert_eq!(d1.architecture().unwrap(), DeviceArchitecture::Ampere);
    let cc = d0.cuda_compute_capability().unwrap();
    assert_eq!((cc.major, cc.minor), (9, 0));
    let pci = d1.pci_info().unwrap();
    assert_eq!(pci.bus_id, "00000000:19:00.0");
    assert_eq!((pci.domain, pci.bus, pci.device), (0, 0x19, 0));
    let by_uuid = nvml
        .device_by_uuid("GPU-fa4e0000-0000-0000-0000-000000000001")
        .unwrap();
    assert_eq!(by_uuid.index().unwrap(), 1);
    assert!(matches!(
        nvml.device_by_index(2),
        Err(NvmlError::InvalidArg)
    ));
}

#[test]
fn samples_come_from_the_buffer_incrementally_by_last_timestamp() {
    let fake = Fake::install(steady());
    let nvml = fake.nvml();
    let dev = nvml.device_by_index(0).unwrap();
    let model = fake.timeline.device_model(0).unwrap();
    let anchor = fake.anchor();

    let all = dev.samples(Sampling::GpuUtilization, None).unwrap();
    // The buffer holds the last 30 recorded samples: 71 … 100 periods after the anchor.
    assert_eq!(all.len(), 30);
    let times: Vec<i64> = all.iter().map(|s| s.timestamp as i64 - anchor).collect();
    let expected: Vec<i64> = (71..=100).map(|k| k * PERIOD as i64).collect();
    assert_eq!(times, expected);
    // Timestamps are CLOCK_REALTIME µs: the newest is at most one period old.
    let newest = all.last().unwrap().timestamp;
    assert!(newest <= now_us() && now_us() - newest < PERIOD);
    for s in &all {
        let t = s.timestamp as i64 - anchor;
        assert_eq!(
            s.value,
            SampleValue::U32(model.sample_value(SampleKind::GpuUtil, t))
        );
    }
    let at = |k: i64| &all[(k - 71) as usize];
    assert_eq!(at(95).value, SampleValue::U32(0));
    assert_eq!(at(96).value, SampleValue::U32(40));
    assert_eq!(at(97).value, SampleValue::U32(80));

    // Only newer than the last seen timestamp.
    let newer = dev
        .samples(Sampling::GpuUtilization, at(97).timestamp)
        .unwrap();
    assert_eq!(newer.len(), 3);
    assert_eq!(newer[0].timestamp, at(98).timestamp);
    // Nothing newer: NOT_FOUND, as the driver answers.
    assert!(matches!(
        dev.samples(Sampling::GpuUtilization, newest),
        Err(NvmlError::NotFound)
    ));
    // Power samples are mW.
    let power = dev.samples(Sampling::Power, at(99).timestamp).unwrap();
    assert_eq!(power.len(), 1);
    assert_eq!(power[0].value, SampleValue::U32(250_000));
    let mem = dev
        .samples(Sampling::MemoryUtilization, at(99).timestamp)
        .unwrap();
    assert_eq!(mem[0].value, SampleValue::U32(30));

    // A buffer smaller than the count gets the oldest samples, so the next call gets the rest.
    // SAFETY: raw NVML calls into the fake library with a live device handle and
    // out-pointers to locals of the types the symbol declares.
    unsafe {
        let sym = nvml.lib().nvmlDeviceGetSamples.as_ref().unwrap();
        let mut ty = 0;
        let mut count = 2u32;
        let mut buf: Vec<sys::nvmlSample_t> = vec![std::mem::zeroed(); 2];
        let rc = sym(
            dev.handle(),
            sys::nvmlSamplingType_enum_NVML_GPU_UTILIZATION_SAMPLES,
            at(96).timestamp,
            &mut ty,
            &mut count,
            buf.as_mut_ptr(),
        );
        assert_eq!(rc, sys::nvmlReturn_enum_NVML_SUCCESS);
        assert_eq!(count, 2);
        assert_eq!(buf[0].timeStamp, at(97).timestamp);
        assert_eq!(buf[1].timeStamp, at(98).timestamp);
    }
}

#[test]
fn an_idle_gpu_has_an_empty_buffer() {
    let mut t = steady();
    t.devices[0].idle = vec![Window::default()];
    let fake = Fake::install(t);
    let nvml = fake.nvml();
    let dev = nvml.device_by_index(0).unwrap();
    assert!(matches!(
        dev.samples(Sampling::GpuUtilization, None),
        Err(NvmlError::NotFound)
    ));
    assert!(matches!(
        dev.process_utilization_stats(None),
        Err(NvmlError::NotFound)
    ));
    // The other GPU is not idle.
    let other = nvml.device_by_index(1).unwrap();
    assert_eq!(
        other.samples(Sampling::GpuUtilization, None).unwrap().len(),
        30
    );
}

#[test]
fn idle_window_stops_recording_and_keeps_older_samples() {
    let mut t = steady();
    // Idle from 975 s on: the newest sample is the one at 970 s.
    t.devices[0].idle = vec![Window {
        from_s: Some(975.0),
        to_s: None,
    }];
    let fake = Fake::install(t);
    let nvml = fake.nvml();
    let dev = nvml.device_by_index(0).unwrap();
    let all = dev.samples(Sampling::GpuUtilization, None).unwrap();
    assert_eq!(all.len(), 30);
    let newest = all.last().unwrap().timestamp as i64 - fake.anchor();
    assert_eq!(newest, 970 * S);
}

#[test]
fn process_utilisation_two_call_protocol() {
    let fake = Fake::install(steady());
    let nvml = fake.nvml();
    let dev = nvml.device_by_index(0).unwrap();
    let procs = dev.process_utilization_stats(None).unwrap();
    // pid 200 had no utilisation and pid 300 has not started: only pid 100.
    assert_eq!(procs.len(), 1);
    assert_eq!(
        (procs[0].pid, procs[0].sm_util, procs[0].mem_util),
        (100, 60, 20)
    );
    let newest = procs[0].timestamp;
    assert_eq!(newest as i64 - fake.anchor(), 100 * PERIOD as i64);
    assert!(matches!(
        dev.process_utilization_stats(newest),
        Err(NvmlError::NotFound)
    ));
    // SAFETY: raw NVML calls into the fake library with a live device handle and
    // out-pointers to locals of the types the symbol declares.
    unsafe {
        let sym = nvml.lib().nvmlDeviceGetProcessUtilization.as_ref().unwrap();
        let mut count = 0u32;
        let rc = sym(dev.handle(), ptr::null_mut(), &mut count, 0);
        assert_eq!(rc, sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE);
        assert_eq!(count, 1);
    }
}

#[test]
fn running_processes_two_call_protocol_v3_and_v2() {
    let fake = Fake::install(steady());
    let nvml = fake.nvml();
    let dev = nvml.device_by_index(0).unwrap();
    let procs = dev.running_compute_processes().unwrap();
    let got: Vec<(u32, UsedGpuMemory)> = procs
        .iter()
        .map(|p| (p.pid, p.used_gpu_memory.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (100, UsedGpuMemory::Used(1 << 30)),
            (200, UsedGpuMemory::Used(2 << 30))
        ]
    );
    assert!(nvml
        .device_by_index(1)
        .unwrap()
        .running_compute_processes()
        .unwrap()
        .is_empty());
    // SAFETY: raw NVML calls into the fake library with a live device handle and
    // out-pointers to locals of the types the symbol declares.
    unsafe {
        let v3 = nvml
            .lib()
            .nvmlDeviceGetComputeRunningProcesses_v3
            .as_ref()
            .unwrap();
        let mut count = 1u32;
        let mut one: Vec<sys::nvmlProcessInfo_t> = vec![std::mem::zeroed(); 1];
        assert_eq!(
            v3(dev.handle(), &mut count, one.as_mut_ptr()),
            sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
        );
        assert_eq!(count, 2);

        // _v2 (same layout) straight from the library.
        let lib = libloading::Library::new(&fake.lib).unwrap();
        let v2: libloading::Symbol<
            unsafe extern "C" fn(
                sys::nvmlDevice_t,
                *mut u32,
                *mut sys::nvmlProcessInfo_v2_t,
            ) -> sys::nvmlReturn_t,
        > = lib
            .get(b"nvmlDeviceGetComputeRunningProcesses_v2\0")
            .unwrap();
        let mut count = 0u32;
        assert_eq!(
            v2(dev.handle(), &mut count, ptr::null_mut()),
            sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE
        );
        let mut buf: Vec<sys::nvmlProcessInfo_v2_t> = vec![std::mem::zeroed(); count as usize];
        assert_eq!(
            v2(dev.handle(), &mut count, buf.as_mut_ptr()),
            sys::nvmlReturn_enum_NVML_SUCCESS
        );
        assert_eq!((buf[1].pid, buf[1].usedGpuMemory), (200, 2 << 30));
    }
}

#[test]
fn memory_info_v2_checks_the_struct_version() {
    let fake = Fake::install(steady());
    let nvml = fake.nvml();
    let dev = nvml.device_by_index(0).unwrap();
    let m = dev.memory_info().unwrap();
    let (total, reserved, used) = (80u64 << 30, 512u64 << 20, 3u64 << 30);
    assert_eq!((m.total, m.reserved, m.used), (total, reserved, used));
    assert_eq!(m.free, total - reserved - used);
    // SAFETY: raw NVML calls into the fake library with a live device handle and
    // out-pointers to locals of the types the symbol declares.
    unsafe {
        let v2 = nvml.lib().nvmlDeviceGetMemoryInfo_v2.as_ref().unwrap();
        let mut info: sys::nvmlMemory_v2_t = std::mem::zeroed();
        info.version = (std::mem::size_of::<sys::nvmlMemory_v2_t>() | (1 << 24)) as u32;
        assert_eq!(
            v2(dev.handle(), &mut info),
            sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        );
        assert_eq!(info.total, 0, "nothing written on a version mismatch");
        let v1 = nvml.lib().nvmlDeviceGetMemoryInfo.as_ref().unwrap();
        let mut old: sys::nvmlMemory_t = std::mem::zeroed();
        assert_eq!(
            v1(dev.handle(), &mut old),
            sys::nvmlReturn_enum_NVML_SUCCESS
        );
        // v1's "used" includes the reservation.
        assert_eq!(
            (old.used, old.free),
            (used + reserved, total - used - reserved)
        );
    }
}

#[test]
fn power_energy_and_field_values() {
    let fake = Fake::install(steady());
    let nvml = fake.nvml();
    let dev = nvml.device_by_index(0).unwrap();
    let model = fake.timeline.device_model(0).unwrap();
    assert_eq!(dev.power_usage().unwrap(), 250_000);
    let before = model.energy_mj(fake.rel_now());
    let e = dev.total_energy_consumption().unwrap();
    let after = model.energy_mj(fake.rel_now());
    assert!(before <= e && e <= after, "{before} <= {e} <= {after}");
    // 250 W for 1005 s after 7 J.
    assert!(e >= 7_000 + 250 * 1_005_000);

    let fields = dev
        .field_values_for(&[
            FieldId(NVML_FI_DEV_POWER_INSTANT),
            FieldId(NVML_FI_DEV_PCIE_COUNT_TX_BYTES),
            FieldId(NVML_FI_DEV_PCIE_COUNT_RX_BYTES),
            FieldId(NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX),
        ])
        .unwrap();
    let value = |i: usize| fields[i].as_ref().unwrap().value.as_ref().unwrap().clone();
    assert_eq!(value(0), SampleValue::U32(250_000));
    // Wrapped 32-bit-style counters: 1e10 mod 2^32 and 5e9 mod 2^32.
    assert_eq!(value(1), SampleValue::U64(10_000_000_000 % (1 << 32)));
    assert_eq!(value(2), SampleValue::U64(5_000_000_000 % (1 << 32)));
    assert!(matches!(
        fields[3].as_ref().unwrap().value,
        Err(NvmlError::NotSupported)
    ));
    let ts = fields[0].as_ref().unwrap().timestamp as u64;
    assert!(ts <= now_us() && now_us() - ts < 5_000_000);
    let u = dev.utilization_rates().unwrap();
    assert_eq!((u.gpu, u.memory), (80, 30));
}

#[test]
fn energy_counter_wraps_where_the_timeline_says() {
    let anchor = now_us();
    let wrap = 1_000_000_000u64;
    // 100 W: 100 mJ per ms. The counter reaches the wrap 3 s after the anchor.
    let t = Timeline {
        anchor_unix_us: Some(anchor),
        ..Timeline::new(vec![Device {
            power_mw: Series::constant(100_000.0),
            energy_start_mj: wrap - 300_000,
            energy_wrap_mj: Some(wrap),
            ..Device::default()
        }])
    };
    let fake = Fake::install(t);
    let nvml = fake.nvml();
    let dev = nvml.device_by_index(0).unwrap();
    let model = fake.timeline.device_model(0).unwrap();
    let t1a = fake.rel_now();
    let e1 = dev.total_energy_consumption().unwrap();
    let t1b = fake.rel_now();
    assert!(
        t1b < 2_900_000,
        "this machine took {t1b} µs to start the test"
    );
    std::thread::sleep(Duration::from_micros(
        (3_200_000 - fake.rel_now()).max(0) as u64
    ));
    let t2a = fake.rel_now();
    let e2 = dev.total_energy_consumption().unwrap();
    let t2b = fake.rel_now();
    assert!(e2 < e1, "the counter wrapped: {e1} then {e2}");
    let used = e2 + wrap - e1;
    let least = model.energy_mj_unwrapped(t2a) - model.energy_mj_unwrapped(t1b);
    let most = model.energy_mj_unwrapped(t2b) - model.energy_mj_unwrapped(t1a);
    assert!(
        least - 1.0 <= used as f64 && used as f64 <= most + 1.0,
        "{least} <= {used} <= {most}"
    );
}

#[test]
fn gpm_metrics_are_means_between_the_two_samples() {
    let anchor = now_us();
    let t = Timeline {
        anchor_unix_us: Some(anchor),
        ..Timeline::new(vec![
            Device {
                sm_util: Series::constant(37.0),
                sm_occupancy: Series::constant(12.5),
                tensor_util: Series::constant(55.0),
                // Steps from 10 to 90 one second after the anchor.
                dram_bw_util: Series::steps(&[(0.0, 10.0), (1.0, 90.0)]),
                ..Device::default()
            },
            Device {
                architecture: Architecture::Ampere,
                ..Device::default()
            },
        ])
    };
    let fake = Fake::install(t);
    let nvml = fake.nvml();
    let dev = nvml.device_by_index(0).unwrap();
    let model = fake.timeline.device_model(0).unwrap();
    assert!(dev.gpm_support().unwrap());

    let t1a = fake.rel_now();
    let s1 = dev.gpm_sample().unwrap();
    let t1b = fake.rel_now();
    assert!(
        t1b < 900_000,
        "this machine took {t1b} µs to start the test"
    );
    std::thread::sleep(Duration::from_micros(
        (1_500_000 - fake.rel_now()).max(0) as u64
    ));
    let t2a = fake.rel_now();
    let s2 = dev.gpm_sample().unwrap();
    let t2b = fake.rel_now();
    let ids = [
        GpmMetricId::DramBwUtil,
        GpmMetricId::SmUtil,
        GpmMetricId::SmOccupancy,
        GpmMetricId::AnyTensorUtil,
        GpmMetricId::NvlinkTotalRxPerSec,
    ];
    let got = nvml_wrapper::gpm::gpm_metrics_get(&nvml, &s1, &s2, &ids).unwrap();
    let value = |i: usize| got[i].as_ref().unwrap().value;
    let dram = value(0);
    let (lo, hi) = (
        model
            .gpm_metric(
                sys::nvmlGpmMetricId_t_NVML_GPM_METRIC_DRAM_BW_UTIL,
                t1a,
                t2a,
            )
            .unwrap(),
        model
            .gpm_metric(
                sys::nvmlGpmMetricId_t_NVML_GPM_METRIC_DRAM_BW_UTIL,
                t1b,
                t2b,
            )
            .unwrap(),
    );
    assert!(
        10.0 < dram && dram < 90.0 && lo <= dram && dram <= hi,
        "{lo} <= {dram} <= {hi}"
    );
    assert_eq!((value(1), value(2), value(3)), (37.0, 12.5, 55.0));
    assert_eq!(got[1].as_ref().unwrap().metric_info.unit, "%");
    assert!(matches!(got[4], Err(NvmlError::NotSupported)));
    // Samples in the wrong order are refused.
    assert!(matches!(
        nvml_wrapper::gpm::gpm_metrics_get(&nvml, &s2, &s1, &ids[..1]),
        Err(NvmlError::InvalidArg)
    ));

    // Before Hopper: not supported.
    let ampere = nvml.device_by_index(1).unwrap();
    assert!(!ampere.gpm_support().unwrap());
    assert!(matches!(ampere.gpm_sample(), Err(NvmlError::NotSupported)));
    // A support struct of another version is refused.
    // SAFETY: raw NVML calls into the fake library with a live device handle and
    // out-pointers to locals of the types the symbol declares.
    unsafe {
        let sym = nvml.lib().nvmlGpmQueryDeviceSupport.as_ref().unwrap();
        let mut support: sys::nvmlGpmSupport_t = std::mem::zeroed();
        support.version = 2;
        assert_eq!(
            sym(dev.handle(), &mut support),
            sys::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        );
    }
}

#[test]
fn a_missing_symbol_fails_that_call_only() {
    let mut t = steady();
    t.missing_symbols = vec![
        "nvmlGpmSampleGet".into(),
        "nvmlDeviceGetProcessUtilization".into(),
    ];
    let fake = Fake::install(t);
    let nvml = fake.nvml();
    let dev = nvml.device_by_index(0).unwrap();
    assert!(
        matches!(dev.gpm_sample(), Err(NvmlError::FailedToLoadSymbol(_))),
        "{:?}",
        dev.gpm_sample()
    );
    assert!(matches!(
        dev.process_utilization_stats(None),
        Err(NvmlError::FailedToLoadSymbol(_))
    ));
    // Everything else works, GPM support included.
    assert!(dev.gpm_support().unwrap());
    assert_eq!(
        dev.samples(Sampling::GpuUtilization, None).unwrap().len(),
        30
    );
    assert_eq!(dev.running_compute_processes().unwrap().len(), 2);

    // The same build installed without hiding has the symbol: the absence is the install's doing.
    let whole = Fake::install(steady());
    let nvml2 = whole.nvml();
    assert!(nvml2.device_by_index(0).unwrap().gpm_sample().is_ok());
}

#[test]
fn injected_errors_hit_their_device_and_stop_after_their_count() {
    let mut t = steady();
    t.errors = vec![InjectedError {
        symbol: "nvmlDeviceGetPowerUsage".into(),
        device: Some(1),
        code: ErrorCode::from_name("GPU_IS_LOST").unwrap(),
        from_s: None,
        to_s: None,
        times: Some(2),
    }];
    let fake = Fake::install(t);
    let nvml = fake.nvml();
    let d0 = nvml.device_by_index(0).unwrap();
    let d1 = nvml.device_by_index(1).unwrap();
    assert!(matches!(d1.power_usage(), Err(NvmlError::GpuLost)));
    assert!(d0.power_usage().is_ok());
    assert!(matches!(d1.power_usage(), Err(NvmlError::GpuLost)));
    assert!(d1.power_usage().is_ok());
}

#[test]
fn pcie_throughput_blocks_and_calls_are_counted() {
    let mut t = steady();
    t.call_latency_us
        .insert("nvmlDeviceGetComputeRunningProcesses_v3".into(), 5_000);
    let fake = Fake::install(t);
    {
        let nvml = fake.nvml();
        let dev = nvml.device_by_index(0).unwrap();
        for _ in 0..3 {
            dev.power_usage().unwrap();
        }
        let start = std::time::Instant::now();
        dev.pcie_throughput(PcieUtilCounter::Send).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(20));
        // Scripted latency: the count call and the list call take 5 ms each.
        let start = std::time::Instant::now();
        assert_eq!(dev.running_compute_processes().unwrap().len(), 2);
        assert!(start.elapsed() >= Duration::from_millis(10));
    }
    // Dropping Nvml shut it down, which wrote the final figures.
    let stats = fake.stats();
    assert_eq!(stats.calls("nvmlDeviceGetPowerUsage"), 3);
    assert_eq!(stats.calls("nvmlDeviceGetPcieThroughput"), 1);
    assert_eq!(stats.calls("nvmlInit_v2"), 1);
    assert_eq!(stats.calls("nvmlShutdown"), 1);
    assert_eq!(stats.calls("nvmlDeviceGetSamples"), 0);
    assert!(stats.symbols["nvmlDeviceGetPcieThroughput"].total_ns >= 20_000_000);
    assert!(stats.symbols["nvmlDeviceGetPowerUsage"].max_ns < 20_000_000);
    let procs = stats.symbols["nvmlDeviceGetComputeRunningProcesses_v3"];
    assert_eq!(procs.calls, 2);
    assert!(procs.total_ns >= 10_000_000);
}

#[test]
fn init_without_a_timeline_is_a_missing_driver_and_a_bad_one_an_error() {
    let built = install::find_built().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join(LIBRARY_FILE);
    std::fs::copy(&built, &lib).unwrap();
    let init = || Nvml::builder().lib_path(lib.as_os_str()).init();
    assert!(matches!(init(), Err(NvmlError::DriverNotLoaded)));
    std::fs::write(
        dir.path().join(TIMELINE_FILE),
        r#"{"devices": [{"gpu_utl": 1}]}"#,
    )
    .unwrap();
    assert!(matches!(init(), Err(NvmlError::Unknown)));
}

#[test]
fn init_is_reference_counted() {
    let fake = Fake::install(steady());
    let first = fake.nvml();
    let second = fake.nvml();
    drop(first);
    assert_eq!(second.device_count().unwrap(), 2);
}
