//! Every command and flag of `mmloop`, in one place. ms-swift spellings of flags are
//! accepted as aliases where a verb mirrors one of swift's.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};

use crate::values::{
    CONFIDENCES, DEVICES, DTYPES, EVAL_TASKS, FORMATS, P_VALUES, SCHEDULES, SCORES, TASKS, VQA_VARIANTS, one_of,
};

#[derive(Parser, Debug)]
#[command(
    name = "mmloop",
    version,
    about = "Build VQA and image-caption datasets: import, pre-annotate, review, version, export, evaluate",
    max_term_width = 100
)]
pub struct Cli {
    /// Who is acting, as recorded in the audit log (default: your login name).
    #[arg(long, global = true, env = "MMLOOP_ACTOR")]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a project folder (mmloop.toml + .mmloop/).
    Init(InitArgs),
    /// Import a dataset file or an image folder into a project.
    Import(ImportArgs),
    /// Show what a project holds.
    Stats(StatsArgs),
    /// Assign train/val/test splits, grouped by image.
    Split(SplitArgs),
    /// Record the current state as a new version.
    Commit(CommitArgs),
    /// List versions, newest first.
    Log(LogArgs),
    /// Show what changed between two versions.
    Diff(DiffArgs),
    /// Write a version (or split of it) in a training format.
    Export(ExportArgs),
    /// Check or read the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show one item with its images, label and history.
    Show(ShowArgs),
    /// Pre-annotate with a vision-language model: answers, confidence and risk flags for a
    /// project's pending items, or images/a dataset file to a JSONL file (like `swift infer`).
    Infer(Box<InferArgs>),
    /// Review in the browser: serve the review UI and its REST API.
    Review(ReviewArgs),
    /// Manage accounts (admin, reviewer, annotator, viewer) and API tokens.
    #[command(subcommand)]
    User(UserCommand),
    /// Score predictions against references with the official metrics; write metrics.json
    /// and report.html (like `swift eval`).
    Eval(Box<EvalArgs>),
    /// Draw a random audit sample of pending model answers for reviewers to decide first
    /// (the data `mmloop route` certifies from); without --size, list the samples.
    AuditSample(AuditSampleArgs),
    /// Serve a model behind an OpenAI-compatible API (like `vllm serve` / `swift deploy`).
    Serve(Box<ServeArgs>),
    /// Online A/B experiments of `mmloop serve`.
    Ab(AbArgs),
    /// Auto-accept model answers above a threshold certified from the audit sample: error
    /// rate ≤ ε with probability ≥ 1 − δ.
    Route(Box<RouteCommand>),
    /// Fine-tune the model (LoRA / DoRA) on a version's trusted labels or a dataset file
    /// (like `swift sft`; its flag names and defaults).
    Sft(Box<SftArgs>),
    /// List a project's recorded runs (pre-annotation, training, routing), newest first.
    Runs(RunsArgs),
    /// Move a project's database between SQLite and PostgreSQL (verified before the folder
    /// switches; the old SQLite file is kept as a backup).
    Migrate(MigrateArgs),
    /// Fold a LoRA / DoRA adapter into the model's weights and write the checkpoint in its
    /// published layout (like `swift export --merge_lora true`).
    ExportModel(ExportModelArgs),
}

