//! Helpers shared by the format tests: finding fixtures, reading a whole file, a readable
//! text view of records for snapshots, and what each writer is documented to keep.
//!
//! Never used by the crate itself; nothing here may reach the network or need Python.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmloop_core::{Answer, ImageSource, LabelStatus, Location, Message, Record, RecordError, Task};
use mmloop_formats::{Format, FormatError, ReadOptions, WriteOptions, WriteSummary};
use serde_json::{Map, Value};

/// The folder of golden input files, `tests/fixtures/formats/` at the repository root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/formats").canonicalize().expect("fixtures folder")
}

pub fn fixture(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

/// Everything a reader handed its sink, in order, and how it ended.
pub struct Read {
    pub records: Vec<Record>,
    pub errors: Vec<RecordError>,
    pub result: Result<(), FormatError>,
}

/// Reads a whole file, continuing past record errors.
pub fn read(format: Format, path: &Path, opts: &ReadOptions) -> Read {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    let result = mmloop_formats::read(format, path, opts, &mut |r| {
        match r {
            Ok(r) => records.push(r),
            Err(e) => errors.push(e),
        }
        ControlFlow::Continue(())
    });
    Read { records, errors, result }
}

/// Reads a file that must read cleanly.
pub fn read_ok(format: Format, path: &Path, opts: &ReadOptions) -> Vec<Record> {
    let r = read(format, path, opts);
    if let Err(e) = &r.result {
        panic!("{format} reader failed on {}: {e}", path.display());
    }
    if !r.errors.is_empty() {
        let msgs: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
        panic!("{format} reader gave record errors on {}:\n{}", path.display(), msgs.join("\n"));
    }
    r.records
}

/// Writes records into a fresh temporary folder as `name`.
pub fn write(format: Format, records: &[Record], name: &str, opts: &WriteOptions) -> (tempfile::TempDir, WriteSummary) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join(name);
    let summary = mmloop_formats::write(format, &out, &mut records.iter().cloned(), opts)
        .unwrap_or_else(|e| panic!("{format} writer failed: {e}"));
    assert_eq!(summary.records, records.len() as u64, "{format} writer counted records");
    (dir, summary)
}

/// The text of every file a writer produced, each under its name, with the temporary
/// folder's path replaced by `$OUT`.
pub fn written_text(dir: &Path, summary: &WriteSummary) -> String {
    let mut files = summary.files.clone();
    files.sort();
    let mut s = String::new();
    for f in files {
        let name = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let _ = writeln!(s, "===== {name} =====");
        s.push_str(&text);
        if !text.ends_with('\n') {
            s.push_str("\n(no newline at end of file)\n");
        }
    }
    s.replace(&dir.display().to_string(), "$OUT")
}

/// The main file a writer produced for reading back (VQAv2: the questions file).
pub fn main_output(format: Format, summary: &WriteSummary) -> PathBuf {
    match format {
        Format::Vqav2 => summary
            .files
            .iter()
            .find(|f| f.to_string_lossy().ends_with("_questions.json"))
            .expect("a questions file")
            .clone(),
        _ => summary.files[0].clone(),
    }
}

/// Where a location points, with the fixtures folder shown as `$FIXTURES`.
pub fn show_location(loc: &Location) -> String {
    loc.to_string()
}

fn show_image(img: &ImageSource) -> String {
    match img {
        ImageSource::Path(p) => format!("path {p:?}"),
        ImageSource::Url(u) => format!("url {u:?}"),
        ImageSource::Bytes(b) => {
            let kind = if b.starts_with(b"\x89PNG") {
                "png"
            } else if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
                "jpeg"
            } else {
                "other"
            };
            format!("bytes {} ({kind})", b.len())
        }
    }
}

fn show_answer(a: &Answer) -> String {
    let mut parts = Vec::new();
    if let Some(t) = &a.text {
        parts.push(format!("{t:?}"));
    }
    if !a.all.is_empty() {
        let all: Vec<String> = a
            .all
            .iter()
            .map(|h| match &h.confidence {
                Some(c) => format!("{:?}/{c}", h.answer),
                None => format!("{:?}", h.answer),
            })
            .collect();
        parts.push(format!("all [{}]", all.join(", ")));
    }
    if parts.is_empty() {
        parts.push("(empty)".into());
    }
    parts.join("; ")
}

