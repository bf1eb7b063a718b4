//! Read-only views of the hub: the `GET /gpu` body, GPU gauges for `/metrics` and OTLP
//! (`hw.gpu.*` semantic conventions where they exist), and the source's state for `/status`.

use std::sync::Arc;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue;
use serde_json::{json, Value};

use super::prometheus::{MetricData, MetricFamily, MetricSource, Sample};
use super::status::{GpuStatus, StatusSource};
use crate::capture::clock::WallClock;
use crate::gpu::{Device, Figure, Hub, HubState};

/// The body of `GET /gpu`: the source and its state, every device with its latest figures and
/// their resolution, and what the sampler costs.
pub fn gpu_json(hub: &Hub) -> Value {
    let clock = WallClock::measure();
    hub.read(|s| {
        let devices: Vec<Value> = s
            .devices
            .iter()
            .map(|d| {
                let figures: serde_json::Map<String, Value> = d
                    .tracks
                    .iter()
                    .filter_map(|(f, t)| {
                        let last = t.series.latest()?;
                        Some((
                            f.as_str().to_string(),
                            json!({
                                "value": last.value,
                                "origin": t.origin.as_str(),
                                "end_unix_nano": clock.to_unix_nanos(last.end_ns),
                                "resolution_seconds": t.series.typical_len().map(|r| r as f64 / 1e9),
                                "samples_kept": t.series.len(),
                            }),
                        ))
                    })
                    .collect();
                json!({
                    "index": d.index,
                    "uuid": d.uuid,
                    "name": d.name,
                    "pci_bus_id": d.pci_bus_id,
                    "figures": figures,
                    "energy": d.energy_origin.map(|o| json!({
                        "origin": o.as_str(),
                        "counter_mj": d.energy.last_raw(),
                        "wraps": d.energy.wraps,
                        "watts_last_second": d.energy.recent_rate(1_000_000_000).map(|r| r / 1000.0),
                    })),
                    "memory": d.memory.map(|m| json!({
                        "used_bytes": m.used,
                        "total_bytes": m.total,
                        "origin": d.memory_origin.map(|o| o.as_str()),
                    })),
                    "processes": d.processes,
                    "processes_listed_unix_nano": d.processes_at_ns.map(|t| clock.to_unix_nanos(t)),
                })
            })
            .collect();
        let calls: serde_json::Map<String, Value> = s
            .cost
            .calls
            .iter()
            .map(|(k, c)| {
                (
                    k.to_string(),
                    json!({"calls": c.calls, "errors": c.errors, "mean_us": c.mean_ns() as f64 / 1e3,
                           "max_us": c.max_ns as f64 / 1e3}),
                )
            })
            .collect();
        json!({
            "source": s.status,
            "devices": devices,
            "sampler": {
                "ticks": s.cost.ticks,
                "nvml_seconds": s.cost.nvml_ns as f64 / 1e9,
                "thread_cpu_seconds": s.cost.thread_cpu_ns as f64 / 1e9,
                "running_seconds": s.cost.running_ns as f64 / 1e9,
                "nvml_ms_per_100ms_per_gpu": nvml_ms_per_100ms_per_gpu(s),
                "calls": calls,
            },
        })
    })
}

/// NVML time per 100 ms of running, per GPU, in ms.
pub fn nvml_ms_per_100ms_per_gpu(s: &HubState) -> Option<f64> {
    let n = s.devices.len();
    (s.cost.running_ns > 0 && n > 0)
        .then(|| s.cost.nvml_ns as f64 / 1e6 / (s.cost.running_ns as f64 / 1e8) / n as f64)
}

/// Copies the source's state into the `/status` model.
pub fn publish_status(hub: &Hub, status: &StatusSource) {
    let st = hub.status();
    status.update(|s| {
        s.gpu = GpuStatus {
            state: st.state.clone(),
            reason: st.reason.clone(),
            source: Some(st.source.clone()),
            disabled: st.disabled.clone(),
            devices: Some(hub.read(|h| h.devices.len() as u64)),
        }
    });
}

