//! JSON plumbing shared by the readers: whole-file and line-by-line reading, array
//! elements with their line numbers, and field access with errors that say what was
//! expected.

use std::io::{BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmloop_core::Location;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{FormatError, RecordError};

pub(crate) const NOT_UTF8_HINT: &str =
    "the file must be UTF-8; convert it first, e.g. `iconv -f GB18030 -t UTF-8 in.json > out.json`";

/// Reads a whole file, refusing empty ones and a non-UTF-8 encoding.
pub(crate) fn read_all(path: &Path) -> Result<Vec<u8>, FormatError> {
    let mut buf = Vec::new();
    std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf)).map_err(|e| FormatError::io(path, e))?;
    let file = Arc::new(path.to_path_buf());
    let start = strip_bom(&buf);
    if buf[start..].iter().all(u8::is_ascii_whitespace) {
        return Err(RecordError::new(Location::file(&file), "the file is empty")
            .hint("export the dataset again, or check the path")
            .into());
    }
    if let Err(e) = std::str::from_utf8(&buf[start..]) {
        let at = start + e.valid_up_to();
        let line = 1 + buf[..at].iter().filter(|&&b| b == b'\n').count() as u64;
        return Err(RecordError::new(Location::line(&file, line), format!("not valid UTF-8 (byte offset {at})"))
            .hint(NOT_UTF8_HINT)
            .into());
    }
    if start > 0 {
        buf.drain(..start);
    }
    Ok(buf)
}

fn strip_bom(buf: &[u8]) -> usize {
    if buf.starts_with(&[0xEF, 0xBB, 0xBF]) { 3 } else { 0 }
}

/// Calls `f` with each non-blank line of a JSON Lines file, its 1-based line number, as
/// text; lines that are not UTF-8 become record errors. Streams: memory does not grow
/// with the file.
pub(crate) fn for_each_line(
    path: &Path,
    mut f: impl FnMut(Location, Result<&str, RecordError>) -> ControlFlow<()>,
) -> Result<(), FormatError> {
    let file = Arc::new(path.to_path_buf());
    let reader = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut buf = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    let mut seen_any = false;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| FormatError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let start = if line_no == 1 { strip_bom(&buf) } else { 0 };
        let bytes = trim_ascii(&buf[start..]);
        if bytes.is_empty() {
            continue;
        }
        seen_any = true;
        let loc = Location::line(&file, line_no);
        let text = std::str::from_utf8(bytes).map_err(|e| {
            RecordError::new(loc.clone(), format!("not valid UTF-8 (column {})", e.valid_up_to() + 1))
                .hint(NOT_UTF8_HINT)
        });
        if f(loc, text).is_break() {
            break;
        }
    }
    if !seen_any {
        return Err(RecordError::new(Location::file(&file), "the file is empty")
            .hint("export the dataset again, or check the path")
            .into());
    }
    Ok(())
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// Parses one JSON Lines record, which must be an object.
pub(crate) fn parse_object(loc: &Location, text: &str) -> Result<Map<String, Value>, RecordError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(RecordError::new(loc.clone(), format!("expected a JSON object, found {}", kind(&other)))),
        Err(e) => {
            Err(RecordError::new(loc.clone(), format!("malformed JSON: {}", strip_position(&e)))
                .hint(malformed_hint(&e)))
        }
    }
}

fn malformed_hint(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => {
            "the record ends early: a truncated line or a JSON value split over several lines (JSON Lines needs one record per line)".into()
        }
        _ => format!("fix the JSON near column {}", e.column()),
    }
}

/// serde_json appends "at line L column C"; our locations already say where.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The error for a whole JSON document that does not parse.
pub(crate) fn syntax_error(file: &Arc<PathBuf>, e: &serde_json::Error) -> RecordError {
    RecordError::new(
        Location { file: file.clone(), line: Some(e.line() as u64), index: None },
        format!("malformed JSON at column {}: {}", e.column(), strip_position(e)),
    )
    .hint(match e.classify() {
        serde_json::error::Category::Eof => "the file ends early: was it truncated?".to_string(),
        _ => "fix the JSON there; `python -m json.tool FILE` shows the same position".to_string(),
    })
}

