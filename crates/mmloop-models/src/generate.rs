//! Generation with continuous batching.
//!
//! A [`Scheduler`] holds the sequences in flight. Each step is one packed forward pass
//! ([`crate::text::TextModel::forward`]): the whole prompts of the sequences admitted this
//! step (their images encoded together first) and the last token of every sequence already
//! decoding. Then each sequence draws its next token from its own row with its own seed
//! ([`crate::sampling::step`]): a request's answer does not depend on what else shares the
//! step. Finished sequences leave at once and new ones join at the next step.
//!
//! [`Engine`] runs a scheduler on its own thread and takes requests from any thread;
//! [`generate_batch`] runs one to completion on the caller's thread (tests, benchmarks).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

use image::RgbImage;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::model::{ImageFeatures, VlModel};
use crate::nn::{Ctx, Mode};
use crate::processor::{ChatMessage, Pixels, Prepared};
use crate::sampling::{self, SamplingParams, Step};
use crate::text::{KvCache, Output, SeqStep};
use crate::{Error, Result};

/// One request: a chat with its images, how to sample, and which adapter answers.
#[derive(Clone, Debug)]
pub struct Request {
    pub messages: Vec<ChatMessage>,
    /// Named images in the order the messages place them.
    pub images: Vec<(String, RgbImage)>,
    pub sampling: SamplingParams,
    /// A loaded adapter's name; `None`: the base model.
    pub adapter: Option<String>,
}

/// A generated token with its log-probability and the most likely alternatives.
pub type StepToken = Step;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The caller gave up on the request (a client went away).
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// What a request produced.
#[derive(Clone, Debug)]
pub struct GenerationOutput {
    pub prompt_tokens: usize,
    pub tokens: Vec<StepToken>,
    /// The answer: every generated id decoded at once, special tokens skipped, cut at a
    /// stop string.
    pub text: String,
    pub finish: FinishReason,
    /// Waiting for a place in the batch.
    pub queued: Duration,
    /// From admission to the first token (vision encoder and prefill).
    pub first_token: Duration,
    pub total: Duration,
}

/// What the engine tells a request's caller, as it happens.
pub enum Event {
    Token(StepToken),
    Done(Result<GenerationOutput>),
}

/// A callback receiving a request's events (on the engine's thread: keep it short).
pub type Sink = Box<dyn FnMut(Event) + Send>;

#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Sequences in flight at once.
    pub max_batch: usize,
    /// Prompt tokens admitted into one step (a prompt longer than this still runs alone).
    pub max_prefill_tokens: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { max_batch: 16, max_prefill_tokens: 16_384 }
    }
}

/// A prepared request waiting for the scheduler.
pub struct Job {
    pub prepared: Prepared,
    pub sampling: SamplingParams,
    pub adapter: Option<usize>,
    pub sink: Sink,
    pub submitted: Instant,
    /// Set by the caller to stop the request: it leaves the batch at the next step.
    pub cancel: Arc<AtomicBool>,
}

/// The output of a request stopped by its caller: what it generated so far.
fn aborted(job: &Job, generated: &[StepToken], first_token: Option<Duration>, admitted: Instant) -> GenerationOutput {
    GenerationOutput {
        prompt_tokens: job.prepared.input_ids.len(),
        tokens: generated.to_vec(),
        text: String::new(),
        finish: FinishReason::Abort,
        queued: admitted.saturating_duration_since(job.submitted),
        first_token: first_token.unwrap_or_default(),
        total: job.submitted.elapsed(),
    }
}

struct Seq {
    job: Job,
    cache: KvCache,
    /// Prompt and generated ids (repetition penalty context).
    context: Vec<u32>,
    generated: Vec<StepToken>,
    rng: StdRng,
    admitted: Instant,
    first_token: Option<Duration>,
    finish: Option<FinishReason>,
    text_len_checked: usize,
}

/// The sequences in flight on one model.
pub struct Scheduler {
    model: Arc<VlModel>,
    opts: EngineOptions,
    active: Vec<Seq>,
}

impl Scheduler {
    pub fn new(model: Arc<VlModel>, opts: EngineOptions) -> Scheduler {
        Scheduler { model, opts, active: Vec::new() }
    }

