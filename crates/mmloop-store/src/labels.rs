//! Reading items and saving labels. Labels are append-only: a save writes a new label row
//! that points at the one it replaced, and moves the item's pointer, all in one
//! transaction with its audit event. A save names the label it was based on (the row
//! version); if the item has moved on since, the save is refused with the current label.

use std::path::Path;

use mmloop_core::{Answer, HumanAnswer, LabelContent, LabelStatus, Message, Task};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::images::StoredImage;
use crate::sql::{Conn, Row};
use crate::{Store, StoreError};

/// A label as stored.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LabelView {
    /// Also the row version a save must name.
    pub id: i64,
    pub status: LabelStatus,
    pub answer: Answer,
    pub actor: String,
    pub at: String,
    pub action: String,
    pub lead_time_ms: Option<i64>,
}

impl LabelView {
    pub(crate) fn to_json(&self) -> Value {
        json!({"id": self.id, "status": self.status, "answer": self.answer})
    }
}

/// An item with everything a reviewer or an exporter needs.
#[derive(Clone, Debug, Serialize)]
pub struct ItemView {
    pub id: i64,
    pub source_id: Option<String>,
    pub task: Task,
    pub question: String,
    pub context: Vec<Message>,
    pub conversation: Option<String>,
    pub turn: u32,
    pub tags: Vec<String>,
    pub meta: Map<String, Value>,
    pub split: Option<String>,
    pub source_file: Option<String>,
    pub source_line: Option<i64>,
    pub images: Vec<StoredImage>,
    pub label: Option<LabelView>,
}

/// A label change a reviewer (or a script) asks for.
#[derive(Clone, Debug)]
pub struct LabelSave {
    pub status: LabelStatus,
    pub answer: Answer,
    /// The label id the change was based on (`None`: the item had no label).
    pub base: Option<i64>,
    pub actor: String,
    /// What the person did: accept, edit, reject, skip, undo...
    pub action: String,
    pub lead_time_ms: Option<i64>,
}

/// The result of a save.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SaveOutcome {
    Saved {
        label: LabelView,
    },
    /// The item's label changed since `base`: nothing was written.
    Conflict {
        current: Option<LabelView>,
    },
}

pub(crate) fn parse_answers(answer: Option<String>, answers: Option<String>) -> Answer {
    let all: Vec<HumanAnswer> = answers.and_then(|a| serde_json::from_str(&a).ok()).unwrap_or_default();
    Answer { text: answer, all }
}

pub(crate) fn label_by_id<'c>(conn: impl Into<Conn<'c>>, id: i64) -> Result<Option<LabelView>, StoreError> {
    conn.into().optional(
        "SELECT id, status, answer, answers, actor, at, action, lead_time_ms FROM labels WHERE id = ?1",
        &[&id],
        row_label,
    )
}

pub(crate) fn row_label(r: &Row) -> Result<LabelView, StoreError> {
    let status: String = r.get(1)?;
    Ok(LabelView {
        id: r.get(0)?,
        status: status.parse().unwrap_or(LabelStatus::Pending),
        answer: parse_answers(r.get(2)?, r.get(3)?),
        actor: r.get(4)?,
        at: r.get(5)?,
        action: r.get(6)?,
        lead_time_ms: r.get(7)?,
    })
}

pub(crate) fn images_of<'c>(
    conn: impl Into<Conn<'c>>,
    dot: &Path,
    item_id: i64,
) -> Result<Vec<StoredImage>, StoreError> {
    conn.into().query(
        "SELECT im.id, im.sha256, im.path, im.copied, im.width, im.height, im.format, im.bytes
         FROM item_images ii JOIN images im ON im.id = ii.image_id WHERE ii.item_id = ?1 ORDER BY ii.pos",
        &[&item_id],
        |r| row_image(r, dot),
    )
}

pub(crate) fn row_image(r: &Row, dot: &Path) -> Result<StoredImage, StoreError> {
    row_image_at(r, 0, dot)
}

/// An image from 8 columns starting at `at`: id, sha256, path, copied, width, height,
/// format, bytes.
pub(crate) fn row_image_at(r: &Row, at: usize, dot: &Path) -> Result<StoredImage, StoreError> {
    let sha: Vec<u8> = r.get(at + 1)?;
    let path: String = r.get(at + 2)?;
    let copied: bool = r.get(at + 3)?;
    Ok(StoredImage {
        id: r.get(at)?,
        sha256: mmloop_core::Digest::from_slice(&sha).unwrap_or_default(),
        path: if copied { dot.join(path) } else { path.into() },
        copied,
        width: r.get::<i64>(at + 4)? as u32,
        height: r.get::<i64>(at + 5)? as u32,
        format: r.get(at + 6)?,
        bytes: r.get::<i64>(at + 7)? as u64,
    })
}

