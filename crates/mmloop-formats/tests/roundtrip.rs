//! Round trips: for every format that can be written, generated records written, read
//! back, written and read again. The first read must give what the format is documented
//! to keep (`common::after_round_trip` lists each writer's normalisations); the second
//! read must give exactly the first (read → write → read is lossless).
//!
//! Each generator makes only what its format can represent. What a format cannot carry,
//! and so is never generated for it:
//! - all formats: `image_info` (filled by the store), `tags`, `source` (compared apart);
//! - chat formats (ms-swift, LLaVA, ShareGPT): answers other than one text per turn,
//!   splits, review status, predictions (ms-swift's `swift infer` rows are read, never
//!   written); consecutive conversations sharing an id (they would be joined into one);
//! - LLaVA: system turns (the writer drops them: LLaVA has none);
//! - COCO: questions (the caption prompt comes from the reader), several images, uncaptioned
//!   items whose image has captions (the image is listed once), non-integer ids, URLs as
//!   images (`file_name` reads back as a path);
//! - VQAv2: non-integer ids (the writer gives fresh ones), splits, URLs as images;
//! - TextVQA: missing ids (the writer numbers them), confidences, URLs as images;
//! - Label Studio: several images, answer confidences, statuses other than `skipped`,
//!   meta outside `data`, absolute paths (written relative to the document root);
//! - CSV: empty strings (an empty cell reads as missing);
//! - all tables: conversation context (flat rows), review status, predictions.

mod common;

use std::sync::Arc;

use common::{Chat, IMAGE_TAG};
use mmloop_core::{Answer, HumanAnswer, ImageSource, LabelStatus, Location, Message, Prediction, Record, Task};
use mmloop_formats::{Format, ReadOptions, WriteOptions};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value};

fn config() -> ProptestConfig {
    // PROPTEST_CASES=5000 for a longer hunt.
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(96);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------
// Generators.

/// Unicode text with quotes, backslashes, newlines, control characters, CJK, emoji,
/// combining marks and `<image>` tags.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-zA-Z0-9 ,.?!'\"\\\\:;/#%&+()\\[\\]{}=-]{1,8}",
        1 => "[\n\r\t ]{1,2}",
        2 => "[中文字猫狗咖啡é🐱🐶☕\u{301}]{1,4}",
        1 => "\\PC{1,4}",
        1 => prop::char::range('\u{0}', '\u{1f}').prop_map(String::from),
        1 => Just(IMAGE_TAG.to_string()),
    ];
    prop::collection::vec(piece, 0..5).prop_map(|v| v.concat())
}

fn nonempty_text() -> impl Strategy<Value = String> {
    text().prop_filter("not empty", |s| !s.is_empty())
}

fn path() -> impl Strategy<Value = String> {
    "[a-z0-9_]{1,6}(/[a-zA-Z0-9 _é猫-]{1,6}){0,2}\\.(jpg|png)"
}

/// A path, a URL or inline bytes.
fn image() -> impl Strategy<Value = ImageSource> {
    prop_oneof![
        4 => path().prop_map(ImageSource::Path),
        1 => "https://example\\.com/[a-z0-9/]{1,10}\\.jpg".prop_map(ImageSource::Url),
        1 => prop::collection::vec(any::<u8>(), 0..24)
            .prop_map(|b| ImageSource::Bytes([&b"\x89PNG\r\n\x1a\n"[..], &b].concat().into())),
    ]
}

fn images(max: usize) -> impl Strategy<Value = Vec<ImageSource>> {
    prop::collection::vec(image(), 0..=max)
}

/// Ids as integers or as strings (never six digits with leading zeros: LLaVA's own).
fn id() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        1 => (-1000i64..1_000_000).prop_map(|n| Some(n.to_string())),
        1 => "[a-zA-Z_:-][a-zA-Z0-9_#:.-]{0,9}".prop_map(Some),
        1 => "[中文猫][a-z0-9#]{0,4}".prop_map(Some),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        text().prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Extra fields under keys no reader gives a meaning to.
fn meta() -> impl Strategy<Value = Map<String, Value>> {
    let key = select(vec!["source", "license", "difficulty", "notes", "原始字段", "extra"]);
    prop::collection::btree_map(key, json_value(), 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn confidence() -> impl Strategy<Value = Option<String>> {
    prop::option::of(select(vec!["yes", "maybe", "no"]).prop_map(String::from))
}

fn human_answers(min: usize, with_confidence: bool) -> impl Strategy<Value = Vec<HumanAnswer>> {
    let conf = if with_confidence { confidence().boxed() } else { Just(None).boxed() };
    prop::collection::vec((text(), conf), min..=10)
        .prop_map(|v| v.into_iter().map(|(answer, confidence)| HumanAnswer { answer, confidence }).collect())
}

fn split() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![select(vec!["train", "val", "test"]).prop_map(String::from), nonempty_text()])
}

