//! The flight-recorder page of the debug endpoint, and the two JSON endpoints only it needed.
//!
//! | path | answer |
//! |---|---|
//! | `GET /` | the page (`page/index.html`), self-contained: no CDN, no build step |
//! | `GET /page.css`, `GET /page.js` | its style and script, embedded in the binary |
//! | `GET /ticks?span_id=HEX` | `{"span_id","offsets_us":[…],"chunks"}`: when each content chunk of a recent streamed request was written, in µs after the span's start (404 when not kept) |
//! | `GET /gpu/series?from=UNIX_NS&to=UNIX_NS` | `{"devices":[{"index","uuid","name","figures":{FIGURE:[[start_unix_nano,end_unix_nano,value],…]},"energy_joules","pids"}]}`: every GPU's kept samples overlapping the window (at most 15 minutes) |
//!
//! The page reads only `/spans`, `/status`, `/gpu`, `/gpu/series` and `/ticks`, by relative
//! URLs, so it works behind `kubectl port-forward` (and under a path prefix). Must never: serve
//! a payload byte (spans, ticks and samples hold none), or write anything.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::debug::DebugState;
use super::ticks::Ticks;
use crate::capture::clock::WallClock;
use crate::gpu::Hub;
use crate::trace::span::hex;

const INDEX_HTML: &str = include_str!("page/index.html");
const PAGE_CSS: &str = include_str!("page/page.css");
const PAGE_JS: &str = include_str!("page/page.js");

/// The longest window `/gpu/series` answers for.
pub const MAX_SERIES_WINDOW_NS: u64 = 15 * 60 * 1_000_000_000;

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn css() -> Response {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct TicksQuery {
    span_id: Option<String>,
}

pub async fn ticks(
    State(state): State<DebugState>,
    query: Result<Query<TicksQuery>, QueryRejection>,
) -> Response {
    let Some(id) = query
        .ok()
        .and_then(|Query(q)| q.span_id)
        .and_then(|s| parse_span_id(&s))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "use ?span_id=HEX (16 hex digits)".into(),
        );
    };
    match state.ticks().and_then(|t| t.get(id)) {
        Some(t) => Json(ticks_json(&t)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!(
                "no chunk times kept for span {}: not a streamed request, or too old",
                hex(&id)
            ),
        ),
    }
}

pub fn ticks_json(t: &Ticks) -> Value {
    json!({ "span_id": hex(&t.span_id), "offsets_us": t.offsets_us, "chunks": t.chunks })
}

fn parse_span_id(s: &str) -> Option<[u8; 8]> {
    if s.len() != 16 {
        return None;
    }
    let mut out = [0u8; 8];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[derive(Deserialize)]
pub struct SeriesQuery {
    from: Option<u64>,
    to: Option<u64>,
}

pub async fn gpu_series(
    State(state): State<DebugState>,
    query: Result<Query<SeriesQuery>, QueryRejection>,
) -> Response {
    let (from, to) = match query {
        Ok(Query(SeriesQuery {
            from: Some(from),
            to: Some(to),
        })) if from < to && to - from <= MAX_SERIES_WINDOW_NS => (from, to),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "use ?from=UNIX_NS&to=UNIX_NS, from < to, at most 15 minutes apart".into(),
            )
        }
    };
    match state.gpu_hub() {
        Some(hub) => Json(series_json(hub, &WallClock::measure(), from, to)).into_response(),
        None => Json(json!({ "devices": [] })).into_response(),
    }
}

/// Every device's samples overlapping `[from, to]` (Unix ns), with Unix-ns interval ends.
pub fn series_json(hub: &Hub, clock: &WallClock, from: u64, to: u64) -> Value {
    let (a, b) = (clock.to_monotonic_nanos(from), clock.to_monotonic_nanos(to));
    hub.read(|s| {
        let devices: Vec<Value> = s
            .devices
            .iter()
            .map(|d| {
                let figures: serde_json::Map<String, Value> = d
                    .tracks
                    .iter()
                    .map(|(f, t)| {
                        let points: Vec<Value> = t
                            .series
                            .overlapping(a, b)
                            .map(|i| {
                                json!([
                                    clock.to_unix_nanos(i.start_ns),
                                    clock.to_unix_nanos(i.end_ns),
                                    i.value
                                ])
                            })
                            .collect();
                        (f.as_str().to_string(), Value::from(points))
                    })
                    .collect();
                let energy = d.energy.window(a, b).map(|w| w.increase / 1000.0);
                json!({
                    "index": d.index,
                    "uuid": d.uuid,
                    "name": d.name,
                    "figures": figures,
                    "energy_joules": energy,
                    "pids": d.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "devices": devices })
    })
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_ids_parse_as_16_hex_digits() {
        assert_eq!(
            parse_span_id("00f067aa0ba902b7"),
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        for bad in ["", "00f067aa0ba902b", "00f067aa0ba902bz", "ü0f067aa0ba902b"] {
            assert_eq!(parse_span_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn series_are_the_samples_overlapping_the_window_in_unix_time() {
        use crate::gpu::{Device, Figure, Origin};
        let hub = Hub::default();
        let s = 1_000_000_000u64;
        hub.write(|h| {
            let mut d = Device {
                uuid: "GPU-0".into(),
                ..Device::default()
            };
            for k in 0..10u64 {
                d.push(
                    Figure::GpuUtilization,
                    Origin::Nvml,
                    k * s,
                    (k + 1) * s,
                    k as f64 / 10.0,
                );
            }
            d.push(Figure::Power, Origin::Nvml, 0, 10 * s, 250.0);
            h.devices.push(d);
        });
        // Unix = monotonic + 100 s.
        let clock = WallClock::with_offset(100 * s as i128);
        let v = series_json(&hub, &clock, 102 * s + s / 2, 104 * s + s / 2);
        let util = &v["devices"][0]["figures"]["gpu_utilization"];
        assert_eq!(util.as_array().unwrap().len(), 3, "{v:#}");
        assert_eq!(util[0], json!([102 * s, 103 * s, 0.2]));
        assert_eq!(v["devices"][0]["figures"]["power"][0][2], 250.0);
        assert_eq!(v["devices"][0]["uuid"], "GPU-0");
    }

    #[test]
    fn the_page_reads_only_relative_urls() {
        // Behind `kubectl port-forward` or a path prefix, an absolute path or another host
        // would miss the agent.
        for (name, text) in [("index.html", INDEX_HTML), ("page.js", PAGE_JS)] {
            // The SVG namespace is a name, not a place anything is loaded from.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for needle in [
                "fetch(\"/",
                "fetch('/",
                "src=\"/",
                "href=\"/",
                "http://",
                "https://",
            ] {
                assert!(!text.contains(needle), "{name} has {needle:?}");
            }
        }
    }
}
