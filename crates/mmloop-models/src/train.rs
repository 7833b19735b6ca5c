//! LoRA / DoRA fine-tuning of the language model, step by step as ms-swift's `swift sft` (over
//! transformers' Trainer, PEFT and torch) computes it:
//!
//! - an [`Example`] is a prompt rendered by the checkpoint's chat template with the generation
//!   prompt, then the answer's tokens (tokenized alone) and the end-of-turn token; only the
//!   answer and the end-of-turn token are labelled;
//! - the loss of a step is the next-token cross-entropy summed over the labelled tokens of the
//!   step's examples, divided by their number; examples are packed into one forward pass (no
//!   padding), the vision tower frozen;
//! - the gradient norm over every trainable tensor is clipped (`clip_grad_norm_`), then
//!   [`AdamW`] with PyTorch's update order; the learning rate follows [`Schedule`] with linear
//!   warmup, as transformers' `get_*_schedule_with_warmup`;
//! - the adapter's tensors are [`Var`]s put into the model's [`Linear`](crate::nn::Linear)
//!   layers, so the forward pass is the inference code in [`Mode::Train`]; [`Trainer::save`]
//!   writes a PEFT folder.
//!
//! Parity with PEFT 0.21 + transformers 5.24 + torch 2.15 on the tiny fixtures (losses, gradient
//! norms, learning rates, final weights) is tested in `tests/train.rs` against references made by
//! `tools/make_train_references.py`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{D, DType, Tensor, Var};
use image::RgbImage;

use crate::adapter::AdapterConfig;
use crate::model::{ImageFeatures, VlModel};
use crate::nn::{LoraWeights, Mode};
use crate::processor::{ChatMessage, Pixels};
use crate::text::{KvCache, Output, SeqStep};
use crate::{Error, Result};

/// One training conversation, ready for the model.
#[derive(Clone, Debug)]
pub struct Example {
    /// The prompt's tokens, then the answer's and the end-of-turn token.
    pub input_ids: Vec<u32>,
    /// (t, h, w) position of every token.
    pub positions: Vec<[i64; 3]>,
    pub pixels: Option<Pixels>,
    /// The first labelled token (the answer's first).
    pub labels_start: usize,
    /// The frozen vision tower's output for `pixels`, once [`Trainer::encode`] has kept it
    /// (the same every epoch; computed anew each step when not kept).
    pub features: Option<ImageFeatures>,
}

impl Example {
    /// Tokens whose prediction counts in the loss.
    pub fn labelled(&self) -> usize {
        self.input_ids.len() - self.labels_start
    }
}

/// The token that ends a turn in the family's chat template, which the loss also teaches.
fn end_of_turn(model: &VlModel) -> Result<u32> {
    let name = match model.family {
        crate::model::Family::Idefics3 => "<end_of_utterance>",
        _ => "<|im_end|>",
    };
    model
        .processor
        .tokens
        .id(name)
        .ok_or_else(|| Error::Config(format!("{}: the tokenizer has no {name} token", model.dir.display())))
}

impl VlModel {
    /// A training example: `messages` (ending with a user turn) rendered with the generation
    /// prompt, then `answer` and the end-of-turn token, which are the labelled tokens.
    pub fn example(&self, messages: &[ChatMessage], images: &[(String, RgbImage)], answer: &str) -> Result<Example> {
        let p = self.processor.prepare(messages, images)?;
        let mut answer_ids = self.processor.tokens.encode(answer)?;
        answer_ids.push(end_of_turn(self)?);
        let labels_start = p.input_ids.len();
        let mut input_ids = p.input_ids;
        let mut positions = p.positions;
        for i in 0..answer_ids.len() {
            // Text after the prompt: all three M-RoPE axes advance together.
            let pos = (labels_start + i) as i64 + p.rope_delta;
            positions.push([pos; 3]);
        }
        input_ids.extend(answer_ids);
        Ok(Example { input_ids, positions, pixels: p.pixels, labels_start, features: None })
    }
}

/// The learning-rate curve after warmup (transformers' `lr_scheduler_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Schedule, String> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "linear" => Ok(Schedule::Linear),
            "constant" | "constant_with_warmup" => Ok(Schedule::Constant),
            other => Err(format!("unknown --lr_scheduler_type {other:?}: expected cosine, linear or constant")),
        }
    }
}

