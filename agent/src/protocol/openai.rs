//! OpenAI-compatible API semantics: which operation a path is, and the few JSON fields of
//! requests, stream chunks and responses that describe a request — never its text.
//!
//! Pure: bytes in, values out. Every string produced here (a `String`, or a stream chunk's `Cow`
//! borrowed from the event) is an identifier (model name, response id, finish reason, error type),
//! bounded in length; prompt and completion text are only ever *looked at* (is this chunk's content
//! empty?), never copied.
//!
//! Stream chunks are the hot path (one per generated token): they are read without allocating —
//! identifiers borrowed, the `choices` array folded as it is read, UTF-8 checked in one pass.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

pub mod fields;
pub mod models;
#[cfg(test)]
mod oracle;
mod scan;

#[cfg(test)]
pub(crate) use scan::id;
pub use scan::{RequestScan, ResponseScan, Rows, Slots, Value, Values, CHOICES_MAX};

/// Longest identifier kept (model names, ids, error types).
const ID_MAX: usize = 256;

/// The API a request speaks, from its path: OpenAI's (chat, completions, embeddings, the
/// Responses API, audio), Anthropic's Messages API, vLLM's pooling family and tokenizer routes,
/// and the native generate APIs of SGLang and TGI. [`Operation::as_str`] is its
/// `gen_ai.operation.name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Chat,
    TextCompletion,
    Embeddings,
    /// OpenAI Responses API (`/v1/responses`): a chat operation with typed stream events.
    Responses,
    /// Anthropic Messages API (`/v1/messages`): a chat operation.
    Messages,
    /// Rerank (`/rerank`, `/v1/rerank`, `/v2/rerank`).
    Rerank,
    /// Score (`/score`, `/v1/score`).
    Score,
    /// Classify (`/classify`, `/v1/classify`).
    Classify,
    /// Pooling (`/pooling`).
    Pooling,
    /// Audio transcription (`/v1/audio/transcriptions`).
    Transcription,
    /// Audio translation (`/v1/audio/translations`).
    Translation,
    Tokenize,
    Detokenize,
    /// A native generate API: SGLang `/generate`, TGI `/generate` and `/generate_stream`.
    Generate,
}

impl Operation {
    pub fn from_path(path: &str) -> Option<Operation> {
        let p = path.trim_end_matches('/');
        let last = |s: &str| p.ends_with(s);
        let op = if last("/chat/completions") {
            Operation::Chat
        } else if last("/completions") {
            Operation::TextCompletion
        } else if last("/embeddings") {
            Operation::Embeddings
        } else if last("/v1/responses") {
            Operation::Responses
        } else if last("/v1/messages") {
            Operation::Messages
        } else if last("/audio/transcriptions") {
            Operation::Transcription
        } else if last("/audio/translations") {
            Operation::Translation
        } else {
            // Short names are taken only as the whole path (or under `/v1`, `/v2`): a route of
            // another application ending in `/score` is not a model server's.
            let tail = p
                .strip_prefix("/v1")
                .or_else(|| p.strip_prefix("/v2"))
                .unwrap_or(p);
            match tail {
                "/rerank" => Operation::Rerank,
                "/score" => Operation::Score,
                "/classify" => Operation::Classify,
                "/pooling" if p == "/pooling" => Operation::Pooling,
                "/tokenize" if p == "/tokenize" => Operation::Tokenize,
                "/detokenize" if p == "/detokenize" => Operation::Detokenize,
                "/generate" | "/generate_stream" if p == tail => Operation::Generate,
                _ => return None,
            }
        };
        Some(op)
    }

    /// `gen_ai.operation.name`: the GenAI conventions' names where they have one (`chat`,
    /// `text_completion`, `embeddings`), else the API's own word for the operation.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat | Operation::Responses | Operation::Messages => "chat",
            Operation::TextCompletion | Operation::Generate => "text_completion",
            Operation::Embeddings => "embeddings",
            Operation::Rerank => "rerank",
            Operation::Score => "score",
            Operation::Classify => "classify",
            Operation::Pooling => "pooling",
            Operation::Transcription => "transcription",
            Operation::Translation => "translation",
            Operation::Tokenize => "tokenize",
            Operation::Detokenize => "detokenize",
        }
    }

    /// The operation generates tokens (so a stream without usage has its output estimated from
    /// its content chunks).
    pub fn generates(self) -> bool {
        matches!(
            self,
            Operation::Chat
                | Operation::TextCompletion
                | Operation::Responses
                | Operation::Messages
                | Operation::Generate
                | Operation::Transcription
                | Operation::Translation
        )
    }
}

