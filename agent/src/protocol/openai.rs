//! OpenAI-compatible API semantics: which operation a path is, and the few JSON fields of
//! requests, stream chunks and responses that describe a request — never its text.
//!
//! Pure: bytes in, values out. Every `String` produced here is an identifier (model name, response
//! id, finish reason, error type), bounded in length; prompt and completion text are only ever
//! *looked at* (is this chunk's content empty?), never copied.

use serde::Deserialize;
use serde_json::value::RawValue;

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

fn bounded(s: &str) -> String {
    let mut end = s.len().min(ID_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The request fields that describe a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestFields {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub include_usage: Option<bool>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<RawStreamOptions>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<i64>,
}

#[derive(Deserialize)]
struct RawStreamOptions {
    include_usage: Option<bool>,
}

/// Parse a complete request body. Unknown fields (messages, prompt, …) are skipped without
/// being stored.
pub fn parse_request(body: &[u8]) -> Option<RequestFields> {
    let r: RawRequest<'_> = serde_json::from_slice(body).ok()?;
    Some(RequestFields {
        model: r.model.as_deref().map(bounded),
        stream: r.stream,
        include_usage: r.stream_options.and_then(|o| o.include_usage),
        max_tokens: r.max_completion_tokens.or(r.max_tokens),
        temperature: r.temperature,
        top_p: r.top_p,
        n: r.n,
    })
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
    kind: Option<std::borrow::Cow<'a, str>>,
    code: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawChoice<'a> {
    #[serde(borrow)]
    delta: Option<RawDelta<'a>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
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

#[derive(Deserialize)]
struct RawChunk<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Vec<RawChoice<'a>>,
    usage: Option<RawUsage>,
    #[serde(borrow)]
    error: Option<RawError<'a>>,
}

/// A JSON value that carries generated output: a non-empty string, or a non-empty array.
fn has_output(v: Option<&RawValue>) -> bool {
    match v.map(|v| v.get().trim()) {
        None | Some("null") | Some("\"\"") | Some("[]") => false,
        Some(_) => true,
    }
}

/// What one `data:` event of a streaming response says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamChunk {
    pub id: Option<String>,
    pub model: Option<String>,
    /// The chunk carries generated output (content, reasoning, tool calls or completion text):
    /// a role-only first chunk does not.
    pub has_content: bool,
    pub finish_reasons: Vec<String>,
    pub usage: Option<Usage>,
    /// `error.type` of an in-stream error event.
    pub error_type: Option<String>,
}

/// Parse one SSE `data:` payload. `[DONE]` and non-JSON payloads yield `None`.
pub fn parse_stream_chunk(data: &[u8]) -> Option<StreamChunk> {
    let c: RawChunk<'_> = serde_json::from_slice(data).ok()?;
    let has_content = c.choices.iter().any(|ch| {
        has_output(ch.text)
            || ch.delta.as_ref().is_some_and(|d| {
                has_output(d.content)
                    || has_output(d.reasoning)
                    || has_output(d.reasoning_content)
                    || has_output(d.tool_calls)
            })
    });
    Some(StreamChunk {
        id: c.id.as_deref().map(bounded),
        model: c.model.as_deref().map(bounded),
        has_content,
        finish_reasons: c
            .choices
            .iter()
            .filter_map(|ch| ch.finish_reason.as_deref().map(bounded))
            .collect(),
        usage: c.usage.map(Usage::from),
        error_type: c.error.map(|e| error_type(e.kind.as_deref(), e.code)),
    })
}

fn error_type(kind: Option<&str>, code: Option<&RawValue>) -> String {
    match kind {
        Some(k) if !k.is_empty() => bounded(k),
        _ => code
            .map(|c| bounded(c.get().trim_matches('"')))
            .unwrap_or_else(|| "error".to_string()),
    }
}

/// What a complete non-streaming response body says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResponseFields {
    pub id: Option<String>,
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
    pub usage: Option<Usage>,
    pub error_type: Option<String>,
    /// Choices that carried output (a message or text).
    pub choices_with_output: usize,
}

pub fn parse_response(body: &[u8]) -> Option<ResponseFields> {
    let c: RawChunk<'_> = serde_json::from_slice(body).ok()?;
    Some(ResponseFields {
        id: c.id.as_deref().map(bounded),
        model: c.model.as_deref().map(bounded),
        finish_reasons: c
            .choices
            .iter()
            .filter_map(|ch| ch.finish_reason.as_deref().map(bounded))
            .collect(),
        choices_with_output: c
            .choices
            .iter()
            .filter(|ch| has_output(ch.message) || has_output(ch.text))
            .count(),
        usage: c.usage.map(Usage::from),
        error_type: c.error.map(|e| error_type(e.kind.as_deref(), e.code)),
    })
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
    fn usage_is_found_in_a_tail() {
        let tail = br#"lo world"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"total_tokens":15,"completion_tokens":5}}"#;
        assert_eq!(usage_from_tail(tail).unwrap().completion_tokens, Some(5));
        assert_eq!(usage_from_tail(b"no usage here"), None);
    }
}
