//! VQAv2 (visualqa.org "Input Questions Format" / "Annotation Format"; GT-Vision-Lab/VQA
//! `vqaTools/vqa.py`): a questions file (`questions[{question_id, image_id, question}]`)
//! and an annotations file (`annotations[{question_id, multiple_choice_answer,
//! answers[{answer_id, answer, answer_confidence}], question_type, answer_type}]`) joined
//! on `question_id`; all ten answers are kept. Images are found by the COCO naming of
//! `image_id` (`COCO_<subtype>_%012d.jpg`, also in a `<subtype>/` folder, or `%012d.jpg`);
//! an `image` key on a question (written by mmloop) names the file directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmloop_core::{Answer, HumanAnswer, ImageSource, Location, Record, Task};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{FormatError, RecordError};
use crate::json::{self, Fields, LineCounter, kind};
use crate::output::AtomicFile;
use crate::{ReadOptions, Sink, WriteOptions, WriteSummary, image_ref};

#[derive(Deserialize)]
struct Questions<'a> {
    #[serde(borrow)]
    questions: Option<Vec<&'a RawValue>>,
    data_subtype: Option<String>,
}

#[derive(Deserialize)]
struct Annotations<'a> {
    #[serde(borrow)]
    annotations: Option<Vec<&'a RawValue>>,
}

/// The official name of the annotations file that goes with a questions file.
fn sibling_annotations(questions: &Path, subtype: Option<&str>) -> Option<PathBuf> {
    let dir = questions.parent()?;
    let name = questions.file_name()?.to_str()?;
    let candidates = [
        subtype.map(|s| format!("v2_mscoco_{s}_annotations.json")),
        subtype.map(|s| format!("mscoco_{s}_annotations.json")),
        Some(name.replace("questions", "annotations")).filter(|n| n != name),
    ];
    candidates.into_iter().flatten().map(|n| dir.join(n)).find(|p| p.is_file())
}

pub(crate) fn read(path: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    let buf = json::read_all(path)?;
    let file = Arc::new(path.to_path_buf());
    let doc: Questions = serde_json::from_slice(&buf)
        .map_err(|e| json::document_error(&file, &buf, &e, "a VQAv2 questions object ({\"questions\": [...]})"))?;
    let Some(questions) = doc.questions else {
        return Err(RecordError::new(Location::file(&file), "no `questions` list")
            .hint(
                "pass the questions file (v2_OpenEnded_mscoco_*_questions.json) and --annotations for the answers file",
            )
            .into());
    };
    let subtype = doc.data_subtype.clone();
    let ann_path = opts.annotations.clone().or_else(|| sibling_annotations(path, subtype.as_deref()));
    let ann_buf = match &ann_path {
        Some(p) => Some(json::read_all(p)?),
        None => None,
    };
    let ann_file = Arc::new(ann_path.clone().unwrap_or_default());
    let mut answers: HashMap<String, (Location, &RawValue)> = HashMap::new();
    if let Some(ab) = &ann_buf {
        let doc: Annotations = serde_json::from_slice(ab).map_err(|e| {
            json::document_error(&ann_file, ab, &e, "a VQAv2 annotations object ({\"annotations\": [...]})")
        })?;
        let list = doc.annotations.ok_or_else(|| {
            FormatError::from(
                RecordError::new(Location::file(&ann_file), "no `annotations` list")
                    .hint("--annotations takes the answers file (v2_mscoco_*_annotations.json)"),
            )
        })?;
        let mut lines = LineCounter::new(ab);
        answers.reserve(list.len());
        for (i, raw) in list.into_iter().enumerate() {
            let loc = Location::at(&ann_file, lines.line_of(raw.get()), i as u64);
            match question_id_of(raw) {
                Some(q) => {
                    if let Some((prev, _)) = answers.insert(q.clone(), (loc.clone(), raw)) {
                        let e = RecordError::new(
                            loc,
                            format!("duplicate annotation for question_id {q} (first at {prev})"),
                        );
                        if sink(Err(e)).is_break() {
                            return Ok(());
                        }
                    }
                }
                None => {
                    if sink(Err(RecordError::new(loc, "annotation without `question_id`"))).is_break() {
                        return Ok(());
                    }
                }
            }
        }
    }

    let images_dir = opts.images_dir_for(path);
    let mut image_cache: HashMap<String, String> = HashMap::new();
    let mut lines = LineCounter::new(&buf);
    for (i, raw) in questions.iter().enumerate() {
        let loc = Location::at(&file, lines.line_of(raw.get()), i as u64);
        let rec = json::parse_object(&loc, raw.get()).and_then(|m| {
            let mut f = Fields::new(&loc, m);
            let qid = f.opt_id("question_id")?.ok_or_else(|| f.err("question without `question_id`"))?;
            let image_id =
                f.opt_id("image_id")?.ok_or_else(|| f.err("question without `image_id`").id(Some(qid.clone())))?;
            let question = f.str("question").map_err(|e| e.id(Some(qid.clone())))?;
            let image = match f.opt_str("image")? {
                Some(p) => p,
                None => image_cache
                    .entry(image_id.clone())
                    .or_insert_with(|| coco_image_path(&images_dir, subtype.as_deref(), &image_id))
                    .clone(),
            };
            let mut r = Record::new(Task::Vqa, question, loc.clone());
            r.images = vec![ImageSource::Path(image)];
            r.meta = f.rest();
            r.meta.insert("image_id".into(), json::id_value(&image_id));
            if let Some(s) = &subtype {
                r.meta.insert("data_subtype".into(), Value::from(s.clone()));
            }
            if let Some((aloc, araw)) = answers.remove(&qid) {
                let m = json::parse_object(&aloc, araw.get())?;
                let mut af = Fields::new(&aloc, m);
                af.take("question_id");
                af.take("image_id");
                r.answer = Some(parse_answers(&mut af).map_err(|e| e.id(Some(qid.clone())))?);
                for (k, v) in af.rest() {
                    r.meta.insert(k, v);
                }
            }
            r.id = Some(qid);
            Ok(r)
        });
        if sink(rec).is_break() {
            return Ok(());
        }
    }
    for (qid, (loc, _)) in answers {
        let e =
            RecordError::new(loc, format!("annotation for question_id {qid}, which the questions file does not have"))
                .hint("are the questions and annotations files of the same split?");
        if sink(Err(e)).is_break() {
            break;
        }
    }
    Ok(())
}