#[derive(Args, Debug)]
pub struct ExportModelArgs {
    /// A Hugging Face repo id or a checkpoint folder.
    #[arg(long, alias = "model_id")]
    pub model: String,
    /// The hub revision of --model.
    #[arg(long = "model_revision", alias = "revision", alias = "model-revision", default_value = "main")]
    pub model_revision: String,
    /// The PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapters: PathBuf,
    /// Merge the adapter into the weights (the only export there is; ms-swift: --merge_lora true).
    #[arg(long, alias = "merge_lora", alias = "merge-lora", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub merge: bool,
    /// The new checkpoint folder (default: ADAPTERS-merged, as ms-swift).
    #[arg(long, short, alias = "output_dir", alias = "output-dir")]
    pub output: Option<PathBuf>,
    /// Write the weights in this dtype (float32, bfloat16, float16; default: the checkpoint's
    /// own). A bf16 checkpoint rounds the merged weights to bf16; float32 keeps them exact.
    #[arg(long = "torch_dtype", alias = "torch-dtype", alias = "dtype")]
    pub torch_dtype: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunsArgs {
    pub project: PathBuf,
    /// Only runs of this kind (infer, train, route).
    #[arg(long)]
    pub kind: Option<String>,
    /// Print the runs (with their full configuration and summary) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `mmloop sft`: ms-swift 4's `swift sft` flags (underscores; dashes also accepted) and defaults.
#[derive(Args, Debug, serde::Serialize)]
pub struct SftArgs {
    /// The project to train from (its committed --version). Leave out for file mode (--dataset).
    pub project: Option<PathBuf>,
    /// A Hugging Face repo id or a checkpoint folder.
    #[arg(long, alias = "model_id")]
    pub model: String,
    /// The hub revision of --model.
    #[arg(long = "model_revision", alias = "revision", alias = "model-revision", default_value = "main")]
    pub model_revision: String,
    /// Project mode: the committed version whose trusted labels are the training data.
    #[arg(long, default_value = "HEAD")]
    pub version: String,
    /// Project mode: train on this split only (e.g. train).
    #[arg(long)]
    pub split: Option<String>,
    /// File mode: a dataset file in any format `mmloop import` reads (its answered questions).
    #[arg(long, value_name = "FILE")]
    pub dataset: Option<PathBuf>,
    /// The dataset's format, when detection guesses wrong.
    #[arg(long, short, value_parser = one_of::<mmloop_formats::Format>(FORMATS))]
    pub format: Option<String>,
    /// Where the dataset's relative image paths resolve (default: its folder).
    #[arg(long, alias = "images_dir")]
    pub images_dir: Option<PathBuf>,
    /// A system prompt for every example (default: each conversation's own).
    #[arg(long)]
    pub system: Option<String>,
    /// Where logging.jsonl, checkpoint-N/ and report.html go.
    #[arg(long = "output_dir", alias = "output-dir", short)]
    pub output_dir: PathBuf,

    /// lora (DoRA with --use_dora true).
    #[arg(long = "tuner_type", alias = "tuner-type", default_value = "lora", value_parser = ["lora"])]
    pub tuner_type: String,
    #[arg(long = "use_dora", alias = "use-dora", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub use_dora: Option<bool>,
    /// LoRA rank (default 8).
    #[arg(long = "lora_rank", alias = "lora-rank")]
    pub lora_rank: Option<usize>,
    /// LoRA alpha (default 32).
    #[arg(long = "lora_alpha", alias = "lora-alpha")]
    pub lora_alpha: Option<f64>,
    #[arg(long = "lora_dropout", alias = "lora-dropout", default_value_t = 0.05)]
    pub lora_dropout: f64,
    /// all-linear (every linear layer of the language model) or module names (q_proj v_proj ...).
    #[arg(long = "target_modules", alias = "target-modules", num_args = 1..)]
    pub target_modules: Vec<String>,
    /// Start from this PEFT adapter folder; its own config decides rank, alpha, DoRA and targets.
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// The vision tower stays frozen (the only setting supported).
    #[arg(long = "freeze_vit", alias = "freeze-vit", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub freeze_vit: bool,
    /// The vision-language connector stays frozen (the only setting supported).
    #[arg(long = "freeze_aligner", alias = "freeze-aligner", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub freeze_aligner: bool,

    #[arg(long = "num_train_epochs", alias = "num-train-epochs", default_value_t = 3.0)]
    pub num_train_epochs: f64,
    /// Optimizer steps of the run (overrides the epochs; -1: from the epochs).
    #[arg(long = "max_steps", alias = "max-steps", default_value_t = -1, allow_negative_numbers = true)]
    pub max_steps: i64,
    #[arg(
        long = "per_device_train_batch_size",
        alias = "per-device-train-batch-size",
        alias = "batch_size",
        default_value_t = 1
    )]
    pub per_device_train_batch_size: usize,
    #[arg(long = "per_device_eval_batch_size", alias = "per-device-eval-batch-size", default_value_t = 1)]
    pub per_device_eval_batch_size: usize,
    /// Micro-batches per optimizer step (default: ceil(16 / batch size), as ms-swift).
    #[arg(long = "gradient_accumulation_steps", alias = "gradient-accumulation-steps")]
    pub gradient_accumulation_steps: Option<usize>,
    #[arg(long = "learning_rate", alias = "learning-rate", alias = "lr", default_value_t = 1e-4)]
    pub learning_rate: f64,
    #[arg(long = "lr_scheduler_type", alias = "lr-scheduler-type", default_value = "cosine", value_parser = one_of::<mmloop_pipeline::sft::Schedule>(SCHEDULES))]
    pub lr_scheduler_type: String,
    #[arg(long = "warmup_ratio", alias = "warmup-ratio", default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Overrides --warmup_ratio.
    #[arg(long = "warmup_steps", alias = "warmup-steps")]
    pub warmup_steps: Option<usize>,
    #[arg(long = "weight_decay", alias = "weight-decay", default_value_t = 0.1)]
    pub weight_decay: f64,
    #[arg(long = "adam_beta1", alias = "adam-beta1", default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long = "adam_beta2", alias = "adam-beta2", default_value_t = 0.95)]
    pub adam_beta2: f64,
    #[arg(long = "adam_epsilon", alias = "adam-epsilon", default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    #[arg(long = "max_grad_norm", alias = "max-grad-norm", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Examples longer than this many tokens are left out and counted (ms-swift's `delete`;
    /// default: the model's context length).
    #[arg(long = "max_length", alias = "max-length")]
    pub max_length: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Seeds the dataset shuffle and the validation split (default: --seed).
    #[arg(long = "data_seed", alias = "data-seed")]
    pub data_seed: Option<u64>,
    #[arg(long = "save_steps", alias = "save-steps", default_value_t = 500)]
    pub save_steps: usize,
    /// Validation every N steps (default: --save_steps).
    #[arg(long = "eval_steps", alias = "eval-steps")]
    pub eval_steps: Option<usize>,
    #[arg(long = "logging_steps", alias = "logging-steps", default_value_t = 5)]
    pub logging_steps: usize,
    /// The share of the examples held out for validation.
    #[arg(long = "split_dataset_ratio", alias = "split-dataset-ratio", default_value_t = 0.0)]
    pub split_dataset_ratio: f64,
    #[arg(long = "dataset_shuffle", alias = "dataset-shuffle", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub dataset_shuffle: bool,
    #[arg(long = "train_dataloader_shuffle", alias = "train-dataloader-shuffle", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub train_dataloader_shuffle: bool,
    /// Continue a run from OUT/checkpoint-N (same data and arguments): the same losses as
    /// the uninterrupted run.
    #[arg(long = "resume_from_checkpoint", alias = "resume-from-checkpoint")]
    pub resume_from_checkpoint: Option<PathBuf>,
    /// float32 (training runs in f32).
    #[arg(long = "torch_dtype", alias = "torch-dtype", alias = "dtype", default_value = "float32")]
    pub torch_dtype: String,
    /// Keep only each decoder layer's input and recompute its activations in the backward pass
    /// (less memory, about one more forward pass of compute); false keeps every activation.
    #[arg(long = "gradient_checkpointing", alias = "gradient-checkpointing", default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub gradient_checkpointing: bool,
    /// QLoRA: the frozen language model quantized at load, adapters in f32. The embedded
    /// trainer uses GGML block formats: 8 = q8_0, 4 = q4k (q5_0 for widths that are not
    /// multiples of 256); ms-swift uses bitsandbytes.
    #[arg(long = "quant_bits", alias = "quant-bits", value_parser = clap::builder::PossibleValuesParser::new(["4", "8"]).map(|s| s.parse::<u8>().expect("4 or 8")))]
    pub quant_bits: Option<u8>,
    /// The quantization library for --quant_bits, as ms-swift names it (bnb: bitsandbytes). The
    /// embedded trainer takes bnb (or nothing) and quantizes with its own block formats.
    #[arg(long = "quant_method", alias = "quant-method", value_parser = ["bnb", "hqq", "eetq", "quanto"])]
    pub quant_method: Option<String>,
    /// Image features of the frozen vision tower kept in memory between epochs, in MiB.
    #[arg(long = "feature_cache_mb", default_value_t = 1024)]
    pub feature_cache_mb: usize,
    /// mmloop (the embedded trainer) or swift: export the version, write OUT/run.sh with the
    /// `swift sft` command line and run it when `swift` is on the PATH (big models, several
    /// GPUs or nodes).
    #[arg(long, default_value = "mmloop", value_parser = ["mmloop", "swift"])]
    pub engine: String,
    /// With --engine swift: DeepSpeed ZeRO stage (zero2, zero3, ...; ms-swift's names).
    #[arg(long)]
    pub deepspeed: Option<String>,
    /// With --engine swift: ms-swift's model type, where it cannot tell one from the checkpoint
    /// (e.g. qwen2_vl; the embedded trainer reads the architecture from config.json).
    #[arg(long = "model_type", alias = "model-type")]
    pub model_type: Option<String>,
    /// With --engine swift: ms-swift's chat template name (e.g. qwen2_vl).
    #[arg(long)]
    pub template: Option<String>,
}

