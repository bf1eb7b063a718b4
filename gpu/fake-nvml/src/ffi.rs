//! The exported NVML C symbols. Each one checks its pointers, goes through [`driver::serve`] and
//! answers from [`crate::model`]; types and constants are nvml-wrapper-sys's (generated from
//! nvml.h), and the signatures are checked against its `NvmlLib` at compile time (tests below).
//!
//! The callers' contract is NVML's: pointers are null or valid for the sizes the call documents.
#![allow(clippy::missing_safety_doc)]
// Every function here is an `unsafe extern "C"` entry point whose body is raw-pointer work under
// the contract above; wrapping each body in `unsafe {}` again would add nothing.
#![allow(unsafe_op_in_unsafe_fn)]

use std::ffi::{c_char, c_int, c_uint, c_ulonglong, CStr};
use std::time::Duration;

use nvml_wrapper_sys::bindings::{self as b, *};

use crate::driver::{self, device_handle, serve, serve_device, Driver};
use crate::model::{DeviceModel, SampleKind};
use crate::stats::{self, Sym};

const SUCCESS: nvmlReturn_t = b::nvmlReturn_enum_NVML_SUCCESS;
const INVALID_ARGUMENT: nvmlReturn_t = b::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
const INSUFFICIENT_SIZE: nvmlReturn_t = b::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
const NOT_FOUND: nvmlReturn_t = b::nvmlReturn_enum_NVML_ERROR_NOT_FOUND;
const NOT_SUPPORTED: nvmlReturn_t = b::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
const VERSION_MISMATCH: nvmlReturn_t = b::nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH;

/// `NVML_STRUCT_VERSION(Memory, 2)`.
pub const MEMORY_V2_VERSION: c_uint =
    (std::mem::size_of::<nvmlMemory_v2_t>() | (2 << 24)) as c_uint;
/// What NVML reports for a process's GPU/compute instance outside MIG.
const NVML_VALUE_NOT_AVAILABLE: c_uint = c_uint::MAX;
/// `cuDriverGetVersion` of CUDA 12.8, which the default 570 driver ships.
const CUDA_DRIVER_VERSION: c_int = 12080;

fn model(d: &Driver, i: usize) -> DeviceModel<'_> {
    DeviceModel {
        timeline: &d.timeline,
        device: &d.timeline.devices[i],
    }
}

/// Copies `s` NUL-terminated into a caller's buffer of `len` bytes.
unsafe fn copy_str(s: &str, buf: *mut c_char, len: c_uint) -> nvmlReturn_t {
    if buf.is_null() {
        return INVALID_ARGUMENT;
    }
    let bytes = s.as_bytes();
    if (len as usize) < bytes.len() + 1 {
        return INSUFFICIENT_SIZE;
    }
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
    *buf.add(bytes.len()) = 0;
    SUCCESS
}

/// Writes `value` through `out`, or answers `INVALID_ARGUMENT` for a null pointer.
unsafe fn put<T>(out: *mut T, value: T) -> nvmlReturn_t {
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    out.write(value);
    SUCCESS
}

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    driver::init(Sym::InitV2)
}

#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    driver::init(Sym::InitWithFlags)
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    driver::shutdown()
}

