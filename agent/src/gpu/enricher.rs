//! Each finished request's GPU figures over its own window `[start, end]`, on the GPUs that serve
//! its process, as span attributes (`infertap.gpu.*`, documented in docs/spans.md).
//!
//! A span waits (bounded by [`MAX_WAIT_NS`]) until the samples of its GPUs cover its end: NVML
//! hands out a utilisation sample some 100–300 ms after the time it describes. A source whose
//! readings are held (dcgm-exporter, every 30 s) is not waited for: the span takes the reading in
//! effect, with its age (`infertap.gpu.sample_age`) and the measured coverage.
//!
//! The hub's lock is held only to copy out what the request's window reads ([`snapshot`]:
//! bounded by the window's samples); the shares, which loop over the chunk times of every
//! request in flight, are computed on the copy.
//!
//! Several GPUs (tensor parallelism): utilisation and bandwidth are the mean of the GPUs' means,
//! the max is over all of them, coverage the lowest, resolution the coarsest; energy, memory,
//! busy time and the shares are summed.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::placement::{read_process_tree, read_visible_devices, DeviceRef, Visible};
use super::series::WindowStat;
use super::share::{fair_share, Activity};
use super::{Figure, Hub, HubState};
use crate::capture::clock::WallClock;
use crate::conn::{ConnId, Finished};
use crate::enrich::{InFlight, NoneInFlight, SpanEnricher};
use crate::schema::attr;
use crate::trace::span::AttrValue;
use crate::trace::Built;

/// Longest a span waits for GPU samples to cover its end.
pub const MAX_WAIT_NS: u64 = 1_000_000_000;
/// How long finished requests are remembered for the shares of requests that overlap them.
const HISTORY_NS: u64 = super::series::MAX_AGE_NS;
const HISTORY_MAX_PER_PROCESS: usize = 4096;
/// A process with a per-process sample this close to a request's end is expected to have one
/// after it too (the driver reports only processes that used the GPU).
const ACTIVE_PROCESS_NS: u64 = 2_000_000_000;
/// How long a process's GPUs are cached.
const PLACEMENT_TTL_NS: u64 = 2_000_000_000;

/// How the GPUs of a process were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// The process (or a descendant) is in NVML's running-process list of the GPU.
    NvmlProcesses,
    /// From the process's `CUDA_VISIBLE_DEVICES` / `NVIDIA_VISIBLE_DEVICES`.
    VisibleDevices,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::NvmlProcesses => "nvml_processes",
            Attribution::VisibleDevices => "visible_devices",
        }
    }
}

#[derive(Clone, Debug)]
struct Placement {
    at_ns: u64,
    tree: BTreeSet<u32>,
    /// Positions in `HubState::devices`.
    gpus: Vec<usize>,
    how: Option<Attribution>,
}

/// The pipeline's GPU enricher.
pub struct GpuEnricher {
    hub: Hub,
    /// `--gpu-hour-cost`: the price of one GPU-hour, for the cost attributes.
    gpu_hour_cost: Option<f64>,
    history: HashMap<u32, VecDeque<(ConnId, Activity)>>,
    placements: HashMap<u32, Placement>,
}

impl GpuEnricher {
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            gpu_hour_cost: None,
            history: HashMap::new(),
            placements: HashMap::new(),
        }
    }

    /// Price GPU time at `cost` per GPU-hour (the cost attributes).
    pub fn with_gpu_hour_cost(mut self, cost: Option<f64>) -> Self {
        self.gpu_hour_cost = cost.filter(|c| c.is_finite() && *c >= 0.0);
        self
    }

    fn placement(&mut self, pid: u32, now_ns: u64) -> Placement {
        if let Some(p) = self.placements.get(&pid) {
            if now_ns.saturating_sub(p.at_ns) < PLACEMENT_TTL_NS {
                return p.clone();
            }
        }
        if self.hub.note_interest(pid) {
            tracing::debug!(pid, "GPU: new process of interest.");
        }
        let tree = read_process_tree(pid);
        let visible = read_visible_devices(pid);
        let (gpus, how) = self.hub.read(|s| place(s, &tree, visible.as_ref()));
        let p = Placement {
            at_ns: now_ns,
            tree,
            gpus,
            how,
        };
        if self.placements.len() > 1024 {
            self.placements.clear();
        }
        self.placements.insert(pid, p.clone());
        p
    }
}