fn question_id_of(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Q {
        question_id: Value,
    }
    serde_json::from_str::<Q>(raw.get()).ok().and_then(|q| json::id_text(&q.question_id))
}

fn parse_answers(f: &mut Fields) -> Result<Answer, RecordError> {
    let text = f.opt_str("multiple_choice_answer")?;
    let list = f.opt_array("answers")?.unwrap_or_default();
    let mut all = Vec::with_capacity(list.len());
    for (i, a) in list.into_iter().enumerate() {
        let Value::Object(mut a) = a else {
            return Err(f.err(format!("`answers[{i}]` must be an object, found {}", kind(&a))));
        };
        let answer = match a.shift_remove("answer") {
            Some(Value::String(s)) => s,
            _ => return Err(f.err(format!("`answers[{i}]` needs a string `answer`"))),
        };
        let confidence = a.shift_remove("answer_confidence").and_then(|c| c.as_str().map(String::from));
        all.push(HumanAnswer { answer, confidence });
    }
    Ok(Answer { text, all })
}

/// The first COCO-style file name for `image_id` that exists, or the canonical one (so a
/// missing image is reported under the name people expect).
pub(crate) fn coco_image_path(dir: &Path, subtype: Option<&str>, image_id: &str) -> String {
    let Ok(n) = image_id.parse::<u64>() else {
        return format!("{image_id}.jpg");
    };
    let mut names = Vec::new();
    if let Some(s) = subtype {
        // test-dev2015 is a subset of test2015: its images are named and filed as test2015.
        let s = s.replace("test-dev", "test");
        names.push(format!("COCO_{s}_{n:012}.jpg"));
        names.push(format!("{s}/COCO_{s}_{n:012}.jpg"));
    }
    names.push(format!("{n:012}.jpg"));
    names.iter().find(|c| dir.join(c).is_file()).cloned().unwrap_or_else(|| names[0].clone())
}

