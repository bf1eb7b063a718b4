//! A dcgm-exporter endpoint (`--dcgm-exporter-url`, Prometheus text, usually `:9400/metrics`) as a
//! GPU source: enrichment where NVML lacks a figure (DRAM activity without GPM) and the whole
//! source when NVML is not there.
//!
//! dcgm-exporter collects every 30 s by default (`-c`, its collection interval) and its samples
//! carry no timestamps; between two collections it serves the same values however often it is
//! scraped. So the scraper (every `--dcgm-scrape-interval`) takes a GPU's values as a new
//! *reading* only when they changed, learns the exporter's cadence from the spacing of those
//! changes ([`Cadence`]), and pushes each reading as an interval of one cadence ending when it was
//! first seen, with that cadence as the resolution floor (shorter requests are flagged
//! resolution-limited). The latest reading stays in effect until the next one (a hold of two
//! cadences and a scrape interval): a request between two readings gets it, with its age, instead
//! of nothing (docs/gpu.md says what that trades). Devices are matched to NVML's by `UUID`.
//!
//! The text parser is hand-written and pure (bytes in, samples out, never panics, bad lines
//! counted): the exposition subset dcgm-exporter writes is small (sample lines with labels, `#`
//! comments), and the Rust crates for it either pull a metrics registry along or are unmaintained.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::{Device, Figure, Hub, Memory, Origin};
use crate::capture::clock::WallClock;
use crate::stats::Stats;

/// dcgm-exporter's default collection interval: the cadence assumed until one is learned.
pub const RESOLUTION_NS: u64 = 30_000_000_000;
/// Time between scrapes unless `--dcgm-scrape-interval` says otherwise.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(5);
/// Changes remembered per GPU to learn the cadence from.
const CHANGES_KEPT: usize = 9;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest body read from the endpoint.
const MAX_BODY: usize = 8 << 20;
/// Longest line looked at.
const MAX_LINE: usize = 16 * 1024;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct PromSample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl PromSample<'_> {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of an exposition, and how many lines could not be read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed<'a> {
    pub samples: Vec<PromSample<'a>>,
    pub bad_lines: u64,
}

/// Parses Prometheus text format 0.0.4: `name{k="v",…} value [timestamp]` lines; comments and
/// blank lines are skipped; a malformed line is counted and skipped.
pub fn parse_text(text: &str) -> Parsed<'_> {
    let mut out = Parsed::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match (line.len() <= MAX_LINE).then(|| parse_line(line)).flatten() {
            Some(s) => out.samples.push(s),
            None => out.bad_lines += 1,
        }
    }
    out
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_line(line: &str) -> Option<PromSample<'_>> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return None;
    }
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let key_end = rest
                .char_indices()
                .find(|&(i, c)| !is_name_char(c, i == 0))
                .map(|(i, _)| i)?;
            if key_end == 0 {
                return None;
            }
            let key = &rest[..key_end];
            rest = rest[key_end..].trim_start().strip_prefix('=')?;
            rest = rest.trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            };
            labels.push((key, value));
            rest = rest[end + 1..].trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return None;
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(PromSample {
        name,
        labels,
        value,
    })
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// What dcgm-exporter says about one GPU.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DcgmGpu {
    pub gpu: u32,
    pub uuid: String,
    pub model: String,
    pub pci_bus_id: String,
    /// Figures in the hub's units (ratios 0–1, watts).
    pub figures: BTreeMap<Figure, f64>,
    pub energy_mj: Option<u64>,
    pub fb_used_bytes: Option<u64>,
    pub fb_free_bytes: Option<u64>,
}

const MIB: f64 = 1024.0 * 1024.0;

impl DcgmGpu {
    /// The values of one collection: they all change together when the exporter collects.
    fn fingerprint(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.figures.values().map(|f| f.to_bits()).collect();
        v.extend([self.energy_mj, self.fb_used_bytes, self.fb_free_bytes].map(|x| x.unwrap_or(0)));
        v
    }
}

/// The update cadence of one GPU's values at an exporter, learned from the scrapes at which they
/// changed. Pure.
///
/// Changes are seen only at scrapes, so each spacing is the true cadence rounded up or down to
/// scrape intervals; the cadence is their total over the number of updates they span (a spacing
/// near twice the typical one is an update whose values happened not to change), which averages
/// the rounding out. A cadence shorter than the scrape interval reads as the scrape interval.
#[derive(Clone, Debug, Default)]
pub struct Cadence {
    values: Option<Vec<u64>>,
    last_reading_ns: Option<u64>,
    /// Scrape times at which the values had changed.
    changes: VecDeque<u64>,
}