/// Where `s` is cut to keep at most [`ID_MAX`] bytes, at a character boundary.
fn bound_at(s: &str) -> usize {
    let mut end = s.len().min(ID_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

fn bounded(s: &str) -> String {
    s[..bound_at(s)].to_string()
}

/// [`bounded`] without a copy when the string is borrowed from the input.
fn bounded_cow(s: JsonStr<'_>) -> Cow<'_, str> {
    let end = bound_at(&s.0);
    match s.0 {
        Cow::Borrowed(b) => Cow::Borrowed(&b[..end]),
        Cow::Owned(mut o) => {
            o.truncate(end);
            Cow::Owned(o)
        }
    }
}

/// serde_json reading bytes checks every string it hands out for UTF-8; reading a `&str` it need
/// not. Input that is UTF-8 throughout (all of it, in practice) is checked once, in one pass, and
/// read as a `&str`; anything else is read as bytes. Both readers give the same result on UTF-8
/// input, and the byte reader keeps its leniency (invalid UTF-8 in skipped strings) for the rest.
fn from_json<'a, T: Deserialize<'a>>(data: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(data) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(data),
    }
}

/// A JSON string, borrowed from the input when it has no escapes. (serde borrows a bare
/// `Cow<str>` field, but an `Option<Cow<str>>` one always allocates: this type borrows in both.
/// Hand-written because it is the 20 lines `serde_with::BorrowCow` would bring a crate for.)
struct JsonStr<'a>(Cow<'a, str>);

impl<'a> JsonStr<'a> {
    /// The same string, borrowed where this one is.
    fn clone_ref(&self) -> JsonStr<'a> {
        JsonStr(self.0.clone())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = JsonStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<JsonStr<'a>, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<JsonStr<'a>, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<JsonStr<'a>, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The request fields that describe a request: every field of the table ([`Values`]), and the
/// ones the code reads by name.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestFields {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub include_usage: Option<bool>,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
    /// Every request field of [`fields::FIELDS`] (span attributes are set from these).
    pub values: Values,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
}

impl Usage {
    /// Each count `newer` has replaces this one's (a stream's later usage wins; an Anthropic
    /// stream's `message_delta` carries output tokens only, its `message_start` the input).
    pub fn merge(&mut self, newer: &Usage) {
        for (mine, theirs) in [
            (&mut self.prompt_tokens, newer.prompt_tokens),
            (&mut self.completion_tokens, newer.completion_tokens),
            (&mut self.cached_tokens, newer.cached_tokens),
        ] {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
    }
}

/// A usage object in the words of any API: OpenAI's (`prompt_tokens`, …), the Responses API's
/// and Anthropic's (`input_tokens`, …; Anthropic's `input_tokens` leaves out the cached part),
/// rerank's (`total_tokens` only: all of them input).
#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    prompt_tokens_details: Option<RawPromptDetails>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    input_tokens_details: Option<RawPromptDetails>,
    cache_read_input_tokens: Option<i64>,
    cache_creation_input_tokens: Option<i64>,
    total_tokens: Option<i64>,
}

#[derive(Deserialize)]
struct RawPromptDetails {
    cached_tokens: Option<i64>,
}

/// The input tokens of a usage object: `prompt_tokens`; else `input_tokens` plus Anthropic's
/// cache reads and writes (which its `input_tokens` leaves out); else `total_tokens` when the
/// object names no output (rerank, score: every token is input).
pub(crate) fn input_tokens(
    prompt: Option<i64>,
    input: Option<i64>,
    cache_read: Option<i64>,
    cache_creation: Option<i64>,
    total: Option<i64>,
    output_named: bool,
) -> Option<i64> {
    prompt
        .or_else(|| match (input, cache_read, cache_creation) {
            (Some(i), None, None) => Some(i),
            (Some(i), r, c) => Some(
                i.saturating_add(r.unwrap_or(0))
                    .saturating_add(c.unwrap_or(0)),
            ),
            (None, _, _) => None,
        })
        .or(total.filter(|_| !output_named))
}

impl From<RawUsage> for Usage {
    fn from(u: RawUsage) -> Usage {
        let output_named = u.completion_tokens.is_some() || u.output_tokens.is_some();
        Usage {
            prompt_tokens: input_tokens(
                u.prompt_tokens,
                u.input_tokens,
                u.cache_read_input_tokens,
                u.cache_creation_input_tokens,
                u.total_tokens,
                output_named,
            ),
            completion_tokens: u.completion_tokens.or(u.output_tokens),
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .or(u.input_tokens_details.and_then(|d| d.cached_tokens))
                .or(u.cache_read_input_tokens),
        }
    }
}

#[derive(Deserialize)]
struct RawError<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<JsonStr<'a>>,
    code: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawChoice<'a> {
    #[serde(borrow)]
    delta: Option<RawDelta<'a>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    finish_reason: Option<JsonStr<'a>>,
    #[cfg(test)]
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawDelta<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
}