#[derive(Args, Debug)]
pub struct AuditSampleArgs {
    pub project: PathBuf,
    /// How many items to draw (uniformly at random from the pending items with a model answer).
    #[arg(long)]
    pub size: Option<usize>,
    /// Draw only items of this task (vqa or caption).
    #[arg(long, value_parser = one_of::<mmloop_core::Task>(TASKS))]
    pub task: Option<String>,
    /// The generator's seed (default: from the clock; recorded with the sample).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop serving this sample first (its decisions still count).
    #[arg(long, conflicts_with = "size")]
    pub close: Option<i64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RouteCommand {
    #[command(subcommand)]
    pub action: Option<RouteAction>,
    #[command(flatten)]
    pub run: RouteArgs,
}

#[derive(Subcommand, Debug)]
pub enum RouteAction {
    /// Revert a route run: its auto-accepted answers go back to review (decisions people
    /// made since stay).
    Undo {
        project: PathBuf,
        /// The run id `mmloop route` printed.
        run: i64,
        #[arg(long)]
        json: bool,
    },
    /// Certify a threshold from a file of scored, judged answers (experiments, other tools):
    /// JSONL rows {"score": s, "correct": true|false}.
    Threshold(RouteThresholdArgs),
}

#[derive(Args, Debug)]
pub struct RouteArgs {
    #[arg(required = true)]
    pub project: Option<PathBuf>,
    /// The largest error rate allowed among auto-accepted answers.
    #[arg(long, default_value_t = 0.05)]
    pub epsilon: f64,
    /// The allowed probability that the guarantee fails.
    #[arg(long, default_value_t = 0.1)]
    pub delta: f64,
    /// The score thresholded: the model's confidence, or a score calibrated on part of the
    /// audit sample (confidence, flags, answer length) and certified on the rest.
    #[arg(long, default_value = "confidence", value_parser = one_of::<mmloop_store::route_plan::ScoreKind>(SCORES))]
    pub score: String,
    /// One threshold per question type (VQAv2's question_type) within each task.
    #[arg(long)]
    pub per_type: bool,
    /// Certify and print, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Share of the auto-accepted answers sent back to review as a drift audit.
    #[arg(long, default_value_t = 0.02)]
    pub audit_rate: f64,
    /// Use only these audit samples (comma-separated ids; default: every calibration sample).
    #[arg(long, value_delimiter = ',')]
    pub sample: Vec<i64>,
    /// No threshold with fewer audited answers above it is certified.
    /// How each threshold's p-value is computed: binomial tail or hb (Hoeffding–Bentkus).
    #[arg(long, default_value = "binomial", value_parser = one_of::<mmloop_metrics::selective::PValue>(P_VALUES))]
    pub p_value: String,
    #[arg(long, default_value_t = 30)]
    pub min_n: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RouteThresholdArgs {
    /// JSONL: one {"score": number, "correct": bool} per line.
    #[arg(long)]
    pub calibration: PathBuf,
    #[arg(long, default_value_t = 0.05)]
    pub epsilon: f64,
    #[arg(long, default_value_t = 0.1)]
    pub delta: f64,
    /// p-values: binomial (exact) or hb (Hoeffding–Bentkus).
    #[arg(long, default_value = "binomial", value_parser = one_of::<mmloop_metrics::selective::PValue>(P_VALUES))]
    pub p_value: String,
    /// Start the walk where this many errors could pass (default: from the sample size;
    /// 0 is the textbook start).
    #[arg(long)]
    pub start_errors: Option<usize>,
    #[arg(long, default_value_t = 30)]
    pub min_n: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A Hugging Face repo id or a checkpoint folder (not needed by a gateway whose --arm's
    /// are all other servers).
    #[arg(long, alias = "model_id")]
    pub model: Option<String>,
    #[arg(long, alias = "model_revision", default_value = "main")]
    pub revision: String,
    /// PEFT adapters served beside the base model, `name=DIR` (vLLM's --lora-modules).
    #[arg(long, alias = "lora-modules", alias = "lora_modules", num_args = 1.., value_name = "NAME=DIR")]
    pub adapters: Vec<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Bearer token required on /v1/* (/health and /metrics stay open).
    #[arg(long, alias = "api_key", env = "MMLOOP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The base model's name in /v1/models and requests (default: --model as given).
    #[arg(long, alias = "served_model_name")]
    pub served_model_name: Option<String>,
    #[arg(long, default_value = "cpu", value_parser = one_of::<mmloop_engine::embedded::Device>(DEVICES))]
    pub device: String,
    #[arg(long, alias = "torch_dtype", default_value = "auto", value_parser = one_of::<mmloop_engine::embedded::Dtype>(DTYPES))]
    pub dtype: String,
    #[arg(long, alias = "isq", alias = "quant_method", value_name = "TYPE")]
    pub quant: Option<String>,
    /// Sequences decoded together (continuous batching).
    #[arg(long, alias = "max_batch_size", alias = "max-num-seqs", default_value_t = 16)]
    pub max_batch_size: usize,
    /// Images per request: a number, or vLLM's JSON form `{"image": N}`.
    #[arg(long, alias = "limit_mm_per_prompt", default_value = "8")]
    pub limit_mm_per_prompt: String,
    /// `file://` image URLs are read only under this folder (refused without it).
    #[arg(long, alias = "allowed_local_media_path", value_name = "DIR")]
    pub allowed_local_media_path: Option<PathBuf>,
    /// Fetch http(s) images only from these hosts (redirects included); default: any host.
    #[arg(long, alias = "allowed_media_domains", num_args = 1.., value_name = "HOST")]
    pub allowed_media_domains: Vec<String>,
    /// Prompt plus completion tokens allowed per request (default: the checkpoint's
    /// max_position_embeddings).
    #[arg(long, alias = "max_model_len")]
    pub max_model_len: Option<usize>,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 64)]
    pub max_body_mb: usize,
    /// Serve /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's switch, also read
    /// from VLLM_ALLOW_RUNTIME_LORA_UPDATING).
    #[arg(long, env = "VLLM_ALLOW_RUNTIME_LORA_UPDATING", value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_runtime_lora_updating: bool,
    /// Risk rules for the `mmloop` fields: a TOML file with a [rules] table.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Online A/B: the experiment's name; requests naming it as their model are split
    /// between the --arm's (needs --project, where exposures and outcomes are kept).
    #[arg(long, requires = "project")]
    pub experiment: Option<String>,
    /// An arm, `NAME=MODEL` (the served model), `NAME=MODEL:ADAPTER` or `NAME=ADAPTER`
    /// (an adapter loaded with --adapters), or `NAME=http://host:8000/v1#MODEL`: another
    /// OpenAI-compatible server the arm's requests are proxied to (gateway mode; without
    /// `#MODEL`, the first model it lists).
    #[arg(long = "arm", value_name = "NAME=MODEL[:ADAPTER]|URL#MODEL", requires = "experiment")]
    pub arms: Vec<String>,
    /// Bearer token sent to upstream arms.
    #[arg(long, env = "MMLOOP_UPSTREAM_API_KEY", hide_env_values = true)]
    pub upstream_api_key: Option<String>,
    /// The arms' shares, e.g. 50,50 (default: equal).
    #[arg(long, value_delimiter = ',', requires = "experiment")]
    pub split: Vec<f64>,
    /// The project that records the experiment (audited).
    #[arg(long)]
    pub project: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AbArgs {
    #[command(subcommand)]
    pub action: AbAction,
}

#[derive(Subcommand, Debug)]
pub enum AbAction {
    /// Per-arm outcome rates and latency, each arm against the first with an always-valid
    /// p-value and confidence sequence, the sample-ratio check, and what to do.
    Status {
        project: PathBuf,
        experiment: String,
        /// Level of the always-valid test.
        #[arg(long, default_value_t = 0.05)]
        alpha: f64,
        /// The size of the difference worth detecting (the mixture's τ).
        #[arg(long, default_value_t = 0.02)]
        tau: f64,
        #[arg(long)]
        json: bool,
        /// Also write the report as a standalone HTML page with its plots.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The project folder (created if missing).
    pub dir: PathBuf,
    /// Project name (default: the folder name).
    #[arg(long)]
    pub name: Option<String>,
    /// Fill the project with a small generated sample (12 images, VQA and captions).
    #[arg(long)]
    pub example: bool,
    /// Keep the project's database on a PostgreSQL server (postgres://user@host/db, an empty
    /// database of its own) instead of SQLite in DIR/.mmloop/. The password, when one is
    /// needed, is best left to PGPASSWORD. Recorded in DIR/mmloop.toml.
    #[arg(long, env = "MMLOOP_DATABASE_URL", value_name = "URL")]
    pub database: Option<String>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The project folder.
    pub project: PathBuf,
    /// A dataset file, or a folder of images.
    #[arg(visible_alias = "dataset")]
    pub file: PathBuf,
    /// The format, when detection guesses wrong: swift, llava, sharegpt, coco, vqav2,
    /// textvqa, labelstudio, parquet, jsonl, csv, folder.
    #[arg(long, short, value_parser = one_of::<mmloop_formats::Format>(FORMATS))]
    pub format: Option<String>,
    /// Where relative image paths resolve (default: the dataset file's folder).
    #[arg(long, alias = "image-folder", alias = "image_folder", alias = "images_dir")]
    pub images_dir: Option<PathBuf>,
    /// VQAv2: the annotations file that goes with the questions file.
    #[arg(long)]
    pub annotations: Option<PathBuf>,
    /// The task of the items, for formats that do not say (default: vqa).
    #[arg(long, value_parser = one_of::<mmloop_core::Task>(TASKS))]
    pub task: Option<String>,
    /// Image folders: the question every image is asked (VQA).
    #[arg(long)]
    pub question: Option<String>,
    /// Image folders and caption datasets: the captioning prompt.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Copy images into the project instead of referencing them in place.
    #[arg(long)]
    pub copy: bool,
    /// Import the good records and write a report of the bad ones instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    pub project: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SplitArgs {
    pub project: PathBuf,
    /// Shares of train,val,test (or name=share,... for other names).
    #[arg(long, default_value = "0.8,0.1,0.1")]
    pub ratios: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Reassign items that already have a split (otherwise they keep it).
    #[arg(long)]
    pub reassign: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CommitArgs {
    pub project: PathBuf,
    /// What this version is.
    #[arg(long, short)]
    pub message: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    pub project: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The project folder (stop its review servers first).
    pub project: PathBuf,
    /// Where the database goes: a PostgreSQL URL (an empty database) or `sqlite`.
    #[arg(long, value_name = "URL|sqlite")]
    pub to: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    pub project: PathBuf,
    /// The older version (v1, HEAD~1, an id prefix).
    pub from: String,
    /// The newer version (default: HEAD).
    #[arg(default_value = "HEAD")]
    pub to: String,
    /// How many changed items to show in detail.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    pub project: PathBuf,
    /// swift, llava, sharegpt, coco, vqav2, textvqa, labelstudio, parquet, jsonl, csv.
    #[arg(long, short, value_parser = one_of::<mmloop_formats::Format>(FORMATS))]
    pub format: String,
    /// The output file (a folder for vqav2).
    #[arg(long, short, alias = "output_dir", alias = "output-dir")]
    pub output: PathBuf,
    /// The version to export: v2, HEAD, HEAD~1, an id prefix, or `working` for the
    /// uncommitted state.
    #[arg(long, default_value = "HEAD")]
    pub version: String,
    /// Only this split.
    #[arg(long)]
    pub split: Option<String>,
    /// Only this task (vqa or caption).
    #[arg(long, value_parser = one_of::<mmloop_core::Task>(TASKS))]
    pub task: Option<String>,
    /// Also items without a trusted label (pending, skipped).
    #[arg(long)]
    pub include_unreviewed: bool,
    /// Parquet: store image bytes in the file instead of paths.
    #[arg(long)]
    pub embed_images: bool,
    /// Label Studio: the local-files document root image paths are made relative to.
    #[arg(long)]
    pub document_root: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute the hash chain and check it against its anchors.
    Verify {
        project: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show recent events.
    Log {
        project: PathBuf,
        /// Only events about this item.
        #[arg(long)]
        item: Option<i64>,
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    pub project: PathBuf,
    /// The item id.
    pub item: i64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ReviewArgs {
    pub project: PathBuf,
    /// The port to listen on (0: any free port; the URL printed says which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The address to listen on; anything but loopback should sit behind a TLS proxy.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Always mark cookies Secure (they are anyway when a proxy sends X-Forwarded-Proto: https).
    #[arg(long)]
    pub secure_cookies: bool,
    /// How long an item stays with its reviewer without a renewal, in seconds.
    #[arg(long, default_value_t = 300)]
    pub lease_secs: u64,
    /// How long a login lasts, in hours.
    #[arg(long, default_value_t = 12)]
    pub session_hours: u64,
    /// A reverse proxy in front of the server whose X-Forwarded-For names the client (for
    /// login throttling); repeat for several. From anyone else the header is ignored.
    #[arg(long, value_name = "IP")]
    pub trusted_proxy: Vec<std::net::IpAddr>,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user (asks for a password; --password-stdin reads it from standard input).
    Add {
        project: PathBuf,
        name: String,
        /// admin, reviewer, annotator or viewer.
        #[arg(long, default_value = "reviewer")]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// No password: the account can only use API tokens.
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
        #[arg(long)]
        json: bool,
    },
    /// List users.
    List {
        project: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Change a user's role.
    Role { project: PathBuf, name: String, role: String },
    /// Disable a user: ends their sessions, frees their items, refuses their tokens.
    Disable { project: PathBuf, name: String },
    /// Enable a disabled user again.
    Enable { project: PathBuf, name: String },
    /// Set a user's password (ends their sessions and revokes their API tokens).
    Password {
        project: PathBuf,
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Create an API token for a user and print it (shown once) for scripts:
    /// `Authorization: Bearer <token>`.
    Token {
        project: PathBuf,
        name: String,
        /// What the token is for.
        #[arg(long = "token-name", default_value = "cli")]
        token_name: String,
        /// Expire after this many days (1 to 3650).
        #[arg(long, default_value_t = 90)]
        expires_days: u32,
        #[arg(long)]
        json: bool,
    },
    /// List API tokens (never the tokens themselves).
    Tokens {
        project: PathBuf,
        /// Only this user's.
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API token by id.
    Revoke { project: PathBuf, id: i64 },
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  mmloop infer --model HuggingFaceTB/SmolVLM-256M-Instruct --images './photos/*.jpg' \\
      --prompt \"What material is this? Answer briefly.\" --output answers.jsonl
  mmloop infer my-project --model Qwen/Qwen2.5-VL-3B-Instruct --device cuda
  mmloop infer my-project --api http://127.0.0.1:8000/v1 --model Qwen2.5-VL-7B-Instruct --concurrency 64")]
pub struct InferArgs {
    /// The project whose pending items get candidates. Leave out for file mode (--images or
    /// --dataset with --output).
    pub project: Option<PathBuf>,
    /// A Hugging Face repo id or a checkpoint folder; with --api, the served model's name
    /// (default: the first one the server lists).
    #[arg(long, alias = "model_id")]
    pub model: Option<String>,
    /// The hub revision (branch, tag or commit) of --model.
    #[arg(long, alias = "model_revision", default_value = "main")]
    pub revision: String,
    /// Answer with an OpenAI-compatible server (vLLM, SGLang, LMDeploy, Ollama) at this URL
    /// instead of the embedded engine, e.g. http://127.0.0.1:8000/v1.
    #[arg(long, value_name = "URL", alias = "base_url", alias = "base-url")]
    pub api: Option<String>,
    /// The server's API key.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true, alias = "api_key")]
    pub api_key: Option<String>,
    /// ms-swift's engine choice: transformers/pt/mmloop run the embedded engine;
    /// vllm/sglang/lmdeploy/openai need --api.
    #[arg(long, alias = "infer_backend", value_name = "ENGINE")]
    pub infer_backend: Option<String>,

    /// File mode: images to answer: files, folders, or quoted globs ('dir/*.jpg').
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub images: Vec<String>,
    /// File mode: the question (or captioning prompt) every image gets.
    #[arg(long, alias = "query", alias = "question")]
    pub prompt: Option<String>,
    /// File mode: a dataset file in any format `mmloop import` reads; its answers become
    /// `labels` in the output.
    #[arg(long, alias = "val_dataset", alias = "val-dataset", value_name = "FILE")]
    pub dataset: Option<PathBuf>,
    /// The dataset's format, when detection guesses wrong.
    #[arg(long, short, value_parser = one_of::<mmloop_formats::Format>(FORMATS))]
    pub format: Option<String>,
    /// Where the dataset's relative image paths resolve (default: its folder).
    #[arg(long, alias = "images_dir", alias = "image-folder", alias = "image_folder")]
    pub images_dir: Option<PathBuf>,
    /// vqa or caption (file mode; captions are not held to question-format rules).
    #[arg(long, value_parser = one_of::<mmloop_core::Task>(TASKS))]
    pub task: Option<String>,
    /// File mode: the JSONL file to write. An existing file is completed: questions it
    /// already answers are skipped.
    #[arg(long, short, alias = "result_path", alias = "result-path")]
    pub output: Option<PathBuf>,
    /// File mode: start the output file over.
    #[arg(long)]
    pub overwrite: bool,
    /// File mode: apply the [rules] section of this TOML file (e.g. a project's mmloop.toml).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,

    /// The longest answer, in tokens (default: the checkpoint's, else 256).
    #[arg(long, alias = "max_new_tokens")]
    pub max_new_tokens: Option<usize>,
    /// Suppress end-of-sequence until this many tokens (fixed-length benchmarks).
    #[arg(long, alias = "min_new_tokens")]
    pub min_new_tokens: Option<usize>,
    /// 0 is greedy (default: the checkpoint's generation_config.json).
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long, alias = "top_p")]
    pub top_p: Option<f64>,
    #[arg(long, alias = "top_k")]
    pub top_k: Option<usize>,
    /// transformers' rule; 1 is off (default: the checkpoint's).
    #[arg(long, alias = "repetition_penalty")]
    pub repetition_penalty: Option<f64>,
    /// Alternatives stored per answer token (at most 20).
    #[arg(long, alias = "top_logprobs")]
    pub top_logprobs: Option<usize>,
    /// Seed for sampling (each item draws its own numbers from it).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Request token log-probabilities (needed for confidence); false for servers without them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub logprobs: bool,

    /// Self-consistency: extra sampled answers per question; the share agreeing becomes the
    /// confidence.
    #[arg(long, default_value_t = 0)]
    pub samples: usize,
    /// Temperature of the extra samples when the answer itself is greedy.
    #[arg(long, alias = "sample_temperature", default_value_t = 0.7)]
    pub sample_temperature: f64,
    /// Which number is the confidence: auto (agreement with --samples, else sequence),
    /// sequence, min-token, margin, agreement.
    #[arg(long, default_value = "auto", value_parser = one_of::<mmloop_engine::ConfidenceSource>(CONFIDENCES))]
    pub confidence: String,

    /// cpu, cuda or metal (embedded engine; cuda/metal need a build with that feature).
    #[arg(long, default_value = "cpu", value_parser = one_of::<mmloop_engine::embedded::Device>(DEVICES))]
    pub device: String,
    /// auto (f32 on CPU, the GPU's best otherwise), f32, bf16 or f16 (embedded engine).
    #[arg(long, alias = "torch_dtype", default_value = "auto", value_parser = one_of::<mmloop_engine::embedded::Dtype>(DTYPES))]
    pub dtype: String,
    /// Weight format at load (embedded engine): q8_0 or q4k quantize the language model's
    /// linear layers; bf16 rounds every linear layer and the vision tower's attention products
    /// to bfloat16 (float32 accumulation), run on AMX tiles where the CPU has them.
    #[arg(long, alias = "isq", alias = "quant_method", value_name = "TYPE")]
    pub quant: Option<String>,
    /// PEFT adapter folders (LoRA/DoRA: adapter_config.json + adapter_model.safetensors) the
    /// embedded engine loads; the first answers. `name=DIR` names one.
    #[arg(long, num_args = 1.., value_name = "DIR")]
    pub adapters: Vec<String>,
    /// Fold the adapters into the weights at load instead of applying them per layer.
    #[arg(long, alias = "merge_lora", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub merge_lora: bool,
    /// Requests the embedded engine decodes together (continuous batching; answers do not
    /// depend on it).
    #[arg(long, alias = "max_batch_size", default_value_t = 8)]
    pub max_batch_size: usize,
    /// Requests in flight to the --api server.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds a request to the --api server may take.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Retries of a request after 429, 5xx, timeouts or connection failures.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,

    /// Project mode: only this split.
    #[arg(long)]
    pub split: Option<String>,
    /// Project mode: also items someone has already decided on.
    #[arg(long)]
    pub all: bool,
    /// Answer again questions whose earlier attempt with the same settings failed.
    #[arg(long)]
    pub retry_errors: bool,
    /// Project mode: at most this many items.
    #[arg(long)]
    pub limit: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A project to evaluate a model on (with --model): its --version / --split labels are
    /// the references (the same as --references DIR).
    pub project: Option<PathBuf>,
    /// The predictions: COCO caption results, VQA results, JSONL with id/answer/confidence,
    /// ms-swift/LLaVA/mmloop infer output, a multiple-choice table, or MME result files.
    /// Leave out to answer the references' questions with --model.
    #[arg(long, short)]
    pub predictions: Option<PathBuf>,
    /// Answer the project's questions with this model (repo id or checkpoint folder) and score
    /// its answers; they are kept in OUTPUT/predictions.jsonl.
    #[arg(long, alias = "model_id")]
    pub model: Option<String>,
    /// The hub revision of --model.
    #[arg(long = "model_revision", alias = "revision", alias = "model-revision", default_value = "main")]
    pub model_revision: String,
    /// A PEFT adapter on --model (e.g. OUT/checkpoint-N of `mmloop sft`).
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// Also answer with the base model (no --adapters) and compare: paired bootstrap of
    /// adapter − base on every metric.
    #[arg(long = "compare_base", alias = "compare-base", requires = "adapters")]
    pub compare_base: bool,
    /// With --model: the longest answer, in tokens (default: the checkpoint's, else 256).
    #[arg(long, alias = "max_new_tokens")]
    pub max_new_tokens: Option<usize>,
    /// The references: COCO captions, VQAv2 questions (+ --annotations) or annotations,
    /// TextVQA, JSONL/CSV rows, a multiple-choice table, or a project folder (with
    /// --version/--split). Optional when the predictions carry their references.
    #[arg(long, short)]
    pub references: Option<PathBuf>,
    /// VQAv2: the annotations file that goes with a questions file.
    #[arg(long)]
    pub annotations: Option<PathBuf>,
    /// Project references: the version whose labels are the truth (v2, HEAD, an id prefix).
    #[arg(long, default_value = "HEAD")]
    pub version: String,
    /// Project references: only this split.
    #[arg(long)]
    pub split: Option<String>,
    /// Comma-separated: vqa_acc, exact_match, f1, anls, bleu, meteor, rouge_l, cider,
    /// mc_acc, mmbench, mme, ece, brier (default: the task's usual ones).
    #[arg(long, short)]
    pub metrics: Option<String>,
    /// Force the task instead of telling it from the references: vqa, caption, choice, mme.
    #[arg(long, value_parser = one_of::<mmloop_eval::EvalTask>(EVAL_TASKS))]
    pub task: Option<String>,
    /// VQA accuracy as: official (GT-Vision-Lab vqaEval.py), lmms-eval, lmms-eval-textvqa,
    /// vlmevalkit.
    #[arg(long, default_value = "official", value_parser = one_of::<mmloop_metrics::vqa::VqaVariant>(VQA_VARIANTS))]
    pub vqa_variant: String,
    /// Score what matches and list the ids missing on either side instead of failing
    /// (empty answers are always scored as given, with a warning).
    #[arg(long)]
    pub allow_missing: bool,
    /// The METEOR 1.5 jar (default: the one in an installed pycocoevalcap).
    #[arg(long)]
    pub meteor_jar: Option<PathBuf>,
    /// A second predictions file: paired bootstrap of A − B on every metric.
    #[arg(long, conflicts_with = "compare_base")]
    pub compare: Option<PathBuf>,
    /// Bootstrap resamples for --compare.
    #[arg(long, default_value_t = 1000)]
    pub resamples: usize,
    /// Seed of the bootstrap's random numbers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bins for ECE and the reliability diagram.
    #[arg(long, default_value_t = 15)]
    pub ece_bins: usize,
    /// Where relative image paths of the references resolve (default: the references' folder).
    #[arg(long, alias = "image-folder", alias = "image_folder", alias = "images_dir")]
    pub images_dir: Option<PathBuf>,
    /// The folder for metrics.json and report.html.
    #[arg(long, short, alias = "eval_output_dir", alias = "eval-output-dir", default_value = "eval_output")]
    pub output: PathBuf,
    /// How many of the lowest-scoring items the report shows.
    #[arg(long, default_value_t = 12)]
    pub worst: usize,
    /// Print the scores as JSON (metrics.json without the per-item list).
    #[arg(long)]
    pub json: bool,
}
