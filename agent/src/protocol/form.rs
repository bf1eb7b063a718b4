//! The text fields of a `multipart/form-data` request body (an audio transcription's upload:
//! `model`, `stream`, `temperature` beside the audio file), read as the body streams past.
//!
//! Only parts without a `filename` whose name is a top-level request field of the OpenAI field
//! table are kept, each cut at [`VALUE_MAX`] bytes; file parts are skipped without being held,
//! so memory stays bounded (a few hundred bytes) whatever the upload's size. Written here because
//! the multipart crates (`multer`, `multipart`) pull a whole body from a stream and hand out every
//! part; this one is pushed syscall-sized pieces and must keep nothing of the audio.

use super::openai::fields::{Body, FieldId, Type, FIELDS};
use super::openai::{Value, Values};

/// The most bytes of one text field kept (longer values are cut and marked truncated).
pub const VALUE_MAX: usize = 256;
/// The most bytes of one part's headers read; a part with longer headers is skipped.
const HEADERS_MAX: usize = 1024;
/// RFC 2046: a boundary has 1 to 70 characters.
const BOUNDARY_MAX: usize = 70;

/// The boundary of a `multipart/form-data` content type (`None` for other types, or for a
/// boundary RFC 2046 does not allow). The value is taken as sent: boundaries are case-sensitive.
pub fn boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        (1..=BOUNDARY_MAX).contains(&v.len()).then_some(v)
    })
}

#[derive(Debug)]
enum State {
    /// In a part's body (or the preamble): looking for the next delimiter. `field`: the part is
    /// kept as that field's value.
    Body {
        field: Option<FieldId>,
        value: Vec<u8>,
        truncated: bool,
    },
    /// Just after a delimiter: `--` ends the body, a line end starts a part.
    AfterDelimiter,
    /// A part's headers, up to the blank line.
    Headers(Vec<u8>),
    /// The closing delimiter was seen, or the body was not a form after all.
    Done,
}

/// Reads a form's text fields from body pieces as they arrive.
#[derive(Debug)]
pub struct FormScan {
    /// `\r\n--` + the boundary.
    delimiter: Vec<u8>,
    state: State,
    /// Bytes not yet decided on (fewer than the delimiter): where one may begin.
    carry: Vec<u8>,
    values: Values,
}

impl FormScan {
    pub fn new(boundary: &str) -> FormScan {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        FormScan {
            delimiter,
            state: State::Body {
                field: None,
                value: Vec::new(),
                truncated: false,
            },
            // The first delimiter needs no line end before it: supply one.
            carry: b"\r\n".to_vec(),
            values: Values::new(Body::Request),
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        if !self.carry.is_empty() {
            // Decide on the carried bytes with just enough of the new ones.
            let take = data.len().min(self.delimiter.len() + HEADERS_MAX);
            let mut joined = std::mem::take(&mut self.carry);
            let carried = joined.len();
            joined.extend_from_slice(&data[..take]);
            let used = self.run(&joined);
            if used < carried {
                // Still undecided (a short piece): keep waiting.
                self.carry = joined[used..].to_vec();
                return;
            }
            // What the joined bytes left undecided is part of `data`: decided below.
            data = &data[used - carried..];
        }
        let used = self.run(data);
        self.carry = data[used..].to_vec();
    }

    /// Bytes were lost: the rest of the body cannot be framed.
    pub fn gap(&mut self) {
        self.state = State::Done;
        self.carry.clear();
    }

    /// The fields found (request body values).
    pub fn into_values(self) -> Values {
        self.values
    }

    /// Runs the machine over `data`; returns how many bytes it decided on (the rest, fewer than
    /// the delimiter plus a line end, must be seen again with more).
    fn run(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        loop {
            let rest = &data[at..];
            match &mut self.state {
                State::Done => return data.len(),
                State::Body {
                    field,
                    value,
                    truncated,
                } => match memchr::memmem::find(rest, &self.delimiter) {
                    Some(i) => {
                        keep(value, truncated, *field, &rest[..i]);
                        if let Some(id) = *field {
                            let v = std::mem::take(value);
                            self.values.set(id, parse(id, &v, *truncated));
                        }
                        at += i + self.delimiter.len();
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        let safe = rest.len().saturating_sub(self.delimiter.len() - 1);
                        keep(value, truncated, *field, &rest[..safe]);
                        return at + safe;
                    }
                },
                State::AfterDelimiter => {
                    if rest.len() < 2 {
                        return at;
                    }
                    if rest.starts_with(b"--") {
                        self.state = State::Done;
                        return data.len();
                    }
                    // Transport padding (spaces and tabs) may precede the line end.
                    match memchr::memmem::find(&rest[..rest.len().min(64)], b"\r\n") {
                        Some(i) if rest[..i].iter().all(|b| *b == b' ' || *b == b'\t') => {
                            at += i + 2;
                            self.state = State::Headers(Vec::new());
                        }
                        None if rest.len() < 64 => return at,
                        _ => {
                            self.state = State::Done;
                            return data.len();
                        }
                    }
                }
                State::Headers(buf) => {
                    let before = buf.len();
                    let room = HEADERS_MAX - before;
                    buf.extend_from_slice(&rest[..rest.len().min(room)]);
                    match memchr::memmem::find(buf, b"\r\n\r\n") {
                        Some(end) => {
                            let field = field_of(&buf[..end]);
                            at += end + 4 - before;
                            self.state = State::Body {
                                field,
                                value: Vec::new(),
                                truncated: false,
                            };
                        }
                        None if buf.len() >= HEADERS_MAX => {
                            // Headers too long to be a form's: skip to the next delimiter.
                            at += buf.len() - before;
                            self.state = State::Body {
                                field: None,
                                value: Vec::new(),
                                truncated: false,
                            };
                        }
                        None => {
                            // Keep the last bytes out of the buffer so that a terminator split
                            // across pieces is found again: all of `rest` is in `buf` already.
                            return data.len();
                        }
                    }
                }
            }
        }
    }
}

/// The field a part's headers name, if it is a text field the table reads at the top level of a
/// request body.
fn field_of(headers: &[u8]) -> Option<FieldId> {
    let text = std::str::from_utf8(headers).ok()?;
    let disposition = text.split("\r\n").find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-disposition")
            .then_some(v)
    })?;
    let mut params = disposition.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("form-data") {
        return None;
    }
    let mut name = None;
    for p in params {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let k = k.trim();
        if k.eq_ignore_ascii_case("filename") || k.eq_ignore_ascii_case("filename*") {
            return None; // a file: never kept
        }
        if k.eq_ignore_ascii_case("name") {
            let v = v.trim();
            name = Some(
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v),
            );
        }
    }
    let name = name?;
    FIELDS.iter().position(|f| {
        f.body == Body::Request
            && f.path == name
            && matches!(f.ty, Type::Str | Type::Bool | Type::I64 | Type::F64)
    })
}

