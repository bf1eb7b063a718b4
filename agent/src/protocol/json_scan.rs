//! Streaming JSON field scanner: finds a few selected fields of a JSON object body while the
//! body streams past, without keeping the body.
//!
//! Owns: an incremental tokenizer fed arbitrary byte slices (`feed`, then `finish`), the path of
//! the value being read (object keys, array positions), and the capture of the *selected* paths'
//! scalar values. Everything else is skipped byte by byte: the contents of skipped strings are
//! never copied anywhere (prompts and completions stay out of memory), and only keys of objects
//! on a selected path are looked at (into a 32-byte buffer).
//!
//! Bounds: nesting deeper than [`MAX_DEPTH`] (serde_json's own limit) gives up on the body;
//! captured strings keep at most [`STRING_MAX`] bytes (flagged as truncated); captured numbers
//! keep at most 64 bytes of text. Nothing allocates with the body's size, nothing panics on any
//! input; invalid JSON is a value ([`ScanError`]) and fields captured before it stay available.
//!
//! Leniency (availability over correctness): raw control characters inside strings and invalid
//! UTF-8 are accepted (a captured string with invalid UTF-8 or a lone surrogate escape gets
//! U+FFFD); a field of the wrong type is absent rather than failing the whole body. Duplicate keys:
//! the last one wins, like `serde_json::Value`.
//!
//! Two front ends: [`RequestScan`] (→ `openai::RequestFields`) and [`ResponseScan`]
//! (→ `openai::ResponseFields`, for a whole response body or one SSE `data:` payload).

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memchr2;

use crate::protocol::openai::{RequestFields, ResponseFields, Usage};

/// Deepest nesting accepted (the top-level object is depth 1). serde_json rejects one more level.
pub const MAX_DEPTH: usize = 127;
/// Longest captured string, in bytes of decoded UTF-8.
pub const STRING_MAX: usize = 256;
/// Longest object key matched against patterns.
const KEY_MAX: usize = 32;
/// Longest captured number text.
const NUMBER_MAX: usize = 64;
/// Most segments in a pattern (`a.b[*].c` has 4).
const PATTERN_DEPTH_MAX: usize = 8;

/// Index of a pattern in the list given to [`Patterns::new`].
pub type FieldId = usize;

/// What the scanner reports for a selected path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// [`Event::Start`], then [`Event::Scalar`] when the value is a scalar.
    Capture,
    /// [`Event::Start`], then one [`Event::NonEmpty`]: whether the value is other than `null`,
    /// `""` and `[]`. A string's contents are not kept.
    NonEmpty,
    /// Only [`Event::Start`] (useful to reset state when a key repeats or an array element begins).
    Mark,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern `{0}` has an empty key")]
    EmptyKey(String),
    #[error("pattern `{0}` has a key longer than 32 bytes")]
    LongKey(String),
    #[error("pattern `{0}` has more than 8 segments")]
    TooDeep(String),
    #[error("pattern `{0}` is listed twice")]
    Duplicate(String),
}

#[derive(Clone, Debug)]
struct Node {
    /// Object key this node is reached by; `None`: any array element (`[*]`).
    key: Option<Box<[u8]>>,
    children: Vec<u16>,
    has_keys: bool,
    any: Option<u16>,
    field: Option<(FieldId, Mode)>,
}

/// A compiled list of selected paths: `model`, `usage.prompt_tokens`, `choices[*].finish_reason`.
/// Paths start at the top-level object; `[*]` is any element of an array.
#[derive(Clone, Debug)]
pub struct Patterns {
    nodes: Vec<Node>,
}

impl Patterns {
    pub fn new(list: &[(&str, Mode)]) -> Result<Patterns, PatternError> {
        let mut nodes = vec![Node {
            key: None,
            children: Vec::new(),
            has_keys: false,
            any: None,
            field: None,
        }];
        for (id, &(pattern, mode)) in list.iter().enumerate() {
            let mut at = 0usize;
            let mut segments = 0;
            for part in pattern.split('.') {
                let mut key = part;
                let mut anys = 0;
                while let Some(k) = key.strip_suffix("[*]") {
                    key = k;
                    anys += 1;
                }
                if key.is_empty() {
                    return Err(PatternError::EmptyKey(pattern.to_string()));
                }
                if key.len() > KEY_MAX {
                    return Err(PatternError::LongKey(pattern.to_string()));
                }
                segments += 1 + anys;
                if segments > PATTERN_DEPTH_MAX {
                    return Err(PatternError::TooDeep(pattern.to_string()));
                }
                at = Self::child(&mut nodes, at, Some(key.as_bytes()));
                for _ in 0..anys {
                    at = Self::child(&mut nodes, at, None);
                }
            }
            if nodes[at].field.is_some() {
                return Err(PatternError::Duplicate(pattern.to_string()));
            }
            nodes[at].field = Some((id, mode));
        }
        Ok(Patterns { nodes })
    }

    fn child(nodes: &mut Vec<Node>, parent: usize, key: Option<&[u8]>) -> usize {
        let found = match key {
            None => nodes[parent].any.map(usize::from),
            Some(k) => nodes[parent]
                .children
                .iter()
                .map(|&c| usize::from(c))
                .find(|&c| nodes[c].key.as_deref() == Some(k)),
        };
        if let Some(c) = found {
            return c;
        }
        let id = nodes.len();
        nodes.push(Node {
            key: key.map(Box::from),
            children: Vec::new(),
            has_keys: false,
            any: None,
            field: None,
        });
        // At most 8 segments per pattern and a handful of patterns: ids fit in u16.
        let id16 = id as u16;
        match key {
            None => nodes[parent].any = Some(id16),
            Some(_) => {
                nodes[parent].children.push(id16);
                nodes[parent].has_keys = true;
            }
        }
        id
    }

    fn lookup(&self, parent: u16, key: &[u8]) -> Option<u16> {
        self.nodes[usize::from(parent)]
            .children
            .iter()
            .copied()
            .find(|&c| self.nodes[usize::from(c)].key.as_deref() == Some(key))
    }
}

/// A captured number, as its JSON text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Number<'a> {
    text: &'a str,
    /// The text was longer than 64 bytes: no value is given.
    overflow: bool,
}

impl Number<'_> {
    /// An integer written without fraction or exponent that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        if self.overflow || self.text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            return None;
        }
        // Like serde_json, `-0` is a float.
        self.text
            .parse()
            .ok()
            .filter(|&n: &i64| n != 0 || !self.text.starts_with('-'))
    }

    pub fn as_f64(&self) -> Option<f64> {
        if self.overflow {
            return None;
        }
        self.text.parse::<f64>().ok().filter(|f| f.is_finite())
    }

    pub fn text(&self) -> Option<&str> {
        (!self.overflow).then_some(self.text)
    }
}

impl std::fmt::Debug for Number<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.overflow {
            f.write_str("Number(<too long>)")
        } else {
            write!(f, "Number({})", self.text)
        }
    }
}

/// A selected path's scalar value.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar<'a> {
    /// At most [`STRING_MAX`] bytes; `truncated` when the string was longer.
    Str {
        text: Cow<'a, str>,
        truncated: bool,
    },
    Number(Number<'a>),
    Bool(bool),
    Null,
}

impl Scalar<'_> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Scalar::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Scalar::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Number(n) => n.as_f64(),
            _ => None,
        }
    }
}

/// What the scanner reports, in body order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<'a> {
    /// A value begins at a selected path. A repeated key starts again: the last one wins.
    Start { field: FieldId, kind: Kind },
    /// The scalar value of a [`Mode::Capture`] path, once it is complete.
    Scalar { field: FieldId, value: Scalar<'a> },
    /// Whether the value of a [`Mode::NonEmpty`] path is other than `null`, `""`, `[]`; reported
    /// as soon as known (the first byte of a string's contents, an array's first element).
    NonEmpty { field: FieldId, non_empty: bool },
}

/// Why a body could not be scanned to its end. Fields captured before stay valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("the body is not a JSON object")]
    NotObject,
    #[error("invalid JSON at byte {offset}")]
    Syntax { offset: u64 },
    #[error("JSON nested deeper than {MAX_DEPTH} at byte {offset}")]
    TooDeep { offset: u64 },
    #[error("bytes after the JSON object at byte {offset}")]
    TrailingData { offset: u64 },
    #[error("the body ended inside the JSON object")]
    Truncated,
    #[error("bytes of the body were lost")]
    Gap,
}

impl ScanError {
    /// A short label for counters.
    pub fn as_str(&self) -> &'static str {
        match self {
            ScanError::NotObject => "not_object",
            ScanError::Syntax { .. } => "syntax",
            ScanError::TooDeep { .. } => "too_deep",
            ScanError::TrailingData { .. } => "trailing_data",
            ScanError::Truncated => "truncated",
            ScanError::Gap => "gap",
        }
    }
}

