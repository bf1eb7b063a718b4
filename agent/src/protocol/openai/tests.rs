use super::oracle::{parse_request, parse_response};
use super::*;

#[test]
fn paths_map_to_operations() {
    assert_eq!(
        Operation::from_path("/v1/chat/completions"),
        Some(Operation::Chat)
    );
    assert_eq!(
        Operation::from_path("/v1/completions"),
        Some(Operation::TextCompletion)
    );
    assert_eq!(
        Operation::from_path("/v1/embeddings"),
        Some(Operation::Embeddings)
    );
    assert_eq!(Operation::from_path("/health"), None);
}

#[test]
fn request_fields_after_a_long_messages_array() {
    let big = "x ".repeat(100_000);
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{big}"}}],"model":"m-1","stream":true,"stream_options":{{"include_usage":true}},"max_completion_tokens":7,"temperature":0.5,"top_p":0.9,"n":2}}"#
    );
    let f = parse_request(body.as_bytes()).unwrap();
    assert_eq!(f.model.as_deref(), Some("m-1"));
    assert_eq!(f.stream, Some(true));
    assert_eq!(f.include_usage, Some(true));
    assert_eq!(f.max_tokens, Some(7));
    assert_eq!(f.temperature, Some(0.5));
    assert_eq!(f.top_p, Some(0.9));
    assert_eq!(f.n, Some(2));
}

#[test]
fn role_only_first_chunk_is_not_content() {
    let role = br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#;
    let c = parse_stream_chunk(role).unwrap();
    assert!(!c.has_content);
    assert_eq!(c.id.as_deref(), Some("chatcmpl-1"));
    let tok = br#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}"#;
    let c = parse_stream_chunk(tok).unwrap();
    assert!(c.has_content);
    assert_eq!(c.finish_reasons, vec!["stop"]);
    let usage = br#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,"prompt_tokens_details":{"cached_tokens":2}}}"#;
    let c = parse_stream_chunk(usage).unwrap();
    assert!(!c.has_content);
    assert_eq!(
        c.usage,
        Some(Usage {
            prompt_tokens: Some(5),
            completion_tokens: Some(3),
            cached_tokens: Some(2)
        })
    );
    let completion = br#"{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" a","logprobs":null,"finish_reason":null}],"usage":null}"#;
    assert!(parse_stream_chunk(completion).unwrap().has_content);
    let err =
        br#"{"error":{"message":"boom","type":"InternalServerError","param":null,"code":500}}"#;
    assert_eq!(
        parse_stream_chunk(err).unwrap().error_type.as_deref(),
        Some("InternalServerError")
    );
    assert_eq!(parse_stream_chunk(b"[DONE]"), None);
}

