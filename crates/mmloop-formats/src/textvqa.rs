//! TextVQA 0.5.1 (textvqa.org/dataset; HF `facebook/textvqa`): one JSON object whose
//! `data` holds `{question_id, question, image_id, answers[10], set_name, ...}`. Images are
//! `<image_id>.jpg` in the images folder or its `train_images/` / `test_images/`
//! subfolders; an `image` key (written by mmloop) names the file directly. `set_name`
//! becomes the item's split.

use std::path::Path;
use std::sync::Arc;

use mmloop_core::{Answer, HumanAnswer, ImageSource, Location, Record, Task};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{FormatError, RecordError};
use crate::json::{self, Fields, LineCounter, kind};
use crate::output::AtomicFile;
use crate::{ReadOptions, Sink, WriteSummary, image_ref};

#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(borrow)]
    data: Option<Vec<&'a RawValue>>,
}

pub(crate) fn read(path: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    let buf = json::read_all(path)?;
    let file = Arc::new(path.to_path_buf());
    let doc: Doc = serde_json::from_slice(&buf)
        .map_err(|e| json::document_error(&file, &buf, &e, "a TextVQA object ({\"data\": [...]})"))?;
    let Some(data) = doc.data else {
        return Err(RecordError::new(Location::file(&file), "no `data` list")
            .hint("TextVQA files (TextVQA_0.5.1_*.json) hold their questions under `data`")
            .into());
    };
    let images_dir = opts.images_dir_for(path);
    let mut lines = LineCounter::new(&buf);
    for (i, raw) in data.iter().enumerate() {
        let loc = Location::at(&file, lines.line_of(raw.get()), i as u64);
        let rec = json::parse_object(&loc, raw.get()).and_then(|m| {
            let mut f = Fields::new(&loc, m);
            let qid = f.opt_id("question_id")?.ok_or_else(|| f.err("entry without `question_id`"))?;
            let question = f.str("question").map_err(|e| e.id(Some(qid.clone())))?;
            let image_id =
                f.opt_id("image_id")?.ok_or_else(|| f.err("entry without `image_id`").id(Some(qid.clone())))?;
            let image = match f.opt_str("image")? {
                Some(p) => p,
                None => find_image(&images_dir, &image_id),
            };
            let answers = match f.take("answers") {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) => Some(
                    a.into_iter()
                        .enumerate()
                        .map(|(j, v)| match v {
                            Value::String(answer) => Ok(HumanAnswer { answer, confidence: None }),
                            other => Err(f
                                .err(format!("`answers[{j}]` must be a string, found {}", kind(&other)))
                                .id(Some(qid.clone()))),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Some(other) => {
                    return Err(f.err(format!("`answers` must be a list, found {}", kind(&other))).id(Some(qid)));
                }
            };
            let mut r = Record::new(Task::Vqa, question, loc.clone());
            r.split = f.opt_str("set_name")?;
            r.images = vec![ImageSource::Path(image)];
            r.answer = answers.map(|all| Answer { text: None, all });
            r.meta = f.rest();
            r.meta.insert("image_id".into(), Value::from(image_id));
            r.id = Some(qid);
            Ok(r)
        });
        if sink(rec).is_break() {
            return Ok(());
        }
    }
    Ok(())
}

fn find_image(dir: &Path, image_id: &str) -> String {
    let names =
        [format!("{image_id}.jpg"), format!("train_images/{image_id}.jpg"), format!("test_images/{image_id}.jpg")];
    names.iter().find(|n| dir.join(n).is_file()).cloned().unwrap_or_else(|| names[0].clone())
}

pub(crate) fn write(out: &Path, records: &mut dyn Iterator<Item = Record>) -> Result<WriteSummary, FormatError> {
    let mut data = Vec::new();
    let mut n = 0u64;
    for r in records {
        n += 1;
        let mut m: Map<String, Value> = r.meta.clone();
        let image_id = m
            .shift_remove("image_id")
            .and_then(|v| json::id_text(&v))
            .or_else(|| r.image_info.first().map(|i| i.sha256.to_hex()[..16].to_string()))
            .unwrap_or_default();
        m.insert("question_id".into(), r.id.as_deref().map(json::id_value).unwrap_or(Value::from(n)));
        m.insert("question".into(), Value::from(crate::vqav2::strip_tags(&r.question)));
        m.insert("image_id".into(), Value::from(image_id));
        if let Some(img) = r.images.first() {
            m.insert("image".into(), Value::from(image_ref::to_string(img)));
        }
        if let Some(a) = &r.answer {
            let all: Vec<Value> = if a.all.is_empty() {
                a.text.iter().map(|t| Value::from(t.clone())).collect()
            } else {
                a.all.iter().map(|h| Value::from(h.answer.clone())).collect()
            };
            m.insert("answers".into(), Value::Array(all));
        }
        if let Some(s) = &r.split {
            m.insert("set_name".into(), Value::from(s.clone()));
        }
        data.push(Value::Object(m));
    }
    let doc = serde_json::json!({
        "dataset_type": "mmloop", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data,
    });
    let mut file = AtomicFile::create(out)?;
    file.json(&doc)?;
    let path = file.commit()?;
    Ok(WriteSummary { records: n, files: vec![path], notes: Vec::new() })
}
