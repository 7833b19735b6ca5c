//! Label Studio (HumanSignal/label-studio `docs/source/includes/task_format.md`,
//! `guide/predictions.md`): reads a JSON export (tasks with `data`, `annotations` —
//! `completions` before 1.0 — and `predictions`), writes import JSON with the truth as
//! `annotations` and model answers as `predictions` with their `score`, plus the labeling
//! config that shows them. Answers live in `textarea` results (`value.text`).
//! Local images use `/data/local-files/?d=<path>` URLs.

use std::path::{Path, PathBuf};

use mmloop_core::{Answer, HumanAnswer, ImageSource, LabelStatus, Prediction, Record, Task};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::{Map, Value, json};

use crate::error::FormatError;
use crate::json::{self, Fields, kind};
use crate::output::{AtomicFile, JsonArray};
use crate::{ReadOptions, Sink, WriteOptions, WriteSummary, image_ref};

const IMAGE_KEYS: &[&str] = &["image", "img", "image_url", "url", "photo"];
const QUESTION_KEYS: &[&str] = &["question", "query", "prompt", "text"];

pub(crate) fn read(path: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    let images_dir = opts.images_dir_for(path);
    let prompt = opts.caption_prompt();
    json::each_object(path, sink, |loc, map| {
        let mut f = Fields::new(loc, map);
        let id = f.opt_id("id")?;
        let data = match f.take("data") {
            Some(Value::Object(d)) => d,
            Some(other) => return Err(f.err(format!("`data` must be an object, found {}", kind(&other))).id(id)),
            None => {
                return Err(f
                    .err("task without `data`")
                    .id(id)
                    .hint("Label Studio tasks look like {\"data\": {\"image\": ..., \"question\": ...}, \"annotations\": [...]}"));
            }
        };
        let mut d = Fields::new(loc, data);
        let image_key = IMAGE_KEYS.iter().copied().find(|k| d.has(k));
        let image = match image_key {
            Some(k) => d.opt_str(k)?,
            None => None,
        };
        let Some(image) = image else {
            return Err(d
                .err("no image in `data`")
                .id(id)
                .hint(format!("mmloop looks for one of the keys {}", IMAGE_KEYS.join(", "))));
        };
        let question_key = QUESTION_KEYS.iter().copied().find(|k| d.has(k));
        let question = d.first_str(QUESTION_KEYS)?;
        // A `prompt` is what a caption task shows (the writer below puts it there).
        let task = match (question_key, opts.task) {
            (_, Some(t)) => t,
            (Some("prompt") | None, None) => Task::Caption,
            (Some(_), None) => Task::Vqa,
        };
        let mut r = Record::new(task, question.unwrap_or_else(|| prompt.clone()), loc.clone());
        r.images = vec![resolve_url(&image, &images_dir)];
        r.id = id.clone();

        let annotations = match f.take("annotations").or_else(|| f.take("completions")) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        // The most recent annotation that was not cancelled holds the truth.
        let mut any_cancelled = false;
        for a in annotations.iter().rev() {
            if a.get("was_cancelled").and_then(Value::as_bool) == Some(true) {
                any_cancelled = true;
                continue;
            }
            if let Some(ans) = a.get("result").and_then(textarea_answer) {
                r.answer = Some(ans);
                break;
            }
        }
        if r.answer.is_none() && any_cancelled {
            r.status = Some(LabelStatus::Skipped);
        }
        if let Some(Value::Array(preds)) = f.take("predictions") {
            // JSON exports write predictions as bare ids: nothing to read there.
            for p in preds.iter().filter(|p| p.is_object()) {
                let answer = p.get("result").and_then(textarea_answer).and_then(|a| a.best().map(String::from));
                if let Some(answer) = answer {
                    r.predictions.push(Prediction {
                        model: p.get("model_version").and_then(Value::as_str).unwrap_or("label-studio").to_string(),
                        answer,
                        score: p.get("score").and_then(Value::as_f64),
                    });
                }
            }
        }
        let rest = d.rest();
        if !rest.is_empty() {
            r.meta.insert("data".into(), Value::Object(rest));
        }
        Ok(vec![r])
    })
}

/// The answer in a list of results: the first `textarea` result's text(s).
fn textarea_answer(result: &Value) -> Option<Answer> {
    let texts = result
        .as_array()?
        .iter()
        .find(|r| r.get("type").and_then(Value::as_str) == Some("textarea"))?
        .get("value")?
        .get("text")?;
    let list: Vec<String> = match texts {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|t| t.as_str().map(String::from)).collect(),
        _ => return None,
    };
    Some(match list.len() {
        0 => return None,
        1 => Answer::text(list.into_iter().next().unwrap_or_default()),
        _ => Answer {
            text: None,
            all: list.into_iter().map(|answer| HumanAnswer { answer, confidence: None }).collect(),
        },
    })
}