pub(crate) fn item_view<'c>(conn: impl Into<Conn<'c>>, dot: &Path, id: i64) -> Result<ItemView, StoreError> {
    item_view_undo(conn, dot, id).map(|(view, _)| view)
}

/// [`item_view`], and whether its label replaced an earlier one (so an undo has something to
/// restore): the item and its label in one statement, its images in a second.
pub(crate) fn item_view_undo<'c>(
    conn: impl Into<Conn<'c>>,
    dot: &Path,
    id: i64,
) -> Result<(ItemView, bool), StoreError> {
    let conn = conn.into();
    let (mut view, can_undo) = conn
        .optional(
            "SELECT l.id, l.status, l.answer, l.answers, l.actor, l.at, l.action, l.lead_time_ms,
                    i.id, i.source_id, i.task, i.question, i.context, i.conversation, i.turn, i.tags, i.meta,
                    i.split, i.source_file, i.source_line, l.prev_id IS NOT NULL
             FROM items i LEFT JOIN labels l ON l.id = i.label_id WHERE i.id = ?1",
            &[&id],
            |r| {
                let task: String = r.get(10)?;
                let context: Option<String> = r.get(12)?;
                let tags: Option<String> = r.get(15)?;
                let meta: Option<String> = r.get(16)?;
                let label = match r.get::<Option<i64>>(0)? {
                    Some(_) => Some(row_label(r)?),
                    None => None,
                };
                Ok((
                    ItemView {
                        id: r.get(8)?,
                        source_id: r.get(9)?,
                        task: task.parse().unwrap_or(Task::Vqa),
                        question: r.get(11)?,
                        context: context.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_default(),
                        conversation: r.get(13)?,
                        turn: r.get::<i64>(14)? as u32,
                        tags: tags.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default(),
                        meta: meta.and_then(|m| serde_json::from_str(&m).ok()).unwrap_or_default(),
                        split: r.get(17)?,
                        source_file: r.get(18)?,
                        source_line: r.get(19)?,
                        images: Vec::new(),
                        label,
                    },
                    r.get::<Option<bool>>(20)?.unwrap_or(false),
                ))
            },
        )?
        .ok_or(StoreError::ItemNotFound(id))?;
    view.images = images_of(conn, dot, id)?;
    Ok((view, can_undo))
}

impl Store {
    /// One item with its images and current label.
    pub async fn item(&self, id: i64) -> Result<ItemView, StoreError> {
        let dot = self.paths().dot.clone();
        self.db().read(move |c| item_view(c, &dot, id)).await
    }

    /// One image by id (the only way images are served).
    pub async fn image(&self, id: i64) -> Result<Option<StoredImage>, StoreError> {
        let dot = self.paths().dot.clone();
        self.db()
            .read(move |c| {
                c.optional(
                    "SELECT id, sha256, path, copied, width, height, format, bytes FROM images WHERE id = ?1",
                    &[&id],
                    |r| row_image(r, &dot),
                )
            })
            .await
    }

    /// One image's bytes, read with [`crate::images::read_checked`]: a file that is no
    /// longer the imported image is an error naming the items that show it.
    pub async fn image_bytes(&self, id: i64) -> Result<Option<(StoredImage, Vec<u8>)>, StoreError> {
        let Some(img) = self.image(id).await? else {
            return Ok(None);
        };
        let read = {
            let img = img.clone();
            tokio::task::spawn_blocking(move || crate::images::read_checked(&img))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
        };
        match read {
            Ok(bytes) => Ok(Some((img, bytes))),
            Err(source) => {
                let items = self
                    .db()
                    .read(move |c| {
                        c.query(
                            "SELECT DISTINCT item_id FROM item_images WHERE image_id = ?1 ORDER BY item_id LIMIT 5",
                            &[&id],
                            |r| r.get(0),
                        )
                    })
                    .await?;
                Err(StoreError::Image { image: id, items, source })
            }
        }
    }

    /// Every label an item has had, newest first.
    pub async fn label_history(&self, item_id: i64) -> Result<Vec<LabelView>, StoreError> {
        self.db()
            .read(move |c| {
                c.query(
                    "SELECT id, status, answer, answers, actor, at, action, lead_time_ms FROM labels
                     WHERE item_id = ?1 ORDER BY id DESC",
                    &[&item_id],
                    row_label,
                )
            })
            .await
    }

    /// Saves a label if the item's label is still `save.base`.
    pub async fn save_label(&self, item_id: i64, save: LabelSave) -> Result<SaveOutcome, StoreError> {
        let out = self
            .db()
            .write(move |conn| {
                let tx = conn.savepoint()?;
                let out = save_in_tx(conn, item_id, save)?;
                if matches!(out, SaveOutcome::Saved { .. }) {
                    tx.commit()?;
                }
                Ok(out)
            })
            .await?;
        if matches!(out, SaveOutcome::Saved { .. }) {
            self.sync_audit_head().await?;
        }
        Ok(out)
    }
}