#[test]
fn chunk_identifiers_with_escapes_and_over_the_bound() {
    // Escaped strings cannot be borrowed: they are decoded (and still bounded).
    let c = parse_stream_chunk(
        br#"{"id":"chat\u0063mpl-\"7\"","model":"m\/1","choices":[{"delta":{"content":"x"},"finish_reason":"st\u006fp"}]}"#,
    )
    .unwrap();
    assert_eq!(c.id.as_deref(), Some(r#"chatcmpl-"7""#));
    assert_eq!(c.model.as_deref(), Some("m/1"));
    assert_eq!(c.finish_reasons, vec!["stop"]);
    assert!(c.has_content);
    // Identifiers longer than the bound are cut at a character boundary, borrowed or not.
    let long = "é".repeat(200); // 400 bytes
    for id in [long.clone(), format!("\\\\{long}")] {
        let chunk = format!(r#"{{"id":"{id}","model":"{id}","choices":[]}}"#);
        let c = parse_stream_chunk(chunk.as_bytes()).unwrap();
        let got = c.id.unwrap();
        assert!(
            got.len() <= ID_MAX && got.len() >= ID_MAX - 1,
            "{}",
            got.len()
        );
        assert!(long.starts_with(got.trim_start_matches('\\')));
        assert_eq!(c.model.as_deref(), Some(&*got));
    }
}

#[test]
fn every_choice_counts() {
    let c = parse_stream_chunk(
        br#"{"choices":[{"index":0,"delta":{"content":""},"finish_reason":"length"},{"index":1,"delta":{"tool_calls":[{"id":"t"}]},"finish_reason":null},{"index":2,"delta":{},"finish_reason":"stop"}]}"#,
    )
    .unwrap();
    assert!(c.has_content, "the second choice carries a tool call");
    assert_eq!(c.finish_reasons, vec!["length", "stop"]);
    let none = parse_stream_chunk(
        br#"{"choices":[{"delta":{"content":null,"reasoning":"","tool_calls":[]}}]}"#,
    )
    .unwrap();
    assert!(!none.has_content);
    let r = parse_response(
        br#"{"id":"r","choices":[{"message":{"content":"a"},"finish_reason":"stop"},{"message":null},{"text":"b"}]}"#,
    )
    .unwrap();
    assert_eq!(r.choices_with_output, 2);
    assert_eq!(r.finish_reasons, vec!["stop"]);
    // A choices value that is not an array fails the chunk, as a typed array did.
    assert_eq!(parse_stream_chunk(br#"{"id":"x","choices":null}"#), None);
    assert_eq!(parse_stream_chunk(br#"{"id":"x","choices":{}}"#), None);
    assert!(parse_stream_chunk(br#"{"id":"x"}"#).is_some());
}

#[test]
fn invalid_utf8_fails_only_where_a_kept_string_has_it() {
    // In a skipped field it is tolerated, as serde_json over bytes does.
    let c = parse_stream_chunk(
        b"{\"id\":\"c-1\",\"system_fingerprint\":\"\xff\xfe\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}",
    )
    .unwrap();
    assert_eq!(c.id.as_deref(), Some("c-1"));
    assert!(c.has_content);
    // In an identifier it fails the chunk rather than keeping invalid text.
    assert_eq!(
        parse_stream_chunk(b"{\"id\":\"c-\xff\",\"choices\":[]}"),
        None
    );
    assert_eq!(
        parse_request(b"{\"model\":\"m\",\"messages\":[{\"content\":\"\xc3\"}]}")
            .and_then(|r| r.model),
        Some("m".to_string())
    );
}

#[test]
fn usage_is_found_in_a_tail() {
    let tail = br#"lo world"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"total_tokens":15,"completion_tokens":5}}"#;
    assert_eq!(usage_from_tail(tail).unwrap().completion_tokens, Some(5));
    assert_eq!(usage_from_tail(b"no usage here"), None);
}

/// The OpenAI fast path says of every chunk it takes exactly what the every-API reader says, and
/// takes the OpenAI-compatible ones (vLLM's, llama.cpp's); other APIs' events go past it.
#[test]
fn the_openai_chunk_fast_path_agrees_with_the_every_api_reader() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apis");
    let mut events: Vec<String> = vec![
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":"stop"}]}"#.into(),
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}"#.into(),
        r#"{"id":"c","choices":[{"index":0,"text":"x","finish_reason":null}],"error":{"type":"BadRequestError","message":"m"}}"#.into(),
        r#"{"error":{"type":"X","code":400}}"#.into(),
        r#"{"id":"c","choices":[],"meta_info":{"id":"z"}}"#.into(),
    ];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        events.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.trim().to_string()),
        );
    }
    let mut fast = 0;
    for e in &events {
        let every_api = from_json::<RawChunk<'_>>(e.as_bytes())
            .ok()
            .map(|c| c.said().chunk);
        assert_eq!(parse_stream_chunk(e.as_bytes()), every_api, "{e}");
        if from_json::<OpenAiChunk<'_>>(e.as_bytes())
            .ok()
            .and_then(OpenAiChunk::chunk)
            .is_some()
        {
            fast += 1;
        }
    }
    assert!(fast >= 4, "the OpenAI chunks take the fast path ({fast})");
    assert!(
        from_json::<OpenAiChunk<'_>>(events[4].as_bytes()).is_err(),
        "a field it does not know sends a chunk to the every-API reader"
    );
}
