//! Reading a version (or the working state) back out as records, for the format writers.
//! Runs in one read transaction so the records are one consistent snapshot, and streams
//! them through a bounded channel so memory stays flat on large projects.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use mmloop_core::{ImageInfo, ImageSource, LabelStatus, Location, Prediction, Record, Task};
use serde::Serialize;

use crate::sql::{Conn, Dialect};
use crate::versions::{Entry, Manifest, VersionInfo, load_manifest, resolve};
use crate::{Store, StoreError};

const CHUNK: usize = 512;

/// Which state to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionSpec {
    /// The project as it is now, committed or not.
    Working,
    /// A committed version: `v2`, `HEAD`, `HEAD~1`, an id prefix.
    Named(String),
}

impl std::str::FromStr for VersionSpec {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "working" | "work" | "wip" => VersionSpec::Working,
            _ => VersionSpec::Named(s.to_string()),
        })
    }
}

/// Which items to read.
#[derive(Clone, Debug, Default)]
pub struct ExportFilter {
    pub split: Option<String>,
    /// Also items whose label is not trusted yet (pending, skipped); rejected answers are
    /// never written.
    pub include_unreviewed: bool,
    pub task: Option<Task>,
    /// Attach model candidates as predictions.
    pub candidates: bool,
}

/// What an export is reading.
#[derive(Clone, Debug, Serialize)]
pub struct ExportInfo {
    /// `None` for the working state.
    pub version: Option<VersionInfo>,
    pub items: u64,
}

fn working_manifest(conn: Conn) -> Result<Manifest, StoreError> {
    let mut m = Manifest { splits: Vec::new(), entries: Vec::new() };
    conn.each("SELECT id, label_id, split FROM items ORDER BY id", &[], |r| {
        let split: Option<String> = r.get(2)?;
        let split = split.map(|s| match m.splits.iter().position(|x| *x == s) {
            Some(i) => i as u32,
            None => {
                m.splits.push(s);
                (m.splits.len() - 1) as u32
            }
        });
        m.entries.push(Entry { item: r.get(0)?, label: r.get(1)?, split });
        Ok(())
    })?;
    Ok(m)
}

struct Label {
    status: LabelStatus,
    answer: mmloop_core::Answer,
}

/// Source ids that items of different formats share within one export (a COCO
/// annotation 101 and a VQAv2 question 101). Those items are written as `<format>:<id>` so
/// every id in a file is unique and the file imports back; the choice depends on the items
/// the export selects (version, split, task), so the same export always writes the same ids,
/// and an export of one source alone keeps its ids as they were (COCO's integers, say).
fn shared_source_ids(
    conn: Conn,
    wanted: &[Entry],
    task: Option<Task>,
) -> Result<std::collections::HashSet<String>, StoreError> {
    // The format of a key `id:<format>:<source id>`.
    let format = match conn.dialect() {
        Dialect::Sqlite => "substr(key, 4, instr(substr(key, 4), ':') - 1)",
        Dialect::Postgres => "split_part(key, ':', 2)",
    };
    // Two formats or more: MIN <> MAX, which an unsorted (hash) grouping computes, where
    // COUNT(DISTINCT) sorts the million keys first.
    let sql = format!(
        "SELECT id, source_id, key, task FROM items WHERE source_id IN (
             SELECT source_id FROM items WHERE source_id IS NOT NULL AND key LIKE 'id:%' GROUP BY source_id
             HAVING MIN({format}) <> MAX({format}))"
    );
    let mut candidates: Vec<(i64, String, String)> = Vec::new();
    conn.each(&sql, &[], |r| {
        let item_task: String = r.get(3)?;
        if task.is_none_or(|t| t.as_str() == item_task) {
            candidates.push((r.get(0)?, r.get(1)?, r.get(2)?));
        }
        Ok(())
    })?;
    if candidates.is_empty() {
        return Ok(Default::default());
    }
    let selected: std::collections::HashSet<i64> = wanted.iter().map(|e| e.item).collect();
    let mut formats: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for (item, source_id, key) in candidates {
        if selected.contains(&item) {
            formats.entry(source_id).or_default().insert(format_of_key(&key).to_string());
        }
    }
    Ok(formats.into_iter().filter(|(_, f)| f.len() > 1).map(|(id, _)| id).collect())
}

/// The format namespace of an item key `id:<format>:<source id>`.
fn format_of_key(key: &str) -> &str {
    key.strip_prefix("id:").and_then(|k| k.split_once(':')).map(|(f, _)| f).unwrap_or("id")
}

/// The id an item is exported under (see [`shared_source_ids`]).
fn export_id(source_id: Option<String>, key: &str, shared: &std::collections::HashSet<String>) -> Option<String> {
    let id = source_id?;
    if !shared.contains(&id) {
        return Some(id);
    }
    Some(format!("{}:{id}", format_of_key(key)))
}