    pub fn is_idle(&self) -> bool {
        self.active.is_empty()
    }

    pub fn running(&self) -> usize {
        self.active.len()
    }

    /// How many more sequences may join.
    pub fn free(&self) -> usize {
        self.opts.max_batch.saturating_sub(self.active.len())
    }

    /// One step: admits `new` (which must fit [`Scheduler::free`]), runs one packed forward,
    /// emits a token per sequence, and finishes what is done.
    pub fn step(&mut self, new: Vec<Job>) {
        let model = self.model.clone();
        // Requests their callers stopped leave before the step.
        let new: Vec<Job> = new
            .into_iter()
            .filter_map(|mut job| {
                if job.cancel.load(Ordering::SeqCst) {
                    let out = aborted(&job, &[], None, Instant::now());
                    (job.sink)(Event::Done(Ok(out)));
                    return None;
                }
                Some(job)
            })
            .collect();
        self.active.retain_mut(|s| {
            if !s.job.cancel.load(Ordering::SeqCst) {
                return true;
            }
            let out = aborted(&s.job, &s.generated, s.first_token, s.admitted);
            (s.job.sink)(Event::Done(Ok(out)));
            false
        });
        // Encode the new requests' images together (attention stays within each image).
        let mut admitted = Vec::with_capacity(new.len());
        // One bad request must not fail the others: on an error, encode one by one.
        let features: Vec<Result<Option<ImageFeatures>>> = match encode_all(&model, &new) {
            Ok(f) => f.into_iter().map(Ok).collect(),
            Err(_) if new.len() > 1 => new
                .iter()
                .map(|job| encode_all(&model, std::slice::from_ref(job)).map(|mut v| v.pop().flatten()))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        for (mut job, feats) in new.into_iter().zip(features) {
            let ids = job.prepared.input_ids.clone();
            let feats = match feats {
                Ok(f) => f,
                Err(e) => {
                    (job.sink)(Event::Done(Err(e)));
                    continue;
                }
            };
            match model.prompt_embeds(&ids, feats.as_ref()) {
                Ok((embeds, deepstack)) => {
                    let seed = job.sampling.seed;
                    admitted.push((
                        Seq {
                            cache: KvCache::new(model.text.num_layers()),
                            context: ids,
                            generated: Vec::new(),
                            rng: StdRng::seed_from_u64(seed),
                            admitted: Instant::now(),
                            first_token: None,
                            finish: None,
                            text_len_checked: 0,
                            job,
                        },
                        embeds,
                        deepstack,
                    ));
                }
                Err(e) => (job.sink)(Event::Done(Err(e))),
            }
        }
        // Inputs of this step: decoding sequences first, then the new prompts.
        let n_old = self.active.len();
        let mut embeds = Vec::with_capacity(n_old + admitted.len());
        let mut positions = Vec::with_capacity(n_old + admitted.len());
        let mut deepstacks = Vec::with_capacity(n_old + admitted.len());
        for s in &self.active {
            let last = *s.context.last().expect("a sequence has tokens");
            let emb = model.text.embed_ids(&[last]);
            let p = (s.job.prepared.input_ids.len() + s.generated.len() - 1) as i64 + s.job.prepared.rope_delta;
            embeds.push(emb);
            positions.push(vec![[p; 3]]);
            deepstacks.push(None);
        }
        for (s, e, d) in admitted {
            positions.push(s.job.prepared.positions.clone());
            embeds.push(Ok(e));
            deepstacks.push(d);
            self.active.push(s);
        }
        if self.active.is_empty() {
            return;
        }
        let result: Result<Vec<Vec<f32>>> = (|| {
            let mut steps = Vec::with_capacity(self.active.len());
            for ((s, e), (p, d)) in self.active.iter_mut().zip(embeds).zip(positions.into_iter().zip(deepstacks)) {
                steps.push(SeqStep {
                    embeds: e?,
                    positions: p,
                    cache: &mut s.cache,
                    deepstack: d,
                    adapter: s.job.adapter,
                });
            }
            let logits = model.text.forward(&mut steps, Mode::Infer, Output::LastLogits)?;
            let logits = logits.to_dtype(candle_core::DType::F32)?;
            Ok(logits.to_vec2::<f32>()?)
        })();
        let rows = match result {
            Ok(r) => r,
            Err(e) => {
                let msg = e.to_string();
                for mut s in self.active.drain(..) {
                    (s.job.sink)(Event::Done(Err(Error::Stopped(format!("the model failed on a batch: {msg}")))));
                }
                return;
            }
        };
        let eos = model.eos.clone();
        for (s, row) in self.active.iter_mut().zip(rows) {
            let suppress: &[u32] = if s.generated.len() < s.job.sampling.min_new_tokens { &eos } else { &[] };
            match sampling::step(&row, &s.context, &s.job.sampling.policy, suppress, &mut s.rng) {
                Ok(t) => {
                    if s.first_token.is_none() {
                        s.first_token = Some(s.admitted.elapsed());
                    }
                    s.context.push(t.id);
                    let is_eos = eos.contains(&t.id);
                    s.generated.push(t.clone());
                    (s.job.sink)(Event::Token(t));
                    if is_eos {
                        s.finish = Some(FinishReason::Stop);
                    } else if s.generated.len() >= s.job.sampling.max_new_tokens {
                        s.finish = Some(FinishReason::Length);
                    } else if !s.job.sampling.stop.is_empty() && stop_hit(&model, s) {
                        s.finish = Some(FinishReason::Stop);
                    }
                }
                Err(e) => {
                    s.finish = Some(FinishReason::Stop);
                    (s.job.sink)(Event::Done(Err(Error::Input(e))));
                    s.generated.clear();
                    s.job.sampling.max_new_tokens = 0;
                }
            }
        }
        let mut keep = Vec::with_capacity(self.active.len());
        for mut s in self.active.drain(..) {
            match s.finish {
                None => keep.push(s),
                Some(_) if s.job.sampling.max_new_tokens == 0 => {} // failed and reported above
                Some(finish) => {
                    let out = finish_output(&model, &s, finish);
                    (s.job.sink)(Event::Done(out));
                }
            }
        }
        self.active = keep;
    }
}

/// Whether the text so far ends in one of the request's stop strings.
fn stop_hit(model: &VlModel, s: &mut Seq) -> bool {
    let ids: Vec<u32> = s.generated.iter().map(|t| t.id).collect();
    let Ok(text) = model.processor.tokens.decode(&ids) else { return false };
    // Search from where a stop string could have started, on a character boundary.
    let mut from = s.text_len_checked.saturating_sub(s.job.sampling.stop.iter().map(String::len).max().unwrap_or(0));
    from = from.min(text.len());
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    s.text_len_checked = text.len();
    s.job.sampling.stop.iter().any(|stop| text[from..].contains(stop.as_str()))
}

fn finish_output(model: &VlModel, s: &Seq, finish: FinishReason) -> Result<GenerationOutput> {
    let ids: Vec<u32> = s.generated.iter().map(|t| t.id).collect();
    let mut text = model.processor.tokens.decode(&ids)?;
    if let Some(cut) = s.job.sampling.stop.iter().filter_map(|stop| text.find(stop.as_str())).min() {
        text.truncate(cut);
    }
    Ok(GenerationOutput {
        prompt_tokens: s.job.prepared.input_ids.len(),
        tokens: s.generated.clone(),
        text,
        finish,
        queued: s.admitted.duration_since(s.job.submitted),
        first_token: s.first_token.unwrap_or_default(),
        total: s.job.submitted.elapsed(),
    })
}

/// Image features of each job (`None` without images), the vision tower run once over all
/// the jobs' images when they are of one kind.
fn encode_all(model: &VlModel, jobs: &[Job]) -> Result<Vec<Option<ImageFeatures>>> {
    let ctx = Ctx::infer();
    let with: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].prepared.pixels.is_some()).collect();
    let mut out: Vec<Option<ImageFeatures>> = (0..jobs.len()).map(|_| None).collect();
    if with.is_empty() {
        return Ok(out);
    }
    if with.len() == 1 {
        let i = with[0];
        out[i] = Some(model.encode_images(jobs[i].prepared.pixels.as_ref().expect("filtered"), &ctx)?);
        return Ok(out);
    }
    // Concatenate, encode once, split by each job's number of image tokens.
    let pixels: Vec<&Pixels> = with.iter().map(|&i| jobs[i].prepared.pixels.as_ref().expect("filtered")).collect();
    let merged = merge_pixels(&pixels)?;
    let f = model.encode_images(&merged, &ctx)?;
    let image_token = model.processor.image_token_id;
    let mut start = 0;
    for &i in &with {
        let n = jobs[i].prepared.input_ids.iter().filter(|&&t| t == image_token).count();
        let take = |t: &candle_core::Tensor| t.narrow(0, start, n);
        out[i] = Some(ImageFeatures {
            embeds: take(&f.embeds)?,
            deepstack: f.deepstack.iter().map(take).collect::<candle_core::Result<Vec<_>>>()?,
        });
        start += n;
    }
    Ok(out)
}