/// Where a scan stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanState {
    /// More bytes are expected.
    Scanning,
    /// The top-level object has closed (trailing whitespace is still accepted).
    Complete,
    Failed(ScanError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Hex { n: u8, acc: u16 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    Skip,
    Key,
    Capture(FieldId),
    NonEmpty(FieldId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the top-level `{`.
    Start,
    /// After `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    InKey,
    Colon,
    /// A value (after `:`, or `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ArrayFirst,
    InString,
    Number(Num),
    Literal {
        rest: &'static [u8],
        value: Option<bool>,
    },
    AfterValue,
    Done,
    Failed(ScanError),
}

#[derive(Clone, Copy, Debug, Default)]
struct Level {
    node: u16,
    /// A [`Mode::NonEmpty`] array whose first element has not been seen yet.
    pending: Option<FieldId>,
}

/// The generic scanner. Feed it a body's bytes in any slices; it calls `visit` with the events of
/// the selected paths.
#[derive(Clone)]
pub struct Scanner<'p> {
    patterns: &'p Patterns,
    state: State,
    offset: u64,
    depth: usize,
    /// Bit `d` set: the container at depth `d + 1` is an array.
    arrays: [u64; 2],
    /// Containers `0..active` lie on a selected path; those deeper do not.
    active: usize,
    levels: [Level; PATTERN_DEPTH_MAX + 1],
    /// Node of the value that begins next.
    child: Option<u16>,
    sink: Sink,
    esc: Esc,
    /// A high surrogate escape waiting for its low half.
    high: Option<u16>,
    key: [u8; KEY_MAX],
    key_len: usize,
    key_overflow: bool,
    text: [u8; STRING_MAX],
    text_len: usize,
    text_truncated: bool,
    num_field: Option<FieldId>,
    num: [u8; NUMBER_MAX],
    num_len: usize,
    num_overflow: bool,
    lit_field: Option<FieldId>,
}

impl std::fmt::Debug for Scanner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Buffers may hold a part of a captured value only; still, print positions, not bytes.
        f.debug_struct("Scanner")
            .field("state", &self.state())
            .field("offset", &self.offset)
            .field("depth", &self.depth)
            .finish()
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn hex(b: u8) -> Option<u16> {
    (b as char).to_digit(16).map(|d| d as u16)
}

const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Decoded bytes of a captured string as text: a multi-byte character cut by the 256-byte bound is
/// dropped; invalid UTF-8 becomes U+FFFD.
fn decode(bytes: &[u8], truncated: bool) -> Cow<'_, str> {
    let mut bytes = bytes;
    if truncated {
        if let Err(e) = std::str::from_utf8(bytes) {
            if e.error_len().is_none() {
                bytes = &bytes[..e.valid_up_to()];
            }
        }
    }
    String::from_utf8_lossy(bytes)
}

impl<'p> Scanner<'p> {
    pub fn new(patterns: &'p Patterns) -> Scanner<'p> {
        Scanner {
            patterns,
            state: State::Start,
            offset: 0,
            depth: 0,
            arrays: [0; 2],
            active: 0,
            levels: [Level::default(); PATTERN_DEPTH_MAX + 1],
            child: None,
            sink: Sink::Skip,
            esc: Esc::None,
            high: None,
            key: [0; KEY_MAX],
            key_len: 0,
            key_overflow: false,
            text: [0; STRING_MAX],
            text_len: 0,
            text_truncated: false,
            num_field: None,
            num: [0; NUMBER_MAX],
            num_len: 0,
            num_overflow: false,
            lit_field: None,
        }
    }

    pub fn state(&self) -> ScanState {
        match self.state {
            State::Done => ScanState::Complete,
            State::Failed(e) => ScanState::Failed(e),
            _ => ScanState::Scanning,
        }
    }

    /// Bytes fed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of the body were lost: the scan gives up (`ScanError::Gap`), keeping what it found.
    pub fn gap(&mut self) {
        if !matches!(self.state, State::Failed(_)) {
            self.state = State::Failed(ScanError::Gap);
        }
    }

    /// The body has ended.
    pub fn finish(&mut self) -> Result<(), ScanError> {
        match self.state {
            State::Done => Ok(()),
            State::Failed(e) => Err(e),
            _ => {
                self.state = State::Failed(ScanError::Truncated);
                Err(ScanError::Truncated)
            }
        }
    }

    pub fn feed<F: FnMut(Event<'_>)>(&mut self, data: &[u8], visit: &mut F) {
        let mut i = 0;
        while i < data.len() {
            match self.step(data, i, visit) {
                Ok(next) => i = next,
                Err(e) => {
                    self.state = State::Failed(e);
                    break;
                }
            }
        }
        self.offset += data.len() as u64;
    }

    fn syntax(&self, i: usize) -> ScanError {
        ScanError::Syntax {
            offset: self.offset + i as u64,
        }
    }

    fn in_array(&self) -> bool {
        let d = self.depth - 1;
        self.arrays[d / 64] & (1 << (d % 64)) != 0
    }

    /// Consume input at `i`, returning where to continue.
    fn step<F: FnMut(Event<'_>)>(
        &mut self,
        data: &[u8],
        i: usize,
        visit: &mut F,
    ) -> Result<usize, ScanError> {
        let b = data[i];
        match self.state {
            State::InString | State::InKey => self.string(data, i, visit),
            State::Failed(_) => Ok(data.len()),
            // Inside a number or literal, whitespace ends the token.
            State::Number(n) => self.number(n, data, i, visit),
            State::Literal { rest, value } => {
                if b != rest[0] {
                    return Err(self.syntax(i));
                }
                if rest.len() > 1 {
                    self.state = State::Literal {
                        rest: &rest[1..],
                        value,
                    };
                } else {
                    if let Some(field) = self.lit_field {
                        let value = value.map_or(Scalar::Null, Scalar::Bool);
                        visit(Event::Scalar { field, value });
                    }
                    self.state = State::AfterValue;
                }
                Ok(i + 1)
            }
            _ if is_ws(b) => Ok(i + 1),
            State::Start => {
                if b != b'{' {
                    return Err(ScanError::NotObject);
                }
                self.push(false, Some(0), None, i)?;
                self.state = State::ObjectFirst;
                Ok(i + 1)
            }
            State::ObjectFirst | State::Key => {
                match b {
                    b'"' => {
                        let level =
                            (self.depth == self.active).then(|| self.levels[self.active - 1].node);
                        self.sink = match level {
                            Some(n) if self.patterns.nodes[usize::from(n)].has_keys => Sink::Key,
                            _ => Sink::Skip,
                        };
                        self.key_len = 0;
                        self.key_overflow = false;
                        self.esc = Esc::None;
                        self.high = None;
                        self.state = State::InKey;
                    }
                    b'}' if self.state == State::ObjectFirst => self.close(visit),
                    _ => return Err(self.syntax(i)),
                }
                Ok(i + 1)
            }
            State::Colon => {
                if b != b':' {
                    return Err(self.syntax(i));
                }
                self.state = State::Value;
                Ok(i + 1)
            }
            State::Value | State::ArrayFirst => {
                if b == b']' && self.state == State::ArrayFirst {
                    self.close(visit);
                    return Ok(i + 1);
                }
                if self.in_array() {
                    self.child = None;
                    if self.depth == self.active {
                        let level = &mut self.levels[self.active - 1];
                        if let Some(field) = level.pending.take() {
                            visit(Event::NonEmpty {
                                field,
                                non_empty: true,
                            });
                        }
                        self.child = self.patterns.nodes[usize::from(level.node)].any;
                    }
                }
                self.value(b, i, visit)
            }
            State::AfterValue => {
                let array = self.in_array();
                match b {
                    b',' => self.state = if array { State::Value } else { State::Key },
                    b']' if array => self.close(visit),
                    b'}' if !array => self.close(visit),
                    _ => return Err(self.syntax(i)),
                }
                Ok(i + 1)
            }
            State::Done => Err(ScanError::TrailingData {
                offset: self.offset + i as u64,
            }),
        }
    }

    fn push(
        &mut self,
        array: bool,
        node: Option<u16>,
        pending: Option<FieldId>,
        i: usize,
    ) -> Result<(), ScanError> {
        if self.depth >= MAX_DEPTH {
            return Err(ScanError::TooDeep {
                offset: self.offset + i as u64,
            });
        }
        let d = self.depth;
        if array {
            self.arrays[d / 64] |= 1 << (d % 64);
        } else {
            self.arrays[d / 64] &= !(1 << (d % 64));
        }
        self.depth += 1;
        if let Some(node) = node {
            // A node is only given to a child of an active container, and patterns are at most
            // PATTERN_DEPTH_MAX deep: `active` stays within `levels`.
            if self.active == d && self.active < self.levels.len() {
                self.levels[self.active] = Level { node, pending };
                self.active += 1;
            }
        }
        Ok(())
    }

    /// Close the innermost container (the caller checked its kind).
    fn close<F: FnMut(Event<'_>)>(&mut self, visit: &mut F) {
        if self.depth == self.active {
            self.active -= 1;
            if let Some(field) = self.levels[self.active].pending.take() {
                visit(Event::NonEmpty {
                    field,
                    non_empty: false,
                });
            }
        }
        self.depth -= 1;
        self.state = if self.depth == 0 {
            State::Done
        } else {
            State::AfterValue
        };
    }

    /// The first byte `b` (at `i`) of a value at node `self.child`.
    fn value<F: FnMut(Event<'_>)>(
        &mut self,
        b: u8,
        i: usize,
        visit: &mut F,
    ) -> Result<usize, ScanError> {
        let node = self.child.take();
        let field = node.and_then(|n| self.patterns.nodes[usize::from(n)].field);
        let kind = match b {
            b'{' => Kind::Object,
            b'[' => Kind::Array,
            b'"' => Kind::String,
            b'-' | b'0'..=b'9' => Kind::Number,
            b't' | b'f' => Kind::Bool,
            b'n' => Kind::Null,
            _ => return Err(self.syntax(i)),
        };
        let mut capture = None;
        let mut presence = None;
        if let Some((field, mode)) = field {
            visit(Event::Start { field, kind });
            match (mode, kind) {
                (Mode::Capture, Kind::Object | Kind::Array) | (Mode::Mark, _) => {}
                (Mode::Capture, _) => capture = Some(field),
                (Mode::NonEmpty, Kind::String | Kind::Array) => presence = Some(field),
                (Mode::NonEmpty, k) => visit(Event::NonEmpty {
                    field,
                    non_empty: k != Kind::Null,
                }),
            }
        }
        match b {
            b'{' => {
                self.push(false, node, None, i)?;
                self.state = State::ObjectFirst;
            }
            b'[' => {
                self.push(true, node, presence, i)?;
                self.state = State::ArrayFirst;
            }
            b'"' => {
                self.sink = match (capture, presence) {
                    (Some(f), _) => Sink::Capture(f),
                    (_, Some(f)) => Sink::NonEmpty(f),
                    _ => Sink::Skip,
                };
                self.text_len = 0;
                self.text_truncated = false;
                self.esc = Esc::None;
                self.high = None;
                self.state = State::InString;
            }
            b'-' | b'0'..=b'9' => {
                self.num_field = capture;
                self.num_len = 0;
                self.num_overflow = false;
                self.num_push(b);
                self.state = State::Number(if b == b'-' {
                    Num::Minus
                } else if b == b'0' {
                    Num::Zero
                } else {
                    Num::Int
                });
            }
            _ => {
                self.lit_field = capture;
                let (rest, value): (&'static [u8], _) = match b {
                    b't' => (b"rue", Some(true)),
                    b'f' => (b"alse", Some(false)),
                    _ => (b"ull", None),
                };
                self.state = State::Literal { rest, value };
            }
        }
        Ok(i + 1)
    }

    fn num_push(&mut self, b: u8) {
        if self.num_field.is_some() {
            if self.num_len < NUMBER_MAX {
                self.num[self.num_len] = b;
                self.num_len += 1;
            } else {
                self.num_overflow = true;
            }
        }
    }

    fn number<F: FnMut(Event<'_>)>(
        &mut self,
        n: Num,
        data: &[u8],
        i: usize,
        visit: &mut F,
    ) -> Result<usize, ScanError> {
        let b = data[i];
        let digit = b.is_ascii_digit();
        let next = match (n, b) {
            (Num::Minus, b'0') => Some(Num::Zero),
            (Num::Minus, _) if digit => Some(Num::Int),
            (Num::Int, _) if digit => Some(Num::Int),
            (Num::Zero | Num::Int, b'.') => Some(Num::Dot),
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::E),
            (Num::Dot | Num::Frac, _) if digit => Some(Num::Frac),
            (Num::E, b'+' | b'-') => Some(Num::ESign),
            (Num::E | Num::ESign | Num::Exp, _) if digit => Some(Num::Exp),
            _ => None,
        };
        if let Some(next) = next {
            self.num_push(b);
            self.state = State::Number(next);
            return Ok(i + 1);
        }
        if !matches!(n, Num::Zero | Num::Int | Num::Frac | Num::Exp) {
            return Err(self.syntax(i));
        }
        if let Some(field) = self.num_field {
            // Only ASCII number bytes were pushed.
            let text = std::str::from_utf8(&self.num[..self.num_len]).unwrap_or("");
            visit(Event::Scalar {
                field,
                value: Scalar::Number(Number {
                    text,
                    overflow: self.num_overflow,
                }),
            });
        }
        // The byte that ended the number is read again as what follows a value.
        self.state = State::AfterValue;
        Ok(i)
    }

