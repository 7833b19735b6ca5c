//! Reference answers: what each prediction is scored against, read from the common
//! files or built from dataset records.
//!
//! Dataset formats go through `mmloop-formats` (COCO captions, VQAv2 questions with their
//! annotations, TextVQA, ms-swift/LLaVA/ShareGPT, plain JSONL/CSV) and then
//! [`References::from_records`], which is also how a project version becomes references.
//! Files that are not datasets are read here: a VQAv2 annotations file on its own, rows
//! of `{id, answer(s)}`, multiple-choice tables (`index`, `question`, `A`..`D`, `answer`,
//! `category`, `l2-category`, as MMBench's TSV) and MME's tab-separated result files.
//! This module reads files; it never scores.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmloop_core::{ImageSource, Record, Task};
use mmloop_formats::{Format, ReadOptions};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{EvalError, Place};
use crate::input::{self, ID_KEYS, Row, first_key, id_text, kind};
use crate::mme;

/// What kind of evaluation a reference set calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalTask {
    /// Short answers: VQA accuracy, exact match, F1, ANLS.
    Vqa,
    /// Image captions: BLEU, METEOR, ROUGE-L, CIDEr-D.
    Caption,
    /// Multiple choice with option letters: accuracy, MMBench circular.
    Choice,
    /// MME yes/no pairs.
    Mme,
}

impl EvalTask {
    pub fn name(self) -> &'static str {
        match self {
            EvalTask::Vqa => "vqa",
            EvalTask::Caption => "caption",
            EvalTask::Choice => "choice",
            EvalTask::Mme => "mme",
        }
    }
}

impl std::str::FromStr for EvalTask {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "vqa" => Ok(EvalTask::Vqa),
            "caption" | "captions" | "captioning" => Ok(EvalTask::Caption),
            "choice" | "mc" | "multiple-choice" | "mcq" => Ok(EvalTask::Choice),
            "mme" => Ok(EvalTask::Mme),
            _ => Err(EvalError::usage(format!("unknown task `{s}`"), "use one of: vqa, caption, choice, mme")),
        }
    }
}

/// The ground truth of one question or image.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// What predictions name it by: question_id, image_id (captions), index, id.
    pub id: String,
    /// VQA: the human answers (VQAv2 and TextVQA have 10); captions: the reference
    /// captions; multiple choice: the answer letter; MME: `yes` or `no`.
    pub answers: Vec<String>,
    pub question: Option<String>,
    pub question_type: Option<String>,
    pub answer_type: Option<String>,
    /// The image, resolved against the images folder when it is a relative path.
    pub image: Option<ImageSource>,
    /// Multiple choice: `(letter, option text)` in letter order.
    pub choices: Vec<(char, String)>,
    pub category: Option<String>,
    pub l2_category: Option<String>,
    /// MME: the subtask (the result file's name).
    pub mme_task: Option<String>,
    pub at: Place,
}

impl Reference {
    pub fn new(id: String, answers: Vec<String>, at: Place) -> Self {
        Reference {
            id,
            answers,
            question: None,
            question_type: None,
            answer_type: None,
            image: None,
            choices: Vec::new(),
            category: None,
            l2_category: None,
            mme_task: None,
            at,
        }
    }
}

/// A reference set and where it came from.
#[derive(Debug, Clone)]
pub struct References {
    pub task: EvalTask,
    /// The file, or `PROJECT@version`.
    pub source: String,
    /// How it was read: `coco`, `vqav2`, `vqav2-annotations`, `textvqa`, `rows`, `choice-table`, `mme`, `project`, ...
    pub format: String,
    /// A project version's name and id, when the references come from a project.
    pub version: Option<String>,
    pub items: Vec<Reference>,
}

/// Options for reading a reference file.
#[derive(Debug, Clone, Default)]
pub struct RefOptions {
    /// Where relative image paths resolve (default: the reference file's folder).
    pub images_dir: Option<PathBuf>,
    /// VQAv2: the annotations file that goes with a questions file.
    pub annotations: Option<PathBuf>,
    /// Force the task instead of telling it from the file.
    pub task: Option<EvalTask>,
}

const REF_LIST_KEYS: &[&str] = &["answers", "captions", "references", "gt_answers", "labels"];
const REF_ONE_KEYS: &[&str] = &["answer", "caption", "label", "gt", "ground_truth", "reference"];

