//! Bad input: each broken file gives an error that names the file and the line (or record)
//! and ends with a hint, never a panic; record errors leave the rest of the file readable.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use mmloop_core::RecordError;
use mmloop_formats::{Format, FormatError, ReadOptions};
use proptest::prelude::*;

/// A file with `bytes` in a fresh temporary folder.
fn file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn read(format: Format, path: &Path) -> common::Read {
    common::read(format, path, &ReadOptions::default())
}

/// The single record error a read gave, checked to name `path` at `line`, with a hint.
fn one_error(r: &common::Read, path: &Path, line: u64) -> RecordError {
    assert!(r.result.is_ok(), "the file as a whole should read: {:?}", r.result);
    assert_eq!(r.errors.len(), 1, "errors: {:?}", r.errors);
    let e = r.errors[0].clone();
    assert_located(&e, path, line);
    e
}

fn assert_located(e: &RecordError, path: &Path, line: u64) {
    assert_eq!(e.location.file.as_path(), path, "{e}");
    assert_eq!(e.location.line, Some(line), "{e}");
    let shown = e.to_string();
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(shown.contains(&format!("{name}:{line}")), "the message names file and line: {shown}");
    assert!(e.hint.as_deref().is_some_and(|h| !h.is_empty()), "no hint: {shown}");
    assert!(shown.contains("\n  hint: "), "{shown}");
}

/// The file-level error of a read, as a record error (file, line, hint).
fn file_error(r: common::Read) -> RecordError {
    match r.result {
        Err(FormatError::File(e)) => e,
        other => panic!("expected a file error, got {other:?} (record errors {:?})", r.errors),
    }
}

const SWIFT_ROW: &str = r#"{"messages": [{"role": "user", "content": "<image>Q?"}, {"role": "assistant", "content": "A"}], "images": ["a.jpg"]}"#;