impl Schedule {
    /// The multiplier of the base learning rate at optimizer step `step` (0 = the first), as
    /// transformers' `get_{cosine,linear,constant}_schedule_with_warmup`.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let left = total.saturating_sub(warmup).max(1) as f64;
        let progress = (step - warmup) as f64 / left;
        match self {
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
            Schedule::Linear => ((total as f64 - step as f64) / left).max(0.0),
            Schedule::Constant => 1.0,
        }
    }
}

/// The optimizer's settings (ms-swift's defaults: lr 1e-4, weight decay 0.1, β₂ 0.95).
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub learning_rate: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub weight_decay: f64,
    /// Gradient-norm clipping; 0 turns it off.
    pub max_grad_norm: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    /// Optimizer steps of the whole run (the schedule's length).
    pub total_steps: usize,
    /// PEFT's `lora_dropout` on the adapters' inputs.
    pub lora_dropout: f64,
    /// Seeds the dropout masks (with the step and micro-batch).
    pub seed: u64,
    /// Keep only each decoder layer's input through the forward pass and recompute the layer's
    /// activations during the backward pass (transformers' gradient checkpointing): activation
    /// memory of one layer instead of all, for about one more forward pass of compute.
    pub gradient_checkpointing: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            learning_rate: 1e-4,
            adam_beta1: 0.9,
            adam_beta2: 0.95,
            adam_epsilon: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: 1.0,
            schedule: Schedule::Cosine,
            warmup_steps: 0,
            total_steps: 1,
            lora_dropout: 0.0,
            seed: 42,
            gradient_checkpointing: false,
        }
    }
}

/// One trainable tensor and its AdamW moments.
struct Param {
    /// The PEFT key it is saved under.
    key: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// PyTorch's AdamW (`_single_tensor_adamw`, the CPU path), in its order of operations:
/// decay the weights, update the moments, then step by `lr / (1 − β₁ᵗ)` along
/// `m / (√v / √(1 − β₂ᵗ) + ε)`.
fn adamw(p: &mut Param, grad: &Tensor, lr: f64, step: usize, o: &TrainOptions) -> Result<()> {
    let (b1, b2) = (o.adam_beta1, o.adam_beta2);
    let theta = (p.var.as_tensor() * (1.0 - lr * o.weight_decay))?;
    p.m = (&p.m + ((grad - &p.m)? * (1.0 - b1))?)?;
    p.v = ((&p.v * b2)? + (grad.sqr()? * (1.0 - b2))?)?;
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2 = 1.0 - b2.powi(step as i32);
    let denom = ((p.v.sqrt()? / bc2.sqrt())? + o.adam_epsilon)?;
    let theta = (theta - ((&p.m / denom)? * (lr / bc1))?)?;
    p.var.set(&theta)?;
    Ok(())
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// Mean cross-entropy over the step's labelled tokens.
    pub loss: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate the step used.
    pub learning_rate: f64,
    pub labelled_tokens: usize,
}

/// Trains the adapter in one slot of a model.
pub struct Trainer<'m> {
    model: &'m VlModel,
    slot: usize,
    params: Vec<Param>,
    /// The trainable layers' adapters (their dropout seeds are set before each pass).
    layers: Vec<Arc<LoraWeights>>,
    opts: TrainOptions,
    /// Optimizer steps taken.
    step: usize,
}

