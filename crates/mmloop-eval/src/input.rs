//! Prediction and reference files as rows, read by `mmloop-formats` (JSON arrays, JSON Lines
//! and tables, with the same encoding and line checks as the dataset readers), plus the
//! field helpers the readers in `predictions` and `references` share. Only moves bytes: what
//! the fields mean is up to those readers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmloop_formats::rows;
use serde_json::{Map, Value};

use crate::error::{EvalError, Place};

/// The fields that name a question or image, in the order they are looked for.
pub(crate) const ID_KEYS: &[&str] = &["question_id", "image_id", "id", "index", "qid", "sample_id"];

/// One row of a file: its fields and where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub at: Place,
    pub fields: Map<String, Value>,
}

impl From<rows::Row> for Row {
    fn from(r: rows::Row) -> Self {
        Row { at: Place { file: r.loc.file, line: r.loc.line }, fields: r.fields }
    }
}

/// A whole file as UTF-8 text, without a byte-order mark.
pub(crate) fn read_text(path: &Path) -> Result<(Arc<PathBuf>, String), EvalError> {
    let text = rows::read_text(path)?;
    Ok((Arc::new(path.to_path_buf()), text))
}

/// The first non-whitespace byte.
pub(crate) fn first_byte(text: &str) -> Option<u8> {
    text.bytes().find(|b| !b.is_ascii_whitespace())
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
    Ok(rows::json_rows(file, text)?.into_iter().map(Row::from).collect())
}

/// Rows of a table with a header line; `delimiter` is `\t` or `,`. Cells stay strings.
pub(crate) fn table_rows(file: &Arc<PathBuf>, text: &str, delimiter: u8) -> Result<Vec<Row>, EvalError> {
    Ok(rows::table_rows(file, text, delimiter)?.into_iter().map(Row::from).collect())
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