    /// Inside a key or a string value.
    fn string<F: FnMut(Event<'_>)>(
        &mut self,
        data: &[u8],
        i: usize,
        visit: &mut F,
    ) -> Result<usize, ScanError> {
        match self.esc {
            Esc::None => {
                let rest = &data[i..];
                match memchr2(b'"', b'\\', rest) {
                    None => {
                        self.out(rest, visit);
                        Ok(data.len())
                    }
                    Some(at) => {
                        self.out(&rest[..at], visit);
                        if rest[at] == b'\\' {
                            self.esc = Esc::Backslash;
                        } else {
                            self.end_string(visit);
                        }
                        Ok(i + at + 1)
                    }
                }
            }
            Esc::Backslash => {
                let b = data[i];
                let decoded = match b {
                    b'"' | b'\\' | b'/' => b,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.esc = Esc::Hex { n: 0, acc: 0 };
                        return Ok(i + 1);
                    }
                    _ => return Err(self.syntax(i)),
                };
                self.esc = Esc::None;
                self.out(&[decoded], visit);
                Ok(i + 1)
            }
            Esc::Hex { n, acc } => {
                let Some(d) = hex(data[i]) else {
                    return Err(self.syntax(i));
                };
                let acc = (acc << 4) | d;
                if n < 3 {
                    self.esc = Esc::Hex { n: n + 1, acc };
                } else {
                    self.esc = Esc::None;
                    self.unit(acc, visit);
                }
                Ok(i + 1)
            }
        }
    }

    /// One UTF-16 code unit from a `\uXXXX` escape.
    fn unit<F: FnMut(Event<'_>)>(&mut self, u: u16, visit: &mut F) {
        if self.sink == Sink::Skip {
            return;
        }
        if let Some(hi) = self.high.take() {
            if (0xDC00..0xE000).contains(&u) {
                let c = 0x10000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(u) - 0xDC00);
                let mut buf = [0; 4];
                let s = char::from_u32(c)
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
                    .encode_utf8(&mut buf);
                self.sink_bytes(s.as_bytes(), visit);
                return;
            }
            self.sink_bytes(REPLACEMENT, visit);
        }
        if (0xD800..0xDC00).contains(&u) {
            self.high = Some(u);
            return;
        }
        let mut buf = [0; 4];
        let s = char::from_u32(u32::from(u))
            .unwrap_or(char::REPLACEMENT_CHARACTER)
            .encode_utf8(&mut buf);
        self.sink_bytes(s.as_bytes(), visit);
    }

    /// Decoded string bytes other than from `\u` escapes.
    fn out<F: FnMut(Event<'_>)>(&mut self, bytes: &[u8], visit: &mut F) {
        if bytes.is_empty() || self.sink == Sink::Skip {
            return;
        }
        if self.high.take().is_some() {
            self.sink_bytes(REPLACEMENT, visit);
        }
        self.sink_bytes(bytes, visit);
    }

    fn sink_bytes<F: FnMut(Event<'_>)>(&mut self, bytes: &[u8], visit: &mut F) {
        match self.sink {
            Sink::Skip => {}
            Sink::Key => {
                let end = self.key_len + bytes.len();
                if end <= KEY_MAX {
                    self.key[self.key_len..end].copy_from_slice(bytes);
                    self.key_len = end;
                } else {
                    self.key_overflow = true;
                    self.sink = Sink::Skip;
                }
            }
            Sink::Capture(_) => {
                let n = bytes.len().min(STRING_MAX - self.text_len);
                self.text[self.text_len..self.text_len + n].copy_from_slice(&bytes[..n]);
                self.text_len += n;
                if n < bytes.len() {
                    self.text_truncated = true;
                }
            }
            Sink::NonEmpty(field) => {
                visit(Event::NonEmpty {
                    field,
                    non_empty: true,
                });
                self.sink = Sink::Skip;
            }
        }
    }

    fn end_string<F: FnMut(Event<'_>)>(&mut self, visit: &mut F) {
        if self.high.take().is_some() {
            self.sink_bytes(REPLACEMENT, visit);
        }
        if self.state == State::InKey {
            let node = (self.depth == self.active).then(|| self.levels[self.active - 1].node);
            self.child = match node {
                Some(n) if self.sink == Sink::Key && !self.key_overflow => {
                    self.patterns.lookup(n, &self.key[..self.key_len])
                }
                _ => None,
            };
            self.state = State::Colon;
            return;
        }
        match self.sink {
            Sink::Capture(field) => {
                let text = decode(&self.text[..self.text_len], self.text_truncated);
                visit(Event::Scalar {
                    field,
                    value: Scalar::Str {
                        text,
                        truncated: self.text_truncated,
                    },
                });
            }
            Sink::NonEmpty(field) => visit(Event::NonEmpty {
                field,
                non_empty: false,
            }),
            Sink::Skip | Sink::Key => {}
        }
        self.sink = Sink::Skip;
        self.state = State::AfterValue;
    }
}