/// A readable, stable view of records: one block per record, one line per field that is
/// set, strings quoted so that whitespace and newlines show.
pub fn view(records: &[Record]) -> String {
    let mut s = String::new();
    for (i, r) in records.iter().enumerate() {
        let _ = writeln!(s, "#{i} @ {}", show_location(&r.source));
        if let Some(id) = &r.id {
            let _ = writeln!(s, "  id: {id:?}");
        }
        let _ = writeln!(s, "  task: {}", r.task);
        let _ = writeln!(s, "  question: {:?}", r.question);
        for m in &r.context {
            let _ = writeln!(s, "  context: {} {:?}", m.role, m.content);
        }
        if let Some(c) = &r.conversation {
            let _ = writeln!(s, "  conversation: {c:?} turn {}", r.turn);
        } else if r.turn != 0 {
            let _ = writeln!(s, "  turn: {}", r.turn);
        }
        for img in &r.images {
            let _ = writeln!(s, "  image: {}", show_image(img));
        }
        if let Some(a) = &r.answer {
            let _ = writeln!(s, "  answer: {}", show_answer(a));
        }
        if let Some(st) = r.status {
            let _ = writeln!(s, "  status: {st}");
        }
        for p in &r.predictions {
            let score = p.score.map(|x| format!(" score {x}")).unwrap_or_default();
            let _ = writeln!(s, "  prediction: {:?} by {:?}{score}", p.answer, p.model);
        }
        if let Some(sp) = &r.split {
            let _ = writeln!(s, "  split: {sp:?}");
        }
        if !r.tags.is_empty() {
            let _ = writeln!(s, "  tags: {:?}", r.tags);
        }
        if !r.meta.is_empty() {
            let _ = writeln!(s, "  meta: {}", Value::Object(r.meta.clone()));
        }
    }
    s.replace(&fixtures().display().to_string(), "$FIXTURES")
}

// ---------------------------------------------------------------------------------------
// What survives a write and a read back, per format.

/// Records with what no writer can keep cleared: where they were read from, and the
/// conversation keys, which for conversations without an id are that location (so they
/// are compared by which records share one, not by their text).
pub fn comparable(records: &[Record]) -> Vec<Record> {
    let nowhere = Location::file(&Arc::new(PathBuf::from("-")));
    let mut keys: Vec<String> = Vec::new();
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.source = nowhere.clone();
            r.conversation = r.conversation.map(|c| {
                let n = keys.iter().position(|k| *k == c).unwrap_or_else(|| {
                    keys.push(c);
                    keys.len() - 1
                });
                format!("conversation {n}")
            });
            r
        })
        .collect()
}

/// Asserts two record lists are equal but for locations, with a readable diff.
pub fn assert_same(got: &[Record], want: &[Record], what: &str) {
    let (g, w) = (comparable(got), comparable(want));
    if g != w {
        panic!("{what}: records differ\n--- got\n{}--- want\n{}", view(&g), view(&w));
    }
}

pub const IMAGE_TAG: &str = "<image>";

/// The question as tag-less formats (VQAv2, TextVQA, Label Studio VQA) write it.
pub fn strip_tags(q: &str) -> String {
    if q.contains(IMAGE_TAG) { q.replace(IMAGE_TAG, "").trim().to_string() } else { q.to_string() }
}

/// One conversation as the chat formats write it: its messages, images, id and the fields
/// of the row that have no place in a record.
#[derive(Clone, Debug)]
pub struct Chat {
    pub id: Option<String>,
    pub task: Task,
    pub messages: Vec<Message>,
    pub images: Vec<ImageSource>,
    pub meta: Map<String, Value>,
    pub split: Option<String>,
}

