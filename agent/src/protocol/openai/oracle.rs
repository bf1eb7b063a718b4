//! Test oracles: serde_json readings of request and response bodies that the streaming scan
//! must agree with. Test-only; production reads bodies with `openai::scan` and stream chunks
//! with `parse_stream_chunk`.
//!
//! Two kinds: [`parse_request`] and [`parse_response`] read the named fields through typed serde
//! structs (independent of the field table); [`values`] reads every field of the table from a
//! `serde_json::Value`, so that a field added to the table is checked with no code of its own.

use serde::Deserialize;
use serde_json::Value as Json;

use super::fields::{self, Body, Type, FIELDS};
use super::scan::CHOICES_MAX;
use super::{bounded, from_json, JsonStr, RawChunk, RequestFields, ResponseFields, Value, Values};
use crate::protocol::json_scan::{Kind, STRING_MAX};

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    model: Option<JsonStr<'a>>,
    stream: Option<bool>,
    stream_options: Option<RawStreamOptions>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<i64>,
    max_output_tokens: Option<i64>,
    parameters: Option<RawSampling>,
    sampling_params: Option<RawSampling>,
}

/// TGI's `parameters`, SGLang's `sampling_params`.
#[derive(Deserialize)]
struct RawSampling {
    max_new_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
}

#[derive(Deserialize)]
struct RawStreamOptions {
    include_usage: Option<bool>,
}

/// The body as a `serde_json::Value` (invalid UTF-8 replaced: it can only sit in strings the
/// typed reading skips or rejects).
fn json(body: &[u8]) -> Option<Json> {
    serde_json::from_str(&String::from_utf8_lossy(body)).ok()
}

/// Parse a complete request body. Unknown fields (messages, prompt, …) are skipped without
/// being stored.
pub fn parse_request(body: &[u8]) -> Option<RequestFields> {
    let r: RawRequest<'_> = from_json(body).ok()?;
    let other = [&r.parameters, &r.sampling_params];
    let other =
        |f: fn(&RawSampling) -> Option<f64>| other.iter().flat_map(|o| o.as_ref()).find_map(f);
    let mut values = values(Body::Request, &json(body)?);
    values.normalise();
    Some(RequestFields {
        model: r.model.map(|m| bounded(&m.0)),
        stream: r.stream,
        include_usage: r.stream_options.and_then(|o| o.include_usage),
        max_tokens: r
            .max_completion_tokens
            .or(r.max_tokens)
            .or(r.max_output_tokens)
            .or_else(|| {
                [&r.parameters, &r.sampling_params]
                    .iter()
                    .flat_map(|o| o.as_ref())
                    .find_map(|o| o.max_new_tokens)
            }),
        temperature: r.temperature.or_else(|| other(|o| o.temperature)),
        top_p: r.top_p.or_else(|| other(|o| o.top_p)),
        n: r.n,
        values,
    })
}

pub fn parse_response(body: &[u8]) -> Option<ResponseFields> {
    let c: RawChunk<'_> = from_json(body).ok()?;
    let said = c.said();
    let mut values = values(Body::Response, &json(body)?);
    values.normalise();
    Some(ResponseFields {
        id: said.chunk.id.map(|s| s.into_owned()),
        model: said.chunk.model.map(|s| s.into_owned()),
        finish_reasons: said.chunk.finish_reasons,
        choices_with_output: said.choices_with_output,
        other_output: said.body_output,
        usage: said.chunk.usage,
        error_type: said.chunk.error_type,
        values,
    })
}

fn kind(v: &Json) -> Kind {
    match v {
        Json::Object(_) => Kind::Object,
        Json::Array(_) => Kind::Array,
        Json::String(_) => Kind::String,
        Json::Number(_) => Kind::Number,
        Json::Bool(_) => Kind::Bool,
        Json::Null => Kind::Null,
    }
}

/// A string as the scan keeps it: at most `STRING_MAX` bytes, cut at a character boundary.
pub fn string(s: &str) -> Value {
    let mut end = s.len().min(STRING_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Value::Str {
        text: s[..end].to_string(),
        truncated: s.len() > STRING_MAX,
    }
}

/// One field's value as the scan keeps it, from the JSON value at its path (`None`: absent).
fn value(ty: Type, v: Option<&Json>) -> Value {
    let Some(v) = v else {
        return Value::Absent;
    };
    let or_absent = |x: Option<Value>| x.unwrap_or(Value::Absent);
    match ty {
        Type::Str => or_absent(v.as_str().map(string)),
        Type::Text => match v {
            Json::String(s) => string(s),
            Json::Number(n) => Value::Str {
                text: n.to_string(),
                truncated: false,
            },
            _ => Value::Absent,
        },
        Type::Bool => or_absent(v.as_bool().map(Value::Bool)),
        Type::I64 => or_absent(v.as_i64().map(Value::I64)),
        Type::F64 => or_absent(v.as_f64().map(Value::F64)),
        Type::Marker => Value::Present(kind(v)),
        Type::Output => Value::Output(match v {
            Json::Null => false,
            Json::String(s) => !s.is_empty(),
            Json::Array(a) => !a.is_empty(),
            _ => true,
        }),
    }
}

/// The value at a dotted path of object keys.
fn at<'a>(mut v: &'a Json, path: &str) -> Option<&'a Json> {
    for key in path.split('.').filter(|k| !k.is_empty()) {
        v = v.get(key)?;
    }
    Some(v)
}

/// Every field of `body`'s part of the table, read from a parsed body.
pub fn values(body: Body, doc: &Json) -> Values {
    let mut out = Values::new(body);
    for (id, f) in FIELDS.iter().enumerate() {
        if f.body != body || out.row_of(id).is_some() {
            continue;
        }
        if !fields::is_row(f) {
            out.set(id, value(f.ty, at(doc, f.path)));
            continue;
        }
        let elements = at(doc, f.path.trim_end_matches("[*]"))
            .and_then(Json::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for e in elements.iter().take(CHOICES_MAX) {
            let row = (0..FIELDS.len())
                .filter(|&j| out.row_of(j) == Some(id))
                .map(|j| {
                    let rest = &FIELDS[j].path[f.path.len()..];
                    (j, value(FIELDS[j].ty, at(e, rest)))
                });
            let row: Vec<_> = row.collect();
            out.push_row(id, row);
        }
        out.set_dropped(id, elements.len().saturating_sub(CHOICES_MAX));
    }
    out
}