/// The error for a JSON document that does not parse, or parses to the wrong shape
/// (an array where `expected` is an object, a list that is a string...).
pub(crate) fn document_error(file: &Arc<PathBuf>, buf: &[u8], e: &serde_json::Error, expected: &str) -> RecordError {
    if e.classify() != serde_json::error::Category::Data {
        return syntax_error(file, e);
    }
    let start = strip_bom(buf);
    if first_byte(&buf[start..]) == Some(b'[') {
        return RecordError::new(Location::file(file), format!("the file is a JSON array, expected {expected}")).hint(
            "an array of {question_id, answer} or {image_id, caption} is a results file: score it with `mmloop eval --predictions`; otherwise leave out --format to detect the format",
        );
    }
    RecordError::new(
        Location { file: file.clone(), line: Some(e.line() as u64), index: None },
        format!("unexpected JSON at column {}: {}", e.column(), strip_position(e)),
    )
    .hint(format!("expected {expected}; is this the right --format?"))
}

/// Tracks line numbers of positions within a buffer, moving forward only.
pub(crate) struct LineCounter<'a> {
    buf: &'a [u8],
    pos: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        LineCounter { buf, pos: 0, line: 1 }
    }

    /// The 1-based line of `raw`, a slice borrowed from the buffer at or after the last
    /// position asked for.
    pub(crate) fn line_of(&mut self, raw: &str) -> u64 {
        let off = (raw.as_ptr() as usize).saturating_sub(self.buf.as_ptr() as usize);
        let off = off.min(self.buf.len());
        if off >= self.pos {
            self.line += self.buf[self.pos..off].iter().filter(|&&b| b == b'\n').count() as u64;
            self.pos = off;
        }
        self.line
    }
}

/// Calls `f` with each element of the JSON array held in `buf`, borrowed raw, without
/// building the whole array. Elements are raw so that one bad element is a record
/// error while the rest still parse.
pub(crate) fn for_each_element<'a>(
    file: &Arc<PathBuf>,
    buf: &'a [u8],
    f: &mut dyn FnMut(&'a RawValue) -> ControlFlow<()>,
) -> Result<(), RecordError> {
    struct Seed<'f, 'a> {
        f: &'f mut dyn FnMut(&'a RawValue) -> ControlFlow<()>,
        stopped: &'f mut bool,
    }
    impl<'de: 'a, 'a> DeserializeSeed<'de> for Seed<'_, 'a> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de: 'a, 'a> Visitor<'de> for Seed<'_, 'a> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                if (self.f)(raw).is_break() {
                    *self.stopped = true;
                    return Err(de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let mut stopped = false;
    let mut de = serde_json::Deserializer::from_slice(buf);
    let res = Seed { f, stopped: &mut stopped }.deserialize(&mut de).and_then(|()| de.end());
    match res {
        Ok(()) => Ok(()),
        Err(_) if stopped => Ok(()),
        Err(e) => Err(syntax_error(file, &e)),
    }
}

/// The first non-whitespace byte of a buffer.
pub(crate) fn first_byte(buf: &[u8]) -> Option<u8> {
    buf.iter().copied().find(|b| !b.is_ascii_whitespace())
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field access that turns a wrong schema into a record error naming the field.
pub(crate) struct Fields<'l> {
    pub loc: &'l Location,
    pub map: Map<String, Value>,
}

impl<'l> Fields<'l> {
    pub(crate) fn new(loc: &'l Location, map: Map<String, Value>) -> Self {
        Fields { loc, map }
    }

    pub(crate) fn err(&self, msg: impl Into<String>) -> RecordError {
        RecordError::new(self.loc.clone(), msg)
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Removes `key`, which must be a string if present.
    pub(crate) fn opt_str(&mut self, key: &str) -> Result<Option<String>, RecordError> {
        match self.map.shift_remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(format!("field `{key}` must be a string, found {}", kind(&other)))),
        }
    }

    pub(crate) fn str(&mut self, key: &str) -> Result<String, RecordError> {
        self.opt_str(key)?.ok_or_else(|| self.err(format!("missing field `{key}`")))
    }

    /// Removes the first of `keys` present, which must be a string.
    pub(crate) fn first_str(&mut self, keys: &[&str]) -> Result<Option<String>, RecordError> {
        for k in keys {
            if self.map.contains_key(*k) {
                return self.opt_str(k);
            }
        }
        Ok(None)
    }

    /// Removes an id (string or integer) and returns it as text.
    pub(crate) fn opt_id(&mut self, key: &str) -> Result<Option<String>, RecordError> {
        match self.map.shift_remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => id_text(&v)
                .ok_or_else(|| self.err(format!("field `{key}` must be a string or an integer, found {}", kind(&v))))
                .map(Some),
        }
    }

    pub(crate) fn opt_array(&mut self, key: &str) -> Result<Option<Vec<Value>>, RecordError> {
        match self.map.shift_remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(self.err(format!("field `{key}` must be an array, found {}", kind(&other)))),
        }
    }

    pub(crate) fn take(&mut self, key: &str) -> Option<Value> {
        self.map.shift_remove(key)
    }

    /// What is left: the fields a reader has no place for, kept for round trips.
    pub(crate) fn rest(self) -> Map<String, Value> {
        self.map
    }
}

