//! HTTP/2 framing (RFC 9113) for one TCP connection, from the bytes of both directions.
//!
//! Owns: the client connection preface, frame headers and payloads (DATA with padding, HEADERS
//! with padding and priority, CONTINUATION, PUSH_PROMISE, RST_STREAM, SETTINGS, PING, GOAWAY,
//! WINDOW_UPDATE, PRIORITY; unknown extension frames are skipped), HPACK decoding of header blocks
//! with one dynamic table per direction (`loona-hpack`), and resynchronisation after a loss or
//! garbage. Flow control is not followed (it changes no byte the parser reads).
//!
//! Degradation: HPACK needs every header block of a direction since the connection began. When the
//! connection was picked up mid-stream, after bytes were lost, or after a block could not be
//! decoded, the dynamic table is unknown: from then on header blocks are reported as
//! [`Fields::known`]` == false` (framing, stream ids, END_STREAM and DATA stay readable — the gRPC
//! payloads of ext_proc are in DATA, not in HPACK).
//!
//! Must never: do I/O; copy a header value that is not on [`ALLOWED_HEADERS`] (the HTTP/1 parser's
//! list) or one of the pseudo-headers `:method`/`:path`/`:status`, `grpc-status`; copy a body
//! (DATA goes out as slices of the caller's segments); buffer more than [`MAX_HEADER_BLOCK`] of
//! header block or [`MAX_CONTROL_PAYLOAD`] of another non-DATA frame per direction; panic.

use super::http::{ALLOWED_HEADERS, MAX_HEADER_VALUE_BYTES, MAX_PATH_BYTES};
use super::{cut, Direction, Segment};

/// The client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest header block (HEADERS + CONTINUATION fragments) buffered for decoding; larger
/// blocks are skipped (counted) and the direction's HPACK state becomes unknown.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The largest payload of a SETTINGS/PING/GOAWAY/RST_STREAM/… frame that is read; the rest of a
/// longer one (GOAWAY debug data) is skipped.
pub const MAX_CONTROL_PAYLOAD: usize = 1024;
/// The HPACK dynamic table size a peer may announce before the table is considered unknown.
pub const MAX_HPACK_TABLE: usize = 64 * 1024;
/// The largest decoded header list of one block: the sum over its fields of name + value + 32
/// octets (RFC 9113 §6.5.2's SETTINGS_MAX_HEADER_LIST_SIZE measure; nghttp2's default limit is
/// 64 KiB). Past it the block's fields are not looked at (so that indexed references to a large
/// dynamic table entry cost nothing each) and the connection's HTTP/2 state is dropped.
pub const MAX_HEADER_LIST: usize = 64 * 1024;
/// CONTINUATION frames of one header block; more is a CONTINUATION flood (nghttp2's default
/// `max_continuations`; a 64 KiB block needs 4 at the default frame size).
pub const MAX_CONTINUATIONS: u32 = 8;
/// SETTINGS and PING frames per direction: a burst, then this many per second (token buckets on
/// the segments' timestamps); more is a flood.
pub const CONTROL_BURST: u64 = 1000;
pub const CONTROL_PER_SECOND: u64 = 100;
/// SETTINGS_MAX_FRAME_SIZE's initial value.
const DEFAULT_MAX_FRAME: u32 = 16_384;
/// When resynchronising, a first frame longer than this is not taken for a frame.
const RESYNC_MAX_FRAME: u32 = 1 << 20;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// The fields of one decoded header block: allow-listed values only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    /// The block was decoded. `false`: the HPACK state was unknown; nothing below is filled in.
    pub known: bool,
    pub method: Option<String>,
    /// Without query string, at most [`MAX_PATH_BYTES`].
    pub path: Option<String>,
    pub status: Option<u16>,
    pub grpc_status: Option<u32>,
    /// Allow-listed fields ([`ALLOWED_HEADERS`]), in order of appearance.
    pub headers: Vec<(&'static str, String)>,
}

