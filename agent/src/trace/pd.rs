//! Prefill/decode disaggregation (llm-d): the routing sidecar sends each request twice — a
//! prefill leg (`kv_transfer_params.do_remote_decode`, `max_tokens: 1`) to a prefill server, then
//! a decode leg (`do_remote_prefill`, the prefill's returned transfer parameters) to a decode
//! server — with the same `x-request-id` (and trace). Each leg's span gets `llm_d.pd.role`; a
//! decode leg whose prefill leg this agent saw gets the KV-cache transfer gap: the prefill's last
//! response byte → the decode's first request byte, measured on one node's clock (the sidecar
//! and the decode server share a pod; a prefill server elsewhere is seen as the sidecar's
//! CLIENT span).
//!
//! Pure, and bounded: at most [`LEGS_MAX`] prefill ends are remembered, each for at most
//! [`LEG_TTL_NS`]; older ones are forgotten first (and counted).

use std::collections::{HashMap, VecDeque};

use super::span::AttrValue;
use super::Built;
use crate::exchange::Exchange;
use crate::schema::attr;

/// Prefill legs remembered while their decode leg is due.
pub const LEGS_MAX: usize = 4096;
/// How long a prefill leg waits for its decode leg.
pub const LEG_TTL_NS: u64 = 60_000_000_000;

/// The prefill legs seen, by request key, waiting for their decode leg.
#[derive(Debug, Default)]
pub struct Legs {
    /// Key → the latest end of a prefill leg with that key (kernel monotonic ns).
    ends: HashMap<String, u64>,
    /// Keys in the order they were first remembered (for eviction).
    order: VecDeque<(String, u64)>,
    /// Prefill legs forgotten for room or age before a decode leg came.
    pub evicted: u64,
}