/// Reads a reference file in any of the supported layouts.
pub fn read_references(path: &Path, opts: &RefOptions) -> Result<References, EvalError> {
    if path.is_dir() {
        return Ok(mme_references(path, mme::read_dir(path)?));
    }
    let (file, text) = input::read_text(path)?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let source = path.display().to_string();
    let images_dir =
        opts.images_dir.clone().unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
    if matches!(ext.as_str(), "tsv" | "csv" | "txt") {
        if mme::looks_like(&text) {
            return Ok(mme_references(path, mme::read_text(&file, &text)?));
        }
        let rows = input::table_rows(&file, &text, if ext == "csv" { b',' } else { b'\t' })?;
        if rows.first().is_some_and(|r| is_choice_row(&r.fields)) {
            let items = rows.iter().map(|r| reference_from_row(r, &images_dir, true)).collect::<Result<_, _>>()?;
            return finish(EvalTask::Choice, source, "choice-table", items, opts);
        }
        let records = read_records(Format::Csv, path, opts)?;
        return References::from_records(records, &images_dir, opts.task, source, "csv");
    }
    match input::first_byte(&text) {
        Some(b'{') if !is_json_lines(&text) => {
            // A compact document is one line, already read by `is_json_lines`.
            let first = text.trim();
            let keys = match (!first.contains('\n')).then(|| serde_json::from_str::<TopKeys>(first).ok()).flatten() {
                Some(k) => k,
                None => top_level_keys(&file, &text)?,
            };
            if keys.annotations && !keys.images && !keys.questions {
                let items = vqa_annotations(&file, &text)?;
                return finish(EvalTask::Vqa, source, "vqav2-annotations", items, opts);
            }
            if keys.images && keys.annotations && !keys.questions && opts.task.is_none_or(|t| t == EvalTask::Caption) {
                let items = coco_captions(&file, &text, &images_dir)?;
                return finish(EvalTask::Caption, source, "coco", items, opts);
            }
            let format = if keys.questions {
                Format::Vqav2
            } else if keys.data {
                Format::TextVqa
            } else {
                mmloop_formats::detect(path)?
            };
            let records = read_records(format, path, opts)?;
            References::from_records(records, &images_dir, opts.task, source, format.name())
        }
        _ => {
            let rows = input::json_rows(&file, &text)?;
            let Some(first) = rows.first() else {
                return Err(EvalError::input(Place::file(&file), "no references in the file", "check the path"));
            };
            let dataset =
                ["messages", "conversations", "conversation", "query"].iter().any(|k| first.fields.contains_key(*k));
            if dataset {
                let format = mmloop_formats::detect(path)?;
                let records = read_records(format, path, opts)?;
                return References::from_records(records, &images_dir, opts.task, source, format.name());
            }
            let choice = is_choice_row(&first.fields);
            let items =
                rows.iter().map(|r| reference_from_row(r, &images_dir, choice)).collect::<Result<Vec<_>, _>>()?;
            let task = if choice {
                EvalTask::Choice
            } else if first.fields.contains_key("caption") || first.fields.contains_key("captions") {
                EvalTask::Caption
            } else {
                EvalTask::Vqa
            };
            let (format, items) =
                if task == EvalTask::Caption { ("caption-rows", group_captions(items)) } else { ("rows", items) };
            finish(task, source, format, items, opts)
        }
    }
}

/// The reference an MME line carries: its truth, question and subtask.
pub(crate) fn mme_reference(l: &mme::Line) -> Reference {
    let mut r = Reference::new(l.id.clone(), vec![l.truth.clone()], l.at.clone());
    r.question = Some(l.question.clone());
    r.mme_task = Some(l.task.clone());
    r
}

fn mme_references(path: &Path, lines: Vec<mme::Line>) -> References {
    References {
        task: EvalTask::Mme,
        source: path.display().to_string(),
        format: "mme".into(),
        version: None,
        items: lines.iter().map(mme_reference).collect(),
    }
}

fn finish(
    task: EvalTask,
    source: String,
    format: &str,
    items: Vec<Reference>,
    opts: &RefOptions,
) -> Result<References, EvalError> {
    let refs = References { task: opts.task.unwrap_or(task), source, format: format.to_string(), version: None, items };
    refs.check_duplicates()?;
    Ok(refs)
}

