//! Pre-annotation runs behind `mmloop infer` (and any server that starts one).
//!
//! - **Project mode**: every item nobody has decided on gets a candidate (answer,
//!   confidence, risk flags, logprobs) stored in the project. A run's params hash (model,
//!   system prompt, generation settings) makes reruns resume: items that already have a
//!   candidate with the same hash are skipped. Results are stored a batch at a time, each
//!   batch in one transaction, so a killed run loses at most the batch in flight.
//! - **File mode**: images + a prompt, or any dataset file, in; a JSONL file out, one
//!   ms-swift dataset row per question (`messages` with the answer appended, `images`) plus
//!   `response`, `labels`, `logprobs`, `confidence`, `flags`, `model`, `id`, in input order.
//!   A rerun appends the questions the file does not answer yet.
//!
//! Either way, up to the backend's in-flight limit questions run at once; an item whose
//! image cannot be read or decoded fails alone (its error is recorded), while an error that
//! would fail every item (server gone, unsupported model) stops the run.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mmloop_core::{Digest, ImageSource, Message, Record, RunStatus, Task, canonical_json};
use mmloop_engine::{Annotation, Annotator, EngineError, InputImage, Job, Prompt};
use mmloop_formats::InferRow;
use mmloop_store::{ItemView, NewCandidate, PendingFilter, Store};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// An image as a question refers to it, read when the question runs.
#[derive(Clone, Debug)]
pub enum ImageIn {
    Path(PathBuf),
    /// A project's image: read only while it is still the imported file.
    Stored(mmloop_store::StoredImage),
    Bytes {
        name: String,
        bytes: Arc<Vec<u8>>,
    },
    /// Known to be unusable (a URL, say): the question fails with this reason.
    Unusable {
        name: String,
        why: String,
    },
}

impl ImageIn {
    pub fn load(&self) -> Result<InputImage, EngineError> {
        match self {
            ImageIn::Path(p) => InputImage::read(p),
            ImageIn::Stored(img) => match mmloop_store::read_checked(img) {
                Ok(bytes) => Ok(InputImage::new(img.path.display().to_string(), bytes)),
                Err(e) => Err(EngineError::Image { name: img.path.display().to_string(), message: e.to_string() }),
            },
            ImageIn::Bytes { name, bytes } => Ok(InputImage::new(name.clone(), bytes.clone())),
            ImageIn::Unusable { name, why } => Err(EngineError::Image { name: name.clone(), message: why.clone() }),
        }
    }
}

/// One question to answer.
#[derive(Clone, Debug)]
pub struct Question {
    /// Unique within the run; seeds sampling (the item id in a project).
    pub key: u64,
    pub system: Option<String>,
    pub context: Vec<Message>,
    pub text: String,
    pub images: Vec<ImageIn>,
    pub is_caption: bool,
    pub answer_type: Option<String>,
}

async fn answer(annotator: Arc<Annotator>, q: Question) -> Result<Annotation, EngineError> {
    let imgs = q.images.clone();
    let images = tokio::task::spawn_blocking(move || imgs.iter().map(ImageIn::load).collect::<Result<Vec<_>, _>>())
        .await
        .map_err(|e| EngineError::Generate(format!("reading images: {e}")))??;
    let prompt = Prompt { system: q.system, context: q.context, text: q.text, images };
    annotator.annotate(Job { prompt, stream: q.key, is_caption: q.is_caption, answer_type: q.answer_type }).await
}

/// Told how a run goes.
pub trait InferProgress: Send {
    fn start(&self, _total: u64, _already_done: u64) {}
    fn advance(&self, _answered: u64, _failed: u64) {}
    fn finish(&self) {}
}

impl InferProgress for () {}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InferReport {
    pub run_id: Option<i64>,
    pub model: String,
    pub params_hash: String,
    /// Questions this run set out to answer.
    pub total: u64,
    /// Skipped: already answered with the same settings.
    pub already_done: u64,
    pub answered: u64,
    pub failed: u64,
    /// Answers with at least one risk flag.
    pub flagged: u64,
    /// How often each flag fired.
    pub flags: BTreeMap<String, u64>,
    pub mean_confidence: Option<f64>,
    pub seconds: f64,
    pub per_second: f64,
    pub output: Option<PathBuf>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    /// The first few item errors.
    pub errors: Vec<String>,
}