/// A leg's key: its `x-request-id`, else its trace id (hex).
fn key(ex: &Exchange, built: &Built) -> String {
    ex.request
        .headers
        .iter()
        .find(|(k, v)| *k == "x-request-id" && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| {
            built
                .span
                .trace_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
}

impl Legs {
    pub fn new() -> Legs {
        Legs::default()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Mark an exchange's span with its leg, remember a prefill leg's end, and give a decode leg
    /// its transfer gap.
    pub fn apply(&mut self, ex: &Exchange, built: &mut Built) {
        let Some(role) = ex.request_fields.as_ref().and_then(|f| f.values.pd_role()) else {
            return;
        };
        built.summary.pd_role = Some(role);
        let attrs = &mut built.span.attributes;
        attrs.push((attr::LLM_D_PD_ROLE.into(), AttrValue::Str(role.to_string())));
        let k = key(ex, built);
        self.expire(ex.start_ns);
        match role {
            "prefill" => self.remember(k, ex.end_ns),
            _ => {
                let Some(end) = self.ends.get(&k).copied() else {
                    return;
                };
                let Some(gap) = ex.start_ns.checked_sub(end) else {
                    return; // the legs overlap: not a prefill-then-decode pair
                };
                let gap_s = gap as f64 / 1e9;
                built.summary.kv_transfer_gap_s = Some(gap_s);
                built.span.attributes.push((
                    attr::INFERTAP_PD_KV_TRANSFER_GAP.into(),
                    AttrValue::F64(gap_s),
                ));
            }
        }
    }

    fn remember(&mut self, k: String, end_ns: u64) {
        if let Some(e) = self.ends.get_mut(&k) {
            *e = (*e).max(end_ns);
            return;
        }
        while self.ends.len() >= LEGS_MAX {
            let Some((old, _)) = self.order.pop_front() else {
                break;
            };
            if self.ends.remove(&old).is_some() {
                self.evicted += 1;
            }
        }
        self.order.push_back((k.clone(), end_ns));
        self.ends.insert(k, end_ns);
    }

    /// Forget prefill legs older than [`LEG_TTL_NS`] before `now_ns`.
    fn expire(&mut self, now_ns: u64) {
        while let Some((k, t)) = self.order.front() {
            if now_ns.saturating_sub(*t) <= LEG_TTL_NS {
                break;
            }
            if self.ends.remove(k).is_some() {
                self.evicted += 1;
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::clock::WallClock;
    use crate::conn::ConnMeta;
    use crate::exchange::ExchangeTracker;
    use crate::protocol::http::{HttpEvent, RequestHead, ResponseHead};
    use crate::trace::build::{build_span, BuildOptions, RandomIds};

    const MS: u64 = 1_000_000;

    /// An exchange: request at `start_ms`, JSON response ending at `end_ms`.
    fn leg(request_id: &str, body: &str, start_ms: u64, end_ms: u64) -> Exchange {
        let mut t = ExchangeTracker::new();
        let mut done = Vec::new();
        let head = RequestHead {
            method: "POST".into(),
            path: "/v1/completions".into(),
            minor_version: 1,
            content_length: Some(body.len() as u64),
            chunked: false,
            headers: vec![
                ("content-type", "application/json".into()),
                ("x-request-id", request_id.into()),
            ],
        };
        let resp = ResponseHead {
            status: 200,
            minor_version: 1,
            content_length: Some(2),
            chunked: false,
            headers: vec![("content-type", "application/json".into())],
        };
        for ev in [
            HttpEvent::RequestHead {
                ts_ns: start_ms * MS,
                head,
            },
            HttpEvent::RequestBody {
                ts_ns: start_ms * MS,
                data: body.as_bytes(),
            },
            HttpEvent::RequestEnd {
                ts_ns: start_ms * MS,
            },
            HttpEvent::ResponseHead {
                ts_ns: end_ms * MS,
                head: resp,
            },
            HttpEvent::ResponseBody {
                ts_ns: end_ms * MS,
                data: b"{}",
            },
            HttpEvent::ResponseEnd { ts_ns: end_ms * MS },
        ] {
            t.on_event(ev, &mut done);
        }
        done.pop().unwrap()
    }

    fn built(ex: &Exchange) -> Built {
        let meta = ConnMeta {
            server: true,
            provider: "vllm",
            ..ConnMeta::default()
        };
        let clock = WallClock::with_offset(0);
        build_span(ex, &meta, &clock, &BuildOptions::default(), &mut RandomIds)
    }

    const PREFILL: &str = r#"{"model":"m","prompt":"SECRET","max_tokens":1,"kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false}}"#;
    const DECODE: &str = r#"{"model":"m","prompt":"SECRET","max_tokens":64,"kv_transfer_params":{"do_remote_decode":false,"do_remote_prefill":true,"remote_engine_id":"e","remote_block_ids":[1,2],"remote_host":"10.0.0.7","remote_port":5600}}"#;

    #[test]
    fn the_decode_leg_gets_the_gap_since_its_prefill_leg_ended() {
        let mut legs = Legs::new();
        let prefill = leg("req-1", PREFILL, 100, 180);
        let mut p = built(&prefill);
        legs.apply(&prefill, &mut p);
        assert_eq!(
            p.span.attr("llm_d.pd.role"),
            Some(&AttrValue::Str("prefill".into()))
        );
        assert_eq!(p.span.attr("infertap.pd.kv_transfer_gap"), None);
        // Another request's decode leg in between: no gap (not its prefill).
        let other = leg("req-2", DECODE, 181, 300);
        let mut o = built(&other);
        legs.apply(&other, &mut o);
        assert_eq!(o.summary.kv_transfer_gap_s, None);
        assert_eq!(o.summary.pd_role, Some("decode"));

        let decode = leg("req-1", DECODE, 187, 400);
        let mut d = built(&decode);
        legs.apply(&decode, &mut d);
        assert_eq!(
            d.span.attr("llm_d.pd.role"),
            Some(&AttrValue::Str("decode".into()))
        );
        let gap = d.summary.kv_transfer_gap_s.unwrap();
        assert!((gap - 0.007).abs() < 1e-12, "{gap}");
        assert_eq!(
            d.span.attr("infertap.pd.kv_transfer_gap"),
            Some(&AttrValue::F64(gap))
        );
        // Both legs in one trace (the id derived from x-request-id).
        assert_eq!(p.span.trace_id, d.span.trace_id);
    }

    #[test]
    fn plain_requests_are_no_leg_and_memory_is_bounded() {
        let mut legs = Legs::new();
        let plain = leg("r", r#"{"model":"m","prompt":"x"}"#, 1, 2);
        let mut b = built(&plain);
        legs.apply(&plain, &mut b);
        assert_eq!(b.summary.pd_role, None);
        assert!(b.span.attr("llm_d.pd.role").is_none());
        for i in 0..LEGS_MAX + 10 {
            legs.remember(format!("k{i}"), 5);
        }
        assert_eq!(legs.len(), LEGS_MAX);
        assert_eq!(legs.evicted, 10);
        legs.expire(5 + LEG_TTL_NS + 1);
        assert!(legs.is_empty());
        assert_eq!(legs.evicted, LEGS_MAX as u64 + 10);
    }
}