fn nowhere() -> Location {
    Location::file(&Arc::new(std::path::PathBuf::from("generated")))
}

/// One conversation: an optional system prompt, 1–3 turns (the last may be unanswered),
/// 0–3 images bound by the `<image>` tags in the text or, untagged, to the first turn;
/// with `tools` (the roles in the format's spelling: ms-swift `tool_call`/`tool_response`,
/// LLaMA-Factory `function_call`/`observation`), tool turns may come between a question
/// and its answer, which makes that answer a turn without a question of its own.
fn chat_with_tools(system: System, tools: Option<(&'static str, &'static str)>) -> impl Strategy<Value = Chat> {
    let sys = match system {
        System::None => Just(None).boxed(),
        System::Any => prop::option::of(text()).boxed(),
        System::Untagged => prop::option::of(text().prop_map(|t| t.replace(IMAGE_TAG, "<img>"))).boxed(),
    };
    (
        id(),
        sys,
        prop::collection::vec((nonempty_text(), text(), prop::option::of((text(), text()))), 1..=3),
        any::<bool>(),
        images(3),
        meta(),
    )
        .prop_map(move |(id, system, turns, unanswered, images, meta)| {
            let mut messages: Vec<Message> = system.into_iter().map(|s| Message::new("system", s)).collect();
            let n = turns.len();
            for (i, (q, a, tool)) in turns.into_iter().enumerate() {
                messages.push(Message::new("user", q));
                if !(unanswered && i + 1 == n) {
                    if let (Some((call, result)), Some((call_role, result_role))) = (tool, tools) {
                        messages.push(Message::new(call_role, call));
                        messages.push(Message::new(result_role, result));
                    }
                    messages.push(Message::new("assistant", a));
                }
            }
            Chat { id, task: Task::Vqa, messages, images, meta, split: None }
        })
}

#[derive(Clone, Copy)]
enum System {
    /// LLaVA has no system turn.
    None,
    Any,
    /// ShareGPT writes the system prompt apart, as `system`, where LLaMA-Factory does not
    /// count `<image>` tags but mmloop's reader (after ms-swift) does: a tag there is read
    /// differently by the two tools, so it cannot round-trip.
    Untagged,
}

/// Records of several conversations, ids made unique (the writers join consecutive
/// records that share a conversation key).
fn chats(system: System) -> impl Strategy<Value = Vec<Record>> {
    chats_with_tools(system, None)
}

fn chats_with_tools(system: System, tools: Option<(&'static str, &'static str)>) -> impl Strategy<Value = Vec<Record>> {
    prop::collection::vec(chat_with_tools(system, tools), 1..4).prop_map(|mut cs| {
        let mut seen = std::collections::HashSet::new();
        for c in &mut cs {
            if c.id.as_ref().is_some_and(|id| !seen.insert(id.clone())) {
                c.id = None;
            }
        }
        cs.iter().flat_map(common::chat_records).collect()
    })
}

fn record(task: Task, question: String) -> Record {
    Record::new(task, question, nowhere())
}

fn task() -> impl Strategy<Value = Task> {
    select(vec![Task::Vqa, Task::Caption])
}

/// A table row: everything a flat row carries.
fn table_record(csv: bool) -> impl Strategy<Value = Record> {
    let s = move || if csv { nonempty_text().boxed() } else { text().boxed() };
    let answer = prop_oneof![
        1 => Just(None),
        3 => (prop::option::of(s()), human_answers(0, true))
            .prop_filter("not empty", |(t, all)| t.is_some() || !all.is_empty())
            .prop_map(|(text, all)| Some(Answer { text, all })),
    ];
    let id = id().prop_filter("csv has no empty ids", move |i| !csv || i.as_ref().is_none_or(|i| !i.is_empty()));
    let split =
        split().prop_filter("csv has no empty splits", move |sp| !csv || sp.as_ref().is_none_or(|x| !x.is_empty()));
    (id, task(), s(), images(3), answer, split, meta()).prop_map(|(id, task, q, images, answer, split, meta)| {
        let mut r = record(task, q);
        r.id = id;
        r.images = images;
        r.answer = answer;
        r.split = split;
        r.meta = meta;
        r
    })
}

