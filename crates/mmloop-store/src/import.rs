//! Importing records: all of a file in one transaction, so an import lands whole or not
//! at all (a killed process leaves the project as it was). Images are read and hashed in
//! parallel batches; identical images are stored once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use crate::sql::Conn;
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
        Ok(report)
    }
}

/// The state of one import inside its transaction.
struct Job<'o> {
    opts: &'o ImportOptions,
    dot: PathBuf,
    limits: ImageLimits,
    run_id: i64,
    next_item: i64,
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
        let next_item: i64 = tx.one("SELECT COALESCE(MAX(id), 0) + 1 FROM items", &[], |r| r.get(0))?;
        Ok(Job {
            opts,
            dot: dot.to_path_buf(),
            limits,
            run_id,
            next_item,
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
        for (key, res) in probed {
            let stored = match res {
                Ok(p) => self.store_image(tx, p),
                Err(e) => Ok(Err(image_error_text(&e))),
            };
            self.paths.insert(key, stored?);
        }
        for rec in batch {
            match rec {
                Ok(r) => {
                    if let Err(e) = self.item(tx, r)? {
                        self.bad.push(e);
                    }
                }
                Err(e) => self.bad.push(e),
            }
        }
        Ok(())
    }

    /// Stores a probed image once per content; returns its id.
    fn store_image(&mut self, tx: Conn, p: Probed) -> Result<Result<(i64, Digest), String>, StoreError> {
        if let Some(&id) = self.by_sha.get(&p.sha256) {
            return Ok(Ok((id, p.sha256)));
        }
        let existing: Option<i64> =
            tx.optional("SELECT id FROM images WHERE sha256 = ?1", &[&p.sha256.as_bytes().as_slice()], |r| r.get(0))?;
        let id = match existing {
            Some(id) => id,
            None => {
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
                let id = tx.one(
                    "INSERT INTO images (sha256, path, copied, width, height, format, bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                    &[
                        &p.sha256.as_bytes().as_slice(),
                        &path,
                        &i64::from(copied),
                        &i64::from(p.width),
                        &i64::from(p.height),
                        &p.format,
                        &(p.bytes as i64),
                    ],
                    |r| r.get(0),
                )?;
                self.report.images_added += 1;
                id
            }
        };
        self.by_sha.insert(p.sha256, id);
        Ok(Ok((id, p.sha256)))
    }

    /// Inserts one record's item, label and candidates; a record error when it is refused.
    fn item(&mut self, tx: Conn, r: Record) -> Result<Result<(), RecordError>, StoreError> {
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
                    return Ok(Err(e));
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
        // Two lookups rather than a LEFT JOIN: SQLite re-prepares that join on every
        // binding, which cost a quarter of the import time.
        let mut existing: Option<Existing> = tx.optional(
            "SELECT id, content, run_id, source_file, source_line, label_id FROM items WHERE key = ?1",
            &[&key],
            |row| {
                Ok(Existing {
                    id: row.get(0)?,
                    content: row.get(1)?,
                    run: row.get(2)?,
                    file: row.get(3)?,
                    line: row.get(4)?,
                    label_id: row.get(5)?,
                    label_content: None,
                    label_status: None,
                })
            },
        )?;
        if let Some(e) = existing.as_mut()
            && let Some(l) = e.label_id
        {
            (e.label_content, e.label_status) =
                tx.one("SELECT content, status FROM labels WHERE id = ?1", &[&l], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
        }
        if let Some(old) = existing {
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
                    let id = self.label(tx, old.id, old.label_id, *status, answer)?;
                    tx.execute("UPDATE items SET label_id = ?1 WHERE id = ?2", &[&id, &old.id])?;
                    self.report.updated += 1;
                }
                _ => self.report.kept_reviewed += 1,
            }
            return Ok(Ok(()));
        }

        let item_id = self.next_item;
        self.next_item += 1;
        let label_id = match &label {
            Some((status, answer)) => Some(self.label(tx, item_id, None, *status, answer)?),
            None => None,
        };
        let source_file = self.source_file(&r.source.file);
        tx.execute(
            "INSERT INTO items (id, key, source_id, task, question, context, conversation, turn, tags, meta,
                                source_file, source_line, run_id, content, split, label_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            &[
                &item_id,
                &key,
                &r.id,
                &r.task.as_str(),
                &r.question,
                &context,
                &r.conversation,
                &i64::from(r.turn),
                &tags,
                &meta,
                &source_file,
                &r.source.line.or(r.source.index).map(|n| n as i64),
                &self.run_id,
                &content.as_bytes().as_slice(),
                &r.split,
                &label_id,
            ],
        )?;
        for (pos, id) in image_ids.iter().enumerate() {
            tx.execute(
                "INSERT INTO item_images (item_id, pos, image_id) VALUES (?1, ?2, ?3)",
                &[&item_id, &(pos as i64), id],
            )?;
        }
        self.report.images_referenced += image_ids.len() as u64;
        for p in &r.predictions {
            tx.execute(
                "INSERT INTO candidates (item_id, run_id, model, answer, confidence, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[&item_id, &self.run_id, &p.model, &p.answer, &p.score, &self.now],
            )?;
            self.report.candidates += 1;
        }
        self.report.added += 1;
        Ok(Ok(()))
    }

    fn label(
        &mut self,
        tx: Conn,
        item_id: i64,
        prev: Option<i64>,
        status: LabelStatus,
        a: &Answer,
    ) -> Result<i64, StoreError> {
        let digest = LabelContent { status, answer: a }.digest();
        let answers = (!a.all.is_empty()).then(|| serde_json::to_string(&a.all).expect("answers serialize"));
        let id = tx.one(
            "INSERT INTO labels (item_id, prev_id, status, answer, answers, actor, at, action, content)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'import', ?8) RETURNING id",
            &[
                &item_id,
                &prev,
                &status.as_str(),
                &a.text,
                &answers,
                &self.opts.actor,
                &self.now,
                &digest.as_bytes().as_slice(),
            ],
            |r| r.get(0),
        )?;
        self.report.labels += 1;
        Ok(id)
    }

    /// The display text of a record's file, rendered once per file.
    fn source_file(&mut self, file: &std::sync::Arc<PathBuf>) -> String {
        if !std::sync::Arc::ptr_eq(&self.last_file.0, file) {
            self.last_file = (file.clone(), file.display().to_string());
        }
        self.last_file.1.clone()
    }

    fn finish(mut self, tx: Conn, reports: &Path) -> Result<ImportReport, StoreError> {
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