/// An item's label as a save finds it: the id the item points at (`None`: no label yet) and
/// that label.
pub(crate) struct Current {
    pub id: Option<i64>,
    pub label: Option<LabelView>,
}

/// The item's current label, in one statement; `ItemNotFound` when there is no such item.
pub(crate) fn current_of<'c>(conn: impl Into<Conn<'c>>, item_id: i64) -> Result<Current, StoreError> {
    conn.into()
        .optional(
            "SELECT l.id, l.status, l.answer, l.answers, l.actor, l.at, l.action, l.lead_time_ms, i.label_id
             FROM items i LEFT JOIN labels l ON l.id = i.label_id WHERE i.id = ?1",
            &[&item_id],
            |r| {
                let id: Option<i64> = r.get(8)?;
                Ok(Current { id, label: if id.is_some() { Some(row_label(r)?) } else { None } })
            },
        )?
        .ok_or(StoreError::ItemNotFound(item_id))
}

/// The save inside the caller's transaction (which commits it): the label row, the item's
/// pointer and the audit event. Writes nothing on a conflict.
pub(crate) fn save_in_tx<'c>(
    tx: impl Into<Conn<'c>>,
    item_id: i64,
    save: LabelSave,
) -> Result<SaveOutcome, StoreError> {
    let tx = tx.into();
    let current = current_of(tx, item_id)?;
    save_on(tx, item_id, current, save)
}

/// [`save_in_tx`] where the caller has read the item's label in the same transaction.
pub(crate) fn save_on(tx: Conn, item_id: i64, current: Current, save: LabelSave) -> Result<SaveOutcome, StoreError> {
    let Current { id: current, label: before } = current;
    if current != save.base {
        return Ok(SaveOutcome::Conflict { current: before });
    }
    let digest = LabelContent { status: save.status, answer: &save.answer }.digest();
    let answers =
        (!save.answer.all.is_empty()).then(|| serde_json::to_string(&save.answer.all).expect("answers serialize"));
    let at = crate::now();
    let id: i64 = tx.one(
        "INSERT INTO labels (item_id, prev_id, status, answer, answers, actor, at, action, lead_time_ms, content)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
        &[
            &item_id,
            &current,
            &save.status.as_str(),
            &save.answer.text,
            &answers,
            &save.actor,
            &at,
            &save.action,
            &save.lead_time_ms,
            &digest.as_bytes().as_slice(),
        ],
        |r| r.get(0),
    )?;
    tx.execute("UPDATE items SET label_id = ?1 WHERE id = ?2", &[&id, &item_id])?;
    let label = LabelView {
        id,
        status: save.status,
        answer: save.answer,
        actor: save.actor.clone(),
        at,
        action: save.action.clone(),
        lead_time_ms: save.lead_time_ms,
    };
    let mut after = label.to_json();
    after["action"] = json!(save.action);
    after["lead_time_ms"] = json!(save.lead_time_ms);
    crate::audit::append(
        tx,
        &save.actor,
        "label.save",
        &format!("item:{item_id}"),
        before.as_ref().map(LabelView::to_json).as_ref(),
        Some(&after),
    )?;
    Ok(SaveOutcome::Saved { label })
}

#[cfg(test)]
mod tests {
    use mmloop_core::{Answer, LabelStatus};

    use crate::test_support::project;
    use crate::{LabelSave, SaveOutcome};

    fn save(base: Option<i64>, text: &str, actor: &str) -> LabelSave {
        LabelSave {
            status: LabelStatus::Edited,
            answer: Answer::text(text),
            base,
            actor: actor.into(),
            action: "edit".into(),
            lead_time_ms: Some(1000),
        }
    }

    /// Two reviewers on one item: the second save, based on the label the first replaced, is
    /// a conflict that writes nothing and shows the current label.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_save_is_a_conflict_and_writes_nothing() {
        let (_dir, store) = project(1).await;
        let base = store.item(1).await.unwrap().label.map(|l| l.id);
        let first = match store.save_label(1, save(base, "red", "ann")).await.unwrap() {
            SaveOutcome::Saved { label } => label,
            other => panic!("{other:?}"),
        };
        match store.save_label(1, save(base, "blue", "bob")).await.unwrap() {
            SaveOutcome::Conflict { current } => assert_eq!(current.map(|l| l.id), Some(first.id)),
            other => panic!("a stale save went through: {other:?}"),
        }
        let item = store.item(1).await.unwrap();
        assert_eq!(item.label.unwrap().answer.text.as_deref(), Some("red"));
        assert_eq!(store.label_history(1).await.unwrap().len(), 1 + usize::from(base.is_some()));
        // Based on the current label, the same change goes through.
        assert!(matches!(
            store.save_label(1, save(Some(first.id), "blue", "bob")).await.unwrap(),
            SaveOutcome::Saved { .. }
        ));
        assert!(store.audit_verify().await.unwrap().ok());
        store.close();
    }
}
