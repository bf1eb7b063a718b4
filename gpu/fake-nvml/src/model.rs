//! What the fake driver reports at a given time: the figures a [`Timeline`] implies. Pure (no
//! clock, no I/O), so tests compute the numbers they expect with the same functions the library
//! answers with.
//!
//! The rules, chosen to behave like the real driver:
//! - The driver records a sample every `sample_period_us`, at timeline times `k × period`, except
//!   in the device's idle windows. Its buffer keeps the last `buffer_samples` recorded samples.
//! - A utilisation or power sample at `t` covers `(t − period, t]` and holds the time-weighted
//!   mean of the series over it, rounded to an integer (% or mW) like the driver's.
//! - The energy counter is `energy_start_mj + ∫ power dt` from time 0, advancing in steps of
//!   `energy_update_us`, modulo `energy_wrap_mj`; the PCIe counters likewise integrate their rates.
//! - `nvmlDeviceGetPowerUsage` is the mean power over the last `power_average_us`; the
//!   `POWER_INSTANT` field the value at the instant.

use crate::timeline::{Device, Process, RelUs, Series, Timeline};

/// The sample types `nvmlDeviceGetSamples` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleKind {
    /// `NVML_GPU_UTILIZATION_SAMPLES`, %.
    GpuUtil,
    /// `NVML_MEMORY_UTILIZATION_SAMPLES`, %.
    MemUtil,
    /// `NVML_TOTAL_POWER_SAMPLES`, mW.
    Power,
}

/// One process's utilisation as `nvmlDeviceGetProcessUtilization` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessUtil {
    pub pid: u32,
    /// The newest sample's time.
    pub t: RelUs,
    pub sm_util: u32,
    pub mem_util: u32,
}

/// The figures of one device of a timeline.
#[derive(Clone, Copy, Debug)]
pub struct DeviceModel<'a> {
    pub timeline: &'a Timeline,
    pub device: &'a Device,
}

impl Timeline {
    /// The model of device `index`; `None` past the last device.
    pub fn device_model(&self, index: usize) -> Option<DeviceModel<'_>> {
        self.devices.get(index).map(|device| DeviceModel {
            timeline: self,
            device,
        })
    }

    pub fn period(&self) -> RelUs {
        self.sample_period_us as RelUs
    }
}

fn round_percent(v: f64) -> u32 {
    v.round().clamp(0.0, 100.0) as u32
}

fn round_u32(v: f64) -> u32 {
    v.round().clamp(0.0, u32::MAX as f64) as u32
}

/// `start + ∫ rate dt` over `[0, t]` (negative t counts backwards), floored at 0, in steps of
/// `step` µs, modulo `wrap`.
fn counter(series: &Series, start: f64, t: RelUs, step: u64, wrap: Option<u64>) -> u64 {
    let v = counter_unwrapped(series, start, t, step);
    let v = v.floor().max(0.0) as u64;
    match wrap {
        Some(w) => v % w,
        None => v,
    }
}

fn counter_unwrapped(series: &Series, start: f64, t: RelUs, step: u64) -> f64 {
    let t = if step > 0 {
        t.div_euclid(step as RelUs) * step as RelUs
    } else {
        t
    };
    let v = if t >= 0 {
        start + series.integral(0, t)
    } else {
        start - series.integral(t, 0)
    };
    v.max(0.0)
}