/// The `choices` array, folded as it is read (no vector of choices per chunk): what a chunk or a
/// response says through its choices.
#[derive(Default)]
struct Choices {
    /// Some choice's delta or text carries generated output (stream chunks).
    delta_output: bool,
    /// Choices whose message or text carries output (whole responses; read by the test oracle).
    #[cfg(test)]
    with_output: usize,
    /// Each choice's `finish_reason`, in order, where it is a string.
    finish_reasons: Vec<String>,
}

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Choices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
                let mut c = Choices::default();
                while let Some(ch) = seq.next_element::<RawChoice<'de>>()? {
                    c.delta_output |= has_output(ch.text)
                        || ch.delta.as_ref().is_some_and(|d| {
                            has_output(d.content)
                                || has_output(d.reasoning)
                                || has_output(d.reasoning_content)
                                || has_output(d.tool_calls)
                        });
                    #[cfg(test)]
                    if has_output(ch.message) || has_output(ch.text) {
                        c.with_output += 1;
                    }
                    if let Some(reason) = ch.finish_reason {
                        c.finish_reasons.push(bounded(&reason.0));
                    }
                }
                Ok(c)
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
struct RawChunk<'a> {
    #[serde(borrow)]
    id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    model: Option<JsonStr<'a>>,
    #[serde(default)]
    choices: Choices,
    // Boxed: present once per response at most, and a smaller struct is cheaper to move for the
    // chunks (nearly all) that have neither.
    usage: Option<Box<RawUsage>>,
    /// An object (OpenAI, Anthropic), or a string (TGI: the message; `error_type` says which).
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    // The other APIs' parts (`openai::fields` lists the same paths for whole bodies), kept raw
    // and read only when present, so that a value of an unexpected type loses that part only.
    /// TGI: the kind of a string `error`.
    #[serde(borrow)]
    error_type: Option<&'a RawValue>,
    /// Responses API: `status` and `incomplete_details` of a whole response.
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    incomplete_details: Option<&'a RawValue>,
    /// Anthropic: `stop_reason` of a whole message.
    #[serde(borrow)]
    stop_reason: Option<&'a RawValue>,
    /// Responses API stream events: the response (`response.created`, `response.completed`…).
    #[serde(borrow)]
    response: Option<&'a RawValue>,
    /// Anthropic `message_start`: the message.
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    /// Responses API: a text delta (a string); Anthropic: a content block delta, or the
    /// `message_delta`'s stop reason (an object).
    #[serde(borrow)]
    delta: Option<&'a RawValue>,
    /// TGI stream: one token.
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    /// TGI: `details` (finish reason, generated tokens).
    #[serde(borrow)]
    details: Option<&'a RawValue>,
    /// SGLang native API: `meta_info`.
    #[serde(borrow)]
    meta_info: Option<&'a RawValue>,
    /// Whole bodies: the Responses API's `output`, Anthropic's `content`, TGI's
    /// `generated_text`; SGLang's and transcription's `text` (in streams too).
    #[cfg(test)]
    #[serde(borrow)]
    output: Option<&'a RawValue>,
    #[cfg(test)]
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[cfg(test)]
    #[serde(borrow)]
    generated_text: Option<&'a RawValue>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    /// vLLM (`--enable-per-request-metrics`): `metrics` beside `usage`.
    #[serde(borrow)]
    metrics: Option<&'a RawValue>,
    /// llama.cpp server: `timings`.
    #[serde(borrow)]
    timings: Option<&'a RawValue>,
}