/// The GPUs of a process tree: NVML's process lists first, else the visible-devices setting.
pub fn place(
    s: &HubState,
    tree: &BTreeSet<u32>,
    visible: Option<&Visible>,
) -> (Vec<usize>, Option<Attribution>) {
    let listed: Vec<usize> = s
        .devices
        .iter()
        .enumerate()
        .filter(|(_, d)| d.processes.iter().any(|p| tree.contains(&p.pid)))
        .map(|(i, _)| i)
        .collect();
    if !listed.is_empty() {
        return (listed, Some(Attribution::NvmlProcesses));
    }
    let from_env: Vec<usize> = match visible {
        Some(Visible::All) => (0..s.devices.len()).collect(),
        Some(Visible::List(refs)) => refs
            .iter()
            .filter_map(|r| {
                s.devices.iter().position(|d| match r {
                    DeviceRef::Index(i) => d.index == *i,
                    DeviceRef::Uuid(u) => d.uuid == *u,
                })
            })
            .collect(),
        Some(Visible::None) | None => Vec::new(),
    };
    if from_env.is_empty() {
        (Vec::new(), None)
    } else {
        (from_env, Some(Attribution::VisibleDevices))
    }
}

/// A request's GPU figures, before they become attributes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestGpu {
    pub uuids: Vec<String>,
    pub attribution: Option<Attribution>,
    pub source: Option<&'static str>,
    pub util_mean: Option<f64>,
    pub util_max: Option<f64>,
    pub coverage: f64,
    pub resolution_ns: Option<u64>,
    pub resolution_limited: bool,
    /// How far the newest utilisation reading used ends before the request's end (held
    /// readings), the oldest over the GPUs.
    pub sample_age_ns: Option<u64>,
    pub bandwidth_mean: Option<f64>,
    pub bandwidth_source: Option<&'static str>,
    pub bandwidth_max: Option<f64>,
    pub sm_active_mean: Option<f64>,
    pub sm_occupancy_mean: Option<f64>,
    pub tensor_active_mean: Option<f64>,
    /// The process tree's own SM utilisation (NVML per-process samples, summed over its PIDs).
    pub process_util_mean: Option<f64>,
    pub energy_j: Option<f64>,
    pub energy_coverage: Option<f64>,
    pub process_memory_bytes: Option<u64>,
    pub device_memory_bytes: Option<u64>,
    pub device_memory_limit_bytes: Option<u64>,
    pub share_busy_s: Option<f64>,
    pub share_energy_j: Option<f64>,
    pub concurrent: usize,
    /// The part of the shares before the first content chunk (the prefill; a stream only).
    pub prefill_busy_s: Option<f64>,
    pub prefill_energy_j: Option<f64>,
    /// The request's fair share of GPU wall time (the share rule with every interval busy):
    /// what a GPU-hour price is paid for.
    pub share_gpu_s: Option<f64>,
}

/// A copy of the devices `gpus` as far as the figures over `[a, b]` read them (the process series
/// of `tree` only), indexed `0..` in the order of `gpus` (devices that are gone left out): taken
/// under the hub's lock, bounded by the samples in the window.
pub fn snapshot(s: &HubState, gpus: &[usize], tree: &BTreeSet<u32>, a: u64, b: u64) -> HubState {
    HubState {
        devices: gpus
            .iter()
            .filter_map(|&g| s.devices.get(g))
            .map(|d| d.clip(a, b, tree))
            .collect(),
        ..HubState::default()
    }
}