impl Fields {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the parser reports for one direction, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H2Event<'a> {
    /// A complete header block (HEADERS + CONTINUATION); `ts_ns` of its last byte.
    Headers {
        ts_ns: u64,
        stream: u32,
        fields: Fields,
        end_stream: bool,
    },
    /// DATA payload bytes (padding removed), a slice of the caller's segment.
    Data {
        ts_ns: u64,
        stream: u32,
        data: &'a [u8],
        /// These are the first data bytes of their frame (where gRPC writers start messages:
        /// a place to pick a stream's messages up again after a loss).
        frame_start: bool,
    },
    /// DATA payload bytes that were lost (the frame boundaries survived).
    DataGap {
        stream: u32,
        len: u64,
    },
    /// END_STREAM on a DATA frame, after its data.
    EndStream {
        ts_ns: u64,
        stream: u32,
    },
    Reset {
        ts_ns: u64,
        stream: u32,
        code: u32,
    },
    GoAway {
        ts_ns: u64,
        last_stream: u32,
        code: u32,
    },
    /// Framing was lost in this direction (bytes lost outside DATA, or garbage): its events of
    /// streams in flight may be missing. The parser waits for a syscall boundary where frames
    /// start again.
    Lost,
    /// Counted by the caller.
    Error(H2ErrorKind),
    /// Hostile traffic over a limit: the connection's HTTP/2 state was dropped (no more events
    /// from this parser; the caller drops its streams). Counted by kind.
    Abuse(H2Abuse),
}

/// Hostile traffic that makes a connection's HTTP/2 state be dropped rather than followed with
/// unbounded work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum H2Abuse {
    /// A header block whose decoded list is over [`MAX_HEADER_LIST`] (an HPACK bomb).
    HeaderListTooLarge,
    /// A header block of more than [`MAX_CONTINUATIONS`] CONTINUATION frames.
    ContinuationFlood,
    /// SETTINGS frames over their budget ([`CONTROL_BURST`], [`CONTROL_PER_SECOND`]).
    SettingsFlood,
    /// PING frames over their budget.
    PingFlood,
    /// Streams reset by the client before their response, over their budget (`exchange::h2`).
    RapidReset,
    /// New streams beyond the streams followed, or with ids that do not increase, too many times
    /// (`exchange::h2`).
    StreamFlood,
}

impl H2Abuse {
    pub fn as_str(self) -> &'static str {
        match self {
            H2Abuse::HeaderListTooLarge => "header_list_too_large",
            H2Abuse::ContinuationFlood => "continuation_flood",
            H2Abuse::SettingsFlood => "settings_flood",
            H2Abuse::PingFlood => "ping_flood",
            H2Abuse::RapidReset => "rapid_reset",
            H2Abuse::StreamFlood => "stream_flood",
        }
    }
}

/// A token bucket on the segments' timestamps: `burst` at first, `per_second` more each second.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    left: u64,
    at_ns: u64,
}

impl Budget {
    pub fn new(burst: u64) -> Budget {
        Budget {
            left: burst,
            at_ns: 0,
        }
    }