impl InferReport {
    fn count(&mut self, r: &Result<Annotation, EngineError>) {
        match r {
            Ok(Annotation { candidate: a, .. }) => {
                self.answered += 1;
                if !a.flags.is_empty() {
                    self.flagged += 1;
                }
                for f in &a.flags {
                    *self.flags.entry(f.flag.clone()).or_default() += 1;
                }
                if let Some(c) = a.confidence {
                    let n = self.answered as f64;
                    let m = self.mean_confidence.unwrap_or(0.0);
                    self.mean_confidence = Some(m + (c - m) / n);
                }
            }
            Err(e) => {
                self.failed += 1;
                if self.errors.len() < 5 {
                    self.errors.push(e.to_string());
                }
            }
        }
    }

    fn close(&mut self, started: Instant) {
        self.seconds = started.elapsed().as_secs_f64();
        let n = (self.answered + self.failed) as f64;
        self.per_second = if self.seconds > 0.0 { n / self.seconds } else { 0.0 };
    }
}

/// The params hash of a run: what answered (engine, model, exact snapshot, settings) and
/// how (system prompt, generation settings, samples). Same hash, same candidates.
pub fn params_hash(annotator: &Annotator, system: Option<&str>) -> (Digest, Value) {
    let info = annotator.backend().info();
    let identity = json!({
        "engine": info.engine,
        "model": info.model,
        "resolved": info.resolved,
        "settings": info.settings,
        "system": system,
        "generation": annotator.options().identity(),
    });
    (Digest::of(canonical_json(&identity).as_bytes()), identity)
}

/// How stop-worthy an error is: item errors are recorded, the rest stop the run.
fn is_fatal(e: &EngineError) -> bool {
    !e.is_item_error()
}

/// Where results go: `result` takes each as it arrives, `flush` makes them durable.
#[allow(async_fn_in_trait)]
pub trait Handler<K> {
    fn result(&mut self, key: K, r: Result<Annotation, EngineError>) -> anyhow::Result<()>;
    async fn flush(&mut self) -> anyhow::Result<()>;
}

/// A source of questions that may have to wait for them (a database page).
#[allow(async_fn_in_trait)]
pub trait Source<K> {
    async fn next(&mut self) -> anyhow::Result<Option<(K, Question)>>;
}

/// Why a run ended before its last question.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stopped {
    /// The caller's stop future resolved (Ctrl-C, a request), with its reason.
    Interrupted(String),
    /// An error that would fail every item (server gone, unsupported model).
    Failed(String),
}

impl Stopped {
    fn status(&self) -> RunStatus {
        match self {
            Stopped::Interrupted(_) => RunStatus::Interrupted,
            Stopped::Failed(_) => RunStatus::Failed,
        }
    }

    fn into_reason(self) -> String {
        match self {
            Stopped::Interrupted(why) | Stopped::Failed(why) => why,
        }
    }
}

