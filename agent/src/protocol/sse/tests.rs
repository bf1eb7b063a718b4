//! Every case is checked fed whole, split in two at every byte offset, and one byte at a time.

use super::*;
use proptest::prelude::*;

fn render_into(lines: &mut Vec<String>, ev: SseEvent<'_>) {
    lines.push(match ev {
        SseEvent::Event {
            event_type,
            data,
            id,
        } => {
            let id = id.map(|id| format!(" id={id}")).unwrap_or_default();
            format!("{event_type}{id} \"{}\"", data.escape_ascii())
        }
        SseEvent::Comment => "comment".to_owned(),
        SseEvent::Failure(f) => format!("failure {f:?}"),
    });
}

fn render(feeds: &[&[u8]]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut framer = SseFramer::new();
    for feed in feeds {
        framer.feed(feed, &mut |ev| render_into(&mut lines, ev));
    }
    framer.finish(&mut |ev| render_into(&mut lines, ev));
    lines
}

#[track_caller]
fn check(input: &[u8], expect: &[&str]) {
    assert_eq!(render(&[input]), expect, "whole");
    for k in 0..=input.len() {
        let (a, b) = input.split_at(k);
        assert_eq!(render(&[a, b]), expect, "split at {k}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(render(&bytes), expect, "one byte at a time");
}

#[test]
fn vllm_stream() {
    check(
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
          data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n",
        &[
            r#"message "{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}""#,
            r#"message "{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}""#,
            r#"message "[DONE]""#,
        ],
    );
}

#[test]
fn line_ends() {
    let expect = ["message \"a\"", "message \"b\"", "message \"c\""];
    check(b"data: a\r\n\r\ndata: b\r\n\r\ndata: c\r\n\r\n", &expect);
    check(b"data: a\r\rdata: b\r\rdata: c\r\r", &expect);
    check(b"data: a\n\rdata: b\r\n\ndata: c\r\r\n", &expect);
    // `\r` then `\n` in the next feed is one line end, not a blank line.
    assert_eq!(
        render(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]),
        ["message \"a\\nb\""]
    );
    // An empty feed between them changes nothing.
    assert_eq!(render(&[b"data: a\r", b"", b"\n\n"]), ["message \"a\""]);
}

#[test]
fn fields() {
    check(
        b": ping\n\nevent: delta\ndata:no space\ndata:  two spaces\ndata\nid: 7\nretry: 10\nunknown: x\n\n",
        &["comment", "delta id=7 \"no space\\n two spaces\\n\""],
    );
    // The last event ID persists; `id` with NUL is ignored; an empty `id` clears it.
    check(
        b"id: 1\ndata: a\n\ndata: b\n\nid: 2\x00\ndata: c\n\nid\ndata: d\n\n",
        &[
            "message id=1 \"a\"",
            "message id=1 \"b\"",
            "message id=1 \"c\"",
            "message \"d\"",
        ],
    );
    // `event` resets after each dispatch; a colon in the value is kept.
    check(
        b"event: e\ndata: a:b\n\ndata: c\n\n",
        &["e \"a:b\"", "message \"c\""],
    );
}

#[test]
fn events_without_data_are_not_dispatched() {
    check(
        b"event: ping\n\nid: 3\n\n\n\ndata: x\n\n",
        &["message id=3 \"x\""],
    );
    // A `data` line with an empty value makes an event with empty data.
    check(b"data:\n\ndata\n\n", &["message \"\"", "message \"\""]);
}

#[test]
fn bom() {
    check(b"\xEF\xBB\xBFdata: a\n\n", &["message \"a\""]);
    // Only one BOM, only at the start.
    check(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n", &[]);
    check(b"data: \xEF\xBB\xBF\n\n", &["message \"\\xef\\xbb\\xbf\""]);
    // Something that starts like a BOM but is not one is content.
    check(b"\xEF\xBBdata: a\n\ndata: b\n\n", &["message \"b\""]);
}

#[test]
fn unterminated_final_event_is_a_failure() {
    check(
        b"data: a\n\ndata: b\n",
        &["message \"a\"", "failure Unterminated"],
    );
    check(
        b"data: a\n\ndata: b",
        &["message \"a\"", "failure Unterminated"],
    );
    check(
        b"data: a\n\nevent: x\n",
        &["message \"a\"", "failure Unterminated"],
    );
    // A trailing comment or blank lines lose nothing.
    check(b"data: a\n\n: bye", &["message \"a\"", "comment"][..1]);
    check(b"data: a\n\n\n\n", &["message \"a\""]);
}

#[test]
fn oversized_event_is_dropped_and_framing_recovers() {
    let mut big = b"data: ".to_vec();
    big.resize(MAX_EVENT_BYTES + 1, b'x');
    big.extend_from_slice(b"\ndata: more\n\ndata: ok\n\n");
    let expect = ["failure TooLarge", "message \"ok\""];
    assert_eq!(render(&[&big]), expect);
    let chunks: Vec<&[u8]> = big.chunks(4096).collect();
    assert_eq!(render(&chunks), expect);
    // Many lines that add up past the bound fail too.
    let mut many = Vec::new();
    while many.len() <= MAX_EVENT_BYTES + MAX_EVENT_BYTES / 10 {
        many.extend_from_slice(b"data: 0123456789abcdef0123456789abcdef0123456789abcdef\n");
    }
    many.extend_from_slice(b"\ndata: ok\n\n");
    assert_eq!(render(&[&many]), expect);
    // Exactly at the bound is fine.
    let mut exact = b"data: ".to_vec();
    exact.resize(MAX_EVENT_BYTES, b'y');
    exact.extend_from_slice(b"\n\n");
    let mut lines = Vec::new();
    let mut f = SseFramer::new();
    f.feed(&exact[..10], &mut |ev| render_into(&mut lines, ev));
    f.feed(&exact[10..], &mut |ev| match ev {
        SseEvent::Event { data, .. } => lines.push(format!("len {}", data.len())),
        other => render_into(&mut lines, other),
    });
    assert_eq!(lines, [format!("len {}", MAX_EVENT_BYTES - 6)]);
}

#[test]
fn gap_drops_the_event_in_progress() {
    let mut lines = Vec::new();
    let mut f = SseFramer::new();
    let feed = |f: &mut SseFramer, lines: &mut Vec<String>, d: &[u8]| {
        f.feed(d, &mut |ev| render_into(lines, ev))
    };
    feed(&mut f, &mut lines, b"data: a\n\ndata: {\"cho");
    f.gap();
    f.gap(); // a second gap before the next blank line is the same loss
    feed(&mut f, &mut lines, b"ices\"}\ndata: tail\n\ndata: b\n\n");
    f.gap(); // a gap at an event boundary cuts into the next event
    feed(&mut f, &mut lines, b"ta: c\n\ndata: d\n\n");
    f.finish(&mut |ev| render_into(&mut lines, ev));
    assert_eq!(
        lines,
        [
            "message \"a\"",
            "failure Gap",
            "message \"b\"",
            "failure Gap",
            "message \"d\""
        ]
    );
    // A gap right before the end is reported by `finish`.
    let mut lines = Vec::new();
    let mut f = SseFramer::new();
    f.feed(b"data: a", &mut |ev| render_into(&mut lines, ev));
    f.gap();
    f.finish(&mut |ev| render_into(&mut lines, ev));
    assert_eq!(lines, ["failure Gap"]);
}

#[test]
fn single_line_event_in_one_feed_is_not_copied() {
    let input = b"data: {\"x\":1}\n\n";
    let mut f = SseFramer::new();
    let mut ptr = None;
    f.feed(input, &mut |ev| {
        if let SseEvent::Event { data, .. } = ev {
            ptr = Some(data.as_ptr());
        }
    });
    assert_eq!(ptr, Some(input[6..].as_ptr()));
}

/// Makes the bytes that matter to the framer frequent in random input.
fn bias(b: u8) -> u8 {
    const SPECIAL: &[u8] = b"\r\n: datievent\xEF\xBB\xBF";
    SPECIAL.get(usize::from(b % 32)).copied().unwrap_or(b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any bytes, cut anywhere: the same events as fed whole, and no panic.
    #[test]
    fn segmentation_does_not_matter(
        data in proptest::collection::vec(any::<u8>(), 0..512).prop_map(|v| v.into_iter().map(bias).collect::<Vec<u8>>()),
        cuts in proptest::collection::vec(0usize..512, 0..8),
        gap_at in proptest::option::of(0usize..512),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        cuts.sort_unstable();
        let mut feeds = Vec::new();
        let mut prev = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            feeds.push(&data[prev..c]);
            prev = c;
        }
        prop_assert_eq!(render(&feeds), render(&[&data]));
        if let Some(g) = gap_at {
            let g = g.min(data.len());
            let mut f = SseFramer::new();
            f.feed(&data[..g], &mut |_| {});
            f.gap();
            f.feed(&data[g..], &mut |_| {});
            f.finish(&mut |_| {});
        }
    }

    /// Field-shaped lines with every line end, cut anywhere.
    #[test]
    fn segmentation_does_not_matter_for_fields(
        lines in proptest::collection::vec(
            (
                prop_oneof![Just("data: "), Just("data:"), Just("data"), Just("event: "), Just("id: "), Just(": "), Just(""), Just("retry: ")],
                "[a-z \\[\\]{}\"]{0,6}",
                prop_oneof![Just("\n"), Just("\r"), Just("\r\n")],
            ),
            0..40,
        ),
        cut in 0usize..400,
    ) {
        let data: Vec<u8> = lines.iter().flat_map(|(f, v, e)| [f.as_bytes(), v.as_bytes(), e.as_bytes()].concat()).collect();
        let cut = cut.min(data.len());
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        let whole = render(&[&data]);
        prop_assert_eq!(render(&[&data[..cut], &data[cut..]]), whole.clone());
        prop_assert_eq!(render(&bytes), whole);
    }
}
