//! The OpenAI fields infertap reads: one table, the only place a field is named.
//!
//! Each entry says which body the field is in, its JSON path (as `json_scan::Patterns` reads it:
//! `a.b`, `choices[*].c`), its type (which also says how it is scanned), and — for the fields that
//! become span attributes — the attribute key and when it is set. From this table come the scan
//! patterns (`openai::scan`), the stored values (`Values`, indexed by [`FieldId`]), and the span
//! attributes (`trace::fields`), in table order.
//!
//! To read one more field: add an entry here, a value for it to the fixtures of
//! `openai::scan::tests` (`every_field_is_in_a_fixture` checks), and its attribute to
//! `docs/spans.md` (checked too). Code that needs a field by name takes its id from [`id`].
//! An attribute key is a `schema::attr` constant when other code names it too; an attribute only
//! this table makes (a provider-specific field) may be spelled here: the table is then its entry
//! in the schema (`schema::attributes` lists both).
//!
//! Paths under an array element marker (`choices[*]`) are read per element ("rows", at most
//! `CHOICES_MAX`); their attribute is the array of every row's value. An `Output` field of a row
//! says the row carried generated output.
//!
//! Stream chunks (one SSE `data:` event per generated token) are not scanned with this table: the
//! hot path reads them with `openai::parse_stream_chunk`, which knows `id`, `model`, every
//! choice's `finish_reason`, `usage` and `error`, and stores them here by id. A response field
//! added to this table is read from whole JSON response bodies only.

use crate::protocol::json_scan::Mode;
use crate::schema::attr as key;

/// Index of an entry in [`FIELDS`].
pub type FieldId = usize;

/// Which body a field is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    Request,
    /// A whole JSON response body (non-streaming), or an error body.
    Response,
}

/// What a field holds, and so how it is scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// A string (at most `json_scan::STRING_MAX` bytes, flagged when cut).
    Str,
    /// A string, or a number's JSON text.
    Text,
    Bool,
    /// An integer that fits `i64` (no fraction or exponent).
    I64,
    F64,
    /// Only where the value is and its JSON kind (an object whose fields are entries too, an
    /// array element marker `x[*]`); a repeated key starts its fields over.
    Marker,
    /// Whether the value is other than `null`, `""` and `[]` (generated text, tool calls): the
    /// contents are never kept.
    Output,
}

impl Type {
    pub const fn mode(self) -> Mode {
        match self {
            Type::Marker => Mode::Mark,
            Type::Output => Mode::NonEmpty,
            _ => Mode::Capture,
        }
    }
}

/// When a field's span attribute is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// The field has a value.
    Present,
    /// Always (the span describes an OpenAI operation): `false` when absent. Bool fields only.
    OrFalse,
    /// The field has a value other than this integer (the API's default).
    Not(i64),
    /// This field's value, else the value of the field at this path (same body).
    Or(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub key: &'static str,
    pub when: When,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub body: Body,
    pub path: &'static str,
    pub ty: Type,
    pub attribute: Option<Attribute>,
}

const fn field(body: Body, path: &'static str, ty: Type) -> Field {
    Field {
        body,
        path,
        ty,
        attribute: None,
    }
}

const fn attr(body: Body, path: &'static str, ty: Type, key: &'static str, when: When) -> Field {
    Field {
        body,
        path,
        ty,
        attribute: Some(Attribute { key, when }),
    }
}

use Body::{Request as Req, Response as Resp};
use Type::*;
use When::*;