impl Cadence {
    /// Whether the scrape at `now_ns`, showing `values`, carries a new reading: they changed,
    /// or stayed the same for two cadences (a GPU whose figures are steady).
    pub fn observe(&mut self, now_ns: u64, values: Vec<u64>) -> bool {
        let first = self.values.is_none();
        let changed = self.values.as_ref() != Some(&values);
        self.values = Some(values);
        if changed && !first {
            self.changes.push_back(now_ns);
            while self.changes.len() > CHANGES_KEPT {
                self.changes.pop_front();
            }
        }
        let steady = self
            .last_reading_ns
            .is_some_and(|t| now_ns.saturating_sub(t) >= 2 * self.cadence_ns());
        let fresh = changed || steady;
        if fresh {
            self.last_reading_ns = Some(now_ns);
        }
        fresh
    }

    /// The learned cadence, once two changes were seen.
    pub fn learned_ns(&self) -> Option<u64> {
        let gaps: Vec<u64> = self
            .changes
            .iter()
            .zip(self.changes.iter().skip(1))
            .map(|(a, b)| b.saturating_sub(*a))
            .filter(|&g| g > 0)
            .collect();
        let mut sorted = gaps.clone();
        sorted.sort_unstable();
        let typical = *sorted.get(sorted.len() / 2)?;
        let updates: u64 = gaps
            .iter()
            .map(|&g| ((g as f64 / typical as f64).round() as u64).max(1))
            .sum();
        Some(gaps.iter().sum::<u64>() / updates)
    }

    /// The learned cadence, else dcgm-exporter's default.
    pub fn cadence_ns(&self) -> u64 {
        self.learned_ns().unwrap_or(RESOLUTION_NS)
    }
}

/// What the scraper learns across scrapes: each GPU's cadence, by UUID.
#[derive(Clone, Debug)]
pub struct Learner {
    scrape_ns: u64,
    gpus: BTreeMap<String, Cadence>,
}

impl Learner {
    pub fn new(scrape_every: Duration) -> Self {
        Self {
            scrape_ns: scrape_every.as_nanos().min(u64::MAX as u128) as u64,
            gpus: BTreeMap::new(),
        }
    }

    /// The slowest learned cadence of the GPUs, if any was learned.
    pub fn learned_ns(&self) -> Option<u64> {
        self.gpus.values().filter_map(Cadence::learned_ns).max()
    }

    fn cadence(&mut self, uuid: &str) -> &mut Cadence {
        if !self.gpus.contains_key(uuid) && self.gpus.len() >= 256 {
            self.gpus.clear();
        }
        self.gpus.entry(uuid.to_string()).or_default()
    }
}

/// The GPUs of a scrape, by UUID (samples without a `UUID` label are skipped).
pub fn gpus_from(parsed: &Parsed) -> Vec<DcgmGpu> {
    let mut gpus: BTreeMap<String, DcgmGpu> = BTreeMap::new();
    for s in &parsed.samples {
        let Some(uuid) = s.label("UUID") else {
            continue;
        };
        if !s.value.is_finite() {
            continue;
        }
        let g = gpus.entry(uuid.to_string()).or_insert_with(|| DcgmGpu {
            gpu: s.label("gpu").and_then(|g| g.parse().ok()).unwrap_or(0),
            uuid: uuid.to_string(),
            model: s.label("modelName").unwrap_or_default().to_string(),
            pci_bus_id: s.label("pci_bus_id").unwrap_or_default().to_string(),
            ..DcgmGpu::default()
        });
        let v = s.value;
        let figure = match s.name {
            "DCGM_FI_DEV_GPU_UTIL" => Some((Figure::GpuUtilization, v / 100.0)),
            "DCGM_FI_DEV_MEM_COPY_UTIL" => Some((Figure::MemoryBusy, v / 100.0)),
            "DCGM_FI_PROF_DRAM_ACTIVE" => Some((Figure::DramBandwidth, v)),
            "DCGM_FI_PROF_SM_ACTIVE" => Some((Figure::SmActive, v)),
            "DCGM_FI_PROF_SM_OCCUPANCY" => Some((Figure::SmOccupancy, v)),
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE" => Some((Figure::TensorActive, v)),
            "DCGM_FI_DEV_POWER_USAGE" => Some((Figure::Power, v)),
            _ => None,
        };
        if let Some((f, v)) = figure {
            g.figures.insert(f, v);
        }
        match s.name {
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" if v >= 0.0 => g.energy_mj = Some(v as u64),
            "DCGM_FI_DEV_FB_USED" if v >= 0.0 => g.fb_used_bytes = Some((v * MIB) as u64),
            "DCGM_FI_DEV_FB_FREE" if v >= 0.0 => g.fb_free_bytes = Some((v * MIB) as u64),
            _ => {}
        }
    }
    gpus.into_values().collect()
}