fn parquet_record() -> impl Strategy<Value = Record> {
    let message = (select(vec!["system", "user", "assistant", "tool"]), text()).prop_map(|(r, c)| Message::new(r, c));
    (table_record(false), prop::collection::vec(message, 0..4), prop::option::of(text()), any::<u32>()).prop_map(
        |(mut r, context, conversation, turn)| {
            r.context = context;
            r.conversation = conversation;
            r.turn = turn;
            r
        },
    )
}

/// COCO: one record per caption, images shared between captions, splits per image.
fn coco_records() -> impl Strategy<Value = Vec<Record>> {
    let pool = prop::collection::vec((path(), split()), 1..4);
    // Images without captions (test splits) read as unanswered items, after all captions.
    let uncaptioned = prop::collection::vec((path(), split()), 0..3);
    (pool, prop::collection::vec((any::<prop::sample::Index>(), text(), meta()), 1..8), 0i64..1000, uncaptioned)
        .prop_map(|(pool, caps, base, uncaptioned)| {
            let mut pool = pool;
            pool.sort();
            pool.dedup_by(|a, b| a.0 == b.0);
            let bare = uncaptioned.into_iter().filter(|(p, _)| pool.iter().all(|(q, _)| q != p)).map(|(p, split)| {
                let mut r = record(Task::Caption, mmloop_formats::DEFAULT_CAPTION_PROMPT.into());
                r.images = vec![ImageSource::Path(p)];
                r.split = split;
                r
            });
            let bare: Vec<Record> = bare.collect();
            let mut bare = bare;
            bare.sort_by(|a, b| a.images[0].describe().cmp(&b.images[0].describe()));
            bare.dedup_by(|a, b| a.images == b.images);
            caps.into_iter()
                .enumerate()
                .map(|(i, (which, caption, meta))| {
                    let (p, split) = &pool[which.index(pool.len())];
                    let mut r = record(Task::Caption, mmloop_formats::DEFAULT_CAPTION_PROMPT.into());
                    r.id = Some((base + i as i64 * 3).to_string());
                    r.images = vec![ImageSource::Path(p.clone())];
                    r.answer = Some(Answer::text(caption));
                    r.split = split.clone();
                    r.meta = meta;
                    r
                })
                .chain(bare)
                .collect()
        })
}

fn vqav2_records() -> impl Strategy<Value = Vec<Record>> {
    let answer = prop::option::of(
        (prop::option::of(text()), human_answers(1, true)).prop_map(|(text, all)| Answer { text, all }),
    );
    (prop::collection::vec((text(), path(), answer, meta()), 1..6), -50i64..100_000).prop_map(|(rows, base)| {
        rows.into_iter()
            .enumerate()
            .map(|(i, (q, p, answer, meta))| {
                let mut r = record(Task::Vqa, q);
                r.id = Some((base + i as i64 * 7).to_string());
                r.images = vec![ImageSource::Path(p)];
                r.answer = answer;
                r.meta = meta;
                r
            })
            .collect()
    })
}

fn textvqa_record() -> impl Strategy<Value = Record> {
    let answer = prop::option::of(human_answers(1, false).prop_map(|all| Answer { text: None, all }));
    let id = id().prop_filter_map("an id", |i| i);
    (id, text(), path(), answer, split(), meta()).prop_map(|(id, q, p, answer, split, meta)| {
        let mut r = record(Task::Vqa, q);
        r.id = Some(id);
        r.images = vec![ImageSource::Path(p)];
        r.answer = answer;
        r.split = split;
        r.meta = meta;
        r
    })
}

fn labelstudio_record() -> impl Strategy<Value = Record> {
    let answer = prop_oneof![
        1 => Just(None),
        2 => text().prop_map(|t| Some(Answer::text(t))),
        1 => human_answers(2, false).prop_map(|all| Some(Answer { text: None, all })),
    ];
    let prediction = (text(), text(), prop::option::of(any::<f64>().prop_filter("finite", |f| f.is_finite())))
        .prop_map(|(model, answer, score)| Prediction { model, answer, score });
    let status = prop::option::of(select(LabelStatus::ALL.to_vec()));
    let data = prop::option::of(meta());
    (id(), task(), text(), image(), answer, status, prop::collection::vec(prediction, 0..3), data).prop_map(
        |(id, task, q, image, answer, status, predictions, data)| {
            let mut r = record(task, q);
            r.id = id;
            r.images = vec![image];
            r.answer = answer;
            r.status = status;
            r.predictions = predictions;
            if let Some(d) = data {
                r.meta.insert("data".into(), Value::Object(d));
            }
            r
        },
    )
}

