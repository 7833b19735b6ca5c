//! Format detection from the file's first bytes and first record, per the signals in
//! each format's defining docs (see the table in the project's format notes).

use std::collections::BTreeSet;
use std::io::{BufRead, Read};
use std::path::Path;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::FormatError;
use crate::{Format, json};

/// Tells a dataset file's format, or says why it cannot.
pub fn detect(path: &Path) -> Result<Format, FormatError> {
    if path.is_dir() {
        return Ok(Format::Folder);
    }
    let mut head = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).map_err(|e| FormatError::io(path, e))?;
    head.truncate(n);
    if head.starts_with(b"PAR1") {
        return Ok(Format::Parquet);
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "csv" || ext == "tsv" {
        return Ok(Format::Csv);
    }
    if ext == "parquet" {
        return Ok(Format::Parquet);
    }
    let unknown = |detail: &str| FormatError::Unknown { path: path.to_path_buf(), detail: Some(detail.to_string()) };
    let bom = if head.starts_with(&[0xEF, 0xBB, 0xBF]) { 3 } else { 0 };
    head.drain(..bom);
    match json::first_byte(&head) {
        None => Err(unknown("the file is empty")),
        Some(b'[') => {
            let first = first_array_element(path, &head)?;
            if let Some(Value::Object(m)) = &first
                && let Some(hint) = results_file_hint(m)
            {
                return Err(FormatError::Usage(format!("{}: {hint}", path.display())));
            }
            match first {
                Some(Value::Object(m)) => from_record_keys(&m).ok_or_else(|| unknown(&describe_keys(&m))),
                Some(_) => Err(unknown("a JSON array whose elements are not objects")),
                None => Err(unknown("an empty JSON array")),
            }
        }
        Some(b'{') => {
            // JSON Lines if the first line alone is a whole object.
            let first_line = first_line(path, &head)?;
            if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&first_line) {
                let keys = m.keys().cloned().collect();
                annotations_file(path, &keys)?;
                if let Some(f) = from_document_keys(&keys) {
                    return Ok(f);
                }
                return from_record_keys(&m).ok_or_else(|| unknown(&describe_keys(&m)));
            }
            let keys = top_level_keys(path)?;
            annotations_file(path, &keys)?;
            from_document_keys(&keys).ok_or_else(|| {
                unknown(&format!("a JSON object with keys {}", keys.iter().cloned().collect::<Vec<_>>().join(", ")))
            })
        }
        Some(_) if ext == "jsonl" || ext == "json" => Err(unknown("not JSON")),
        Some(_) => Err(FormatError::Unknown { path: path.to_path_buf(), detail: None }),
    }
}

/// A VQAv2 annotations file is half a dataset: say which file to import instead.
fn annotations_file(path: &Path, keys: &BTreeSet<String>) -> Result<(), FormatError> {
    let has = |k: &str| keys.contains(k);
    if has("annotations") && !has("images") && !has("questions") && !has("data") {
        return Err(FormatError::Usage(format!(
            "{}: this is a VQAv2 annotations file\n  hint: import the questions file and pass this one with --annotations",
            path.display()
        )));
    }
    Ok(())
}

/// The first line of the file (without a BOM), read whole even when it is longer than
/// the sniffed head: JSON Lines rows with inline base64 images often are.
fn first_line(path: &Path, head: &[u8]) -> Result<Vec<u8>, FormatError> {
    if let Some(end) = head.iter().position(|&b| b == b'\n') {
        return Ok(head[..end].to_vec());
    }
    let mut line = Vec::new();
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    std::io::BufReader::new(file).read_until(b'\n', &mut line).map_err(|e| FormatError::io(path, e))?;
    if line.starts_with(&[0xEF, 0xBB, 0xBF]) {
        line.drain(..3);
    }
    Ok(line)
}

fn describe_keys(m: &Map<String, Value>) -> String {
    format!("records with keys {}", m.keys().cloned().collect::<Vec<_>>().join(", "))
}

/// Formats whose file is one JSON object, told by its top-level keys.
fn from_document_keys(keys: &BTreeSet<String>) -> Option<Format> {
    let has = |k: &str| keys.contains(k);
    if has("questions") {
        return Some(Format::Vqav2);
    }
    if has("data") && (has("dataset_name") || has("dataset_version")) {
        return Some(Format::TextVqa);
    }
    if has("images") && (has("annotations") || has("info") || has("licenses") || has("dataset")) {
        return Some(Format::Coco);
    }
    None
}

/// Formats whose records are objects, told by the first record's keys.
fn from_record_keys(m: &Map<String, Value>) -> Option<Format> {
    let has = |k: &str| m.contains_key(k);
    let conv_from = m
        .get("conversations")
        .and_then(|c| c.as_array())
        .and_then(|a| a.first())
        .is_some_and(|x| x.get("from").is_some());
    if has("data") && (has("annotations") || has("predictions") || has("completions") || m["data"].is_object()) {
        return Some(Format::LabelStudio);
    }
    if has("conversations") && conv_from {
        return Some(if has("image") && !has("images") { Format::Llava } else { Format::ShareGpt });
    }
    if has("messages") || has("conversation") {
        return Some(Format::Swift);
    }
    // Alpaca rows, which ms-swift reads as query/response.
    if has("instruction") && (has("output") || has("input")) {
        return Some(Format::Swift);
    }
    if has("query") || (has("response") && !has("question")) || has("history") {
        return Some(Format::Swift);
    }
    if (has("question") || has("caption") || has("answer")) && (has("image") || has("images") || has("file_name")) {
        return Some(Format::Jsonl);
    }
    None
}

/// Results files (predictions for `mmloop eval`) look like datasets but are not.
fn results_file_hint(m: &Map<String, Value>) -> Option<&'static str> {
    let only = |keys: &[&str]| m.keys().all(|k| keys.contains(&k.as_str()));
    if m.contains_key("question_id") && m.contains_key("answer") && only(&["question_id", "answer"]) {
        return Some(
            "this is a VQA results file ([{question_id, answer}])\n  hint: score it with `mmloop eval --predictions`",
        );
    }
    if m.contains_key("image_id") && m.contains_key("caption") && only(&["image_id", "caption", "id"]) {
        return Some(
            "this is a COCO caption results file ([{image_id, caption}])\n  hint: score it with `mmloop eval --predictions`",
        );
    }
    None
}

/// The first element of a JSON array file, parsed alone: from the first bytes when it
/// fits there, else from the whole file.
fn first_array_element(path: &Path, head: &[u8]) -> Result<Option<Value>, FormatError> {
    let file = std::sync::Arc::new(path.to_path_buf());
    let first_of = |buf: &[u8]| {
        let mut first = None;
        json::for_each_element(&file, buf, &mut |raw| {
            first = serde_json::from_str(raw.get()).ok();
            std::ops::ControlFlow::Break(())
        })
        .map(|()| first)
    };
    if let Ok(Some(v)) = first_of(head) {
        return Ok(Some(v));
    }
    Ok(first_of(&json::read_all(path)?)?)
}

/// The keys of a top-level JSON object, skipping over the values.
fn top_level_keys(path: &Path) -> Result<BTreeSet<String>, FormatError> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = BTreeSet<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = BTreeSet::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                keys.insert(k);
            }
            Ok(keys)
        }
    }
    let buf = json::read_all(path)?;
    let mut de = serde_json::Deserializer::from_slice(&buf);
    let file = std::sync::Arc::new(path.to_path_buf());
    serde::Deserializer::deserialize_map(&mut de, Keys).map_err(|e| json::syntax_error(&file, &e).into())
}