/// Every field, request then response; span attributes are set in this order.
#[rustfmt::skip]
pub const FIELDS: &[Field] = &[
    attr(Req, "model", Str, key::GEN_AI_REQUEST_MODEL, Present),
    attr(Req, "stream", Bool, key::GEN_AI_REQUEST_STREAM, OrFalse),
    field(Req, "stream_options", Marker),
    field(Req, "stream_options.include_usage", Bool),
    field(Req, "max_tokens", I64),
    attr(Req, "max_completion_tokens", I64, key::GEN_AI_REQUEST_MAX_TOKENS, Or("max_tokens")),
    attr(Req, "temperature", F64, key::GEN_AI_REQUEST_TEMPERATURE, Present),
    attr(Req, "top_p", F64, key::GEN_AI_REQUEST_TOP_P, Present),
    attr(Req, "n", I64, key::GEN_AI_REQUEST_CHOICE_COUNT, Not(1)),
    // Other APIs' words for the request fields above (`Values::normalise` maps them there):
    // the Responses API's, TGI's `parameters` and SGLang's `sampling_params`.
    field(Req, "max_output_tokens", I64),
    field(Req, "parameters.max_new_tokens", I64),
    field(Req, "parameters.temperature", F64),
    field(Req, "parameters.top_p", F64),
    field(Req, "sampling_params.max_new_tokens", I64),
    field(Req, "sampling_params.temperature", F64),
    field(Req, "sampling_params.top_p", F64),
    // llm-d prefill/decode disaggregation (vLLM's NixlConnector schema): the prefill leg asks for
    // a remote decode, the decode leg for a remote prefill (`Values::pd_role`).
    field(Req, "kv_transfer_params.do_remote_decode", Bool),
    field(Req, "kv_transfer_params.do_remote_prefill", Bool),

    attr(Resp, "id", Str, key::GEN_AI_RESPONSE_ID, Present),
    attr(Resp, "model", Str, key::GEN_AI_RESPONSE_MODEL, Present),
    field(Resp, "choices", Marker),
    field(Resp, "choices[*]", Marker),
    attr(Resp, "choices[*].finish_reason", Str, key::GEN_AI_RESPONSE_FINISH_REASONS, Present),
    field(Resp, "choices[*].message", Marker),
    field(Resp, "choices[*].delta", Marker),
    field(Resp, "choices[*].message.content", Output),
    field(Resp, "choices[*].message.reasoning_content", Output),
    field(Resp, "choices[*].message.reasoning", Output),
    field(Resp, "choices[*].message.tool_calls", Output),
    field(Resp, "choices[*].text", Output),
    field(Resp, "choices[*].delta.content", Output),
    field(Resp, "choices[*].delta.reasoning_content", Output),
    field(Resp, "choices[*].delta.reasoning", Output),
    field(Resp, "choices[*].delta.tool_calls", Output),
    field(Resp, "usage", Marker),
    attr(Resp, "usage.prompt_tokens", I64, key::GEN_AI_USAGE_INPUT_TOKENS, Present),
    attr(Resp, "usage.completion_tokens", I64, key::GEN_AI_USAGE_OUTPUT_TOKENS, Present),
    field(Resp, "usage.prompt_tokens_details", Marker),
    attr(Resp, "usage.prompt_tokens_details.cached_tokens", I64, key::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, Present),
    field(Resp, "error", Marker),
    field(Resp, "error.type", Str),
    field(Resp, "error.code", Text),
    // Other APIs' words for the response fields above (`Values::normalise` maps them there, in
    // the order `openai::parse_stream_chunk` reads stream events): the Responses API's status,
    // Anthropic's stop reason, usage as both name it, TGI's `details` and string errors,
    // SGLang's `meta_info`; the output outside `choices` each of them (and transcriptions) has.
    field(Resp, "status", Str),
    field(Resp, "incomplete_details.reason", Str),
    field(Resp, "stop_reason", Str),
    field(Resp, "output", Output),
    field(Resp, "content", Output),
    field(Resp, "generated_text", Output),
    field(Resp, "text", Output),
    field(Resp, "usage.input_tokens", I64),
    field(Resp, "usage.output_tokens", I64),
    field(Resp, "usage.total_tokens", I64),
    field(Resp, "usage.input_tokens_details.cached_tokens", I64),
    field(Resp, "usage.cache_read_input_tokens", I64),
    field(Resp, "usage.cache_creation_input_tokens", I64),
    field(Resp, "error_type", Str),
    field(Resp, "details.finish_reason", Str),
    field(Resp, "details.generated_tokens", I64),
    field(Resp, "details.input_length", I64),
    field(Resp, "meta_info.id", Str),
    field(Resp, "meta_info.finish_reason.type", Str),
    field(Resp, "meta_info.prompt_tokens", I64),
    field(Resp, "meta_info.completion_tokens", I64),
    field(Resp, "meta_info.cached_tokens", I64),
    // The phases the server reports (`openai::ServerPhases`; span attributes in `trace::phases`):
    // vLLM's per-request `metrics`, llama.cpp's `timings`.
    field(Resp, "metrics", Marker),
    field(Resp, "metrics.queue_time_ms", F64),
    field(Resp, "metrics.time_to_first_token_ms", F64),
    field(Resp, "metrics.generation_time_ms", F64),
    field(Resp, "metrics.mean_itl_ms", F64),
    field(Resp, "metrics.tokens_per_second", F64),
    field(Resp, "metrics.output_token_metrics.reasoning.token_count", I64),
    field(Resp, "timings", Marker),
    field(Resp, "timings.prompt_n", I64),
    field(Resp, "timings.prompt_ms", F64),
    field(Resp, "timings.predicted_ms", F64),
    field(Resp, "timings.predicted_per_second", F64),
    field(Resp, "timings.cache_n", I64),
];

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The id of the entry for `path` in `body`; a compile error (in a `const`) when there is none.
pub const fn id(body: Body, path: &str) -> FieldId {
    let mut i = 0;
    while i < FIELDS.len() {
        let f = &FIELDS[i];
        if f.body as u8 == body as u8 && same(f.path, path) {
            return i;
        }
        i += 1;
    }
    panic!("no such field in openai::fields::FIELDS");
}

/// `parent` is `child` or holds it (`usage` holds `usage.prompt_tokens`, `choices` holds
/// `choices[*]`).
pub(crate) fn holds(parent: &str, child: &str) -> bool {
    child
        .strip_prefix(parent)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// An array element marker (`choices[*]`): the fields under it are read per element.
pub(crate) fn is_row(f: &Field) -> bool {
    f.ty == Type::Marker && f.path.ends_with("[*]")
}
