//! Model predictions, read from the files that evaluation tools and inference scripts
//! write:
//! - COCO caption results `[{image_id, caption}]` and VQA results `[{question_id, answer}]`;
//! - JSON Lines (or a JSON array) with `id` and `answer`, optional `confidence` and `model`;
//! - inference outputs: ms-swift `swift infer` rows (`response`, with the reference in
//!   `labels` or the last assistant turn of `messages`), LLaVA `model_vqa` rows
//!   (`question_id`, `text`, `model_id`) and mmloop's own `infer` rows
//!   ([`mmloop_formats::InferRow`]: a `swift infer` row with `id`, `confidence`, `flags`);
//! - multiple-choice result tables (`index`, options `A`..`D`, `answer`, `prediction`, as
//!   VLMEvalKit writes them) and MME result files (`image<TAB>question<TAB>truth<TAB>answer`
//!   per line, one file per subtask, or a folder of them).
//!
//! Rows that carry their own reference (`labels`, a table's `answer`, MME's truth column)
//! need no reference file. Every problem names the file and line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::{EvalError, Place};
use crate::input::{self, ID_KEYS, Row, first_key, id_text, kind};
use crate::mme;
use crate::references::{EvalTask, Reference, References, answers_of, choices_of, mme_reference};

/// One model answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub id: String,
    pub answer: String,
    /// The model's confidence in [0, 1], when the file gives one.
    pub confidence: Option<f64>,
    pub at: Place,
    /// The reference the row carries itself, if any.
    pub reference: Option<Reference>,
}

/// A predictions file.
#[derive(Debug, Clone)]
pub struct Predictions {
    pub file: PathBuf,
    /// `coco-results`, `vqa-results`, `jsonl`, `swift-infer`, `llava-infer`, `mmloop-infer`, `choice-table`, `mme`.
    pub format: &'static str,
    /// The model named in the file (`model`, `model_id`), if one is.
    pub model: Option<String>,
    /// The task the layout implies (COCO results are captions), if it does.
    pub task: Option<EvalTask>,
    pub items: Vec<Prediction>,
}

const ANSWER_KEYS: &[&str] = &["prediction", "response", "answer", "caption", "pred", "text", "output"];
const CONFIDENCE_KEYS: &[&str] = &["confidence", "score", "prob", "probability"];

impl Predictions {
    /// The references the rows carry, when every row carries one.
    pub fn inline_references(&self) -> Option<References> {
        let items: Option<Vec<Reference>> = self.items.iter().map(|p| p.reference.clone()).collect();
        let items = items?;
        let task = if self.format == "mme" {
            EvalTask::Mme
        } else if items.iter().any(|r| !r.choices.is_empty()) {
            EvalTask::Choice
        } else {
            self.task.unwrap_or(EvalTask::Vqa)
        };
        Some(References {
            task,
            source: self.file.display().to_string(),
            format: format!("{} (inline)", self.format),
            version: None,
            items,
        })
    }
}

/// Reads a predictions file (or a folder of MME result files).
pub fn read_predictions(path: &Path) -> Result<Predictions, EvalError> {
    if path.is_dir() {
        return Ok(mme_predictions(path.to_path_buf(), mme::read_dir(path)?));
    }
    let (file, text) = input::read_text(path)?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if matches!(ext.as_str(), "tsv" | "csv" | "txt") {
        if mme::looks_like(&text) {
            return Ok(mme_predictions(path.to_path_buf(), mme::read_text(&file, &text)?));
        }
        let rows = input::table_rows(&file, &text, if ext == "csv" { b',' } else { b'\t' })?;
        return from_rows(path, rows);
    }
    if !matches!(input::first_byte(&text), Some(b'[' | b'{')) {
        return Err(EvalError::input(
            Place::new(&file, 1),
            "not a predictions file: expected JSON, JSON Lines, a TSV/CSV table or MME result lines",
            "write predictions as JSON Lines with `id` and `answer` (see `mmloop eval --help`)",
        ));
    }
    let rows = input::json_rows(&file, &text)?;
    from_rows(path, rows)
}

fn from_rows(path: &Path, rows: Vec<Row>) -> Result<Predictions, EvalError> {
    let file = Arc::new(path.to_path_buf());
    let Some(first) = rows.first() else {
        return Err(EvalError::input(
            Place::file(&file),
            "no predictions in the file",
            "check the path, or run inference again",
        ));
    };
    let f0 = &first.fields;
    let has = |k: &str| f0.contains_key(k);
    let (format, task) = if has("image_id") && has("caption") {
        ("coco-results", Some(EvalTask::Caption))
    } else if has("question_id") && has("answer") && !has("prediction") {
        ("vqa-results", None)
    } else if has("response") && (has("labels") || has("messages")) {
        ("swift-infer", None)
    } else if has("response") {
        ("mmloop-infer", None)
    } else if has("text") && (has("model_id") || has("answer_id") || has("prompt")) {
        ("llava-infer", None)
    } else if has("prediction") && (has("A") || has("options") || has("choices")) {
        ("choice-table", Some(EvalTask::Choice))
    } else {
        ("jsonl", None)
    };
    let mut model = None;
    let mut items = Vec::with_capacity(rows.len());
    let mut seen: HashMap<String, Place> = HashMap::with_capacity(rows.len());
    for (n, row) in rows.into_iter().enumerate() {
        let p = prediction_from_row(&row, n, format)?;
        if model.is_none() {
            model =
                ["model", "model_id"].iter().find_map(|k| row.fields.get(*k)).and_then(Value::as_str).map(String::from);
        }
        if let Some(first) = seen.insert(p.id.clone(), p.at.clone()) {
            return Err(EvalError::input(
                p.at,
                format!("duplicate prediction for id {} (first at {first})", p.id),
                "keep one answer per question (per image for captions)",
            ));
        }
        items.push(p);
    }
    Ok(Predictions { file: path.to_path_buf(), format, model, task, items })
}