impl<'m> Trainer<'m> {
    /// Makes the adapter loaded in `slot` trainable: each of its tensors becomes a [`Var`] the
    /// layers compute with.
    pub fn new(model: &'m VlModel, slot: usize, opts: TrainOptions) -> Result<Trainer<'m>> {
        if model.dtype != DType::F32 {
            return Err(Error::Unsupported(format!("training in {:?} (load the model in f32)", model.dtype)));
        }
        let mut params = Vec::new();
        let mut layers = Vec::new();
        for layer in model.text.linears() {
            let Some(l) = layer.adapter(slot) else { continue };
            let a = Var::from_tensor(&l.a.to_dtype(DType::F32)?)?;
            let b = Var::from_tensor(&l.b.to_dtype(DType::F32)?)?;
            let g = l.magnitude.as_ref().map(|g| Var::from_tensor(&g.to_dtype(DType::F32)?)).transpose()?;
            let trainable = Arc::new(
                LoraWeights::new(
                    a.as_tensor().clone(),
                    b.as_tensor().clone(),
                    l.scale,
                    g.as_ref().map(|g| g.as_tensor().clone()),
                )
                .with_dropout(opts.lora_dropout),
            );
            layer.set_adapter(slot, Some(trainable.clone()));
            layers.push(trainable);
            let key = format!("base_model.model.{}", layer.path);
            let mut add = |suffix: &str, var: Var| -> Result<()> {
                let zeros = var.as_tensor().zeros_like()?;
                params.push(Param { key: format!("{key}.{suffix}"), var, m: zeros.clone(), v: zeros });
                Ok(())
            };
            add("lora_A.weight", a)?;
            add("lora_B.weight", b)?;
            if let Some(g) = g {
                add("lora_magnitude_vector", g)?;
            }
        }
        if params.is_empty() {
            return Err(Error::Input(format!("no adapter in slot {slot} to train")));
        }
        Ok(Trainer { model, slot, params, layers, opts, step: 0 })
    }

    /// Keeps `ex`'s image features so later steps skip the frozen vision tower; returns the
    /// bytes they hold.
    pub fn encode(&self, ex: &mut Example) -> Result<usize> {
        if ex.features.is_none()
            && let Some(p) = &ex.pixels
        {
            ex.features = Some(self.model.encode_images(p, &crate::nn::Ctx::infer())?);
        }
        Ok(ex.features.as_ref().map_or(0, |f| {
            std::iter::once(&f.embeds).chain(&f.deepstack).map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
        }))
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The learning rate of the next step.
    pub fn learning_rate(&self) -> f64 {
        self.opts.learning_rate * self.opts.schedule.factor(self.step, self.opts.warmup_steps, self.opts.total_steps)
    }

    /// The summed cross-entropy of `batch`'s labelled tokens (a scalar that autograd follows)
    /// and how many there are: the examples packed into one forward pass.
    pub fn loss_sum(&self, batch: &[&Example]) -> Result<(Tensor, usize)> {
        self.loss_in(batch, Mode::Train)
    }

    /// The mean cross-entropy of `batch`'s labelled tokens without dropout or gradients
    /// (validation), and how many there are.
    pub fn eval_loss(&self, batch: &[&Example]) -> Result<(f64, usize)> {
        let (sum, n) = self.loss_in(batch, Mode::Infer)?;
        Ok((sum.to_scalar::<f32>()? as f64 / n.max(1) as f64, n))
    }

    fn loss_in(&self, batch: &[&Example], mode: Mode) -> Result<(Tensor, usize)> {
        let mut caches: Vec<KvCache> = batch.iter().map(|_| KvCache::new(self.model.text.num_layers())).collect();
        let (mut steps, rows, targets) = self.inputs(batch, &mut caches)?;
        let n = rows.len();
        let picked = self.model.text.forward(&mut steps, mode, Output::Rows(rows))?;
        Ok((nll_sum(&picked, &targets)?, n))
    }

    /// `batch` as one packed step (image features from the kept ones or the frozen vision
    /// tower), and the rows before labelled tokens with the tokens they predict.
    fn inputs<'c>(
        &self,
        batch: &[&Example],
        caches: &'c mut [KvCache],
    ) -> Result<(Vec<SeqStep<'c>>, Vec<u32>, Vec<u32>)> {
        let model = self.model;
        let frozen = crate::nn::Ctx::infer();
        let mut steps = Vec::with_capacity(batch.len());
        for (ex, cache) in batch.iter().zip(caches.iter_mut()) {
            let features = match (&ex.features, &ex.pixels) {
                (Some(f), _) => Some(f.clone()),
                (None, Some(p)) => Some(model.encode_images(p, &frozen)?),
                (None, None) => None,
            };
            let (embeds, deepstack) = model.prompt_embeds(&ex.input_ids, features.as_ref())?;
            steps.push(SeqStep {
                embeds: embeds.detach(),
                positions: ex.positions.clone(),
                cache,
                deepstack,
                adapter: Some(self.slot),
            });
        }
        // Row r predicts token r + 1 of its sequence: only the rows before labelled tokens
        // go through the output head.
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        let mut offset = 0;
        for ex in batch {
            for t in ex.labels_start.max(1)..ex.input_ids.len() {
                rows.push((offset + t - 1) as u32);
                targets.push(ex.input_ids[t]);
            }
            offset += ex.input_ids.len();
        }
        Ok((steps, rows, targets))
    }

    /// Backpropagates `sum / n` and adds the parameters' gradients to `acc` (in parameter
    /// order); returns the loss and the gradients for anything else `sum` depends on.
    fn backward_mean(
        &self,
        sum: Tensor,
        n: usize,
        acc: &mut [Option<Tensor>],
    ) -> Result<(f64, candle_core::backprop::GradStore)> {
        let part = (sum / n as f64)?;
        let grads = part.backward()?;
        self.collect(&grads, acc)?;
        Ok((part.to_scalar::<f32>()? as f64, grads))
    }

    /// The loss of `batch` divided by `n`, its gradients added to `acc`: one forward and one
    /// backward pass.
    fn gradients(&self, batch: &[&Example], n: usize, acc: &mut [Option<Tensor>]) -> Result<f64> {
        let (sum, _) = self.loss_sum(batch)?;
        Ok(self.backward_mean(sum, n, acc)?.0)
    }

    /// As [`Trainer::gradients`], with gradient checkpointing: the forward pass keeps only
    /// each decoder layer's input; the backward pass then goes layer by layer from the top,
    /// recomputing a layer's forward pass from its input and backpropagating the gradient
    /// of its output, `∂(out · g)/∂θ = gᵀ ∂out/∂θ`. At most one layer's graph is alive.
    fn gradients_checkpointed(&self, batch: &[&Example], n: usize, acc: &mut [Option<Tensor>]) -> Result<f64> {
        let text = &self.model.text;
        let layers = text.num_layers();
        let mut caches: Vec<KvCache> = batch.iter().map(|_| KvCache::new(layers)).collect();
        let (steps, rows, targets) = self.inputs(batch, &mut caches)?;
        let packed = text.pack(&steps, Mode::Train)?;
        drop(steps);
        // Each call gets empty caches of its own: a sequence's keys are its own rows' (training
        // starts every sequence from nothing), and nothing keeps a layer's graph alive.
        let layer = |li: usize, x: &Tensor| -> Result<Tensor> {
            let mut fresh: Vec<KvCache> = (0..packed.sequences()).map(|_| KvCache::new(layers)).collect();
            let mut refs: Vec<&mut KvCache> = fresh.iter_mut().collect();
            text.layer(li, x, &packed, &mut refs)
        };
        let mut kept = Vec::with_capacity(layers);
        let mut x = packed.x.detach();
        for li in 0..layers {
            let out = layer(li, &x)?.detach();
            kept.push(x);
            x = out;
        }
        let top = Var::from_tensor(&x)?;
        let sum = nll_sum(&text.head(top.as_tensor(), &packed, Output::Rows(rows))?, &targets)?;
        let (loss, grads) = self.backward_mean(sum, n, acc)?;
        let mut g = grads.get(top.as_tensor()).cloned();
        drop(grads);
        for li in (0..layers).rev() {
            let Some(upstream) = g.take() else { break };
            // The bottom layer's input is the frozen embeddings: no gradient needed there.
            let input = if li == 0 { None } else { Some(Var::from_tensor(&kept[li])?) };
            let x = input.as_ref().map_or(&kept[li], |v| v.as_tensor());
            let grads = (layer(li, x)? * upstream)?.sum_all()?.backward()?;
            self.collect(&grads, acc)?;
            g = input.and_then(|v| grads.get(v.as_tensor()).cloned());
        }
        Ok(loss)
    }

    /// Adds the parameters' gradients in `grads` to `acc`.
    fn collect(&self, grads: &candle_core::backprop::GradStore, acc: &mut [Option<Tensor>]) -> Result<()> {
        for (p, a) in self.params.iter().zip(acc.iter_mut()) {
            if let Some(t) = grads.get(p.var.as_tensor()) {
                *a = Some(match a.take() {
                    Some(prev) => (prev + t)?,
                    None => t.clone(),
                });
            }
        }
        Ok(())
    }

    /// One optimizer step over `batch`.
    pub fn step(&mut self, batch: &[&Example]) -> Result<StepReport> {
        self.step_accumulated(&[batch])
    }

    /// One optimizer step over several micro-batches (gradient accumulation): each is a
    /// forward and backward pass of its own, the loss the sum over all of their labelled
    /// tokens divided by their total number, as transformers does with `num_items_in_batch`.
    pub fn step_accumulated(&mut self, micro: &[&[&Example]]) -> Result<StepReport> {
        let n: usize = micro.iter().flat_map(|b| b.iter()).map(|e| e.labelled()).sum();
        if n == 0 {
            return Err(Error::Input("a training step without labelled tokens".into()));
        }
        let mut g: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let mut loss = 0f64;
        for (i, batch) in micro.iter().enumerate() {
            let seed = mix(mix(self.opts.seed, self.step as u64), i as u64);
            for l in &self.layers {
                l.set_dropout_seed(seed);
            }
            loss += if self.opts.gradient_checkpointing {
                self.gradients_checkpointed(batch, n, &mut g)?
            } else {
                self.gradients(batch, n, &mut g)?
            };
        }
        let mut g: Vec<Tensor> = g
            .into_iter()
            .zip(&self.params)
            .map(|(t, p)| t.map_or_else(|| p.var.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        let mut sq = 0f64;
        for t in &g {
            sq += t.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let grad_norm = sq.sqrt();
        let clip = self.opts.max_grad_norm;
        if clip > 0.0 {
            let coef = clip / (grad_norm + 1e-6);
            if coef < 1.0 {
                g = g.into_iter().map(|t| t * coef).collect::<candle_core::Result<_>>()?;
            }
        }
        let lr = self.learning_rate();
        self.step += 1;
        for (p, grad) in self.params.iter_mut().zip(&g) {
            adamw(p, grad, lr, self.step, &self.opts)?;
        }
        Ok(StepReport { loss, grad_norm, learning_rate: lr, labelled_tokens: n })
    }

    /// The adapter's tensors by PEFT key.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.params.iter().map(|p| (p.key.clone(), p.var.as_tensor().clone())).collect()
    }

    /// Writes the adapter as PEFT does: `adapter_config.json` (`config` with PEFT's other keys,
    /// `target_modules` the explicit list of adapted module paths, `base_model` the model it
    /// adapts) and `adapter_model.safetensors`.
    pub fn save(&self, dir: &Path, config: &AdapterConfig, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut targets: Vec<String> = self
            .params
            .iter()
            .filter_map(|p| p.key.strip_suffix(".lora_A.weight"))
            .map(|k| k.trim_start_matches("base_model.model.").to_string())
            .collect();
        targets.sort();
        let mut config = config.clone();
        config.lora_dropout = self.opts.lora_dropout;
        let json = serde_json::to_string_pretty(&config.peft_json(base_model, &targets))
            .map_err(|e| Error::Load(e.to_string()))?;
        write_atomic(&dir.join("adapter_config.json"), json.as_bytes())?;
        save_tensors(&self.tensors(), &dir.join("adapter_model.safetensors"))
    }

    /// Writes the optimizer's moments (`{key}.exp_avg`, `{key}.exp_avg_sq`) to `path`, for
    /// [`Trainer::load_state`] on resume.
    pub fn save_state(&self, path: &Path) -> Result<()> {
        let mut t = BTreeMap::new();
        for p in &self.params {
            t.insert(format!("{}.exp_avg", p.key), p.m.clone());
            t.insert(format!("{}.exp_avg_sq", p.key), p.v.clone());
        }
        save_tensors(&t, path)
    }

    /// Continues from a checkpoint: the adapter's tensors as saved there (already loaded
    /// into the slot), the optimizer's moments from `path`, `steps` steps taken.
    pub fn load_state(&mut self, path: &Path, steps: usize) -> Result<()> {
        let mut t = candle_core::safetensors::load(path, self.model.device())
            .map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
        for p in &mut self.params {
            let mut take = |suffix: &str| {
                t.remove(&format!("{}.{suffix}", p.key)).filter(|x| x.dims() == p.var.dims()).ok_or_else(|| {
                    Error::Load(format!("{}: no {suffix} of the right shape for {}", path.display(), p.key))
                })
            };
            p.m = take("exp_avg")?;
            p.v = take("exp_avg_sq")?;
        }
        self.step = steps;
        Ok(())
    }
}

/// The summed next-token cross-entropy of the output head's rows `logits` against `targets`.
fn nll_sum(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let picked = logits.to_dtype(DType::F32)?;
    let max = picked.max_keepdim(D::Minus1)?.detach();
    let shifted = picked.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let target = Tensor::new(targets, picked.device())?.unsqueeze(1)?;
    Ok((log_z - shifted.gather(&target, 1)?)?.sum_all()?)
}

/// Mixes `v` into the seed `h` (SplitMix64's finaliser).
fn mix(h: u64, v: u64) -> u64 {
    let mut z = h ^ v.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn save_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let map: std::collections::HashMap<String, Tensor> = tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    candle_core::safetensors::save(&map, &tmp).map_err(|e| Error::Load(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