fn merge_pixels(list: &[&Pixels]) -> Result<Pixels> {
    match list[0] {
        Pixels::Patches { patches, .. } => {
            let mut data = Vec::new();
            let mut grids = Vec::new();
            let mut rows = 0;
            for p in list {
                let Pixels::Patches { patches: q, grids: g } = p else {
                    return Err(Error::Input("mixed pixel kinds in one batch".into()));
                };
                data.extend_from_slice(&q.data);
                grids.extend_from_slice(g);
                rows += q.shape[0];
            }
            Ok(Pixels::Patches {
                patches: crate::processor::Array { data, shape: vec![rows, patches.shape[1]] },
                grids,
            })
        }
        Pixels::Tiles { tiles } => {
            let mut data = Vec::new();
            let mut n = 0;
            for p in list {
                let Pixels::Tiles { tiles: t } = p else {
                    return Err(Error::Input("mixed pixel kinds in one batch".into()));
                };
                data.extend_from_slice(&t.data);
                n += t.shape[0];
            }
            let mut shape = tiles.shape.clone();
            shape[0] = n;
            Ok(Pixels::Tiles { tiles: crate::processor::Array { data, shape } })
        }
    }
}

/// Prepares a request (template, tokens, pixels): CPU work the caller can do off the
/// engine's thread.
pub fn prepare(model: &VlModel, req: &Request) -> Result<(Prepared, Option<usize>)> {
    let prepared = model.processor.prepare(&req.messages, &req.images)?;
    let adapter = match &req.adapter {
        None => None,
        Some(name) => {
            Some(model.adapter_slot(name).ok_or_else(|| Error::Input(format!("no adapter named {name:?} is loaded")))?)
        }
    };
    if req.sampling.max_new_tokens == 0 {
        return Err(Error::Input("max_new_tokens must be at least 1".into()));
    }
    Ok((prepared, adapter))
}

