//! ms-swift datasets (modelscope/ms-swift `docs/source_en/Customization/Custom-dataset.md`,
//! `swift/dataset/preprocessor/core.py`): JSONL (or a JSON array) of `messages` +
//! `images`, or `query`/`response`/`history`/`system` with ms-swift's column aliases.
//! Rows of a `swift infer` result file (`response`, `labels`) read as the question, the
//! reference answer, and the model's answer as a prediction.

use std::path::Path;

use mmloop_core::{Answer, Message, Prediction, Record, Task};
use serde_json::{Map, Value};

use crate::conversation::{self, Conversation};
use crate::error::{FormatError, RecordError};
use crate::json::{self, Fields, kind};
use crate::output::JsonLines;
use crate::{ReadOptions, Sink, WriteSummary};

const QUERY_KEYS: &[&str] = &["query", "prompt", "input", "instruction", "question", "problem"];
const RESPONSE_KEYS: &[&str] =
    &["response", "answer", "output", "target", "targets", "solution", "text", "completion", "content"];

pub(crate) fn read(path: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    let task = opts.task.unwrap_or(Task::Vqa);
    json::each_object(path, sink, |loc, map| parse_row(Fields::new(loc, map), task))
}

pub(crate) fn parse_row(mut f: Fields, task: Task) -> Result<Vec<Record>, RecordError> {
    let id = f.opt_id("id")?;
    let images = conversation::take_images(&mut f)?;
    let mut prediction = None;
    let mut reference = None;
    // ms-swift's MessagesPreprocessor reads any of these three columns.
    let chat_key = ["messages", "conversation", "conversations"].into_iter().find(|k| f.has(k));
    let messages = if let Some(key) = chat_key {
        let mut messages = conversation::parse_messages(&mut f, key)?;
        // A `system` column fills in the system turn when the messages have none.
        if messages.first().is_none_or(|m| m.role != "system")
            && let Some(k) = ["system", "system_prompt"].into_iter().find(|k| f.has(k))
        {
            let system = f.str(k)?;
            messages.insert(0, Message::new("system", system));
        }
        // A `swift infer` result row: the model's answer is appended to `messages`.
        if f.has("response") && f.has("labels") {
            let response = f.opt_str("response")?.unwrap_or_default();
            if messages.last().is_some_and(|m| m.role == "assistant" && m.content == response) {
                messages.pop();
            }
            reference = match f.take("labels") {
                Some(Value::String(s)) => Some(s),
                _ => None,
            };
            f.take("logprobs");
            f.take("flags");
            let model = f.opt_str("model")?.unwrap_or_else(|| "swift-infer".into());
            let score = f.take("confidence").and_then(|v| v.as_f64());
            prediction = Some(Prediction { model, answer: response, score });
        }
        messages
    } else {
        query_response(&mut f)?
    };
    let mut records = Conversation { loc: f.loc.clone(), id, task, messages, images, meta: Map::new(), split: None }
        .into_records()?;
    let last = records.last_mut().expect("into_records yields at least one record");
    if let Some(r) = reference {
        last.answer = Some(Answer::text(r));
    }
    last.predictions.extend(prediction);
    last.meta = f.rest();
    Ok(records)
}

fn query_response(f: &mut Fields) -> Result<Vec<Message>, RecordError> {
    let mut messages = Vec::new();
    if let Some(system) = f.opt_str("system")? {
        messages.push(Message::new("system", system));
    }
    match f.take("history") {
        None | Some(Value::Null) => {}
        Some(Value::Array(turns)) => {
            for (i, t) in turns.iter().enumerate() {
                match t.as_array().map(Vec::as_slice) {
                    Some([Value::String(q), Value::String(r)]) => {
                        messages.push(Message::new("user", q.clone()));
                        messages.push(Message::new("assistant", r.clone()));
                    }
                    _ => return Err(f.err(format!("`history[{i}]` must be a [query, response] pair of strings"))),
                }
            }
        }
        Some(Value::String(_)) => {
            return Err(f.err("`history` is a string").hint("write it as a JSON list of [query, response] pairs"));
        }
        Some(other) => return Err(f.err(format!("`history` must be a list, found {}", kind(&other)))),
    }
    let alpaca = !f.has("query") && !f.has("prompt") && (f.has("instruction") || f.has("input"));
    let query = if alpaca { alpaca_query(f)? } else { f.first_str(QUERY_KEYS)? };
    let response = take_response(f)?;
    match query {
        Some(q) => messages.push(Message::new("user", q)),
        None if response.is_some() => {}
        None => {
            return Err(f
                .err("no `messages`, `conversations` or `query` field")
                .hint("ms-swift rows need `messages` (list of {role, content}) or `query`/`response`"));
        }
    }
    if let Some(r) = response {
        messages.push(Message::new("assistant", r));
    }
    Ok(messages)
}

/// Alpaca rows ask `instruction` and `input` together, joined by a newline when both are
/// there (ms-swift `AlpacaPreprocessor.concat_inst_input`).
fn alpaca_query(f: &mut Fields) -> Result<Option<String>, RecordError> {
    let instruction = f.opt_str("instruction")?;
    let input = f.opt_str("input")?;
    Ok(match (instruction, input) {
        (Some(i), Some(x)) if !i.is_empty() && !x.is_empty() => Some(format!("{i}\n{x}")),
        (Some(i), _) if !i.is_empty() => Some(i),
        (i, x) => x.or(i),
    })
}

fn take_response(f: &mut Fields) -> Result<Option<String>, RecordError> {
    for k in RESPONSE_KEYS {
        match f.take(k) {
            None => continue,
            Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => return Ok(Some(s)),
            Some(Value::Array(a)) => {
                return match a.into_iter().next() {
                    Some(Value::String(s)) => Ok(Some(s)),
                    None => Ok(None),
                    Some(other) => Err(f.err(format!("`{k}[0]` must be a string, found {}", kind(&other)))),
                };
            }
            Some(other) => return Err(f.err(format!("`{k}` must be a string, found {}", kind(&other)))),
        }
    }
    Ok(None)
}

pub(crate) fn write(out: &Path, records: &mut dyn Iterator<Item = Record>) -> Result<WriteSummary, FormatError> {
    let mut file = JsonLines(crate::output::AtomicFile::create(out)?);
    let mut n = 0;
    for group in conversation::Groups::new(records) {
        n += group.len() as u64;
        let j = conversation::join(&group);
        file.push(&row(&j))?;
    }
    let path = file.0.commit()?;
    Ok(WriteSummary { records: n, files: vec![path], notes: Vec::new() })
}

fn row(j: &conversation::Joined) -> Map<String, Value> {
    let mut row = Map::new();
    row.insert(
        "messages".into(),
        j.messages.iter().map(|m| serde_json::json!({"role": m.role, "content": m.content})).collect(),
    );
    j.finish_row(&mut row, Some("images"));
    row
}