fn fetch_chunk(
    conn: Conn,
    dot: &std::path::Path,
    m: &Manifest,
    chunk: &[Entry],
    filter: &ExportFilter,
    shared: &std::collections::HashSet<String>,
) -> Result<Vec<Record>, StoreError> {
    let ids: Vec<i64> = chunk.iter().map(|e| e.item).collect();
    let label_ids: Vec<i64> = chunk.iter().filter_map(|e| e.label).collect();
    let mut labels: HashMap<i64, Label> = HashMap::with_capacity(label_ids.len());
    conn.query_in("SELECT id, status, answer, answers FROM labels WHERE", "id", &label_ids, "", |r| {
        let status: String = r.get(1)?;
        labels.insert(
            r.get(0)?,
            Label {
                status: status.parse().unwrap_or(LabelStatus::Pending),
                answer: crate::labels::parse_answers(r.get(2)?, r.get(3)?),
            },
        );
        Ok(())
    })?;
    let mut images: HashMap<i64, Vec<(ImageSource, ImageInfo)>> = HashMap::new();
    conn.query_in(
        "SELECT ii.item_id, im.id, im.sha256, im.path, im.copied, im.width, im.height, im.format, im.bytes
         FROM item_images ii JOIN images im ON im.id = ii.image_id WHERE",
        "ii.item_id",
        &ids,
        " ORDER BY ii.item_id, ii.pos",
        |r| {
            let item: i64 = r.get(0)?;
            let img = crate::labels::row_image_at(r, 1, dot)?;
            images.entry(item).or_default().push((
                ImageSource::Path(img.path.to_string_lossy().into_owned()),
                ImageInfo { sha256: img.sha256, width: img.width, height: img.height, format: img.format },
            ));
            Ok(())
        },
    )?;
    let mut preds: HashMap<i64, Vec<Prediction>> = HashMap::new();
    if filter.candidates {
        conn.query_in(
            "SELECT item_id, model, answer, confidence FROM candidates WHERE",
            "item_id",
            &ids,
            " AND answer IS NOT NULL AND error IS NULL ORDER BY item_id, id",
            |r| {
                preds.entry(r.get(0)?).or_default().push(Prediction {
                    model: r.get(1)?,
                    answer: r.get(2)?,
                    score: r.get(3)?,
                });
                Ok(())
            },
        )?;
    }
    let mut items: HashMap<i64, Record> = HashMap::with_capacity(chunk.len());
    {
        conn.query_in("SELECT id, source_id, task, question, context, conversation, turn, tags, meta, source_file, source_line, key
             FROM items WHERE", "id",
            &ids,
            "",
            |r| {
            let id: i64 = r.get(0)?;
            let task: String = r.get(2)?;
            let file: Option<String> = r.get(9)?;
            let line: Option<i64> = r.get(10)?;
            let file = std::sync::Arc::new(std::path::PathBuf::from(file.unwrap_or_default()));
            let mut rec = Record::new(
                task.parse().unwrap_or(Task::Vqa),
                r.get::<String>(3)?,
                Location { file, line: line.map(|l| l as u64), index: None },
            );
            rec.id = export_id(r.get(1)?, &r.get::<String>(11)?, shared);
            rec.context = r.get::<Option<String>>(4)?.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_default();
            rec.conversation = r.get(5)?;
            rec.turn = r.get::<i64>(6)? as u32;
            rec.tags = r.get::<Option<String>>(7)?.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
            rec.meta = r.get::<Option<String>>(8)?.and_then(|m| serde_json::from_str(&m).ok()).unwrap_or_default();
            items.insert(id, rec);
            Ok(())
        },
        )?;
    }
    let mut out = Vec::with_capacity(chunk.len());
    for e in chunk {
        let Some(mut rec) = items.remove(&e.item) else { continue };
        if filter.task.is_some_and(|t| t != rec.task) {
            continue;
        }
        let label = e.label.and_then(|l| labels.remove(&l));
        let truth = label.as_ref().is_some_and(|l| l.status.is_truth());
        if !truth && !filter.include_unreviewed {
            continue;
        }
        if let Some(l) = label {
            rec.status = Some(l.status);
            if l.status != LabelStatus::Rejected && !l.answer.is_empty() {
                rec.answer = Some(l.answer);
            }
        }
        rec.split = m.split_of(e).map(String::from);
        let (srcs, infos): (Vec<_>, Vec<_>) = images.remove(&e.item).unwrap_or_default().into_iter().unzip();
        rec.images = srcs;
        rec.image_info = infos;
        rec.predictions = preds.remove(&e.item).unwrap_or_default();
        out.push(rec);
    }
    Ok(out)
}

fn stream(
    conn: Conn,
    dot: &std::path::Path,
    m: &Manifest,
    filter: &ExportFilter,
    tx: &SyncSender<Result<Record, StoreError>>,
) -> Result<(), StoreError> {
    let split_idx = match &filter.split {
        Some(s) => match m.splits.iter().position(|x| x == s) {
            Some(i) => Some(Some(i as u32)),
            None => return Ok(()), // no item has that split
        },
        None => None,
    };
    let wanted: Vec<Entry> = m.entries.iter().filter(|e| split_idx.is_none_or(|s| e.split == s)).copied().collect();
    let shared = shared_source_ids(conn, &wanted, filter.task)?;
    for chunk in wanted.chunks(CHUNK) {
        for rec in fetch_chunk(conn, dot, m, chunk, filter, &shared)? {
            if tx.send(Ok(rec)).is_err() {
                return Ok(()); // the reader hung up
            }
        }
    }
    Ok(())
}

