//! The model list of a `GET /v1/models` answer (`{"object":"list","data":[{"id":"m",...}]}`):
//! the models a server says it serves, which the request metrics take as the only model label
//! values worth a series of their own.
//!
//! Pure and bounded: a streaming scan over `json_scan` (nothing of the body kept), at most
//! [`SERVED_MODELS_MAX`] ids of at most `json_scan::STRING_MAX` bytes; a truncated id is not
//! kept (it names no model), and ids past the bound are counted, not kept.

use std::sync::LazyLock;

use crate::protocol::json_scan::{Event, Mode, Patterns, Scanner};

/// Model ids kept from one answer.
pub const SERVED_MODELS_MAX: usize = 64;

const OBJECT: usize = 0;
const ID: usize = 1;

fn patterns() -> &'static Patterns {
    static P: LazyLock<Patterns> = LazyLock::new(|| {
        Patterns::new(&[("object", Mode::Capture), ("data[*].id", Mode::Capture)])
            .expect("valid patterns")
    });
    &P
}

/// Is this request the one whose answer lists the served models?
pub fn is_models_request(method: &str, path: &str) -> bool {
    method == "GET" && path.trim_end_matches('/') == "/v1/models"
}

/// A models answer being read.
pub struct ModelsScan {
    scanner: Scanner<'static>,
    list: bool,
    ids: Vec<String>,
    dropped: u64,
}

impl Default for ModelsScan {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelsScan {
    pub fn new() -> Self {
        Self {
            scanner: Scanner::new(patterns()),
            list: false,
            ids: Vec::new(),
            dropped: 0,
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        let (list, ids, dropped) = (&mut self.list, &mut self.ids, &mut self.dropped);
        self.scanner.feed(data, &mut |ev| {
            let Event::Scalar { field, value } = ev else {
                return;
            };
            match (field, value.as_str()) {
                (OBJECT, Some(o)) => *list = o == "list",
                (ID, Some(id)) if !id.is_empty() => {
                    let truncated = matches!(
                        value,
                        crate::protocol::json_scan::Scalar::Str {
                            truncated: true,
                            ..
                        }
                    );
                    if truncated || ids.iter().any(|m| m == id) {
                        return;
                    }
                    if ids.len() < SERVED_MODELS_MAX {
                        ids.push(id.to_string());
                    } else {
                        *dropped += 1;
                    }
                }
                _ => {}
            }
        });
    }

    /// Bytes were lost: the scan stops (ids read so far stay).
    pub fn gap(&mut self) {
        self.scanner.gap();
    }

    /// The served model ids, in body order: empty unless the body said `"object":"list"`.
    pub fn finish(mut self) -> Vec<String> {
        let _ = self.scanner.finish();
        if self.list {
            self.ids
        } else {
            Vec::new()
        }
    }

    /// Ids past [`SERVED_MODELS_MAX`], not kept.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&str]) -> Vec<String> {
        let mut s = ModelsScan::new();
        for p in pieces {
            s.feed(p.as_bytes());
        }
        s.finish()
    }

    #[test]
    fn reads_the_ids_of_a_models_list_fed_in_pieces() {
        let body = r#"{"object":"list","data":[{"id":"meta-llama/Llama-3.1-8B","object":"model","owned_by":"vllm","permission":[{"id":"modelperm-1"}]},{"id":"lora-a","parent":"meta-llama/Llama-3.1-8B"}]}"#;
        let want = vec!["meta-llama/Llama-3.1-8B".to_string(), "lora-a".to_string()];
        assert_eq!(scan(&[body]), want);
        for at in 0..body.len() {
            assert_eq!(scan(&[&body[..at], &body[at..]]), want, "split at {at}");
        }
    }

    #[test]
    fn other_bodies_list_nothing_and_lists_are_bounded() {
        assert!(scan(&[r#"{"data":[{"id":"x"}]}"#]).is_empty());
        assert!(scan(&[r#"{"object":"error","data":[{"id":"x"}]}"#]).is_empty());
        assert!(scan(&["not json"]).is_empty());
        let many: Vec<String> = (0..1000).map(|i| format!(r#"{{"id":"m{i}"}}"#)).collect();
        let body = format!(r#"{{"object":"list","data":[{}]}}"#, many.join(","));
        let mut s = ModelsScan::new();
        s.feed(body.as_bytes());
        assert_eq!(s.dropped(), 1000 - SERVED_MODELS_MAX as u64);
        assert_eq!(s.finish().len(), SERVED_MODELS_MAX);
        let long = "x".repeat(1000);
        assert!(scan(&[&format!(
            r#"{{"object":"list","data":[{{"id":"{long}"}}]}}"#
        )])
        .is_empty());
    }
}