impl DeviceModel<'_> {
    fn period(&self) -> RelUs {
        self.timeline.period()
    }

    /// Whether the driver records a sample at `t`.
    pub fn records_at(&self, t: RelUs) -> bool {
        !self.device.idle.iter().any(|w| w.contains(t))
    }

    /// The times of the samples in the driver's buffer at `now` that are newer than `after`,
    /// oldest first.
    pub fn buffered_sample_times(&self, now: RelUs, after: Option<RelUs>) -> Vec<RelUs> {
        let p = self.period();
        let cap = self.timeline.buffer_samples as usize;
        let mut times = Vec::new();
        let mut k = now.div_euclid(p);
        while times.len() < cap {
            let t = k * p;
            if after.is_some_and(|a| t <= a) {
                break;
            }
            // Jump over an idle window in one step rather than sample by sample.
            if let Some(w) = self.device.idle.iter().find(|w| w.contains(t)) {
                match w.from_s {
                    None => break,
                    Some(a) => {
                        let a = crate::timeline::secs_to_us(a);
                        k = (a - 1).div_euclid(p);
                        continue;
                    }
                }
            }
            times.push(t);
            k -= 1;
        }
        times.reverse();
        times
    }

    /// The value of a sample of `kind` recorded at `t`.
    pub fn sample_value(&self, kind: SampleKind, t: RelUs) -> u32 {
        let a = t - self.period();
        match kind {
            SampleKind::GpuUtil => round_percent(self.device.gpu_util.mean(a, t)),
            SampleKind::MemUtil => round_percent(self.device.mem_util.mean(a, t)),
            SampleKind::Power => round_u32(self.device.power_mw.mean(a, t)),
        }
    }

    /// What a sampler that kept every recorded sample would report for `[a, b]`: the mean of the
    /// samples' values weighted by how much of the window each covers (a sample at `t` covers
    /// `(t − period, t]`), and the covered share of the window. `None` when no recorded sample
    /// overlaps it. A test oracle, independent of the agent's own alignment code.
    pub fn sampled_mean(&self, kind: SampleKind, a: RelUs, b: RelUs) -> Option<(f64, f64)> {
        let p = self.period();
        let (mut weighted, mut covered) = (0.0, 0i64);
        let mut k = a.div_euclid(p);
        loop {
            let t = k * p;
            if t - p >= b.max(a + 1) {
                break;
            }
            let overlap = t.min(b.max(a + 1)) - (t - p).max(a);
            if overlap > 0 && self.records_at(t) {
                weighted += f64::from(self.sample_value(kind, t)) * overlap as f64;
                covered += overlap;
            }
            k += 1;
        }
        let window = (b - a).max(1);
        (covered > 0).then(|| (weighted / covered as f64, covered as f64 / window as f64))
    }

    /// `nvmlDeviceGetUtilizationRates`: (gpu %, memory %) of the last sample period before `now`.
    pub fn utilization_rates(&self, now: RelUs) -> (u32, u32) {
        let t = now.div_euclid(self.period()) * self.period();
        (
            self.sample_value(SampleKind::GpuUtil, t),
            self.sample_value(SampleKind::MemUtil, t),
        )
    }

    /// The energy counter (mJ) as the driver reports it at `t`: stepped and wrapped.
    pub fn energy_mj(&self, t: RelUs) -> u64 {
        let d = self.device;
        counter(
            &d.power_mw,
            d.energy_start_mj as f64,
            t,
            d.energy_update_us,
            d.energy_wrap_mj,
        )
    }

    /// The energy counter (mJ) at `t`, stepped but not wrapped and not floored to whole mJ: the
    /// energy used between two instants is the difference.
    pub fn energy_mj_unwrapped(&self, t: RelUs) -> f64 {
        let d = self.device;
        counter_unwrapped(&d.power_mw, d.energy_start_mj as f64, t, d.energy_update_us)
    }

    /// `nvmlDeviceGetPowerUsage` (mW): the mean over the averaging window ending at `now`.
    pub fn power_usage_mw(&self, now: RelUs) -> u32 {
        let w = self.timeline.power_average_us as RelUs;
        round_u32(self.device.power_mw.mean(now - w, now))
    }

    /// `NVML_FI_DEV_POWER_INSTANT` (mW).
    pub fn power_instant_mw(&self, now: RelUs) -> u32 {
        round_u32(self.device.power_mw.value_at(now))
    }

    /// PCIe TX (`tx`) or RX byte counter at `t`, wrapped.
    pub fn pcie_bytes(&self, tx: bool, t: RelUs) -> u64 {
        let d = self.device;
        let series = if tx {
            &d.pcie_tx_bytes_per_s
        } else {
            &d.pcie_rx_bytes_per_s
        };
        counter(series, 0.0, t, 0, d.pcie_counter_wrap)
    }

    /// The processes with a context at `t`.
    pub fn processes_at(&self, t: RelUs) -> impl Iterator<Item = &Process> + '_ {
        self.device.processes.iter().filter(move |p| p.alive_at(t))
    }

    /// `nvmlDeviceGetComputeRunningProcesses`: (pid, used bytes) at `t`.
    pub fn running_processes(&self, t: RelUs) -> Vec<(u32, u64)> {
        self.processes_at(t)
            .map(|p| (p.pid, p.used_memory_bytes.value_at(t).max(0.0) as u64))
            .collect()
    }

    /// Memory used by processes at `t` (bytes): the scripted series, else the running processes'.
    pub fn memory_used_bytes(&self, t: RelUs) -> u64 {
        match &self.device.memory_used_bytes {
            Some(s) => s.value_at(t).max(0.0) as u64,
            None => self.running_processes(t).iter().map(|&(_, m)| m).sum(),
        }
    }

    /// `nvmlDeviceGetProcessUtilization`: for each process with a non-zero figure in the buffered
    /// samples newer than `after`, the mean of its per-sample values and the newest sample's time.
    /// `None` when no sample newer than `after` is buffered (the driver's `NOT_FOUND`).
    pub fn process_utilization(
        &self,
        now: RelUs,
        after: Option<RelUs>,
    ) -> Option<Vec<ProcessUtil>> {
        let times = self.buffered_sample_times(now, after);
        if times.is_empty() {
            return None;
        }
        let p = self.period();
        let mut out = Vec::new();
        for proc_ in &self.device.processes {
            let mut n = 0u32;
            let (mut sm, mut mem) = (0u64, 0u64);
            let mut last = None;
            for &t in times.iter().filter(|&&t| proc_.alive_at(t)) {
                n += 1;
                sm += u64::from(round_percent(proc_.sm_util.mean(t - p, t)));
                mem += u64::from(round_percent(proc_.mem_util.mean(t - p, t)));
                last = Some(t);
            }
            let Some(t) = last else { continue };
            let (sm, mem) = (
                (sm as f64 / f64::from(n)).round() as u32,
                (mem as f64 / f64::from(n)).round() as u32,
            );
            if sm > 0 || mem > 0 {
                out.push(ProcessUtil {
                    pid: proc_.pid,
                    t,
                    sm_util: sm,
                    mem_util: mem,
                });
            }
        }
        Some(out)
    }

    /// A GPM metric between two samples taken at `t1 < t2`: the series' mean over `[t1, t2]`.
    /// `None` for a metric the fake does not script.
    pub fn gpm_metric(&self, metric_id: u32, t1: RelUs, t2: RelUs) -> Option<f64> {
        use nvml_wrapper_sys::bindings as b;
        let d = self.device;
        let series = match metric_id {
            b::nvmlGpmMetricId_t_NVML_GPM_METRIC_DRAM_BW_UTIL => &d.dram_bw_util,
            b::nvmlGpmMetricId_t_NVML_GPM_METRIC_SM_UTIL => &d.sm_util,
            b::nvmlGpmMetricId_t_NVML_GPM_METRIC_SM_OCCUPANCY => &d.sm_occupancy,
            b::nvmlGpmMetricId_t_NVML_GPM_METRIC_ANY_TENSOR_UTIL => &d.tensor_util,
            b::nvmlGpmMetricId_t_NVML_GPM_METRIC_GRAPHICS_UTIL => &d.gpu_util,
            b::nvmlGpmMetricId_t_NVML_GPM_METRIC_PCIE_TX_PER_SEC => &d.pcie_tx_bytes_per_s,
            b::nvmlGpmMetricId_t_NVML_GPM_METRIC_PCIE_RX_PER_SEC => &d.pcie_rx_bytes_per_s,
            _ => return None,
        };
        Some(series.mean(t1, t2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{Process, Window};

    fn timeline(device: Device) -> Timeline {
        Timeline {
            sample_period_us: 100_000,
            buffer_samples: 5,
            power_average_us: 1_000_000,
            ..Timeline::new(vec![device])
        }
    }

    #[test]
    fn buffer_holds_the_last_samples_and_filters_by_last_seen() {
        let t = timeline(Device::default());
        let m = t.device_model(0).unwrap();
        assert_eq!(
            m.buffered_sample_times(1_050_000, None),
            vec![600_000, 700_000, 800_000, 900_000, 1_000_000]
        );
        assert_eq!(
            m.buffered_sample_times(1_050_000, Some(800_000)),
            vec![900_000, 1_000_000]
        );
        assert!(m
            .buffered_sample_times(1_050_000, Some(1_000_000))
            .is_empty());
    }

    #[test]
    fn idle_windows_record_nothing_and_older_samples_stay() {
        let t = timeline(Device {
            idle: vec![Window {
                from_s: Some(0.25),
                to_s: None,
            }],
            ..Device::default()
        });
        let m = t.device_model(0).unwrap();
        assert_eq!(
            m.buffered_sample_times(10_000_000, None),
            vec![-200_000, -100_000, 0, 100_000, 200_000]
        );
        assert!(m
            .buffered_sample_times(10_000_000, Some(200_000))
            .is_empty());
        assert_eq!(m.process_utilization(10_000_000, Some(200_000)), None);
    }

    #[test]
    fn samples_are_means_over_their_period() {
        let t = timeline(Device {
            gpu_util: Series::steps(&[(0.0, 0.0), (0.15, 100.0)]),
            ..Device::default()
        });
        let m = t.device_model(0).unwrap();
        // (0.1, 0.2]: half at 0, half at 100.
        assert_eq!(m.sample_value(SampleKind::GpuUtil, 200_000), 50);
        assert_eq!(m.sample_value(SampleKind::GpuUtil, 300_000), 100);
        assert_eq!(m.utilization_rates(250_000), (50, 0));
    }

    #[test]
    fn sampled_mean_weights_samples_by_window_overlap() {
        let t = timeline(Device {
            gpu_util: Series::steps(&[(0.0, 0.0), (0.2, 100.0)]),
            idle: vec![Window {
                from_s: Some(0.45),
                to_s: Some(0.55),
            }],
            ..Device::default()
        });
        let m = t.device_model(0).unwrap();
        // [0.15, 0.35]: sample 0.2 (0) covers 0.05, sample 0.3 (100) 0.1, sample 0.4 (100) 0.05.
        let (mean, coverage) = m
            .sampled_mean(SampleKind::GpuUtil, 150_000, 350_000)
            .unwrap();
        assert!((mean - 75.0).abs() < 1e-9, "{mean}");
        assert_eq!(coverage, 1.0);
        // The sample at 0.5 was not recorded: half of [0.4, 0.6] is uncovered.
        let (_, coverage) = m
            .sampled_mean(SampleKind::GpuUtil, 400_000, 600_000)
            .unwrap();
        assert!((coverage - 0.5).abs() < 1e-9, "{coverage}");
        assert_eq!(m.sampled_mean(SampleKind::GpuUtil, 410_000, 490_000), None);
        // A window shorter than a sample takes that sample's value.
        let (mean, _) = m
            .sampled_mean(SampleKind::GpuUtil, 250_000, 250_010)
            .unwrap();
        assert_eq!(mean, 100.0);
    }

    #[test]
    fn energy_integrates_power_steps_and_wraps() {
        let t = timeline(Device {
            power_mw: Series::steps(&[(0.0, 100_000.0), (2.0, 300_000.0)]),
            energy_start_mj: 1_000,
            energy_wrap_mj: Some(500_000),
            energy_update_us: 50_000,
            ..Device::default()
        });
        let m = t.device_model(0).unwrap();
        assert_eq!(m.energy_mj(1_000_000), 101_000);
        // Stepped: 1.03 s reads as 1.0 s.
        assert_eq!(m.energy_mj(1_030_000), 101_000);
        // 201 J at 2 s, then 300 J/s: 501 J at 3 s wraps to 1 J.
        assert_eq!(m.energy_mj(3_000_000), 1_000);
        assert_eq!(m.energy_mj_unwrapped(3_000_000), 501_000.0);
        assert_eq!(m.power_usage_mw(2_500_000), 200_000);
        assert_eq!(m.power_instant_mw(2_500_000), 300_000);
    }

    #[test]
    fn process_utilisation_averages_since_last_seen_and_skips_zero() {
        let t = timeline(Device {
            processes: vec![
                Process {
                    pid: 7,
                    sm_util: Series::steps(&[(0.0, 10.0), (0.35, 70.0)]),
                    used_memory_bytes: Series::constant(1000.0),
                    ..Process::default()
                },
                Process {
                    pid: 8,
                    start_s: Some(0.0),
                    ..Process::default()
                },
            ],
            ..Device::default()
        });
        let m = t.device_model(0).unwrap();
        let got = m.process_utilization(450_000, Some(200_000)).unwrap();
        // Samples at 0.3 (10) and 0.4 ((0.3,0.35]:10, (0.35,0.4]:70 → 40): mean 25.
        assert_eq!(
            got,
            vec![ProcessUtil {
                pid: 7,
                t: 400_000,
                sm_util: 25,
                mem_util: 0
            }]
        );
        assert_eq!(m.running_processes(450_000), vec![(7, 1000), (8, 0)]);
        assert_eq!(m.memory_used_bytes(450_000), 1000);
    }
}