/// The phases of a request as its server reported them, in the server's own units (ms): vLLM's
/// per-request `metrics`, llama.cpp's `timings`. Numbers only.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerPhases {
    /// vLLM: `queue_time_ms`.
    pub queue_ms: Option<f64>,
    /// vLLM: `time_to_first_token_ms` (from scheduling: the prefill); llama.cpp: `prompt_ms`.
    pub prefill_ms: Option<f64>,
    /// vLLM: `generation_time_ms` (first to last output token); llama.cpp: `predicted_ms`.
    pub decode_ms: Option<f64>,
    /// vLLM: `mean_itl_ms`.
    pub mean_itl_ms: Option<f64>,
    /// vLLM: `tokens_per_second`; llama.cpp: `predicted_per_second`.
    pub tokens_per_second: Option<f64>,
    /// vLLM: `output_token_metrics.reasoning.token_count`.
    pub reasoning_tokens: Option<i64>,
    /// llama.cpp: `cache_n` (prompt tokens taken from its cache), `prompt_n` (evaluated).
    pub cached_prompt_tokens: Option<i64>,
    pub prompt_tokens_evaluated: Option<i64>,
    /// Which server's words these are.
    pub source: PhaseSource,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PhaseSource {
    #[default]
    Vllm,
    LlamaCpp,
}

impl PhaseSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseSource::Vllm => "vllm",
            PhaseSource::LlamaCpp => "llama.cpp",
        }
    }
}

#[derive(Deserialize)]
struct RawMetrics {
    queue_time_ms: Option<f64>,
    time_to_first_token_ms: Option<f64>,
    generation_time_ms: Option<f64>,
    mean_itl_ms: Option<f64>,
    tokens_per_second: Option<f64>,
    output_token_metrics: Option<RawOutputTokenMetrics>,
}

#[derive(Deserialize)]
struct RawOutputTokenMetrics {
    reasoning: Option<RawTokenCount>,
}

#[derive(Deserialize)]
struct RawTokenCount {
    token_count: Option<i64>,
}

#[derive(Deserialize)]
struct RawTimings {
    prompt_n: Option<i64>,
    prompt_ms: Option<f64>,
    predicted_ms: Option<f64>,
    predicted_per_second: Option<f64>,
    cache_n: Option<i64>,
}

/// The phases a chunk or body reports: vLLM's `metrics`, else llama.cpp's `timings`.
fn phases(metrics: Option<&RawValue>, timings: Option<&RawValue>) -> Option<ServerPhases> {
    if let Some(m) = part::<RawMetrics>(metrics) {
        return Some(ServerPhases {
            queue_ms: m.queue_time_ms,
            prefill_ms: m.time_to_first_token_ms,
            decode_ms: m.generation_time_ms,
            mean_itl_ms: m.mean_itl_ms,
            tokens_per_second: m.tokens_per_second,
            reasoning_tokens: m
                .output_token_metrics
                .and_then(|o| o.reasoning)
                .and_then(|r| r.token_count),
            source: PhaseSource::Vllm,
            ..ServerPhases::default()
        });
    }
    let t = part::<RawTimings>(timings)?;
    Some(ServerPhases {
        prefill_ms: t.prompt_ms,
        decode_ms: t.predicted_ms,
        tokens_per_second: t.predicted_per_second,
        cached_prompt_tokens: t.cache_n,
        prompt_tokens_evaluated: t.prompt_n,
        source: PhaseSource::LlamaCpp,
        ..ServerPhases::default()
    })
}

/// A raw part read as `T`; `None` when absent or of another shape.
fn part<'a, T: Deserialize<'a>>(v: Option<&'a RawValue>) -> Option<T> {
    serde_json::from_str(v?.get()).ok()
}

#[derive(Deserialize)]
struct RawIncomplete<'a> {
    #[serde(borrow)]
    reason: Option<JsonStr<'a>>,
}

/// The response of a Responses API stream event, or the message of Anthropic's
/// `message_start`.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    model: Option<JsonStr<'a>>,
    #[serde(borrow)]
    status: Option<JsonStr<'a>>,
    #[serde(borrow)]
    incomplete_details: Option<RawIncomplete<'a>>,
    usage: Option<RawUsage>,
    #[serde(borrow)]
    error: Option<RawError<'a>>,
}

