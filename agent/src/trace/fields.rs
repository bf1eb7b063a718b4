//! The span attributes of the OpenAI field table: one per entry of `openai::fields::FIELDS` that
//! names an attribute, set in table order from the scanned values. Pure; no name of a field or an
//! attribute is spelled here.

use super::span::AttrValue;
use crate::protocol::openai::fields::{self, Body, FieldId, When, FIELDS};
use crate::protocol::openai::{Value, Values};

fn attr(v: &Value) -> Option<AttrValue> {
    match v {
        Value::Str { text, .. } => Some(AttrValue::Str(text.clone())),
        Value::Bool(b) => Some(AttrValue::Bool(*b)),
        Value::I64(n) => Some(AttrValue::I64(*n)),
        Value::F64(n) => Some(AttrValue::F64(*n)),
        Value::Absent | Value::Present(_) | Value::Output(_) => None,
    }
}

/// The attribute value of one field: its value outside rows, or the strings of every row.
fn value(values: &Values, id: FieldId) -> Option<AttrValue> {
    if values.row_of(id).is_none() {
        return attr(values.get(id));
    }
    let all: Vec<String> = values
        .all(id)
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    (!all.is_empty()).then_some(AttrValue::StrArray(all))
}

/// The field each `When::Or` entry falls back to, by field id (looked up once, not per span).
fn alternative(id: FieldId) -> Option<FieldId> {
    static ALT: std::sync::LazyLock<Vec<Option<FieldId>>> = std::sync::LazyLock::new(|| {
        FIELDS
            .iter()
            .map(|f| match f.attribute.map(|a| a.when) {
                Some(When::Or(other)) => Some(fields::id(f.body, other)),
                _ => None,
            })
            .collect()
    });
    ALT.get(id).copied().flatten()
}

/// The fields of `body` that name an attribute, in table order (worked out once, not per span).
fn plan(body: Body) -> &'static [(FieldId, fields::Attribute)] {
    static PLAN: std::sync::LazyLock<[Vec<(FieldId, fields::Attribute)>; 2]> =
        std::sync::LazyLock::new(|| {
            [Body::Request, Body::Response].map(|body| {
                FIELDS
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.body == body)
                    .filter_map(|(id, f)| Some((id, f.attribute?)))
                    .collect()
            })
        });
    &PLAN[body as usize]
}

/// Set the attributes of `body`'s fields (`values` absent: the body was not scanned).
pub fn put_field_attributes(
    body: Body,
    values: Option<&Values>,
    put: &mut dyn FnMut(&'static str, AttrValue),
) {
    for &(id, a) in plan(body) {
        let v = values.and_then(|v| value(v, id));
        let v = match a.when {
            When::Present => v,
            When::OrFalse => Some(v.unwrap_or(AttrValue::Bool(false))),
            When::Not(n) => v.filter(|v| *v != AttrValue::I64(n)),
            When::Or(_) => v.or_else(|| {
                let other = alternative(id)?;
                values.and_then(|v| value(v, other))
            }),
        };
        if let Some(v) = v {
            put(a.key, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openai::{RequestScan, ResponseScan};

    fn attributes(body: Body, values: Option<&Values>) -> Vec<(&'static str, AttrValue)> {
        let mut out = Vec::new();
        put_field_attributes(body, values, &mut |k, v| out.push((k, v)));
        out
    }

    /// `docs/spans.md` lists every attribute of the table.
    #[test]
    fn the_span_doc_lists_every_field_attribute() {
        let doc = include_str!("../../../docs/spans.md");
        for f in FIELDS {
            if let Some(a) = f.attribute {
                assert!(
                    doc.contains(&format!("`{}`", a.key)),
                    "docs/spans.md does not list `{}` (field `{}`)",
                    a.key,
                    f.path
                );
            }
        }
    }

    #[test]
    fn attributes_are_scalars_and_alternatives_exist() {
        for f in FIELDS {
            let Some(a) = f.attribute else { continue };
            assert!(
                !matches!(f.ty, fields::Type::Marker | fields::Type::Output),
                "{}",
                f.path
            );
            match a.when {
                When::OrFalse => assert_eq!(f.ty, fields::Type::Bool, "{}", f.path),
                When::Or(other) => assert!(
                    FIELDS.iter().any(|g| g.body == f.body && g.path == other),
                    "{other}"
                ),
                When::Present | When::Not(_) => {}
            }
        }
    }

    #[test]
    fn request_attributes_in_table_order() {
        let mut s = RequestScan::new();
        s.feed(br#"{"n":2,"top_p":0.5,"temperature":0.7,"max_tokens":10,"max_completion_tokens":64,"stream":true,"model":"m"}"#);
        let f = s.into_fields();
        assert_eq!(
            attributes(Body::Request, Some(&f.values)),
            [
                ("gen_ai.request.model", AttrValue::Str("m".into())),
                ("gen_ai.request.stream", AttrValue::Bool(true)),
                ("gen_ai.request.max_tokens", AttrValue::I64(64)),
                ("gen_ai.request.temperature", AttrValue::F64(0.7)),
                ("gen_ai.request.top_p", AttrValue::F64(0.5)),
                ("gen_ai.request.choice.count", AttrValue::I64(2)),
            ]
        );
        let mut s = RequestScan::new();
        s.feed(br#"{"max_tokens":10,"n":1}"#);
        assert_eq!(
            attributes(Body::Request, Some(&s.into_fields().values)),
            [
                ("gen_ai.request.stream", AttrValue::Bool(false)),
                ("gen_ai.request.max_tokens", AttrValue::I64(10)),
            ],
            "max_tokens without max_completion_tokens; n = 1 left out"
        );
        assert_eq!(
            attributes(Body::Request, None),
            [("gen_ai.request.stream", AttrValue::Bool(false))]
        );
    }

    #[test]
    fn response_attributes_in_table_order() {
        let mut s = ResponseScan::new();
        s.feed(br#"{"usage":{"prompt_tokens_details":{"cached_tokens":2},"completion_tokens":3,"prompt_tokens":5},"choices":[{"finish_reason":"stop"},{},{"finish_reason":"length"}],"model":"m","id":"r"}"#);
        assert_eq!(
            attributes(Body::Response, Some(&s.into_fields().values)),
            [
                ("gen_ai.response.id", AttrValue::Str("r".into())),
                ("gen_ai.response.model", AttrValue::Str("m".into())),
                (
                    "gen_ai.response.finish_reasons",
                    AttrValue::StrArray(vec!["stop".into(), "length".into()])
                ),
                ("gen_ai.usage.input_tokens", AttrValue::I64(5)),
                ("gen_ai.usage.output_tokens", AttrValue::I64(3)),
                ("gen_ai.usage.cache_read.input_tokens", AttrValue::I64(2)),
            ]
        );
        assert_eq!(attributes(Body::Response, None), []);
    }
}