/// Runs `requests` to completion on this thread, all admitted together (as far as
/// `opts.max_batch` allows).
pub fn generate_batch(
    model: Arc<VlModel>,
    requests: Vec<Request>,
    opts: EngineOptions,
) -> Vec<Result<GenerationOutput>> {
    let n = requests.len();
    let results: Arc<std::sync::Mutex<Vec<Option<Result<GenerationOutput>>>>> =
        Arc::new(std::sync::Mutex::new((0..n).map(|_| None).collect()));
    let mut pending = std::collections::VecDeque::new();
    for (i, r) in requests.into_iter().enumerate() {
        match prepare(&model, &r) {
            Ok((prepared, adapter)) => {
                let res = results.clone();
                let sink: Sink = Box::new(move |e| {
                    if let Event::Done(out) = e {
                        res.lock().expect("results")[i] = Some(out);
                    }
                });
                pending.push_back(Job {
                    prepared,
                    sampling: r.sampling,
                    adapter,
                    sink,
                    submitted: Instant::now(),
                    cancel: Arc::default(),
                });
            }
            Err(e) => results.lock().expect("results")[i] = Some(Err(e)),
        }
    }
    let mut sched = Scheduler::new(model, opts);
    while !pending.is_empty() || !sched.is_idle() {
        let mut new = Vec::new();
        let mut tokens = 0;
        while sched.free() > new.len() {
            let Some(j) = pending.front() else { break };
            let len = j.prepared.input_ids.len();
            if !new.is_empty() && tokens + len > sched.opts.max_prefill_tokens {
                break;
            }
            tokens += len;
            new.push(pending.pop_front().expect("peeked"));
        }
        sched.step(new);
    }
    let mut out = results.lock().expect("results");
    out.iter_mut().map(|r| r.take().unwrap_or_else(|| Err(Error::Stopped("no result".into())))).collect()
}