#[derive(Deserialize)]
struct RawAnthropicDelta<'a> {
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow)]
    partial_json: Option<&'a RawValue>,
    #[serde(borrow)]
    stop_reason: Option<JsonStr<'a>>,
}

#[derive(Deserialize)]
struct RawTgiToken<'a> {
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    special: Option<bool>,
}

#[derive(Deserialize)]
struct RawTgiDetails<'a> {
    #[serde(borrow)]
    finish_reason: Option<JsonStr<'a>>,
    generated_tokens: Option<i64>,
    input_length: Option<i64>,
}

#[derive(Deserialize)]
struct RawMetaInfo<'a> {
    #[serde(borrow)]
    id: Option<JsonStr<'a>>,
    /// `{"type": …}`, kept raw (read only when present).
    #[serde(borrow)]
    finish_reason: Option<&'a RawValue>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    cached_tokens: Option<i64>,
}

#[derive(Deserialize)]
struct RawSglFinish<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<JsonStr<'a>>,
}

/// A Responses API status that ends the response (its finish reason when no incomplete reason
/// is given).
pub(crate) fn terminal_status(s: &str) -> bool {
    matches!(s, "completed" | "incomplete" | "failed" | "cancelled")
}

/// The finish reason of a Responses API response: the incomplete reason, else a final status.
fn responses_finish(
    status: Option<JsonStr<'_>>,
    incomplete: Option<RawIncomplete<'_>>,
) -> Option<String> {
    let status = status.filter(|s| terminal_status(&s.0))?;
    let reason = incomplete.and_then(|i| i.reason).unwrap_or(status);
    Some(bounded(&reason.0))
}

/// A JSON value that carries generated output: a non-empty string, or a non-empty array.
fn has_output(v: Option<&RawValue>) -> bool {
    match v.map(|v| v.get().trim()) {
        None | Some("null") | Some("\"\"") | Some("[]") => false,
        Some(_) => true,
    }
}

/// What one `data:` event of a streaming response says. The identifiers borrow from the event's
/// bytes (bounded like every kept identifier); the caller copies the ones it keeps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamChunk<'a> {
    pub id: Option<Cow<'a, str>>,
    pub model: Option<Cow<'a, str>>,
    /// The chunk carries generated output (content, reasoning, tool calls or completion text):
    /// a role-only first chunk does not.
    pub has_content: bool,
    pub finish_reasons: Vec<String>,
    pub usage: Option<Usage>,
    /// `error.type` of an in-stream error event.
    pub error_type: Option<String>,
    /// What the server reported of the request's phases (the final chunk of a stream).
    pub phases: Option<Box<ServerPhases>>,
}

/// Parse one SSE `data:` payload. `[DONE]` and non-JSON payloads yield `None`.
pub fn parse_stream_chunk(data: &[u8]) -> Option<StreamChunk<'_>> {
    // Nearly every chunk on the wire is an OpenAI chat or completion chunk: read with the few
    // fields such a chunk has; anything else (another API's event, an unexpected field) is
    // read by the struct that knows every API.
    if let Ok(c) = from_json::<OpenAiChunk<'_>>(data) {
        if let Some(chunk) = c.chunk() {
            return Some(chunk);
        }
    }
    let c: RawChunk<'_> = from_json(data).ok()?;
    Some(c.said().chunk)
}

/// An OpenAI-compatible stream chunk and nothing else: every field it may have is named (no
/// unknown field passes), so what it says is exactly what [`RawChunk::said`] makes of it,
/// without the other APIs' fields to read and move (a sixth of a chunk's parse).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiChunk<'a> {
    #[serde(borrow)]
    id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    model: Option<JsonStr<'a>>,
    choices: Option<Choices>,
    usage: Option<Box<RawUsage>>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    metrics: Option<&'a RawValue>,
    #[serde(borrow)]
    timings: Option<&'a RawValue>,
    // Present in OpenAI, vLLM, SGLang and llama.cpp chunks; nothing is read from them.
    object: Option<serde::de::IgnoredAny>,
    created: Option<serde::de::IgnoredAny>,
    system_fingerprint: Option<serde::de::IgnoredAny>,
    service_tier: Option<serde::de::IgnoredAny>,
    prompt_logprobs: Option<serde::de::IgnoredAny>,
    prompt_token_ids: Option<serde::de::IgnoredAny>,
    kv_transfer_params: Option<serde::de::IgnoredAny>,
}