    /// Takes one token; `false` when there is none left.
    pub fn take(&mut self, ts_ns: u64, burst: u64, per_second: u64) -> bool {
        let step = 1_000_000_000 / per_second.max(1);
        let add = ts_ns.saturating_sub(self.at_ns) / step;
        if add > 0 {
            self.left = self.left.saturating_add(add).min(burst);
            self.at_ns = ts_ns;
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum H2ErrorKind {
    /// The client's first bytes were not the connection preface.
    BadPreface,
    /// A frame header that cannot be HTTP/2 (a type on the wrong stream, a wrong fixed length, a
    /// frame longer than allowed): garbage, framing given up until resynchronised.
    BadFrame,
    /// CONTINUATION missing or unexpected.
    BadContinuation,
    /// Padding longer than the payload.
    BadPadding,
    /// A header block HPACK could not decode (the direction's table becomes unknown).
    Hpack,
    /// A header block longer than [`MAX_HEADER_BLOCK`].
    HeaderBlockTooLarge,
}

impl H2ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            H2ErrorKind::BadPreface => "bad_preface",
            H2ErrorKind::BadFrame => "bad_frame",
            H2ErrorKind::BadContinuation => "bad_continuation",
            H2ErrorKind::BadPadding => "bad_padding",
            H2ErrorKind::Hpack => "hpack",
            H2ErrorKind::HeaderBlockTooLarge => "header_block_too_large",
        }
    }
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameHead {
    len: u32,
    ty: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8; 9]) -> FrameHead {
        FrameHead {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            ty: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Whether this header can be HTTP/2 (type-specific stream and length rules, RFC 9113 §6).
    fn plausible(&self, max_len: u32) -> bool {
        let on_stream = self.stream != 0;
        let len_ok = match self.ty {
            RST_STREAM | WINDOW_UPDATE => self.len == 4,
            PRIORITY => self.len == 5,
            PING => self.len == 8,
            SETTINGS => self.len.is_multiple_of(6) && (self.flags & 1 == 0 || self.len == 0),
            _ => true,
        };
        let stream_ok = match self.ty {
            DATA | HEADERS | PRIORITY | RST_STREAM | PUSH_PROMISE | CONTINUATION => on_stream,
            SETTINGS | PING | GOAWAY => !on_stream,
            _ => true,
        };
        // Extension frames are skipped, but a long one is more likely garbage.
        let known_type = self.ty <= CONTINUATION || self.len <= DEFAULT_MAX_FRAME;
        len_ok && stream_ok && known_type && self.len <= max_len
    }
}

/// Whether `data` starts with HTTP/2 frames: every frame header up to the end of `data`
/// plausible, and either the frames tile `data` exactly, or at least two whole frames come before
/// a partial one, or the partial frame is no longer than the default maximum frame size
/// (16 KiB). Used to pick up a connection mid-stream and to resynchronise at a syscall boundary.
pub fn looks_like_frames(data: &[u8]) -> bool {
    let mut at = 0usize;
    let mut whole = 0;
    let mut last_len = 0;
    while at + 9 <= data.len() {
        let mut b = [0u8; 9];
        b.copy_from_slice(&data[at..at + 9]);
        let h = FrameHead::parse(&b);
        if h.ty > CONTINUATION || !h.plausible(RESYNC_MAX_FRAME) {
            return false;
        }
        at += 9 + h.len as usize;
        last_len = h.len;
        if at <= data.len() {
            whole += 1;
        }
    }
    match at.cmp(&data.len()) {
        std::cmp::Ordering::Equal => whole > 0,
        std::cmp::Ordering::Greater => whole >= 2 || last_len <= DEFAULT_MAX_FRAME,
        // A few bytes short of a frame header at the end.
        std::cmp::Ordering::Less => whole > 0,
    }
}

/// The frame being read.
#[derive(Debug)]
struct Frame {
    head: FrameHead,
    /// Payload bytes consumed so far.
    got: u32,
    /// DATA: padding length once known (`None` until the pad-length byte was read, or when not
    /// padded: then 0).
    pad: Option<u32>,
    /// Non-DATA payload, up to the type's bound.
    buf: Vec<u8>,
}

/// A header block being assembled over HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// PUSH_PROMISE blocks are decoded (they change the table) but not reported.
    report: bool,
    buf: Vec<u8>,
    too_large: bool,
    /// CONTINUATION frames so far.
    continuations: u32,
    ts_ns: u64,
}

struct DirState {
    /// Preface bytes still expected (client direction seen from the start).
    preface_left: usize,
    head: [u8; 9],
    head_len: usize,
    frame: Option<Frame>,
    block: Option<Block>,
    /// Frame boundaries are known.
    synced: bool,
    /// `None`: the dynamic table is unknown (header blocks are not decoded).
    hpack: Option<Hpack>,
    settings: Budget,
    pings: Budget,
}

