//! Envoy's external processing protocol (`envoy.service.ext_proc.v3`), the gRPC stream between
//! Envoy and an endpoint picker: the messages' prost types ([`messages`]) and their decoding from
//! gRPC message payloads.
//!
//! Owns: the proto subset's Rust types and what a header value is (`raw_value` when set, else
//! `value`). Must never: do I/O or panic; keep decoded messages (callers take the few fields they
//! need and drop the rest, bodies included).

pub mod messages;

use prost::Message;

pub use messages::{
    processing_request, processing_response, HeaderMap, HeaderMutation, HeaderValue,
    ProcessingRequest, ProcessingResponse, Struct,
};

/// The gRPC method path of the ext_proc stream.
pub const PROCESS_PATH: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";

/// A message that is not a valid `ProcessingRequest`/`ProcessingResponse`.
#[derive(Debug, thiserror::Error)]
#[error("not a valid ext_proc message: {0}")]
pub struct DecodeError(#[from] prost::DecodeError);

pub fn decode_request(buf: &[u8]) -> Result<ProcessingRequest, DecodeError> {
    Ok(ProcessingRequest::decode(buf)?)
}

pub fn decode_response(buf: &[u8]) -> Result<ProcessingResponse, DecodeError> {
    Ok(ProcessingResponse::decode(buf)?)
}

/// A header's value: Envoy puts it in `raw_value` (bytes); older senders in `value`. `None` when
/// the bytes are not UTF-8.
pub fn header_value(h: &HeaderValue) -> Option<&str> {
    if h.raw_value.is_empty() {
        Some(h.value.as_str())
    } else {
        std::str::from_utf8(&h.raw_value).ok()
    }
}

#[cfg(test)]
mod tests;