impl<'a> OpenAiChunk<'a> {
    /// What [`RawChunk::said`] makes of a chunk with only these fields; `None` without
    /// `choices` (not a chat or completion chunk: an error event, another API's).
    fn chunk(self) -> Option<StreamChunk<'a>> {
        let choices = self.choices?;
        let _ = (
            self.object,
            self.created,
            self.system_fingerprint,
            self.service_tier,
            self.prompt_logprobs,
            self.prompt_token_ids,
            self.kv_transfer_params,
        );
        Some(StreamChunk {
            id: self.id.map(bounded_cow),
            model: self.model.map(bounded_cow),
            has_content: choices.delta_output,
            finish_reasons: choices.finish_reasons,
            usage: self.usage.map(|u| Usage::from(*u)),
            error_type: self.error.and_then(|e| error_of(e, None)),
            phases: phases(self.metrics, self.timings).map(Box::new),
        })
    }
}

/// What a chunk or a whole body says, in any API's words (the chunk), and whether a whole body
/// carried output outside `choices` (test oracle).
struct Said<'a> {
    chunk: StreamChunk<'a>,
    #[cfg(test)]
    body_output: bool,
    #[cfg(test)]
    choices_with_output: usize,
}

impl<'a> RawChunk<'a> {
    /// Each API's words for id, model, output, finish reason, usage and error, in one order
    /// (`openai::scan`'s `Values::normalise` reads whole bodies in the same one): OpenAI's first;
    /// then the Responses API's and Anthropic's; then TGI's `details`, then SGLang's
    /// `meta_info`. At most one finish reason comes from outside `choices`.
    fn said(self) -> Said<'a> {
        let response: Option<RawEnvelope<'_>> = part(self.response);
        let message: Option<RawEnvelope<'_>> = part(self.message);
        let details: Option<RawTgiDetails<'_>> = part(self.details);
        let meta: Option<RawMetaInfo<'_>> = part(self.meta_info);
        let delta: Option<RawAnthropicDelta<'_>> = part(self.delta);
        let token: Option<RawTgiToken<'_>> = part(self.token);
        let envelopes = [response, message];

        let mut id = self.id;
        let mut model = self.model;
        for e in envelopes.iter().flatten() {
            id = id.or_else(|| e.id.as_ref().map(JsonStr::clone_ref));
            model = model.or_else(|| e.model.as_ref().map(JsonStr::clone_ref));
        }
        let meta_id = meta
            .as_ref()
            .and_then(|m| m.id.as_ref().map(JsonStr::clone_ref));
        id = id.or(meta_id);

        let delta_output = self.choices.delta_output
            || self.delta.is_some_and(|d| d.get().starts_with('"') && has_output(Some(d)))
            || delta.as_ref().is_some_and(|d| {
                has_output(d.text) || has_output(d.thinking) || has_output(d.partial_json)
            })
            || token
                .as_ref()
                .is_some_and(|t| t.special != Some(true) && has_output(t.text))
            // SGLang's `text` (its events carry `meta_info`); a Responses API `*.done` event's
            // `text` repeats what its deltas said.
            || (meta.is_some() && has_output(self.text));