/// GPU gauges for `/metrics`.
pub struct GpuMetrics {
    pub hub: Hub,
}

fn labels(d: &Device) -> Vec<(String, String)> {
    vec![
        ("hw_id".into(), d.uuid.clone()),
        ("hw_name".into(), d.name.clone()),
        ("gpu".into(), d.index.to_string()),
    ]
}

impl MetricSource for GpuMetrics {
    /// Nothing without a GPU: no empty families on a machine without one.
    fn collect(&self, out: &mut Vec<MetricFamily>) {
        self.hub.read(|s| {
            if s.devices.is_empty() {
                return;
            }
            let gauge =
                |name: &str, help: &str, value: &dyn Fn(&Device) -> Option<f64>| MetricFamily {
                    name: name.to_string(),
                    help: help.to_string(),
                    data: MetricData::Gauge(
                        s.devices
                            .iter()
                            .filter_map(|d| {
                                value(d).map(|v| Sample {
                                    labels: labels(d),
                                    value: v,
                                })
                            })
                            .collect(),
                    ),
                };
            let latest = |f: Figure| {
                move |d: &Device| d.track(f).and_then(|t| t.series.latest()).map(|i| i.value)
            };
            out.push(gauge(
                "hw_gpu_utilization_ratio",
                "Share of time a kernel ran on the GPU (hw.gpu.utilization), latest sample.",
                &latest(Figure::GpuUtilization),
            ));
            out.push(gauge(
                "hw_gpu_memory_usage_bytes",
                "GPU memory used (hw.gpu.memory.usage).",
                &|d| d.memory.map(|m| m.used as f64),
            ));
            out.push(gauge(
                "hw_gpu_memory_limit_bytes",
                "GPU memory installed (hw.gpu.memory.limit).",
                &|d| d.memory.map(|m| m.total as f64),
            ));
            out.push(gauge(
                "hw_gpu_memory_utilization_ratio",
                "GPU memory used over installed (hw.gpu.memory.utilization).",
                &|d| {
                    d.memory
                        .filter(|m| m.total > 0)
                        .map(|m| m.used as f64 / m.total as f64)
                },
            ));
            out.push(gauge(
                "hw_power_watts",
                "GPU power draw (hw.power), latest instant reading.",
                &latest(Figure::Power),
            ));
            out.push(MetricFamily {
                name: "hw_energy_joules_total".into(),
                help: "GPU energy used since the driver loaded (hw.energy).".into(),
                data: MetricData::Counter(
                    s.devices
                        .iter()
                        .filter(|d| d.energy_origin.is_some())
                        .filter_map(|d| {
                            d.energy.last_raw().map(|mj| Sample {
                                labels: labels(d),
                                value: mj as f64 / 1000.0,
                            })
                        })
                        .collect(),
                ),
            });
            out.push(gauge(
                "infertap_gpu_memory_bandwidth_utilization_ratio",
                "DRAM bandwidth used over peak (GPM DRAM_BW_UTIL or DCGM_FI_PROF_DRAM_ACTIVE).",
                &latest(Figure::DramBandwidth),
            ));
            out.push(gauge(
                "infertap_gpu_memory_busy_ratio",
                "Share of time GPU memory was read or written (NVML memory utilisation).",
                &latest(Figure::MemoryBusy),
            ));
            out.push(gauge(
                "infertap_gpu_sm_active_ratio",
                "SM activity (GPM SM_UTIL or DCGM_FI_PROF_SM_ACTIVE).",
                &latest(Figure::SmActive),
            ));
            out.push(gauge(
                "infertap_gpu_tensor_active_ratio",
                "Tensor pipe activity (GPM ANY_TENSOR_UTIL or DCGM_FI_PROF_PIPE_TENSOR_ACTIVE).",
                &latest(Figure::TensorActive),
            ));
            for (name, help, ns) in [
                (
                    "infertap_gpu_sampler_nvml_seconds_total",
                    "Time the GPU sampler spent in NVML calls.",
                    s.cost.nvml_ns,
                ),
                (
                    "infertap_gpu_sampler_cpu_seconds_total",
                    "CPU time of the GPU sampler thread.",
                    s.cost.thread_cpu_ns,
                ),
            ] {
                out.push(MetricFamily {
                    name: name.into(),
                    help: help.into(),
                    data: MetricData::Counter(vec![Sample {
                        labels: Vec::new(),
                        value: ns as f64 / 1e9,
                    }]),
                });
            }
        });
    }
}