/// Runs the questions `source` yields through the annotator, at most its in-flight limit
/// at once, handing each result to `handler`, which is flushed every `flush_every` results
/// and every two seconds. Stops at the first fatal error or when `stop` resolves (with the
/// reason it gives); the questions in flight then are dropped, the results before kept.
async fn drive<K: Send + 'static>(
    annotator: Arc<Annotator>,
    source: &mut impl Source<K>,
    handler: &mut impl Handler<K>,
    flush_every: usize,
    stop: impl Future<Output = String>,
) -> anyhow::Result<Option<Stopped>> {
    let in_flight = annotator.max_in_flight();
    let mut set: JoinSet<(K, Result<Annotation, EngineError>)> = JoinSet::new();
    let mut exhausted = false;
    let mut since_flush = 0usize;
    let mut last_flush = Instant::now();
    let mut stopped = None;
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while !exhausted && set.len() < in_flight {
            match source.next().await? {
                Some((k, q)) => {
                    let a = annotator.clone();
                    set.spawn(async move { (k, answer(a, q).await) });
                }
                None => exhausted = true,
            }
        }
        if set.is_empty() {
            break;
        }
        tokio::select! {
            joined = set.join_next() => {
                let (k, r) = joined.expect("set is not empty").context("a question's task panicked")?;
                if let Err(e) = &r && is_fatal(e) {
                    stopped = Some(Stopped::Failed(e.to_string()));
                    set.abort_all();
                    break;
                }
                handler.result(k, r)?;
                since_flush += 1;
            }
            _ = tick.tick() => {}
            why = &mut stop => {
                stopped = Some(Stopped::Interrupted(why));
                set.abort_all();
                break;
            }
        }
        if since_flush >= flush_every || (since_flush > 0 && last_flush.elapsed() >= Duration::from_secs(2)) {
            handler.flush().await?;
            since_flush = 0;
            last_flush = Instant::now();
        }
    }
    handler.flush().await?;
    Ok(stopped)
}

// ---------------------------------------------------------------- project mode

/// How a project run chooses and records its items.
#[derive(Clone, Debug, Default)]
pub struct ProjectInfer {
    pub filter: PendingFilter,
    /// At most this many items (in id order).
    pub limit: Option<u64>,
    pub system: Option<String>,
    pub actor: String,
    /// Everything the user asked for, kept with the run record.
    pub config: Value,
}

/// The system prompt and the turns before the question: `--system` when given, else the
/// conversation's first `system` message; every other message is context.
fn split_system(system: Option<&str>, messages: &[Message]) -> (Option<String>, Vec<Message>) {
    let mut own = None;
    let mut context = Vec::new();
    for m in messages {
        if m.role == "system" {
            own.get_or_insert_with(|| m.content.clone());
        } else {
            context.push(m.clone());
        }
    }
    (system.map(String::from).or(own), context)
}

fn question_of(item: &ItemView, system: Option<&str>) -> Question {
    let (system, context) = split_system(system, &item.context);
    Question {
        key: item.id as u64,
        system,
        context,
        text: item.question.clone(),
        images: item.images.iter().cloned().map(ImageIn::Stored).collect(),
        is_caption: item.task == Task::Caption,
        answer_type: item.meta.get("answer_type").and_then(Value::as_str).map(String::from),
    }
}

fn candidate_of(item_id: i64, r: Result<Annotation, EngineError>) -> NewCandidate {
    match r {
        Ok(a) => NewCandidate { item_id, outcome: Ok(a.candidate), finish: Some(a.finish), logprobs: a.logprobs },
        Err(e) => NewCandidate::failed(item_id, e.to_string()),
    }
}

struct PageSource {
    store: Store,
    hash: Digest,
    filter: PendingFilter,
    system: Option<String>,
    after: i64,
    buffered: std::collections::VecDeque<ItemView>,
    remaining: Option<u64>,
    done: bool,
}

impl Source<i64> for PageSource {
    async fn next(&mut self) -> anyhow::Result<Option<(i64, Question)>> {
        if self.remaining == Some(0) {
            return Ok(None);
        }
        if self.buffered.is_empty() && !self.done {
            let page = self.store.pending_candidates(self.hash, &self.filter, self.after, 256).await?;
            if page.len() < 256 {
                self.done = true;
            }
            if let Some(last) = page.last() {
                self.after = last.id;
            }
            self.buffered.extend(page);
        }
        let Some(item) = self.buffered.pop_front() else { return Ok(None) };
        if let Some(r) = &mut self.remaining {
            *r -= 1;
        }
        Ok(Some((item.id, question_of(&item, self.system.as_deref()))))
    }
}

struct CandidateSink<'p> {
    store: Store,
    run_id: i64,
    model: String,
    hash: Digest,
    actor: String,
    rows: Vec<NewCandidate>,
    report: InferReport,
    progress: &'p dyn InferProgress,
}

