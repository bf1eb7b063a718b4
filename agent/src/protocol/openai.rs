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
#[cfg(test)]
mod oracle;
mod scan;

pub use scan::{RequestScan, ResponseScan, Rows, Value, Values, CHOICES_MAX};

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
mod tests {
    use super::oracle::{parse_request, parse_response};
    use super::*;

    #[test]
    fn paths_map_to_operations() {
        assert_eq!(
            Operation::from_path("/v1/chat/completions"),
            Some(Operation::Chat)
        );
        assert_eq!(
            Operation::from_path("/v1/completions"),
            Some(Operation::TextCompletion)
        );
        assert_eq!(
            Operation::from_path("/v1/embeddings"),
            Some(Operation::Embeddings)
        );
        assert_eq!(Operation::from_path("/health"), None);
    }

    #[test]
    fn request_fields_after_a_long_messages_array() {
        let big = "x ".repeat(100_000);
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"{big}"}}],"model":"m-1","stream":true,"stream_options":{{"include_usage":true}},"max_completion_tokens":7,"temperature":0.5,"top_p":0.9,"n":2}}"#
        );
        let f = parse_request(body.as_bytes()).unwrap();
        assert_eq!(f.model.as_deref(), Some("m-1"));
        assert_eq!(f.stream, Some(true));
        assert_eq!(f.include_usage, Some(true));
        assert_eq!(f.max_tokens, Some(7));
        assert_eq!(f.temperature, Some(0.5));
        assert_eq!(f.top_p, Some(0.9));
        assert_eq!(f.n, Some(2));
    }

    #[test]
    fn role_only_first_chunk_is_not_content() {
        let role = br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#;
        let c = parse_stream_chunk(role).unwrap();
        assert!(!c.has_content);
        assert_eq!(c.id.as_deref(), Some("chatcmpl-1"));
        let tok = br#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}"#;
        let c = parse_stream_chunk(tok).unwrap();
        assert!(c.has_content);
        assert_eq!(c.finish_reasons, vec!["stop"]);
        let usage = br#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,"prompt_tokens_details":{"cached_tokens":2}}}"#;
        let c = parse_stream_chunk(usage).unwrap();
        assert!(!c.has_content);
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt_tokens: Some(5),
                completion_tokens: Some(3),
                cached_tokens: Some(2)
            })
        );
        let completion = br#"{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" a","logprobs":null,"finish_reason":null}],"usage":null}"#;
        assert!(parse_stream_chunk(completion).unwrap().has_content);
        let err =
            br#"{"error":{"message":"boom","type":"InternalServerError","param":null,"code":500}}"#;
        assert_eq!(
            parse_stream_chunk(err).unwrap().error_type.as_deref(),
            Some("InternalServerError")
        );
        assert_eq!(parse_stream_chunk(b"[DONE]"), None);
    }

    #[test]
    fn chunk_identifiers_with_escapes_and_over_the_bound() {
        // Escaped strings cannot be borrowed: they are decoded (and still bounded).
        let c = parse_stream_chunk(
            br#"{"id":"chat\u0063mpl-\"7\"","model":"m\/1","choices":[{"delta":{"content":"x"},"finish_reason":"st\u006fp"}]}"#,
        )
        .unwrap();
        assert_eq!(c.id.as_deref(), Some(r#"chatcmpl-"7""#));
        assert_eq!(c.model.as_deref(), Some("m/1"));
        assert_eq!(c.finish_reasons, vec!["stop"]);
        assert!(c.has_content);
        // Identifiers longer than the bound are cut at a character boundary, borrowed or not.
        let long = "é".repeat(200); // 400 bytes
        for id in [long.clone(), format!("\\\\{long}")] {
            let chunk = format!(r#"{{"id":"{id}","model":"{id}","choices":[]}}"#);
            let c = parse_stream_chunk(chunk.as_bytes()).unwrap();
            let got = c.id.unwrap();
            assert!(
                got.len() <= ID_MAX && got.len() >= ID_MAX - 1,
                "{}",
                got.len()
            );
            assert!(long.starts_with(got.trim_start_matches('\\')));
            assert_eq!(c.model.as_deref(), Some(&*got));
        }
    }

    #[test]
    fn every_choice_counts() {
        let c = parse_stream_chunk(
            br#"{"choices":[{"index":0,"delta":{"content":""},"finish_reason":"length"},{"index":1,"delta":{"tool_calls":[{"id":"t"}]},"finish_reason":null},{"index":2,"delta":{},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert!(c.has_content, "the second choice carries a tool call");
        assert_eq!(c.finish_reasons, vec!["length", "stop"]);
        let none = parse_stream_chunk(
            br#"{"choices":[{"delta":{"content":null,"reasoning":"","tool_calls":[]}}]}"#,
        )
        .unwrap();
        assert!(!none.has_content);
        let r = parse_response(
            br#"{"id":"r","choices":[{"message":{"content":"a"},"finish_reason":"stop"},{"message":null},{"text":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(r.choices_with_output, 2);
        assert_eq!(r.finish_reasons, vec!["stop"]);
        // A choices value that is not an array fails the chunk, as a typed array did.
        assert_eq!(parse_stream_chunk(br#"{"id":"x","choices":null}"#), None);
        assert_eq!(parse_stream_chunk(br#"{"id":"x","choices":{}}"#), None);
        assert!(parse_stream_chunk(br#"{"id":"x"}"#).is_some());
    }

    #[test]
    fn invalid_utf8_fails_only_where_a_kept_string_has_it() {
        // In a skipped field it is tolerated, as serde_json over bytes does.
        let c = parse_stream_chunk(
            b"{\"id\":\"c-1\",\"system_fingerprint\":\"\xff\xfe\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}",
        )
        .unwrap();
        assert_eq!(c.id.as_deref(), Some("c-1"));
        assert!(c.has_content);
        // In an identifier it fails the chunk rather than keeping invalid text.
        assert_eq!(
            parse_stream_chunk(b"{\"id\":\"c-\xff\",\"choices\":[]}"),
            None
        );
        assert_eq!(
            parse_request(b"{\"model\":\"m\",\"messages\":[{\"content\":\"\xc3\"}]}")
                .and_then(|r| r.model),
            Some("m".to_string())
        );
    }

    #[test]
    fn usage_is_found_in_a_tail() {
        let tail = br#"lo world"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"total_tokens":15,"completion_tokens":5}}"#;
        assert_eq!(usage_from_tail(tail).unwrap().completion_tokens, Some(5));
        assert_eq!(usage_from_tail(b"no usage here"), None);
    }
}
