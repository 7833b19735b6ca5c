//! Importing records: all of a file in one transaction, so an import lands whole or not
//! at all (a killed process leaves the project as it was). Images are read and hashed in
//! parallel batches; identical images are stored once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use crate::sql::{Cell, Conn, Dialect};
use mmloop_core::{Answer, Digest, ItemContent, LabelContent, LabelStatus, Record, RecordError, canonical_json};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use crate::images::{self, ImageError, ImageLimits, Origin, Probed};
use crate::{Store, StoreError};

const BATCH: usize = 2048;

/// How to import one file.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The format name; it namespaces the file's own ids (`id:<format>:<id>`).
    pub format: String,
    pub file: PathBuf,
    /// Where relative image paths resolve.
    pub images_dir: PathBuf,
    pub copy_images: bool,
    /// Import the good records and report the bad ones instead of failing.
    pub skip_bad: bool,
    pub actor: String,
    /// Everything the user asked for, kept with the run.
    pub config: Value,
}

/// What an importer sends the store: records, refused records, and how the source ended.
/// The store commits only after `End`; `Abort`, or a sender that vanishes without `End`,
/// rolls the whole import back.
#[derive(Debug)]
pub enum Incoming {
    Record(Box<Record>),
    Bad(RecordError),
    Abort(String),
    End,
}

/// Told how far an import got.
pub trait ImportProgress: Send + Sync {
    fn records(&self, done: u64);
    /// A new pass over the records starts (`checking images`, `importing`).
    fn phase(&self, _what: &str) {}
}

impl ImportProgress for () {
    fn records(&self, _: u64) {}
}

impl<T: ImportProgress + ?Sized> ImportProgress for std::sync::Arc<T> {
    fn records(&self, done: u64) {
        (**self).records(done)
    }
    fn phase(&self, what: &str) {
        (**self).phase(what)
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    pub run_id: i64,
    /// New items.
    pub added: u64,
    /// Records already in the project with the same content.
    pub unchanged: u64,
    /// Items whose imported answer the file changed (no one had reviewed them).
    pub updated: u64,
    /// Items whose answer the file changed but a person had decided on: kept as reviewed.
    pub kept_reviewed: u64,
    /// Records that repeat another record of the same file word for word (no id).
    pub duplicates: u64,
    /// Records refused (only with `skip_bad`).
    pub bad: u64,
    pub labels: u64,
    pub candidates: u64,
    pub images_added: u64,
    pub images_referenced: u64,
    /// Where the bad records were written (with `skip_bad`).
    pub report_path: Option<PathBuf>,
}

/// A refused record, as written to the report.
#[derive(Serialize)]
struct BadRow {
    location: String,
    id: Option<String>,
    error: String,
    hint: Option<String>,
}

impl From<&RecordError> for BadRow {
    fn from(e: &RecordError) -> Self {
        BadRow { location: e.location.to_string(), id: e.id.clone(), error: e.message.clone(), hint: e.hint.clone() }
    }
}

/// A file-hash for the run record: which bytes were imported.
fn file_digest(path: &Path) -> Option<Digest> {
    use sha2::Digest as _;
    if path.is_dir() {
        return None;
    }
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).ok()?;
    Some(Digest(h.finalize().into()))
}

/// Images read, hashed and checked before an import's transaction (see
/// [`Store::check_images`]), keyed like the import's own table. Only files are kept: inline
/// bytes are cheap to check again and could be large.
#[derive(Default)]
pub struct CheckedImages {
    probed: HashMap<String, Result<Probed, ImageError>>,
}

impl CheckedImages {
    pub fn len(&self) -> usize {
        self.probed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.probed.is_empty()
    }
}

