//! Plain tables, one item per row: JSON Lines and CSV with `image`, `question`, `answer`
//! columns (aliases as ms-swift accepts them), plus optional `id`, `answers` (a list;
//! a JSON list in CSV), `split`, `task`. Other columns are kept.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmloop_core::{Answer, HumanAnswer, Location, Record, Task};
use serde_json::{Map, Value};

use crate::error::{FormatError, RecordError};
use crate::json::{self, Fields, kind};
use crate::output::{AtomicFile, JsonLines};
use crate::{ReadOptions, Sink, WriteSummary, conversation, image_ref};

const QUESTION_KEYS: &[&str] = &["question", "query", "prompt", "instruction"];
const ANSWER_KEYS: &[&str] = &["answer", "response", "caption", "output"];

/// A row as named fields, from either table kind.
fn parse_row(mut f: Fields, opts: &ReadOptions) -> Result<Vec<Record>, RecordError> {
    let id = f.opt_id("id")?;
    let task = match f.opt_str("task")? {
        Some(t) => t.parse::<Task>().map_err(|e| f.err(e.to_string()).id(id.clone()))?,
        None => opts.task.unwrap_or(Task::Vqa),
    };
    let images = if f.has("images") || f.has("image") {
        conversation::take_images(&mut f)?
    } else if let Some(p) = f.first_str(&["image_path", "file_name", "path"])? {
        vec![image_ref::parse_str(&p).map_err(|e| f.err(e).id(id.clone()))?]
    } else {
        Vec::new()
    };
    let question = match (f.first_str(QUESTION_KEYS)?, task) {
        (Some(q), _) => q,
        (None, Task::Caption) => opts.caption_prompt(),
        (None, Task::Vqa) => {
            return Err(f
                .err("no `question` column")
                .id(id)
                .hint("VQA rows need `question`; for captions pass --task caption"));
        }
    };
    let text = f.first_str(ANSWER_KEYS)?;
    let all = match f.take("answers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|v| match v {
                Value::String(answer) => Ok(HumanAnswer { answer, confidence: None }),
                Value::Object(mut o) => match o.shift_remove("answer") {
                    Some(Value::String(answer)) => Ok(HumanAnswer {
                        answer,
                        confidence: o.shift_remove("answer_confidence").and_then(|c| c.as_str().map(String::from)),
                    }),
                    _ => Err(f.err("an `answers` entry needs a string `answer`")),
                },
                other => Err(f.err(format!("`answers` entries must be strings, found {}", kind(&other)))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(f.err(format!("`answers` must be a list, found {}", kind(&other))).id(id)),
    };
    let split = f.opt_str("split")?;
    let mut r = Record::new(task, question, f.loc.clone());
    r.id = id;
    r.images = images;
    r.answer = (text.is_some() || !all.is_empty()).then_some(Answer { text, all });
    r.split = split;
    r.meta = f.rest();
    Ok(vec![r])
}

pub(crate) fn read_jsonl(path: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    json::each_object(path, sink, |loc, map| parse_row(Fields::new(loc, map), opts))
}

pub(crate) fn read_csv(path: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    let file = Arc::new(path.to_path_buf());
    let buf = json::read_all(path)?; // empty and non-UTF-8 files get the usual errors
    let delimiter = if path.extension().is_some_and(|e| e == "tsv") { b'\t' } else { b',' };
    for_each_table_row(&file, &buf, delimiter, |loc, row| {
        let res = row.and_then(|(headers, row)| {
            let mut map = Map::new();
            for (h, v) in headers.iter().zip(row.iter()) {
                if v.is_empty() {
                    continue;
                }
                let value = match h {
                    "answers" | "images" | "meta" => serde_json::from_str(v).unwrap_or_else(|_| Value::from(v)),
                    "image" if v.starts_with('[') => serde_json::from_str(v).unwrap_or_else(|_| Value::from(v)),
                    _ => Value::from(v),
                };
                map.insert(h.to_string(), value);
            }
            let meta = match map.shift_remove("meta") {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            parse_row(Fields::new(&loc, map), opts).map(|mut rs| {
                for r in &mut rs {
                    r.meta.extend(meta.clone());
                }
                rs
            })
        });
        match res {
            Ok(rs) => rs.into_iter().try_for_each(|r| sink(Ok(r))),
            Err(e) => sink(Err(e)),
        }
    })
}

/// Calls `f` with each row of a table in `buf` (a header line, then rows of `delimiter`-
/// separated cells) beside the header, at its location; a row with the wrong number of
/// cells is a record error there.
pub(crate) fn for_each_table_row(
    file: &Arc<PathBuf>,
    buf: &[u8],
    delimiter: u8,
    mut f: impl FnMut(Location, Result<(&csv::StringRecord, &csv::StringRecord), RecordError>) -> ControlFlow<()>,
) -> Result<(), FormatError> {
    let mut rdr = csv::ReaderBuilder::new().delimiter(delimiter).flexible(false).from_reader(buf);
    let mut lines = RowLines { buf, pos: 0, line: 1 };
    let held = if delimiter == b'\t' { "tabs" } else { "commas" };
    let headers = rdr
        .headers()
        .map_err(|e| FormatError::from(RecordError::new(Location::line(file, 1), format!("bad header: {e}"))))?
        .clone();
    for (i, row) in rdr.records().enumerate() {
        let flow = match row {
            Ok(row) => {
                let loc = Location::at(file, row.position().map_or(0, |p| lines.at(p.byte())), i as u64);
                f(loc, Ok((&headers, &row)))
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| lines.at(p.byte()));
                let message = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                        format!("the row has {len} fields, the header has {expected_len}")
                    }
                    _ => format!("bad table row: {e}"),
                };
                let loc = Location::at(file, line, i as u64);
                f(
                    loc.clone(),
                    Err(RecordError::new(loc, message).hint(format!(
                        "every row needs as many fields as the header; quote fields that contain {held}"
                    ))),
                )
            }
        };
        if flow.is_break() {
            break;
        }
    }
    Ok(())
}