// ---------------------------------------------------------------------------------------------
// Front ends.

mod request {
    pub const MODEL: usize = 0;
    pub const STREAM: usize = 1;
    pub const STREAM_OPTIONS: usize = 2;
    pub const INCLUDE_USAGE: usize = 3;
    pub const MAX_TOKENS: usize = 4;
    pub const MAX_COMPLETION_TOKENS: usize = 5;
    pub const TEMPERATURE: usize = 6;
    pub const TOP_P: usize = 7;
    pub const N: usize = 8;
}

const REQUEST_PATTERNS: &[(&str, Mode)] = &[
    ("model", Mode::Capture),
    ("stream", Mode::Capture),
    ("stream_options", Mode::Mark),
    ("stream_options.include_usage", Mode::Capture),
    ("max_tokens", Mode::Capture),
    ("max_completion_tokens", Mode::Capture),
    ("temperature", Mode::Capture),
    ("top_p", Mode::Capture),
    ("n", Mode::Capture),
];

#[allow(clippy::expect_used)]
static REQUEST: LazyLock<Patterns> =
    LazyLock::new(|| Patterns::new(REQUEST_PATTERNS).expect("request patterns are valid"));

/// The request fields found by [`RequestScan`]. A field of the wrong JSON type is `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScannedRequest {
    /// At most [`STRING_MAX`] bytes.
    pub model: Option<String>,
    pub model_truncated: bool,
    pub stream: Option<bool>,
    pub include_usage: Option<bool>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<i64>,
}

impl ScannedRequest {
    fn on(&mut self, ev: Event<'_>) {
        use request::*;
        match ev {
            Event::Start { field, .. } => match field {
                MODEL => {
                    self.model = None;
                    self.model_truncated = false;
                }
                STREAM => self.stream = None,
                STREAM_OPTIONS | INCLUDE_USAGE => self.include_usage = None,
                MAX_TOKENS => self.max_tokens = None,
                MAX_COMPLETION_TOKENS => self.max_completion_tokens = None,
                TEMPERATURE => self.temperature = None,
                TOP_P => self.top_p = None,
                N => self.n = None,
                _ => {}
            },
            Event::Scalar { field, value } => match field {
                MODEL => {
                    if let Scalar::Str { text, truncated } = value {
                        self.model = Some(text.into_owned());
                        self.model_truncated = truncated;
                    }
                }
                STREAM => self.stream = value.as_bool(),
                INCLUDE_USAGE => self.include_usage = value.as_bool(),
                MAX_TOKENS => self.max_tokens = value.as_i64(),
                MAX_COMPLETION_TOKENS => self.max_completion_tokens = value.as_i64(),
                TEMPERATURE => self.temperature = value.as_f64(),
                TOP_P => self.top_p = value.as_f64(),
                N => self.n = value.as_i64(),
                _ => {}
            },
            Event::NonEmpty { .. } => {}
        }
    }

    pub fn into_fields(self) -> RequestFields {
        RequestFields {
            model: self.model,
            stream: self.stream,
            include_usage: self.include_usage,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n,
        }
    }
}

impl From<ScannedRequest> for RequestFields {
    fn from(r: ScannedRequest) -> RequestFields {
        r.into_fields()
    }
}

/// Reads the fields of an OpenAI request body (chat, completions, embeddings) as it streams past.
#[derive(Clone, Debug)]
pub struct RequestScan {
    scanner: Scanner<'static>,
    fields: ScannedRequest,
}

impl Default for RequestScan {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestScan {
    pub fn new() -> RequestScan {
        RequestScan {
            scanner: Scanner::new(&REQUEST),
            fields: ScannedRequest::default(),
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        let fields = &mut self.fields;
        self.scanner.feed(data, &mut |ev| fields.on(ev));
    }

    /// Bytes were lost: stop, keeping the fields found so far.
    pub fn gap(&mut self) {
        self.scanner.gap();
    }

    /// The body has ended: `Err` when it was not one complete JSON object.
    pub fn finish(&mut self) -> Result<(), ScanError> {
        self.scanner.finish()
    }

    pub fn state(&self) -> ScanState {
        self.scanner.state()
    }

    /// The fields found so far (also after an error).
    pub fn fields(&self) -> &ScannedRequest {
        &self.fields
    }

    pub fn into_fields(self) -> RequestFields {
        self.fields.into_fields()
    }
}

mod response {
    pub const ID: usize = 0;
    pub const MODEL: usize = 1;
    pub const CHOICES: usize = 2;
    pub const CHOICE: usize = 3;
    pub const FINISH_REASON: usize = 4;
    pub const MESSAGE: usize = 5;
    pub const DELTA: usize = 6;
    /// `OUTPUT..OUTPUT + OUTPUTS`: the fields whose non-emptiness means a choice carried output.
    pub const OUTPUT: usize = 7;
    pub const OUTPUTS: usize = 9;
    pub const USAGE: usize = OUTPUT + OUTPUTS;
    pub const PROMPT_TOKENS: usize = USAGE + 1;
    pub const COMPLETION_TOKENS: usize = USAGE + 2;
    pub const DETAILS: usize = USAGE + 3;
    pub const CACHED_TOKENS: usize = USAGE + 4;
    pub const ERROR: usize = USAGE + 5;
    pub const ERROR_TYPE: usize = USAGE + 6;
    pub const ERROR_CODE: usize = USAGE + 7;
}

/// The outputs of [`ResponseScan`], in `response` index order from `OUTPUT`.
const RESPONSE_PATTERNS: &[(&str, Mode)] = &[
    ("id", Mode::Capture),
    ("model", Mode::Capture),
    ("choices", Mode::Mark),
    ("choices[*]", Mode::Mark),
    ("choices[*].finish_reason", Mode::Capture),
    ("choices[*].message", Mode::Mark),
    ("choices[*].delta", Mode::Mark),
    // Outputs (bits 0..9 of `Choice::output`): message ones, then `text`, then delta ones.
    ("choices[*].message.content", Mode::NonEmpty),
    ("choices[*].message.reasoning_content", Mode::NonEmpty),
    ("choices[*].message.reasoning", Mode::NonEmpty),
    ("choices[*].message.tool_calls", Mode::NonEmpty),
    ("choices[*].text", Mode::NonEmpty),
    ("choices[*].delta.content", Mode::NonEmpty),
    ("choices[*].delta.reasoning_content", Mode::NonEmpty),
    ("choices[*].delta.reasoning", Mode::NonEmpty),
    ("choices[*].delta.tool_calls", Mode::NonEmpty),
    ("usage", Mode::Mark),
    ("usage.prompt_tokens", Mode::Capture),
    ("usage.completion_tokens", Mode::Capture),
    ("usage.prompt_tokens_details", Mode::Mark),
    ("usage.prompt_tokens_details.cached_tokens", Mode::Capture),
    ("error", Mode::Mark),
    ("error.type", Mode::Capture),
    ("error.code", Mode::Capture),
];
const MESSAGE_OUTPUTS: u16 = 0b0_0000_1111;
const DELTA_OUTPUTS: u16 = 0b1_1110_0000;

#[allow(clippy::expect_used)]
static RESPONSE: LazyLock<Patterns> =
    LazyLock::new(|| Patterns::new(RESPONSE_PATTERNS).expect("response patterns are valid"));

/// Choices kept per response; more are counted in `choices_dropped`.
pub const CHOICES_MAX: usize = 128;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScannedChoice {
    pub finish_reason: Option<String>,
    /// Bit per output field that was non-empty (`message.content`, `text`, `delta.content`, …).
    output: u16,
}

impl ScannedChoice {
    /// The choice carried generated output: content, reasoning, tool calls or completion text.
    pub fn has_output(&self) -> bool {
        self.output != 0
    }
}

/// The response fields found by [`ResponseScan`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScannedResponse {
    pub id: Option<String>,
    pub model: Option<String>,
    /// `choices`, in order (at most [`CHOICES_MAX`]).
    pub choices: Vec<ScannedChoice>,
    pub choices_dropped: usize,
    /// `usage` when it is an object.
    pub usage: Option<Usage>,
    /// `error` is present and not `null`.
    pub error: bool,
    pub error_kind: Option<String>,
    /// `error.code` as text (a string's value or a number's JSON text).
    pub error_code: Option<String>,
}

impl ScannedResponse {
    fn choice(&mut self) -> Option<&mut ScannedChoice> {
        if self.choices_dropped > 0 {
            return None;
        }
        self.choices.last_mut()
    }