/// Registers the GPU gauges with the OTLP meter provider (read from the hub at each export).
pub fn register_otlp(provider: &opentelemetry_sdk::metrics::SdkMeterProvider, hub: &Hub) {
    let meter = provider.meter("infertap.gpu");
    let attrs = |d: &Device| {
        vec![
            KeyValue::new("hw.id", d.uuid.clone()),
            KeyValue::new("hw.name", d.name.clone()),
            KeyValue::new("hw.type", "gpu"),
            KeyValue::new("hw.vendor", "NVIDIA"),
        ]
    };
    type Read = Arc<dyn Fn(&Device) -> Option<f64> + Send + Sync>;
    let gauges: Vec<(&'static str, &'static str, &'static str, Read)> = vec![
        ("hw.gpu.utilization", "1", "Share of time a kernel ran.", {
            Arc::new(|d: &Device| {
                d.track(Figure::GpuUtilization)
                    .and_then(|t| t.series.latest())
                    .map(|i| i.value)
            })
        }),
        ("hw.gpu.memory.usage", "By", "GPU memory used.", {
            Arc::new(|d: &Device| d.memory.map(|m| m.used as f64))
        }),
        ("hw.gpu.memory.limit", "By", "GPU memory installed.", {
            Arc::new(|d: &Device| d.memory.map(|m| m.total as f64))
        }),
        (
            "hw.gpu.memory.utilization",
            "1",
            "GPU memory used over installed.",
            {
                Arc::new(|d: &Device| {
                    d.memory
                        .filter(|m| m.total > 0)
                        .map(|m| m.used as f64 / m.total as f64)
                })
            },
        ),
        ("hw.power", "W", "GPU power draw.", {
            Arc::new(|d: &Device| {
                d.track(Figure::Power)
                    .and_then(|t| t.series.latest())
                    .map(|i| i.value)
            })
        }),
        (
            "infertap.gpu.memory_bandwidth.utilization",
            "1",
            "DRAM bandwidth used over peak.",
            {
                Arc::new(|d: &Device| {
                    d.track(Figure::DramBandwidth)
                        .and_then(|t| t.series.latest())
                        .map(|i| i.value)
                })
            },
        ),
    ];
    for (name, unit, doc, read) in gauges {
        let hub = hub.clone();
        let _g = meter
            .f64_observable_gauge(name)
            .with_unit(unit)
            .with_description(doc)
            .with_callback(move |o| {
                hub.read(|s| {
                    for d in &s.devices {
                        if let Some(v) = read(d) {
                            o.observe(v, &attrs(d));
                        }
                    }
                })
            })
            .build();
    }
    let hub = hub.clone();
    let _c = meter
        .f64_observable_counter("hw.energy")
        .with_unit("J")
        .with_description("GPU energy used since the driver loaded.")
        .with_callback(move |o| {
            hub.read(|s| {
                for d in s.devices.iter().filter(|d| d.energy_origin.is_some()) {
                    if let Some(mj) = d.energy.last_raw() {
                        o.observe(mj as f64 / 1000.0, &attrs(d));
                    }
                }
            })
        })
        .build();
}