// ---------------------------------------------------------------------------------------
// The property.

/// Writes `records` as `format`, reads them back and compares with what the format keeps;
/// then writes and reads what was read, which must come back unchanged.
fn round_trip(format: Format, records: &[Record], out: &str, opts: &ReadOptions) {
    let wopts = WriteOptions::default();
    let (_dir, summary) = common::write(format, records, out, &wopts);
    let main = common::main_output(format, &summary);
    let first = common::read_ok(format, &main, opts);
    // What mmloop writes, it recognises (a first row without an image gives LLaVA and
    // plain JSON Lines nothing to tell them by).
    let untold = matches!(format, Format::Llava | Format::Jsonl) && records.first().is_none_or(|r| r.images.is_empty());
    if !untold {
        assert_eq!(mmloop_formats::detect(&main).ok(), Some(format), "detect({out})");
    }
    let want = common::after_round_trip(format, records, opts);
    if matches!(format, Format::Coco | Format::Vqav2 | Format::TextVqa) {
        // These readers add meta of their own (COCO `image`, `image_id`...).
        assert_eq!(first.len(), want.len(), "{format}: record count");
        for (g, w) in first.iter().zip(&want) {
            assert!(
                common::meta_contains(&g.meta, &w.meta),
                "{format}: meta lost\n got {:?}\nwant {:?}",
                g.meta,
                w.meta
            );
        }
        let no_meta = |rs: &[Record]| -> Vec<Record> {
            rs.iter()
                .cloned()
                .map(|mut r| {
                    r.meta.clear();
                    r
                })
                .collect()
        };
        common::assert_same(&no_meta(&first), &no_meta(&want), &format!("{format}: first read"));
    } else {
        common::assert_same(&first, &want, &format!("{format}: first read"));
    }

    let (_dir2, summary2) = common::write(format, &first, out, &wopts);
    let second = common::read_ok(format, &common::main_output(format, &summary2), opts);
    common::assert_same(&second, &first, &format!("{format}: read → write → read"));
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn swift(records in chats_with_tools(System::Any, Some(("tool_call", "tool_response")))) {
        round_trip(Format::Swift, &records, "train.jsonl", &ReadOptions::default());
    }

    #[test]
    fn llava(records in chats(System::None)) {
        round_trip(Format::Llava, &records, "llava.json", &ReadOptions::default());
    }

    #[test]
    fn sharegpt(records in chats_with_tools(System::Untagged, Some(("function_call", "observation"))), jsonl in any::<bool>()) {
        let out = if jsonl { "sharegpt.jsonl" } else { "sharegpt.json" };
        round_trip(Format::ShareGpt, &records, out, &ReadOptions::default());
    }

    #[test]
    fn chat_formats_keep_the_task_they_are_read_with(records in chats(System::Any)) {
        let caption: Vec<Record> = records.into_iter().map(|mut r| { r.task = Task::Caption; r }).collect();
        let opts = ReadOptions { task: Some(Task::Caption), ..Default::default() };
        round_trip(Format::Swift, &caption, "train.jsonl", &opts);
    }

    #[test]
    fn coco(records in coco_records()) {
        round_trip(Format::Coco, &records, "captions.json", &ReadOptions::default());
    }

    #[test]
    fn vqav2(records in vqav2_records()) {
        round_trip(Format::Vqav2, &records, "vqa", &ReadOptions::default());
    }

    #[test]
    fn textvqa(records in prop::collection::vec(textvqa_record(), 1..6)) {
        round_trip(Format::TextVqa, &records, "textvqa.json", &ReadOptions::default());
    }

    #[test]
    fn labelstudio(records in prop::collection::vec(labelstudio_record(), 1..6)) {
        round_trip(Format::LabelStudio, &records, "tasks.json", &ReadOptions::default());
    }

    #[test]
    fn jsonl(records in prop::collection::vec(table_record(false), 1..6)) {
        round_trip(Format::Jsonl, &records, "items.jsonl", &ReadOptions::default());
    }

    #[test]
    fn csv(records in prop::collection::vec(table_record(true), 1..6)) {
        round_trip(Format::Csv, &records, "items.csv", &ReadOptions::default());
    }

    #[test]
    fn parquet(records in prop::collection::vec(parquet_record(), 0..6)) {
        round_trip(Format::Parquet, &records, "items.parquet", &ReadOptions::default());
    }
}