/// The records a conversation is documented to read as (ms-swift's rules, which LLaVA
/// and ShareGPT readers share): one per assistant turn, plus one for a trailing question;
/// the i-th `<image>` tag binds the i-th image, images without a tag belong to the first
/// non-system message; each record keeps the messages before its question as context;
/// turns of a multi-turn conversation are `id#turn` and share a conversation key.
/// Written from the docs, independently of the reader.
pub fn chat_records(chat: &Chat) -> Vec<Record> {
    let m = &chat.messages;
    let tags: usize = m.iter().map(|x| x.content.matches(IMAGE_TAG).count()).sum();
    let untagged = chat.images.len().saturating_sub(tags);
    let first_non_system = m.iter().position(|x| x.role != "system");
    let mut bound = Vec::new();
    let mut n = 0;
    for (i, x) in m.iter().enumerate() {
        if Some(i) == first_non_system {
            n += untagged;
        }
        n += x.content.matches(IMAGE_TAG).count();
        bound.push(n.min(chat.images.len()));
    }
    let mut turns = Vec::new();
    for (i, x) in m.iter().enumerate() {
        if x.role == "assistant" {
            let q = (i > 0 && m[i - 1].role == "user").then(|| i - 1);
            turns.push((q, Some(i)));
        } else if x.role == "user" && i + 1 == m.len() {
            turns.push((Some(i), None));
        }
    }
    // Without an id the reader keys a conversation by its location: unique per row.
    static ROWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let row = ROWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let key = (turns.len() > 1).then(|| chat.id.clone().unwrap_or_else(|| format!("row {row}")));
    let last_turn = turns.len().saturating_sub(1);
    turns
        .iter()
        .enumerate()
        .map(|(t, &(q, a))| {
            let start = q.or(a).expect("a turn");
            let loc = Location::file(&Arc::new(PathBuf::from("-")));
            let mut r = Record::new(chat.task, q.map(|q| m[q].content.clone()).unwrap_or_default(), loc);
            r.id = chat.id.as_ref().map(|id| if key.is_some() { format!("{id}#{t}") } else { id.clone() });
            r.context = m[..start].to_vec();
            r.conversation = key.clone();
            r.turn = t as u32;
            r.images = chat.images[..bound[a.unwrap_or(start)]].to_vec();
            r.answer = a.map(|a| Answer::text(m[a].content.clone()));
            r.split = chat.split.clone();
            if t == last_turn {
                r.meta = chat.meta.clone();
            }
            r
        })
        .collect()
}

/// The conversations a record stream holds (consecutive records sharing a key), rebuilt
/// into messages the way a writer joins them.
pub fn chats(records: &[Record]) -> Vec<Chat> {
    let mut out: Vec<Chat> = Vec::new();
    let mut i = 0;
    while i < records.len() {
        let mut j = i + 1;
        if let Some(k) = &records[i].conversation {
            while j < records.len() && records[j].conversation.as_ref() == Some(k) {
                j += 1;
            }
        }
        let last = &records[j - 1];
        let mut messages = last.context.clone();
        if !last.question.is_empty() || last.answer.is_none() {
            messages.push(Message::new("user", last.question.clone()));
        }
        if let Some(a) = last.answer.as_ref().and_then(Answer::best) {
            messages.push(Message::new("assistant", a));
        }
        let id = last.id.as_ref().map(|id| match (&last.conversation, id.rsplit_once('#')) {
            (Some(_), Some((base, t))) if t.parse::<u32>().is_ok() => base.to_string(),
            _ => id.clone(),
        });
        out.push(Chat {
            id,
            task: last.task,
            messages,
            images: last.images.clone(),
            meta: last.meta.clone(),
            split: last.split.clone(),
        });
        i = j;
    }
    out
}

/// Prepends the `<image>` tags a conversation lacks to its first user message, as the
/// LLaVA (`sep` "\n") and ShareGPT ("") writers do for their loaders.
pub fn ensure_tags(chat: &mut Chat, sep: &str) {
    let tags: usize = chat.messages.iter().map(|m| m.content.matches(IMAGE_TAG).count()).sum();
    if tags >= chat.images.len() {
        return;
    }
    if let Some(m) = chat.messages.iter_mut().find(|m| m.role == "user") {
        let prefix = IMAGE_TAG.repeat(chat.images.len() - tags);
        m.content = format!("{prefix}{sep}{}", m.content);
    }
}

