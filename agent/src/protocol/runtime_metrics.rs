//! A model server's own Prometheus metrics, read from the scrapes of its `/metrics` that cross a
//! traced socket (no traffic of our own): the few gauges and counters that say how loaded the
//! engine was — requests running and waiting, KV-cache usage, preemptions, prefix-cache hits.
//!
//! Names are the servers' own, kept as they are: vLLM (≥ 0.10: `vllm:kv_cache_usage_perc`; before
//! it `vllm:gpu_cache_usage_perc`, both read), SGLang (`sglang:*`), llama.cpp (`llamacpp:*`).
//! Series of one name (per engine, per model) are summed, the KV-cache usage taken as their max.
//!
//! Pure and bounded: the text exposition is read line by line as it streams past; only the line
//! in progress is held (at most [`LINE_MAX`] bytes, longer lines are skipped). Numbers only.

/// Longest exposition line read; longer ones (label sets of hostile size) are skipped whole.
pub const LINE_MAX: usize = 4096;

/// Which server's names a sample was read in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    #[default]
    Vllm,
    Sglang,
    LlamaCpp,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Sglang => "sglang",
            Engine::LlamaCpp => "llama.cpp",
        }
    }
}

/// What one scrape said.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeSample {
    pub engine: Engine,
    pub requests_running: Option<f64>,
    pub requests_waiting: Option<f64>,
    /// 0–1.
    pub kv_cache_usage: Option<f64>,
    pub preemptions_total: Option<f64>,
    pub prefix_cache_hits_total: Option<f64>,
    pub prefix_cache_queries_total: Option<f64>,
}

impl RuntimeSample {
    fn any(&self) -> bool {
        self.requests_running.is_some()
            || self.requests_waiting.is_some()
            || self.kv_cache_usage.is_some()
            || self.preemptions_total.is_some()
            || self.prefix_cache_queries_total.is_some()
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Running,
    Waiting,
    KvUsage,
    Preemptions,
    PrefixHits,
    PrefixQueries,
}

/// The metric names read, and where each goes.
const NAMES: &[(&str, Engine, Slot)] = &[
    ("vllm:num_requests_running", Engine::Vllm, Slot::Running),
    ("vllm:num_requests_waiting", Engine::Vllm, Slot::Waiting),
    ("vllm:kv_cache_usage_perc", Engine::Vllm, Slot::KvUsage),
    ("vllm:gpu_cache_usage_perc", Engine::Vllm, Slot::KvUsage),
    (
        "vllm:num_preemptions_total",
        Engine::Vllm,
        Slot::Preemptions,
    ),
    (
        "vllm:prefix_cache_hits_total",
        Engine::Vllm,
        Slot::PrefixHits,
    ),
    (
        "vllm:prefix_cache_queries_total",
        Engine::Vllm,
        Slot::PrefixQueries,
    ),
    ("sglang:num_running_reqs", Engine::Sglang, Slot::Running),
    ("sglang:num_queue_reqs", Engine::Sglang, Slot::Waiting),
    ("sglang:token_usage", Engine::Sglang, Slot::KvUsage),
    (
        "llamacpp:requests_processing",
        Engine::LlamaCpp,
        Slot::Running,
    ),
    (
        "llamacpp:requests_deferred",
        Engine::LlamaCpp,
        Slot::Waiting,
    ),
    (
        "llamacpp:kv_cache_usage_ratio",
        Engine::LlamaCpp,
        Slot::KvUsage,
    ),
];

/// Reads a `/metrics` response body fed in pieces.
#[derive(Clone, Debug, Default)]
pub struct RuntimeScan {
    line: Vec<u8>,
    /// The line in progress is over [`LINE_MAX`]: skipped to its end.
    skipping: bool,
    sample: RuntimeSample,
    /// Lines skipped for length.
    pub long_lines: u64,
}

impl RuntimeScan {
    pub fn new() -> RuntimeScan {
        RuntimeScan::default()
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (part, rest, end) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if !self.skipping {
                if self.line.len() + part.len() > LINE_MAX {
                    self.skipping = true;
                    self.long_lines += 1;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if end {
                if !self.skipping {
                    let line = std::mem::take(&mut self.line);
                    self.on_line(&line);
                    self.line = line;
                    self.line.clear();
                }
                self.skipping = false;
            }
        }
    }

    /// The body ended: the sample, if the scrape named any metric read here.
    pub fn finish(mut self) -> Option<RuntimeSample> {
        if !self.skipping && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line);
        }
        self.sample.any().then_some(self.sample)
    }