/// Appends to a kept value, up to [`VALUE_MAX`].
fn keep(value: &mut Vec<u8>, truncated: &mut bool, field: Option<FieldId>, bytes: &[u8]) {
    if field.is_none() || bytes.is_empty() {
        return;
    }
    let room = VALUE_MAX - value.len();
    if bytes.len() > room {
        *truncated = true;
    }
    value.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// A form value as the field's type (a form sends every value as text).
fn parse(id: FieldId, raw: &[u8], truncated: bool) -> Value {
    let mut end = raw.len();
    while end > 0 && std::str::from_utf8(&raw[..end]).is_err() {
        end -= 1; // a cut in the middle of a character
    }
    let text = std::str::from_utf8(&raw[..end]).unwrap_or("");
    match FIELDS[id].ty {
        Type::Str => Value::Str {
            text: text.to_string(),
            truncated,
        },
        Type::Bool => match text.trim() {
            t if t.eq_ignore_ascii_case("true") || t == "1" => Value::Bool(true),
            t if t.eq_ignore_ascii_case("false") || t == "0" => Value::Bool(false),
            _ => Value::Absent,
        },
        Type::I64 => text.trim().parse().map_or(Value::Absent, Value::I64),
        Type::F64 => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map_or(Value::Absent, Value::F64),
        _ => Value::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::openai::id;

    const FORM: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nopenai/whisper-large-v3\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF CANARY-7f3a name=\"model\"\r\n\r\n--Xy\r\n\
--XyZ\r\ncontent-disposition: form-data; name=stream\r\n\r\ntrue\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"temperature\"\r\n\r\n0.2\r\n--XyZ--\r\n";

    fn scan(pieces: &[&[u8]]) -> Values {
        let mut s = FormScan::new("XyZ");
        for p in pieces {
            s.feed(p);
        }
        s.into_values()
    }

    fn check(v: &Values) {
        assert_eq!(v.get(id::MODEL).as_str(), Some("openai/whisper-large-v3"));
        assert_eq!(v.get(id::STREAM).as_bool(), Some(true));
        assert_eq!(v.get(id::TEMPERATURE).as_f64(), Some(0.2));
    }

    #[test]
    fn text_fields_are_read_and_the_file_is_not() {
        let v = scan(&[FORM]);
        check(&v);
        assert!(!format!("{v:?}").contains("CANARY"));
    }

    #[test]
    fn every_split_and_one_byte_at_a_time_give_the_same_fields() {
        for cut in 0..=FORM.len() {
            check(&scan(&[&FORM[..cut], &FORM[cut..]]));
        }
        let bytes: Vec<&[u8]> = FORM.chunks(1).collect();
        check(&scan(&bytes));
    }

    #[test]
    fn a_huge_file_part_is_not_held() {
        let mut s = FormScan::new("XyZ");
        s.feed(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n",
        );
        let chunk = vec![b'-'; 64 * 1024];
        for _ in 0..64 {
            s.feed(&chunk);
            assert!(s.carry.len() < s.delimiter.len());
            assert!(matches!(&s.state, State::Body { value, .. } if value.is_empty()));
        }
        s.feed(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--XyZ--");
        assert_eq!(s.into_values().get(id::MODEL).as_str(), Some("m"));
    }

    #[test]
    fn a_long_value_is_cut_and_marked() {
        let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'm', 10_000));
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        let v = scan(&[&body]);
        match v.get(id::MODEL) {
            Value::Str { text, truncated } => {
                assert_eq!(text.len(), VALUE_MAX);
                assert!(*truncated);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_and_gaps_end_quietly() {
        let v = scan(&[
            b"--XyZ\r\nno blank line ever",
            &[b'x'; 5000],
            b"\r\n--XyZ--",
        ]);
        assert_eq!(v.get(id::MODEL), &Value::Absent);
        let mut s = FormScan::new("XyZ");
        s.feed(&FORM[..60]);
        s.gap();
        s.feed(&FORM[60..]);
        assert_eq!(s.into_values().get(id::STREAM), &Value::Absent);
    }

    #[test]
    fn boundaries_are_taken_as_sent() {
        assert_eq!(
            boundary("multipart/form-data; boundary=----WebKitFormBoundaryAbC"),
            Some("----WebKitFormBoundaryAbC")
        );
        assert_eq!(
            boundary("Multipart/Form-Data; charset=utf-8; boundary=\"a b\""),
            Some("a b")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))),
            None
        );
    }
}
