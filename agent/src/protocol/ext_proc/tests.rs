use std::collections::{BTreeMap, HashMap};

use super::messages::*;
use super::*;

/// `message → field → number` from the `.proto` files in `agent/proto` (fields of nested enums
/// and `reserved` lines are not fields; `oneof` members are fields of the enclosing message).
fn proto_fields() -> BTreeMap<String, BTreeMap<String, u32>> {
    let files = [
        include_str!("../../../proto/envoy/service/ext_proc/v3/external_processor.proto"),
        include_str!("../../../proto/envoy/config/core/v3/base.proto"),
        include_str!("../../../proto/envoy/type/v3/http_status.proto"),
        include_str!(
            "../../../proto/envoy/extensions/filters/http/ext_proc/v3/processing_mode.proto"
        ),
        include_str!("../../../proto/google/protobuf/struct.proto"),
    ];
    let mut out: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    for text in files {
        // A stack of open blocks: (kind, name).
        let mut stack: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            let line = line.split("//").next().unwrap().trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            if line.ends_with('{') && words.len() >= 2 {
                stack.push((words[0].to_string(), words[1].to_string()));
                continue;
            }
            if line == "}" {
                stack.pop();
                continue;
            }
            let in_message = stack
                .iter()
                .rev()
                .find(|(k, _)| k != "oneof")
                .filter(|(k, _)| k == "message");
            let Some((_, message)) = in_message else {
                continue;
            };
            if let Some((lhs, rhs)) = line.split_once('=') {
                let name = lhs.split_whitespace().last().unwrap().to_string();
                let number: u32 = rhs.trim().trim_end_matches(';').trim().parse().unwrap();
                out.entry(message.clone()).or_default().insert(name, number);
            }
        }
    }
    out
}

/// `message → field → number` from the `#[prost(... tag = "N")]` attributes of `messages.rs`
/// (oneof variants count for the message whose module holds them).
fn struct_fields() -> BTreeMap<String, BTreeMap<String, u32>> {
    let src = include_str!("messages.rs");
    let camel_of_module = |m: &str| -> String {
        m.split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect()
    };
    let snake = |camel: &str| -> String {
        let mut s = String::new();
        for (i, ch) in camel.chars().enumerate() {
            if ch.is_ascii_uppercase() {
                if i > 0 {
                    s.push('_');
                }
                s.push(ch.to_ascii_lowercase());
            } else {
                s.push(ch);
            }
        }
        s
    };
    let mut out: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    let mut message = String::new();
    let mut module: Option<String> = None;
    let mut pending: Option<u32> = None;
    for line in src.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub struct ") {
            message = rest.trim_end_matches(" {").to_string();
            module = None;
        } else if let Some(rest) = t.strip_prefix("pub mod ") {
            module = Some(camel_of_module(rest.trim_end_matches(" {")));
        } else if let Some(i) = t.find("tag = \"") {
            let n = &t[i + 7..];
            pending = Some(n[..n.find('"').unwrap()].parse().unwrap());
        } else if let Some(n) = pending.take() {
            let (owner, field) = match (&module, t.strip_prefix("pub ")) {
                (_, Some(f)) => (message.clone(), f.split(':').next().unwrap().to_string()),
                (Some(m), None) => (m.clone(), snake(t.split('(').next().unwrap())),
                (None, None) => panic!("a tag outside a struct or module: {t}"),
            };
            out.entry(owner).or_default().insert(field, n);
        }
    }
    out
}

#[test]
fn struct_field_numbers_match_the_proto_files() {
    let proto = proto_fields();
    let structs = struct_fields();
    // The .proto subset keeps a few fields the agent does not read: all must be known messages.
    assert!(proto.contains_key("ProcessingRequest") && structs.contains_key("ProcessingRequest"));
    for (message, fields) in &structs {
        let want = proto
            .get(message)
            .unwrap_or_else(|| panic!("{message} is not in agent/proto"));
        for (field, n) in fields {
            assert_eq!(
                want.get(field),
                Some(n),
                "{message}.{field}: struct says {n}, proto says {:?}",
                want.get(field)
            );
        }
    }
    // Every proto field has its struct field (nothing silently skipped).
    for (message, fields) in &proto {
        for field in fields.keys() {
            // `NullValue` is an enum, `HeaderAppendAction` values are enum values: not messages.
            if let Some(s) = structs.get(message) {
                assert!(
                    s.contains_key(field),
                    "{message}.{field} has no struct field"
                );
            }
        }
    }
    // The numbers the EPP path depends on, pinned against the real Envoy file.
    assert_eq!(proto["ProcessingRequest"]["request_headers"], 2);
    assert_eq!(proto["ProcessingRequest"]["request_body"], 4);
    assert_eq!(proto["ProcessingResponse"]["immediate_response"], 7);
    assert_eq!(proto["ProcessingResponse"]["dynamic_metadata"], 8);
    assert_eq!(proto["ProcessingResponse"]["mode_override"], 9);
    assert_eq!(proto["ProcessingRequest"]["response_headers"], 3);
    assert_eq!(proto["ProcessingRequest"]["response_body"], 5);
    assert_eq!(proto["ProcessingRequest"]["response_trailers"], 7);
    assert_eq!(proto["ProcessingMode"]["response_header_mode"], 2);
    assert_eq!(proto["ProcessingMode"]["response_body_mode"], 4);
    assert_eq!(proto["HeaderValue"]["raw_value"], 3);
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.into(),
        value: String::new(),
        raw_value: value.as_bytes().to_vec(),
    }
}

#[test]
fn decodes_a_request_headers_message_and_reads_raw_values() {
    let msg = ProcessingRequest {
        request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![
                    header("x-request-id", "r-1"),
                    header(":path", "/v1/chat/completions"),
                ],
            }),
            end_of_stream: false,
        })),
        metadata_context: None,
        attributes: HashMap::new(),
        observability_mode: false,
    };
    let bytes = msg.encode_to_vec();
    // Field 2, wire type 2 (length-delimited): the tag byte of `request_headers`.
    assert_eq!(bytes[0], 2 << 3 | 2);
    let back = decode_request(&bytes).unwrap();
    let Some(processing_request::Request::RequestHeaders(h)) = back.request else {
        panic!("not request headers");
    };
    let hs = h.headers.unwrap().headers;
    assert_eq!(header_value(&hs[0]), Some("r-1"));
    let plain = HeaderValue {
        key: "k".into(),
        value: "v".into(),
        raw_value: vec![],
    };
    assert_eq!(header_value(&plain), Some("v"));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(decode_request(&[0xff, 0xff, 0xff]).is_err());
    assert!(decode_response(&[0x0a, 0x05, 0x01]).is_err());
    // An empty message is valid protobuf (every field absent).
    assert!(decode_response(&[]).unwrap().response.is_none());
}