#[no_mangle]
pub extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    let start = std::time::Instant::now();
    let s: &'static CStr = match result {
        0 => c"Success",
        1 => c"Uninitialized",
        2 => c"Invalid Argument",
        3 => c"Not Supported",
        4 => c"Insufficient Permissions",
        5 => c"Already Initialized",
        6 => c"Not Found",
        7 => c"Insufficient Size",
        8 => c"Insufficient External Power",
        9 => c"Driver Not Loaded",
        10 => c"Timeout",
        11 => c"Interrupt Request Issue",
        12 => c"NVML Shared Library Not Found",
        13 => c"Function Not Found",
        14 => c"Corrupted infoROM",
        15 => c"GPU is lost",
        16 => c"GPU requires restart",
        17 => c"The operating system has blocked the request.",
        18 => c"RM has detected an NVML/RM version mismatch.",
        19 => c"In use by another client",
        20 => c"Insufficient Memory",
        21 => c"No data",
        25 => c"Argument version mismatch",
        26 => c"Deprecated",
        27 => c"Not ready",
        28 => c"GPU not found",
        29 => c"Invalid state",
        _ => c"Unknown Error",
    };
    stats::record(Sym::ErrorString, start.elapsed(), SUCCESS);
    s.as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    serve(Sym::SystemGetDriverVersion, None, |d, _, _| {
        copy_str(&d.timeline.driver_version, version, length)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    serve(Sym::SystemGetNvmlVersion, None, |d, _, _| {
        copy_str(&d.timeline.nvml_version, version, length)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) -> nvmlReturn_t {
    serve(Sym::SystemGetCudaDriverVersion, None, |_, _, _| {
        put(version, CUDA_DRIVER_VERSION)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> nvmlReturn_t {
    serve(Sym::SystemGetCudaDriverVersionV2, None, |_, _, _| {
        put(version, CUDA_DRIVER_VERSION)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    serve(Sym::DeviceGetCountV2, None, |d, _, _| {
        put(count, d.timeline.devices.len() as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    serve(Sym::DeviceGetHandleByIndexV2, None, |d, _, _| {
        if index as usize >= d.timeline.devices.len() {
            return INVALID_ARGUMENT;
        }
        put(device, device_handle(index as usize))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    serve(Sym::DeviceGetHandleByUuid, None, |d, _, _| {
        if uuid.is_null() {
            return INVALID_ARGUMENT;
        }
        let wanted = CStr::from_ptr(uuid).to_bytes();
        match (0..d.timeline.devices.len())
            .find(|&i| d.timeline.devices[i].uuid(i).as_bytes() == wanted)
        {
            Some(i) => put(device, device_handle(i)),
            None => NOT_FOUND,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetName, device, |d, i, _| {
        copy_str(&d.timeline.devices[i].name(), name, length)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetUuid, device, |d, i, _| {
        copy_str(&d.timeline.devices[i].uuid(i), uuid, length)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(
    device: nvmlDevice_t,
    index: *mut c_uint,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetIndex, device, |_, i, _| {
        put(index, i as c_uint)
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetPciInfoV3, device, |d, i, _| {
        if pci.is_null() {
            return INVALID_ARGUMENT;
        }
        let bus_id = d.timeline.devices[i].pci_bus_id(i);
        // "DDDDDDDD:BB:DD.F": domain, bus, device.
        let field = |from: usize, to: usize| {
            bus_id
                .get(from..to)
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .unwrap_or(0)
        };
        let mut info: nvmlPciInfo_t = std::mem::zeroed();
        info.domain = field(0, 8);
        info.bus = field(9, 11);
        info.device = field(12, 14);
        // H100 SXM5: device 0x2330, vendor 0x10de.
        info.pciDeviceId = 0x2330_10de;
        info.pciSubSystemId = 0x16c1_10de;
        let legacy = bus_id.get(4..).unwrap_or("");
        for (dst, src) in info.busId.iter_mut().zip(bus_id.bytes().take(31)) {
            *dst = src as c_char;
        }
        for (dst, src) in info.busIdLegacy.iter_mut().zip(legacy.bytes().take(15)) {
            *dst = src as c_char;
        }
        pci.write(info);
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetArchitecture(
    device: nvmlDevice_t,
    arch: *mut nvmlDeviceArchitecture_t,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetArchitecture, device, |d, i, _| {
        put(arch, d.timeline.devices[i].architecture.nvml())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetCudaComputeCapability, device, |d, i, _| {
        if major.is_null() || minor.is_null() {
            return INVALID_ARGUMENT;
        }
        let [ma, mi] = d.timeline.devices[i].compute_capability();
        major.write(ma);
        minor.write(mi);
        SUCCESS
    })
}

/// The two-call protocol of `GetSamples`: a null buffer asks how many samples newer than
/// `lastSeenTimeStamp` are buffered; a buffer gets at most `*sampleCount` of them, oldest first,
/// so that the next incremental call picks up the rest. Nothing newer: `NOT_FOUND`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetSamples(
    device: nvmlDevice_t,
    type_: nvmlSamplingType_t,
    last_seen_time_stamp: c_ulonglong,
    sample_val_type: *mut nvmlValueType_t,
    sample_count: *mut c_uint,
    samples: *mut nvmlSample_t,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetSamples, device, |d, i, now| {
        let kind = match type_ {
            b::nvmlSamplingType_enum_NVML_GPU_UTILIZATION_SAMPLES => SampleKind::GpuUtil,
            b::nvmlSamplingType_enum_NVML_MEMORY_UTILIZATION_SAMPLES => SampleKind::MemUtil,
            b::nvmlSamplingType_enum_NVML_TOTAL_POWER_SAMPLES => SampleKind::Power,
            t if t < b::nvmlSamplingType_enum_NVML_SAMPLINGTYPE_COUNT => return NOT_SUPPORTED,
            _ => return INVALID_ARGUMENT,
        };
        if sample_count.is_null() || sample_val_type.is_null() {
            return INVALID_ARGUMENT;
        }
        let m = model(d, i);
        let times = m.buffered_sample_times(now, d.unix_to_rel(last_seen_time_stamp));
        if times.is_empty() {
            return NOT_FOUND;
        }
        sample_val_type.write(b::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT);
        if samples.is_null() {
            sample_count.write(times.len() as c_uint);
            return SUCCESS;
        }
        let n = times.len().min(*sample_count as usize);
        for (k, &t) in times.iter().take(n).enumerate() {
            samples.add(k).write(nvmlSample_t {
                timeStamp: d.rel_to_unix(t),
                sampleValue: nvmlValue_t {
                    uiVal: m.sample_value(kind, t),
                },
            });
        }
        sample_count.write(n as c_uint);
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    utilization: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetUtilizationRates, device, |d, i, now| {
        let (gpu, memory) = model(d, i).utilization_rates(now);
        put(utilization, nvmlUtilization_t { gpu, memory })
    })
}

/// Two-call protocol: a null buffer or a short one gets `INSUFFICIENT_SIZE` and the count
/// needed; no sample newer than `lastSeenTimeStamp` buffered: `NOT_FOUND`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: nvmlDevice_t,
    utilization: *mut nvmlProcessUtilizationSample_t,
    process_samples_count: *mut c_uint,
    last_seen_time_stamp: c_ulonglong,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetProcessUtilization, device, |d, i, now| {
        if process_samples_count.is_null() {
            return INVALID_ARGUMENT;
        }
        let Some(list) = model(d, i).process_utilization(now, d.unix_to_rel(last_seen_time_stamp))
        else {
            process_samples_count.write(0);
            return NOT_FOUND;
        };
        let capacity = *process_samples_count as usize;
        process_samples_count.write(list.len() as c_uint);
        if list.is_empty() {
            return SUCCESS;
        }
        if utilization.is_null() || capacity < list.len() {
            return INSUFFICIENT_SIZE;
        }
        for (k, p) in list.iter().enumerate() {
            utilization.add(k).write(nvmlProcessUtilizationSample_t {
                pid: p.pid,
                timeStamp: d.rel_to_unix(p.t),
                smUtil: p.sm_util,
                memUtil: p.mem_util,
                encUtil: 0,
                decUtil: 0,
            });
        }
        SUCCESS
    })
}

/// Two-call protocol of the running-process lists (v2 and v3 share the layout).
unsafe fn running_processes(
    sym: Sym,
    device: nvmlDevice_t,
    info_count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    serve_device(sym, device, |d, i, now| {
        if info_count.is_null() {
            return INVALID_ARGUMENT;
        }
        let list = model(d, i).running_processes(now);
        let capacity = *info_count as usize;
        info_count.write(list.len() as c_uint);
        if list.is_empty() {
            return SUCCESS;
        }
        if infos.is_null() || capacity < list.len() {
            return INSUFFICIENT_SIZE;
        }
        for (k, &(pid, used)) in list.iter().enumerate() {
            infos.add(k).write(nvmlProcessInfo_t {
                pid,
                usedGpuMemory: used,
                gpuInstanceId: NVML_VALUE_NOT_AVAILABLE,
                computeInstanceId: NVML_VALUE_NOT_AVAILABLE,
            });
        }
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    info_count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    running_processes(
        Sym::DeviceGetComputeRunningProcessesV3,
        device,
        info_count,
        infos,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    device: nvmlDevice_t,
    info_count: *mut c_uint,
    infos: *mut nvmlProcessInfo_v2_t,
) -> nvmlReturn_t {
    running_processes(
        Sym::DeviceGetComputeRunningProcessesV2,
        device,
        info_count,
        infos,
    )
}

/// v1: `used` includes the driver's reservation, as in the original struct.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_t,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetMemoryInfo, device, |d, i, now| {
        let dev = &d.timeline.devices[i];
        let total = dev.memory_total_bytes();
        let used = (model(d, i).memory_used_bytes(now) + dev.memory_reserved_bytes()).min(total);
        put(
            memory,
            nvmlMemory_t {
                total,
                free: total - used,
                used,
            },
        )
    })
}

/// v2: a versioned struct; `reserved` apart from `used`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetMemoryInfoV2, device, |d, i, now| {
        if memory.is_null() {
            return INVALID_ARGUMENT;
        }
        if (*memory).version != MEMORY_V2_VERSION {
            return VERSION_MISMATCH;
        }
        let dev = &d.timeline.devices[i];
        let total = dev.memory_total_bytes();
        let reserved = dev.memory_reserved_bytes().min(total);
        let used = model(d, i).memory_used_bytes(now).min(total - reserved);
        memory.write(nvmlMemory_v2_t {
            version: MEMORY_V2_VERSION,
            total,
            reserved,
            free: total - reserved - used,
            used,
        });
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTotalEnergyConsumption(
    device: nvmlDevice_t,
    energy: *mut c_ulonglong,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetTotalEnergyConsumption, device, |d, i, now| {
        put(energy, model(d, i).energy_mj(now))
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(
    device: nvmlDevice_t,
    power: *mut c_uint,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetPowerUsage, device, |d, i, now| {
        put(power, model(d, i).power_usage_mw(now))
    })
}

/// One batched call; each entry gets its own return code (`NOT_SUPPORTED` for fields the fake
/// does not script).
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetFieldValues(
    device: nvmlDevice_t,
    values_count: c_int,
    values: *mut nvmlFieldValue_t,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetFieldValues, device, |d, i, now| {
        if values_count <= 0 || values.is_null() {
            return INVALID_ARGUMENT;
        }
        let m = model(d, i);
        let ts = d.rel_to_unix(now) as i64;
        for k in 0..values_count as usize {
            let v = &mut *values.add(k);
            v.timestamp = ts;
            v.latencyUsec = 0;
            let (ty, value) = match v.fieldId {
                b::field_id::NVML_FI_DEV_POWER_INSTANT => (
                    b::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_INT,
                    nvmlValue_t {
                        uiVal: m.power_instant_mw(now),
                    },
                ),
                b::field_id::NVML_FI_DEV_ENERGY => (
                    b::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                    nvmlValue_t {
                        ullVal: m.energy_mj(now),
                    },
                ),
                b::field_id::NVML_FI_DEV_PCIE_COUNT_TX_BYTES => (
                    b::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                    nvmlValue_t {
                        ullVal: m.pcie_bytes(true, now),
                    },
                ),
                b::field_id::NVML_FI_DEV_PCIE_COUNT_RX_BYTES => (
                    b::nvmlValueType_enum_NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                    nvmlValue_t {
                        ullVal: m.pcie_bytes(false, now),
                    },
                ),
                _ => {
                    v.nvmlReturn = NOT_SUPPORTED;
                    continue;
                }
            };
            v.valueType = ty;
            v.value = value;
            v.nvmlReturn = SUCCESS;
        }
        SUCCESS
    })
}

/// Blocks like the real call (about 20 ms, holding the driver lock) and answers KB/s over it.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPcieThroughput(
    device: nvmlDevice_t,
    counter: nvmlPcieUtilCounter_t,
    value: *mut c_uint,
) -> nvmlReturn_t {
    serve_device(Sym::DeviceGetPcieThroughput, device, |d, i, _| {
        let dev = &d.timeline.devices[i];
        let series = match counter {
            b::nvmlPcieUtilCounter_enum_NVML_PCIE_UTIL_TX_BYTES => &dev.pcie_tx_bytes_per_s,
            b::nvmlPcieUtilCounter_enum_NVML_PCIE_UTIL_RX_BYTES => &dev.pcie_rx_bytes_per_s,
            _ => return INVALID_ARGUMENT,
        };
        let block = d.timeline.pcie_throughput_block_us;
        std::thread::sleep(Duration::from_micros(block));
        let now = d.now();
        let kb_per_s = series.mean(now - block as i64, now) / 1000.0;
        put(
            value,
            kb_per_s.round().clamp(0.0, u32::MAX as f64) as c_uint,
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpmQueryDeviceSupport(
    device: nvmlDevice_t,
    gpm_support: *mut nvmlGpmSupport_t,
) -> nvmlReturn_t {
    serve_device(Sym::GpmQueryDeviceSupport, device, |d, i, _| {
        if gpm_support.is_null() {
            return INVALID_ARGUMENT;
        }
        if (*gpm_support).version != b::NVML_GPM_SUPPORT_VERSION {
            return VERSION_MISMATCH;
        }
        (*gpm_support).isSupportedDevice = d.timeline.devices[i].gpm_supported() as c_uint;
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpmSampleAlloc(gpm_sample: *mut nvmlGpmSample_t) -> nvmlReturn_t {
    serve(Sym::GpmSampleAlloc, None, |d, _, _| {
        if gpm_sample.is_null() {
            return INVALID_ARGUMENT;
        }
        gpm_sample.write(d.gpm.alloc());
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpmSampleFree(gpm_sample: nvmlGpmSample_t) -> nvmlReturn_t {
    serve(Sym::GpmSampleFree, None, |d, _, _| {
        if d.gpm.free(gpm_sample) {
            SUCCESS
        } else {
            INVALID_ARGUMENT
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpmSampleGet(
    device: nvmlDevice_t,
    gpm_sample: nvmlGpmSample_t,
) -> nvmlReturn_t {
    serve_device(Sym::GpmSampleGet, device, |d, i, now| {
        if !d.timeline.devices[i].gpm_supported() {
            return NOT_SUPPORTED;
        }
        match d.gpm.get_mut(gpm_sample) {
            Some(slot) => {
                *slot = Some((i, now));
                SUCCESS
            }
            None => INVALID_ARGUMENT,
        }
    })
}

/// Names NVML gives the metrics the fake scripts: (id, short name, long name, unit).
const METRIC_INFO: &[(u32, &CStr, &CStr, &CStr)] = &[
    (
        b::nvmlGpmMetricId_t_NVML_GPM_METRIC_GRAPHICS_UTIL,
        c"GR_UTIL",
        c"Graphics utilization",
        c"%",
    ),
    (
        b::nvmlGpmMetricId_t_NVML_GPM_METRIC_SM_UTIL,
        c"SM_UTIL",
        c"SM utilization",
        c"%",
    ),
    (
        b::nvmlGpmMetricId_t_NVML_GPM_METRIC_SM_OCCUPANCY,
        c"SM_OCCUP",
        c"SM occupancy",
        c"%",
    ),
    (
        b::nvmlGpmMetricId_t_NVML_GPM_METRIC_ANY_TENSOR_UTIL,
        c"TENSOR_UTIL",
        c"Any tensor utilization",
        c"%",
    ),
    (
        b::nvmlGpmMetricId_t_NVML_GPM_METRIC_DRAM_BW_UTIL,
        c"DRAM_BW_UTIL",
        c"DRAM bandwidth utilization",
        c"%",
    ),
    (
        b::nvmlGpmMetricId_t_NVML_GPM_METRIC_PCIE_TX_PER_SEC,
        c"PCIE_TX",
        c"PCIe TX bandwidth",
        c"B/s",
    ),
    (
        b::nvmlGpmMetricId_t_NVML_GPM_METRIC_PCIE_RX_PER_SEC,
        c"PCIE_RX",
        c"PCIe RX bandwidth",
        c"B/s",
    ),
];

/// Metrics between two filled samples of one device, the first older than the second.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpmMetricsGet(metrics_get: *mut nvmlGpmMetricsGet_t) -> nvmlReturn_t {
    serve(Sym::GpmMetricsGet, None, |d, _, _| {
        if metrics_get.is_null() {
            return INVALID_ARGUMENT;
        }
        let req = &mut *metrics_get;
        if req.version != b::NVML_GPM_METRICS_GET_VERSION {
            return VERSION_MISMATCH;
        }
        if req.numMetrics as usize > req.metrics.len() {
            return INVALID_ARGUMENT;
        }
        let s1 = d.gpm.get_mut(req.sample1).and_then(|s| *s);
        let s2 = d.gpm.get_mut(req.sample2).and_then(|s| *s);
        let (Some((dev1, t1)), Some((dev2, t2))) = (s1, s2) else {
            return INVALID_ARGUMENT;
        };
        if dev1 != dev2 || t2 <= t1 {
            return INVALID_ARGUMENT;
        }
        let m = model(d, dev1);
        for metric in req.metrics.iter_mut().take(req.numMetrics as usize) {
            let info = METRIC_INFO.iter().find(|(id, ..)| *id == metric.metricId);
            match (m.gpm_metric(metric.metricId, t1, t2), info) {
                (Some(value), Some(&(_, short, long, unit))) => {
                    metric.value = value;
                    metric.nvmlReturn = SUCCESS;
                    metric.metricInfo.shortName = short.as_ptr().cast_mut();
                    metric.metricInfo.longName = long.as_ptr().cast_mut();
                    metric.metricInfo.unit = unit.as_ptr().cast_mut();
                }
                _ => metric.nvmlReturn = NOT_SUPPORTED,
            }
        }
        SUCCESS
    })
}

#[cfg(test)]
mod abi {
    //! Each export has exactly the signature nvml-wrapper-sys's `NvmlLib` loads it as: the
    //! assignments below do not compile otherwise.
    use super::*;
    use nvml_wrapper_sys::bindings::NvmlLib;

    fn same<F, E>(_: &Result<F, E>, _: F) {}

    #[allow(dead_code)]
    fn signatures_match(lib: &NvmlLib) {
        same(&lib.nvmlInit_v2, nvmlInit_v2);
        same(&lib.nvmlInitWithFlags, nvmlInitWithFlags);
        same(&lib.nvmlShutdown, nvmlShutdown);
        same(&lib.nvmlErrorString, nvmlErrorString);
        same(&lib.nvmlSystemGetDriverVersion, nvmlSystemGetDriverVersion);
        same(&lib.nvmlSystemGetNVMLVersion, nvmlSystemGetNVMLVersion);
        same(
            &lib.nvmlSystemGetCudaDriverVersion,
            nvmlSystemGetCudaDriverVersion,
        );
        same(
            &lib.nvmlSystemGetCudaDriverVersion_v2,
            nvmlSystemGetCudaDriverVersion_v2,
        );
        same(&lib.nvmlDeviceGetCount_v2, nvmlDeviceGetCount_v2);
        same(
            &lib.nvmlDeviceGetHandleByIndex_v2,
            nvmlDeviceGetHandleByIndex_v2,
        );
        same(&lib.nvmlDeviceGetHandleByUUID, nvmlDeviceGetHandleByUUID);
        same(&lib.nvmlDeviceGetName, nvmlDeviceGetName);
        same(&lib.nvmlDeviceGetUUID, nvmlDeviceGetUUID);
        same(&lib.nvmlDeviceGetIndex, nvmlDeviceGetIndex);
        same(&lib.nvmlDeviceGetPciInfo_v3, nvmlDeviceGetPciInfo_v3);
        same(&lib.nvmlDeviceGetArchitecture, nvmlDeviceGetArchitecture);
        same(
            &lib.nvmlDeviceGetCudaComputeCapability,
            nvmlDeviceGetCudaComputeCapability,
        );
        same(&lib.nvmlDeviceGetSamples, nvmlDeviceGetSamples);
        same(
            &lib.nvmlDeviceGetUtilizationRates,
            nvmlDeviceGetUtilizationRates,
        );
        same(
            &lib.nvmlDeviceGetProcessUtilization,
            nvmlDeviceGetProcessUtilization,
        );
        same(
            &lib.nvmlDeviceGetComputeRunningProcesses_v3,
            nvmlDeviceGetComputeRunningProcesses_v3,
        );
        same(
            &lib.nvmlDeviceGetComputeRunningProcesses_v3,
            nvmlDeviceGetComputeRunningProcesses_v2,
        );
        same(&lib.nvmlDeviceGetMemoryInfo, nvmlDeviceGetMemoryInfo);
        same(&lib.nvmlDeviceGetMemoryInfo_v2, nvmlDeviceGetMemoryInfo_v2);
        same(
            &lib.nvmlDeviceGetTotalEnergyConsumption,
            nvmlDeviceGetTotalEnergyConsumption,
        );
        same(&lib.nvmlDeviceGetPowerUsage, nvmlDeviceGetPowerUsage);
        same(&lib.nvmlDeviceGetFieldValues, nvmlDeviceGetFieldValues);
        same(
            &lib.nvmlDeviceGetPcieThroughput,
            nvmlDeviceGetPcieThroughput,
        );
        same(&lib.nvmlGpmQueryDeviceSupport, nvmlGpmQueryDeviceSupport);
        same(&lib.nvmlGpmSampleAlloc, nvmlGpmSampleAlloc);
        same(&lib.nvmlGpmSampleFree, nvmlGpmSampleFree);
        same(&lib.nvmlGpmSampleGet, nvmlGpmSampleGet);
        same(&lib.nvmlGpmMetricsGet, nvmlGpmMetricsGet);
    }
}