impl Store {
    /// The slow part of an import done before it takes the database's write lock: reads,
    /// hashes and checks every image file `records` names (in parallel batches), and copies
    /// it into the project when `opts` asks for copies (content-addressed blobs, harmless if
    /// the import then fails). Writes nothing to the database, so a review server on the
    /// same project keeps saving meanwhile; [`Store::import`] then only does SQL.
    pub async fn check_images(
        &self,
        opts: &ImportOptions,
        records: Receiver<Incoming>,
        progress: std::sync::Arc<dyn ImportProgress>,
    ) -> Result<CheckedImages, StoreError> {
        progress.phase("checking images");
        let root = opts.images_dir.clone();
        let copy = opts.copy_images;
        let dot = self.paths().dot.clone();
        let limits = ImageLimits { max_pixels: self.config().import.max_image_pixels };
        tokio::task::spawn_blocking(move || {
            let mut checked = CheckedImages::default();
            let mut done = 0u64;
            let mut batch: Vec<(String, String)> = Vec::new();
            let flush = |batch: &mut Vec<(String, String)>, checked: &mut CheckedImages| -> Result<(), StoreError> {
                let probed: Vec<(String, Result<Probed, ImageError>)> = std::mem::take(batch)
                    .into_par_iter()
                    .map(|(key, raw)| {
                        let p = images::probe(&mmloop_core::ImageSource::Path(raw), &root, limits);
                        if copy && let Ok(p) = &p {
                            images::write_blob(&dot, p)
                                .map_err(|e| StoreError::IoPath { path: dot.clone(), source: e })?;
                        }
                        Ok((key, p))
                    })
                    .collect::<Result<_, StoreError>>()?;
                checked.probed.extend(probed);
                Ok(())
            };
            while let Ok(msg) = records.recv() {
                match msg {
                    Incoming::Record(r) => {
                        for src in &r.images {
                            if let mmloop_core::ImageSource::Path(raw) = src {
                                let key = source_key(src);
                                if !checked.probed.contains_key(&key) && !batch.iter().any(|(k, _)| *k == key) {
                                    batch.push((key, raw.clone()));
                                }
                            }
                        }
                        done += 1;
                        if batch.len() >= BATCH {
                            flush(&mut batch, &mut checked)?;
                            progress.records(done);
                        }
                    }
                    Incoming::Bad(_) => done += 1,
                    Incoming::Abort(why) => return Err(StoreError::Import(format!("{why}\n  nothing was imported"))),
                    Incoming::End => break,
                }
            }
            flush(&mut batch, &mut checked)?;
            progress.records(done);
            Ok(checked)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    /// Imports every record `records` yields, in one transaction.
    ///
    /// A bad record (unreadable, missing image, duplicate id, ...) aborts the import and
    /// nothing is stored, unless `skip_bad` is set: then the good records land and the bad
    /// ones are written to a report under `.mmloop/reports/`.
    ///
    /// Images found in `checked` (see [`Store::check_images`]) are not read again, so the
    /// write lock is held for the SQL work only; others are read here.
    pub async fn import(
        &self,
        opts: ImportOptions,
        records: Receiver<Incoming>,
        checked: CheckedImages,
        progress: Box<dyn ImportProgress>,
    ) -> Result<ImportReport, StoreError> {
        let dot = self.paths().dot.clone();
        let reports = self.paths().reports.clone();
        let limits = ImageLimits { max_pixels: self.config().import.max_image_pixels };
        let sha = file_digest(&opts.file);
        progress.phase("importing");
        let report = self
            .db()
            .write_alone(move |tx| {
                let mut job = Job::start(tx, &opts, sha, &dot, limits, checked)?;
                let mut batch = Vec::with_capacity(BATCH);
                let mut done = 0u64;
                let mut ended = false;
                while !ended {
                    batch.clear();
                    let mut next = records.recv().ok();
                    loop {
                        match next {
                            Some(Incoming::Record(r)) => batch.push(Ok(*r)),
                            Some(Incoming::Bad(e)) => batch.push(Err(e)),
                            Some(Incoming::Abort(why)) => {
                                return Err(StoreError::Import(format!("{why}\n  nothing was imported")));
                            }
                            Some(Incoming::End) => {
                                ended = true;
                                break;
                            }
                            None if batch.is_empty() => {
                                return Err(StoreError::Import(
                                    "the dataset reader stopped before the end of the file; nothing was imported".into(),
                                ));
                            }
                            None => break,
                        }
                        if batch.len() >= BATCH {
                            break;
                        }
                        next = records.try_recv().ok();
                    }
                    done += batch.len() as u64;
                    job.batch(tx, std::mem::take(&mut batch))?;
                    if !opts.skip_bad
                        && let Some(e) = job.bad.first()
                    {
                        return Err(StoreError::Import(format!(
                            "{e}\n  nothing was imported; fix the record, or pass --skip-bad to import the good ones and get a report of the bad"
                        )));
                    }
                    progress.records(done);
                }
                job.finish(tx, &reports)
            })
            .await?;
        self.sync_audit_head().await?;
        // Committed: statistics that fail to refresh are refreshed later by the server itself.
        let _ = self.db().analyze_after(report.added + report.updated, IMPORTED_TABLES).await;
        Ok(report)
    }
}

/// The tables an import fills, the largest first.
const IMPORTED_TABLES: &[&str] = &["items", "labels", "item_images", "review_queue", "images"];

/// The state of one import inside its transaction.
struct Job<'o> {
    opts: &'o ImportOptions,
    dot: PathBuf,
    limits: ImageLimits,
    run_id: i64,
    next_item: i64,
    next_label: i64,
    next_image: i64,
    /// Rows of the current batch, written together at its end (`COPY` on PostgreSQL).
    rows: Rows,
    /// Resolved image sources: path text → (image id, digest) or why it was refused.
    paths: HashMap<String, Result<(i64, Digest), String>>,
    by_sha: HashMap<Digest, i64>,
    bad: Vec<RecordError>,
    report: ImportReport,
    now: String,
    /// Images checked before the transaction.
    checked: CheckedImages,
    last_file: (std::sync::Arc<PathBuf>, String),
}

impl<'o> Job<'o> {
    fn start(
        tx: Conn,
        opts: &'o ImportOptions,
        sha: Option<Digest>,
        dot: &Path,
        limits: ImageLimits,
        checked: CheckedImages,
    ) -> Result<Self, StoreError> {
        let now = crate::now();
        let mut config = mmloop_core::redact::value(&opts.config);
        if let Value::Object(m) = &mut config {
            m.insert("file".into(), json!(opts.file.display().to_string()));
            m.insert("sha256".into(), json!(sha.map(|d| d.to_hex())));
        }
        let run_id: i64 = tx.one(
            "INSERT INTO runs (kind, actor, started_at, status, config) VALUES ('import', ?1, ?2, 'running', ?3)
             RETURNING id",
            &[&opts.actor, &now, &canonical_json(&config)],
            |r| r.get(0),
        )?;
        if tx.dialect() == Dialect::Postgres {
            // The tables grow inside this one transaction, unseen by the planner's statistics:
            // a plan made once for the lookups (a sequential scan of a then empty table) would
            // be kept for the whole import. Planned at each execution, they use the indexes.
            tx.batch("SET LOCAL plan_cache_mode = force_custom_plan")?;
        }
        // Ids are handed out here (the import holds the write lock throughout), so a batch's
        // rows can be written together; PostgreSQL's identity sequences follow at the end.
        let next = |table: &str| tx.one(&format!("SELECT COALESCE(MAX(id), 0) + 1 FROM {table}"), &[], |r| r.get(0));
        let (next_item, next_label, next_image): (i64, i64, i64) = (next("items")?, next("labels")?, next("images")?);
        Ok(Job {
            opts,
            dot: dot.to_path_buf(),
            limits,
            run_id,
            next_item,
            next_label,
            next_image,
            rows: Rows::default(),
            paths: HashMap::new(),
            by_sha: HashMap::new(),
            bad: Vec::new(),
            report: ImportReport { run_id, ..Default::default() },
            now,
            checked,
            last_file: (std::sync::Arc::new(PathBuf::new()), String::new()),
        })
    }

    fn batch(&mut self, tx: Conn, batch: Vec<Result<Record, RecordError>>) -> Result<(), StoreError> {
        // Read and hash the images this batch sees for the first time, in parallel.
        let mut fresh: Vec<(String, &mmloop_core::ImageSource)> = Vec::new();
        let mut probed: Vec<(String, Result<Probed, ImageError>)> = Vec::new();
        let mut queued = std::collections::HashSet::new();
        for r in batch.iter().flatten() {
            for src in &r.images {
                let key = source_key(src);
                if !self.paths.contains_key(&key) && queued.insert(key.clone()) {
                    match self.checked.probed.remove(&key) {
                        Some(p) => probed.push((key, p)),
                        None => fresh.push((key, src)),
                    }
                }
            }
        }
        let root = &self.opts.images_dir;
        let limits = self.limits;
        probed.par_extend(fresh.into_par_iter().map(|(k, src)| (k, images::probe(src, root, limits))));
        // Images already in the project, in one lookup for the batch.
        let shas: Vec<Vec<u8>> = probed
            .iter()
            .filter_map(|(_, p)| p.as_ref().ok())
            .filter(|p| !self.by_sha.contains_key(&p.sha256))
            .map(|p| p.sha256.as_bytes().to_vec())
            .collect();
        for (id, sha) in tx.query_in("SELECT id, sha256 FROM images WHERE", "sha256", &shas, "", |r| {
            Ok((r.get::<i64>(0)?, r.get::<Vec<u8>>(1)?))
        })? {
            self.by_sha.insert(Digest::from_slice(&sha).unwrap_or_default(), id);
        }
        for (key, res) in probed {
            let stored = match res {
                Ok(p) => self.store_image(p)?,
                Err(e) => Err(image_error_text(&e)),
            };
            self.paths.insert(key, stored);
        }
        // Items already in the project under the batch's keys, in one lookup.
        let mut prepared = Vec::with_capacity(batch.len());
        for rec in batch {
            prepared.push(match rec {
                Ok(r) => self.prepare(r),
                Err(e) => Err(e),
            });
        }
        let keys: Vec<String> = prepared.iter().flatten().map(|p| p.key.clone()).collect();
        let mut existing: HashMap<String, Existing> = HashMap::new();
        for (key, e) in tx.query_in(
            "SELECT key, id, content, run_id, source_file, source_line, label_id FROM items WHERE",
            "key",
            &keys,
            "",
            |row| {
                let e = Existing {
                    id: row.get(1)?,
                    content: row.get(2)?,
                    run: row.get(3)?,
                    file: row.get(4)?,
                    line: row.get(5)?,
                    label_id: row.get(6)?,
                    label_content: None,
                    label_status: None,
                };
                Ok((row.get::<String>(0)?, e))
            },
        )? {
            existing.insert(key, e);
        }
        let label_ids: Vec<i64> = existing.values().filter_map(|e| e.label_id).collect();
        let labels: HashMap<i64, (Vec<u8>, String)> = tx
            .query_in("SELECT id, content, status FROM labels WHERE", "id", &label_ids, "", |row| {
                Ok((row.get::<i64>(0)?, (row.get(1)?, row.get(2)?)))
            })?
            .into_iter()
            .collect();
        for e in existing.values_mut() {
            if let Some((content, status)) = e.label_id.and_then(|l| labels.get(&l)) {
                (e.label_content, e.label_status) = (Some(content.clone()), Some(status.clone()));
            }
        }
        for p in prepared {
            let outcome = match p {
                Ok(p) => self.item(p, &mut existing)?,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                self.bad.push(e);
            }
        }
        self.rows.write(tx)
    }

    /// Stores a probed image once per content (its row written with the batch); returns its
    /// id, or why it was refused.
    fn store_image(&mut self, p: Probed) -> Result<Result<(i64, Digest), String>, StoreError> {
        if let Some(&id) = self.by_sha.get(&p.sha256) {
            return Ok(Ok((id, p.sha256)));
        }
        let copy = self.opts.copy_images || matches!(p.origin, Origin::Inline(_));
        let (path, copied) = if copy {
            let rel = images::write_blob(&self.dot, &p)
                .map_err(|e| StoreError::IoPath { path: self.dot.clone(), source: e })?;
            (rel.to_string_lossy().into_owned(), true)
        } else {
            match &p.origin {
                Origin::File(f) => (f.to_string_lossy().into_owned(), false),
                Origin::Inline(_) => unreachable!("inline images are always copied"),
            }
        };
        let id = self.next_image;
        self.next_image += 1;
        self.rows.images.push(vec![
            Cell::Int(id),
            Cell::Blob(p.sha256.as_bytes().to_vec()),
            Cell::Text(path),
            Cell::Int(i64::from(copied)),
            Cell::Int(i64::from(p.width)),
            Cell::Int(i64::from(p.height)),
            Cell::Text(p.format.to_string()),
            Cell::Int(p.bytes as i64),
        ]);
        self.report.images_added += 1;
        self.by_sha.insert(p.sha256, id);
        Ok(Ok((id, p.sha256)))
    }

    /// A record's key, digests and images, or why it is refused (an image it names was).
    fn prepare(&self, r: Record) -> Result<Prepared, RecordError> {
        let mut image_ids = Vec::with_capacity(r.images.len());
        let mut shas = Vec::with_capacity(r.images.len());
        for src in &r.images {
            match &self.paths[&source_key(src)] {
                Ok((id, sha)) => {
                    image_ids.push(*id);
                    shas.push(*sha);
                }
                Err(msg) => {
                    let (message, hint) = split_hint(msg);
                    let mut e = RecordError::new(r.source.clone(), message).id(r.id.clone());
                    e.hint = hint;
                    return Err(e);
                }
            }
        }
        let context = (!r.context.is_empty()).then(|| serde_json::to_string(&r.context).expect("messages serialize"));
        let tags = (!r.tags.is_empty()).then(|| serde_json::to_string(&r.tags).expect("tags serialize"));
        let meta = (!r.meta.is_empty()).then(|| canonical_json(&Value::Object(r.meta.clone())));
        let content = ItemContent {
            task: r.task,
            source_id: r.id.as_deref(),
            question: &r.question,
            context_json: context.as_deref(),
            turn: r.turn,
            images: &shas,
            tags: &r.tags,
            meta_json: meta.as_deref(),
        }
        .digest();
        let status = r.status.unwrap_or(LabelStatus::Imported);
        let answer = r.answer.clone().filter(|a| !a.is_empty());
        let label = match (&answer, r.status) {
            (Some(a), _) => Some((status, a.clone())),
            (None, Some(s)) => Some((s, Answer::default())),
            (None, None) => None,
        };
        let label_digest = label.as_ref().map(|(s, a)| LabelContent { status: *s, answer: a }.digest());
        // Rows without an id are told apart by everything they hold, answer included:
        // five captions of one image under one prompt are five items.
        let key = match &r.id {
            Some(id) => format!("id:{}:{id}", self.opts.format),
            None => {
                let mut b = content.as_bytes().to_vec();
                b.extend_from_slice(label_digest.as_ref().map_or(&[0u8; 32], |d| d.as_bytes()));
                format!("sha:{}", Digest::of(&b).to_hex())
            }
        };
        Ok(Prepared { r, key, content, context, tags, meta, label, label_digest, image_ids })
    }

    /// Decides what a prepared record does (a new item, an updated imported answer, nothing)
    /// against the item stored under its key, if any, and queues its rows; a record error
    /// when it is refused. Items this batch adds join `existing` as they are queued.
    fn item(
        &mut self,
        p: Prepared,
        existing: &mut HashMap<String, Existing>,
    ) -> Result<Result<(), RecordError>, StoreError> {
        let Prepared { r, key, content, context, tags, meta, label, label_digest, image_ids } = p;
        if let Some(old) = existing.get(&key) {
            let same_run = old.run == self.run_id;
            if r.id.is_none() {
                // Same key means same content: a repeated row.
                if same_run {
                    self.report.duplicates += 1;
                } else {
                    self.report.unchanged += 1;
                }
                return Ok(Ok(()));
            }
            let where_from = match (&old.file, old.line) {
                (Some(f), Some(l)) => format!("{f}:{l}"),
                (Some(f), None) => f.clone(),
                _ => "an earlier import".into(),
            };
            if same_run {
                return Ok(Err(RecordError::new(
                    r.source.clone(),
                    format!(
                        "duplicate id {:?}: the file already has it at {where_from}",
                        r.id.as_deref().unwrap_or_default()
                    ),
                )
                .id(r.id.clone())
                .hint("ids must be unique within a file")));
            }
            if old.content.as_slice() != content.as_bytes() {
                return Ok(Err(RecordError::new(
                    r.source.clone(),
                    format!(
                        "id {:?} is already in the project (from {where_from}) with a different question or images",
                        r.id.as_deref().unwrap_or_default()
                    ),
                )
                .id(r.id.clone())
                .hint("an item's question and images never change; give the new item another id")));
            }
            if old.label_content.as_deref() == label_digest.as_ref().map(|d| d.as_bytes().as_slice()) {
                self.report.unchanged += 1;
                return Ok(Ok(()));
            }
            // The file's answer changed. Take it unless a person has decided on this item.
            let untouched = old.label_status.as_deref().is_none_or(|s| s == LabelStatus::Imported.as_str());
            match (&label, untouched) {
                (Some((status, answer)), true) => {
                    let (item, prev) = (old.id, old.label_id);
                    let id = self.label(item, prev, *status, answer);
                    self.rows.moved.push((item, id));
                    if let Some(old) = existing.get_mut(&key) {
                        old.label_id = Some(id);
                        old.label_content = label_digest.map(|d| d.as_bytes().to_vec());
                        old.label_status = Some(status.as_str().to_string());
                    }
                    self.report.updated += 1;
                }
                _ => self.report.kept_reviewed += 1,
            }
            return Ok(Ok(()));
        }

        let item_id = self.next_item;
        self.next_item += 1;
        let label_id = label.as_ref().map(|(status, answer)| self.label(item_id, None, *status, answer));
        let source_file = self.source_file(&r.source.file);
        let line = r.source.line.or(r.source.index).map(|n| n as i64);
        existing.insert(
            key.clone(),
            Existing {
                id: item_id,
                content: content.as_bytes().to_vec(),
                run: self.run_id,
                file: Some(source_file.clone()),
                line,
                label_id,
                label_content: label_digest.map(|d| d.as_bytes().to_vec()),
                label_status: label.as_ref().map(|(s, _)| s.as_str().to_string()),
            },
        );
        let text = |s: Option<String>| s.map_or(Cell::Null, Cell::Text);
        self.rows.items.push(vec![
            Cell::Int(item_id),
            Cell::Text(key),
            text(r.id.clone()),
            Cell::Text(r.task.as_str().to_string()),
            Cell::Text(r.question.clone()),
            text(context),
            text(r.conversation.clone()),
            Cell::Int(i64::from(r.turn)),
            text(tags),
            text(meta),
            Cell::Text(source_file),
            line.map_or(Cell::Null, Cell::Int),
            Cell::Int(self.run_id),
            Cell::Blob(content.as_bytes().to_vec()),
            text(r.split.clone()),
            label_id.map_or(Cell::Null, Cell::Int),
        ]);
        for (pos, id) in image_ids.iter().enumerate() {
            self.rows.item_images.push(vec![Cell::Int(item_id), Cell::Int(pos as i64), Cell::Int(*id)]);
        }
        self.report.images_referenced += image_ids.len() as u64;
        for p in &r.predictions {
            self.rows.candidates.push(vec![
                Cell::Int(item_id),
                Cell::Int(self.run_id),
                Cell::Text(p.model.clone()),
                Cell::Text(p.answer.clone()),
                p.score.map_or(Cell::Null, Cell::Real),
                Cell::Text(self.now.clone()),
            ]);
            self.report.candidates += 1;
        }
        self.report.added += 1;
        Ok(Ok(()))
    }

    /// Queues an imported label; returns its id.
    fn label(&mut self, item_id: i64, prev: Option<i64>, status: LabelStatus, a: &Answer) -> i64 {
        let digest = LabelContent { status, answer: a }.digest();
        let answers = (!a.all.is_empty()).then(|| serde_json::to_string(&a.all).expect("answers serialize"));
        let id = self.next_label;
        self.next_label += 1;
        self.rows.labels.push(vec![
            Cell::Int(id),
            Cell::Int(item_id),
            prev.map_or(Cell::Null, Cell::Int),
            Cell::Text(status.as_str().to_string()),
            a.text.clone().map_or(Cell::Null, Cell::Text),
            answers.map_or(Cell::Null, Cell::Text),
            Cell::Text(self.opts.actor.clone()),
            Cell::Text(self.now.clone()),
            Cell::Text("import".into()),
            Cell::Blob(digest.as_bytes().to_vec()),
        ]);
        self.report.labels += 1;
        id
    }

    /// The display text of a record's file, rendered once per file.
    fn source_file(&mut self, file: &std::sync::Arc<PathBuf>) -> String {
        if !std::sync::Arc::ptr_eq(&self.last_file.0, file) {
            self.last_file = (file.clone(), file.display().to_string());
        }
        self.last_file.1.clone()
    }

    fn finish(mut self, tx: Conn, reports: &Path) -> Result<ImportReport, StoreError> {
        if tx.dialect() == Dialect::Postgres {
            // The ids handed out here, past the identity sequences: the next writer's start.
            for table in ["items", "labels", "images"] {
                tx.batch(&format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), GREATEST(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table}"
                ))?;
            }
        }
        self.report.bad = self.bad.len() as u64;
        if !self.bad.is_empty() {
            std::fs::create_dir_all(reports).map_err(|e| StoreError::IoPath { path: reports.into(), source: e })?;
            let path = reports.join(format!("import-{}-bad.jsonl", self.run_id));
            let mut text = String::new();
            for e in &self.bad {
                text.push_str(&serde_json::to_string(&BadRow::from(e)).expect("report rows serialize"));
                text.push('\n');
            }
            crate::fs::write_atomic(&path, text.as_bytes())?;
            self.report.report_path = Some(path);
        }
        let summary = serde_json::to_value(&self.report).expect("report serializes");
        tx.execute(
            "UPDATE runs SET status = 'done', finished_at = ?1, summary = ?2 WHERE id = ?3",
            &[&crate::now(), &canonical_json(&summary), &self.run_id],
        )?;
        let config: String = tx.one("SELECT config FROM runs WHERE id = ?1", &[&self.run_id], |r| r.get(0))?;
        let before = None;
        let after = json!({
            "run": self.run_id,
            "config": serde_json::from_str::<Value>(&config).unwrap_or(Value::Null),
            "summary": summary,
        });
        crate::audit::append(tx, &self.opts.actor, "import", &format!("run:{}", self.run_id), before, Some(&after))?;
        // New items join the review queue with the import, not at some later read.
        crate::review::queue::sync_queue(tx).map_err(|e| match e {
            crate::ReviewError::Store(s) => s,
            other => StoreError::Internal(other.to_string()),
        })?;
        Ok(self.report)
    }
}