    fn on(&mut self, ev: Event<'_>) {
        use response::*;
        match ev {
            Event::Start { field, kind } => match field {
                ID => self.id = None,
                MODEL => self.model = None,
                CHOICES => {
                    self.choices.clear();
                    self.choices_dropped = 0;
                }
                CHOICE => {
                    if self.choices.len() < CHOICES_MAX {
                        self.choices.push(ScannedChoice::default());
                    } else {
                        self.choices_dropped += 1;
                    }
                }
                FINISH_REASON => {
                    if let Some(c) = self.choice() {
                        c.finish_reason = None;
                    }
                }
                MESSAGE | DELTA => {
                    let mask = if field == MESSAGE {
                        MESSAGE_OUTPUTS
                    } else {
                        DELTA_OUTPUTS
                    };
                    if let Some(c) = self.choice() {
                        c.output &= !mask;
                    }
                }
                USAGE => self.usage = (kind == Kind::Object).then(Usage::default),
                PROMPT_TOKENS | COMPLETION_TOKENS | DETAILS | CACHED_TOKENS => {
                    if let Some(u) = self.usage.as_mut() {
                        match field {
                            PROMPT_TOKENS => u.prompt_tokens = None,
                            COMPLETION_TOKENS => u.completion_tokens = None,
                            _ => u.cached_tokens = None,
                        }
                    }
                }
                ERROR => {
                    self.error = kind != Kind::Null;
                    self.error_kind = None;
                    self.error_code = None;
                }
                ERROR_TYPE => self.error_kind = None,
                ERROR_CODE => self.error_code = None,
                _ => {}
            },
            Event::Scalar { field, value } => match field {
                ID => self.id = value.as_str().map(str::to_string),
                MODEL => self.model = value.as_str().map(str::to_string),
                FINISH_REASON => {
                    if let Some(c) = self.choice() {
                        c.finish_reason = value.as_str().map(str::to_string);
                    }
                }
                PROMPT_TOKENS | COMPLETION_TOKENS | CACHED_TOKENS => {
                    if let Some(u) = self.usage.as_mut() {
                        let v = value.as_i64();
                        match field {
                            PROMPT_TOKENS => u.prompt_tokens = v,
                            COMPLETION_TOKENS => u.completion_tokens = v,
                            _ => u.cached_tokens = v,
                        }
                    }
                }
                ERROR_TYPE => self.error_kind = value.as_str().map(str::to_string),
                ERROR_CODE => {
                    self.error_code = match &value {
                        Scalar::Str { text, .. } => Some(text.to_string()),
                        Scalar::Number(n) => n.text().map(str::to_string),
                        _ => None,
                    }
                }
                _ => {}
            },
            Event::NonEmpty { field, non_empty } => {
                if (OUTPUT..OUTPUT + OUTPUTS).contains(&field) {
                    if let Some(c) = self.choice() {
                        let bit = 1 << (field - OUTPUT);
                        if non_empty {
                            c.output |= bit;
                        } else {
                            c.output &= !bit;
                        }
                    }
                }
            }
        }
    }

    /// `finish_reason` of every choice that has one, in order.
    pub fn finish_reasons(&self) -> Vec<String> {
        self.choices
            .iter()
            .filter_map(|c| c.finish_reason.clone())
            .collect()
    }

    /// Choices that carried output.
    pub fn choices_with_output(&self) -> usize {
        self.choices.iter().filter(|c| c.has_output()).count()
    }

    /// `error.type` when non-empty, else `error.code`, else `"error"`; `None` without an error.
    pub fn error_type(&self) -> Option<String> {
        if !self.error {
            return None;
        }
        Some(match (&self.error_kind, &self.error_code) {
            (Some(k), _) if !k.is_empty() => k.clone(),
            (_, Some(c)) => c.clone(),
            _ => "error".to_string(),
        })
    }

    pub fn into_fields(self) -> ResponseFields {
        ResponseFields {
            finish_reasons: self.finish_reasons(),
            choices_with_output: self.choices_with_output(),
            error_type: self.error_type(),
            id: self.id,
            model: self.model,
            usage: self.usage,
        }
    }
}

impl From<ScannedResponse> for ResponseFields {
    fn from(r: ScannedResponse) -> ResponseFields {
        r.into_fields()
    }
}

/// Reads the fields of an OpenAI response body (or of one SSE `data:` payload) as it streams past.
#[derive(Clone, Debug)]
pub struct ResponseScan {
    scanner: Scanner<'static>,
    fields: ScannedResponse,
}

impl Default for ResponseScan {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseScan {
    pub fn new() -> ResponseScan {
        ResponseScan {
            scanner: Scanner::new(&RESPONSE),
            fields: ScannedResponse::default(),
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        let fields = &mut self.fields;
        self.scanner.feed(data, &mut |ev| fields.on(ev));
    }

    /// Bytes were lost: stop, keeping the fields found so far.
    pub fn gap(&mut self) {
        self.scanner.gap();
    }

    /// The body has ended: `Err` when it was not one complete JSON object.
    pub fn finish(&mut self) -> Result<(), ScanError> {
        self.scanner.finish()
    }

    pub fn state(&self) -> ScanState {
        self.scanner.state()
    }

    /// The fields found so far (also after an error).
    pub fn fields(&self) -> &ScannedResponse {
        &self.fields
    }

    pub fn into_fields(self) -> ResponseFields {
        self.fields.into_fields()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openai;
    use proptest::prelude::*;
    use serde_json::Value;

    // ---- helpers -------------------------------------------------------------------------

    fn scan_request(feeds: &[&[u8]]) -> (ScannedRequest, Result<(), ScanError>) {
        let mut s = RequestScan::new();
        for f in feeds {
            s.feed(f);
        }
        let r = s.finish();
        (s.fields().clone(), r)
    }

    fn scan_response(feeds: &[&[u8]]) -> (ScannedResponse, Result<(), ScanError>) {
        let mut s = ResponseScan::new();
        for f in feeds {
            s.feed(f);
        }
        let r = s.finish();
        (s.fields().clone(), r)
    }

    /// Offsets to split a body at: all of them for small bodies, the two ends and a stride
    /// for large ones.
    fn offsets(len: usize) -> Vec<usize> {
        if len <= 4096 {
            return (0..=len).collect();
        }
        (0..=1024)
            .chain((1024..len - 1024).step_by(331))
            .chain(len - 1024..=len)
            .collect()
    }

    /// The result of one feed, checked equal to every two-feed split and to one byte at a time.
    fn replay<T: PartialEq + std::fmt::Debug>(body: &[u8], scan: impl Fn(&[&[u8]]) -> T) -> T {
        let whole = scan(&[body]);
        for at in offsets(body.len()) {
            let (a, b) = body.split_at(at);
            assert_eq!(scan(&[a, b]), whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan(&bytes), whole, "one byte at a time");
        whole
    }

    fn bounded(s: &str) -> (String, bool) {
        let mut end = s.len().min(STRING_MAX);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        (s[..end].to_string(), s.len() > STRING_MAX)
    }

    fn expect_request(v: &Value) -> ScannedRequest {
        let model = v.get("model").and_then(Value::as_str).map(bounded);
        ScannedRequest {
            model_truncated: model.as_ref().is_some_and(|m| m.1),
            model: model.map(|m| m.0),
            stream: v.get("stream").and_then(Value::as_bool),
            include_usage: v
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool),
            max_tokens: v.get("max_tokens").and_then(Value::as_i64),
            max_completion_tokens: v.get("max_completion_tokens").and_then(Value::as_i64),
            temperature: v.get("temperature").and_then(Value::as_f64),
            top_p: v.get("top_p").and_then(Value::as_f64),
            n: v.get("n").and_then(Value::as_i64),
        }
    }

    fn non_empty(v: Option<&Value>) -> bool {
        match v {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        }
    }

    const OUTPUT_POINTERS: [&str; 9] = [
        "/message/content",
        "/message/reasoning_content",
        "/message/reasoning",
        "/message/tool_calls",
        "/text",
        "/delta/content",
        "/delta/reasoning_content",
        "/delta/reasoning",
        "/delta/tool_calls",
    ];

    fn expect_response(v: &Value) -> ResponseFields {
        let choices = v
            .get("choices")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| bounded(s).0);
        ResponseFields {
            id: text(v.get("id")),
            model: text(v.get("model")),
            finish_reasons: choices
                .iter()
                .filter_map(|c| text(c.get("finish_reason")))
                .collect(),
            choices_with_output: choices
                .iter()
                .filter(|c| OUTPUT_POINTERS.iter().any(|p| non_empty(c.pointer(p))))
                .count(),
            usage: v.get("usage").filter(|u| u.is_object()).map(|u| Usage {
                prompt_tokens: u.get("prompt_tokens").and_then(Value::as_i64),
                completion_tokens: u.get("completion_tokens").and_then(Value::as_i64),
                cached_tokens: u
                    .pointer("/prompt_tokens_details/cached_tokens")
                    .and_then(Value::as_i64),
            }),
            error_type: v.get("error").filter(|e| !e.is_null()).map(|e| {
                match (e.get("type").and_then(Value::as_str), e.get("code")) {
                    (Some(t), _) if !t.is_empty() => bounded(t).0,
                    (_, Some(Value::String(s))) => bounded(s).0,
                    (_, Some(Value::Number(n))) => n.to_string(),
                    _ => "error".to_string(),
                }
            }),
        }
    }

    fn value(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("fixture is valid JSON")
    }

    // ---- fixtures ------------------------------------------------------------------------

    const CHAT_REQUEST: &str = r#"{"messages":[{"role":"system","content":"You are a helpful assistant. Answer in \"quotes\"\\ and é, 日本語, \ud83d\ude00."},{"role":"user","content":"Say hi\nto {\"model\": \"not-this\"} and [1,2,3]"}],"model":"Qwen/Qwen2.5-0.5B-Instruct","max_completion_tokens":64,"max_tokens":10,"stream":true,"stream_options":{"include_usage":true},"temperature":0.7,"top_p":0.95,"n":1}"#;
    const COMPLETIONS_REQUEST: &str = r#"{
  "model": "meta-llama/Llama-3.1-8B-Instruct",
  "prompt": "The capital of France is",
  "max_tokens": 16,
  "temperature": 0,
  "stream": false,
  "n": 2,
  "logprobs": null
}"#;
    const EMBEDDINGS_REQUEST: &str = r#"{"input":["The food was delicious","and the waiter was kind"],"model":"intfloat/e5-small","encoding_format":"float"}"#;
    const EMBEDDINGS_TOKENS_REQUEST: &str = r#"{"input":[[101,2023,2003,1037,3231,102],[-1,0.5,1e3]],"model":"BAAI/bge-m3","dimensions":null}"#;
    const CHAT_RESPONSE: &str = r#"{"id":"chatcmpl-8f2c5d3e0b9a4c1e","object":"chat.completion","created":1733000000,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! \"Hi\" \\ é \ud83d\ude00","refusal":null,"annotations":null,"audio":null,"function_call":null,"tool_calls":[],"reasoning":null,"reasoning_content":null},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":null}],"service_tier":null,"system_fingerprint":null,"usage":{"prompt_tokens":31,"total_tokens":52,"completion_tokens":21,"prompt_tokens_details":{"cached_tokens":16}},"prompt_logprobs":null,"prompt_token_ids":null,"kv_transfer_params":null}"#;
    const COMPLETIONS_RESPONSE: &str = r#"{"id":"cmpl-3b1f","object":"text_completion","created":1733000001,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"text":" Paris. It is","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_logprobs":null},{"index":1,"text":"","logprobs":null,"finish_reason":"stop","stop_reason":null}],"service_tier":null,"system_fingerprint":null,"usage":{"prompt_tokens":6,"total_tokens":22,"completion_tokens":16,"prompt_tokens_details":null},"kv_transfer_params":null}"#;
    const ERROR_RESPONSE: &str = r#"{"error":{"message":"The model `gpt-x` does not exist.","type":"NotFoundError","param":"model","code":404}}"#;
    const ERROR_NO_TYPE: &str = r#"{"error":{"message":"bad","type":"","param":null,"code":400}}"#;
    const CHUNKS: [&str; 5] = [
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":"stop"}]}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" a","logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"error":{"message":"boom","type":"InternalServerError","param":null,"code":500}}"#,
    ];

