//! Spans: the span model, trace context, and one builder per kind of finished work.
//!
//! - [`build`] — an HTTP exchange → its span (and the helpers every builder shares: ids, parent,
//!   addresses);
//! - [`rpc`] — a gRPC call → its span;
//! - [`decision`] — a routing decision of an endpoint picker → its span;
//! - [`fields`] — the OpenAI field table's attributes on an exchange's span;
//! - [`pd`] — the legs of a prefill/decode-disaggregated request and the KV-transfer gap
//!   between them (the one builder step that keeps state: bounded);
//! - [`saturation`] — the serving process's load (its own `/metrics`, scraped by others) at a
//!   request's arrival and over its window (bounded state, like `pd`);
//! - [`phases`] — the phases the server reported (queue, prefill, decode) and what the wire adds;
//! - [`context`] — W3C `traceparent`, the trace id derived from `x-request-id`;
//! - [`span`] — the span model every exporter consumes.
//!
//! - [`summary`] — the typed twin of a span that the request metrics record.
//!
//! [`span_of`] is the one place that picks the builder for a [`Work`]. Every builder names
//! attributes through `schema::attr` and fills the [`Summary`] from the same typed values.

pub mod build;
pub mod context;
pub mod decision;
pub mod fields;
pub mod pd;
pub mod phases;
pub mod rpc;
pub mod saturation;
pub mod span;
pub mod summary;

use crate::capture::clock::WallClock;
use crate::conn::ConnMeta;
use crate::exchange::Work;
use build::{BuildOptions, IdGenerator};
use span::FinishedSpan;
use summary::Summary;

/// A finished span and its typed summary.
#[derive(Clone, Debug)]
pub struct Built {
    pub span: FinishedSpan,
    pub summary: Summary,
}

/// The span of one finished piece of work.
pub fn span_of(
    work: &Work,
    conn: &ConnMeta,
    clock: &WallClock,
    opts: &BuildOptions,
    ids: &mut dyn IdGenerator,
) -> Built {
    match work {
        Work::Exchange(ex) => build::build_span(ex, conn, clock, opts, ids),
        Work::Call(call) => rpc::build_grpc_span(call, conn, clock, opts, ids),
        Work::Decision(d) => decision::build_decision_span(d, conn, clock, opts, ids),
    }
}
