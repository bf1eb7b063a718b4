//! Server-sent-event framing (WHATWG HTML §9.2.6, "Interpreting an event stream") over a
//! response body that the HTTP layer has already de-chunked.
//!
//! Owns: splitting the body into lines (`\r\n`, `\n` or `\r`, including a `\r` at the end of one
//! feed followed by `\n` at the start of the next), the field rules (`data`, `event`, `id`,
//! `retry`, comments, fields without a colon, one leading BOM), dispatch on a blank line, and the
//! failures that lose an event: an event larger than [`MAX_EVENT_BYTES`], bytes lost in a gap, a
//! final event without its blank line.
//!
//! Must never: do I/O, interpret the event payload (that is `openai`'s job), hold more than
//! [`MAX_EVENT_BYTES`] of one event, or panic on any input. An event that lies in one feed is
//! handed out as a slice of that feed (no copy) when it has a single `data` line, which is how
//! OpenAI-style servers write them.

use std::ops::Range;

/// The most bytes one event may hold (the raw bytes of its field lines); a larger event is
/// dropped with [`SseFailure::TooLarge`] and the framer skips to the next blank line.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// One step of the event stream.
#[derive(Debug, PartialEq, Eq)]
pub enum SseEvent<'a> {
    /// A dispatched event.
    Event {
        /// The `event` field, `"message"` when absent (lossy UTF-8).
        event_type: &'a str,
        /// The `data` lines joined with `\n` (raw bytes, as sent).
        data: &'a [u8],
        /// The last event ID buffer (WHATWG: it persists across events until an `id` field
        /// changes it); `None` while empty.
        id: Option<&'a str>,
    },
    /// A comment line (`: ping` keep-alives). Its text is not reported.
    Comment,
    /// An event was lost; the caller counts it.
    Failure(SseFailure),
}

/// Why an event was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseFailure {
    /// The event grew beyond [`MAX_EVENT_BYTES`].
    TooLarge,
    /// Body bytes were lost inside (or at the start of) the event.
    Gap,
    /// The body ended before the event's blank line (WHATWG discards such an event).
    Unterminated,
}

/// Incremental WHATWG event-stream parser for one response body.
#[derive(Debug, Default)]
pub struct SseFramer {
    /// Nothing fed yet: a leading BOM is still possible. `bom_seen` bytes of it matched so far.
    started: bool,
    bom_seen: usize,
    /// The previous feed ended with `\r`: a `\n` at the start of the next one ends nothing.
    pending_cr: bool,
    /// The start of a line that continues in the next feed (not used while `skipping`).
    line: Vec<u8>,
    /// Raw bytes of the completed field lines of the current event.
    event_raw: usize,
    /// A gap dropped an event: report it at the next `feed`/`finish`.
    gap_failure: bool,
    /// Dropping bytes until the next blank line (after a gap or an oversized event).
    skipping: bool,
    /// While skipping: the current line has bytes (so its end is not a blank line).
    skip_line_has_bytes: bool,
    /// At least one `data` line was seen for the current event.
    has_data: bool,
    /// The data buffer (each line followed by `\n`), unless `borrowed` holds it.
    data: Vec<u8>,
    /// A single data line that lies in the current feed: its value's range there.
    borrowed: Option<Range<usize>>,
    event_type: String,
    last_id: String,
}