impl DirState {
    fn new(from_start: bool, preface: bool) -> DirState {
        DirState {
            preface_left: if from_start && preface {
                PREFACE.len()
            } else {
                0
            },
            head: [0; 9],
            head_len: 0,
            frame: None,
            block: None,
            synced: from_start,
            hpack: from_start.then(new_decoder),
            settings: Budget::new(CONTROL_BURST),
            pings: Budget::new(CONTROL_BURST),
        }
    }

    fn lose(&mut self, out: &mut dyn FnMut(H2Event<'_>)) {
        self.synced = false;
        self.frame = None;
        self.block = None;
        self.head_len = 0;
        self.preface_left = 0;
        self.hpack = None;
        out(H2Event::Lost);
    }
}

fn new_decoder() -> Hpack {
    let mut dec = loona_hpack::Decoder::new();
    dec.set_max_allowed_table_size(MAX_HPACK_TABLE);
    Hpack {
        dec,
        table: TableSize::default(),
    }
}

/// One direction's HPACK decoder and the size of its dynamic table.
struct Hpack {
    dec: loona_hpack::Decoder<'static>,
    table: TableSize,
}

/// The size of an HPACK dynamic table as RFC 7541 §4.1 measures it (name + value + 32 octets per
/// entry), kept beside `loona-hpack`'s decoder (which does not say): each header block is
/// walked as the decoder reports its fields, entries added by literals with incremental indexing
/// and evicted oldest first by size updates and by the table's bound.
#[derive(Debug)]
struct TableSize {
    /// The table's bound (4,096 until a size update changes it; at most [`MAX_HPACK_TABLE`]).
    max: usize,
    size: usize,
    /// Each entry's size, oldest first.
    entries: std::collections::VecDeque<usize>,
}

impl Default for TableSize {
    fn default() -> TableSize {
        TableSize {
            max: 4096,
            size: 0,
            entries: Default::default(),
        }
    }
}

impl TableSize {
    fn evict(&mut self) {
        while self.size > self.max {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.size -= e;
        }
    }

    /// The decoder reported the field at `*at` of `block` (name and value `entry` octets
    /// decoded): applies the size updates before it and the field, and moves `*at` past it. The
    /// decoder parsed the same bytes, so they are well formed.
    fn field(&mut self, block: &[u8], at: &mut usize, entry: usize) {
        while let Some(&b) = block.get(*at) {
            if b & 0xe0 != 0x20 {
                break;
            }
            let Some((max, n)) = hpack_integer(&block[*at..], 5) else {
                return;
            };
            *at += n;
            self.max = max;
            self.evict();
        }
        let Some(&b) = block.get(*at) else {
            return;
        };
        let (prefix, adds) = match b {
            _ if b & 0x80 != 0 => (7, false),
            _ if b & 0xc0 == 0x40 => (6, true),
            _ => (4, false),
        };
        let Some((index, n)) = hpack_integer(&block[*at..], prefix) else {
            return;
        };
        *at += n;
        if prefix != 7 {
            let strings = if index == 0 { 2 } else { 1 };
            for _ in 0..strings {
                let Some((len, n)) = block.get(*at..).and_then(|r| hpack_integer(r, 7)) else {
                    return;
                };
                *at += n + len;
            }
        }
        if adds {
            self.entries.push_back(entry + 32);
            self.size += entry + 32;
            self.evict();
        }
    }
}

/// An HPACK integer with an `n`-bit prefix at the start of `b` (RFC 7541 §5.1): its value and
/// the octets it took.
fn hpack_integer(b: &[u8], n: u8) -> Option<(usize, usize)> {
    let mask = (1usize << n) - 1;
    let mut v = usize::from(*b.first()?) & mask;
    if v < mask {
        return Some((v, 1));
    }
    for (i, &c) in b.iter().enumerate().skip(1).take(5) {
        v = v.checked_add(usize::from(c & 0x7f) << (7 * (i - 1)))?;
        if c & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Request => 0,
        Direction::Response => 1,
    }
}

/// The HTTP/2 state of one connection: framing and HPACK per direction.
pub struct Http2Conn {
    dirs: [DirState; 2],
    /// Header name and value bytes looked at or copied while decoding header blocks (a measure
    /// of work that does not depend on a clock: tests bound it by the bytes fed).
    decoded_bytes: u64,
    /// Hostile traffic was seen: nothing more is parsed.
    dropped: bool,
}

impl Http2Conn {
    /// `from_start`: the connection was seen from its first byte (the client's preface comes
    /// first on the request side). Otherwise framing is picked up at the first syscall boundary
    /// where frames start, and header blocks stay unknown.
    pub fn new(from_start: bool) -> Http2Conn {
        Http2Conn {
            dirs: [
                DirState::new(from_start, true),
                DirState::new(from_start, false),
            ],
            decoded_bytes: 0,
            dropped: false,
        }
    }