impl Handler<i64> for CandidateSink<'_> {
    fn result(&mut self, id: i64, r: Result<Annotation, EngineError>) -> anyhow::Result<()> {
        self.report.count(&r);
        self.progress.advance(self.report.answered, self.report.failed);
        self.rows.push(candidate_of(id, r));
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        let rows = std::mem::take(&mut self.rows);
        self.store.add_candidates(Some(self.run_id), &self.model, self.hash, &self.actor, rows).await?;
        Ok(())
    }
}

/// Answers the project's pending items and stores the candidates, until done or until `stop`
/// resolves (the run is then recorded as interrupted, with the reason `stop` gives).
pub async fn infer_project(
    store: &Store,
    annotator: Arc<Annotator>,
    opts: ProjectInfer,
    progress: &dyn InferProgress,
    stop: impl Future<Output = String>,
) -> anyhow::Result<InferReport> {
    let started = Instant::now();
    let (hash, identity) = params_hash(&annotator, opts.system.as_deref());
    let model = annotator.backend().info().model.clone();
    let todo = store.count_pending_candidates(hash, &opts.filter).await?;
    let total = opts.limit.map_or(todo, |l| l.min(todo));
    let mut config = opts.config.clone();
    if !config.is_object() {
        config = json!({});
    }
    config["identity"] = identity;
    config["params_hash"] = hex::encode(hash.0).into();
    config["backend"] = serde_json::to_value(annotator.backend().info())?;
    config["rules"] = serde_json::to_value(annotator.rules().config())?;
    let run_id = store.start_run("infer", &opts.actor, config).await?;
    progress.start(total, 0);
    let mut source = PageSource {
        store: store.clone(),
        hash,
        filter: opts.filter.clone(),
        system: opts.system.clone(),
        after: 0,
        buffered: Default::default(),
        remaining: opts.limit,
        done: false,
    };
    let mut sink = CandidateSink {
        store: store.clone(),
        run_id,
        model: model.clone(),
        hash,
        actor: opts.actor.clone(),
        rows: Vec::new(),
        report: InferReport {
            run_id: Some(run_id),
            model,
            params_hash: hex::encode(hash.0),
            total,
            ..Default::default()
        },
        progress,
    };
    let flush_every = annotator.max_in_flight().max(32);
    let outcome = drive(annotator.clone(), &mut source, &mut sink, flush_every, stop).await;
    let mut report = sink.report;
    progress.finish();
    report.close(started);
    let (status, result) = match outcome {
        Ok(None) => (RunStatus::Done, Ok(())),
        Ok(Some(why)) => {
            let status = why.status();
            report.stopped = Some(why.into_reason());
            (status, Ok(()))
        }
        Err(e) => {
            report.stopped = Some(format!("{e:#}"));
            (RunStatus::Failed, Err(e))
        }
    };
    store.finish_run(run_id, &opts.actor, status, serde_json::to_value(&report)?).await?;
    result?;
    Ok(report)
}

// ---------------------------------------------------------------- file mode