impl SseFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held of the event being framed (its line and data so far).
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len()
    }

    /// Feed response body bytes (already de-chunked). Emits one [`SseEvent`] per dispatched
    /// event, comment line or failure.
    pub fn feed(&mut self, data: &[u8], out: &mut impl FnMut(SseEvent<'_>)) {
        if std::mem::take(&mut self.gap_failure) {
            out(SseEvent::Failure(SseFailure::Gap));
        }
        let mut data = data;
        if !self.started {
            while let (Some(&b), Some(&want)) = (data.first(), BOM.get(self.bom_seen)) {
                if b != want {
                    break;
                }
                self.bom_seen += 1;
                data = data.get(1..).unwrap_or_default();
            }
            if self.bom_seen == BOM.len() {
                self.started = true;
            } else if data.is_empty() {
                return; // still a possible BOM prefix
            } else {
                // Not a BOM after all: the bytes that looked like one are content.
                self.started = true;
                let seen = BOM.get(..self.bom_seen).unwrap_or_default();
                self.feed_lines(seen, out);
            }
        }
        self.feed_lines(data, out);
    }

    /// Bytes of the body were lost. The event in progress (or the one the gap cut into) is
    /// dropped: the framer skips to the next blank line. The loss is reported as
    /// `Failure(Gap)` at the start of the next `feed` or `finish` (once, however many gaps
    /// happen before the next blank line).
    pub fn gap(&mut self) {
        if !self.skipping {
            self.gap_failure = true;
        }
        self.started = true;
        self.pending_cr = false;
        self.start_skipping(true);
    }

    /// End of the body. An unterminated final event is discarded (WHATWG) and reported as
    /// [`SseFailure::Unterminated`]. The framer is then ready for a new body.
    pub fn finish(&mut self, out: &mut impl FnMut(SseEvent<'_>)) {
        if self.gap_failure {
            out(SseEvent::Failure(SseFailure::Gap));
        }
        let partial_field = !self.line.is_empty() && self.line.first() != Some(&b':');
        let unterminated = !self.skipping
            && (partial_field || self.has_data || !self.event_type.is_empty())
            || (!self.started && self.bom_seen > 0 && self.bom_seen < BOM.len());
        if unterminated {
            out(SseEvent::Failure(SseFailure::Unterminated));
        }
        *self = Self::default();
    }

    fn start_skipping(&mut self, mid_line: bool) {
        self.skipping = true;
        self.skip_line_has_bytes = mid_line;
        release(&mut self.line);
        self.reset_event();
    }

    fn reset_event(&mut self) {
        self.event_raw = 0;
        self.has_data = false;
        release(&mut self.data);
        self.borrowed = None;
        self.event_type.clear();
    }

    fn event_size(&self, line_len: usize) -> usize {
        self.event_raw.saturating_add(line_len)
    }

    fn feed_lines(&mut self, input: &[u8], out: &mut impl FnMut(SseEvent<'_>)) {
        if input.is_empty() {
            return;
        }
        let mut pos = 0;
        if std::mem::take(&mut self.pending_cr) && input.first() == Some(&b'\n') {
            pos = 1;
        }
        while let Some(rest) = input.get(pos..) {
            if rest.is_empty() {
                break;
            }
            let Some(off) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.partial_line(rest, out);
                break;
            };
            let end = pos + off;
            let mut next = end + 1;
            if input.get(end) == Some(&b'\r') {
                match input.get(next) {
                    Some(b'\n') => next += 1,
                    None => self.pending_cr = true,
                    Some(_) => {}
                }
            }
            self.complete_line(input, pos..end, out);
            pos = next;
        }
        // A borrowed data line must not outlive this feed.
        if let Some(range) = self.borrowed.take() {
            self.data
                .extend_from_slice(input.get(range).unwrap_or_default());
            self.data.push(b'\n');
        }
    }

    /// Bytes of a line whose end is in a later feed.
    fn partial_line(&mut self, bytes: &[u8], out: &mut impl FnMut(SseEvent<'_>)) {
        if self.skipping {
            self.skip_line_has_bytes = true;
            return;
        }
        if self.event_size(self.line.len().saturating_add(bytes.len())) > MAX_EVENT_BYTES {
            out(SseEvent::Failure(SseFailure::TooLarge));
            self.start_skipping(true);
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// A complete line: `input[range]`, preceded by `self.line` when that holds its start.
    fn complete_line(
        &mut self,
        input: &[u8],
        range: Range<usize>,
        out: &mut impl FnMut(SseEvent<'_>),
    ) {
        if self.skipping {
            let blank = range.is_empty() && !self.skip_line_has_bytes;
            self.skip_line_has_bytes = false;
            if blank {
                self.skipping = false;
            }
            return;
        }
        if self.line.is_empty() {
            self.process_line(input, range, true, out);
        } else {
            let mut line = std::mem::take(&mut self.line);
            line.extend_from_slice(input.get(range).unwrap_or_default());
            let len = line.len();
            self.process_line(&line, 0..len, false, out);
            line.clear();
            if self.line.is_empty() {
                self.line = line; // keep the allocation
            }
        }
    }

    /// WHATWG "process the line". `buf[range]` is the line; `in_feed`: `buf` is the current
    /// feed, so a data value may be borrowed from it. (A line assembled in `self.line` is always
    /// the first line completed in a feed, so no value is borrowed yet when one is processed.)
    fn process_line(
        &mut self,
        buf: &[u8],
        range: Range<usize>,
        in_feed: bool,
        out: &mut impl FnMut(SseEvent<'_>),
    ) {
        let line = buf.get(range.clone()).unwrap_or_default();
        if line.is_empty() {
            self.dispatch(buf, out);
            return;
        }
        if line.first() == Some(&b':') {
            out(SseEvent::Comment);
            return;
        }
        if self.event_size(line.len()) > MAX_EVENT_BYTES {
            out(SseEvent::Failure(SseFailure::TooLarge));
            self.start_skipping(false);
            return;
        }
        self.event_raw = self.event_size(line.len());
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let mut v = colon + 1;
                if line.get(v) == Some(&b' ') {
                    v += 1;
                }
                (
                    line.get(..colon).unwrap_or_default(),
                    range.start.saturating_add(v)..range.end,
                )
            }
            None => (line, range.end..range.end),
        };
        let value_bytes = buf.get(value.clone()).unwrap_or_default();
        match field {
            b"data" => {
                if in_feed && !self.has_data && self.data.is_empty() {
                    self.borrowed = Some(value);
                } else {
                    if let Some(prev) = self.borrowed.take() {
                        self.data
                            .extend_from_slice(buf.get(prev).unwrap_or_default());
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value_bytes);
                    self.data.push(b'\n');
                }
                self.has_data = true;
            }
            b"event" => {
                self.event_type.clear();
                self.event_type
                    .push_str(&String::from_utf8_lossy(value_bytes));
            }
            b"id" if !value_bytes.contains(&0) => {
                self.last_id.clear();
                self.last_id.push_str(&String::from_utf8_lossy(value_bytes));
            }
            // An `id` with NUL is ignored; `retry` sets the reconnection time of a client;
            // other fields are ignored.
            _ => {}
        }
    }

    fn dispatch(&mut self, buf: &[u8], out: &mut impl FnMut(SseEvent<'_>)) {
        if self.has_data {
            let data = match &self.borrowed {
                Some(range) => buf.get(range.clone()).unwrap_or_default(),
                // Remove the last line's `\n`.
                None => self.data.split_last().map(|(_, d)| d).unwrap_or_default(),
            };
            let event_type = if self.event_type.is_empty() {
                "message"
            } else {
                &self.event_type
            };
            let id = (!self.last_id.is_empty()).then_some(self.last_id.as_str());
            out(SseEvent::Event {
                event_type,
                data,
                id,
            });
        }
        self.reset_event();
    }
}

/// Empties a buffer, and frees it when a large event made it large.
fn release(buf: &mut Vec<u8>) {
    if buf.capacity() > 64 * 1024 {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

#[cfg(test)]
mod tests;