    /// Whether the connection's HTTP/2 state was dropped (hostile traffic over a limit).
    pub fn dropped(&self) -> bool {
        self.dropped
    }

    /// Bytes held of frames and header blocks being assembled (both directions; bounded by
    /// [`MAX_HEADER_BLOCK`] and [`MAX_CONTROL_PAYLOAD`]), and the HPACK dynamic tables' sizes
    /// (each at most [`MAX_HPACK_TABLE`]).
    pub fn buffered(&self) -> usize {
        self.dirs
            .iter()
            .map(|d| {
                d.frame.as_ref().map_or(0, |f| f.buf.len())
                    + d.block.as_ref().map_or(0, |b| b.buf.len())
                    + d.hpack.as_ref().map_or(0, |h| h.table.size)
            })
            .sum()
    }

    /// The HPACK dynamic tables' sizes, request then response direction (RFC 7541 §4.1).
    pub fn hpack_table_sizes(&self) -> [usize; 2] {
        self.dirs
            .each_ref()
            .map(|d| d.hpack.as_ref().map_or(0, |h| h.table.size))
    }

    /// Forgets both directions' HPACK tables (over the buffer budget): later header blocks are
    /// reported unknown, as on a connection picked up mid-stream.
    pub fn drop_tables(&mut self) {
        for s in &mut self.dirs {
            s.hpack = None;
        }
    }

    /// Stops parsing this connection for good (the caller found hostile traffic over a limit):
    /// later bytes cost nothing.
    pub fn drop_state(&mut self) {
        self.dropped = true;
        for s in &mut self.dirs {
            s.synced = false;
            s.frame = None;
            s.block = None;
            s.hpack = None;
        }
    }

    fn abuse(&mut self, kind: H2Abuse, out: &mut dyn FnMut(H2Event<'_>)) {
        if !self.dropped {
            self.drop_state();
            out(H2Event::Abuse(kind));
        }
    }

    /// Header name and value bytes looked at or copied so far while decoding header blocks.
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded_bytes
    }

    /// Whether a direction's header blocks can be decoded (its HPACK state is known).
    pub fn hpack_known(&self, dir: Direction) -> bool {
        self.dirs[dir_index(dir)].hpack.is_some()
    }

    /// Bytes of one direction, in order.
    pub fn feed(&mut self, dir: Direction, seg: Segment<'_>, out: &mut dyn FnMut(H2Event<'_>)) {
        let d = dir_index(dir);
        let mut data = seg.data;
        if self.dropped {
            return;
        }
        if !self.dirs[d].synced {
            if !(seg.syscall_start && looks_like_frames(data)) {
                return;
            }
            let s = &mut self.dirs[d];
            s.synced = true;
            s.head_len = 0;
            s.frame = None;
            s.block = None;
        }
        // The preface.
        let s = &mut self.dirs[d];
        if s.preface_left > 0 {
            let at = PREFACE.len() - s.preface_left;
            let n = s.preface_left.min(data.len());
            if data[..n] != PREFACE[at..at + n] {
                out(H2Event::Error(H2ErrorKind::BadPreface));
                s.lose(out);
                return;
            }
            s.preface_left -= n;
            data = &data[n..];
        }
        while !data.is_empty() {
            let consumed = self.step(d, seg.ts_ns, data, out);
            if !self.dirs[d].synced {
                return;
            }
            data = &data[consumed..];
        }
    }