/// A question from a file, with what the output row needs.
#[derive(Clone, Debug)]
pub struct FileQuestion {
    /// The row's `id`: the dataset's id, or the image path.
    pub id: String,
    pub question: Question,
    /// The reference answer, when the input has one.
    pub label: Option<String>,
    /// How the images are written in the output row.
    pub image_refs: Vec<String>,
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Image extensions `--images` picks up from folders and globs.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

fn is_image_file(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Files, folders (every image inside, sorted, recursively) and quoted globs, in the order
/// given, each image once.
pub fn expand_images(args: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |p: PathBuf, out: &mut Vec<PathBuf>| {
        if seen.insert(p.clone()) {
            out.push(p);
        }
    };
    for a in args {
        let p = Path::new(a);
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            if found.is_empty() {
                bail!("{a}: no images in this folder (looked for {})", IMAGE_EXTENSIONS.join(", "));
            }
            for f in found {
                push(f, &mut out);
            }
        } else if p.is_file() {
            push(p.to_path_buf(), &mut out);
        } else if has_glob(a) {
            let mut found: Vec<PathBuf> = glob::glob(a)
                .with_context(|| format!("{a}: not a valid glob pattern"))?
                .filter_map(|r| r.ok())
                .filter(|p| p.is_file() && is_image_file(p))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("{a}: no image matches this pattern");
            }
            for f in found {
                push(f, &mut out);
            }
        } else {
            bail!("{a}: no such file or folder");
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Questions for `--images` + `--prompt`: one per image, the path as its id.
pub fn image_questions(images: &[PathBuf], prompt: &str, system: Option<&str>, caption: bool) -> Vec<FileQuestion> {
    images
        .iter()
        .enumerate()
        .map(|(i, p)| FileQuestion {
            id: p.display().to_string(),
            question: Question {
                key: i as u64,
                system: system.map(String::from),
                context: Vec::new(),
                text: prompt.to_string(),
                images: vec![ImageIn::Path(p.clone())],
                is_caption: caption,
                answer_type: None,
            },
            label: None,
            image_refs: vec![p.display().to_string()],
        })
        .collect()
}

/// Questions from a dataset file read with its format's reader.
pub fn dataset_questions(
    file: &Path,
    format: Option<mmloop_formats::Format>,
    read: &mmloop_formats::ReadOptions,
    system: Option<&str>,
) -> anyhow::Result<Vec<FileQuestion>> {
    let records = dataset_records(file, format, read)?;
    Ok(record_questions(records, file, &read.images_dir_for(file), system))
}

/// Every record of a dataset file; the first bad one is an error naming its line.
pub fn dataset_records(
    file: &Path,
    format: Option<mmloop_formats::Format>,
    read: &mmloop_formats::ReadOptions,
) -> anyhow::Result<Vec<Record>> {
    let format = match format {
        Some(f) => f,
        None => mmloop_formats::detect(file)?,
    };
    let mut records: Vec<Record> = Vec::new();
    let mut bad: Option<String> = None;
    mmloop_formats::read(format, file, read, &mut |r| match r {
        Ok(r) => {
            records.push(r);
            std::ops::ControlFlow::Continue(())
        }
        Err(e) => {
            bad = Some(format!(
                "{}: {}{}",
                e.location,
                e.message,
                e.hint.map(|h| format!("\n  hint: {h}")).unwrap_or_default()
            ));
            std::ops::ControlFlow::Break(())
        }
    })?;
    if let Some(b) = bad {
        bail!("{b}");
    }
    Ok(records)
}

/// Records as questions: relative image paths under `images_dir`, ids from the records or
/// their place in `file` (made unique), `system` over the conversation's own.
pub fn record_questions(
    records: Vec<Record>,
    file: &Path,
    images_dir: &Path,
    system: Option<&str>,
) -> Vec<FileQuestion> {
    let mut out = Vec::with_capacity(records.len());
    let mut ids = HashSet::new();
    for (i, r) in records.into_iter().enumerate() {
        let id = match &r.id {
            Some(id) => id.clone(),
            None => match r.source.line {
                Some(l) => format!("{}:{l}", file.display()),
                None => format!("{}#{}", file.display(), r.source.index.unwrap_or(i as u64)),
            },
        };
        let id = if ids.insert(id.clone()) { id } else { format!("{id}#{i}") };
        let (system, context) = split_system(system, &r.context);
        let mut images = Vec::new();
        let mut refs = Vec::new();
        for (j, src) in r.images.iter().enumerate() {
            match src {
                ImageSource::Path(p) => {
                    let path = if Path::new(p).is_absolute() { PathBuf::from(p) } else { images_dir.join(p) };
                    refs.push(p.clone());
                    images.push(ImageIn::Path(path));
                }
                ImageSource::Bytes(b) => {
                    let name = format!("{id} image {}", j + 1);
                    let bytes = Arc::new(b.to_vec());
                    let mime = InputImage::new(name.clone(), bytes.clone()).mime().unwrap_or("image/png");
                    use base64::Engine as _;
                    refs.push(format!(
                        "data:{mime};base64,{}",
                        base64::engine::general_purpose::STANDARD.encode(&bytes[..])
                    ));
                    images.push(ImageIn::Bytes { name, bytes });
                }
                ImageSource::Url(u) => {
                    refs.push(u.clone());
                    images.push(ImageIn::Unusable {
                        name: u.clone(),
                        why: "image URLs are not downloaded; download the images and point at the files".into(),
                    });
                }
            }
        }
        out.push(FileQuestion {
            id,
            question: Question {
                key: i as u64,
                system,
                context,
                text: r.question.clone(),
                images,
                is_caption: r.task == Task::Caption,
                answer_type: r.meta.get("answer_type").and_then(Value::as_str).map(String::from),
            },
            label: r.answer.as_ref().and_then(|a| a.best()).map(String::from),
            image_refs: refs,
        });
    }
    out
}

/// The output row for one answered (or failed) question: an ms-swift dataset row plus the
/// result fields `swift infer` writes, and ours.
pub fn swift_row(q: &FileQuestion, model: &str, r: &Result<Annotation, EngineError>) -> InferRow {
    let mut messages = Vec::new();
    if let Some(s) = &q.question.system {
        messages.push(Message::new("system", s.clone()));
    }
    let n = q.image_refs.len();
    let mut tagged = false;
    let tag = |text: &str| format!("{}{}", "<image>".repeat(n), text.replace("<image>", ""));
    for t in &q.question.context {
        if !tagged && t.role == "user" && n > 0 {
            messages.push(Message::new(t.role.clone(), tag(&t.content)));
            tagged = true;
        } else {
            messages.push(t.clone());
        }
    }
    let user = if tagged || n == 0 { q.question.text.clone() } else { tag(&q.question.text) };
    messages.push(Message::new("user", user));
    let mut row = InferRow {
        labels: q.label.clone(),
        images: q.image_refs.clone(),
        id: q.id.clone(),
        model: model.to_string(),
        ..Default::default()
    };
    match r {
        Ok(a) => {
            let c = &a.candidate;
            messages.push(Message::new("assistant", c.answer.clone()));
            row.response = Some(c.answer.clone());
            row.logprobs = a.logprobs.clone();
            row.confidence = c.confidence;
            row.confidence_detail = c.detail.clone();
            row.flags = Some(c.flags.clone());
            row.finish_reason = Some(a.finish.finish_reason.clone());
        }
        Err(e) => row.error = Some(e.to_string()),
    }
    row.messages = messages;
    row
}

/// The ids an existing output file already answers (failed rows count only when
/// `keep_errors`).
pub fn answered_ids(path: &Path, keep_errors: bool) -> anyhow::Result<HashSet<String>> {
    let mut ids = HashSet::new();
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    for line in std::io::BufReader::new(f).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        // A line cut short by a kill is ignored (and answered again).
        let Ok(row) = serde_json::from_str::<InferRow>(&line) else { continue };
        if keep_errors || row.answered() {
            ids.insert(row.id);
        }
    }
    Ok(ids)
}

/// How a file run writes.
#[derive(Clone, Debug, Default)]
pub struct FileInfer {
    pub output: PathBuf,
    /// Start the output over instead of appending what it lacks.
    pub overwrite: bool,
    /// Answer again questions whose row in the output is an error.
    pub retry_errors: bool,
}

struct VecSource {
    items: std::vec::IntoIter<(usize, FileQuestion)>,
}

impl Source<usize> for VecSource {
    async fn next(&mut self) -> anyhow::Result<Option<(usize, Question)>> {
        Ok(self.items.next().map(|(i, q)| (i, q.question)))
    }
}

/// Writes rows in input order as soon as every earlier row is written.
struct RowWriter<'p> {
    out: std::io::BufWriter<std::fs::File>,
    questions: Vec<FileQuestion>,
    model: String,
    pending: BTreeMap<usize, InferRow>,
    next_row: usize,
    report: InferReport,
    progress: &'p dyn InferProgress,
}

impl RowWriter<'_> {
    fn write(&mut self, row: &InferRow) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, row)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    /// Rows that finished after one that never will (the run stopped): kept too.
    fn write_leftovers(&mut self) -> anyhow::Result<()> {
        for (_, row) in std::mem::take(&mut self.pending) {
            self.write(&row)?;
        }
        self.out.flush()?;
        Ok(())
    }
}