impl Store {
    /// Starts reading `version` as records (in item order, conversations together).
    /// Returns what is being read and a channel of records; an error mid-way arrives as
    /// the channel's last message.
    pub async fn export(
        &self,
        version: VersionSpec,
        filter: ExportFilter,
    ) -> Result<(ExportInfo, Receiver<Result<Record, StoreError>>), StoreError> {
        let (tx, rx) = sync_channel(1024);
        let (info_tx, info_rx) = tokio::sync::oneshot::channel();
        let db = self.db().clone();
        let dot = self.paths().dot.clone();
        std::thread::Builder::new()
            .name("mmloop-export".into())
            .spawn(move || {
                let records = tx.clone();
                let res = db.read_blocking(move |c| {
                    let (info, m) = match &version {
                        VersionSpec::Working => (None, working_manifest(c)?),
                        VersionSpec::Named(spec) => {
                            let (v, pages) = resolve(c, spec)?;
                            (Some(v), load_manifest(c, &pages)?)
                        }
                    };
                    let _ = info_tx.send(Ok(ExportInfo { version: info, items: m.entries.len() as u64 }));
                    stream(c, &dot, &m, &filter, &records)
                });
                if let Err(e) = res {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(StoreError::Io)?;
        match info_rx.await {
            Ok(Ok(info)) => Ok((info, rx)),
            Ok(Err(e)) => Err(e),
            // The thread failed before it knew the version: its error is in the channel.
            Err(_) => match rx.recv() {
                Ok(Err(e)) => Err(e),
                _ => Err(StoreError::Internal("export thread ended early".into())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use mmloop_core::{Candidate, Digest};

    use super::{ExportFilter, VersionSpec};
    use crate::review::{Decision, DecisionAction, Role};
    use crate::test_support::{import, record};
    use crate::{NewCandidate, Store};

    async fn exported(store: &Store, version: VersionSpec, filter: ExportFilter) -> Vec<mmloop_core::Record> {
        let (info, rx) = store.export(version, filter).await.unwrap();
        let records: Vec<_> = rx.into_iter().map(Result::unwrap).collect();
        assert!(info.items >= records.len() as u64);
        records
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn export_writes_trusted_answers_and_a_version_stays_as_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("p"), Some("t"), "test").await.unwrap();
        let d = dir.path();
        let records =
            vec![record(d, 0, "Colour?", Some("red")), record(d, 1, "Count?", Some("2")), record(d, 2, "Shape?", None)];
        import(&store, d, records).await.unwrap();
        let c = Candidate { answer: "square".into(), confidence: Some(0.7), ..Default::default() };
        store.add_candidates(None, "m", Digest([3; 32]), "test", vec![NewCandidate::answered(3, c)]).await.unwrap();
        let ann = store.create_user("ann", Role::Reviewer, None, "test").await.unwrap();
        let base = store.item(2).await.unwrap().label.map(|l| l.id);
        let reject =
            Decision { action: DecisionAction::Reject, base, answer: None, candidate_id: None, lead_time_ms: None };
        store.decide(2, &ann, reject).await.unwrap();
        let v1 = store.commit("first", "test").await.unwrap();

        // Trusted answers only: the rejected one and the unanswered item stay out.
        let trusted = exported(&store, VersionSpec::Working, ExportFilter::default()).await;
        assert_eq!(trusted.iter().map(|r| r.question.as_str()).collect::<Vec<_>>(), ["Colour?"]);
        // With the items not trusted yet and the model's answers: every item, the rejected answer
        // still left out, and the candidate riding along as a prediction.
        let all = ExportFilter { include_unreviewed: true, candidates: true, ..Default::default() };
        let rows = exported(&store, VersionSpec::Working, all).await;
        assert_eq!(rows.iter().map(|r| r.question.as_str()).collect::<Vec<_>>(), ["Colour?", "Count?", "Shape?"]);
        assert!(rows[1].answer.as_ref().is_none_or(|a| a.text.as_deref() != Some("2")), "{:?}", rows[1].answer);
        assert_eq!(rows[2].predictions.len(), 1, "{:?}", rows[2].predictions);

        // A later edit changes the working copy, not the committed version.
        let base = store.item(1).await.unwrap().label.map(|l| l.id);
        let edit = Decision {
            action: DecisionAction::Edit,
            base,
            answer: Some(mmloop_core::Answer::text("crimson")),
            candidate_id: None,
            lead_time_ms: None,
        };
        store.decide(1, &ann, edit).await.unwrap();
        let now = exported(&store, VersionSpec::Working, ExportFilter::default()).await;
        let then = exported(&store, VersionSpec::Named(v1.version.id.to_string()), ExportFilter::default()).await;
        assert_eq!(now[0].answer.as_ref().unwrap().text.as_deref(), Some("crimson"));
        assert_eq!(then[0].answer.as_ref().unwrap().text.as_deref(), Some("red"));
        store.close();
    }
}
