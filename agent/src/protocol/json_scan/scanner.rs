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
//! Generic: which paths to select is the caller's list of [`Patterns`]; this module knows no API.

use std::borrow::Cow;

use memchr::memchr2;

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