impl Handler<usize> for RowWriter<'_> {
    fn result(&mut self, i: usize, r: Result<Annotation, EngineError>) -> anyhow::Result<()> {
        self.report.count(&r);
        self.progress.advance(self.report.answered, self.report.failed);
        let row = swift_row(&self.questions[i], &self.model, &r);
        self.pending.insert(i, row);
        while let Some(row) = self.pending.remove(&self.next_row) {
            self.write(&row)?;
            self.next_row += 1;
        }
        // Each finished row reaches the file at once: a kill loses only questions in flight.
        self.out.flush()?;
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.out.flush()?)
    }
}

/// Answers `questions` and writes their rows to `opts.output` in input order.
pub async fn infer_file(
    annotator: Arc<Annotator>,
    questions: Vec<FileQuestion>,
    opts: &FileInfer,
    progress: &dyn InferProgress,
    stop: impl Future<Output = String>,
) -> anyhow::Result<InferReport> {
    let started = Instant::now();
    let (hash, _) = params_hash(&annotator, None);
    let model = annotator.backend().info().model.clone();
    if opts.overwrite && opts.output.exists() {
        std::fs::remove_file(&opts.output).with_context(|| format!("removing {}", opts.output.display()))?;
    }
    let done = answered_ids(&opts.output, !opts.retry_errors)?;
    let todo: Vec<(usize, FileQuestion)> =
        questions.into_iter().filter(|q| !done.contains(&q.id)).enumerate().collect();
    let already = done.len() as u64;
    if let Some(dir) = opts.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.output)
        .with_context(|| format!("opening {}", opts.output.display()))?;
    // A row cut short by a kill stays on its own line (and is answered again).
    let ends_open = std::fs::read(&opts.output).is_ok_and(|b| b.last().is_some_and(|&c| c != b'\n'));
    if ends_open {
        file.write_all(b"\n").with_context(|| format!("writing {}", opts.output.display()))?;
    }
    progress.start(todo.len() as u64, already);
    let mut writer = RowWriter {
        out: std::io::BufWriter::new(file),
        questions: todo.iter().map(|(_, q)| q.clone()).collect(),
        model: model.clone(),
        pending: BTreeMap::new(),
        next_row: 0,
        report: InferReport {
            model,
            params_hash: hex::encode(hash.0),
            total: todo.len() as u64,
            already_done: already,
            output: Some(opts.output.clone()),
            ..Default::default()
        },
        progress,
    };
    let mut source = VecSource { items: todo.into_iter() };
    let outcome = drive(annotator.clone(), &mut source, &mut writer, usize::MAX, stop).await;
    writer.write_leftovers()?;
    progress.finish();
    let mut report = writer.report;
    report.close(started);
    match outcome {
        Ok(None) => {}
        Ok(Some(why)) => report.stopped = Some(why.into_reason()),
        Err(e) => return Err(e),
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use mmloop_core::Message;

    use super::split_system;

    #[test]
    fn the_system_flag_wins_over_the_conversations_and_the_rest_is_context() {
        let msgs = [Message::new("system", "be brief"), Message::new("user", "hi"), Message::new("system", "later")];
        let (system, context) = split_system(None, &msgs);
        assert_eq!(system.as_deref(), Some("be brief"));
        assert_eq!(context.iter().map(|t| t.content.as_str()).collect::<Vec<_>>(), ["hi"]);
        assert_eq!(split_system(Some("flag"), &msgs).0.as_deref(), Some("flag"));
        assert_eq!(split_system(Some("flag"), &[]).0.as_deref(), Some("flag"));
        assert_eq!(split_system(None, &[]).0, None);
    }
}
