//! Files as rows, for readers that are not dataset formats (evaluation's predictions and
//! reference tables): a JSON array of objects or JSON Lines, each object with where it starts,
//! and tab- or comma-separated tables whose cells stay strings. The same checks as the
//! dataset readers: empty files, byte-order marks, non-UTF-8 bytes with the line of the first
//! bad byte, rows with the wrong number of cells, malformed JSON with its line.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use mmloop_core::Location;
use serde_json::{Map, Value};

use crate::error::{FormatError, RecordError};
use crate::{json, table};

/// One object or table row and where it starts.
#[derive(Clone, Debug)]
pub struct Row {
    pub loc: Location,
    pub fields: Map<String, Value>,
}

/// A whole file as UTF-8 text without a byte-order mark; an empty file is an error.
pub fn read_text(path: &Path) -> Result<String, FormatError> {
    let buf = json::read_all(path)?;
    Ok(String::from_utf8(buf).expect("read_all checks the encoding"))
}

/// The objects of a JSON array (`[{...}, ...]`) or of JSON Lines (`{...}\n{...}`), chosen by
/// the first byte of `text` (the contents of `path`). The first bad row is the error.
pub fn json_rows(path: &Path, text: &str) -> Result<Vec<Row>, FormatError> {
    let file = Arc::new(path.to_path_buf());
    let mut rows = Vec::new();
    let mut failure = None;
    let mut push = |loc: Location, fields: Result<Map<String, Value>, RecordError>| match fields {
        Ok(fields) => {
            rows.push(Row { loc, fields });
            ControlFlow::Continue(())
        }
        Err(e) => {
            failure = Some(e);
            ControlFlow::Break(())
        }
    };
    if json::first_byte(text.as_bytes()) == Some(b'[') {
        let mut lines = json::LineCounter::new(text.as_bytes());
        let mut index = 0u64;
        json::for_each_element(&file, text.as_bytes(), &mut |raw| {
            let loc = Location::at(&file, lines.line_of(raw.get()), index);
            index += 1;
            let fields = json::parse_object(&loc, raw.get());
            push(loc, fields)
        })?;
    } else {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let loc = Location::line(&file, i as u64 + 1);
            let fields = json::parse_object(&loc, line);
            if push(loc, fields).is_break() {
                break;
            }
        }
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(rows),
    }
}

/// The rows of a table with a header line; `delimiter` is `\t` or `,`. Cells stay strings.
pub fn table_rows(path: &Path, text: &str, delimiter: u8) -> Result<Vec<Row>, FormatError> {
    let file = Arc::new(path.to_path_buf());
    let mut rows = Vec::new();
    let mut failure = None;
    table::for_each_table_row(&file, text.as_bytes(), delimiter, |loc, row| match row {
        Ok((headers, cells)) => {
            let fields =
                headers.iter().zip(cells.iter()).map(|(h, v)| (h.trim().to_string(), Value::from(v))).collect();
            rows.push(Row { loc, fields });
            ControlFlow::Continue(())
        }
        Err(e) => {
            failure = Some(e);
            ControlFlow::Break(())
        }
    })?;
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn json_lines_and_arrays_give_rows_with_their_lines() {
        let (_d, p) = file("p.jsonl", "\u{feff}{\"id\": 1}\n\n{\"id\": 2}\n");
        let rows = json_rows(&p, &read_text(&p).unwrap()).unwrap();
        assert_eq!(rows.iter().map(|r| r.loc.line).collect::<Vec<_>>(), [Some(1), Some(3)]);
        let (_d, p) = file("p.json", "[\n {\"id\": 1},\n\n {\"id\": 2}\n]");
        let rows = json_rows(&p, &read_text(&p).unwrap()).unwrap();
        assert_eq!(rows.iter().map(|r| r.loc.line).collect::<Vec<_>>(), [Some(2), Some(4)]);
        let (_d, p) = file("p.jsonl", "{\"id\": 1}\n[1]\n");
        let err = json_rows(&p, &read_text(&p).unwrap()).unwrap_err().to_string();
        assert!(err.contains("p.jsonl:2") && err.contains("expected a JSON object"), "{err}");
    }

    #[test]
    fn table_rows_count_lines_past_blank_lines_and_name_a_short_row() {
        let (_d, p) = file("t.tsv", "id\tanswer\r\n1\tyes\r\n\r\n2\tno\r\n3\r\n");
        let text = read_text(&p).unwrap();
        let err = table_rows(&p, &text, b'\t').unwrap_err().to_string();
        assert!(err.contains("t.tsv:5") && err.contains("1 fields, the header has 2"), "{err}");
        let (_d, p) = file("t.tsv", "id\tanswer\n1\tyes\n\n2\tno\n");
        let rows = table_rows(&p, &read_text(&p).unwrap(), b'\t').unwrap();
        assert_eq!(rows.iter().map(|r| r.loc.line).collect::<Vec<_>>(), [Some(2), Some(4)]);
        assert_eq!(rows[1].fields["answer"], "no");
    }
}