/// Label Studio image URLs to image sources: local-files and upload URLs become paths
/// (relative to the images folder; local-files also as absolute paths), others stay URLs.
fn resolve_url(url: &str, images_dir: &Path) -> ImageSource {
    if let Some(q) = url.strip_prefix("/data/local-files/?d=") {
        let rel = percent_decode_str(q).decode_utf8_lossy().to_string();
        if !images_dir.join(&rel).exists() {
            let abs = PathBuf::from("/").join(&rel);
            if abs.exists() {
                return ImageSource::Path(abs.to_string_lossy().into_owned());
            }
        }
        return ImageSource::Path(rel);
    }
    if let Some(rest) = url.strip_prefix("/data/upload/") {
        return ImageSource::Path(format!("upload/{}", percent_decode_str(rest).decode_utf8_lossy()));
    }
    image_ref::parse_str(url).unwrap_or_else(|_| ImageSource::Path(url.to_string()))
}

const QUERY_SET: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'&').add(b'+').add(b'?');

fn to_url(src: &ImageSource, root: Option<&Path>) -> String {
    match src {
        // Cloud storage URIs (s3://, gs://, azure-blob://) are resolved by Label Studio itself.
        ImageSource::Path(p) if is_uri(p) => p.clone(),
        ImageSource::Path(p) => {
            let path = Path::new(p);
            let rel = match root {
                Some(r) => path.strip_prefix(r).unwrap_or(path),
                None => path.strip_prefix("/").unwrap_or(path),
            };
            format!("/data/local-files/?d={}", utf8_percent_encode(&rel.to_string_lossy(), QUERY_SET))
        }
        other => image_ref::to_string(other),
    }
}

/// `scheme://...`, the scheme made of letters, digits and `+-.` as URIs have it.
fn is_uri(p: &str) -> bool {
    p.split_once("://").is_some_and(|(scheme, _)| {
        scheme.len() > 1 && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    })
}

fn textarea(from: &str, answer: &Answer) -> Value {
    let texts: Vec<&str> = if answer.all.is_empty() {
        answer.text.iter().map(String::as_str).collect()
    } else {
        answer.all.iter().map(|a| a.answer.as_str()).collect()
    };
    json!([{"from_name": from, "to_name": "image", "type": "textarea", "value": {"text": texts}}])
}

pub(crate) fn write(
    out: &Path,
    records: &mut dyn Iterator<Item = Record>,
    opts: &WriteOptions,
) -> Result<WriteSummary, FormatError> {
    let mut file = JsonArray::create(out)?;
    let mut n = 0u64;
    let mut has_vqa = false;
    let mut has_caption = false;
    for r in records {
        n += 1;
        let from = match r.task {
            Task::Vqa => {
                has_vqa = true;
                "answer"
            }
            Task::Caption => {
                has_caption = true;
                "caption"
            }
        };
        let mut data = match r.meta.get("data") {
            Some(Value::Object(d)) => d.clone(),
            _ => Map::new(),
        };
        if let Some(img) = r.images.first() {
            data.insert("image".into(), Value::from(to_url(img, opts.document_root.as_deref())));
        }
        if r.task == Task::Vqa {
            data.insert("question".into(), Value::from(crate::vqav2::strip_tags(&r.question)));
        } else {
            data.insert("prompt".into(), Value::from(r.question.clone()));
        }
        let mut task = Map::new();
        if let Some(id) = &r.id {
            task.insert("id".into(), json::id_value(id));
        }
        task.insert("data".into(), Value::Object(data));
        if let Some(a) = r.answer.as_ref().filter(|a| !a.is_empty()) {
            task.insert("annotations".into(), json!([{"result": textarea(from, a), "was_cancelled": false}]));
        } else if r.status == Some(LabelStatus::Skipped) {
            task.insert("annotations".into(), json!([{"result": [], "was_cancelled": true}]));
        }
        let preds: Vec<Value> = r
            .predictions
            .iter()
            .map(|p| {
                json!({"model_version": p.model, "score": p.score, "result": textarea(from, &Answer::text(p.answer.clone()))})
            })
            .collect();
        if !preds.is_empty() {
            task.insert("predictions".into(), Value::Array(preds));
        }
        file.push(&task)?;
    }
    let path = file.commit()?;
    let mut files = vec![path];
    let config_path = out.with_extension("label_config.xml");
    let mut config = AtomicFile::create(&config_path)?;
    config.write_all(label_config(has_vqa || !has_caption, has_caption).as_bytes())?;
    files.push(config.commit()?);
    Ok(WriteSummary { records: n, files, notes: Vec::new() })
}

/// A labeling config that shows the image, the question and the answer text areas.
fn label_config(vqa: bool, caption: bool) -> String {
    let mut s = String::from("<View>\n  <Image name=\"image\" value=\"$image\" zoom=\"true\"/>\n");
    if vqa {
        s.push_str("  <Header value=\"$question\"/>\n  <TextArea name=\"answer\" toName=\"image\" rows=\"2\" editable=\"true\" maxSubmissions=\"1\"/>\n");
    }
    if caption {
        s.push_str(
            "  <TextArea name=\"caption\" toName=\"image\" rows=\"5\" editable=\"true\" maxSubmissions=\"1\"/>\n",
        );
    }
    s.push_str("</View>\n");
    s
}