    /// `len` bytes of one direction were lost.
    pub fn gap(&mut self, dir: Direction, len: u64, out: &mut dyn FnMut(H2Event<'_>)) {
        let s = &mut self.dirs[dir_index(dir)];
        if self.dropped || !s.synced {
            return;
        }
        // Inside a DATA payload whose padding is known and that holds the whole loss: the frame
        // boundaries survive.
        if let Some(f) = s.frame.as_mut() {
            if f.head.ty == DATA {
                if let Some(pad) = f.pad {
                    let left = u64::from(f.head.len - f.got);
                    if len < left {
                        let data_end = f.head.len.saturating_sub(pad);
                        let lost_data = u64::from(data_end.saturating_sub(f.got)).min(len);
                        f.got += len as u32;
                        out(H2Event::DataGap {
                            stream: f.head.stream,
                            len: lost_data,
                        });
                        return;
                    }
                }
            }
        }
        s.lose(out);
    }

    /// Consumes bytes of `data` (at least one); returns how many.
    fn step(
        &mut self,
        d: usize,
        ts_ns: u64,
        data: &[u8],
        out: &mut dyn FnMut(H2Event<'_>),
    ) -> usize {
        let s = &mut self.dirs[d];
        let Some(frame) = s.frame.as_mut() else {
            // A frame header.
            let n = (9 - s.head_len).min(data.len());
            s.head[s.head_len..s.head_len + n].copy_from_slice(&data[..n]);
            s.head_len += n;
            if s.head_len < 9 {
                return n;
            }
            s.head_len = 0;
            let head = FrameHead::parse(&s.head);
            // Any length up to 2^24 - 1 may have been allowed by a SETTINGS_MAX_FRAME_SIZE.
            if !head.plausible(u32::MAX) {
                out(H2Event::Error(H2ErrorKind::BadFrame));
                s.lose(out);
                return n;
            }
            if s.block.is_some() && head.ty != CONTINUATION {
                out(H2Event::Error(H2ErrorKind::BadContinuation));
                s.block = None;
                s.hpack = None;
            }
            s.frame = Some(Frame {
                head,
                got: 0,
                pad: if head.ty == DATA && head.flags & PADDED == 0 {
                    Some(0)
                } else {
                    None
                },
                buf: Vec::new(),
            });
            if head.len == 0 {
                self.end_frame(d, ts_ns, out);
            }
            return n;
        };
        let head = frame.head;
        let left = (head.len - frame.got) as usize;
        let n = left.min(data.len());
        let chunk = &data[..n];
        if head.ty == DATA {
            let mut chunk = chunk;
            if frame.pad.is_none() {
                // The pad-length byte.
                let pad = u32::from(chunk[0]);
                frame.got += 1;
                chunk = &chunk[1..];
                if pad >= head.len {
                    out(H2Event::Error(H2ErrorKind::BadPadding));
                    frame.pad = Some(head.len - 1);
                } else {
                    frame.pad = Some(pad);
                }
            }
            let pad = frame.pad.unwrap_or(0);
            let data_end = head.len.saturating_sub(pad);
            let take = (data_end.saturating_sub(frame.got) as usize).min(chunk.len());
            let first = if head.flags & PADDED != 0 { 1 } else { 0 };
            if take > 0 {
                out(H2Event::Data {
                    ts_ns,
                    stream: head.stream,
                    data: &chunk[..take],
                    frame_start: frame.got == first,
                });
            }
            frame.got += chunk.len() as u32;
        } else {
            let bound = match head.ty {
                HEADERS | CONTINUATION | PUSH_PROMISE => MAX_HEADER_BLOCK + 300,
                _ => MAX_CONTROL_PAYLOAD,
            };
            let room = bound.saturating_sub(frame.buf.len()).min(chunk.len());
            frame.buf.extend_from_slice(&chunk[..room]);
            frame.got += n as u32;
        }
        if frame.got >= head.len {
            self.end_frame(d, ts_ns, out);
        }
        n
    }

    /// A frame's payload was read whole.
    fn end_frame(&mut self, d: usize, ts_ns: u64, out: &mut dyn FnMut(H2Event<'_>)) {
        let Some(frame) = self.dirs[d].frame.take() else {
            return;
        };
        let h = frame.head;
        let p = &frame.buf[..];
        let truncated = frame.buf.len() < h.len as usize;
        match h.ty {
            DATA if h.flags & END_STREAM != 0 => out(H2Event::EndStream {
                ts_ns,
                stream: h.stream,
            }),
            HEADERS | PUSH_PROMISE => {
                let mut skip = 0usize;
                let mut pad = 0usize;
                if h.flags & PADDED != 0 {
                    pad = p.first().copied().unwrap_or(0) as usize;
                    skip += 1;
                }
                if h.ty == HEADERS && h.flags & PRIORITY_FLAG != 0 {
                    skip += 5;
                }
                if h.ty == PUSH_PROMISE {
                    skip += 4;
                }
                let end = (h.len as usize).saturating_sub(pad);
                if skip > end {
                    out(H2Event::Error(H2ErrorKind::BadPadding));
                    self.dirs[d].hpack = None;
                }
                let fragment = p.get(skip..end.min(p.len())).unwrap_or(&[]);
                self.dirs[d].block = Some(Block {
                    stream: h.stream,
                    end_stream: h.flags & END_STREAM != 0,
                    report: h.ty == HEADERS,
                    buf: Vec::new(),
                    too_large: false,
                    continuations: 0,
                    ts_ns,
                });
                self.fragment(
                    d,
                    fragment,
                    truncated,
                    h.flags & END_HEADERS != 0,
                    ts_ns,
                    out,
                );
            }
            CONTINUATION => {
                let ok = self.dirs[d]
                    .block
                    .as_ref()
                    .is_some_and(|b| b.stream == h.stream);
                if !ok {
                    out(H2Event::Error(H2ErrorKind::BadContinuation));
                    self.dirs[d].block = None;
                    self.dirs[d].hpack = None;
                    return;
                }
                if let Some(b) = self.dirs[d].block.as_mut() {
                    b.continuations += 1;
                    if b.continuations > MAX_CONTINUATIONS {
                        self.abuse(H2Abuse::ContinuationFlood, out);
                        return;
                    }
                }
                self.fragment(d, p, truncated, h.flags & END_HEADERS != 0, ts_ns, out);
            }
            RST_STREAM => out(H2Event::Reset {
                ts_ns,
                stream: h.stream,
                code: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            }),
            GOAWAY if p.len() >= 8 => out(H2Event::GoAway {
                ts_ns,
                last_stream: u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
                code: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            }),
            SETTINGS
                if !self.dirs[d]
                    .settings
                    .take(ts_ns, CONTROL_BURST, CONTROL_PER_SECOND) =>
            {
                self.abuse(H2Abuse::SettingsFlood, out)
            }
            PING if !self.dirs[d]
                .pings
                .take(ts_ns, CONTROL_BURST, CONTROL_PER_SECOND) =>
            {
                self.abuse(H2Abuse::PingFlood, out)
            }
            // PRIORITY, WINDOW_UPDATE, extensions: nothing the spans need (flow control and
            // frame-size limits change no byte this parser reads).
            _ => {}
        }
    }

    fn fragment(
        &mut self,
        d: usize,
        fragment: &[u8],
        truncated: bool,
        end_headers: bool,
        ts_ns: u64,
        out: &mut dyn FnMut(H2Event<'_>),
    ) {
        let s = &mut self.dirs[d];
        let Some(b) = s.block.as_mut() else {
            return;
        };
        b.ts_ns = ts_ns;
        if truncated || b.buf.len() + fragment.len() > MAX_HEADER_BLOCK {
            if !b.too_large {
                out(H2Event::Error(H2ErrorKind::HeaderBlockTooLarge));
            }
            b.too_large = true;
            b.buf = Vec::new();
        } else if !b.too_large {
            b.buf.extend_from_slice(fragment);
        }
        if !end_headers {
            return;
        }
        let Some(b) = s.block.take() else {
            return;
        };
        let mut fields = Fields::default();
        if b.too_large {
            s.hpack = None;
        } else if let Some(hpack) = s.hpack.as_mut() {
            match decode_block(hpack, &b.buf, &mut self.decoded_bytes) {
                Decoded::Fields(f) => fields = f,
                Decoded::Error => {
                    out(H2Event::Error(H2ErrorKind::Hpack));
                    s.hpack = None;
                }
                Decoded::TooLarge => {
                    self.abuse(H2Abuse::HeaderListTooLarge, out);
                    return;
                }
            }
        }
        if b.report {
            out(H2Event::Headers {
                ts_ns: b.ts_ns,
                stream: b.stream,
                fields,
                end_stream: b.end_stream,
            });
        }
    }
}

/// What decoding one header block gave.
enum Decoded {
    Fields(Fields),
    /// An HPACK error.
    Error,
    /// The decoded list is over [`MAX_HEADER_LIST`] (the table was still updated).
    TooLarge,
}

/// The longest header name looked at: the longest of [`ALLOWED_HEADERS`] and the pseudo-headers
/// kept (a longer name is skipped by its length, without reading it).
const MAX_NAME: usize = 32;

/// The first `max` bytes of `value` as text (lossy), cut at a character boundary: at most `max`
/// bytes are read or copied whatever the value's length.
fn prefix(value: &[u8], max: usize, work: &mut u64) -> String {
    let v = &value[..value.len().min(max)];
    *work += v.len() as u64;
    cut(&String::from_utf8_lossy(v), max)
}

/// Decodes one header block, keeping allow-listed values only, the first occurrence of each
/// pseudo-header, and at most 64 allow-listed fields. Work beyond `loona-hpack`'s own (linear in
/// the block: its Huffman strings decode to at most 8/5 of their length) is at most
/// [`MAX_NAME`] + [`MAX_PATH_BYTES`] bytes per field and stops at [`MAX_HEADER_LIST`].
fn decode_block(hpack: &mut Hpack, block: &[u8], work: &mut u64) -> Decoded {
    let mut f = Fields {
        known: true,
        ..Fields::default()
    };
    let mut list = 0usize;
    let mut too_large = false;
    let (table, mut at) = (&mut hpack.table, 0);
    let res = hpack.dec.decode_with_cb(block, |name, value| {
        table.field(block, &mut at, name.len() + value.len());
        if too_large {
            return;
        }
        list += name.len() + value.len() + 32;
        if list > MAX_HEADER_LIST {
            too_large = true;
            return;
        }
        if name.len() > MAX_NAME {
            return;
        }
        *work += name.len() as u64;
        let Ok(name) = std::str::from_utf8(&name) else {
            return;
        };
        match name {
            ":method" if f.method.is_none() => f.method = Some(prefix(&value, 32, work)),
            ":path" if f.path.is_none() => {
                let v = prefix(&value, MAX_PATH_BYTES, work);
                let path = v.split(['?', '#']).next().unwrap_or("");
                f.path = Some(path.to_string());
            }
            ":status" if f.status.is_none() => {
                f.status = prefix(&value, 8, work).trim().parse().ok()
            }
            "grpc-status" if f.grpc_status.is_none() => {
                f.grpc_status = prefix(&value, 16, work).trim().parse().ok()
            }
            _ => {
                if let Some(k) = ALLOWED_HEADERS.iter().find(|k| **k == name) {
                    if f.headers.len() < 64 {
                        f.headers
                            .push((k, prefix(&value, MAX_HEADER_VALUE_BYTES, work)));
                    }
                }
            }
        }
    });
    match res {
        Err(_) => Decoded::Error,
        Ok(()) if too_large => Decoded::TooLarge,
        Ok(()) => Decoded::Fields(f),
    }
}

#[cfg(test)]
pub(crate) mod hostile;
#[cfg(test)]
pub(crate) mod tests;
