//! The phases a server reported of a request (`openai::ServerPhases`: vLLM's per-request
//! `metrics`, llama.cpp's `timings`) as span attributes in seconds, under vLLM's own tracing
//! names where it has them, and what the wire adds to them: the time before the first token
//! that neither the queue nor the model accounts for (network, HTTP, templating, tokenisation,
//! detokenisation of the first token). Pure.

use super::span::AttrValue;
use crate::protocol::openai::ServerPhases;
use crate::schema::attr;

/// Put the phases' attributes; `ttft_s` is the wire's time to first token (first request byte
/// read → first content written). Returns the API-server time it derived, if any.
pub fn put_server_phases(
    p: &ServerPhases,
    ttft_s: Option<f64>,
    put: &mut dyn FnMut(&'static str, AttrValue),
) -> Option<f64> {
    let s = |ms: Option<f64>| ms.map(|ms| ms / 1e3);
    put(
        attr::INFERTAP_SERVER_PHASES_SOURCE,
        AttrValue::Str(p.source.as_str().to_string()),
    );
    for (key, v) in [
        (attr::GEN_AI_LATENCY_TIME_IN_QUEUE, s(p.queue_ms)),
        (attr::GEN_AI_LATENCY_TIME_IN_MODEL_PREFILL, s(p.prefill_ms)),
        (attr::GEN_AI_LATENCY_TIME_IN_MODEL_DECODE, s(p.decode_ms)),
        (
            attr::INFERTAP_SERVER_INTER_TOKEN_LATENCY_MEAN,
            s(p.mean_itl_ms),
        ),
        (attr::INFERTAP_SERVER_TOKENS_PER_SECOND, p.tokens_per_second),
    ] {
        if let Some(v) = v {
            put(key, AttrValue::F64(v));
        }
    }
    for (key, v) in [
        (attr::INFERTAP_USAGE_REASONING_TOKENS, p.reasoning_tokens),
        (
            attr::INFERTAP_SERVER_PROMPT_TOKENS_CACHED,
            p.cached_prompt_tokens,
        ),
        (
            attr::INFERTAP_SERVER_PROMPT_TOKENS_EVALUATED,
            p.prompt_tokens_evaluated,
        ),
    ] {
        if let Some(v) = v {
            put(key, AttrValue::I64(v));
        }
    }
    // The wire's TTFT less what the server accounts for before its first token: the queue (a
    // server that reports none, llama.cpp, is taken as having none) and the prefill.
    let api = ttft_s? - s(p.queue_ms).unwrap_or(0.0) - s(p.prefill_ms)?;
    put(attr::INFERTAP_LATENCY_API_SERVER, AttrValue::F64(api));
    Some(api)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openai::PhaseSource;

    #[test]
    fn vllm_metrics_become_seconds_and_the_api_server_time_is_what_is_left() {
        let p = ServerPhases {
            queue_ms: Some(120.0),
            prefill_ms: Some(30.0),
            decode_ms: Some(900.0),
            mean_itl_ms: Some(12.5),
            tokens_per_second: Some(80.0),
            reasoning_tokens: Some(4),
            ..ServerPhases::default()
        };
        let mut out = Vec::new();
        let api = put_server_phases(&p, Some(0.2), &mut |k, v| out.push((k, v)));
        assert!((api.unwrap() - 0.05).abs() < 1e-9);
        let get = |k: &str| {
            out.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("gen_ai.latency.time_in_queue"),
            Some(AttrValue::F64(0.12))
        );
        assert_eq!(
            get("gen_ai.latency.time_in_model_decode"),
            Some(AttrValue::F64(0.9))
        );
        assert_eq!(
            get("infertap.server.phases_source"),
            Some(AttrValue::Str("vllm".into()))
        );
        assert_eq!(
            get("infertap.usage.reasoning_tokens"),
            Some(AttrValue::I64(4))
        );
    }

    #[test]
    fn without_a_wire_ttft_or_a_prefill_nothing_is_derived() {
        let p = ServerPhases {
            queue_ms: Some(1.0),
            source: PhaseSource::LlamaCpp,
            ..ServerPhases::default()
        };
        let mut out = Vec::new();
        assert_eq!(
            put_server_phases(&p, Some(0.2), &mut |k, v| out.push((k, v))),
            None
        );
        assert_eq!(
            put_server_phases(&p, None, &mut |k, v| out.push((k, v))),
            None
        );
        assert!(out.iter().all(|(k, _)| *k != "infertap.latency.api_server"));
    }
}