/// An id as text: strings as they are, integers in decimal.
pub(crate) fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Writes an id as a string, for files that HF `datasets` loads (LLaVA, ShareGPT,
/// ms-swift): a column of ints and strings mixed fails there (`ArrowTypeError ... column
/// id`), and a record no longer knows which its id was.
pub(crate) fn id_string(id: &str) -> Value {
    Value::from(id)
}

/// Writes an id back the way it came: integers stay integers.
pub(crate) fn id_value(id: &str) -> Value {
    match id.parse::<i64>() {
        Ok(n) if n.to_string() == id => Value::from(n),
        _ => Value::from(id),
    }
}

/// Calls `f` with each object of a JSON Lines file or of a JSON array file (chosen by the
/// first byte), with its location; record errors go to the sink, file errors are
/// returned.
pub(crate) fn each_object(
    path: &Path,
    sink: &mut crate::Sink,
    mut f: impl FnMut(&Location, Map<String, Value>) -> Result<Vec<mmloop_core::Record>, RecordError>,
) -> Result<(), FormatError> {
    let mut emit = |loc: &Location, res: Result<Map<String, Value>, RecordError>| -> ControlFlow<()> {
        match res.and_then(|m| f(loc, m)) {
            Ok(records) => {
                for r in records {
                    sink(Ok(r))?;
                }
                ControlFlow::Continue(())
            }
            Err(e) => sink(Err(e)),
        }
    };
    if is_json_array(path)? {
        let buf = read_all(path)?;
        let file = Arc::new(path.to_path_buf());
        let mut lines = LineCounter::new(&buf);
        let mut index = 0u64;
        for_each_element(&file, &buf, &mut |raw| {
            let loc = Location::at(&file, lines.line_of(raw.get()), index);
            index += 1;
            emit(&loc, parse_object(&loc, raw.get()))
        })?;
        Ok(())
    } else {
        for_each_line(path, |loc, text| emit(&loc, text.and_then(|t| parse_object(&loc, t))))
    }
}

/// Whether a file holds one JSON array (rather than JSON Lines), from its first byte.
pub(crate) fn is_json_array(path: &Path) -> Result<bool, FormatError> {
    let mut head = [0u8; 4096];
    let mut f = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let n = f.read(&mut head).map_err(|e| FormatError::io(path, e))?;
    let start = strip_bom(&head[..n]);
    Ok(first_byte(&head[start..n]) == Some(b'['))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_elements_carry_their_lines() {
        let buf = b"[\n {\"a\": 1},\n {\"a\": 2},\n\n {\"a\": 3}\n]";
        let file = Arc::new(PathBuf::from("x.json"));
        let mut lines = LineCounter::new(buf);
        let mut seen = Vec::new();
        for_each_element(&file, buf, &mut |raw| {
            seen.push((lines.line_of(raw.get()), raw.get().to_string()));
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![2, 3, 5]);
    }

    #[test]
    fn truncated_array_names_the_line() {
        let buf = b"[\n {\"a\": 1},\n {\"a\": ";
        let file = Arc::new(PathBuf::from("x.json"));
        let err = for_each_element(&file, buf, &mut |_| ControlFlow::Continue(())).unwrap_err();
        assert_eq!(err.location.line, Some(3));
        assert!(err.hint.unwrap().contains("truncated"));
    }

    #[test]
    fn ids_keep_their_type() {
        assert_eq!(id_value("42"), Value::from(42));
        assert_eq!(id_value("042"), Value::from("042"));
        assert_eq!(id_value("q1"), Value::from("q1"));
    }
}
