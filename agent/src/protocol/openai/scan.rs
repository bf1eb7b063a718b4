//! The OpenAI front ends of the streaming JSON scanner: [`RequestScan`] and [`ResponseScan`]
//! select the paths of [`FIELDS`] for their body, and store what the scanner reports in
//! [`Values`], one slot per table entry. Typed views ([`RequestFields`], [`ResponseFields`]) are
//! read from the values by field id.
//!
//! Semantics (shared by every field, so a new entry needs none of its own): a repeated key starts
//! the field and every field under it over (the last one wins, like `serde_json::Value`); a value
//! of the wrong JSON type is absent; the fields under an array element marker are kept per element
//! in rows, at most [`CHOICES_MAX`] (more are counted, not kept).

use std::sync::LazyLock;

use super::fields::{self, Body, FieldId, Type, FIELDS};
use super::{PhaseSource, RequestFields, ResponseFields, ServerPhases, Usage};
use crate::protocol::json_scan::{Event, Kind, Patterns, Scalar, ScanError, ScanState, Scanner};

/// Rows (choices) kept per response; more are counted in [`Values::rows_dropped`].
pub const CHOICES_MAX: usize = 128;

/// One field's value as scanned.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Value {
    #[default]
    Absent,
    /// At most `json_scan::STRING_MAX` bytes; `truncated` when the string was longer.
    Str {
        text: String,
        truncated: bool,
    },
    Bool(bool),
    I64(i64),
    F64(f64),
    /// A [`Type::Marker`] field: where it is, and what kind of JSON value.
    Present(Kind),
    /// A [`Type::Output`] field: whether it carried output.
    Output(bool),
}

impl Value {
    fn scalar(ty: Type, v: Scalar<'_>) -> Value {
        let text = |text: String, truncated| Value::Str { text, truncated };
        match (ty, v) {
            (Type::Str | Type::Text, Scalar::Str { text: t, truncated }) => {
                text(t.into_owned(), truncated)
            }
            (Type::Text, Scalar::Number(n)) => n
                .text()
                .map_or(Value::Absent, |t| text(t.to_string(), false)),
            (Type::Bool, v) => v.as_bool().map_or(Value::Absent, Value::Bool),
            (Type::I64, v) => v.as_i64().map_or(Value::Absent, Value::I64),
            (Type::F64, v) => v.as_f64().map_or(Value::Absent, Value::F64),
            _ => Value::Absent,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::I64(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(n) => Some(*n),
            _ => None,
        }
    }

    pub fn kind(&self) -> Option<Kind> {
        match self {
            Value::Present(k) => Some(*k),
            _ => None,
        }
    }
}

/// The shape of one body's part of the table, computed once.
struct Layout {
    patterns: Patterns,
    /// Pattern index → field id.
    ids: Vec<FieldId>,
    /// Per field id: the row marker it is read under, if any.
    row: Vec<Option<FieldId>>,
    /// Per field id: itself and the fields it holds (in table order).
    subtree: Vec<Vec<FieldId>>,
    /// Per row marker: the first field under it and the length of the run to the last one.
    row_run: Vec<(FieldId, usize)>,
}

impl Layout {
    fn new(body: Body) -> Layout {
        let ids: Vec<FieldId> = (0..FIELDS.len())
            .filter(|&i| FIELDS[i].body == body)
            .collect();
        let list: Vec<_> = ids
            .iter()
            .map(|&i| (FIELDS[i].path, FIELDS[i].ty.mode()))
            .collect();
        #[allow(clippy::expect_used)]
        let patterns = Patterns::new(&list).expect("openai::fields paths are valid patterns");
        let row: Vec<Option<FieldId>> = (0..FIELDS.len())
            .map(|i| {
                ids.iter().copied().find(|&m| {
                    m != i
                        && fields::is_row(&FIELDS[m])
                        && fields::holds(FIELDS[m].path, FIELDS[i].path)
                })
            })
            .collect();
        let subtree = (0..FIELDS.len())
            .map(|i| {
                ids.iter()
                    .copied()
                    .filter(|&j| fields::holds(FIELDS[i].path, FIELDS[j].path))
                    .collect()
            })
            .collect();
        let row_run = (0..FIELDS.len())
            .map(|m| {
                let mut under = (0..FIELDS.len()).filter(|&i| row[i] == Some(m));
                let base = under.next().unwrap_or(m);
                (base, under.next_back().map_or(1, |l| l + 1 - base))
            })
            .collect();
        Layout {
            patterns,
            ids,
            row,
            subtree,
            row_run,
        }
    }