impl References {
    /// Builds references from dataset records (a file read by `mmloop-formats`, or a
    /// project version): VQA items by their id with all human answers, captions grouped
    /// by image (COCO `image_id`, else the image path) with their captions in order.
    pub fn from_records(
        records: Vec<Record>,
        images_dir: &Path,
        task: Option<EvalTask>,
        source: String,
        format: &str,
    ) -> Result<References, EvalError> {
        let caption = records.first().is_some_and(|r| r.task == Task::Caption);
        let task = task.unwrap_or(if caption { EvalTask::Caption } else { EvalTask::Vqa });
        let mut items: Vec<Reference> = Vec::with_capacity(records.len());
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for r in records {
            let at = Place { file: r.source.file.clone(), line: r.source.line };
            let answers: Vec<String> = match &r.answer {
                Some(a) if !a.all.is_empty() => a.all.iter().map(|h| h.answer.clone()).collect(),
                Some(a) => a.text.iter().cloned().collect(),
                None => Vec::new(),
            };
            let image = || r.images.first().map(|s| resolve_image(s, images_dir));
            if task == EvalTask::Caption {
                let key = caption_key(&r).ok_or_else(|| {
                    EvalError::input(
                        at.clone(),
                        "caption item without an image or id",
                        "caption references are matched by image_id",
                    )
                })?;
                match by_key.get(&key) {
                    Some(&i) => items[i].answers.extend(answers),
                    None => {
                        by_key.insert(key.clone(), items.len());
                        let mut rf = Reference::new(key, answers, at);
                        rf.image = image();
                        items.push(rf);
                    }
                }
                continue;
            }
            let Some(id) = r.id.clone() else {
                return Err(EvalError::input(
                    at,
                    "item without an id",
                    "predictions are matched to references by id (question_id); give every item one",
                ));
            };
            let mut rf = Reference::new(id, answers, at);
            rf.question = Some(strip_image_tags(&r.question));
            rf.question_type = r.meta.get("question_type").and_then(Value::as_str).map(String::from);
            rf.answer_type = r.meta.get("answer_type").and_then(Value::as_str).map(String::from);
            rf.image = image();
            if task == EvalTask::Choice {
                rf.choices = choices_of(&r.meta);
                rf.category = r.meta.get("category").and_then(Value::as_str).map(String::from);
                rf.l2_category =
                    r.meta.get("l2-category").or(r.meta.get("l2_category")).and_then(Value::as_str).map(String::from);
            }
            items.push(rf);
        }
        let refs = References { task, source, format: format.to_string(), version: None, items };
        refs.check_duplicates()?;
        Ok(refs)
    }

    fn check_duplicates(&self) -> Result<(), EvalError> {
        let mut seen: HashMap<&str, &Place> = HashMap::with_capacity(self.items.len());
        for r in &self.items {
            if let Some(first) = seen.insert(&r.id, &r.at) {
                return Err(EvalError::input(
                    r.at.clone(),
                    format!("duplicate reference id {} (first at {first})", r.id),
                    "every question needs one reference entry; remove or renumber the duplicate",
                ));
            }
        }
        Ok(())
    }
}