fn mean_of(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The figures of one request over `target`'s window on `gpus`, with `others` the rest of its
/// process's requests (finished or in flight). Pure.
pub fn figures(
    s: &HubState,
    gpus: &[usize],
    tree: &BTreeSet<u32>,
    target: &Activity,
    others: &[Activity],
) -> RequestGpu {
    let (a, b) = (target.start_ns, target.end_ns.max(target.start_ns));
    let mut out = RequestGpu {
        coverage: 1.0,
        ..RequestGpu::default()
    };
    let (mut means, mut bw, mut sm, mut occ, mut tensor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut energy, mut e_cov, mut busy, mut share_e) = (None::<f64>, None::<f64>, None, None);
    let (mut pmem, mut dmem, mut dlim) = (None::<u64>, None::<u64>, None::<u64>);
    let mut any_util = false;
    let mut proc_util = Vec::new();
    for &g in gpus {
        let Some(d) = s.devices.get(g) else { continue };
        out.uuids.push(d.uuid.clone());
        if let Some(t) = d.track(Figure::GpuUtilization) {
            let w: WindowStat = t.series.window(a, b);
            any_util = true;
            out.source.get_or_insert(t.origin.as_str());
            if let Some(m) = w.mean {
                means.push(m);
            }
            out.util_max = match (out.util_max, w.max) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
            out.coverage = out.coverage.min(w.coverage());
            out.resolution_ns = out.resolution_ns.max(w.resolution_ns);
            out.resolution_limited |= w.resolution_limited();
            out.sample_age_ns = out.sample_age_ns.max(w.age_ns);
            let util = t.series.in_effect(a, b);
            let energy_counter = d.energy_origin.map(|_| &d.energy);
            let sh = fair_share(target, others, &util, energy_counter);
            busy = Some(busy.unwrap_or(0.0) + sh.busy_s);
            if let Some(e) = sh.energy {
                share_e = Some(share_e.unwrap_or(0.0) + e / 1000.0);
            }
            // The same rule over the window cut at the first content chunk: the prefill.
            if let Some(&first) = target.chunk_ns.first().filter(|&&t| t >= a && t <= b) {
                let prefill = Activity {
                    end_ns: first,
                    ..target.clone()
                };
                let pre = fair_share(&prefill, others, &util, energy_counter);
                out.prefill_busy_s = Some(out.prefill_busy_s.unwrap_or(0.0) + pre.busy_s);
                if let Some(e) = pre.energy {
                    out.prefill_energy_j = Some(out.prefill_energy_j.unwrap_or(0.0) + e / 1000.0);
                }
            }
            let wall: Vec<_> = util
                .iter()
                .map(|i| super::series::Interval { value: 1.0, ..*i })
                .collect();
            let occupied = fair_share(target, others, &wall, None);
            out.share_gpu_s = Some(out.share_gpu_s.unwrap_or(0.0) + occupied.busy_s);
            out.concurrent = out.concurrent.max(sh.max_concurrent);
        }
        // Memory bandwidth: DRAM bandwidth over peak where the GPU has it (GPM, DCGM's
        // profiling field); else the memory-busy samples every NVML GPU has (A100, L4, T4…):
        // the share of time memory was read or written, the bandwidth signal those GPUs give.
        let dram = d
            .track(Figure::DramBandwidth)
            .map(|t| (t, t.series.window(a, b), t.origin.as_str()))
            .filter(|(_, w, _)| w.mean.is_some());
        let busy = || {
            let t = d.track(Figure::MemoryBusy)?;
            let w = t.series.window(a, b);
            w.mean?;
            let source = match t.origin {
                super::Origin::Dcgm => "dcgm_mem_copy_util",
                _ => "nvml_memory_busy",
            };
            Some((t, w, source))
        };
        if let Some((_, w, source)) = dram.or_else(busy) {
            bw.extend(w.mean);
            out.bandwidth_max = match (out.bandwidth_max, w.max) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
            out.bandwidth_source.get_or_insert(source);
        }
        for (f, acc) in [
            (Figure::SmActive, &mut sm),
            (Figure::SmOccupancy, &mut occ),
            (Figure::TensorActive, &mut tensor),
        ] {
            if let Some(m) = d.track(f).and_then(|t| t.series.window(a, b).mean) {
                acc.push(m);
            }
        }
        let per_pid: Vec<f64> = d
            .process_sm
            .iter()
            .filter(|(pid, _)| tree.contains(pid))
            .filter_map(|(_, series)| series.window(a, b).mean)
            .collect();
        if !per_pid.is_empty() {
            proc_util.push(per_pid.iter().sum::<f64>().min(1.0));
        }
        if d.energy_origin.is_some() {
            if let Some(w) = d.energy.window(a, b) {
                energy = Some(energy.unwrap_or(0.0) + w.increase / 1000.0);
                let c = if w.window_ns == 0 {
                    1.0
                } else {
                    w.covered_ns as f64 / w.window_ns as f64
                };
                e_cov = Some(e_cov.map_or(c, |x: f64| x.min(c)));
            }
        }
        let mine: u64 = d
            .processes
            .iter()
            .filter(|p| tree.contains(&p.pid))
            .filter_map(|p| p.used_bytes)
            .sum();
        if d.processes.iter().any(|p| tree.contains(&p.pid)) {
            pmem = Some(pmem.unwrap_or(0) + mine);
        }
        if let Some(m) = d.memory {
            dmem = Some(dmem.unwrap_or(0) + m.used);
            dlim = Some(dlim.unwrap_or(0) + m.total);
        }
    }
    if !any_util {
        out.coverage = 0.0;
    }
    out.util_mean = mean_of(&means);
    out.bandwidth_mean = mean_of(&bw);
    out.sm_active_mean = mean_of(&sm);
    out.sm_occupancy_mean = mean_of(&occ);
    out.tensor_active_mean = mean_of(&tensor);
    out.process_util_mean = mean_of(&proc_util);
    out.energy_j = energy;
    out.energy_coverage = e_cov;
    out.process_memory_bytes = pmem;
    out.device_memory_bytes = dmem;
    out.device_memory_limit_bytes = dlim;
    out.share_busy_s = busy;
    out.share_energy_j = share_e;
    out
}

impl RequestGpu {
    /// The span attributes (names in docs/spans.md).
    pub fn attributes(&self) -> Vec<(&'static str, AttrValue)> {
        let mut a: Vec<(&'static str, AttrValue)> = Vec::new();
        a.push((
            attr::INFERTAP_GPU_IDS,
            AttrValue::StrArray(self.uuids.clone()),
        ));
        if let Some(h) = self.attribution {
            a.push((
                attr::INFERTAP_GPU_ATTRIBUTION,
                AttrValue::Str(h.as_str().into()),
            ));
        }
        if let Some(s) = self.source {
            a.push((attr::INFERTAP_GPU_SOURCE, AttrValue::Str(s.into())));
        }
        let f = |a: &mut Vec<_>, k, v: Option<f64>| {
            if let Some(v) = v {
                a.push((k, AttrValue::F64(v)));
            }
        };
        f(&mut a, attr::INFERTAP_GPU_UTILIZATION_MEAN, self.util_mean);
        f(&mut a, attr::INFERTAP_GPU_UTILIZATION_MAX, self.util_max);
        a.push((attr::INFERTAP_GPU_COVERAGE, AttrValue::F64(self.coverage)));
        f(
            &mut a,
            attr::INFERTAP_GPU_SAMPLE_RESOLUTION,
            self.resolution_ns.map(|r| r as f64 / 1e9),
        );
        f(
            &mut a,
            attr::INFERTAP_GPU_SAMPLE_AGE,
            self.sample_age_ns.map(|r| r as f64 / 1e9),
        );
        a.push((
            attr::INFERTAP_GPU_RESOLUTION_LIMITED,
            AttrValue::Bool(self.resolution_limited),
        ));
        f(
            &mut a,
            attr::INFERTAP_GPU_MEMORY_BANDWIDTH_UTILIZATION,
            self.bandwidth_mean,
        );
        f(
            &mut a,
            attr::INFERTAP_GPU_MEMORY_BANDWIDTH_UTILIZATION_MAX,
            self.bandwidth_max,
        );
        if let Some(s) = self.bandwidth_source {
            a.push((
                attr::INFERTAP_GPU_MEMORY_BANDWIDTH_SOURCE,
                AttrValue::Str(s.into()),
            ));
        }
        f(&mut a, attr::INFERTAP_GPU_SM_ACTIVE, self.sm_active_mean);
        f(
            &mut a,
            attr::INFERTAP_GPU_SM_OCCUPANCY,
            self.sm_occupancy_mean,
        );
        f(
            &mut a,
            attr::INFERTAP_GPU_TENSOR_ACTIVE,
            self.tensor_active_mean,
        );
        f(
            &mut a,
            attr::INFERTAP_GPU_PROCESS_UTILIZATION,
            self.process_util_mean,
        );
        f(&mut a, attr::INFERTAP_GPU_ENERGY, self.energy_j);
        f(
            &mut a,
            attr::INFERTAP_GPU_ENERGY_COVERAGE,
            self.energy_coverage,
        );
        let i = |a: &mut Vec<_>, k, v: Option<u64>| {
            if let Some(v) = v {
                a.push((k, AttrValue::I64(v.min(i64::MAX as u64) as i64)));
            }
        };
        i(
            &mut a,
            attr::INFERTAP_GPU_PROCESS_MEMORY_USAGE,
            self.process_memory_bytes,
        );
        i(
            &mut a,
            attr::INFERTAP_GPU_MEMORY_USAGE,
            self.device_memory_bytes,
        );
        i(
            &mut a,
            attr::INFERTAP_GPU_MEMORY_LIMIT,
            self.device_memory_limit_bytes,
        );
        f(
            &mut a,
            attr::INFERTAP_GPU_SHARE_BUSY_TIME,
            self.share_busy_s,
        );
        f(&mut a, attr::INFERTAP_GPU_SHARE_ENERGY, self.share_energy_j);
        let decode = |total: Option<f64>, pre: Option<f64>| Some((total? - pre?).max(0.0));
        for (key, v) in [
            (
                attr::INFERTAP_GPU_SHARE_BUSY_TIME_PREFILL,
                self.prefill_busy_s,
            ),
            (
                attr::INFERTAP_GPU_SHARE_BUSY_TIME_DECODE,
                decode(self.share_busy_s, self.prefill_busy_s),
            ),
            (
                attr::INFERTAP_GPU_SHARE_ENERGY_PREFILL,
                self.prefill_energy_j,
            ),
            (
                attr::INFERTAP_GPU_SHARE_ENERGY_DECODE,
                decode(self.share_energy_j, self.prefill_energy_j),
            ),
            (attr::INFERTAP_GPU_SHARE_GPU_TIME, self.share_gpu_s),
        ] {
            f(&mut a, key, v);
        }
        if self.concurrent > 0 {
            a.push((
                attr::INFERTAP_GPU_SHARE_CONCURRENT_REQUESTS,
                AttrValue::I64(self.concurrent as i64),
            ));
        }
        a
    }
}

fn activity(f: &Finished) -> Activity {
    let (start_ns, end_ns, chunks) = f.work.times();
    let (later_chunks, later_until_ns) = f.work.later_chunks();
    Activity {
        start_ns,
        end_ns: end_ns.max(start_ns),
        chunk_ns: chunks.to_vec(),
        later_chunks,
        later_until_ns,
    }
}

impl SpanEnricher for GpuEnricher {
    fn enrich(&mut self, finished: &Finished, clock: &WallClock, out: &mut Built) {
        self.enrich_in_context(finished, clock, &NoneInFlight, out);
    }

    fn observe(&mut self, finished: &Finished) {
        if !finished.meta.server {
            return;
        }
        let pid = finished.meta.pid;
        let h = self.history.entry(pid).or_default();
        h.push_back((finished.conn, activity(finished)));
        let horizon = finished.work.times().1.saturating_sub(HISTORY_NS);
        while h.len() > HISTORY_MAX_PER_PROCESS
            || h.front().is_some_and(|(_, a)| a.end_ns < horizon)
        {
            h.pop_front();
        }
        if self.history.len() > 1024 {
            self.history
                .retain(|_, h| h.back().is_some_and(|(_, a)| a.end_ns >= horizon));
        }
    }

    fn ready(&self, finished: &Finished, now_ns: u64) -> bool {
        let end = finished.work.times().1;
        if !finished.meta.server || now_ns >= end.saturating_add(MAX_WAIT_NS) {
            return true;
        }
        let Some(p) = self.placements.get(&finished.meta.pid) else {
            // Not placed yet: wait for the samples of every device.
            return self.hub.read(|s| all_cover(s, None, &BTreeSet::new(), end));
        };
        self.hub.read(|s| all_cover(s, Some(&p.gpus), &p.tree, end))
    }

    fn enrich_in_context(
        &mut self,
        finished: &Finished,
        _clock: &WallClock,
        in_flight: &dyn InFlight,
        out: &mut Built,
    ) {
        if !finished.meta.server || self.hub.read(|s| s.devices.is_empty()) {
            return;
        }
        let pid = finished.meta.pid;
        let p = self.placement(pid, WallClock::monotonic_now());
        if p.gpus.is_empty() {
            out.span.attributes.push((
                attr::INFERTAP_GPU_ATTRIBUTION.into(),
                AttrValue::Str("none".into()),
            ));
            return;
        }
        let target = activity(finished);
        let mut others: Vec<Activity> = self
            .history
            .get(&pid)
            .into_iter()
            .flatten()
            .filter(|(conn, a)| {
                !(*conn == finished.conn && a.start_ns == target.start_ns)
                    && a.end_ns >= target.start_ns
                    && a.start_ns <= target.end_ns
            })
            .map(|(_, a)| a.clone())
            .collect();
        for (start, chunks) in in_flight.in_flight_chunks(pid, target.start_ns) {
            if start <= target.end_ns {
                others.push(Activity {
                    start_ns: start,
                    end_ns: u64::MAX,
                    chunk_ns: chunks,
                    // In flight, only the kept chunk times are visible (the first 4,096).
                    later_chunks: 0,
                    later_until_ns: 0,
                });
            }
        }
        // Copy out under the lock; compute (a loop over every overlapping request's chunks) on
        // the copy.
        let (a, b) = (target.start_ns, target.end_ns.max(target.start_ns));
        let window = self.hub.read(|s| snapshot(s, &p.gpus, &p.tree, a, b));
        let all: Vec<usize> = (0..window.devices.len()).collect();
        let mut r = figures(&window, &all, &p.tree, &target, &others);
        r.attribution = p.how;
        for (k, v) in r.attributes() {
            out.span.attributes.push((k.into(), v));
        }
        for (k, v) in per_token(&r, out.summary.output_tokens, self.gpu_hour_cost) {
            if k == attr::INFERTAP_GPU_ENERGY_PER_OUTPUT_TOKEN {
                if let AttrValue::F64(j) = v {
                    out.summary.energy_per_output_token_j = Some(j);
                }
            }
            out.span.attributes.push((k.into(), v));
        }
    }
}

/// What a request's GPU share costs per output token: joules per token, and with a GPU-hour
/// price the cost of its GPU time and per million output tokens; whether the figures are
/// estimates (the samples did not cover the window, were coarser than it, or the energy
/// counter did not cover it).
pub fn per_token(
    r: &RequestGpu,
    output_tokens: Option<i64>,
    gpu_hour_cost: Option<f64>,
) -> Vec<(&'static str, AttrValue)> {
    let mut a = Vec::new();
    if r.share_busy_s.is_none() {
        return a;
    }
    let tokens = output_tokens.filter(|n| *n > 0).map(|n| n as f64);
    if let (Some(e), Some(n)) = (r.share_energy_j, tokens) {
        a.push((
            attr::INFERTAP_GPU_ENERGY_PER_OUTPUT_TOKEN,
            AttrValue::F64(e / n),
        ));
    }
    if let (Some(price), Some(gpu_s)) = (gpu_hour_cost, r.share_gpu_s) {
        let cost = gpu_s / 3600.0 * price;
        a.push((attr::INFERTAP_GPU_SHARE_COST, AttrValue::F64(cost)));
        if let Some(n) = tokens {
            a.push((
                attr::INFERTAP_COST_PER_MILLION_OUTPUT_TOKENS,
                AttrValue::F64(cost / n * 1e6),
            ));
        }
    }
    let estimated =
        r.coverage < 1.0 || r.resolution_limited || r.energy_coverage.is_some_and(|c| c < 1.0);
    a.push((
        attr::INFERTAP_GPU_SHARE_ESTIMATED,
        AttrValue::Bool(estimated),
    ));
    a
}

/// Whether the utilisation and energy samples of `gpus` (all devices when `None`), and the
/// per-process samples of `tree` that are still coming, reach `end`.
fn all_cover(s: &HubState, gpus: Option<&[usize]>, tree: &BTreeSet<u32>, end: u64) -> bool {
    // A held series (a source that reports seldom) is not waited for.
    let covers = |d: &super::Device| {
        let util = d.track(Figure::GpuUtilization).is_none_or(|t| {
            t.series.hold_ns() > 0 || t.series.covered_until().is_some_and(|c| c >= end)
        });
        let energy = d.energy_origin.is_none()
            || d.energy.hold_ns() > 0
            || d.energy.covered_until().is_some_and(|c| c >= end);
        let processes = d
            .process_sm
            .iter()
            .filter(|(pid, _)| tree.contains(pid))
            .filter_map(|(_, series)| series.covered_until())
            .filter(|&c| c + ACTIVE_PROCESS_NS >= end)
            .all(|c| c >= end);
        util && energy && processes
    };
    match gpus {
        Some(g) => g.iter().filter_map(|&i| s.devices.get(i)).all(covers),
        None => s.devices.iter().all(covers),
    }
}

#[cfg(test)]
mod tests;