/// A record ready to be stored: its key and digests, its rows' fields.
struct Prepared {
    r: Record,
    key: String,
    content: Digest,
    context: Option<String>,
    tags: Option<String>,
    meta: Option<String>,
    label: Option<(LabelStatus, Answer)>,
    label_digest: Option<Digest>,
    image_ids: Vec<i64>,
}

/// The rows of one batch, written together at its end: `COPY` on PostgreSQL (one round trip
/// per table instead of one per row), prepared inserts on SQLite. Parents first; then the
/// items whose imported answer moved to a new label (after that label exists, for the
/// review queue's trigger to read its status).
#[derive(Default)]
struct Rows {
    images: Vec<Vec<Cell>>,
    labels: Vec<Vec<Cell>>,
    items: Vec<Vec<Cell>>,
    item_images: Vec<Vec<Cell>>,
    candidates: Vec<Vec<Cell>>,
    /// (item, new label).
    moved: Vec<(i64, i64)>,
}

impl Rows {
    fn write(&mut self, tx: Conn) -> Result<(), StoreError> {
        // Imported labels have no lead time; candidates take their id from the database.
        const LABELS: &[&str] =
            &["id", "item_id", "prev_id", "status", "answer", "answers", "actor", "at", "action", "content"];
        const CANDIDATES: &[&str] = &["item_id", "run_id", "model", "answer", "confidence", "created_at"];
        for (table, columns, rows) in [
            ("images", crate::migrate::columns("images"), &mut self.images),
            ("labels", LABELS, &mut self.labels),
            ("items", crate::migrate::columns("items"), &mut self.items),
            ("item_images", crate::migrate::columns("item_images"), &mut self.item_images),
            ("candidates", CANDIDATES, &mut self.candidates),
        ] {
            if !rows.is_empty() {
                tx.copy_in(table, columns, rows)?;
                rows.clear();
            }
        }
        for (item, label) in self.moved.drain(..) {
            tx.execute("UPDATE items SET label_id = ?1 WHERE id = ?2", &[&label, &item])?;
        }
        Ok(())
    }
}