fn read_records(format: Format, path: &Path, opts: &RefOptions) -> Result<Vec<Record>, EvalError> {
    let ropts = ReadOptions {
        images_dir: opts.images_dir.clone(),
        annotations: opts.annotations.clone(),
        task: match opts.task {
            Some(EvalTask::Caption) => Some(Task::Caption),
            _ => None,
        },
        ..Default::default()
    };
    let mut records = Vec::new();
    let mut failure = None;
    mmloop_formats::read(format, path, &ropts, &mut |r| match r {
        Ok(rec) => {
            records.push(rec);
            ControlFlow::Continue(())
        }
        Err(e) => {
            failure = Some(e);
            ControlFlow::Break(())
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(records)
}

/// Captions are matched by COCO `image_id` when the item has one, else by its image path.
fn caption_key(r: &Record) -> Option<String> {
    let meta_id = r.meta.get("image").and_then(|i| i.get("id")).or_else(|| r.meta.get("image_id")).and_then(id_text);
    meta_id.or_else(|| match r.images.first() {
        Some(ImageSource::Path(p)) | Some(ImageSource::Url(p)) => Some(p.clone()),
        _ => r.id.clone(),
    })
}

fn resolve_image(s: &ImageSource, dir: &Path) -> ImageSource {
    match s {
        ImageSource::Path(p) if Path::new(p).is_relative() => ImageSource::Path(dir.join(p).display().to_string()),
        other => other.clone(),
    }
}

fn strip_image_tags(q: &str) -> String {
    q.replace("<image>", "").trim().to_string()
}

/// JSON Lines when the first line is a whole object of its own that is not one of the
/// dataset documents (`{"annotations": ...}` on one line is still a document). Values are
/// skipped, not built: the first line of a compact annotation file is the whole file.
fn is_json_lines(text: &str) -> bool {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    match serde_json::from_str::<TopKeys>(first) {
        Ok(k) => !(k.annotations || k.images || k.questions || k.data),
        Err(_) => false,
    }
}

/// Which of the dataset documents' top-level keys a JSON object has.
#[derive(Deserialize, Default)]
struct TopKeys {
    #[serde(default, deserialize_with = "present")]
    annotations: bool,
    #[serde(default, deserialize_with = "present")]
    images: bool,
    #[serde(default, deserialize_with = "present")]
    questions: bool,
    #[serde(default, deserialize_with = "present")]
    data: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

fn top_level_keys(file: &Arc<PathBuf>, text: &str) -> Result<TopKeys, EvalError> {
    serde_json::from_str(text).map_err(|e| {
        EvalError::input(
            Place::new(file, e.line() as u64),
            format!("malformed JSON at column {}: {e}", e.column()),
            "fix the JSON there; `python -m json.tool FILE` shows the same position",
        )
    })
}

/// Line numbers of positions in a text, moving forward only.
struct Lines<'a> {
    text: &'a str,
    pos: usize,
    line: u64,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines { text, pos: 0, line: 1 }
    }

    /// The line `raw` (a slice of the text at or after the last one asked for) starts on.
    fn of(&mut self, raw: &str) -> u64 {
        let off = raw.as_ptr() as usize - self.text.as_ptr() as usize;
        if off > self.pos {
            self.line += self.text.as_bytes()[self.pos..off].iter().filter(|&&b| b == b'\n').count() as u64;
            self.pos = off;
        }
        self.line
    }
}

/// A COCO captions annotation file, read for evaluation only: the images in the order of
/// the `images` list (pycocoevalcap's `coco.getImgIds()` order, which its numpy means
/// depend on), each with its captions in annotation order and its file. Importing the
/// same file goes through `mmloop-formats`, which keeps every field for a round trip;
/// scoring needs three, and reads 25,000 images several times faster this way.
fn coco_captions(file: &Arc<PathBuf>, text: &str, images_dir: &Path) -> Result<Vec<Reference>, EvalError> {
    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        images: Vec<&'a RawValue>,
        #[serde(borrow)]
        annotations: Vec<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Image {
        id: Value,
        #[serde(default)]
        file_name: Option<String>,
    }
    #[derive(Deserialize)]
    struct Annotation {
        image_id: Value,
        caption: Option<String>,
    }
    let doc: Doc = serde_json::from_str(text).map_err(|e| {
        EvalError::input(
            Place::new(file, e.line() as u64),
            format!("not a COCO captions file: {e}"),
            "pass the captions_*.json annotation file ({\"images\": [...], \"annotations\": [...]})",
        )
    })?;
    let mut lines = Lines::new(text);
    let mut items: Vec<Reference> = Vec::with_capacity(doc.images.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(doc.images.len());
    for raw in doc.images {
        let at = Place::new(file, lines.of(raw.get()));
        let im: Image = serde_json::from_str(raw.get())
            .map_err(|e| EvalError::input(at.clone(), format!("bad image entry: {e}"), "each image needs an `id`"))?;
        let id = id_text(&im.id).ok_or_else(|| {
            EvalError::input(at.clone(), "image without a usable `id`", "ids are integers or strings")
        })?;
        if let Some(&first) = index.get(&id) {
            return Err(EvalError::input(
                at,
                format!("duplicate image id {id} (first at {})", items[first].at),
                "every image of the annotation file needs its own id",
            ));
        }
        index.insert(id.clone(), items.len());
        let mut r = Reference::new(id, Vec::new(), at);
        r.image = im.file_name.map(|n| resolve_image(&ImageSource::Path(n), images_dir));
        items.push(r);
    }
    for raw in doc.annotations {
        let at = Place::new(file, lines.of(raw.get()));
        let a: Annotation = serde_json::from_str(raw.get()).map_err(|e| {
            EvalError::input(
                at.clone(),
                format!("bad caption annotation: {e}"),
                "each annotation needs `image_id` and `caption`",
            )
        })?;
        let Some(caption) = a.caption else {
            return Err(EvalError::input(
                at,
                "annotation without `caption`",
                "this looks like a detection file (instances_*.json); pass a captions file (captions_*.json)",
            ));
        };
        let id = id_text(&a.image_id).unwrap_or_default();
        let Some(&i) = index.get(&id) else {
            return Err(EvalError::input(
                at,
                format!("`image_id` {id} is not in `images`"),
                "the annotation names an image the file does not list; is the file truncated or from another split?",
            ));
        };
        items[i].answers.push(caption);
    }
    // Test splits list images without captions: they are not references.
    items.retain(|r| !r.answers.is_empty());
    Ok(items)
}

/// A VQAv2 annotations file on its own (`{"annotations": [{question_id, answers, question_type, answer_type}]}`):
/// all the official script needs besides the questions' text.
fn vqa_annotations(file: &Arc<PathBuf>, text: &str) -> Result<Vec<Reference>, EvalError> {
    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        annotations: Vec<&'a RawValue>,
    }
    let doc: Doc = serde_json::from_str(text).map_err(|e| {
        EvalError::input(
            Place::new(file, e.line() as u64),
            format!("not a VQAv2 annotations file: {e}"),
            "pass the v2_mscoco_*_annotations.json file",
        )
    })?;
    #[derive(Deserialize)]
    struct Answer {
        answer: String,
    }
    #[derive(Deserialize)]
    struct Annotation {
        question_id: Value,
        #[serde(default)]
        question_type: Option<String>,
        #[serde(default)]
        answer_type: Option<String>,
        #[serde(default)]
        answers: Vec<Answer>,
    }
    let base = text.as_ptr() as usize;
    let (mut pos, mut line) = (0usize, 1u64);
    let mut out = Vec::with_capacity(doc.annotations.len());
    for raw in doc.annotations {
        let off = raw.get().as_ptr() as usize - base;
        line += text.as_bytes()[pos..off].iter().filter(|&&b| b == b'\n').count() as u64;
        pos = off;
        let at = Place::new(file, line);
        let a: Annotation = serde_json::from_str(raw.get()).map_err(|e| {
            EvalError::input(
                at.clone(),
                format!("not a VQAv2 annotation: {e}"),
                "each annotation needs question_id and answers[{answer}]",
            )
        })?;
        let id = id_text(&a.question_id).ok_or_else(|| {
            EvalError::input(at.clone(), "annotation without a usable `question_id`", "ids are integers or strings")
        })?;
        let mut r = Reference::new(id, a.answers.into_iter().map(|x| x.answer).collect(), at);
        r.question_type = a.question_type;
        r.answer_type = a.answer_type;
        out.push(r);
    }
    Ok(out)
}

fn is_choice_row(f: &Map<String, Value>) -> bool {
    (f.contains_key("A") && f.contains_key("B")) || f.contains_key("options") || f.contains_key("choices")
}

/// Options of a multiple-choice row: columns `A`..`Z` that are present and not empty
/// (pandas writes missing options as `nan`), or an `options`/`choices` list or object.
pub(crate) fn choices_of(f: &Map<String, Value>) -> Vec<(char, String)> {
    if let Some(v) = f.get("options").or_else(|| f.get("choices")) {
        return match v {
            Value::Array(a) => a
                .iter()
                .zip('A'..='Z')
                .filter_map(|(x, c)| x.as_str().map(|s| (c, strip_letter_prefix(s, c))))
                .collect(),
            Value::Object(o) => ('A'..='Z')
                .filter_map(|c| o.get(&c.to_string()).and_then(Value::as_str).map(|s| (c, s.to_string())))
                .collect(),
            _ => Vec::new(),
        };
    }
    ('A'..='Z')
        .filter_map(|c| {
            let v = f.get(&c.to_string())?;
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            (!s.trim().is_empty() && s != "nan").then_some((c, s))
        })
        .collect()
}

/// `"A. cat"` → `"cat"` when options repeat their letter.
fn strip_letter_prefix(s: &str, c: char) -> String {
    for sep in [". ", ") ", ": "] {
        if let Some(rest) = s.strip_prefix(&format!("{c}{sep}")) {
            return rest.to_string();
        }
    }
    s.to_string()
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "yes" } else { "no" }.to_string()),
        Value::Object(o) => o.get("answer").or_else(|| o.get("caption")).and_then(text_of),
        _ => None,
    }
}