    fn of(body: Body) -> &'static Layout {
        static REQUEST: LazyLock<Layout> = LazyLock::new(|| Layout::new(Body::Request));
        static RESPONSE: LazyLock<Layout> = LazyLock::new(|| Layout::new(Body::Response));
        match body {
            Body::Request => &REQUEST,
            Body::Response => &RESPONSE,
        }
    }
}

/// The rows of one array element marker.
/// One body's values, indexed by field id: the body's fields are one contiguous run of the table
/// (request fields, then response fields), so only that run is held. An id of the other body
/// reads as absent (and a write to one is dropped).
#[derive(Clone, Debug, Default)]
pub struct Slots {
    base: FieldId,
    len: usize,
    /// Empty until the first write (most bodies of most routes set nothing).
    values: Vec<Value>,
    /// Where a write to an id of the other body goes (never read).
    spare: Value,
}

impl Slots {
    fn new(body: Body) -> Slots {
        let ids = &Layout::of(body).ids;
        let base = ids.first().copied().unwrap_or(0);
        let len = ids.last().map_or(0, |l| l + 1 - base);
        Slots {
            base,
            len,
            values: Vec::new(),
            spare: Value::Absent,
        }
    }

    /// The slots of one row of `marker`: only the run of the fields under it (a response's
    /// rows hold a few fields of a long table; a hostile stream has many rows).
    fn row(marker: FieldId) -> Slots {
        let (base, len) = Layout::of(FIELDS[marker].body).row_run[marker];
        Slots {
            base,
            len,
            values: Vec::new(),
            spare: Value::Absent,
        }
    }

    pub fn contains(&self, v: &Value) -> bool {
        self.values.contains(v)
    }
}

impl PartialEq for Slots {
    fn eq(&self, other: &Slots) -> bool {
        self.base == other.base
            && self.len == other.len
            && (self.base..self.base + self.len).all(|id| self[id] == other[id])
    }
}

static ABSENT: Value = Value::Absent;

impl std::ops::Index<FieldId> for Slots {
    type Output = Value;
    fn index(&self, id: FieldId) -> &Value {
        self.values
            .get(id.wrapping_sub(self.base))
            .unwrap_or(&ABSENT)
    }
}

