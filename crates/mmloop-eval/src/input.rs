//! Reading prediction and reference files as rows: a JSON array of objects or JSON Lines,
//! each row with the line it starts on, and tab- or comma-separated tables. Refuses empty
//! files and non-UTF-8 bytes with the line of the first bad byte. Only moves bytes: what
//! the fields mean is up to the readers in `predictions` and `references`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{EvalError, Place};

pub(crate) const NOT_UTF8_HINT: &str =
    "the file must be UTF-8; convert it first, e.g. `iconv -f GB18030 -t UTF-8 in.json > out.json`";

/// One row of a file: its fields and where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub at: Place,
    pub fields: Map<String, Value>,
}

/// A whole file as UTF-8 text, without a byte-order mark.
pub(crate) fn read_text(path: &Path) -> Result<(Arc<PathBuf>, String), EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let file = Arc::new(path.to_path_buf());
    let start = if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) { 3 } else { 0 };
    if bytes[start..].iter().all(u8::is_ascii_whitespace) {
        return Err(EvalError::input(
            Place::file(&file),
            "the file is empty",
            "check the path, or write the file again",
        ));
    }
    let mut bytes = bytes;
    bytes.drain(..start);
    match String::from_utf8(bytes) {
        Ok(s) => Ok((file, s)),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count() as u64;
            Err(EvalError::input(
                Place::new(&file, line),
                format!("not valid UTF-8 (byte offset {})", start + at),
                NOT_UTF8_HINT,
            ))
        }
    }
}

/// The first non-whitespace byte.
pub(crate) fn first_byte(text: &str) -> Option<u8> {
    text.bytes().find(|b| !b.is_ascii_whitespace())
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Rows of a JSON array of objects (`[{...}, ...]`) or of JSON Lines (`{...}\n{...}`).
pub(crate) fn json_rows(file: &Arc<PathBuf>, text: &str) -> Result<Vec<Row>, EvalError> {
    if first_byte(text) == Some(b'[') {
        let elems: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
            EvalError::input(
                Place::new(file, e.line() as u64),
                format!("malformed JSON at column {}: {}", e.column(), strip_position(&e)),
                if e.is_eof() { "the file ends early: was it truncated?" } else { "fix the JSON there" },
            )
        })?;
        let base = text.as_ptr() as usize;
        let (mut pos, mut line) = (0usize, 1u64);
        let mut rows = Vec::with_capacity(elems.len());
        for raw in elems {
            let off = raw.get().as_ptr() as usize - base;
            line += text.as_bytes()[pos..off].iter().filter(|&&b| b == b'\n').count() as u64;
            pos = off;
            let at = Place::new(file, line);
            match serde_json::from_str::<Value>(raw.get()) {
                Ok(Value::Object(fields)) => rows.push(Row { at, fields }),
                Ok(other) => {
                    return Err(EvalError::input(
                        at,
                        format!("expected an object, found {}", kind(&other)),
                        "each element of the array is one prediction or reference object",
                    ));
                }
                Err(e) => {
                    return Err(EvalError::input(
                        at,
                        format!("malformed JSON: {}", strip_position(&e)),
                        "fix the JSON there",
                    ));
                }
            }
        }
        return Ok(rows);
    }
    let mut rows = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() {
            continue;
        }
        let at = Place::new(file, i as u64 + 1);
        match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(fields)) => rows.push(Row { at, fields }),
            Ok(other) => {
                return Err(EvalError::input(
                    at,
                    format!("expected a JSON object, found {}", kind(&other)),
                    "JSON Lines files hold one object per line",
                ));
            }
            Err(e) => {
                let hint = if e.is_eof() {
                    "the line ends early: a truncated line, or one JSON value split over several lines (JSON Lines needs one record per line)".to_string()
                } else {
                    format!("fix the JSON near column {}", e.column())
                };
                return Err(EvalError::input(at, format!("malformed JSON: {}", strip_position(&e)), hint));
            }
        }
    }
    Ok(rows)
}

/// Rows of a table with a header line; `delimiter` is `\t` or `,`. Cells stay strings.
pub(crate) fn table_rows(file: &Arc<PathBuf>, text: &str, delimiter: u8) -> Result<Vec<Row>, EvalError> {
    let mut rdr = csv::ReaderBuilder::new().delimiter(delimiter).flexible(false).from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| {
            EvalError::input(Place::new(file, 1), format!("bad header: {e}"), "the first line names the columns")
        })?
        .clone();
    let mut rows = Vec::new();
    for row in rdr.records() {
        let row = row.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            EvalError::input(
                Place::new(file, line),
                format!("bad table row: {e}"),
                "every row needs as many fields as the header; quote fields that hold the delimiter",
            )
        })?;
        let line = row.position().map_or(0, |p| p.line());
        let mut fields = Map::new();
        for (h, v) in headers.iter().zip(row.iter()) {
            fields.insert(h.trim().to_string(), Value::from(v));
        }
        rows.push(Row { at: Place::new(file, line), fields });
    }
    Ok(rows)
}

/// An id field as text: strings as they are, integers without a fraction.
pub(crate) fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i.to_string())
            } else if let Some(u) = n.as_u64() {
                Some(u.to_string())
            } else {
                n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15).map(|f| (f as i64).to_string())
            }
        }
        _ => None,
    }
}

/// The first of `keys` present in `fields`.
pub(crate) fn first_key<'a>(fields: &Map<String, Value>, keys: &[&'a str]) -> Option<&'a str> {
    keys.iter().copied().find(|k| fields.contains_key(*k))
}