/// The reference answers held by a row under one of the usual keys.
pub(crate) fn answers_of(f: &Map<String, Value>, at: &Place) -> Result<Option<Vec<String>>, EvalError> {
    if let Some(k) = first_key(f, REF_LIST_KEYS) {
        return match &f[k] {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    text_of(x).ok_or_else(|| {
                        EvalError::input(
                            at.clone(),
                            format!("`{k}[{i}]` is {}, expected a string", kind(x)),
                            "list the reference answers as strings",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Value::Null => Ok(None),
            v => text_of(v).map(|s| Some(vec![s])).ok_or_else(|| {
                EvalError::input(
                    at.clone(),
                    format!("`{k}` is {}, expected a list of strings", kind(v)),
                    "list the reference answers as strings",
                )
            }),
        };
    }
    if let Some(k) = first_key(f, REF_ONE_KEYS) {
        return match &f[k] {
            Value::Null => Ok(None),
            Value::Array(a) => Ok(Some(a.iter().filter_map(text_of).collect())),
            v => text_of(v).map(|s| Some(vec![s])).ok_or_else(|| {
                EvalError::input(
                    at.clone(),
                    format!("`{k}` is {}, expected a string", kind(v)),
                    "write the reference answer as a string",
                )
            }),
        };
    }
    Ok(None)
}

/// One reference from a row of a non-dataset file.
fn reference_from_row(row: &Row, images_dir: &Path, choice: bool) -> Result<Reference, EvalError> {
    let f = &row.fields;
    let id = first_key(f, ID_KEYS).and_then(|k| id_text(&f[k])).ok_or_else(|| {
        EvalError::input(
            row.at.clone(),
            "reference without an id",
            format!("give every reference one of: {}", ID_KEYS.join(", ")),
        )
    })?;
    let answers = answers_of(f, &row.at)?.unwrap_or_default();
    let mut r = Reference::new(id, answers, row.at.clone());
    let s = |k: &str| f.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
    r.question = s("question");
    r.question_type = s("question_type");
    r.answer_type = s("answer_type");
    r.image = match f.get("image").or_else(|| f.get("image_path")) {
        Some(Value::String(p)) if p.len() > 512 && !p.contains('/') => {
            // MMBench TSVs carry the image as base64.
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(p.trim()).ok().map(|b| ImageSource::Bytes(b.into()))
        }
        Some(Value::String(p)) => Some(resolve_image(&ImageSource::Path(p.clone()), images_dir)),
        _ => None,
    };
    if choice {
        r.choices = choices_of(f);
        r.category = s("category");
        r.l2_category = s("l2-category").or_else(|| s("l2_category"));
        let letter = r.answers.first().map(|a| a.trim().to_string()).unwrap_or_default();
        if letter.chars().count() != 1 || !r.choices.iter().any(|(c, _)| c.to_string() == letter) {
            return Err(EvalError::input(
                row.at.clone(),
                format!("multiple-choice answer {letter:?} is not one of the option letters"),
                "the `answer` column holds the correct letter (A, B, ...)",
            ));
        }
        r.answers = vec![letter];
    }
    Ok(r)
}

/// Caption rows (`{image_id, caption}`) hold one caption each: group them by id.
fn group_captions(items: Vec<Reference>) -> Vec<Reference> {
    let mut out: Vec<Reference> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for r in items {
        match by_id.get(&r.id) {
            Some(&i) => out[i].answers.extend(r.answers),
            None => {
                by_id.insert(r.id.clone(), out.len());
                out.push(r);
            }
        }
    }
    out
}