pub(crate) fn write(
    out: &Path,
    records: &mut dyn Iterator<Item = Record>,
    opts: &WriteOptions,
) -> Result<WriteSummary, FormatError> {
    let mut ids = crate::coco::ImageIds::new();
    let mut questions = Vec::new();
    let mut annotations = Vec::new();
    let mut subtype = opts.data_subtype.clone();
    let mut next_qid = 1i64;
    let mut used_qids = std::collections::HashSet::new();
    let mut n = 0u64;
    let mut staged = Vec::new();
    for r in records {
        n += 1;
        if subtype.is_none() {
            subtype = r.meta.get("data_subtype").and_then(Value::as_str).map(String::from);
        }
        let qid = r.id.as_deref().and_then(|i| i.parse::<i64>().ok()).filter(|q| used_qids.insert(*q));
        staged.push((qid, r));
    }
    for (qid, r) in staged {
        let qid = qid.unwrap_or_else(|| {
            while used_qids.contains(&next_qid) {
                next_qid += 1;
            }
            used_qids.insert(next_qid);
            next_qid
        });
        let mut meta = r.meta.clone();
        let wanted = meta.shift_remove("image_id").and_then(|v| v.as_i64());
        meta.shift_remove("data_subtype");
        let (image_id, _) = ids.get(&r, wanted);
        let question_type = meta.shift_remove("question_type");
        let answer_type = meta.shift_remove("answer_type");
        // Fields that came with the question stay on the question.
        let mut q = meta;
        q.insert("question_id".into(), Value::from(qid));
        q.insert("image_id".into(), Value::from(image_id));
        q.insert("question".into(), Value::from(strip_tags(&r.question)));
        if let Some(img) = r.images.first() {
            q.insert("image".into(), Value::from(image_ref::to_string(img)));
        }
        questions.push(Value::Object(q));
        let Some(answer) = &r.answer else { continue };
        let all: Vec<Value> = if answer.all.is_empty() {
            answer
                .text
                .iter()
                .map(|t| serde_json::json!({"answer_id": 1, "answer": t, "answer_confidence": "yes"}))
                .collect()
        } else {
            answer
                .all
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let mut m = Map::new();
                    m.insert("answer_id".into(), Value::from(i as u64 + 1));
                    m.insert("answer".into(), Value::from(a.answer.clone()));
                    if let Some(c) = &a.confidence {
                        m.insert("answer_confidence".into(), Value::from(c.clone()));
                    }
                    Value::Object(m)
                })
                .collect()
        };
        let mut a = Map::new();
        a.insert("question_id".into(), Value::from(qid));
        a.insert("image_id".into(), Value::from(image_id));
        a.insert("question_type".into(), question_type.unwrap_or_else(|| Value::from("none of the above")));
        a.insert("answer_type".into(), answer_type.unwrap_or_else(|| Value::from("other")));
        if let Some(t) = answer.text.clone().or_else(|| answer.best().map(String::from)) {
            a.insert("multiple_choice_answer".into(), Value::from(t));
        }
        a.insert("answers".into(), Value::Array(all));
        annotations.push(Value::Object(a));
    }
    let subtype = subtype.unwrap_or_else(|| "mmloop".into());
    let license = serde_json::json!({"name": "", "url": ""});
    let info = serde_json::json!({"description": "exported by mmloop"});
    let qdoc = serde_json::json!({
        "info": info, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": subtype,
        "license": license, "questions": questions,
    });
    let adoc = serde_json::json!({
        "info": info, "data_type": "mscoco", "data_subtype": subtype, "license": license,
        "annotations": annotations,
    });
    let qpath = out.join(format!("v2_OpenEnded_mscoco_{subtype}_questions.json"));
    let apath = out.join(format!("v2_mscoco_{subtype}_annotations.json"));
    let mut qf = AtomicFile::create(&qpath)?;
    qf.json(&qdoc)?;
    let mut af = AtomicFile::create(&apath)?;
    af.json(&adoc)?;
    let files = vec![qf.commit()?, af.commit()?];
    Ok(WriteSummary { records: n, files, notes: Vec::new() })
}

/// Tagless formats show the question without `<image>` placeholders.
pub(crate) fn strip_tags(q: &str) -> String {
    if !q.contains(crate::conversation::IMAGE_TAG) {
        return q.to_string();
    }
    q.replace(crate::conversation::IMAGE_TAG, "").trim().to_string()
}
