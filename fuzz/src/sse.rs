//! `protocol::sse` on any bytes. Differential: the input fed whole and fed in pieces (cut where
//! the first bytes say) must give the same events; with a gap, no panic.

use infertap::protocol::sse::{SseEvent, SseFramer};

fn render(feeds: &[&[u8]]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut framer = SseFramer::new();
    let mut push = |ev: SseEvent<'_>| lines.push(format!("{ev:?}"));
    for feed in feeds {
        framer.feed(feed, &mut push);
    }
    framer.finish(&mut push);
    lines
}

/// The fuzz target's entry point (also replayed on `fuzz/regressions/` by `cargo test`).
pub fn run(data: &[u8]) {
    let [a, b, c, body @ ..] = data else { return };
    let mut cuts =
        [usize::from(*a), usize::from(*b) * 3, usize::from(*c) * 7].map(|n| n.min(body.len()));
    cuts.sort_unstable();
    let feeds = [
        &body[..cuts[0]],
        &body[cuts[0]..cuts[1]],
        &body[cuts[1]..cuts[2]],
        &body[cuts[2]..],
    ];
    assert_eq!(render(&feeds), render(&[body]));
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(render(&bytes), render(&[body]));

    let mut framer = SseFramer::new();
    framer.feed(feeds[0], &mut |_| {});
    framer.gap();
    framer.feed(feeds[1], &mut |_| {});
    framer.gap();
    framer.gap();
    framer.feed(feeds[2], &mut |_| {});
    framer.finish(&mut |_| {});
}
