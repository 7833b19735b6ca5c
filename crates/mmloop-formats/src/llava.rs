//! LLaVA instruct JSON (haotian-liu/LLaVA `docs/Finetune_Custom_Data.md`,
//! `llava/train/train.py`): one JSON array of `{id, image, conversations: [{from, value}]}`,
//! `image` a path relative to `--image_folder` (a list in multi-image forks), `<image>`
//! in the first human turn.

use std::path::Path;

use mmloop_core::{Message, Record, Task};
use serde_json::Map;

use crate::conversation::{self, Conversation};
use crate::error::FormatError;
use crate::json::{self, Fields};
use crate::output::JsonArray;
use crate::{ReadOptions, Sink, WriteSummary, image_ref};

pub(crate) fn read(path: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    let task = opts.task.unwrap_or(Task::Vqa);
    json::each_object(path, sink, |loc, map| {
        let mut f = Fields::new(loc, map);
        let id = f.opt_id("id")?;
        let images = conversation::take_images(&mut f)?;
        if !f.has("conversations") {
            return Err(f.err("missing field `conversations`").id(id).hint(
                "LLaVA items look like {\"id\": ..., \"image\": ..., \"conversations\": [{\"from\": \"human\", \"value\": ...}, ...]}",
            ));
        }
        let messages = conversation::parse_messages(&mut f, "conversations")?;
        Conversation { loc: loc.clone(), id, task, messages, images, meta: f.rest(), split: None }.into_records()
    })
}

pub(crate) fn write(out: &Path, records: &mut dyn Iterator<Item = Record>) -> Result<WriteSummary, FormatError> {
    let mut file = JsonArray::create(out)?;
    let mut n = 0u64;
    let mut auto_id = 0u64;
    let (mut multi, mut systems) = (0u64, 0u64);
    for group in conversation::Groups::new(records) {
        n += group.len() as u64;
        let j = conversation::join(&group);
        // LLaVA has no system turn; its loader expects human/gpt alternation.
        systems += u64::from(j.messages.iter().any(|m| m.role == "system"));
        let mut messages: Vec<Message> = j.messages.iter().filter(|m| m.role != "system").cloned().collect();
        conversation::ensure_tags(&mut messages, j.images().len(), "\n");
        let mut row = Map::new();
        let id = j.id().unwrap_or_else(|| {
            auto_id += 1;
            format!("{auto_id:06}")
        });
        row.insert("id".into(), json::id_string(&id));
        match j.images() {
            [] => {}
            [one] => {
                row.insert("image".into(), image_ref::to_json(one));
            }
            many => {
                multi += 1;
                row.insert("image".into(), many.iter().map(image_ref::to_json).collect());
            }
        }
        row.insert(
            "conversations".into(),
            messages
                .iter()
                .map(|m| serde_json::json!({"from": conversation::to_llava_role(&m.role), "value": m.content}))
                .collect(),
        );
        j.finish_row(&mut row, None);
        file.push(&row)?;
    }
    let path = file.commit()?;
    let mut notes = Vec::new();
    if multi > 0 {
        notes.push(format!(
            "{multi} rows have several images: `image` is a list, as LLaVA-NeXT / OneVision read it; LLaVA-1.5's loader takes one image per row (export those with --format swift or sharegpt)"
        ));
    }
    if systems > 0 {
        notes.push(format!("{systems} rows had a system prompt, which LLaVA JSON has no place for: left out"));
    }
    Ok(WriteSummary { records: n, files: vec![path], notes })
}