fn prediction_from_row(row: &Row, n: usize, format: &str) -> Result<Prediction, EvalError> {
    let f = &row.fields;
    let at = row.at.clone();
    let answer_key = first_key(f, ANSWER_KEYS).ok_or_else(|| {
        EvalError::input(
            at.clone(),
            format!("no answer field (found {})", f.keys().cloned().collect::<Vec<_>>().join(", ")),
            format!("name the model's answer one of: {}", ANSWER_KEYS.join(", ")),
        )
    })?;
    let answer = match &f[answer_key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(x) => x.to_string(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        other => {
            return Err(EvalError::input(
                at,
                format!("`{answer_key}` is {}, expected a string", kind(other)),
                "write the model's answer as a string",
            ));
        }
    };
    let confidence = match first_key(f, CONFIDENCE_KEYS).map(|k| (k, &f[k])) {
        None | Some((_, Value::Null)) => None,
        Some((k, v)) => {
            let c = v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
            match c {
                Some(c) if (0.0..=1.0).contains(&c) => Some(c),
                _ => {
                    return Err(EvalError::input(
                        at,
                        format!("`{k}` is {v}, expected a probability in [0, 1]"),
                        "write confidences as probabilities (e.g. exp of the mean token log-probability)",
                    ));
                }
            }
        }
    };
    let reference = inline_reference(f, &at, answer_key, format)?;
    let id = match first_key(f, ID_KEYS).map(|k| (k, &f[k])) {
        Some((k, v)) => id_text(v).ok_or_else(|| {
            EvalError::input(at.clone(), format!("`{k}` is {}, expected an id", kind(v)), "ids are strings or integers")
        })?,
        // `swift infer` rows have no id; they carry their reference, so the row number will do.
        None if reference.is_some() => (n + 1).to_string(),
        None => {
            return Err(EvalError::input(
                at,
                "prediction without an id",
                format!("give every row one of {} matching the references", ID_KEYS.join(", ")),
            ));
        }
    };
    let reference = reference.map(|mut r| {
        r.id = id.clone();
        r
    });
    Ok(Prediction { id, answer, confidence, at, reference })
}

/// The reference a prediction row carries: `labels` (ms-swift), the last assistant turn
/// of `messages` when it is not the response, or a table's `answer` beside `prediction`.
fn inline_reference(
    f: &Map<String, Value>,
    at: &Place,
    answer_key: &str,
    format: &str,
) -> Result<Option<Reference>, EvalError> {
    if !matches!(answer_key, "prediction" | "response" | "text" | "pred" | "output") {
        return Ok(None);
    }
    let mut answers = answers_of(f, at)?;
    if answers.is_none()
        && let Some(Value::Array(msgs)) = f.get("messages")
    {
        let response = f.get(answer_key).and_then(Value::as_str).unwrap_or("");
        let last = msgs.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("assistant"));
        if let Some(content) = last.and_then(|m| m.get("content")).and_then(Value::as_str)
            && content != response
        {
            answers = Some(vec![content.to_string()]);
        }
    }
    let Some(answers) = answers else { return Ok(None) };
    let mut r = Reference::new(String::new(), answers, at.clone());
    r.question = f.get("question").and_then(Value::as_str).map(String::from);
    r.question_type = f.get("question_type").and_then(Value::as_str).map(String::from);
    r.answer_type = f.get("answer_type").and_then(Value::as_str).map(String::from);
    if format == "choice-table" {
        r.choices = choices_of(f);
        r.category = f.get("category").and_then(Value::as_str).map(String::from);
        r.l2_category = f.get("l2-category").or(f.get("l2_category")).and_then(Value::as_str).map(String::from);
    }
    Ok(Some(r))
}

fn mme_predictions(file: PathBuf, lines: Vec<mme::Line>) -> Predictions {
    let items = lines
        .into_iter()
        .map(|l| {
            let reference = mme_reference(&l);
            Prediction { id: l.id, answer: l.answer, confidence: None, at: l.at, reference: Some(reference) }
        })
        .collect();
    Predictions { file, format: "mme", model: None, task: Some(EvalTask::Mme), items }
}