    /// A ~200 KB prompt full of escapes and non-ASCII text.
    fn big_text() -> String {
        let piece = "Line with \"quotes\", a back\\slash, tab\t, é, 日本語, emoji 😀, control \u{1}, </script> ";
        piece.repeat(200_000 / piece.len() + 1)
    }

    fn big_chat_request() -> Vec<u8> {
        let messages = serde_json::json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": big_text(), "model": "nested-not-this"},
        ]);
        format!(
            r#"{{"messages":{messages},"model":"big-model","stream":false,"max_tokens":512,"temperature":1.0,"top_p":1,"n":1}}"#
        )
        .into_bytes()
    }

    fn big_chat_response() -> Vec<u8> {
        let content = serde_json::to_string(&big_text()).unwrap();
        format!(
            r#"{{"id":"chatcmpl-big","object":"chat.completion","created":1,"model":"big-model","choices":[{{"index":0,"message":{{"role":"assistant","content":{content},"tool_calls":[]}},"logprobs":null,"finish_reason":"length"}}],"usage":{{"prompt_tokens":9000,"total_tokens":59000,"completion_tokens":50000,"prompt_tokens_details":{{"cached_tokens":8192}}}},"prompt_logprobs":null,"prompt_token_ids":null,"kv_transfer_params":null}}"#
        )
        .into_bytes()
    }

    // ---- fixtures replayed ---------------------------------------------------------------

    #[test]
    fn request_fixtures_match_serde_at_every_split() {
        for body in [
            CHAT_REQUEST,
            COMPLETIONS_REQUEST,
            EMBEDDINGS_REQUEST,
            EMBEDDINGS_TOKENS_REQUEST,
        ] {
            let (got, r) = replay(body.as_bytes(), scan_request);
            assert_eq!(r, Ok(()), "{body}");
            assert_eq!(got, expect_request(&value(body.as_bytes())), "{body}");
            assert_eq!(
                Some(got.into_fields()),
                openai::parse_request(body.as_bytes()),
                "{body}"
            );
        }
        let (chat, _) = scan_request(&[CHAT_REQUEST.as_bytes()]);
        assert_eq!(chat.model.as_deref(), Some("Qwen/Qwen2.5-0.5B-Instruct"));
        assert_eq!(
            chat.into_fields().max_tokens,
            Some(64),
            "max_completion_tokens wins"
        );
    }

    #[test]
    fn response_fixtures_match_serde_at_every_split() {
        for body in [
            CHAT_RESPONSE,
            COMPLETIONS_RESPONSE,
            ERROR_RESPONSE,
            ERROR_NO_TYPE,
        ] {
            let (got, r) = replay(body.as_bytes(), scan_response);
            assert_eq!(r, Ok(()), "{body}");
            let fields = got.into_fields();
            assert_eq!(fields, expect_response(&value(body.as_bytes())), "{body}");
            assert_eq!(
                Some(fields),
                openai::parse_response(body.as_bytes()),
                "{body}"
            );
        }
        let (chat, _) = scan_response(&[CHAT_RESPONSE.as_bytes()]);
        let usage = Usage {
            prompt_tokens: Some(31),
            completion_tokens: Some(21),
            cached_tokens: Some(16),
        };
        assert_eq!(chat.usage, Some(usage));
        assert_eq!(
            scan_response(&[ERROR_RESPONSE.as_bytes()])
                .0
                .error_type()
                .as_deref(),
            Some("NotFoundError")
        );
        assert_eq!(
            scan_response(&[ERROR_NO_TYPE.as_bytes()])
                .0
                .error_type()
                .as_deref(),
            Some("400")
        );
    }

    #[test]
    fn stream_chunks_match_openai_chunk_parser() {
        for chunk in CHUNKS {
            let (got, r) = replay(chunk.as_bytes(), scan_response);
            assert_eq!(r, Ok(()));
            let c = openai::parse_stream_chunk(chunk.as_bytes()).unwrap();
            assert_eq!(got.choices_with_output() > 0, c.has_content, "{chunk}");
            assert_eq!(got.finish_reasons(), c.finish_reasons);
            assert_eq!(got.usage, c.usage);
            assert_eq!(got.error_type(), c.error_type);
            assert_eq!(
                (got.id.as_deref(), got.model.as_deref()),
                (c.id.as_deref(), c.model.as_deref())
            );
        }
    }

    #[test]
    fn model_after_a_200_kb_messages_array() {
        let body = big_chat_request();
        assert!(body.len() > 200_000);
        let (got, r) = replay(&body, scan_request);
        assert_eq!(r, Ok(()));
        assert_eq!(got.model.as_deref(), Some("big-model"));
        assert_eq!(got, expect_request(&value(&body)));
        assert_eq!(Some(got.into_fields()), openai::parse_request(&body));
    }

    #[test]
    fn usage_at_the_end_of_a_200_kb_response() {
        let body = big_chat_response();
        let (got, r) = replay(&body, scan_response);
        assert_eq!(r, Ok(()));
        let fields = got.into_fields();
        assert_eq!(
            fields.usage.as_ref().and_then(|u| u.completion_tokens),
            Some(50_000)
        );
        assert_eq!(fields, expect_response(&value(&body)));
        assert_eq!(Some(fields), openai::parse_response(&body));
    }

    // ---- adversarial ---------------------------------------------------------------------

    #[test]
    fn deep_nesting_gives_up_without_panic() {
        let mut body = br#"{"model":"m","x":"#.to_vec();
        body.extend(std::iter::repeat_n(b'[', 10_000));
        let (got, r) = scan_request(&[&body]);
        assert!(matches!(r, Err(ScanError::TooDeep { .. })), "{r:?}");
        assert_eq!(
            got.model.as_deref(),
            Some("m"),
            "fields before the error stay"
        );
        // The same limit as serde_json: 127 levels parse, 128 do not.
        for depth in [126, 127, 128] {
            let body = format!(
                "{{\"a\":{}{}}}",
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            );
            let ours = scan_request(&[body.as_bytes()]).1.is_ok();
            assert_eq!(
                ours,
                serde_json::from_str::<Value>(&body).is_ok(),
                "depth {depth}"
            );
            assert_eq!(ours, depth <= MAX_DEPTH);
        }
    }

    #[test]
    fn huge_and_odd_numbers() {
        let big = "9".repeat(1000);
        let body = format!(
            r#"{{"max_tokens":{big},"n":9223372036854775808,"temperature":1e400,"top_p":-0.5e-2,"x":[{big}.{big}e-{big}],"model":"m"}}"#
        );
        let (got, r) = replay(body.as_bytes(), scan_request);
        assert_eq!(r, Ok(()));
        assert_eq!((got.max_tokens, got.n, got.temperature), (None, None, None));
        assert_eq!(got.top_p, Some(-0.005));
        assert_eq!(got.model.as_deref(), Some("m"));
        assert_eq!(
            scan_request(&[br#"{"n":-9223372036854775808}"#]).0.n,
            Some(i64::MIN)
        );
        assert_eq!(
            scan_request(&[br#"{"n":2.0}"#]).0.n,
            None,
            "integers only, like serde_json"
        );
        for n in ["-0", "0", "-1", "18446744073709551615"] {
            let body = format!(r#"{{"n":{n}}}"#);
            assert_eq!(
                scan_request(&[body.as_bytes()]).0,
                expect_request(&value(body.as_bytes())),
                "{n}"
            );
        }
    }

    #[test]
    fn invalid_utf8_inside_strings() {
        let mut body = br#"{"messages":[{"content":""#.to_vec();
        body.extend_from_slice(&[0xff, 0xfe, 0xc3, b'x', 0xe6, 0x97]);
        body.extend_from_slice(br#""}],"model":"a"#);
        body.extend_from_slice(&[0xff]);
        body.extend_from_slice(br#"b","stream":true}"#);
        let (got, r) = replay(&body, scan_request);
        assert_eq!(r, Ok(()));
        assert_eq!(got.model.as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(got.stream, Some(true));
    }

    #[test]
    fn truncated_bodies_keep_what_was_complete() {
        let body = CHAT_REQUEST.as_bytes();
        let model_end = CHAT_REQUEST.find("Instruct\"").unwrap() + "Instruct\"".len();
        for at in 0..body.len() {
            let (got, r) = scan_request(&[&body[..at]]);
            assert_eq!(r, Err(ScanError::Truncated), "at {at}");
            assert_eq!(got.model.is_some(), at >= model_end, "at {at}");
        }
        let (_, r) = scan_response(&[&CHAT_RESPONSE.as_bytes()[..CHAT_RESPONSE.len() - 1]]);
        assert_eq!(r, Err(ScanError::Truncated));
    }

    #[test]
    fn trailing_bytes_and_non_objects() {
        assert_eq!(scan_request(&[b"{} \r\n\t"]).1, Ok(()));
        assert_eq!(
            scan_request(&[b"{}", b" x"]).1,
            Err(ScanError::TrailingData { offset: 3 })
        );
        assert_eq!(
            scan_request(&[b"{}{}"]).1,
            Err(ScanError::TrailingData { offset: 2 })
        );
        for body in [&b"[1]"[..], b"\"x\"", b"1", b"null", b"\xef\xbb\xbf{}"] {
            assert_eq!(scan_request(&[body]).1, Err(ScanError::NotObject));
        }
        let (got, r) = scan_request(&[br#"{"model":"m"} garbage"#]);
        assert!(r.is_err());
        assert_eq!(got.model.as_deref(), Some("m"));
    }

    #[test]
    fn syntax_errors_agree_with_serde() {
        let bad: &[&str] = &[
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":1e+}"#,
            r#"{"a":.5}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul1}"#,
            r#"{"a" 1}"#,
            r#"{,}"#,
            r#"{"a":1,}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":tr ue}"#,
            r#"{"a":-1 .5}"#,
            r#"{"a":{]}"#,
            r#"{"a":[}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12g4"}"#,
            r#"{a:1}"#,
            r#"{"a":1 "b":2}"#,
            "{\"a\":1}}",
        ];
        for body in bad {
            assert!(serde_json::from_str::<Value>(body).is_err(), "{body}");
            assert!(replay(body.as_bytes(), scan_request).1.is_err(), "{body}");
        }
        let good: &[&str] = &[
            r#"{"a":-0.0e+5,"b":[[],{}],"c":"\/\b\f\n\r\t\u00e9"}"#,
            " {\n} ",
            r#"{"":0}"#,
        ];
        for body in good {
            assert!(serde_json::from_str::<Value>(body).is_ok(), "{body}");
            assert_eq!(replay(body.as_bytes(), scan_request).1, Ok(()), "{body}");
        }
    }

    #[test]
    fn keys_at_the_wrong_depth_are_not_taken() {
        let body = br#"{"messages":[{"role":"user","model":"inner","stream":true,"content":"x"}],"metadata":{"model":"meta","n":3},"stream_options":{"stream":true,"model":"so"},"extra":[{"usage":{"prompt_tokens":1}}]}"#;
        let (got, r) = replay(body, scan_request);
        assert_eq!(r, Ok(()));
        assert_eq!(got, ScannedRequest::default());
        let body = br#"{"choices":[{"usage":{"prompt_tokens":1},"id":"x","message":{"message":{"content":"y"}}}],"data":{"id":"z","choices":[{"text":"t"}]},"usage":{"completion_tokens":{"prompt_tokens":5}}}"#;
        let (got, _) = replay(body, scan_response);
        let fields = got.into_fields();
        assert_eq!(fields, expect_response(&value(body)));
        assert_eq!((fields.id, fields.choices_with_output), (None, 0));
        assert_eq!(fields.usage, Some(Usage::default()));
    }

    #[test]
    fn duplicate_keys_last_wins_like_serde_value() {
        let bodies: &[&str] = &[
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":"a","model":5}"#,
            r#"{"model":"a","model":{"x":"y"}}"#,
            r#"{"stream_options":{"include_usage":true},"stream_options":null}"#,
            r#"{"stream_options":{"include_usage":true,"include_usage":false}}"#,
            r#"{"max_tokens":3,"max_tokens":null,"n":1,"n":2}"#,
        ];
        for body in bodies {
            assert_eq!(
                replay(body.as_bytes(), scan_request).0,
                expect_request(&value(body.as_bytes())),
                "{body}"
            );
        }
        let bodies: &[&str] = &[
            r#"{"choices":[{"text":"a","finish_reason":"stop"}],"choices":[{"text":"","finish_reason":"length"},{"text":"b"}]}"#,
            r#"{"choices":[{"text":"a","text":"","message":{"content":"x"},"message":{"content":null}}]}"#,
            r#"{"usage":{"prompt_tokens":1},"usage":null}"#,
            r#"{"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":1},"prompt_tokens_details":{}}}"#,
            r#"{"error":{"type":"A"},"error":{"code":"c"}}"#,
            r#"{"error":{"type":"A"},"error":null}"#,
            r#"{"error":"plain text"}"#,
            r#"{"choices":[{"finish_reason":"stop","finish_reason":null}]}"#,
        ];
        for body in bodies {
            let got = replay(body.as_bytes(), scan_response).0.into_fields();
            assert_eq!(got, expect_response(&value(body.as_bytes())), "{body}");
        }
    }

    #[test]
    fn canary_in_content_is_never_captured() {
        const CANARY: &str = "CANARY-7f3a9c";
        let request = format!(
            r#"{{"messages":[{{"role":"user","content":"{CANARY} {CANARY}","{CANARY}":"{CANARY}"}}],"model":"m","prompt":"{CANARY}","tools":[{{"function":{{"name":"{CANARY}"}}}}],"stream_options":{{"{CANARY}":1}}}}"#
        );
        let response = format!(
            r#"{{"id":"c","choices":[{{"message":{{"content":"{CANARY}","tool_calls":[{{"id":"{CANARY}"}}]}},"text":"{CANARY}","delta":{{"content":"{CANARY}"}}}}],"usage":{{"{CANARY}":"{CANARY}"}},"error":{{"message":"{CANARY}","type":"t"}}}}"#
        );
        for cut in [request.len() / 2, request.len()] {
            let mut s = RequestScan::new();
            s.feed(&request.as_bytes()[..cut]);
            let printed = format!("{s:?} {:?} {:?}", s.fields(), s.clone().into_fields());
            assert!(!printed.contains(CANARY), "{printed}");
        }
        for cut in [response.len() / 2, response.len()] {
            let mut s = ResponseScan::new();
            s.feed(&response.as_bytes()[..cut]);
            let printed = format!("{s:?} {:?} {:?}", s.fields(), s.clone().into_fields());
            assert!(!printed.contains(CANARY), "{printed}");
        }
        // Events carry no content either.
        let mut events = String::new();
        let mut scanner = Scanner::new(&RESPONSE);
        scanner.feed(response.as_bytes(), &mut |e| {
            events.push_str(&format!("{e:?}\n"))
        });
        assert!(!events.contains(CANARY), "{events}");
        assert!(events.contains("NonEmpty"), "{events}");
    }

    #[test]
    fn long_strings_are_bounded_and_flagged() {
        for model in [
            "x".repeat(300),
            format!("{}é tail", "y".repeat(255)),
            "z".repeat(256),
        ] {
            let body = serde_json::json!({"model": model}).to_string();
            let (got, _) = replay(body.as_bytes(), scan_request);
            assert_eq!(got, expect_request(&value(body.as_bytes())));
            assert_eq!(got.model_truncated, model.len() > STRING_MAX);
            assert_eq!(
                Some(got.into_fields()),
                openai::parse_request(body.as_bytes())
            );
        }
    }

    #[test]
    fn escapes_in_keys_and_values() {
        let body =
            br#"{"mod\u0065l":"\ud83d\ude00 \u00e9\"\\\/","str\u0065am":true,"max\u005ftokens":5}"#;
        let (got, r) = replay(body, scan_request);
        assert_eq!(r, Ok(()));
        assert_eq!(got, expect_request(&value(body)));
        assert_eq!(got.model.as_deref(), Some("😀 é\"\\/"));
        // Lone surrogates: replaced, not an error.
        let (got, r) = replay(br#"{"model":"a\ud83db\ude00c\ud83d\u0041"}"#, scan_request);
        assert_eq!(r, Ok(()));
        assert_eq!(got.model.as_deref(), Some("a\u{FFFD}b\u{FFFD}c\u{FFFD}A"));
    }

    #[test]
    fn gap_stops_the_scan_and_keeps_fields() {
        let mut s = RequestScan::new();
        s.feed(br#"{"model":"m","messages":[{"content":"abc"#);
        s.gap();
        s.feed(br#"","stream":true}"#);
        assert_eq!(s.finish(), Err(ScanError::Gap));
        assert_eq!(s.fields().model.as_deref(), Some("m"));
        assert_eq!(s.fields().stream, None);
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(matches!(
            Patterns::new(&[("a..b", Mode::Capture)]),
            Err(PatternError::EmptyKey(_))
        ));
        assert!(matches!(
            Patterns::new(&[("[*]", Mode::Capture)]),
            Err(PatternError::EmptyKey(_))
        ));
        assert!(matches!(
            Patterns::new(&[("a", Mode::Capture), ("a", Mode::Mark)]),
            Err(PatternError::Duplicate(_))
        ));
        assert!(matches!(
            Patterns::new(&[("a.b.c.d.e.f.g.h.i", Mode::Capture)]),
            Err(PatternError::TooDeep(_))
        ));
        assert!(matches!(
            Patterns::new(&[(&"k".repeat(33), Mode::Capture)]),
            Err(PatternError::LongKey(_))
        ));
        assert!(
            Patterns::new(REQUEST_PATTERNS).is_ok() && Patterns::new(RESPONSE_PATTERNS).is_ok()
        );
    }

    #[test]
    fn generic_scanner_reports_array_elements_and_nested_arrays() {
        let p = Patterns::new(&[("a[*][*]", Mode::Capture), ("b", Mode::NonEmpty)]).unwrap();
        let mut seen = Vec::new();
        let mut s = Scanner::new(&p);
        s.feed(br#"{"a":[[1,"x"],2,[true]],"b":[],"b":[0]}"#, &mut |e| {
            seen.push(format!("{e:?}"))
        });
        assert_eq!(s.finish(), Ok(()));
        let scalars: Vec<_> = seen
            .iter()
            .filter(|e| !e.starts_with("Start"))
            .cloned()
            .collect();
        assert_eq!(
            scalars,
            [
                "Scalar { field: 0, value: Number(Number(1)) }",
                "Scalar { field: 0, value: Str { text: \"x\", truncated: false } }",
                "Scalar { field: 0, value: Bool(true) }",
                "NonEmpty { field: 1, non_empty: false }",
                "NonEmpty { field: 1, non_empty: true }",
            ]
        );
    }

    // ---- property tests ------------------------------------------------------------------

    const KEYS: &[&str] = &[
        "model",
        "stream",
        "stream_options",
        "include_usage",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "messages",
        "content",
        "id",
        "choices",
        "finish_reason",
        "message",
        "delta",
        "text",
        "tool_calls",
        "reasoning",
        "reasoning_content",
        "usage",
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "error",
        "type",
        "code",
    ];

    /// A string literal, plainly escaped by serde_json or with every UTF-16 unit as `\uXXXX`.
    fn literal(s: &str, escape_all: bool) -> String {
        if escape_all {
            let mut out = String::from("\"");
            for u in s.encode_utf16() {
                out.push_str(&format!("\\u{u:04x}"));
            }
            out + "\""
        } else {
            serde_json::to_string(s).unwrap()
        }
    }

    fn leaf() -> BoxedStrategy<String> {
        prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            (-1_000_000i32..1_000_000, 0i32..6)
                .prop_map(|(m, k)| serde_json::to_string(&(f64::from(m) / 10f64.powi(k))).unwrap()),
            (
                prop_oneof!["[a-z \"\\\\/]{0,8}", "\\PC{0,6}", ".{0,300}"],
                any::<bool>()
            )
                .prop_map(|(s, e)| literal(&s, e)),
        ]
        .boxed()
    }

    fn key(keys: &'static [&'static str]) -> BoxedStrategy<String> {
        prop_oneof![4 => prop::sample::select(keys).prop_map(String::from), 1 => "\\PC{0,5}"]
            .boxed()
    }

    fn object(
        keys: &'static [&'static str],
        value: BoxedStrategy<String>,
        max: usize,
    ) -> BoxedStrategy<String> {
        let sep = prop::sample::select(&[",", " , ", ",\n\t"][..]);
        (
            prop::collection::vec((key(keys), any::<bool>(), value), 0..max),
            sep,
        )
            .prop_map(|(kv, sep)| {
                let kv: Vec<String> = kv
                    .iter()
                    .map(|(k, e, v)| format!("{}:{v}", literal(k, *e)))
                    .collect();
                format!("{{{}}}", kv.join(sep))
            })
            .boxed()
    }

    fn any_json() -> BoxedStrategy<String> {
        leaf()
            .prop_recursive(4, 40, 5, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5)
                        .prop_map(|v| format!("[ {} ]", v.join(","))),
                    object(KEYS, inner, 5),
                ]
            })
            .boxed()
    }

    fn request_doc() -> BoxedStrategy<String> {
        let so = object(&["include_usage", "x"], leaf(), 3);
        object(
            KEYS,
            prop_oneof![3 => leaf(), 1 => any_json(), 1 => so].boxed(),
            10,
        )
    }

    fn response_doc() -> BoxedStrategy<String> {
        let inner = object(
            &[
                "content",
                "reasoning",
                "reasoning_content",
                "tool_calls",
                "role",
            ],
            prop_oneof![leaf(), any_json()].boxed(),
            4,
        );
        let choice = object(
            &["finish_reason", "message", "delta", "text", "index"],
            prop_oneof![2 => leaf(), 2 => inner, 1 => any_json()].boxed(),
            5,
        );
        let choices =
            prop::collection::vec(choice, 0..4).prop_map(|v| format!("[{}]", v.join(",")));
        let details = object(&["cached_tokens"], leaf(), 2);
        let usage = object(
            &[
                "prompt_tokens",
                "completion_tokens",
                "prompt_tokens_details",
                "total_tokens",
            ],
            prop_oneof![3 => leaf(), 1 => details].boxed(),
            5,
        );
        let error = object(&["type", "code", "message", "param"], leaf(), 4);
        object(
            KEYS,
            prop_oneof![2 => leaf(), 2 => choices, 1 => usage, 1 => error, 1 => any_json()].boxed(),
            8,
        )
    }

    fn cut<'a>(body: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
        at.sort_unstable();
        let mut feeds = Vec::new();
        let mut prev = 0;
        for a in at {
            feeds.push(&body[prev..a]);
            prev = a;
        }
        feeds.push(&body[prev..]);
        feeds
    }

    fn json_alphabet() -> impl Strategy<Value = Vec<u8>> {
        const PREFIXES: [&[u8]; 4] = [
            b"",
            b"{",
            br#"{"model":"#,
            br#"{"choices":[{"message":{"content":"#,
        ];
        let prefix = prop::sample::select(&PREFIXES[..]);
        let bytes = prop::collection::vec(
            prop::sample::select(&b"{}[]\":,\\u0123456789abcdefABCDEF-+.eEtrunlsx \n\xff\xc3"[..]),
            0..200,
        );
        (prefix, bytes).prop_map(|(p, b)| [p, &b[..]].concat())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_splits_agree(
            body in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), json_alphabet()],
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let feeds = cut(&body, &cuts);
            prop_assert_eq!(scan_request(&feeds), scan_request(&[&body]));
            prop_assert_eq!(scan_response(&feeds), scan_response(&[&body]));
        }

        #[test]
        fn request_fields_agree_with_serde(doc in request_doc(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            let v: Value = serde_json::from_str(&doc).unwrap();
            let (got, r) = scan_request(&cut(doc.as_bytes(), &cuts));
            prop_assert_eq!(r, Ok(()));
            prop_assert_eq!(got, expect_request(&v));
        }

        #[test]
        fn response_fields_agree_with_serde(doc in response_doc(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            let v: Value = serde_json::from_str(&doc).unwrap();
            let (got, r) = scan_response(&cut(doc.as_bytes(), &cuts));
            prop_assert_eq!(r, Ok(()));
            prop_assert_eq!(got.into_fields(), expect_response(&v));
        }
    }
}
