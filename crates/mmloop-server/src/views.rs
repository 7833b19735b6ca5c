//! What the API sends, as its own types: the store's views are for the store's callers,
//! these are for browsers and scripts on the network. An item's images are ids and URLs
//! (never paths on the server) and its source file is a name, not a path; everything else is
//! the store's view as it is.

use std::borrow::Cow;

use mmloop_core::{Digest, Message, Task};
use mmloop_store::LabelView;
use mmloop_store::review::{AuditMark, CandidateView, Lease, ReviewItem};
use serde::Serialize;
use serde_json::{Map, Value};

/// An image of an item: where to fetch it, and what it is.
#[derive(Serialize)]
pub struct ImageOut {
    pub id: i64,
    pub sha256: Digest,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub bytes: u64,
    /// `/api/images/{id}`.
    pub url: String,
}

/// An item with its current label.
#[derive(Serialize)]
pub struct ItemOut<'a> {
    pub id: i64,
    pub source_id: &'a Option<String>,
    pub task: Task,
    pub question: &'a str,
    pub context: &'a [Message],
    pub conversation: &'a Option<String>,
    pub turn: u32,
    pub tags: &'a [String],
    pub meta: &'a Map<String, Value>,
    pub split: &'a Option<String>,
    /// The file's name only.
    pub source_file: Option<Cow<'a, str>>,
    pub source_line: Option<i64>,
    pub images: Vec<ImageOut>,
    pub label: &'a Option<LabelView>,
}

/// An item as a reviewer gets it: the item, the model's candidates, the lease, whether undo
/// has something to restore, and the audit sample it waits in.
#[derive(Serialize)]
pub struct ReviewItemOut<'a> {
    pub item: ItemOut<'a>,
    pub candidates: &'a [CandidateView],
    pub lease: &'a Option<Lease>,
    pub can_undo: bool,
    pub audit: &'a Option<AuditMark>,
}

impl<'a> From<&'a ReviewItem> for ReviewItemOut<'a> {
    fn from(r: &'a ReviewItem) -> Self {
        let i = &r.item;
        let images = i
            .images
            .iter()
            .map(|m| ImageOut {
                id: m.id,
                sha256: m.sha256,
                width: m.width,
                height: m.height,
                format: m.format.clone(),
                bytes: m.bytes,
                url: format!("/api/images/{}", m.id),
            })
            .collect();
        let source_file =
            i.source_file.as_deref().and_then(|f| std::path::Path::new(f).file_name()).map(|n| n.to_string_lossy());
        ReviewItemOut {
            item: ItemOut {
                id: i.id,
                source_id: &i.source_id,
                task: i.task,
                question: &i.question,
                context: &i.context,
                conversation: &i.conversation,
                turn: i.turn,
                tags: &i.tags,
                meta: &i.meta,
                split: &i.split,
                source_file,
                source_line: i.source_line,
                images,
                label: &i.label,
            },
            candidates: &r.candidates,
            lease: &r.lease,
            can_undo: r.can_undo,
            audit: &r.audit,
        }
    }
}