#[test]
fn malformed_jsonl_line_is_named_and_later_lines_still_parse() {
    let text = format!(
        "{SWIFT_ROW}\n{{\"messages\": [{{\"role\": \"user\", \"content\": \"x\"}}\n{SWIFT_ROW}\n\n{SWIFT_ROW}\n"
    );
    let (_d, path) = file("train.jsonl", text.as_bytes());
    let r = read(Format::Swift, &path);
    let e = one_error(&r, &path, 2);
    assert!(e.message.starts_with("malformed JSON: EOF while parsing"), "{e}");
    assert!(e.hint.unwrap().contains("one record per line"));
    assert_eq!(r.records.len(), 3);
    let lines: Vec<_> = r.records.iter().map(|r| r.source.line.unwrap()).collect();
    assert_eq!(lines, [1, 3, 5], "blank lines are skipped but still counted");

    // A syntax error inside a line points at its column.
    let (_d, path) =
        file("t.jsonl", b"{\"image\": \"a.jpg\", \"question\": \"Q\"}\n{\"image\": \"b.jpg\",, \"question\": \"Q\"}\n");
    let r = read(Format::Jsonl, &path);
    let e = one_error(&r, &path, 2);
    assert!(e.message.contains("malformed JSON"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("fix the JSON near column 19"));
    assert_eq!(r.records.len(), 1);
}

#[test]
fn a_sink_that_stops_stops_the_reader() {
    let text = format!("{SWIFT_ROW}\nnot json\n{SWIFT_ROW}\n");
    let (_d, path) = file("d.jsonl", text.as_bytes());
    let mut seen = Vec::new();
    mmloop_formats::read(Format::Swift, &path, &ReadOptions::default(), &mut |r| {
        let stop = r.is_err();
        seen.push(r.map(|_| ()));
        if stop { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
    .unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].as_ref().unwrap_err().location.line, Some(2), "{seen:?}");
}

#[test]
fn wrong_schema_names_the_field_with_a_hint() {
    // ms-swift: `messages` as a (Python-literal) string.
    let (_d, path) = file("s.jsonl", br#"{"messages": "[{'role': 'user', 'content': 'hi'}]"}"#);
    let e = one_error(&read(Format::Swift, &path), &path, 1);
    assert_eq!(e.message, "field `messages` is a string, not a list");
    assert!(e.hint.unwrap().contains("JSON list of"));

    // OpenAI-style multimodal content lists.
    let row = br#"{"id": "m1", "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}]}"#;
    let (_d, path) = file("s.jsonl", row);
    let e = one_error(&read(Format::Swift, &path), &path, 1);
    assert_eq!(e.message, "`messages[0].content` must be a string, found an array");
    assert!(e.hint.unwrap().contains("<image> tags"));

    // A row that is none of the ms-swift shapes.
    let (_d, path) = file("s.jsonl", format!("{SWIFT_ROW}\n{{\"image\": \"a.jpg\", \"foo\": 1}}\n").as_bytes());
    let r = read(Format::Swift, &path);
    let e = one_error(&r, &path, 2);
    assert!(e.message.contains("no `messages`, `conversations` or `query`"), "{e}");
    assert_eq!(r.records.len(), 1);

    // LLaVA item without `conversations` (JSON array: line and record index).
    let text = b"[\n  {\"id\": \"a\", \"image\": \"a.jpg\", \"conversations\": [{\"from\": \"human\", \"value\": \"<image>\\nQ\"}, {\"from\": \"gpt\", \"value\": \"A\"}]},\n  {\"id\": \"b\", \"image\": \"b.jpg\", \"conversation\": []}\n]\n";
    let (_d, path) = file("llava.json", text);
    let r = read(Format::Llava, &path);
    let e = one_error(&r, &path, 3);
    assert_eq!(e.location.index, Some(1));
    assert_eq!(e.id.as_deref(), Some("b"));
    assert_eq!(e.message, "missing field `conversations`");
    assert!(e.to_string().contains("llava.json:3 (record 1) (id b): missing field"), "{e}");
    assert_eq!(r.records.len(), 1);

    // LLaVA `conversations` as a string.
    let (_d, path) = file("llava.json", br#"[{"id": 1, "conversations": "human: hi"}]"#);
    let e = one_error(&read(Format::Llava, &path), &path, 1);
    assert!(e.message.contains("`conversations` is a string"), "{e}");

    // ShareGPT row without conversations.
    let (_d, path) = file("sg.jsonl", br#"{"images": ["a.jpg"], "text": "hello"}"#);
    let e = one_error(&read(Format::ShareGpt, &path), &path, 1);
    assert_eq!(e.message, "missing field `conversations`");

    // A message without a role.
    let (_d, path) = file("s.jsonl", br#"{"messages": [{"content": "Q"}]}"#);
    let e = one_error(&read(Format::Swift, &path), &path, 1);
    assert_eq!(e.message, "`messages[0]` needs a string `role`");

    // A conversation with no user or assistant turn.
    let (_d, path) = file("s.jsonl", br#"{"messages": [{"role": "system", "content": "S"}]}"#);
    let e = one_error(&read(Format::Swift, &path), &path, 1);
    assert!(e.message.contains("no user or assistant message"), "{e}");

    // A table row with no question, and a bad task.
    let (_d, path) = file(
        "t.jsonl",
        b"{\"image\": \"a.jpg\", \"answer\": \"red\"}\n{\"image\": \"a.jpg\", \"question\": \"Q\", \"task\": \"vq\"}\n",
    );
    let r = read(Format::Jsonl, &path);
    assert_eq!(r.errors.len(), 2);
    assert_located(&r.errors[0], &path, 1);
    assert!(r.errors[0].hint.as_deref().unwrap().contains("--task caption"));
    assert!(r.errors[1].message.contains("unknown task \"vq\""), "{}", r.errors[1]);

    // Label Studio task without `data`, and one without an image.
    let text = b"[\n{\"id\": 7, \"annotations\": []},\n{\"id\": 8, \"data\": {\"question\": \"Q\"}}\n]";
    let (_d, path) = file("ls.json", text);
    let r = read(Format::LabelStudio, &path);
    assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
    assert_located(&r.errors[0], &path, 2);
    assert_eq!(r.errors[0].message, "task without `data`");
    assert_located(&r.errors[1], &path, 3);
    assert_eq!(r.errors[1].id.as_deref(), Some("8"));
    assert!(r.errors[1].hint.as_deref().unwrap().contains("image, img"));

    // An image that is neither a path nor an {bytes, path} object.
    let (_d, path) = file("s.jsonl", br#"{"messages": [{"role": "user", "content": "<image>Q"}], "images": [42]}"#);
    let e = one_error(&read(Format::Swift, &path), &path, 1);
    assert_eq!(e.message, "`images[0]`: an image must be a path string, found a number");
    // ms-swift's placeholder for bytes it could not serialize.
    let (_d, path) =
        file("s.jsonl", br#"{"messages": [{"role": "user", "content": "<image>Q"}], "images": [{"bytes": "<<<bytes>>>", "path": null}]}"#);
    let e = one_error(&read(Format::Swift, &path), &path, 1);
    assert!(e.message.contains("<<<bytes>>>"), "{e}");
}

#[test]
fn empty_and_whitespace_only_files() {
    let cases = [
        (Format::Swift, "d.jsonl"),
        (Format::Swift, "d.json"),
        (Format::Llava, "d.json"),
        (Format::ShareGpt, "d.jsonl"),
        (Format::Coco, "captions.json"),
        (Format::Vqav2, "questions.json"),
        (Format::TextVqa, "textvqa.json"),
        (Format::LabelStudio, "export.json"),
        (Format::Jsonl, "d.jsonl"),
        (Format::Csv, "d.csv"),
    ];
    for content in [&b""[..], b"  \n\t\r\n  \n", b"\xEF\xBB\xBF\n"] {
        for (format, name) in cases {
            let (_d, path) = file(name, content);
            let e = file_error(read(format, &path));
            assert_eq!(e.location.file.as_path(), path, "{format}");
            assert_eq!(e.message, "the file is empty", "{format} {content:?}");
            assert!(e.hint.is_some(), "{format}");
            assert!(e.to_string().starts_with(&path.display().to_string()), "{e}");
        }
        let (_d, path) = file("d.jsonl", content);
        let e = mmloop_formats::detect(&path).unwrap_err().to_string();
        assert!(
            e.contains("cannot tell the format (the file is empty)") && e.contains("hint: name it with --format"),
            "{e}"
        );
    }
    // Parquet: an empty file is not Parquet.
    let (_d, path) = file("d.parquet", b"");
    let e = common::read(Format::Parquet, &path, &ReadOptions::default()).result.unwrap_err().to_string();
    assert!(e.starts_with(&path.display().to_string()) && e.contains("hint: is this a Parquet file?"), "{e}");
}

#[test]
fn non_utf8_bytes() {
    // JSON Lines: the bad line is a record error; the others read.
    let mut text = format!("{SWIFT_ROW}\n").into_bytes();
    text.extend_from_slice(b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xC4\xE3\xBA\xC3\"}]}\n"); // GB18030 "你好"
    text.extend_from_slice(format!("{SWIFT_ROW}\n").as_bytes());
    let (_d, path) = file("gbk.jsonl", &text);
    let r = read(Format::Swift, &path);
    let e = one_error(&r, &path, 2);
    assert_eq!(e.message, "not valid UTF-8 (column 44)");
    assert!(e.hint.unwrap().contains("iconv -f GB18030"));
    assert_eq!(r.records.len(), 2);

    // A JSON document: the whole file is refused, at the line of the first bad byte.
    let doc = b"{\"images\": [{\"id\": 1, \"file_name\": \"a.jpg\"}],\n \"annotations\": [\n  {\"id\": 1, \"image_id\": 1, \"caption\": \"\xC4\xE3\"}]}";
    let (_d, path) = file("captions.json", doc);
    let e = file_error(read(Format::Coco, &path));
    assert_eq!(e.location.line, Some(3));
    assert!(e.message.starts_with("not valid UTF-8 (byte offset"), "{e}");
    assert!(e.to_string().contains("captions.json:3: not valid UTF-8"), "{e}");
    assert!(e.hint.unwrap().contains("UTF-8"));

    // A JSON array and a CSV file, likewise.
    let (_d, path) = file("llava.json", b"[\n{\"id\": \"\xFF\"}\n]");
    let e = file_error(read(Format::Llava, &path));
    assert_eq!(e.location.line, Some(2));
    let (_d, path) = file("d.csv", b"image,question\na.jpg,ok\nb.jpg,caf\xE9\n");
    let e = file_error(read(Format::Csv, &path));
    assert_eq!(e.location.line, Some(3));
    assert!(e.message.contains("not valid UTF-8"));
}

#[test]
fn truncated_json_documents() {
    // A JSON array cut short: the elements before the cut are read, then the file error.
    let text = b"[\n  {\"id\": \"a\", \"image\": \"a.jpg\", \"conversations\": [{\"from\": \"human\", \"value\": \"Q\"}, {\"from\": \"gpt\", \"value\": \"A\"}]},\n  {\"id\": \"b\", \"image\": \"b.jpg\", \"conversations\": [{\"from\": \"hum";
    let (_d, path) = file("llava.json", text);
    let r = read(Format::Llava, &path);
    assert_eq!(r.records.len(), 1);
    let e = file_error(r);
    assert_eq!(e.location.line, Some(3));
    assert!(e.message.starts_with("malformed JSON at column"), "{e}");
    assert_eq!(e.hint.as_deref(), Some("the file ends early: was it truncated?"));

    // A JSON object cut short.
    let (_d, path) =
        file("captions.json", b"{\"images\": [{\"id\": 1, \"file_name\": \"a.jpg\"}],\n\"annotations\": [{\"id\": 1,");
    let e = file_error(read(Format::Coco, &path));
    assert_eq!(e.location.line, Some(2));
    assert!(e.hint.unwrap().contains("truncated"));

    // A syntax error in the middle.
    let (_d, path) = file("textvqa.json", b"{\"data\": [\n{\"question_id\": 1 \"question\": \"q\"}\n]}");
    let e = file_error(read(Format::TextVqa, &path));
    assert_eq!(e.location.line, Some(2));
    assert!(e.message.contains("expected `,` or `}`"), "{e}");
    assert!(e.hint.unwrap().contains("python -m json.tool"));
}

#[test]
fn coco_annotation_for_a_missing_image() {
    let doc = br#"{"images": [{"id": 1, "file_name": "a.jpg"}],
 "annotations": [
  {"id": 10, "image_id": 1, "caption": "A cat."},
  {"id": 11, "image_id": 99, "caption": "A dog."},
  {"id": 12, "image_id": 1, "caption": "Still a cat."}
 ]}"#;
    let (_d, path) = file("captions_val2017.json", doc);
    let r = read(Format::Coco, &path);
    let e = one_error(&r, &path, 4);
    assert_eq!(e.message, "`image_id` 99 is not in `images`");
    assert_eq!(e.id.as_deref(), Some("11"));
    assert_eq!(e.location.index, Some(1));
    assert_eq!(r.records.len(), 2);

    // A detection file is not a caption file.
    let doc = br#"{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 5, "image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 18}]}"#;
    let (_d, path) = file("instances_val2017.json", doc);
    let e = one_error(&read(Format::Coco, &path), &path, 1);
    assert!(e.hint.unwrap().contains("instances_*.json"));

    // The same image listed twice.
    let doc = b"{\"images\": [{\"id\": 1, \"file_name\": \"a.jpg\"},\n{\"id\": 1, \"file_name\": \"b.jpg\"}], \"annotations\": []}";
    let (_d, path) = file("captions.json", doc);
    let r = read(Format::Coco, &path);
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].message, "duplicate image id 1");
    assert_eq!(r.errors[0].location.line, Some(2));
}

const VQA_ANNOTATIONS: &str = r#"{"info": {"description": "This is v2.0 of the VQA dataset."}, "license": {"name": "CC BY 4.0"}, "data_subtype": "val2014", "annotations": [{"question_type": "what color is the", "multiple_choice_answer": "black", "answers": [{"answer": "black", "answer_confidence": "yes", "answer_id": 1}], "image_id": 42, "answer_type": "other", "question_id": 42000}], "data_type": "mscoco"}"#;

#[test]
fn vqav2_annotations_file_passed_as_the_dataset() {
    // Minified on one line, as visualqa.org ships it, and pretty-printed.
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(VQA_ANNOTATIONS).unwrap()).unwrap();
    for text in [VQA_ANNOTATIONS.to_string(), pretty] {
        let (_d, path) = file("v2_mscoco_val2014_annotations.json", text.as_bytes());
        let e = mmloop_formats::detect(&path).unwrap_err().to_string();
        assert!(e.contains("this is a VQAv2 annotations file") && e.contains("hint: import the questions file"), "{e}");

        let e = file_error(read(Format::Vqav2, &path));
        assert_eq!(e.message, "no `questions` list");
        assert_eq!(e.location.file.as_path(), path);
        assert!(e.hint.unwrap().contains("--annotations"));
    }

    // The other way round: a questions file given as --annotations.
    let (_d, q) = file("q.json", br#"{"questions": [{"question_id": 1, "image_id": 1, "question": "Q?"}]}"#);
    let opts = ReadOptions { annotations: Some(q.clone()), ..Default::default() };
    let e = match common::read(Format::Vqav2, &q, &opts).result {
        Err(FormatError::File(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.message, "no `annotations` list");
    assert!(e.hint.unwrap().contains("--annotations takes the answers file"));

    // An annotation whose question is missing.
    let dir = tempfile::tempdir().unwrap();
    let qpath = dir.path().join("v2_OpenEnded_mscoco_val2014_questions.json");
    std::fs::write(&qpath, r#"{"data_subtype": "val2014", "questions": []}"#).unwrap();
    std::fs::write(dir.path().join("v2_mscoco_val2014_annotations.json"), VQA_ANNOTATIONS).unwrap();
    let r = read(Format::Vqav2, &qpath);
    assert_eq!(r.errors.len(), 1);
    assert!(r.errors[0].message.contains("question_id 42000, which the questions file does not have"));
    assert!(r.errors[0].location.file.ends_with("v2_mscoco_val2014_annotations.json"));
    assert_eq!(r.errors[0].location.line, Some(1));
}

#[test]
fn results_files_are_not_datasets() {
    let vqa = br#"[{"question_id": 42000, "answer": "black"}, {"question_id": 42001, "answer": "2"}]"#;
    let (_d, path) = file("vqa_OpenEnded_mscoco_val2014_fake_results.json", vqa);
    let e = mmloop_formats::detect(&path).unwrap_err().to_string();
    assert!(e.contains("VQA results file") && e.contains("hint: score it with `mmloop eval --predictions`"), "{e}");
    for format in [Format::Vqav2, Format::Coco, Format::TextVqa] {
        let e = file_error(read(format, &path));
        assert_eq!(e.location.file.as_path(), path);
        assert!(e.message.starts_with("the file is a JSON array, expected"), "{format}: {e}");
        assert!(e.hint.unwrap().contains("results file"), "{format}");
    }
    // Forced as a table: every element is a record error naming its line and index.
    let (_d, path) = file(
        "results.json",
        b"[\n{\"question_id\": 1, \"answer\": \"a\"},\n{\"question_id\": 2, \"answer\": \"b\"}\n]",
    );
    let r = read(Format::Jsonl, &path);
    assert_eq!(r.errors.len(), 2);
    assert_located(&r.errors[1], &path, 3);
    assert_eq!(r.errors[1].location.index, Some(1));

    let coco = br#"[{"image_id": 42, "caption": "A cat on a mat."}]"#;
    let (_d, path) = file("captions_val2014_fake_results.json", coco);
    let e = mmloop_formats::detect(&path).unwrap_err().to_string();
    assert!(e.contains("COCO caption results file"), "{e}");

    // A JSON document of the wrong shape inside: the line of the problem.
    let (_d, path) = file("q.json", b"{\"data_subtype\": \"val2014\",\n \"questions\": \"none\"}");
    let e = file_error(read(Format::Vqav2, &path));
    assert_eq!(e.location.line, Some(2));
    assert!(e.message.contains("invalid type: string \"none\", expected a sequence"), "{e}");
    assert!(e.hint.unwrap().contains("VQAv2 questions object"));
}

#[test]
fn csv_rows_with_the_wrong_number_of_fields() {
    let text = "image,question,answer\na.jpg,What is it?,cat\nb.jpg,Too,many,fields\nc.jpg,Too few\n\"d.jpg\",\"Quoted, fine\",\"yes, it is\"\n";
    let (_d, path) = file("vqa.csv", text.as_bytes());
    let r = read(Format::Csv, &path);
    assert!(r.result.is_ok());
    assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
    assert_located(&r.errors[0], &path, 3);
    assert_located(&r.errors[1], &path, 4);
    assert_eq!(r.errors[0].message, "the row has 4 fields, the header has 3");
    assert_eq!(r.errors[1].message, "the row has 2 fields, the header has 3");
    assert!(r.errors[0].hint.as_deref().unwrap().contains("quote fields that contain commas"));
    assert_eq!(r.records.len(), 2);
    assert_eq!(r.records[1].question, "Quoted, fine");
    assert_eq!(r.records[1].source.line, Some(5));
}

#[test]
fn a_bom_at_the_start_is_ignored() {
    let bom = |s: &str| [&b"\xEF\xBB\xBF"[..], s.as_bytes()].concat();
    let (_d, path) = file("d.jsonl", &bom(&format!("{SWIFT_ROW}\n{SWIFT_ROW}\n")));
    assert_eq!(mmloop_formats::detect(&path).unwrap(), Format::Swift);
    assert_eq!(common::read_ok(Format::Swift, &path, &ReadOptions::default()).len(), 2);

    let (_d, path) = file(
        "llava.json",
        &bom(
            r#"[{"id": "a", "image": "a.jpg", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]"#,
        ),
    );
    assert_eq!(mmloop_formats::detect(&path).unwrap(), Format::Llava);
    assert_eq!(common::read_ok(Format::Llava, &path, &ReadOptions::default()).len(), 1);

    let (_d, path) = file(
        "captions.json",
        &bom(
            r#"{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 2, "image_id": 1, "caption": "C"}]}"#,
        ),
    );
    assert_eq!(mmloop_formats::detect(&path).unwrap(), Format::Coco);
    assert_eq!(common::read_ok(Format::Coco, &path, &ReadOptions::default()).len(), 1);

    let (_d, path) = file("vqa.csv", &bom("id,image,question,answer\n7,a.jpg,Q?,yes\n"));
    let rs = common::read_ok(Format::Csv, &path, &ReadOptions::default());
    assert_eq!(rs[0].id.as_deref(), Some("7"), "the BOM must not stick to the first column name");
    assert!(rs[0].meta.is_empty(), "{:?}", rs[0].meta);
}

#[test]
fn windows_line_endings_read_like_unix_ones() {
    let unix = format!("{SWIFT_ROW}\n\n{SWIFT_ROW}\n");
    let (_d, a) = file("unix.jsonl", unix.as_bytes());
    let (_d2, b) = file("dos.jsonl", unix.replace('\n', "\r\n").as_bytes());
    let (ra, rb) = (
        common::read_ok(Format::Swift, &a, &ReadOptions::default()),
        common::read_ok(Format::Swift, &b, &ReadOptions::default()),
    );
    common::assert_same(&rb, &ra, "CRLF JSONL");
    assert_eq!(rb[1].source.line, Some(3));

    // Quoted line breaks and a blank line before the last row.
    let csv = "id,image,question,answer\n1,a.jpg,\"Two\nlines\",yes\n\n2,b.jpg,Q,no\n";
    let (_d, a) = file("unix.csv", csv.as_bytes());
    let (_d2, b) = file("dos.csv", csv.replace('\n', "\r\n").as_bytes());
    let (ra, rb) = (
        common::read_ok(Format::Csv, &a, &ReadOptions::default()),
        common::read_ok(Format::Csv, &b, &ReadOptions::default()),
    );
    assert_eq!(rb[0].question, "Two\r\nlines", "quoted line breaks are data, kept as written");
    let lines = |rs: &[mmloop_core::Record]| rs.iter().map(|r| r.source.line).collect::<Vec<_>>();
    assert_eq!((lines(&ra), lines(&rb)), (vec![Some(2), Some(5)], vec![Some(2), Some(5)]));
}

#[test]
fn detection_failures_say_what_was_seen() {
    let (_d, path) = file("d.jsonl", b"{\"foo\": 1, \"bar\": 2}\n");
    let e = mmloop_formats::detect(&path).unwrap_err().to_string();
    assert!(e.contains("records with keys foo, bar") && e.contains("hint: name it with --format"), "{e}");
    let (_d, path) = file("d.json", b"[1, 2, 3]");
    let e = mmloop_formats::detect(&path).unwrap_err().to_string();
    assert!(e.contains("elements are not objects"), "{e}");
    let (_d, path) = file("d.json", b"[]");
    assert!(mmloop_formats::detect(&path).unwrap_err().to_string().contains("an empty JSON array"));
    let (_d, path) = file("d.txt", b"hello");
    assert!(matches!(mmloop_formats::detect(&path), Err(FormatError::Unknown { detail: None, .. })));
    let e = "llava-json".parse::<Format>().unwrap_err().to_string();
    assert!(e.contains("unknown format \"llava-json\"") && e.contains("hint: one of swift, llava"), "{e}");
    assert_eq!("ms-swift".parse::<Format>().unwrap(), Format::Swift);
    assert_eq!("Label_Studio".parse::<Format>().unwrap(), Format::LabelStudio);
}

#[test]
fn long_first_lines_are_still_detected() {
    // ms-swift rows with inline base64 images run far past the 64 KiB detect sniffs.
    let big = "A".repeat(100_000);
    let row = format!(
        r#"{{"messages": [{{"role": "user", "content": "<image>Q"}}, {{"role": "assistant", "content": "A"}}], "images": ["data:image/png;base64,{big}"]}}"#
    );
    let (_d, path) = file("inline.jsonl", format!("{row}\n{row}\n").as_bytes());
    assert_eq!(mmloop_formats::detect(&path).unwrap(), Format::Swift);
}

// ---------------------------------------------------------------------------------------
// Never a panic: arbitrary bytes, and fixtures cut or corrupted at arbitrary places.

const READERS: [(Format, &str); 10] = [
    (Format::Swift, "d.jsonl"),
    (Format::Llava, "d.json"),
    (Format::ShareGpt, "d.json"),
    (Format::Coco, "d.json"),
    (Format::Vqav2, "d.json"),
    (Format::TextVqa, "d.json"),
    (Format::LabelStudio, "d.json"),
    (Format::Jsonl, "d.jsonl"),
    (Format::Csv, "d.csv"),
    (Format::Parquet, "d.parquet"),
];

fn read_everything(bytes: &[u8]) {
    for (format, name) in READERS {
        let (_d, path) = file(name, bytes);
        let _ = mmloop_formats::detect(&path);
        let r = read(format, &path);
        for e in &r.errors {
            assert_eq!(e.location.file.as_path(), path, "{format}: {e}");
        }
        if let Err(e) = r.result {
            assert!(!e.to_string().is_empty());
        }
    }
}

fn fixture_bytes() -> Vec<Vec<u8>> {
    [
        "swift/messages.jsonl",
        "llava/llava_instruct.json",
        "coco/captions_val2017.json",
        "vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
        "textvqa/TextVQA_0.5.1_val.json",
        "labelstudio/project-3-export.json",
        "table/vqa.csv",
        "parquet/hf_vqa.parquet",
    ]
    .iter()
    .map(|p| std::fs::read(common::fixture(p)).unwrap())
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        read_everything(&bytes);
    }

    #[test]
    fn cut_or_corrupted_fixtures_never_panic(which in 0usize..8, cut in any::<proptest::sample::Index>(), flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..4)) {
        let mut bytes = fixture_bytes().swap_remove(which);
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        read_everything(&bytes);
    }
}
