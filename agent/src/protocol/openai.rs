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

pub use scan::{RequestScan, ResponseScan, Rows, Slots, Value, Values, CHOICES_MAX};

/// Longest identifier kept (model names, ids, error types).
const ID_MAX: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Chat,
    TextCompletion,
    Embeddings,
}

impl Operation {
    pub fn from_path(path: &str) -> Option<Operation> {
        let p = path.trim_end_matches('/');
        if p.ends_with("/chat/completions") {
            Some(Operation::Chat)
        } else if p.ends_with("/completions") {
            Some(Operation::TextCompletion)
        } else if p.ends_with("/embeddings") {
            Some(Operation::Embeddings)
        } else {
            None
        }
    }

    /// `gen_ai.operation.name`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
        }
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

#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    prompt_tokens_details: Option<RawPromptDetails>,
}

#[derive(Deserialize)]
struct RawPromptDetails {
    cached_tokens: Option<i64>,
}

impl From<RawUsage> for Usage {
    fn from(u: RawUsage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
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
    #[serde(borrow)]
    error: Option<Box<RawError<'a>>>,
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
}

/// Parse one SSE `data:` payload. `[DONE]` and non-JSON payloads yield `None`.
pub fn parse_stream_chunk(data: &[u8]) -> Option<StreamChunk<'_>> {
    let c: RawChunk<'_> = from_json(data).ok()?;
    Some(StreamChunk {
        id: c.id.map(bounded_cow),
        model: c.model.map(bounded_cow),
        has_content: c.choices.delta_output,
        finish_reasons: c.choices.finish_reasons,
        usage: c.usage.map(|u| Usage::from(*u)),
        error_type: c.error.map(|e| error_type(e.kind, e.code)),
    })
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
