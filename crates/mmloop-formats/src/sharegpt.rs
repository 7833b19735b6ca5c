//! ShareGPT as LLaMA-Factory reads it (hiyouga/LLaMA-Factory `data/README.md`,
//! `src/llamafactory/data/converter.py`): a JSON array or JSONL of `conversations`
//! (`from`/`value`, roles human/gpt/system/observation/function_call) or `messages`
//! (`role`/`content`), optional `system`, plural `images`; one `<image>` tag per image.

use std::path::Path;

use mmloop_core::{Message, Record, Task};
use serde_json::{Map, Value};

use crate::conversation::{self, Conversation};
use crate::error::FormatError;
use crate::json::{self, Fields};
use crate::output::{AtomicFile, JsonArray, JsonLines};
use crate::{ReadOptions, Sink, WriteSummary};

pub(crate) fn read(path: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    let task = opts.task.unwrap_or(Task::Vqa);
    json::each_object(path, sink, |loc, map| {
        let mut f = Fields::new(loc, map);
        let id = f.opt_id("id")?;
        let images = conversation::take_images(&mut f)?;
        let mut messages = if f.has("conversations") {
            conversation::parse_messages(&mut f, "conversations")?
        } else if f.has("messages") {
            conversation::parse_messages(&mut f, "messages")?
        } else {
            return Err(f.err("missing field `conversations`").id(id).hint(
                "ShareGPT rows look like {\"conversations\": [{\"from\": \"human\", \"value\": ...}, ...], \"images\": [...]}",
            ));
        };
        if let Some(system) = f.opt_str("system")? {
            messages.insert(0, Message::new("system", system));
        }
        Conversation { loc: loc.clone(), id, task, messages, images, meta: f.rest(), split: None }.into_records()
    })
}

pub(crate) fn write(out: &Path, records: &mut dyn Iterator<Item = Record>) -> Result<WriteSummary, FormatError> {
    let jsonl = out.extension().is_some_and(|e| e == "jsonl");
    enum Out {
        Lines(JsonLines),
        Array(JsonArray),
    }
    let mut file =
        if jsonl { Out::Lines(JsonLines(AtomicFile::create(out)?)) } else { Out::Array(JsonArray::create(out)?) };
    let mut n = 0u64;
    for group in conversation::Groups::new(records) {
        n += group.len() as u64;
        let j = conversation::join(&group);
        let mut row = Map::new();
        let mut messages = j.messages.clone();
        if let Some(first) = messages.first()
            && first.role == "system"
        {
            row.insert("system".into(), Value::from(first.content.clone()));
            messages.remove(0);
        }
        conversation::ensure_tags(&mut messages, j.images().len(), "");
        row.insert(
            "conversations".into(),
            messages
                .iter()
                .map(|m| serde_json::json!({"from": conversation::to_llava_role(&m.role), "value": m.content}))
                .collect(),
        );
        j.finish_row(&mut row, Some("images"));
        match &mut file {
            Out::Lines(f) => f.push(&row)?,
            Out::Array(f) => f.push(&row)?,
        }
    }
    let path = match file {
        Out::Lines(f) => f.0.commit()?,
        Out::Array(f) => f.commit()?,
    };
    Ok(WriteSummary { records: n, files: vec![path], notes: Vec::new() })
}
