//! `FinishedSpan` → the OpenTelemetry SDK's `SpanData`, the input of every SDK span exporter.
//!
//! Pure: ids, parent, trace state and times are carried over exactly (the agent's spans describe
//! requests it saw, so nothing here is generated). The OTLP encoding itself is the SDK's.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{self, SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::trace::span::{AttrValue, FinishedSpan, SpanKind, SpanStatus};

/// Name of the instrumentation scope of every exported span.
pub const SCOPE_NAME: &str = "infertap";

/// The instrumentation scope of every exported span: the agent and its version.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Converts one span. It is exported as sampled (it passed the sampler to get here); a
/// `tracestate` that is not valid W3C is left out rather than sent malformed.
pub fn to_span_data(span: FinishedSpan, scope: &InstrumentationScope) -> SpanData {
    let trace_state = TraceState::from_str(&span.trace_state).unwrap_or_default();
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.trace_id),
            SpanId::from_bytes(span.span_id),
            TraceFlags::SAMPLED,
            false,
            trace_state,
        ),
        parent_span_id: span
            .parent_span_id
            .map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: span.parent_span_id.is_some() && span.parent_is_remote,
        span_kind: sdk_span_kind(span.kind),
        name: Cow::Owned(span.name),
        start_time: unix_nanos_to_system_time(span.start_unix_nano),
        end_time: unix_nanos_to_system_time(span.end_unix_nano),
        attributes: span
            .attributes
            .into_iter()
            .map(|(key, value)| KeyValue::new(key, sdk_value(value)))
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match span.status {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Ok => Status::Ok,
            SpanStatus::Error(message) => Status::error(message),
        },
        instrumentation_scope: scope.clone(),
    }
}

pub(crate) fn sdk_span_kind(kind: SpanKind) -> trace::SpanKind {
    match kind {
        SpanKind::Server => trace::SpanKind::Server,
        SpanKind::Client => trace::SpanKind::Client,
        SpanKind::Internal => trace::SpanKind::Internal,
    }
}

fn sdk_value(value: AttrValue) -> Value {
    match value {
        AttrValue::Str(s) => Value::String(s.into()),
        AttrValue::I64(i) => Value::I64(i),
        AttrValue::F64(f) => Value::F64(f),
        AttrValue::Bool(b) => Value::Bool(b),
        AttrValue::StrArray(items) => Value::Array(Array::String(
            items.into_iter().map(StringValue::from).collect(),
        )),
    }
}

fn unix_nanos_to_system_time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::store::tests::span;
    use opentelemetry::Key;

    fn full_span() -> FinishedSpan {
        let mut s = span(3);
        s.trace_id = *b"\x4b\xf9\x2f\x35\x77\xb3\x4d\xa6\xa3\xce\x92\x9d\x0e\x0e\x47\x36";
        s.span_id = *b"\x00\xf0\x67\xaa\x0b\xa9\x02\xb7";
        s.parent_span_id = Some(*b"\x12\x34\x56\x78\x9a\xbc\xde\xf0");
        s.parent_is_remote = true;
        s.sampled = true;
        s.trace_state = "vendor=abc,other=x1".into();
        s.name = "chat llama-3".into();
        s.start_unix_nano = 1_700_000_000_123_456_789;
        s.end_unix_nano = 1_700_000_001_987_654_321;
        s.status = SpanStatus::Error("upstream reset".into());
        s.attributes = vec![
            (
                "gen_ai.request.model".into(),
                AttrValue::Str("llama-3".into()),
            ),
            ("gen_ai.usage.output_tokens".into(), AttrValue::I64(42)),
            ("gen_ai.latency.e2e".into(), AttrValue::F64(1.5)),
            ("infertap.incomplete".into(), AttrValue::Bool(false)),
            (
                Cow::Owned("gen_ai.response.finish_reasons".to_string()),
                AttrValue::StrArray(vec!["stop".into(), "length".into()]),
            ),
        ];
        s
    }

    #[test]
    fn ids_parent_state_and_times_are_carried_over() {
        let d = to_span_data(full_span(), &scope());
        assert_eq!(
            d.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(d.span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(d.parent_span_id.to_string(), "123456789abcdef0");
        assert!(d.parent_span_is_remote);
        assert!(d.span_context.is_sampled());
        assert!(!d.span_context.is_remote());
        assert_eq!(d.span_context.trace_state().header(), "vendor=abc,other=x1");
        assert_eq!(d.span_kind, trace::SpanKind::Server);
        assert_eq!(d.name, "chat llama-3");
        let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos();
        assert_eq!(nanos(d.start_time), 1_700_000_000_123_456_789);
        assert_eq!(nanos(d.end_time), 1_700_000_001_987_654_321);
        assert_eq!(d.status, Status::error("upstream reset"));
        assert_eq!(d.instrumentation_scope.name(), "infertap");
        assert_eq!(
            d.instrumentation_scope.version(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn attribute_types_are_kept() {
        let d = to_span_data(full_span(), &scope());
        let get = |k: &str| {
            d.attributes
                .iter()
                .find(|kv| kv.key == Key::from(k.to_string()))
                .map(|kv| kv.value.clone())
                .unwrap()
        };
        assert_eq!(get("gen_ai.request.model"), Value::String("llama-3".into()));
        assert_eq!(get("gen_ai.usage.output_tokens"), Value::I64(42));
        assert_eq!(get("gen_ai.latency.e2e"), Value::F64(1.5));
        assert_eq!(get("infertap.incomplete"), Value::Bool(false));
        assert_eq!(
            get("gen_ai.response.finish_reasons"),
            Value::Array(Array::String(vec!["stop".into(), "length".into()]))
        );
        assert_eq!(d.attributes.len(), 5);
    }

    #[test]
    fn root_span_has_no_parent_and_is_not_remote() {
        let mut s = full_span();
        s.parent_span_id = None;
        s.parent_is_remote = true;
        s.trace_state = "not a valid=state=".into();
        s.kind = SpanKind::Client;
        s.status = SpanStatus::Unset;
        let d = to_span_data(s, &scope());
        assert_eq!(d.parent_span_id, SpanId::INVALID);
        assert!(!d.parent_span_is_remote);
        assert_eq!(d.span_context.trace_state().header(), "");
        assert_eq!(d.span_kind, trace::SpanKind::Client);
        assert_eq!(d.status, Status::Unset);
    }

    #[test]
    fn ok_and_internal() {
        let mut s = full_span();
        s.status = SpanStatus::Ok;
        s.kind = SpanKind::Internal;
        let d = to_span_data(s, &scope());
        assert_eq!(d.status, Status::Ok);
        assert_eq!(d.span_kind, trace::SpanKind::Internal);
    }
}