impl std::ops::IndexMut<FieldId> for Slots {
    fn index_mut(&mut self, id: FieldId) -> &mut Value {
        let i = id.wrapping_sub(self.base);
        if self.values.is_empty() && i < self.len {
            self.values = vec![Value::Absent; self.len];
        }
        match self.values.get_mut(i) {
            Some(v) => v,
            None => &mut self.spare,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rows {
    pub rows: Vec<Slots>,
    /// Elements past [`CHOICES_MAX`], not kept.
    pub dropped: usize,
}

/// What was found of one body's fields, indexed by field id (entries of other bodies stay
/// absent). Holds identifiers and numbers only: the table selects no content.
#[derive(Clone, Debug)]
pub struct Values {
    body: Body,
    top: Slots,
    /// Per field id: the rows of a row marker (empty for other fields); allocated at the first
    /// row (most bodies have none).
    rows: Vec<Rows>,
}

/// Equal when every field has the same value and rows (unallocated rows are no rows).
impl PartialEq for Values {
    fn eq(&self, other: &Values) -> bool {
        self.body == other.body
            && self.top == other.top
            && (0..FIELDS.len()).all(|i| self.rows(i) == other.rows(i))
    }
}

/// The rows of a marker that has none.
static NO_ROWS: Rows = Rows {
    rows: Vec::new(),
    dropped: 0,
};

impl Values {
    pub fn new(body: Body) -> Values {
        Values {
            body,
            top: Slots::new(body),
            rows: Vec::new(),
        }
    }

    pub fn body(&self) -> Body {
        self.body
    }

    /// The value of a field outside rows.
    pub fn get(&self, id: FieldId) -> &Value {
        &self.top[id]
    }

    /// The rows of a row marker (`choices[*]`).
    pub fn rows(&self, marker: FieldId) -> &Rows {
        self.rows.get(marker).unwrap_or(&NO_ROWS)
    }

    /// The rows of a marker, to change (allocating every marker's on first use).
    fn rows_mut(&mut self, marker: FieldId) -> &mut Rows {
        if self.rows.is_empty() {
            self.rows = vec![Rows::default(); FIELDS.len()];
        }
        &mut self.rows[marker]
    }

    /// The row marker a field is read under, if any.
    pub fn row_of(&self, id: FieldId) -> Option<FieldId> {
        Layout::of(self.body).row[id]
    }

    /// Every value of a field: one outside rows, else one per row (absent ones included).
    pub fn all(&self, id: FieldId) -> impl Iterator<Item = &Value> {
        let (one, rows) = match self.row_of(id) {
            None => (Some(&self.top[id]), &[][..]),
            Some(m) => (None, &self.rows(m).rows[..]),
        };
        one.into_iter().chain(rows.iter().map(move |r| &r[id]))
    }

    /// Set a field outside rows (for values read by other means: stream chunks, a body's tail).
    pub fn set(&mut self, id: FieldId, v: Value) {
        self.top[id] = v;
    }

    /// Add a row to a row marker, without the [`CHOICES_MAX`] bound (stream chunks: their count
    /// is bounded by the stream).
    pub fn push_row(
        &mut self,
        marker: FieldId,
        values: impl IntoIterator<Item = (FieldId, Value)>,
    ) {
        let mut row = Slots::row(marker);
        for (id, v) in values {
            row[id] = v;
        }
        self.rows_mut(marker).rows.push(row);
    }

    #[cfg(test)]
    pub(crate) fn set_dropped(&mut self, marker: FieldId, dropped: usize) {
        self.rows_mut(marker).dropped = dropped;
    }

    /// The slots a field of the current row (or outside rows) lives in; `None` when its row was
    /// dropped or has not begun.
    fn scope(&mut self, layout: &Layout, id: FieldId) -> Option<&mut Slots> {
        match layout.row[id] {
            None => Some(&mut self.top),
            Some(m) => {
                let rows = self.rows.get_mut(m)?;
                if rows.dropped > 0 {
                    return None;
                }
                rows.rows.last_mut()
            }
        }
    }

    fn on(&mut self, layout: &Layout, ev: Event<'_>) {
        match ev {
            Event::Start { field, kind } => {
                let id = layout.ids[field];
                if fields::is_row(&FIELDS[id]) {
                    let rows = self.rows_mut(id);
                    if rows.rows.len() < CHOICES_MAX {
                        rows.rows.push(Slots::row(id));
                    } else {
                        rows.dropped += 1;
                    }
                    return;
                }
                let in_row = layout.row[id].is_some();
                for &j in &layout.subtree[id] {
                    if fields::is_row(&FIELDS[j]) {
                        if let Some(r) = self.rows.get_mut(j) {
                            *r = Rows::default();
                        }
                    }
                }
                let Some(scope) = self.scope(layout, id) else {
                    return;
                };
                for &j in &layout.subtree[id] {
                    if layout.row[j].is_some() == in_row {
                        scope[j] = Value::Absent;
                    }
                }
                if FIELDS[id].ty == Type::Marker {
                    scope[id] = Value::Present(kind);
                }
            }
            Event::Scalar { field, value } => {
                let id = layout.ids[field];
                if let Some(scope) = self.scope(layout, id) {
                    scope[id] = Value::scalar(FIELDS[id].ty, value);
                }
            }
            Event::NonEmpty { field, non_empty } => {
                let id = layout.ids[field];
                if let Some(scope) = self.scope(layout, id) {
                    scope[id] = Value::Output(non_empty);
                }
            }
        }
    }
}

/// Field ids the typed views read by name.
pub(crate) mod id {
    use super::fields::{id, Body::Request as Req, Body::Response as Resp, FieldId};

    pub const MODEL: FieldId = id(Req, "model");
    pub const STREAM: FieldId = id(Req, "stream");
    pub const INCLUDE_USAGE: FieldId = id(Req, "stream_options.include_usage");
    pub const MAX_TOKENS: FieldId = id(Req, "max_tokens");
    pub const MAX_COMPLETION_TOKENS: FieldId = id(Req, "max_completion_tokens");
    pub const TEMPERATURE: FieldId = id(Req, "temperature");
    pub const TOP_P: FieldId = id(Req, "top_p");
    pub const N: FieldId = id(Req, "n");

    pub const ID: FieldId = id(Resp, "id");
    pub const RESPONSE_MODEL: FieldId = id(Resp, "model");
    pub const CHOICE: FieldId = id(Resp, "choices[*]");
    pub const FINISH_REASON: FieldId = id(Resp, "choices[*].finish_reason");
    pub const USAGE: FieldId = id(Resp, "usage");
    pub const PROMPT_TOKENS: FieldId = id(Resp, "usage.prompt_tokens");
    pub const COMPLETION_TOKENS: FieldId = id(Resp, "usage.completion_tokens");
    pub const CACHED_TOKENS: FieldId = id(Resp, "usage.prompt_tokens_details.cached_tokens");
    pub const ERROR: FieldId = id(Resp, "error");
    pub const ERROR_TYPE: FieldId = id(Resp, "error.type");
    pub const ERROR_CODE: FieldId = id(Resp, "error.code");

    // Other APIs' words (`Values::normalise`).
    pub const MAX_OUTPUT_TOKENS: FieldId = id(Req, "max_output_tokens");
    pub const TGI_MAX_NEW_TOKENS: FieldId = id(Req, "parameters.max_new_tokens");
    pub const TGI_TEMPERATURE: FieldId = id(Req, "parameters.temperature");
    pub const TGI_TOP_P: FieldId = id(Req, "parameters.top_p");
    pub const SGL_MAX_NEW_TOKENS: FieldId = id(Req, "sampling_params.max_new_tokens");
    pub const SGL_TEMPERATURE: FieldId = id(Req, "sampling_params.temperature");
    pub const SGL_TOP_P: FieldId = id(Req, "sampling_params.top_p");
    pub const DO_REMOTE_DECODE: FieldId = id(Req, "kv_transfer_params.do_remote_decode");
    pub const DO_REMOTE_PREFILL: FieldId = id(Req, "kv_transfer_params.do_remote_prefill");

    pub const STATUS: FieldId = id(Resp, "status");
    pub const INCOMPLETE_REASON: FieldId = id(Resp, "incomplete_details.reason");
    pub const STOP_REASON: FieldId = id(Resp, "stop_reason");
    pub const OUTPUT: FieldId = id(Resp, "output");
    pub const CONTENT: FieldId = id(Resp, "content");
    pub const GENERATED_TEXT: FieldId = id(Resp, "generated_text");
    pub const TEXT: FieldId = id(Resp, "text");
    pub const INPUT_TOKENS: FieldId = id(Resp, "usage.input_tokens");
    pub const OUTPUT_TOKENS: FieldId = id(Resp, "usage.output_tokens");
    pub const TOTAL_TOKENS: FieldId = id(Resp, "usage.total_tokens");
    pub const INPUT_CACHED_TOKENS: FieldId = id(Resp, "usage.input_tokens_details.cached_tokens");
    pub const CACHE_READ_INPUT_TOKENS: FieldId = id(Resp, "usage.cache_read_input_tokens");
    pub const CACHE_CREATION_INPUT_TOKENS: FieldId = id(Resp, "usage.cache_creation_input_tokens");
    pub const TGI_ERROR_TYPE: FieldId = id(Resp, "error_type");
    pub const TGI_FINISH_REASON: FieldId = id(Resp, "details.finish_reason");
    pub const TGI_GENERATED_TOKENS: FieldId = id(Resp, "details.generated_tokens");
    pub const TGI_INPUT_LENGTH: FieldId = id(Resp, "details.input_length");
    pub const SGL_ID: FieldId = id(Resp, "meta_info.id");
    pub const SGL_FINISH_REASON: FieldId = id(Resp, "meta_info.finish_reason.type");
    pub const SGL_PROMPT_TOKENS: FieldId = id(Resp, "meta_info.prompt_tokens");
    pub const SGL_COMPLETION_TOKENS: FieldId = id(Resp, "meta_info.completion_tokens");
    pub const SGL_CACHED_TOKENS: FieldId = id(Resp, "meta_info.cached_tokens");

    pub const METRICS: FieldId = id(Resp, "metrics");
    pub const QUEUE_MS: FieldId = id(Resp, "metrics.queue_time_ms");
    pub const PREFILL_MS: FieldId = id(Resp, "metrics.time_to_first_token_ms");
    pub const DECODE_MS: FieldId = id(Resp, "metrics.generation_time_ms");
    pub const MEAN_ITL_MS: FieldId = id(Resp, "metrics.mean_itl_ms");
    pub const TOKENS_PER_SECOND: FieldId = id(Resp, "metrics.tokens_per_second");
    pub const REASONING_TOKENS: FieldId =
        id(Resp, "metrics.output_token_metrics.reasoning.token_count");
    pub const TIMINGS: FieldId = id(Resp, "timings");
    pub const PROMPT_N: FieldId = id(Resp, "timings.prompt_n");
    pub const PROMPT_MS: FieldId = id(Resp, "timings.prompt_ms");
    pub const PREDICTED_MS: FieldId = id(Resp, "timings.predicted_ms");
    pub const PREDICTED_PER_SECOND: FieldId = id(Resp, "timings.predicted_per_second");
    pub const CACHE_N: FieldId = id(Resp, "timings.cache_n");
}

impl Values {
    fn string(&self, id: FieldId) -> Option<String> {
        self.top[id].as_str().map(str::to_string)
    }

    /// `finish_reason` of every choice that has one, in order.
    pub fn finish_reasons(&self) -> Vec<String> {
        self.all(id::FINISH_REASON)
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// Choices that carried output (any of their [`Type::Output`] fields non-empty).
    pub fn choices_with_output(&self) -> usize {
        self.rows(id::CHOICE)
            .rows
            .iter()
            .filter(|r| r.contains(&Value::Output(true)))
            .count()
    }

    /// The response's `model`.
    pub fn response_model(&self) -> Option<&str> {
        self.top[id::RESPONSE_MODEL].as_str()
    }

    /// `usage` when it is an object.
    pub fn usage(&self) -> Option<Usage> {
        (self.top[id::USAGE].kind() == Some(Kind::Object)).then(|| Usage {
            prompt_tokens: self.top[id::PROMPT_TOKENS].as_i64(),
            completion_tokens: self.top[id::COMPLETION_TOKENS].as_i64(),
            cached_tokens: self.top[id::CACHED_TOKENS].as_i64(),
        })
    }

    /// The first of `ids` with a value, cloned.
    fn first_of(&self, ids: &[FieldId]) -> Value {
        ids.iter()
            .map(|&i| &self.top[i])
            .find(|v| **v != Value::Absent)
            .cloned()
            .unwrap_or_default()
    }

    /// Another API's words for the fields the code reads by name, written where OpenAI's go
    /// (so that their span attributes and typed views need nothing of their own): the first
    /// alternative with a value fills a field that has none. Whole bodies only; stream events
    /// are read by `parse_stream_chunk` in the same order.
    pub fn normalise(&mut self) {
        let fill = |v: &mut Values, to: FieldId, from: &[FieldId]| {
            if v.top[to] == Value::Absent {
                let alt = v.first_of(from);
                if alt != Value::Absent {
                    v.top[to] = alt;
                }
            }
        };
        match self.body {
            Body::Request => {
                if self.top[id::MAX_COMPLETION_TOKENS] == Value::Absent {
                    let from = [
                        id::MAX_OUTPUT_TOKENS,
                        id::TGI_MAX_NEW_TOKENS,
                        id::SGL_MAX_NEW_TOKENS,
                    ];
                    fill(self, id::MAX_TOKENS, &from);
                }
                fill(
                    self,
                    id::TEMPERATURE,
                    &[id::TGI_TEMPERATURE, id::SGL_TEMPERATURE],
                );
                fill(self, id::TOP_P, &[id::TGI_TOP_P, id::SGL_TOP_P]);
            }
            Body::Response => {
                fill(self, id::ID, &[id::SGL_ID]);
                if self.finish_reasons().is_empty() {
                    if let Some(r) = self.other_finish_reason() {
                        let text = Value::Str {
                            text: r,
                            truncated: false,
                        };
                        self.push_row(id::CHOICE, [(id::FINISH_REASON, text)]);
                    }
                }
                if let Some(u) = self.other_usage() {
                    self.set_usage(&u);
                }
            }
        }
    }

    /// The finish reason outside `choices`: the Responses API's (incomplete reason, else a final
    /// status), Anthropic's stop reason, TGI's, SGLang's.
    fn other_finish_reason(&self) -> Option<String> {
        let s = |i: FieldId| self.top[i].as_str();
        s(id::STATUS)
            .filter(|st| super::terminal_status(st))
            .map(|st| s(id::INCOMPLETE_REASON).unwrap_or(st))
            .or_else(|| s(id::STOP_REASON))
            .or_else(|| s(id::TGI_FINISH_REASON))
            .or_else(|| s(id::SGL_FINISH_REASON))
            .map(str::to_string)
    }

    /// The usage in another API's words: a `usage` object's input/output names (the Responses
    /// API, Anthropic, rerank), else TGI's `details`, else SGLang's `meta_info`.
    fn other_usage(&self) -> Option<Usage> {
        let n = |i: FieldId| self.top[i].as_i64();
        if self.top[id::USAGE].kind() == Some(Kind::Object) {
            let output_named = n(id::COMPLETION_TOKENS).is_some() || n(id::OUTPUT_TOKENS).is_some();
            return Some(Usage {
                prompt_tokens: super::input_tokens(
                    n(id::PROMPT_TOKENS),
                    n(id::INPUT_TOKENS),
                    n(id::CACHE_READ_INPUT_TOKENS),
                    n(id::CACHE_CREATION_INPUT_TOKENS),
                    n(id::TOTAL_TOKENS),
                    output_named,
                ),
                completion_tokens: n(id::COMPLETION_TOKENS).or(n(id::OUTPUT_TOKENS)),
                cached_tokens: n(id::CACHED_TOKENS)
                    .or(n(id::INPUT_CACHED_TOKENS))
                    .or(n(id::CACHE_READ_INPUT_TOKENS)),
            });
        }
        let (input, generated) = (n(id::TGI_INPUT_LENGTH), n(id::TGI_GENERATED_TOKENS));
        if input.is_some() || generated.is_some() {
            return Some(Usage {
                prompt_tokens: input,
                completion_tokens: generated,
                cached_tokens: None,
            });
        }
        let sgl = [
            n(id::SGL_PROMPT_TOKENS),
            n(id::SGL_COMPLETION_TOKENS),
            n(id::SGL_CACHED_TOKENS),
        ];
        sgl.iter().any(Option::is_some).then(|| Usage {
            prompt_tokens: sgl[0],
            completion_tokens: sgl[1],
            cached_tokens: sgl[2],
        })
    }

    /// The body carried generated output outside `choices`. (A Responses API body's `text` is
    /// its format settings: a body with a `status` is not read for `text`.)
    pub fn other_output(&self) -> bool {
        let text =
            self.top[id::STATUS] == Value::Absent && self.top[id::TEXT] == Value::Output(true);
        text || [id::OUTPUT, id::CONTENT, id::GENERATED_TEXT]
            .iter()
            .any(|&i| self.top[i] == Value::Output(true))
    }

    /// The leg of a disaggregated (prefill/decode) request a request body is: `prefill` when
    /// it asks for a remote decode (`kv_transfer_params.do_remote_decode`), `decode` when it
    /// asks for a remote prefill.
    pub fn pd_role(&self) -> Option<&'static str> {
        if self.top[id::DO_REMOTE_DECODE] == Value::Bool(true) {
            Some("prefill")
        } else if self.top[id::DO_REMOTE_PREFILL] == Value::Bool(true) {
            Some("decode")
        } else {
            None
        }
    }

    /// The phases the server reported: vLLM's `metrics` object, else llama.cpp's `timings`.
    pub fn server_phases(&self) -> Option<ServerPhases> {
        let f = |i: FieldId| self.top[i].as_f64();
        let n = |i: FieldId| self.top[i].as_i64();
        if self.top[id::METRICS].kind() == Some(Kind::Object) {
            return Some(ServerPhases {
                queue_ms: f(id::QUEUE_MS),
                prefill_ms: f(id::PREFILL_MS),
                decode_ms: f(id::DECODE_MS),
                mean_itl_ms: f(id::MEAN_ITL_MS),
                tokens_per_second: f(id::TOKENS_PER_SECOND),
                reasoning_tokens: n(id::REASONING_TOKENS),
                source: PhaseSource::Vllm,
                ..ServerPhases::default()
            });
        }
        (self.top[id::TIMINGS].kind() == Some(Kind::Object)).then(|| ServerPhases {
            prefill_ms: f(id::PROMPT_MS),
            decode_ms: f(id::PREDICTED_MS),
            tokens_per_second: f(id::PREDICTED_PER_SECOND),
            cached_prompt_tokens: n(id::CACHE_N),
            prompt_tokens_evaluated: n(id::PROMPT_N),
            source: PhaseSource::LlamaCpp,
            ..ServerPhases::default()
        })
    }

    /// Store the phases a stream's chunk reported (the last one wins).
    pub fn set_server_phases(&mut self, p: &ServerPhases) {
        let f = |v: Option<f64>| v.map_or(Value::Absent, Value::F64);
        let n = |v: Option<i64>| v.map_or(Value::Absent, Value::I64);
        for i in [id::METRICS, id::TIMINGS] {
            self.top[i] = Value::Absent;
        }
        match p.source {
            PhaseSource::Vllm => {
                self.top[id::METRICS] = Value::Present(Kind::Object);
                self.top[id::QUEUE_MS] = f(p.queue_ms);
                self.top[id::PREFILL_MS] = f(p.prefill_ms);
                self.top[id::DECODE_MS] = f(p.decode_ms);
                self.top[id::MEAN_ITL_MS] = f(p.mean_itl_ms);
                self.top[id::TOKENS_PER_SECOND] = f(p.tokens_per_second);
                self.top[id::REASONING_TOKENS] = n(p.reasoning_tokens);
            }
            PhaseSource::LlamaCpp => {
                self.top[id::TIMINGS] = Value::Present(Kind::Object);
                self.top[id::PROMPT_MS] = f(p.prefill_ms);
                self.top[id::PREDICTED_MS] = f(p.decode_ms);
                self.top[id::PREDICTED_PER_SECOND] = f(p.tokens_per_second);
                self.top[id::CACHE_N] = n(p.cached_prompt_tokens);
                self.top[id::PROMPT_N] = n(p.prompt_tokens_evaluated);
            }
        }
    }

    /// Store a usage read by other means (a stream chunk, a body's tail): the last one wins.
    pub fn set_usage(&mut self, u: &Usage) {
        let n = |v: Option<i64>| v.map_or(Value::Absent, Value::I64);
        self.top[id::USAGE] = Value::Present(Kind::Object);
        self.top[id::PROMPT_TOKENS] = n(u.prompt_tokens);
        self.top[id::COMPLETION_TOKENS] = n(u.completion_tokens);
        self.top[id::CACHED_TOKENS] = n(u.cached_tokens);
    }

    /// What a stream's chunks (read by `parse_stream_chunk`) said, into a response's values,
    /// once when the stream ends: the first id and model, every finish reason (one row each),
    /// the usage (merged across events) and the last server-reported phases.
    pub fn apply_stream(
        &mut self,
        id: Option<&str>,
        model: Option<&str>,
        finish_reasons: &[String],
        usage: Option<&Usage>,
        phases: Option<&ServerPhases>,
    ) {
        let text = |s: &str| Value::Str {
            text: s.to_string(),
            truncated: false,
        };
        for (field, v) in [(id::ID, id), (id::RESPONSE_MODEL, model)] {
            if let (Value::Absent, Some(v)) = (&self.top[field], v) {
                self.top[field] = text(v);
            }
        }
        for r in finish_reasons {
            self.push_row(id::CHOICE, [(id::FINISH_REASON, text(r))]);
        }
        if let Some(p) = phases {
            self.set_server_phases(p);
        }
        if let Some(u) = usage {
            self.set_usage(u); // already merged across the stream's events by the exchange
        }
    }

    /// `error.type` when non-empty, else `error.code`, else `"error"`; `None` without an error
    /// (`error` absent or `null`).
    pub fn error_type(&self) -> Option<String> {
        match self.top[id::ERROR].kind() {
            None | Some(Kind::Null) => return None,
            Some(_) => {}
        }
        if self.top[id::ERROR].kind() == Some(Kind::String) {
            // TGI: the message, its kind beside it.
            let kind = self.top[id::TGI_ERROR_TYPE]
                .as_str()
                .filter(|k| !k.is_empty());
            return Some(kind.unwrap_or("error").to_string());
        }
        Some(
            match (
                self.top[id::ERROR_TYPE].as_str(),
                self.top[id::ERROR_CODE].as_str(),
            ) {
                (Some(k), _) if !k.is_empty() => k.to_string(),
                (_, Some(c)) => c.to_string(),
                _ => "error".to_string(),
            },
        )
    }

    pub fn request_fields(mut self) -> RequestFields {
        self.normalise();
        let v = &self.top;
        RequestFields {
            model: self.string(id::MODEL),
            stream: v[id::STREAM].as_bool(),
            include_usage: v[id::INCLUDE_USAGE].as_bool(),
            max_tokens: v[id::MAX_COMPLETION_TOKENS]
                .as_i64()
                .or(v[id::MAX_TOKENS].as_i64()),
            temperature: v[id::TEMPERATURE].as_f64(),
            top_p: v[id::TOP_P].as_f64(),
            n: v[id::N].as_i64(),
            values: self,
        }
    }

    pub fn response_fields(mut self) -> ResponseFields {
        self.normalise();
        ResponseFields {
            other_output: self.other_output(),
            id: self.string(id::ID),
            model: self.string(id::RESPONSE_MODEL),
            finish_reasons: self.finish_reasons(),
            usage: self.usage(),
            error_type: self.error_type(),
            choices_with_output: self.choices_with_output(),
            values: self,
        }
    }
}

/// A scan of one body against the table's fields for it.
#[derive(Clone, Debug)]
struct BodyScan {
    scanner: Scanner<'static>,
    layout: &'static Layout,
    values: Values,
}

impl BodyScan {
    fn new(body: Body) -> BodyScan {
        let layout = Layout::of(body);
        BodyScan {
            scanner: Scanner::new(&layout.patterns),
            layout,
            values: Values::new(body),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        let (values, layout) = (&mut self.values, self.layout);
        self.scanner.feed(data, &mut |ev| values.on(layout, ev));
    }
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Layout")
    }
}

macro_rules! front_end {
    ($(#[$doc:meta])* $name:ident, $body:expr, $fields:ident, $into:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name(BodyScan);

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $name {
            pub fn new() -> $name {
                $name(BodyScan::new($body))
            }

            pub fn feed(&mut self, data: &[u8]) {
                self.0.feed(data);
            }

            /// Bytes were lost: stop, keeping the fields found so far.
            pub fn gap(&mut self) {
                self.0.scanner.gap();
            }

            /// The body has ended: `Err` when it was not one complete JSON object.
            pub fn finish(&mut self) -> Result<(), ScanError> {
                self.0.scanner.finish()
            }

            pub fn state(&self) -> ScanState {
                self.0.scanner.state()
            }

            /// The values found so far (also after an error).
            pub fn values(&self) -> &Values {
                &self.0.values
            }

            /// The typed view of the values found so far (also after an error).
            pub fn fields(&self) -> $fields {
                self.0.values.clone().$into()
            }

            pub fn into_fields(self) -> $fields {
                self.0.values.$into()
            }
        }
    };
}

front_end!(
    /// Reads the fields of an OpenAI request body (chat, completions, embeddings) as it streams
    /// past.
    RequestScan,
    Body::Request,
    RequestFields,
    request_fields
);
front_end!(
    /// Reads the fields of an OpenAI response body (or of one SSE `data:` payload) as it streams
    /// past.
    ResponseScan,
    Body::Response,
    ResponseFields,
    response_fields
);

#[cfg(test)]
mod tests;