/// An item already stored under the key a record maps to.
struct Existing {
    id: i64,
    content: Vec<u8>,
    run: i64,
    file: Option<String>,
    line: Option<i64>,
    label_id: Option<i64>,
    label_content: Option<Vec<u8>>,
    label_status: Option<String>,
}

/// Identifies an image source within one import.
fn source_key(src: &mmloop_core::ImageSource) -> String {
    match src {
        mmloop_core::ImageSource::Path(p) => format!("p:{p}"),
        mmloop_core::ImageSource::Url(u) => format!("u:{u}"),
        mmloop_core::ImageSource::Bytes(b) => format!("b:{}", Digest::of(b).to_hex()),
    }
}

fn image_error_text(e: &ImageError) -> String {
    match e.hint() {
        Some(h) => format!("{e}\n{h}"),
        None => e.to_string(),
    }
}

fn split_hint(msg: &str) -> (String, Option<String>) {
    match msg.split_once('\n') {
        Some((m, h)) => (m.to_string(), Some(h.to_string())),
        None => (msg.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;
    use crate::review::{Decision, DecisionAction, Role};
    use crate::test_support::{import, record};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reimports_keep_what_people_decided_and_refuse_a_changed_question() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("p"), Some("t"), "test").await.unwrap();
        let d = dir.path();
        let first = vec![record(d, 0, "What colour?", Some("red")), record(d, 1, "How many?", Some("2"))];
        let r = import(&store, d, first.clone()).await.unwrap();
        assert_eq!((r.added, r.labels), (2, 2));
        // The same file again: nothing new.
        let r = import(&store, d, first).await.unwrap();
        assert_eq!((r.added, r.unchanged, r.updated), (0, 2, 0));
        // A person edits item 2; then the file changes both answers.
        let ann = store.create_user("ann", Role::Reviewer, None, "test").await.unwrap();
        let base = store.item(2).await.unwrap().label.map(|l| l.id);
        let edit = Decision {
            action: DecisionAction::Edit,
            base,
            answer: Some(mmloop_core::Answer::text("3")),
            candidate_id: None,
            lead_time_ms: None,
        };
        store.decide(2, &ann, edit).await.unwrap();
        let changed = vec![record(d, 0, "What colour?", Some("blue")), record(d, 1, "How many?", Some("4"))];
        let r = import(&store, d, changed).await.unwrap();
        assert_eq!((r.updated, r.kept_reviewed), (1, 1));
        assert_eq!(store.item(1).await.unwrap().label.unwrap().answer.text.as_deref(), Some("blue"));
        assert_eq!(store.item(2).await.unwrap().label.unwrap().answer.text.as_deref(), Some("3"));
        // Another question under an existing id is refused, and the whole import with it.
        let items_before = store.stats().await.unwrap().items;
        let clash = vec![record(d, 5, "A new one?", Some("x")), record(d, 0, "Which shape?", Some("round"))];
        let err = import(&store, d, clash).await.unwrap_err();
        assert!(err.to_string().contains("different question"), "{err}");
        assert_eq!(store.stats().await.unwrap().items, items_before);
        // Every import is an audited run; the chain verifies.
        assert!(store.audit_verify().await.unwrap().ok());
        store.close();
    }
}