        let mut finish_reasons = self.choices.finish_reasons;
        if finish_reasons.is_empty() {
            let mut other = responses_finish(part(self.status), part(self.incomplete_details))
                .or_else(|| part::<JsonStr<'_>>(self.stop_reason).map(|r| bounded(&r.0)))
                .or_else(|| {
                    let d = details.as_ref()?;
                    d.finish_reason.as_ref().map(|r| bounded(&r.0))
                })
                .or_else(|| {
                    let f: RawSglFinish<'_> = part(meta.as_ref()?.finish_reason)?;
                    f.kind.map(|k| bounded(&k.0))
                });
            for e in envelopes.iter().flatten() {
                other = other.or_else(|| {
                    responses_finish(
                        e.status.as_ref().map(JsonStr::clone_ref),
                        e.incomplete_details.as_ref().map(|i| RawIncomplete {
                            reason: i.reason.as_ref().map(JsonStr::clone_ref),
                        }),
                    )
                });
            }
            other = other.or_else(|| {
                let r = delta.as_ref()?.stop_reason.as_ref()?;
                Some(bounded(&r.0))
            });
            finish_reasons.extend(other);
        }

        let envelope_error = envelopes.iter().flatten().find_map(|e| {
            let err = e.error.as_ref()?;
            Some(error_type(
                err.kind.as_ref().map(JsonStr::clone_ref),
                err.code,
            ))
        });
        let error_type = self
            .error
            .and_then(|e| error_of(e, self.error_type))
            .or(envelope_error);

        let usage = self
            .usage
            .map(|u| Usage::from(*u))
            .or_else(|| {
                envelopes
                    .into_iter()
                    .flatten()
                    .find_map(|e| e.usage.map(Usage::from))
            })
            .or_else(|| {
                let d = details.as_ref()?;
                (d.generated_tokens.is_some() || d.input_length.is_some()).then_some(Usage {
                    prompt_tokens: d.input_length,
                    completion_tokens: d.generated_tokens,
                    cached_tokens: None,
                })
            })
            .or_else(|| {
                let m = meta.as_ref()?;
                (m.prompt_tokens.is_some()
                    || m.completion_tokens.is_some()
                    || m.cached_tokens.is_some())
                .then_some(Usage {
                    prompt_tokens: m.prompt_tokens,
                    completion_tokens: m.completion_tokens,
                    cached_tokens: m.cached_tokens,
                })
            });

        Said {
            #[cfg(test)]
            body_output: has_output(self.output)
                || has_output(self.content)
                || has_output(self.generated_text)
                || (self.status.is_none() && has_output(self.text)),
            #[cfg(test)]
            choices_with_output: self.choices.with_output,
            chunk: StreamChunk {
                id: id.map(bounded_cow),
                model: model.map(bounded_cow),
                has_content: delta_output,
                finish_reasons,
                usage,
                error_type,
                phases: phases(self.metrics, self.timings).map(Box::new),
            },
        }
    }
}

/// The error type of an `error` value: an object's `type` or `code`; a string's kind from the
/// body's `error_type` (TGI); `None` for `null`.
fn error_of(e: &RawValue, kind: Option<&RawValue>) -> Option<String> {
    let text = e.get().trim_start();
    if text.starts_with("null") {
        return None;
    }
    if text.starts_with('{') {
        return Some(match part::<RawError<'_>>(Some(e)) {
            Some(e) => error_type(e.kind, e.code),
            None => "error".to_string(),
        });
    }
    if text.starts_with('"') {
        if let Some(k) = part::<JsonStr<'_>>(kind).filter(|k| !k.0.is_empty()) {
            return Some(bounded(&k.0));
        }
    }
    Some("error".to_string())
}

fn error_type(kind: Option<JsonStr<'_>>, code: Option<&RawValue>) -> String {
    match kind {
        Some(k) if !k.0.is_empty() => bounded(&k.0),
        _ => code
            .map(|c| bounded(c.get().trim_matches('"')))
            .unwrap_or_else(|| "error".to_string()),
    }
}

/// What a complete non-streaming response body says: every field of the table ([`Values`]), and
/// the ones the code reads by name.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponseFields {
    pub id: Option<String>,
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
    pub usage: Option<Usage>,
    pub error_type: Option<String>,
    /// Choices that carried output (a message or text).
    pub choices_with_output: usize,
    /// The body carried output outside `choices`: the Responses API's `output`, Anthropic's
    /// `content`, TGI's `generated_text`, SGLang's or a transcription's `text`.
    pub other_output: bool,
    /// Every response field of [`fields::FIELDS`] (span attributes are set from these).
    pub values: Values,
}

/// Find the `usage` object in the tail of a body whose middle was not captured: the last
/// `"usage":` key followed by a complete JSON object.
pub fn usage_from_tail(tail: &[u8]) -> Option<Usage> {
    let key = b"\"usage\":";
    let at = tail.windows(key.len()).rposition(|w| w == key)?;
    let rest = &tail[at + key.len()..];
    let mut de = serde_json::Deserializer::from_slice(rest).into_iter::<RawUsage>();
    de.next()?.ok().map(Usage::from)
}

#[cfg(test)]
mod tests;