/// A scheduler on its own thread, fed from any thread.
pub struct Engine {
    model: Arc<VlModel>,
    tx: Option<Sender<Job>>,
    worker: Option<std::thread::JoinHandle<()>>,
    stats: Arc<EngineStats>,
}

/// Counters the engine keeps (for metrics).
#[derive(Default)]
pub struct EngineStats {
    pub running: std::sync::atomic::AtomicUsize,
    pub waiting: std::sync::atomic::AtomicUsize,
}

impl Engine {
    pub fn new(model: Arc<VlModel>, opts: EngineOptions) -> Engine {
        let (tx, rx) = channel::<Job>();
        let stats = Arc::new(EngineStats::default());
        let worker = {
            let model = model.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("mmloop-engine".into())
                .spawn(move || run(model, opts, rx, stats))
                .expect("spawn the engine thread")
        };
        Engine { model, tx: Some(tx), worker: Some(worker), stats }
    }

    pub fn model(&self) -> &Arc<VlModel> {
        &self.model
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Queues a prepared request; `sink` receives its tokens and its end.
    pub fn submit(&self, prepared: Prepared, sampling: SamplingParams, adapter: Option<usize>, sink: Sink) {
        self.submit_cancellable(prepared, sampling, adapter, sink, Arc::default());
    }

    /// [`Engine::submit`], and setting `cancel` stops the request at the next step (it ends
    /// with [`FinishReason::Abort`]).
    pub fn submit_cancellable(
        &self,
        prepared: Prepared,
        sampling: SamplingParams,
        adapter: Option<usize>,
        sink: Sink,
        cancel: Arc<AtomicBool>,
    ) {
        self.stats.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let job = Job { prepared, sampling, adapter, sink, submitted: Instant::now(), cancel };
        if let Some(tx) = &self.tx
            && let Err(std::sync::mpsc::SendError(mut job)) = tx.send(job)
        {
            (job.sink)(Event::Done(Err(Error::Stopped("the engine has stopped".into()))));
        }
    }

    /// Prepares and runs one request, waiting for its answer.
    pub fn generate(&self, req: &Request) -> Result<GenerationOutput> {
        let (prepared, adapter) = prepare(&self.model, req)?;
        let (tx, rx) = channel();
        self.submit(
            prepared,
            req.sampling.clone(),
            adapter,
            Box::new(move |e| {
                if let Event::Done(out) = e {
                    let _ = tx.send(out);
                }
            }),
        );
        rx.recv().map_err(|_| Error::Stopped("the engine has stopped".into()))?
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn run(model: Arc<VlModel>, opts: EngineOptions, rx: Receiver<Job>, stats: Arc<EngineStats>) {
    use std::sync::atomic::Ordering::SeqCst;
    let max_prefill = opts.max_prefill_tokens;
    let mut sched = Scheduler::new(model, opts);
    let mut waiting: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    let mut closed = false;
    loop {
        // Block for work only when nothing is in flight.
        if sched.is_idle() && waiting.is_empty() {
            if closed {
                return;
            }
            match rx.recv() {
                Ok(j) => waiting.push_back(j),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(j) => waiting.push_back(j),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let mut new = Vec::new();
        let mut tokens = 0;
        while sched.free() > new.len() {
            let Some(j) = waiting.front() else { break };
            let len = j.prepared.input_ids.len();
            if !new.is_empty() && tokens + len > max_prefill {
                break;
            }
            tokens += len;
            new.push(waiting.pop_front().expect("peeked"));
        }
        stats.waiting.store(waiting.len(), SeqCst);
        sched.step(new);
        stats.running.store(sched.running(), SeqCst);
    }
}