    /// One exposition line: `name{labels} value [timestamp]`; comments and other names ignored.
    fn on_line(&mut self, line: &[u8]) {
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        let line = line.trim();
        if line.starts_with('#') {
            return;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_ascii_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_end];
        let Some(&(_, engine, slot)) = NAMES.iter().find(|(n, _, _)| *n == name) else {
            return;
        };
        // The value follows the label set (whose values may hold spaces and braces, quoted).
        let rest = &line[name_end..];
        let rest = match rest.strip_prefix('{') {
            Some(labels) => match closing_brace(labels) {
                Some(i) => &labels[i + 1..],
                None => return,
            },
            None => rest,
        };
        let Some(value) = rest
            .split_ascii_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
        else {
            return;
        };
        let s = &mut self.sample;
        s.engine = engine;
        let add = |x: &mut Option<f64>| *x = Some(x.unwrap_or(0.0) + value);
        match slot {
            Slot::Running => add(&mut s.requests_running),
            Slot::Waiting => add(&mut s.requests_waiting),
            Slot::KvUsage => {
                s.kv_cache_usage = Some(s.kv_cache_usage.map_or(value, |k| k.max(value)))
            }
            Slot::Preemptions => add(&mut s.preemptions_total),
            Slot::PrefixHits => add(&mut s.prefix_cache_hits_total),
            Slot::PrefixQueries => add(&mut s.prefix_cache_queries_total),
        }
    }
}

/// Where a label set's closing brace is (quoted values may hold braces and escaped quotes).
fn closing_brace(labels: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (false, _, '"') => quoted = true,
            (false, _, '}') => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vLLM 0.19's exposition (abridged: the families read here, and neighbours that are not).
    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 7.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 0.42
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 0.61
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 12.0
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 1000.0
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 250.0
vllm:num_requests_running_extra{x="vllm:num_requests_running 99"} 99
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
python_gc_objects_collected_total{generation="0"} 1234.0
"#;

    fn scan(feeds: &[&[u8]]) -> Option<RuntimeSample> {
        let mut s = RuntimeScan::new();
        for f in feeds {
            s.feed(f);
        }
        s.finish()
    }

    #[test]
    fn vllm_exposition_at_every_split() {
        let want = RuntimeSample {
            engine: Engine::Vllm,
            requests_running: Some(5.0),
            requests_waiting: Some(7.0),
            kv_cache_usage: Some(0.61),
            preemptions_total: Some(12.0),
            prefix_cache_hits_total: Some(250.0),
            prefix_cache_queries_total: Some(1000.0),
        };
        let body = VLLM.as_bytes();
        assert_eq!(scan(&[body]), Some(want.clone()));
        for at in 0..=body.len() {
            let (a, b) = body.split_at(at);
            assert_eq!(scan(&[a, b]), Some(want.clone()), "split at {at}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan(&bytes), Some(want));
    }

    #[test]
    fn other_servers_and_odd_lines() {
        let sglang = "sglang:num_running_reqs{model_name=\"m\"} 4\nsglang:num_queue_reqs{model_name=\"m\"} 1\nsglang:token_usage{model_name=\"m\"} 0.9\n";
        let s = scan(&[sglang.as_bytes()]).unwrap();
        assert_eq!(s.engine, Engine::Sglang);
        assert_eq!(
            (s.requests_running, s.requests_waiting, s.kv_cache_usage),
            (Some(4.0), Some(1.0), Some(0.9))
        );
        let llama = "llamacpp:requests_processing 1\nllamacpp:requests_deferred 0\nllamacpp:kv_cache_usage_ratio 0.25";
        let s = scan(&[llama.as_bytes()]).unwrap();
        assert_eq!(s.engine, Engine::LlamaCpp);
        assert_eq!(s.kv_cache_usage, Some(0.25));
        // Older vLLM name; a label value with a brace and an escaped quote; NaN and junk skipped.
        let odd = "vllm:gpu_cache_usage_perc{model_name=\"a}b\\\"c\"} 0.5 1700000000000\nvllm:num_requests_waiting NaN\nvllm:num_requests_running{ 3\n";
        let s = scan(&[odd.as_bytes()]).unwrap();
        assert_eq!(s.kv_cache_usage, Some(0.5));
        assert_eq!((s.requests_waiting, s.requests_running), (None, None));
        assert_eq!(scan(&[b"# nothing here\nfoo 1\n"]), None);
    }

    #[test]
    fn a_hostile_line_is_skipped_within_the_bound() {
        let mut s = RuntimeScan::new();
        let long = format!(
            "vllm:num_requests_running{{x=\"{}\"}} 1\n",
            "a".repeat(100_000)
        );
        for piece in long.as_bytes().chunks(1000) {
            s.feed(piece);
            assert!(s.line.len() <= LINE_MAX);
        }
        s.feed(b"vllm:num_requests_waiting 2\n");
        assert_eq!(s.long_lines, 1);
        let got = s.finish().unwrap();
        assert_eq!(
            (got.requests_running, got.requests_waiting),
            (None, Some(2.0))
        );
    }
}