/// What reading back `format`'s output of `records` is documented to give: the
/// normalisations each writer makes, format by format. Meta keys that a reader adds
/// (COCO `image`, VQAv2/TextVQA `image_id`...) are not predicted here; callers compare
/// those by writing twice.
pub fn after_round_trip(format: Format, records: &[Record], opts: &ReadOptions) -> Vec<Record> {
    let chat = |edit: &dyn Fn(&mut Chat, &mut u64)| -> Vec<Record> {
        let mut auto = 0;
        chats(records)
            .into_iter()
            .flat_map(|mut c| {
                edit(&mut c, &mut auto);
                chat_records(&c)
            })
            .collect()
    };
    match format {
        // The swift writer always writes `messages`; model answers (`swift infer` rows)
        // are not training data and are not written.
        Format::Swift => chat(&|c, _| c.split = None),
        // LLaVA has no system turn, needs one `<image>` per image and an id per item.
        Format::Llava => chat(&|c, auto| {
            c.messages.retain(|m| m.role != "system");
            ensure_tags(c, "\n");
            if c.id.is_none() {
                *auto += 1;
                c.id = Some(format!("{auto:06}"));
            }
            c.split = None;
        }),
        // LLaMA-Factory needs one `<image>` per image.
        Format::ShareGpt => chat(&|c, _| {
            ensure_tags(c, "");
            c.split = None;
        }),
        _ => records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.image_info.clear();
                match format {
                    Format::Coco => {
                        r.task = Task::Caption;
                        r.question =
                            opts.prompt.clone().unwrap_or_else(|| mmloop_formats::DEFAULT_CAPTION_PROMPT.into());
                        r.answer = r.answer.as_ref().and_then(Answer::best).map(Answer::text);
                        r.images.truncate(1);
                        clear_chat(&mut r);
                        r.status = None;
                        r.predictions.clear();
                    }
                    Format::Vqav2 => {
                        r.task = Task::Vqa;
                        r.question = strip_tags(&r.question);
                        r.images.truncate(1);
                        if let Some(a) = &mut r.answer {
                            if a.all.is_empty() {
                                // A lone answer is written as one human answer, sure of itself.
                                a.all = a
                                    .text
                                    .iter()
                                    .map(|t| mmloop_core::HumanAnswer {
                                        answer: t.clone(),
                                        confidence: Some("yes".into()),
                                    })
                                    .collect();
                            }
                            a.text = a.text.clone().or_else(|| a.best().map(String::from));
                        }
                        clear_chat(&mut r);
                        r.split = None;
                        r.status = None;
                        r.predictions.clear();
                    }
                    Format::TextVqa => {
                        r.task = Task::Vqa;
                        r.question = strip_tags(&r.question);
                        r.images.truncate(1);
                        if let Some(a) = &mut r.answer {
                            if a.all.is_empty() {
                                a.all = a
                                    .text
                                    .iter()
                                    .map(|t| mmloop_core::HumanAnswer { answer: t.clone(), confidence: None })
                                    .collect();
                            }
                            a.text = None;
                            a.all.iter_mut().for_each(|h| h.confidence = None);
                        }
                        clear_chat(&mut r);
                        r.status = None;
                        r.predictions.clear();
                    }
                    Format::LabelStudio => {
                        if r.task == Task::Vqa {
                            r.question = strip_tags(&r.question);
                        }
                        r.images.truncate(1);
                        r.answer = r.answer.filter(|a| !a.is_empty()).map(|a| {
                            let texts: Vec<String> = if a.all.is_empty() {
                                a.text.into_iter().collect()
                            } else {
                                a.all.into_iter().map(|h| h.answer).collect()
                            };
                            match texts.len() {
                                1 => Answer::text(texts[0].clone()),
                                _ => Answer {
                                    text: None,
                                    all: texts
                                        .into_iter()
                                        .map(|answer| mmloop_core::HumanAnswer { answer, confidence: None })
                                        .collect(),
                                },
                            }
                        });
                        if r.answer.is_some() || r.status != Some(LabelStatus::Skipped) {
                            r.status = None;
                        }
                        r.meta = match r.meta.get("data") {
                            Some(Value::Object(d)) if !d.is_empty() => {
                                Map::from_iter([("data".to_string(), Value::Object(d.clone()))])
                            }
                            _ => Map::new(),
                        };
                        clear_chat(&mut r);
                        r.split = None;
                    }
                    Format::Jsonl | Format::Csv => {
                        r.answer = r.answer.filter(|a| !a.is_empty());
                        clear_chat(&mut r);
                        r.status = None;
                        r.predictions.clear();
                    }
                    Format::Parquet => {
                        r.answer = r.answer.filter(|a| !a.is_empty());
                        r.status = None;
                        r.predictions.clear();
                    }
                    _ => unreachable!("{format} is handled above"),
                }
                r.tags.clear();
                r
            })
            .collect(),
    }
}

fn clear_chat(r: &mut Record) {
    r.context.clear();
    r.conversation = None;
    r.turn = 0;
}

/// Whether every key of `want` is in `got` with the same value (readers of COCO, VQAv2
/// and TextVQA add keys of their own).
pub fn meta_contains(got: &Map<String, Value>, want: &Map<String, Value>) -> bool {
    want.iter().all(|(k, v)| got.get(k).is_some_and(|g| json_contains(g, v)))
}

fn json_contains(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => meta_contains(g, w),
        _ => got == want,
    }
}