/// Line numbers of CSV rows, from their byte offsets: the csv crate's own line numbers
/// are one short after blank lines and on CRLF files, where its offsets point at the end
/// of the line before the row.
struct RowLines<'a> {
    buf: &'a [u8],
    pos: usize,
    line: u64,
}

impl RowLines<'_> {
    fn at(&mut self, byte: u64) -> u64 {
        let mut start = (byte as usize).min(self.buf.len());
        while start < self.buf.len() && matches!(self.buf[start], b'\r' | b'\n') {
            start += 1;
        }
        if start >= self.pos {
            self.line += self.buf[self.pos..start].iter().filter(|&&b| b == b'\n').count() as u64;
            self.pos = start;
        }
        self.line
    }
}

fn row_fields(r: &Record) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(id) = &r.id {
        m.insert("id".into(), json::id_value(id));
    }
    m.insert("task".into(), Value::from(r.task.as_str()));
    match r.images.as_slice() {
        [] => {}
        [one] => {
            m.insert("image".into(), image_ref::to_json(one));
        }
        many => {
            m.insert("images".into(), many.iter().map(image_ref::to_json).collect());
        }
    }
    m.insert("question".into(), Value::from(r.question.clone()));
    if let Some(a) = &r.answer {
        if let Some(t) = &a.text {
            m.insert("answer".into(), Value::from(t.clone()));
        }
        if !a.all.is_empty() {
            m.insert(
                "answers".into(),
                a.all
                    .iter()
                    .map(|h| match &h.confidence {
                        None => Value::from(h.answer.clone()),
                        Some(c) => serde_json::json!({"answer": h.answer, "answer_confidence": c}),
                    })
                    .collect(),
            );
        }
    }
    if let Some(s) = &r.split {
        m.insert("split".into(), Value::from(s.clone()));
    }
    m
}

pub(crate) fn write_jsonl(out: &Path, records: &mut dyn Iterator<Item = Record>) -> Result<WriteSummary, FormatError> {
    let mut file = JsonLines(AtomicFile::create(out)?);
    let mut n = 0;
    for r in records {
        n += 1;
        let mut m = row_fields(&r);
        for (k, v) in &r.meta {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
        file.push(&m)?;
    }
    let path = file.0.commit()?;
    Ok(WriteSummary { records: n, files: vec![path], notes: Vec::new() })
}

pub(crate) fn write_csv(out: &Path, records: &mut dyn Iterator<Item = Record>) -> Result<WriteSummary, FormatError> {
    const COLUMNS: [&str; 8] = ["id", "task", "image", "question", "answer", "answers", "split", "meta"];
    let mut file = AtomicFile::create(out)?;
    let mut n = 0;
    {
        let mut w = csv::Writer::from_writer(&mut file);
        w.write_record(COLUMNS).map_err(|e| FormatError::io(out, std::io::Error::other(e)))?;
        for r in records {
            n += 1;
            let m = row_fields(&r);
            let cell = |k: &str| match m.get(k) {
                None => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            };
            let image = match m.get("images") {
                Some(v) => v.to_string(),
                None => cell("image"),
            };
            let meta = if r.meta.is_empty() { String::new() } else { Value::Object(r.meta.clone()).to_string() };
            let row = [
                cell("id"),
                cell("task"),
                image,
                cell("question"),
                cell("answer"),
                cell("answers"),
                cell("split"),
                meta,
            ];
            w.write_record(&row).map_err(|e| FormatError::io(out, std::io::Error::other(e)))?;
        }
        w.flush().map_err(|e| FormatError::io(out, e))?;
    }
    let path = file.commit()?;
    Ok(WriteSummary { records: n, files: vec![path], notes: Vec::new() })
}