/// Writes a scrape taken at `now_ns` into the hub: figures NVML does not give, for devices
/// matched by UUID; every device and figure when DCGM is the only source (`create`). A GPU whose
/// values did not change since the last scrape adds nothing (the exporter has not collected
/// again: its reading stays in effect).
pub fn apply(hub: &Hub, gpus: &[DcgmGpu], now_ns: u64, create: bool, learner: &mut Learner) {
    let readings: Vec<(&DcgmGpu, u64)> = gpus
        .iter()
        .filter_map(|g| {
            let c = learner.cadence(&g.uuid);
            c.observe(now_ns, g.fingerprint())
                .then(|| (g, c.cadence_ns()))
        })
        .collect();
    let scrape_ns = learner.scrape_ns;
    hub.write(|s| {
        for (g, cadence) in readings {
            let hold = 2 * cadence + scrape_ns;
            if s.device_by_uuid_mut(&g.uuid).is_none() {
                if !create {
                    continue;
                }
                s.devices.push(Device {
                    index: g.gpu,
                    uuid: g.uuid.clone(),
                    name: g.model.clone(),
                    pci_bus_id: g.pci_bus_id.clone(),
                    ..Device::default()
                });
            }
            let Some(d) = s.device_by_uuid_mut(&g.uuid) else {
                continue;
            };
            for (&f, &v) in &g.figures {
                let one_cadence = now_ns.saturating_sub(cadence);
                let start = d
                    .track(f)
                    .and_then(|t| t.series.covered_until())
                    .map_or(one_cadence, |c| c.max(one_cadence));
                d.push(f, Origin::Dcgm, start, now_ns, v);
                d.set_min_resolution(f, Origin::Dcgm, cadence);
                d.set_hold(f, Origin::Dcgm, hold);
            }
            if let Some(e) = g.energy_mj {
                if d.energy_origin.is_none_or(|o| o == Origin::Dcgm) {
                    d.energy.push(now_ns, e);
                    d.energy.set_hold(hold);
                    d.energy_origin = Some(Origin::Dcgm);
                }
            }
            if let (Some(used), Some(free)) = (g.fb_used_bytes, g.fb_free_bytes) {
                if d.memory_origin.is_none_or(|o| o == Origin::Dcgm) {
                    d.memory = Some(Memory {
                        used,
                        total: used + free,
                        at_ns: now_ns,
                    });
                    d.memory_origin = Some(Origin::Dcgm);
                }
            }
        }
    });
}

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("GET {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: the body is over {MAX_BODY} bytes")]
    TooLarge { url: String },
    #[error("{url} has no DCGM_FI_* samples with a UUID label: is it a dcgm-exporter?")]
    NoGpus { url: String },
}

/// One scrape of `url` into the hub; returns the GPUs seen. Lines that do not parse are counted
/// in `stats.gpu_dcgm_lines_malformed` and skipped.
pub async fn scrape_once(
    client: &reqwest::Client,
    url: &str,
    hub: &Hub,
    create: bool,
    learner: &mut Learner,
    stats: &Stats,
) -> Result<usize, ScrapeError> {
    let http = |source| ScrapeError::Http {
        url: url.to_string(),
        source,
    };
    let resp = client.get(url).send().await.map_err(http)?;
    if !resp.status().is_success() {
        return Err(ScrapeError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    if resp.content_length().is_some_and(|l| l > MAX_BODY as u64) {
        return Err(ScrapeError::TooLarge {
            url: url.to_string(),
        });
    }
    let body = resp.bytes().await.map_err(http)?;
    if body.len() > MAX_BODY {
        return Err(ScrapeError::TooLarge {
            url: url.to_string(),
        });
    }
    let text = String::from_utf8_lossy(&body);
    let parsed = parse_text(&text);
    Stats::add(&stats.gpu_dcgm_lines_malformed, parsed.bad_lines);
    let gpus = gpus_from(&parsed);
    if gpus.is_empty() {
        return Err(ScrapeError::NoGpus {
            url: url.to_string(),
        });
    }
    apply(hub, &gpus, WallClock::monotonic_now(), create, learner);
    Ok(gpus.len())
}

/// Scrapes `url` every `every` until `stop`; `create`: DCGM is the only source.
pub async fn run(
    url: String,
    every: Duration,
    hub: Hub,
    create: bool,
    stats: std::sync::Arc<Stats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder().timeout(SCRAPE_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            hub.write(|s| s.status.dcgm_state = Some(format!("failed: {e}")));
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut learner = Learner::new(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let result = scrape_once(&client, &url, &hub, create, &mut learner, &stats).await;
        let cadence = learner.learned_ns();
        hub.write(|s| {
            s.status.dcgm_scrapes += 1;
            s.status.dcgm_scrape_interval_seconds = Some(every.as_secs_f64());
            s.status.dcgm_update_cadence_seconds = cadence.map(|c| c as f64 / 1e9);
            match &result {
                Ok(_) => s.status.dcgm_state = Some("ok".into()),
                Err(e) => {
                    s.status.dcgm_failures += 1;
                    s.status.dcgm_state = Some(format!("failing: {e}"));
                }
            }
            if create {
                s.status.state = if result.is_ok() { "ok" } else { "failing" }.into();
            }
        });
        if let Err(e) = result {
            tracing::debug!(error = %e, "dcgm-exporter scrape failed.");
        }
    }
}

#[cfg(test)]
mod tests;
